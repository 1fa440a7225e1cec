//! The front door of the API port: a small HTTP/1.1 gate in front of the Robyn workers.
//!
//! Robyn reads every request body whole into memory before any handler, middleware or
//! limit runs, and it cannot answer extension methods or refuse ambiguous framing. The
//! gate owns the public port and checks each request head before a byte of the body is
//! read:
//! - a body over the limit (by `Content-Length`, or while a chunked body is decoded) is
//!   refused with 413 and the connection closed, without reading the rest;
//! - `Content-Length` together with `Transfer-Encoding`, several different lengths, or a
//!   transfer coding other than `chunked` is a 400 and the connection is closed (RFC 9112
//!   section 6.1: a request smuggling vector otherwise);
//! - a method the API does not know is a JSON 405; a malformed head is a 400; a head over
//!   `max_head` bytes is a 431; a head that does not arrive in time is a 408;
//! - a `multipart/form-data` body is a 415 on the registry's own routes (they take JSON)
//!   and a 400 without a boundary anywhere: Robyn parses such bodies before any handler
//!   and answers a malformed one with a bare 500.
//!
//! Hot reads are answered here (`reads.rs`) and `/<slug>/...` is forwarded by the gate's
//! own proxy (`forward.rs`). The same gate, in `Role::Data`, holds the data port in every
//! server process (SO_REUSEPORT) and serves only those.
//!
//! Everything else goes to the workers on a loopback connection of its own (one per
//! client connection), with the body re-framed by `Content-Length` (a chunked body is
//! decoded here, so the workers never see a partial or chunked body) and the client's
//! address in `x-registry-client-addr` (a client-sent one is dropped). Responses are
//! copied back byte for byte. A refusal first lets the workers finish the responses to
//! earlier pipelined requests, then answers and closes.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::forward::{Forwarded, Forwarder, Outgoing, Payload, RETRY_BODY};
use crate::reads::{self, Tokens};
use crate::registry::Registry;
use crate::rules::registry_route;

/// The header carrying the client's address to the workers.
pub const CLIENT_ADDR_HEADER: &str = "x-registry-client-addr";
/// The header naming a blocking query (`?index=`) to the workers, so that the gate can
/// tell them when its client went away (`shared.rs`'s ring of abandoned queries).
pub const QUERY_HEADER: &str = "x-registry-query";
/// Blocking queries of one connection remembered for cancelling (pipelined ones beyond
/// this are rare; the oldest are answered already or will run out their wait).
const QUERIES_KEPT: usize = 16;
const MAX_HEADERS: usize = 100;
const LISTEN_BACKLOG: u32 = 4096;
/// How long, and how much, a refused client's leftover input is read and dropped.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_MAX_BYTES: usize = 256 << 20;
const MAX_CHUNK_LINE: usize = 1024;
/// How long a connection sits idle before its read buffer is given back.
const IDLE_RELEASE: Duration = Duration::from_secs(1);
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"];

/// What the gate lets through.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest body of a request to the registry's own routes (`rules::registry_route`).
    pub api_body: u64,
    /// Largest body of a request to the proxy (`/<slug>/...`).
    pub proxy_body: u64,
    /// Largest request head (request line and headers).
    pub max_head: usize,
    /// Time allowed for a head, from its first byte, and for a body.
    pub request_timeout: Duration,
    /// Time a kept-alive connection may sit idle between requests.
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

