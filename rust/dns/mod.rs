//! The DNS interface: an authoritative server for one domain (`registry.` by default),
//! answering from the store with the selector's rules, on UDP and TCP.
//!
//! hickory-server does the protocol (framing, EDNS, truncation to the client's size, and
//! FORMERR for what does not parse); this module is the policy: which names exist
//! (`names.rs`), what they answer (`answer.rs`), who may ask how often (`limit.rs`), and
//! that nothing but reads is served (no recursion, zone transfer or update: REFUSED).

mod answer;
mod limit;
mod names;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

use crate::registry::Registry;
use answer::{Found, Zone};
use limit::{Limiter, Verdict};

/// An idle TCP connection is closed after this long.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// The largest UDP answer we send, whatever a client's EDNS offers (the DNS flag day 2020
/// size: no IP fragmentation); without EDNS, 512 bytes.
const MAX_UDP_PAYLOAD: u16 = 1232;

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
    runtime: Option<tokio::runtime::Runtime>,
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
            .worker_threads(threads.max(1))
            .thread_name("registry-dns")
            .enable_all()
            .build()?;
        let (udp, tcp) = bind(listen)?;
        let local = udp.local_addr()?;
        let stats = Arc::new(DnsStats::default());
        let handler = Handler {
            registry,
            zone,
            ttl: options.ttl,
            limiter,
            stats: Arc::clone(&stats),
        };
        {
            let _guard = runtime.enter();
            let mut server = Server::new(handler);
            server.register_socket(tokio::net::UdpSocket::from_std(udp)?);
            server.register_listener(tokio::net::TcpListener::from_std(tcp)?, TCP_IDLE, 64 << 10);
            runtime.spawn(async move { server.block_until_done().await });
        }
        Ok(Dns {
            runtime: Some(runtime),
            local,
            stats,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stop(&mut self) {
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

/// The UDP socket and TCP listener on one port (port 0: the UDP socket's port for both).
fn bind(listen: SocketAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    use socket2::{Domain, Protocol as P, Socket, Type};
    let open = |kind: Type, protocol: P, at: SocketAddr| -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(at), kind, Some(protocol))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&at.into())?;
        Ok(socket)
    };
    let udp = open(Type::DGRAM, P::UDP, listen)?;
    let at = udp.local_addr()?.as_socket().unwrap_or(listen);
    let tcp = open(Type::STREAM, P::TCP, at)?;
    tcp.listen(1024)?;
    Ok((udp.into(), tcp.into()))
}

struct Handler {
    registry: Arc<Registry>,
    zone: Zone,
    ttl: u32,
    limiter: Limiter,
    stats: Arc<DnsStats>,
}

/// What to say: a response code, or records.
enum Say {
    Code(ResponseCode),
    Reply(answer::Reply),
}

