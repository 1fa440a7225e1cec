//! The front door of both ports: hyper's HTTP/1.1 server in front of the Robyn workers.
//!
//! Robyn reads every request body whole into memory before any handler, middleware or
//! limit runs, and it cannot answer extension methods or refuse ambiguous framing. The
//! gate owns the public port; hyper reads the heads, decodes chunked bodies (its sizes
//! checked: no wrap-around), keeps connections alive and answers what it cannot parse (400,
//! 431 past `max_head`, both closing). Each request is then checked here before a byte of
//! its body is read (`request.rs`):
//! - a body over the limit is refused with 413, by its `Content-Length` or while a chunked
//!   one is decoded, and the connection closed after a lingering read of what follows;
//! - a method the API does not know is a JSON 405; a target other than a path, or not
//!   ASCII, a JSON 400; a body that does not arrive in time a 408;
//! - a `multipart/form-data` body is a 415 on the registry's own routes (they take JSON)
//!   and a 400 without a boundary anywhere: Robyn parses such bodies before any handler
//!   and answers a malformed one with a bare 500.
//!
//! Hot reads are answered here (`reads.rs`) and `/<slug>/...` is forwarded by the gate's
//! own proxy (`forward/`). The same gate, in `Role::Data`, holds the data port in every
//! server process (SO_REUSEPORT) and serves only those.
//!
//! Everything else goes to the workers through a pool of kept-alive loopback connections
//! shared by every client (`workers.rs`), the body read whole first and re-framed by
//! `Content-Length` (the workers never see a partial or chunked body), the client's address
//! in `x-registry-client-addr` (a client-sent one is dropped).
//!
//! The rooms: this module listens, caps connections and starts and stops the gate;
//! `server` holds one connection (hyper, its limits, the lingering close); `dispatch`
//! decides who answers each request (hot reads, the workers, the proxy, a refusal);
//! `request` checks a request's head and reads its body; `workers` relays to the workers;
//! `proxy` hands `/<slug>/...` to `forward/`; `answer` builds the gate's own answers;
//! `access` formats the access-log line.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::forward::Forwarder;
use crate::reads;
use crate::registry::Registry;
use crate::rules::registry_route;

mod access;
mod answer;
mod dispatch;
#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod idle_tests;
mod proxy;
mod request;
mod server;
#[cfg(test)]
mod tests;
mod workers;

use access::*;
pub use access::{access_json, utc_stamp, AccessEntry};
pub use answer::Refusal;
use answer::*;
pub use dispatch::data_port_refusal;
pub(crate) use dispatch::proxied_slug;
use request::*;
use workers::Workers;

/// The header carrying the client's address to the workers.
pub const CLIENT_ADDR_HEADER: &str = "x-registry-client-addr";
/// The header naming a blocking query (`?index=`) to the workers, so that the gate can
/// tell them when its client went away (`shared.rs`'s ring of abandoned queries).
pub const QUERY_HEADER: &str = "x-registry-query";
const MAX_HEADERS: usize = 100;
const LISTEN_BACKLOG: u32 = 4096;
/// How long, and how much, a refused client's leftover input is read and dropped.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 256 << 20;
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];

/// The body of every answer a gate sends: its own bytes, the workers' or an upstream's.
pub type AnswerBody = UnsyncBoxBody<Bytes, io::Error>;
pub type Answer = hyper::Response<AnswerBody>;

/// What the gate lets through.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body of a request to the registry's own routes (`rules::registry_route`).
    pub api_body: u64,
    /// Largest body of a request to the proxy (`/<slug>/...`).
    pub proxy_body: u64,
    /// Largest request head (request line and headers).
    pub max_head: usize,
    /// Time allowed for a body, and for each piece of a streamed one.
    pub request_timeout: Duration,
    /// Time allowed for the next request head of a connection, from the end of the last
    /// answer (or from the accept): a kept-alive connection idle this long is closed, and
    /// so is one whose head trickles in for longer.
    pub idle_timeout: Duration,
    /// Body bytes held in memory at once across all connections (bodies are buffered
    /// before they are forwarded; past this, new bodies wait).
    pub buffered_bodies: usize,
    /// Client connections held at once on this port; past it a new one gets a 503 and is
    /// closed. 0: derived from the descriptor limit (a connection may hold three: the
    /// client's, one to the workers and one upstream).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            api_body: 1 << 20,
            proxy_body: 16 << 20,
            max_head: 32 << 10,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            buffered_bodies: 256 << 20,
            max_connections: 0,
        }
    }
}