/// What the data port answers to a registry route it does not serve (None: served): a
/// write is a 405, a read of another route a 404, each naming the API port (`api_port`, 0
/// when unknown). Paths that are not registry routes are the proxy's.
pub fn data_port_refusal(method: &str, path: &str, api_port: u16) -> Option<Refusal> {
    if !registry_route(path) {
        return None;
    }
    let route = path.split('?').next().unwrap_or_default();
    let api = match api_port {
        0 => "use the API port".to_owned(),
        port => format!("use the API port ({port})"),
    };
    if method != "GET" && method != "HEAD" {
        return Some(Refusal::new(
            405,
            format!("{method} is not allowed on {route} on the data port, which serves reads; {api}"),
        ));
    }
    if route != "/health" && reads::read_of(route).is_none() {
        return Some(Refusal::new(
            404,
            format!(
                "{method} {route} is not served on the data port (instance lookups, picks and the proxy are); {api}"
            ),
        ));
    }
    None
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
pub struct Front {
    runtime: Option<tokio::runtime::Runtime>,
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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("registry-front")
            .enable_all()
            .build()?;
        let listener = {
            let _guard = runtime.enter();
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
            upstream,
            budget: Semaphore::new(limits.buffered_bodies.min(Semaphore::MAX_PERMITS)),
            limits,
            reads: registry.map(|r| (r, Tokens::default())),
            role,
            options,
            queries: std::sync::atomic::AtomicU32::new(0),
        });
        runtime.spawn(accept_loop(listener, gate, stopped));
        Ok(Front {
            runtime: Some(runtime),
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
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
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
    upstream: SocketAddr,
    limits: Limits,
    budget: Semaphore,
    /// The registry to answer hot reads from (`reads.rs`); None: everything is forwarded.
    reads: Option<(Arc<Registry>, Tokens)>,
    role: Role,
    /// The proxy; None: proxied paths go to the workers.
    forwarder: Option<Arc<Forwarder>>,
    options: Options,
    /// Blocking queries forwarded so far (their ids' low half).
    queries: std::sync::atomic::AtomicU32,
}

/// What to do with the next request of a connection.
enum Next {
    /// Send it to the workers (head and re-framed body), whether it is the connection's
    /// last (`Connection: close`, or HTTP/1.0 without keep-alive), and its id when it is a
    /// blocking query.
    Forward(Vec<u8>, bool, Option<u64>),
    /// Answered here: the response, and whether to close after it.
    Answer(Vec<u8>, Arc<Vec<u8>>, bool),
    /// A request to `/<slug>/...` for the gate's proxy (its body not read yet).
    Proxy(Head),
    /// No request came within the idle timeout: close once the responses under way are out.
    Idle,
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
        let (mut rd, mut wr) = stream.into_split();
        if wr.write_all(&refusal).await.is_ok() {
            let _ = wr.shutdown().await;
            drain(&mut rd, Duration::from_secs(1), 64 << 10, 4096).await;
        }
        drop(permit);
    });
}

async fn accept_loop(listener: TcpListener, gate: Arc<Gate>, mut stopped: watch::Receiver<bool>) {
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
    .response_with(&[("retry-after", "1")]);
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
                    tokio::spawn(async move {
                        gate.serve(stream, peer).await;
                        drop(held);
                    });
                }
                // Out of descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

/// A refusal: status, reason phrase, message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    /// The JSON error response, closing the connection.
    pub fn response(&self) -> Vec<u8> {
        error_response(self.status, &self.message, true)
    }

    /// The same with extra headers (`retry-after`).
    fn response_with(&self, headers: &[(&str, &str)]) -> Vec<u8> {
        json_answer(
            self.status,
            &serde_json::json!({ "error": self.message }).to_string(),
            headers,
            true,
        )
    }
}

/// `{"error": message}` with `status`, closing the connection after it when `close`.
fn error_response(status: u16, message: &str, close: bool) -> Vec<u8> {
    json_answer(status, &serde_json::json!({ "error": message }).to_string(), &[], close)
}

/// A JSON answer of the gate's own: `status`, `headers` (`retry-after`), `body`, and
/// `connection: close` when `close`.
fn json_answer(status: u16, body: &str, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n{connection}\r\n{body}",
        reason(status),
        body.len(),
    )
    .into_bytes()
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Error",
    }
}

/// How the body of a request is framed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A checked request head, ready to forward (without its framing headers).
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub framing: Framing,
    pub limit: u64,
    pub authorization: Option<String>,
    /// The client asked to close after this request (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    /// Request line and headers, minus framing and client-address headers, without the
    /// final blank line.
    pub forwarded: Vec<u8>,
    /// The headers of `forwarded`, for the proxy.
    pub headers: Vec<(String, Vec<u8>)>,
    pub http10: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
}