impl Handler {
    fn decide(&self, request: &Request) -> Say {
        match request.metadata.op_code {
            OpCode::Query => {}
            OpCode::Update => return Say::Code(ResponseCode::Refused),
            _ => return Say::Code(ResponseCode::NotImp),
        }
        let Ok(info) = request.request_info() else {
            return Say::Code(ResponseCode::FormErr);
        };
        let query = info.query;
        let qtype = query.query_type();
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) || query.query_class() != DNSClass::IN {
            return Say::Code(ResponseCode::Refused);
        }
        let qname = Name::from(query.name());
        if !self.zone.domain.zone_of(&qname) {
            // Not ours, and we do not recurse.
            return Say::Code(ResponseCode::Refused);
        }
        let below = usize::from(qname.num_labels() - self.zone.domain.num_labels());
        let labels: Option<Vec<&str>> = qname.iter().take(below).map(|l| std::str::from_utf8(l).ok()).collect();
        let Some(labels) = labels else {
            return Say::Reply(answer::Reply {
                found: Found::NxDomain,
                answers: Vec::new(),
                additionals: Vec::new(),
            });
        };
        match answer::reply(&self.registry, &self.zone, &labels, &qname, qtype, self.ttl()) {
            Ok(reply) => Say::Reply(reply),
            Err(_) => Say::Code(ResponseCode::ServFail),
        }
    }

    /// The TTL: 0 while a cluster replica has not heard from etcd lately (the data port's
    /// staleness rule), so that nobody caches what may be out of date.
    fn ttl(&self) -> u32 {
        if crate::reads::replica_is_stale(&self.registry) {
            0
        } else {
            self.ttl
        }
    }

    fn count(&self, code: ResponseCode, found: Option<Found>) {
        let counter = match (code, found) {
            (_, Some(Found::Records)) => &self.stats.answered,
            (_, Some(Found::NoData)) => &self.stats.nodata,
            (_, Some(Found::NxDomain)) => &self.stats.nxdomain,
            (ResponseCode::Refused | ResponseCode::NotImp, None) => &self.stats.refused,
            _ => &self.stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The size of an OPT record without options (EDNS's own place in an answer).
const OPT_RECORD_SIZE: u16 = 11;

/// How many answers and additional records fit in `room` bytes. The answer is cut to size
/// here rather than by hickory's encoder, which leaves the bytes of the record that did not
/// fit after the message (dnspython rejects such an answer as trailing junk).
fn fitting(
    request: &Request,
    metadata: Metadata,
    reply: &answer::Reply,
    soa: Option<&hickory_server::proto::rr::Record>,
    room: u16,
) -> (usize, usize) {
    use hickory_server::proto::serialize::binary::BinEncoder;
    let trial = MessageResponseBuilder::new(&request.queries, None).build(
        metadata,
        &reply.answers,
        [],
        soa,
        &reply.additionals,
    );
    let mut bytes = Vec::with_capacity(usize::from(room));
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(room);
    match trial.destructive_emit(&mut encoder) {
        Ok(info) => (
            usize::from(info.counts().answers).min(reply.answers.len()),
            usize::from(info.counts().additionals).min(reply.additionals.len()),
        ),
        Err(_) => (0, 0),
    }
}

/// The header of a message we did not send.
fn unsent(request: &Request) -> ResponseInfo {
    ResponseInfo::from(Header {
        metadata: Metadata::response_from_request(&request.metadata),
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        if request.metadata.message_type != MessageType::Query {
            return unsent(request); // a response sent to us: answering could loop
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let builder = MessageResponseBuilder::from_message_request(request);
        if request.protocol() == Protocol::Udp {
            match self.limiter.check(request.src().ip(), Instant::now()) {
                Verdict::Answer => {}
                verdict => {
                    self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    if verdict == Verdict::Drop {
                        return unsent(request);
                    }
                    metadata.truncation = true;
                    return response
                        .send_response(builder.build_no_records(metadata))
                        .await
                        .unwrap_or_else(|_| unsent(request));
                }
            }
        }
        let mut edns = Edns::new();
        let mut builder = builder;
        let mut room = 512;
        if let Some(asked) = request.edns.as_ref() {
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            room = edns.max_payload() - OPT_RECORD_SIZE;
            edns.set_version(0);
            builder.edns(&edns);
            if asked.version() > 0 {
                metadata.response_code = ResponseCode::BADVERS;
                return response
                    .send_response(builder.build_no_records(metadata))
                    .await
                    .unwrap_or_else(|_| unsent(request));
            }
        }
        let sent = match self.decide(request) {
            Say::Code(code) => {
                self.count(code, None);
                metadata.response_code = code;
                response.send_response(builder.build_no_records(metadata)).await
            }
            Say::Reply(reply) => {
                self.count(ResponseCode::NoError, Some(reply.found));
                metadata.authoritative = true;
                if reply.found == Found::NxDomain {
                    metadata.response_code = ResponseCode::NXDomain;
                }
                // A negative answer carries the zone's SOA (RFC 2308).
                let soa = (reply.found != Found::Records)
                    .then(|| self.zone.soa(self.registry.store.index().unwrap_or(0), self.ttl()));
                let (answers, additionals) = if request.protocol() == Protocol::Udp {
                    fitting(request, metadata, &reply, soa.as_ref(), room)
                } else {
                    (reply.answers.len(), reply.additionals.len())
                };
                // TC only when answers are missing; additional records may simply be left
                // out (RFC 2181, 9).
                metadata.truncation = answers < reply.answers.len();
                let additionals = if metadata.truncation { 0 } else { additionals };
                let built = builder.build(
                    metadata,
                    &reply.answers[..answers],
                    [],
                    soa.as_ref(),
                    &reply.additionals[..additionals],
                );
                response.send_response(built).await
            }
        };
        sent.unwrap_or_else(|_| unsent(request))
    }
}