/// Which port a gate holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API port: the whole API; hot reads are answered here, the rest by the workers.
    Api,
    /// The data port (`--data-port`): instance lookups, picks and the proxy, nothing else.
    /// Every server process holds one on the same port (SO_REUSEPORT); the kernel spreads
    /// connections over them.
    Data,
}

/// How a gate with a registry uses it.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Answer the hot reads here (off while the access log is on: the workers log them).
    pub answer_reads: bool,
    /// Write a JSON access line to stderr for each request the proxy forwards, in the
    /// workers' format (`access.py`).
    pub access_log: bool,
    /// The API port, named in the data port's refusals (0: unknown).
    pub api_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            answer_reads: true,
            access_log: false,
            api_port: 0,
        }
    }
}

/// A running gate; stops when dropped or on `stop`.
///
/// Its threads each run a single-threaded Tokio runtime: a connection, its requests and
/// the upstream exchanges they start stay on one thread, with no work stealing and no
/// wake-up of another thread on the way (measured: about 15% more proxied requests per
/// second than one multi-threaded runtime, at the same thread count). The first thread
/// also accepts, and hands the connections out to the threads in turn.
pub struct Front {
    threads: Vec<std::thread::JoinHandle<()>>,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    stats: Arc<GateStats>,
    forwarder: Option<Arc<Forwarder>>,
}

/// What the gate did with the requests it read, since it started (for `/metrics`).
#[derive(Default, Debug)]
pub struct GateStats {
    /// Hot reads answered by the gate itself.
    pub answered: AtomicU64,
    /// Requests sent on to the workers.
    pub forwarded: AtomicU64,
    /// Requests refused by the gate (4xx/5xx of its own: too large, malformed, slow).
    pub refused: AtomicU64,
    /// Requests to `/<slug>/...` forwarded by the gate's own proxy (`forward.rs`).
    pub proxied: AtomicU64,
}