/// Parses and checks a complete request head (`raw` ends with the blank line).
pub fn check_head(raw: &[u8], limits: &Limits) -> Result<Head, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, format!("more than {MAX_HEADERS} request headers")))
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request: {e}"))),
    }
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or_default().to_owned();
    if !METHODS.contains(&method.as_str()) {
        return Err(Refusal::new(405, format!("{method} is not allowed on {path}")));
    }
    check_target(&path)?;
    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<String> = Vec::new();
    let mut authorization = None;
    let mut connection = String::new();
    let mut multipart_form = None;
    let mut forwarded = format!("{method} {path} HTTP/1.{}\r\n", request.version.unwrap_or(1)).into_bytes();
    // The proxy's copy of the headers; the registry's own routes do not need one.
    let proxied = !registry_route(&path);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(header.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.extend(
                String::from_utf8_lossy(header.value)
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        } else if !name.eq_ignore_ascii_case(CLIENT_ADDR_HEADER) && !name.eq_ignore_ascii_case(QUERY_HEADER) {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = std::str::from_utf8(header.value).ok().map(str::to_owned);
            } else if name.eq_ignore_ascii_case("connection") {
                connection = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            } else if name.eq_ignore_ascii_case("content-type") {
                let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
                if value.trim_start().starts_with("multipart/form-data") {
                    multipart_form = Some(value.contains("boundary="));
                }
            }
            forwarded.extend_from_slice(name.as_bytes());
            forwarded.extend_from_slice(b": ");
            forwarded.extend_from_slice(header.value);
            forwarded.extend_from_slice(b"\r\n");
            if proxied {
                kept.push((name.to_owned(), header.value.to_vec()));
            }
        }
    }
    let framing = match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Framing::None,
        ([], [only]) if only == "chunked" => Framing::Chunked,
        ([], _) => {
            return Err(Refusal::new(
                400,
                format!(
                    "unsupported Transfer-Encoding '{}'; only chunked is accepted",
                    codings.join(", ")
                ),
            ))
        }
        (_, [_, ..]) => {
            return Err(Refusal::new(
                400,
                "a request must not carry both Content-Length and Transfer-Encoding",
            ))
        }
        (first, []) => {
            let parse = |v: &[u8]| -> Option<u64> {
                let text = std::str::from_utf8(v).ok()?.trim();
                (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse().ok())
                    .flatten()
            };
            let values: Vec<Option<u64>> = first.iter().map(|v| parse(v)).collect();
            match values.first() {
                Some(Some(n)) if values.iter().all(|v| *v == Some(*n)) => Framing::Length(*n),
                _ => return Err(Refusal::new(400, "invalid or conflicting Content-Length")),
            }
        }
    };
    match multipart_form {
        Some(_) if registry_route(&path) => {
            return Err(Refusal::new(
                415,
                "Content-Type: the registry's routes take application/json, not multipart/form-data",
            ))
        }
        Some(false) => {
            return Err(Refusal::new(
                400,
                "Content-Type: multipart/form-data without a boundary",
            ))
        }
        _ => {}
    }
    // One table of the registry's routes (finding 7 of the 2026-12 review: xDS got the
    // proxy's limit, 16 MiB, into Robyn, which buffers bodies whole).
    let limit = if registry_route(&path) {
        limits.api_body
    } else {
        limits.proxy_body
    };
    if let Framing::Length(n) = framing {
        if n > limit {
            return Err(too_large(n, limit));
        }
    }
    let http10 = request.version == Some(0);
    let expect_continue = !http10
        && kept
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case(b"100-continue"));
    let close = connection.contains("close") || (http10 && !connection.contains("keep-alive"));
    Ok(Head {
        method,
        path,
        framing,
        limit,
        authorization,
        close,
        forwarded,
        headers: kept,
        http10,
        expect_continue,
    })
}

/// Only the origin form (`/path?query`) is served. The absolute form (`http://host/path`)
/// is for forward proxies, and routing it by its path would need every check of that route
/// applied to a second spelling; `*` (OPTIONS) asks about a server, not a resource. A raw
/// byte outside ASCII must be percent-encoded (RFC 3986).
fn check_target(path: &str) -> Result<(), Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::new(
            400,
            format!(
                "request target '{}': only a path starting with '/' is served (no absolute form, no '*')",
                path.escape_default()
            ),
        ));
    }
    if !path.is_ascii() {
        return Err(Refusal::new(
            400,
            "request target: a byte outside ASCII must be percent-encoded",
        ));
    }
    Ok(())
}

/// Whether a request to forward (its raw head first) is `GET` or `HEAD /health`.
fn is_health_check(request: &[u8]) -> bool {
    [&b"GET /health"[..], b"HEAD /health"]
        .iter()
        .any(|start| request.starts_with(start) && matches!(request.get(start.len()), Some(b' ' | b'?')))
}

/// `/health` while the workers do not answer yet: not ok, and when to ask again (a 503
/// with the health shape, `{"status":"starting"}`, rather than an error).
fn starting_health() -> Vec<u8> {
    json_answer(503, r#"{"status":"starting"}"#, &[("retry-after", "1")], true)
}

/// Whether the query of `path` asks to block (`index=`): the workers hold such reads.
fn is_blocking(path: &str) -> bool {
    path.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.split('=').next() == Some("index")))
}

fn too_large(size: u64, limit: u64) -> Refusal {
    Refusal::new(413, format!("request body is {size} bytes; the limit is {limit}"))
}

