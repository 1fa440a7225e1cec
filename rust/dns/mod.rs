//! The DNS interface: an authoritative server for one domain (`registry.` by default),
//! answering from the store with the selector's rules, on UDP and TCP.
//!
//! hickory-server does the protocol (framing, EDNS, truncation to the client's size, and
//! FORMERR for what does not parse); this module is the policy: which names exist
//! (`names.rs`), what they answer (`answer.rs`), who may ask how often (`limit.rs`), and
//! that nothing but reads is served (no recursion, zone transfer or update: REFUSED).

mod answer;
mod handler;
mod limit;
mod names;
mod udp;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_server::Server;

use crate::registry::Registry;
use answer::Zone;
use handler::Handler;
use limit::Limiter;

/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub domain: String,
    /// Seconds; 0 (the default, as Consul's) means answers are not cached.
    pub ttl: u32,
    /// UDP answers per second per client; 0: no limit.
    pub rate_limit: u32,
    /// Networks whose clients are not rate limited.
    pub rate_exempt: Vec<String>,
}

/// What the server did with the questions it read (for `/metrics`).
#[derive(Default, Debug)]
pub struct DnsStats {
    pub answered: AtomicU64,
    pub nodata: AtomicU64,
    pub nxdomain: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
    pub rate_limited: AtomicU64,
}

impl DnsStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("answered", load(&self.answered)),
            ("nodata", load(&self.nodata)),
            ("nxdomain", load(&self.nxdomain)),
            ("refused", load(&self.refused)),
            ("failed", load(&self.failed)),
            ("rate_limited", load(&self.rate_limited)),
        ]
    }
}

/// The domain in canonical form, or what is wrong with the domain or an exempt network.
pub fn check_options(domain: &str, rate_exempt: &[String]) -> Result<String, String> {
    Limiter::new(1, rate_exempt)?;
    Ok(Zone::new(domain)?.domain.to_ascii())
}

/// A running DNS server; stops when dropped.
pub struct Dns {
    /// TCP: hickory-server's listener.
    runtime: Option<tokio::runtime::Runtime>,
    /// UDP: threads of our own (`udp.rs`).
    udp: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    local: SocketAddr,
    pub stats: Arc<DnsStats>,
}

impl Dns {
    /// Listens on `listen` over UDP and TCP (SO_REUSEPORT: every process of a server joins
    /// the port) and answers from `registry`.
    pub fn start(listen: SocketAddr, registry: Arc<Registry>, options: &DnsOptions, threads: usize) -> io::Result<Dns> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let zone = Zone::new(&options.domain).map_err(invalid)?;
        let limiter = Limiter::new(options.rate_limit, &options.rate_exempt).map_err(invalid)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("registry-dns-tcp")
            .enable_all()
            .build()?;
        let (udp, tcp) = bind(listen, threads.max(1))?;
        let local = tcp.local_addr()?;
        let stats = Arc::new(DnsStats::default());
        let handler = Arc::new(Handler {
            registry,
            zone,
            ttl: options.ttl,
            limiter,
            stats: Arc::clone(&stats),
        });
        {
            let _guard = runtime.enter();
            let mut server = Server::new(SharedHandler(Arc::clone(&handler)));
            server.register_listener(tokio::net::TcpListener::from_std(tcp)?, TCP_IDLE, 64 << 10);
            runtime.spawn(async move { server.block_until_done().await });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let udp = udp::serve(udp, &handler, &stop)?;
        Ok(Dns {
            runtime: Some(runtime),
            udp,
            stop,
            local,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.udp.drain(..) {
            let _ = thread.join();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `sockets` UDP sockets (one per thread: the kernel spreads clients over them, which
/// measured faster than threads sharing one) and the TCP listener, on one port (port 0:
/// the first socket's port for all).
fn bind(listen: SocketAddr, sockets: usize) -> io::Result<(Vec<std::net::UdpSocket>, std::net::TcpListener)> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let open = |kind: Type, protocol: P, at: SocketAddr| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(at), kind, Some(protocol))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        Ok(socket)
    };
    let first = open(Type::DGRAM, P::UDP, listen)?;
    let at = first.local_addr()?.as_socket().unwrap_or(listen);
    let mut udp = vec![first.into()];
    for _ in 1..sockets {
        udp.push(open(Type::DGRAM, P::UDP, at)?.into());
    }
    let tcp = open(Type::STREAM, P::TCP, at)?;
    tcp.listen(1024)?;
    Ok((udp, tcp.into()))
}

/// The handler as hickory-server holds it (the UDP threads share it).
struct SharedHandler(Arc<Handler>);

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for SharedHandler {
    async fn handle_request<R: hickory_server::server::ResponseHandler, T: hickory_server::net::runtime::Time>(
        &self,
        request: &hickory_server::server::Request,
        response: R,
    ) -> hickory_server::server::ResponseInfo {
        self.0.handle_request::<R, T>(request, response).await
    }
}