impl Front {
    /// Listens on `listen` (an error if it is taken), forwarding to the workers at `upstream`,
    /// and answering hot reads from `registry` when given.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        limits: Limits,
        threads: usize,
        registry: Option<Arc<Registry>>,
        role: Role,
        proxy: Option<Forwarder>,
        options: Options,
    ) -> io::Result<Front> {
        let runtimes = (0..threads.max(1))
            .map(|_| tokio::runtime::Builder::new_current_thread().enable_all().build())
            .collect::<io::Result<Vec<_>>>()?;
        let listener = {
            let _guard = runtimes[0].enter();
            let socket = if listen.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // Lets a restart bind past TIME_WAIT leftovers; a live listener still fails.
            socket.set_reuseaddr(true)?;
            if role == Role::Data {
                socket.set_reuseport(true)?;
            }
            socket.bind(listen)?;
            socket.listen(LISTEN_BACKLOG)?
        };
        let local = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let stats = Arc::new(GateStats::default());
        // The proxy needs the registry to pick from.
        let forwarder = proxy.filter(|_| registry.is_some()).map(Arc::new);
        let gate = Arc::new(Gate {
            forwarder: forwarder.clone(),
            stats: Arc::clone(&stats),
            workers: Workers::new(upstream),
            budget: Semaphore::new(limits.buffered_bodies.min(Semaphore::MAX_PERMITS)),
            limits,
            reads: registry,
            role,
            options,
            queries: std::sync::atomic::AtomicU32::new(0),
        });
        let handles = runtimes.iter().map(|runtime| runtime.handle().clone()).collect();
        runtimes[0].spawn(accept_loop(listener, gate, stopped.clone(), handles));
        let threads = runtimes
            .into_iter()
            .enumerate()
            .map(|(lane, runtime)| {
                let mut stopped = stopped.clone();
                std::thread::Builder::new()
                    .name("registry-front".into())
                    .spawn(move || {
                        // Its own pools to the workers and the upstreams (`lanes.rs`).
                        crate::lanes::enter(lane);
                        runtime.block_on(async move {
                            let _ = stopped.wait_for(|stop| *stop).await;
                        });
                        runtime.shutdown_timeout(Duration::from_secs(1));
                    })
            })
            .collect::<io::Result<Vec<_>>>();
        let threads = match threads {
            Ok(threads) => threads,
            Err(e) => {
                let _ = stop.send(true);
                return Err(e);
            }
        };
        Ok(Front {
            threads,
            local,
            stop,
            stats,
            forwarder,
        })
    }

    /// (answered, forwarded, refused, proxied) requests since the gate started.
    pub fn stats(&self) -> (u64, u64, u64, u64) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        (
            load(&self.stats.answered),
            load(&self.stats.forwarded),
            load(&self.stats.refused),
            load(&self.stats.proxied),
        )
    }

    /// The proxy's upstream outcomes and ejections (none without a proxy).
    pub fn proxy_stats(&self) -> Vec<(&'static str, u64)> {
        self.forwarder.as_ref().map(|f| f.stats.snapshot()).unwrap_or_default()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops accepting and drops every connection.
    pub fn stop(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Gate {
    stats: Arc<GateStats>,
    /// The pooled connections to the workers.
    workers: Workers,
    limits: Limits,
    budget: Semaphore,
    /// The registry to answer hot reads from (`reads.rs`); None: everything is forwarded.
    reads: Option<Arc<Registry>>,
    role: Role,
    /// The proxy; None: proxied paths go to the workers.
    forwarder: Option<Arc<Forwarder>>,
    options: Options,
    /// Blocking queries forwarded so far (their ids' low half).
    queries: std::sync::atomic::AtomicU32,
}

/// The connection cap when none is given: a third of the descriptors this process may
/// open, less some for the store, logs and the workers' own sockets.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    (soft.saturating_sub(256) / 3).clamp(64, 100_000)
}

/// Refusals past the connection cap that wait for the client's request before closing
/// (so that the close does not reset the connection before the 503 is read); past this
/// many at once, the refusal is written and the connection dropped at once.
const REFUSALS_LINGERING: usize = 64;

fn refuse_connection(stream: TcpStream, refusal: &[u8], lingering: &Arc<Semaphore>) {
    let Ok(permit) = Arc::clone(lingering).try_acquire_owned() else {
        let _ = stream.try_write(refusal);
        return;
    };
    let refusal = refusal.to_vec();
    tokio::spawn(async move {
        let mut stream = stream;
        if stream.write_all(&refusal).await.is_ok() {
            let _ = stream.shutdown().await;
            drain(&mut stream, Duration::from_secs(1), 64 << 10, 4096).await;
        }
        drop(permit);
    });
}

/// Accepts on the first thread and serves each connection on the next thread in turn
/// (`threads`: the handles of every thread's runtime, the first one's included).
async fn accept_loop(
    listener: TcpListener,
    gate: Arc<Gate>,
    mut stopped: watch::Receiver<bool>,
    threads: Vec<tokio::runtime::Handle>,
) {
    let cap = match gate.limits.max_connections {
        0 => default_max_connections(),
        n => n,
    };
    let open = Arc::new(Semaphore::new(cap));
    let lingering = Arc::new(Semaphore::new(REFUSALS_LINGERING));
    let full = Refusal::new(
        503,
        format!("this port holds {cap} connections already (the most it takes); retry later"),
    )
    .retry_after(1)
    .raw();
    let mut turn = 0usize;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(held) = Arc::clone(&open).try_acquire_owned() else {
                        refuse_connection(stream, &full, &lingering);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let gate = Arc::clone(&gate);
                    turn = (turn + 1) % threads.len();
                    if turn == 0 {
                        tokio::spawn(async move {
                            server::serve(gate, stream, peer).await;
                            drop(held);
                        });
                    } else if let Ok(stream) = stream.into_std() {
                        // Registered again with the other thread's reactor, there.
                        threads[turn].spawn(async move {
                            if let Ok(stream) = TcpStream::from_std(stream) {
                                server::serve(gate, stream, peer).await;
                            }
                            drop(held);
                        });
                    }
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}