/// The client side of a connection: its read half and what was read but not used yet.
struct Incoming {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

enum HeadRead {
    Head(Vec<u8>),
    /// The client closed its side.
    Gone,
    /// The client sent nothing for the idle timeout.
    Idle,
}

impl Incoming {
    /// Reads what has arrived into `buf`'s spare room (no zeroed scratch buffer and no
    /// copy: the profile of the data port showed both).
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16 << 10);
        self.rd.read_buf(&mut self.buf).await
    }

    /// Waits until the client sends something (or closes) within `until`; a connection
    /// idle for a while gives its buffer back first, so that idle connections hold only
    /// their task and socket (the next request on a busy one finds its buffer still there).
    async fn arrival(&mut self, until: tokio::time::Instant) -> Option<HeadRead> {
        let soon = tokio::time::Instant::now() + IDLE_RELEASE;
        if soon < until && self.buf.is_empty() {
            if let Ok(ready) = tokio::time::timeout_at(soon, self.rd.readable()).await {
                return ready.is_err().then_some(HeadRead::Gone);
            }
            self.buf = Vec::new();
        }
        match tokio::time::timeout_at(until, self.rd.readable()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(HeadRead::Gone),
            Err(_) => Some(HeadRead::Idle),
        }
    }

    async fn head(&mut self, limits: &Limits) -> Result<HeadRead, Refusal> {
        // Idle between requests: wait for a first byte (tolerating stray CRLFs).
        let until = tokio::time::Instant::now() + limits.idle_timeout;
        loop {
            let stray = self.buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
            self.buf.drain(..stray);
            if !self.buf.is_empty() {
                break;
            }
            if let Some(gone) = self.arrival(until).await {
                return Ok(gone);
            }
            self.buf.reserve(16 << 10);
            match self.rd.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(HeadRead::Gone),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(HeadRead::Gone),
            }
        }
        let deadline = tokio::time::Instant::now() + limits.request_timeout;
        let mut scanned = 0;
        loop {
            let end = find_head_end(&self.buf, scanned)?;
            scanned = self.buf.len().saturating_sub(3);
            if let Some(end) = end {
                if end > limits.max_head {
                    return Err(Refusal::new(
                        431,
                        format!("request head over {} bytes", limits.max_head),
                    ));
                }
                // The buffer keeps its room for the next request.
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end);
                return Ok(HeadRead::Head(head));
            }
            if self.buf.len() > limits.max_head {
                return Err(Refusal::new(
                    431,
                    format!("request head over {} bytes", limits.max_head),
                ));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(HeadRead::Gone),
                Ok(Ok(_)) => {}
                Err(_) => return Err(Refusal::new(408, "the request head did not arrive in time")),
            }
        }
    }

    /// Exactly `n` body bytes.
    async fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.buf.split_off(n);
        out.extend_from_slice(&std::mem::replace(&mut self.buf, rest));
        Ok(())
    }

    async fn line(&mut self) -> Result<Vec<u8>, Refusal> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let rest = self.buf.split_off(end + 2);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(Refusal::new(400, "malformed chunked body"));
            }
            if self.fill().await.map_err(|_| gone())? == 0 {
                return Err(gone());
            }
        }
    }

    /// The size on a chunk's line; after the last chunk (size 0) its trailers are read and
    /// dropped, up to the blank line.
    async fn chunk_size(&mut self) -> Result<u64, Refusal> {
        let line = self.line().await?;
        let size = parse_chunk_size(&line).ok_or_else(|| Refusal::new(400, "malformed chunked body"))?;
        if size == 0 {
            while !self.line().await?.is_empty() {}
        }
        Ok(size)
    }

    /// A chunked body, decoded, refused past `limit`.
    async fn chunked(&mut self, limit: u64) -> Result<Vec<u8>, Refusal> {
        let mut body = Vec::new();
        loop {
            let size = self.chunk_size().await?;
            if size == 0 {
                return Ok(body);
            }
            // The size comes from the wire: saturating, so that a huge one cannot wrap the total.
            let total = (body.len() as u64).saturating_add(size);
            if total > limit {
                return Err(too_large(total, limit));
            }
            self.exact(size as usize, &mut body).await.map_err(|_| gone())?;
            if !self.line().await?.is_empty() {
                return Err(Refusal::new(400, "malformed chunked body"));
            }
        }
    }
}

/// The size on a chunk's line (RFC 9112 section 7.1: `1*HEXDIG`, then optional
/// `;extensions`): no sign, no spaces before it, at most 16 digits (a u64). None when it is
/// anything else.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    // Whitespace may stand before the extensions (BWS), nothing else.
    let rest = match rest.iter().position(|b| *b != b' ' && *b != b'\t') {
        Some(at) => &rest[at..],
        None => &[][..],
    };
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// The client went away mid-request: nothing to answer.
fn gone() -> Refusal {
    Refusal::new(0, "client gone")
}

/// Where the head in `buf` ends (after its blank line), looking from `from` on (the bytes
/// before it were looked at already). A line feed without its carriage return is refused:
/// parsers disagree on where such a head ends (a front proxy could be made to see one
/// request where the gate sees two), so RFC 9112 section 2.2's leniency is not taken.
fn find_head_end(buf: &[u8], from: usize) -> Result<Option<usize>, Refusal> {
    let mut at = from;
    while let Some(offset) = buf[at..].iter().position(|b| *b == b'\n') {
        let lf = at + offset;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(Refusal::new(
                400,
                "malformed request: a line of the head ends in a bare LF (CRLF is required)",
            ));
        }
        if lf >= 3 && &buf[lf - 3..=lf] == b"\r\n\r\n" {
            return Ok(Some(lf + 1));
        }
        at = lf + 1;
    }
    Ok(None)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Where responses to the client come from: nothing yet, or a task copying the workers'
/// responses that hands the client's write half back when the workers close.
enum Responses {
    Direct(OwnedWriteHalf),
    Relayed {
        upstream: OwnedWriteHalf,
        task: JoinHandle<OwnedWriteHalf>,
        /// Set when the gate itself ends the exchange with the workers (`finish`): the
        /// client is then still the gate's to answer or close.
        finishing: Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Responses {
    /// The client's write half, once every response already under way has been relayed.
    async fn finish(self) -> Option<OwnedWriteHalf> {
        match self {
            Responses::Direct(client) => Some(client),
            Responses::Relayed {
                mut upstream,
                task,
                finishing,
            } => {
                finishing.store(true, Ordering::Release);
                let _ = upstream.shutdown().await;
                task.await.ok()
            }
        }
    }
}

impl Gate {
    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let (rd, wr) = stream.into_split();
        let mut incoming = Incoming { rd, buf: Vec::new() };
        let mut responses = Responses::Direct(wr);
        // The blocking queries this connection sent to the workers, newest last.
        let mut queries: Vec<u64> = Vec::new();
        let client_ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        loop {
            let direct = matches!(responses, Responses::Direct(_));
            match self.next_request(&mut incoming, client_ip, direct).await {
                Ok(Some(Next::Forward(request, close, query))) => {
                    self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    if let Some(id) = query {
                        if queries.len() == QUERIES_KEPT {
                            queries.remove(0);
                        }
                        queries.push(id);
                    }
                    match self.forward(responses, request).await {
                        Ok(next) => responses = next,
                        Err(_) => return, // the client went away, or was already answered
                    }
                    if close {
                        // The client reads to the close: no further request is read.
                        if let Some(mut client) = responses.finish().await {
                            let _ = client.shutdown().await;
                        }
                        return;
                    }
                }
                Ok(Some(Next::Proxy(head))) => {
                    self.stats.proxied.fetch_add(1, Ordering::Relaxed);
                    // The workers' answers to earlier requests go out first.
                    let Some(mut client) = responses.finish().await else {
                        return;
                    };
                    let started = std::time::Instant::now();
                    let outcome = self.proxy(&head, &mut incoming, &mut client, client_ip).await;
                    if self.options.access_log {
                        let status = match &outcome {
                            Ok((_, status)) => *status,
                            Err(refusal) => refusal.status,
                        };
                        access_line(&head, status, started.elapsed(), client_ip);
                    }
                    match outcome {
                        Ok((true, _)) if !head.close => responses = Responses::Direct(client),
                        Ok(_) => {
                            let _ = client.shutdown().await;
                            return;
                        }
                        Err(refusal) => return refuse(refusal, Some(client), incoming).await,
                    }
                }
                Ok(Some(Next::Answer(head, body, close))) => {
                    self.stats.answered.fetch_add(1, Ordering::Relaxed);
                    let Responses::Direct(client) = &mut responses else {
                        return;
                    };
                    if write_both(client, &head, &body).await.is_err() {
                        return;
                    }
                    if close {
                        let _ = client.shutdown().await;
                        return;
                    }
                }
                Ok(Some(Next::Idle)) => {
                    if let Some(mut client) = responses.finish().await {
                        let _ = client.shutdown().await;
                    }
                    return;
                }
                Ok(None) => {
                    // The client closed its side. A response still
                    // under way is abandoned, as nginx does when a client goes away: the
                    // connection to the workers is dropped with it, so a blocking query
                    // held for this client holds no descriptor of the gate's any more.
                    match responses {
                        Responses::Direct(mut client) => {
                            let _ = client.shutdown().await;
                        }
                        Responses::Relayed { upstream, task, .. } => {
                            task.abort();
                            drop(upstream);
                            self.abandon(&queries);
                        }
                    }
                    return;
                }
                Err(refusal) => {
                    if refusal.status != 0 {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return refuse(refusal, responses.finish().await, incoming).await;
                }
            }
        }
    }

    /// The next request, checked and buffered: head (with its new framing) and body; or
    /// answered here, when it is a hot read and nothing of this connection went to the
    /// workers yet (their answers must come first, and they are relayed unparsed).
    async fn next_request(
        &self,
        incoming: &mut Incoming,
        client_ip: IpAddr,
        direct: bool,
    ) -> Result<Option<Next>, Refusal> {
        let raw = match incoming.head(&self.limits).await? {
            HeadRead::Head(raw) => raw,
            HeadRead::Gone => return Ok(None),
            HeadRead::Idle => return Ok(Some(Next::Idle)),
        };
        let head = check_head(&raw, &self.limits)?;
        if self.role == Role::Data {
            if let Some(refusal) = data_port_refusal(&head.method, &head.path, self.options.api_port) {
                return Err(refusal);
            }
        }
        if let (true, true, "GET", Framing::None, Some((registry, tokens))) = (
            direct,
            self.options.answer_reads,
            head.method.as_str(),
            head.framing,
            &self.reads,
        ) {
            if let Some(answer) = reads::answer(registry, tokens, &head.path, head.authorization.as_deref()) {
                let body = Arc::clone(&answer.body);
                return Ok(Some(Next::Answer(response_head(&answer, head.close), body, head.close)));
            }
        }
        if self.forwarder.is_some() && proxied_slug(&head.path).is_some() {
            return Ok(Some(Next::Proxy(head)));
        }
        let expected = match head.framing {
            Framing::Length(n) => n,
            Framing::Chunked => head.limit,
            Framing::None => 0,
        };
        // Hold budget for the body while it is buffered and forwarded.
        let permits = u32::try_from(expected.min(self.limits.buffered_bodies as u64)).unwrap_or(u32::MAX);
        let _held = if permits > 0 {
            Some(self.budget.acquire_many(permits).await.map_err(|_| gone())?)
        } else {
            None
        };
        let mut body = Vec::new();
        let read = async {
            match head.framing {
                Framing::None => Ok(()),
                Framing::Length(n) => incoming.exact(n as usize, &mut body).await.map_err(|_| gone()),
                Framing::Chunked => {
                    body = incoming.chunked(head.limit).await?;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(self.limits.request_timeout, read).await {
            Ok(result) => result?,
            Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
        }
        let mut request = head.forwarded;
        if head.framing != Framing::None {
            request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        let query = (head.method == "GET" && is_blocking(&head.path)).then(|| self.next_query_id());
        if let Some(id) = query {
            request.extend_from_slice(format!("{QUERY_HEADER}: {id}\r\n").as_bytes());
        }
        request.extend_from_slice(format!("{CLIENT_ADDR_HEADER}: {client_ip}\r\n\r\n").as_bytes());
        request.extend_from_slice(&body);
        Ok(Some(Next::Forward(request, head.close, query)))
    }

    /// A blocking query's id, unique over the server's processes: this process's id, then
    /// a count.
    fn next_query_id(&self) -> u64 {
        (u64::from(std::process::id()) << 32) | u64::from(self.queries.fetch_add(1, Ordering::Relaxed))
    }

    /// Tells the workers that the blocking queries `ids` lost their client.
    fn abandon(&self, ids: &[u64]) {
        if let Some((registry, _)) = &self.reads {
            for id in ids {
                registry.selector.shared().cancel_query(*id);
            }
        }
    }

    /// Sends one request to the workers, connecting (and starting the relay of their
    /// responses) on the first one.
    async fn forward(&self, responses: Responses, request: Vec<u8>) -> Result<Responses, Refusal> {
        let mut relayed = match responses {
            Responses::Relayed {
                upstream,
                task,
                finishing,
            } => (upstream, task, finishing),
            Responses::Direct(mut client) => {
                let stream = match TcpStream::connect(self.upstream).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Starting (the gate listens before the workers answer), or the
                        // workers are being restarted: a retry shortly will be answered.
                        let answer = if is_health_check(&request) {
                            starting_health()
                        } else {
                            Refusal::new(
                                503,
                                format!("the server is starting: its workers do not answer yet ({e}); retry shortly"),
                            )
                            .response_with(&[("retry-after", "1")])
                        };
                        let _ = client.write_all(&answer).await;
                        let _ = client.shutdown().await;
                        return Err(gone());
                    }
                };
                let _ = stream.set_nodelay(true);
                let (mut upstream_rd, upstream_wr) = stream.into_split();
                let finishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let ours = Arc::clone(&finishing);
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut upstream_rd, &mut client).await;
                    if !ours.load(Ordering::Acquire) {
                        // The workers closed on their own (a worker died, or they end the
                        // connection): no answer can come on it any more, so the client is
                        // told by the close rather than left waiting for the idle timeout.
                        let _ = client.shutdown().await;
                    }
                    client
                });
                (upstream_wr, task, finishing)
            }
        };
        if relayed.0.write_all(&request).await.is_err() {
            return Err(gone());
        }
        Ok(Responses::Relayed {
            upstream: relayed.0,
            task: relayed.1,
            finishing: relayed.2,
        })
    }
}

/// How a streamed request body ended.
enum Pumped {
    /// Read to its end.
    Whole,
    /// The proxy stopped taking it (it answered without it): the rest is still on the
    /// connection, which must close.
    Abandoned,
}

impl Gate {
    /// Forwards a proxied request with the gate's proxy and relays the answer. Ok((keep,
    /// status)): whether the connection may take another request, and the status sent.
    async fn proxy(
        &self,
        head: &Head,
        incoming: &mut Incoming,
        client: &mut OwnedWriteHalf,
        client_ip: IpAddr,
    ) -> Result<(bool, u16), Refusal> {
        let (Some(forwarder), Some((registry, _))) = (&self.forwarder, &self.reads) else {
            return Err(Refusal::new(502, "no proxy"));
        };
        let request = Outgoing {
            method: &head.method,
            target: &head.path,
            slug: proxied_slug(&head.path).unwrap_or_default(),
            headers: &head.headers,
            client_ip,
            http10: head.http10,
            sandboxed: self.role == Role::Api,
        };
        let timeout = self.limits.request_timeout;
        if head.expect_continue && head.framing != Framing::None {
            // The body is welcome: the client need not wait (curl waits a second).
            client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| gone())?;
        }
        let (forwarded, pumped) = match head.framing {
            Framing::None => (
                forwarder
                    .forward(registry, &request, Payload::Kept(Bytes::new()), client)
                    .await,
                Pumped::Whole,
            ),
            Framing::Length(n) if n <= RETRY_BODY => {
                let mut body = Vec::with_capacity(n as usize);
                match tokio::time::timeout(timeout, incoming.exact(n as usize, &mut body)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(gone()),
                    Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
                }
                let payload = Payload::Kept(Bytes::from(body));
                (
                    forwarder.forward(registry, &request, payload, client).await,
                    Pumped::Whole,
                )
            }
            framing => {
                let (tx, rx) = mpsc::channel(8);
                let length = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let pump = pump_body(incoming, framing, head.limit, tx, timeout);
                let payload = Payload::Streamed(rx, length);
                let (pumped, forwarded) = tokio::join!(pump, forwarder.forward(registry, &request, payload, client));
                match (pumped, forwarded) {
                    (Err(refusal), Forwarded::Error(..)) => return Err(refusal),
                    (Err(_), Forwarded::Relayed(_, status) | Forwarded::Broken(status)) => return Ok((false, status)),
                    (Ok(pumped), forwarded) => (forwarded, pumped),
                }
            }
        };
        match (forwarded, pumped) {
            (Forwarded::Relayed(keep, status), Pumped::Whole) => Ok((keep, status)),
            (Forwarded::Relayed(_, status), Pumped::Abandoned) | (Forwarded::Broken(status), _) => Ok((false, status)),
            (Forwarded::Error(status, message), Pumped::Abandoned) => Err(Refusal::new(status, message)),
            (Forwarded::Error(status, message), Pumped::Whole) => {
                let response = error_response(status, &message, false);
                Ok((client.write_all(&response).await.is_ok(), status))
            }
        }
    }
}

/// Feeds a request body to the proxy as it arrives, piece by piece (a chunked one
/// decoded, refused past `limit`). When the body cannot be read to its end, the proxy is
/// told so: a cut body must fail upstream, never reach it as a whole one.
async fn pump_body(
    incoming: &mut Incoming,
    framing: Framing,
    limit: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) -> Result<Pumped, Refusal> {
    let pumped = pump_pieces(incoming, framing, limit, &tx, timeout).await;
    if pumped.is_err() {
        let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "the client's body was cut short");
        let _ = tx.send(Err(cut)).await;
    }
    pumped
}

async fn pump_pieces(
    incoming: &mut Incoming,
    framing: Framing,
    limit: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) -> Result<Pumped, Refusal> {
    let mut left = match framing {
        Framing::None => return Ok(Pumped::Whole),
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    let mut total = 0u64;
    let mut in_chunk = false;
    loop {
        if framing == Framing::Chunked && left == 0 {
            if in_chunk && !incoming.line().await?.is_empty() {
                // The CRLF after a chunk's data.
                return Err(Refusal::new(400, "malformed chunked body"));
            }
            let size = incoming.chunk_size().await?;
            if size == 0 {
                return Ok(Pumped::Whole);
            }
            total = total.saturating_add(size);
            if total > limit {
                return Err(too_large(total, limit));
            }
            left = size;
            in_chunk = true;
        }
        if left == 0 {
            return Ok(Pumped::Whole); // Content-Length read
        }
        if incoming.buf.is_empty() {
            match tokio::time::timeout(timeout, incoming.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(gone()),
                Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
            }
        }
        let take = incoming.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let piece = Bytes::copy_from_slice(&incoming.buf[..take]);
        incoming.buf.drain(..take);
        left -= take as u64;
        if tx.send(Ok(piece)).await.is_err() {
            return Ok(Pumped::Abandoned); // the proxy answered without the rest
        }
    }
}

/// One access-log line for a request the gate's proxy handled, as `access.py` writes them.
fn access_line(head: &Head, status: u16, took: Duration, client_ip: IpAddr) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let line = serde_json::json!({
        "ts": utc_stamp(now),
        "type": "access",
        "method": head.method,
        "path": head.path.split('?').next().unwrap_or_default(),
        "route": "/<slug>/*",
        "status": status,
        "durationMs": (took.as_secs_f64() * 1e6).round() / 1e3,
        "token": serde_json::Value::Null,
        "client": client_ip.to_string(),
    });
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// `2026-12-02T01:02:03.456Z` for a time since the epoch.
pub fn utc_stamp(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

/// The slug of a path the gate's proxy may forward (a valid slug as its first segment, not
/// a registry route); None leaves the request to the workers.
fn proxied_slug(path: &str) -> Option<&str> {
    if registry_route(path) {
        return None;
    }
    let first = path.strip_prefix('/')?.split(['/', '?']).next()?;
    reads::is_slug(first).then_some(first)
}

/// Writes `head` then `body` in as few writes as the socket takes (one, mostly): the
/// cached body is sent from where it lies, not copied behind the head.
async fn write_both(client: &mut OwnedWriteHalf, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = client
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= head.len() {
            body = &body[n - head.len()..];
            head = &[];
        } else {
            head = &head[n..];
        }
    }
    Ok(())
}

/// The head of a read answered by the gate, framed as the workers frame theirs.
fn response_head(answer: &reads::Answer, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        answer.body.len(),
    );
    if let Some(index) = answer.index {
        out.push_str(&format!("x-registry-index: {index}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Answers a refusal and closes. The client may still be sending the body we refused:
/// closing at once would make the kernel reset the connection and lose the answer, so
/// what it sends is read and dropped (never kept) for a short while first (nginx's
/// "lingering close").
async fn refuse(refusal: Refusal, client: Option<OwnedWriteHalf>, mut incoming: Incoming) {
    let Some(mut client) = client else { return };
    if refusal.status == 0 {
        return; // the client is gone
    }
    if client.write_all(&refusal.response()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    drain(&mut incoming.rd, LINGER, LINGER_MAX_BYTES, 64 << 10).await;
}

/// Reads what the client still sends and drops it, for at most `time` and `most` bytes,
/// `piece` bytes a read (a lingering close: closing with unread input would reset the
/// connection before the client reads our answer). The scratch buffer is on the heap: as
/// an array it would sit in every connection's future.
async fn drain(rd: &mut OwnedReadHalf, time: Duration, most: usize, piece: usize) {
    let mut sink = vec![0u8; piece];
    let mut dropped = 0usize;
    let deadline = tokio::time::Instant::now() + time;
    while dropped < most {
        match tokio::time::timeout_at(deadline, rd.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => return,
        }
    }
}
