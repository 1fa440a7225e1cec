//! The built-in proxy, `/<slug>/rest...`, forwarded in Rust by the gates of both ports.
//!
//! The instance is chosen by the same selection as `pick` (the slug's policy, tracked as
//! in flight), and the request goes to `instance.url + target`: the target (path and
//! query) byte for byte as the client sent it, the slug staying in the path, as in
//! 1Backend. Upstream connections are pooled and kept alive (hyper's client); bodies are
//! streamed both ways and never held whole, except a request body of up to
//! `RETRY_BODY` bytes, which is kept so an idempotent request can be retried.
//!
//! Headers: hop-by-hop ones (and those `Connection` names) are dropped both ways; a registry
//! token (`rsv_...`) in Authorization is never forwarded; `X-Forwarded-For` gets the
//! client's address appended, `X-Forwarded-Proto`/`-Host` are set from the connection and
//! its Host header (a client's own are dropped); `X-Registry-Forwarded` marks the request,
//! and a request that already carries it is refused (508), so an instance registered at a
//! registry's own address cannot loop. Bodies pass as they come (a gzip body stays gzip).
//!
//! Refused before any upstream is contacted: a dot segment in the path (400, also
//! percent-encoded or behind a backslash). Upstreams are fenced by `--proxy-networks`
//! (`netguard.rs`): one outside is not contacted and counts as a connect failure.
//!
//! Failures: a connect failure is retried once on another instance for idempotent methods
//! (when the body was kept); connect failures and 5xx answers feed outlier ejection, whose
//! state every process of the server shares (`shared.rs`). Unknown slug 404, nothing
//! routable 503, upstream failure 502, no answer in time 504. Timeouts: connect
//! `CONNECT_TIMEOUT`; the response head, and each piece of a response body, `timeout`
//! (`--proxy-timeout-seconds`); idle pooled connections close after `POOL_IDLE`.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use crate::netguard::NetPolicy;
use crate::registry::Registry;
use crate::route::SlugRoute;
use crate::select::{Outcome, PickRequest, Picked};

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_IDLE: Duration = Duration::from_secs(90);
const POOL_PER_HOST: usize = 256;
/// A request body up to this size is kept for a retry; a larger one is streamed once.
pub const RETRY_BODY: u64 = 64 << 10;
/// Responses up to this size go out in one write with their head.
const GATHER: u64 = 64 << 10;
/// Set on every forwarded request; a request carrying it is never forwarded again.
pub const FORWARDED_HEADER: &str = "x-registry-forwarded";
const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];
const HOP_BY_HOP: [&str; 13] = [
    "connection",
    // Answered by the gate itself (100 Continue), as nginx does.
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

pub type RequestBody = BoxBody<Bytes, io::Error>;

/// Proxied requests by outcome, and ejections, since start (for `/metrics`).
#[derive(Default, Debug)]
pub struct ProxyStats {
    pub success: AtomicU64,
    pub server_error: AtomicU64,
    pub connect_error: AtomicU64,
    pub error: AtomicU64,
    pub not_contacted: AtomicU64,
    pub timeout: AtomicU64,
    pub ejections: AtomicU64,
}

impl ProxyStats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("success", load(&self.success)),
            ("5xx", load(&self.server_error)),
            ("connect_error", load(&self.connect_error)),
            ("error", load(&self.error)),
            ("not_contacted", load(&self.not_contacted)),
            ("timeout", load(&self.timeout)),
            ("ejections", load(&self.ejections)),
        ]
    }
}

/// Why the fence did not let a connection be made (its message is the reason).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The connector's resolver: a host name becomes the addresses the network fence allows,
/// and the connection goes to exactly those (never to a second resolution of the name).
#[derive(Clone)]
struct Fenced(Arc<NetPolicy>);

impl tower_service::Service<Name> for Fenced {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            // The port is set by the connector from the URL.
            match policy.resolve(name.as_str(), 0).await {
                Ok(address) => Ok(vec![address].into_iter()),
                Err(why) => Err(io::Error::new(io::ErrorKind::PermissionDenied, Refused(why))),
            }
        })
    }
}

type Connector = HttpsConnector<HttpConnector<Fenced>>;

/// The forwarding side of a gate: the upstream connection pool and the network fence.
pub struct Forwarder {
    client: Client<Connector, RequestBody>,
    policy: Arc<NetPolicy>,
    timeout: Duration,
    pub stats: ProxyStats,
}

/// A request to forward, as the gate read it (the body still on the connection).
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// Path and query as the client sent them.
    pub target: &'a str,
    pub slug: &'a str,
    pub headers: &'a [(String, Vec<u8>)],
    pub client_ip: IpAddr,
    /// The client spoke HTTP/1.0 (no chunked responses).
    pub http10: bool,
    /// Served on the dashboard's origin (the API port): the answer is sandboxed, so that
    /// a proxied page runs in an opaque origin and cannot read the dashboard's token.
    pub sandboxed: bool,
}

/// Sent with every proxied answer on the API port: scripts, forms and popups work, but
/// without `allow-same-origin` the page is not of the registry's origin (no access to the
/// dashboard's storage, and its requests to the registry are cross-origin).
pub const SANDBOX_POLICY: &str =
    "sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads allow-popups-to-escape-sandbox";

/// The body of the request being forwarded.
pub enum Payload {
    /// Whole (none, or small enough to keep for a retry).
    Kept(Bytes),
    /// Arriving: pieces as the gate reads them from the client, and its length when the
    /// client gave one (the upstream gets the same framing).
    Streamed(mpsc::Receiver<io::Result<Bytes>>, Option<u64>),
}

/// What became of a forwarded request.
pub enum Forwarded {
    /// The upstream's answer (its status) was relayed; keep the client connection when true.
    Relayed(bool, u16),
    /// An error answer for the client (status, message).
    Error(u16, String),
    /// The client or the upstream went away mid-answer (the status sent, if any): close
    /// the connection.
    Broken(u16),
}

/// A body fed from a channel (the client's request body, as it arrives); `sent` fires
/// once hyper has taken all of it.
struct ChannelBody {
    pieces: mpsc::Receiver<io::Result<Bytes>>,
    sent: Option<oneshot::Sender<()>>,
    length: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let polled = self.pieces.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            if let Some(sent) = self.sent.take() {
                let _ = sent.send(());
            }
        }
        polled.map(|piece| piece.map(|r| r.map(Frame::data)))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.length
            .map_or_else(hyper::body::SizeHint::default, hyper::body::SizeHint::with_exact)
    }
}

/// An instance URL in parts (`scheme://netloc/path`); the port stays in `netloc`, which
/// the request's URI carries.
pub(crate) struct Upstream<'u> {
    pub scheme: &'u str,
    pub netloc: &'u str,
    /// As written in the URL: an IPv6 address keeps its brackets.
    pub host: &'u str,
    pub path: &'u str,
}

impl Upstream<'_> {
    /// The port: the URL's, or its scheme's default.
    pub fn port(&self) -> u16 {
        let written = self.netloc.len() > self.host.len();
        let default = if self.scheme == "https" { 443 } else { 80 };
        written
            .then(|| self.netloc[self.host.len() + 1..].parse().ok())
            .flatten()
            .unwrap_or(default)
    }
}

pub(crate) fn split_url(url: &str) -> Option<Upstream<'_>> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (netloc, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    let (host, port) = match netloc.strip_prefix('[').and_then(|n| n.find(']')) {
        Some(close) => (&netloc[..close + 2], netloc[close + 2..].strip_prefix(':')),
        None => match netloc.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (netloc, None),
        },
    };
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return None;
    }
    Some(Upstream {
        scheme,
        netloc,
        host,
        path: path.trim_end_matches('/'),
    })
}

/// Whether `path` has a `.` or `..` segment once percent-decoded (twice), counting `\` as a
/// separator (some servers do) and ignoring a segment's `;parameters` (Java servlet
/// containers strip them and then act on the `..` left: `/..;/admin`).
pub fn has_dot_segment(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let once = percent_decode(path.as_bytes());
    let twice = percent_decode(&once);
    twice.split(|b| *b == b'/' || *b == b'\\').any(|segment| {
        let bare = segment.split(|b| *b == b';').next().unwrap_or_default();
        bare == b"." || bare == b".."
    })
}

fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Whether an Authorization value carries a registry token (bare or as a bearer).
pub fn is_registry_token(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value);
    let mut text = text.trim();
    if text.len() >= 7 && text[..7].eq_ignore_ascii_case("bearer ") {
        text = text[7..].trim();
    }
    text.starts_with(crate::tokens::SECRET_PREFIX)
}

/// The hop-by-hop headers of one message: the standard ones plus any its Connection
/// header names (allocating only for those, which are rare).
struct HopByHop(Vec<String>);

impl HopByHop {
    fn of<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> HopByHop {
        let mut named = Vec::new();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("connection") {
                named.extend(
                    String::from_utf8_lossy(value)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty()),
                );
            }
        }
        HopByHop(named)
    }

    fn contains(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) || self.0.iter().any(|h| name.eq_ignore_ascii_case(h))
    }
}

impl Forwarder {
    /// https upstreams are verified against the system's CA certificates (`SSL_CERT_FILE`
    /// / `SSL_CERT_DIR` point elsewhere); without any, every https upstream fails its
    /// handshake (a 502 naming the unknown issuer), and plain http works as ever.
    pub fn new(policy: NetPolicy, timeout: Duration) -> Forwarder {
        let policy = Arc::new(policy);
        let mut http = HttpConnector::new_with_resolver(Fenced(Arc::clone(&policy)));
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_PER_HOST)
            .pool_timer(TokioTimer::new())
            .retry_canceled_requests(false)
            .set_host(false)
            .build(connector);
        Forwarder {
            client,
            policy,
            timeout,
            stats: ProxyStats::default(),
        }
    }

    /// Forwards `request` and relays the answer to `client`.
    pub async fn forward(
        &self,
        registry: &Registry,
        request: &Outgoing<'_>,
        mut payload: Payload,
        client: &mut OwnedWriteHalf,
    ) -> Forwarded {
        let slug = request.slug;
        if request
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(FORWARDED_HEADER))
        {
            return Forwarded::Error(
                508,
                format!("loop detected: this request to '{slug}' was already forwarded by a registry"),
            );
        }
        let path = request.target.split('?').next().unwrap_or_default();
        if has_dot_segment(path) {
            return Forwarded::Error(
                400,
                "path: '.' and '..' segments are not forwarded (they would leave the slug)".to_owned(),
            );
        }
        let headers = self.upstream_headers(request);
        let route = SlugRoute::read(&registry.store, slug);
        let timeout = route.timeout.unwrap_or(self.timeout);
        let forwarded_target = route.upstream_target(request.target);
        let retryable = IDEMPOTENT.contains(&request.method) && matches!(payload, Payload::Kept(_));
        let tries = if retryable { 1 + route.retries } else { 1 };
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = String::new();
        for _ in 0..tries {
            let pick = PickRequest {
                slug,
                track: true,
                exclude: &tried,
                ..PickRequest::default()
            };
            let chosen = match registry.selector.pick(&registry.store, &pick) {
                Ok(Picked::Instance(c)) => c,
                Ok(Picked::UnknownSlug) if tried.is_empty() => {
                    return Forwarded::Error(
                        404,
                        format!(
                            "no route for {} {path}, and no registered service '{slug}'",
                            request.method
                        ),
                    )
                }
                Ok(Picked::UnknownSlug) => return Forwarded::Error(502, last_error),
                Ok(Picked::NoneRoutable) => return Forwarded::Error(503, format!("no healthy instance of '{slug}'")),
                Err(e) => return Forwarded::Error(503, format!("the registry cannot be read: {e}")),
            };
            let release = |outcome: Outcome| {
                if registry
                    .selector
                    .release(&registry.store, slug, &chosen.id, outcome)
                    .unwrap_or(false)
                {
                    self.stats.ejections.fetch_add(1, Ordering::Relaxed);
                }
            };
            let url = chosen.url.as_str();
            let target = match split_url(url) {
                // An address is checked here (the connector does not resolve it); a name
                // by the connector's resolver (`Fenced`).
                Some(up) => match up.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                    Ok(ip) => self.policy.check(ip).map(|()| up),
                    Err(_) => Ok(up),
                },
                None => Err("not an http:// or https:// URL".to_owned()),
            };
            let upstream = match target {
                Ok(t) => t,
                Err(why) => {
                    release(Outcome::Failure);
                    self.stats.not_contacted.fetch_add(1, Ordering::Relaxed);
                    last_error = format!("upstream {url} of '{slug}' not contacted: {why}");
                    tried.push(chosen.id.clone());
                    continue;
                }
            };
            // The response timeout starts once the body is sent: a large upload may take
            // longer than the wait for an answer.
            let (sent, body_sent) = oneshot::channel();
            let body: RequestBody = match &mut payload {
                Payload::Kept(bytes) => {
                    let _ = sent.send(());
                    if bytes.is_empty() {
                        Empty::new().map_err(|e| match e {}).boxed()
                    } else {
                        Full::new(bytes.clone()).map_err(|e| match e {}).boxed()
                    }
                }
                Payload::Streamed(rx, length) => {
                    let (_, empty) = mpsc::channel(1);
                    ChannelBody {
                        pieces: std::mem::replace(rx, empty),
                        sent: Some(sent),
                        length: *length,
                    }
                    .boxed()
                }
            };
            let uri = format!(
                "{}://{}{}{}",
                upstream.scheme, upstream.netloc, upstream.path, forwarded_target
            );
            let built = hyper::Request::builder()
                .method(request.method)
                .uri(uri.as_str())
                .header("host", upstream.netloc)
                .body(body);
            let outgoing = match built {
                Ok(mut r) => {
                    r.headers_mut().extend(headers.clone());
                    r
                }
                Err(e) => {
                    release(Outcome::Abandoned);
                    return Forwarded::Error(400, format!("the request cannot be forwarded: {e}"));
                }
            };
            let deadline = async {
                let _ = body_sent.await;
                tokio::time::sleep(timeout).await;
            };
            let answered = tokio::select! {
                answered = self.client.request(outgoing) => Ok(answered),
                () = deadline => Err(()),
            };
            let answer = match answered {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) if e.is_connect() => {
                    release(Outcome::Failure);
                    tried.push(chosen.id.clone());
                    if let Some(refused) = refusal(&e) {
                        self.stats.not_contacted.fetch_add(1, Ordering::Relaxed);
                        last_error = format!("upstream {url} of '{slug}' not contacted: {refused}");
                    } else {
                        self.stats.connect_error.fetch_add(1, Ordering::Relaxed);
                        last_error = format!("upstream {url} of '{slug}' failed to connect: {}", source_text(&e));
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    release(Outcome::Failure);
                    self.stats.error.fetch_add(1, Ordering::Relaxed);
                    return Forwarded::Error(502, format!("upstream {url} of '{slug}' failed: {}", source_text(&e)));
                }
                Err(_) => {
                    release(Outcome::Failure);
                    self.stats.timeout.fetch_add(1, Ordering::Relaxed);
                    return Forwarded::Error(
                        504,
                        format!(
                            "upstream {url} of '{slug}' did not answer within {}s",
                            timeout.as_secs_f64()
                        ),
                    );
                }
            };
            let status = answer.status().as_u16();
            if status == 101 {
                // Upgrade is hop-by-hop and never forwarded, so this switch was not asked
                // for: relayed, the connection would change protocols under the client (and
                // under a front proxy that saw the client's own Upgrade) while the gate
                // goes on reading HTTP.
                release(Outcome::Failure);
                self.stats.error.fetch_add(1, Ordering::Relaxed);
                return Forwarded::Error(
                    502,
                    format!("upstream {url} of '{slug}' answered 101 Switching Protocols to a request that asked for no upgrade"),
                );
            }
            if status >= 500 {
                release(Outcome::Failure);
                self.stats.server_error.fetch_add(1, Ordering::Relaxed);
            } else {
                release(Outcome::Success);
                self.stats.success.fetch_add(1, Ordering::Relaxed);
            }
            return relay(answer, request, client, timeout).await;
        }
        Forwarded::Error(502, last_error)
    }

    /// The client's headers as the upstream gets them.
    fn upstream_headers(&self, request: &Outgoing<'_>) -> hyper::HeaderMap {
        let drop = HopByHop::of(request.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        let mut out = hyper::HeaderMap::with_capacity(request.headers.len() + 4);
        let mut forwarded_for: Option<&[u8]> = None;
        let mut host: &[u8] = b"";
        for (name, value) in request.headers {
            let name = name.as_str();
            if name.eq_ignore_ascii_case("x-forwarded-for") && forwarded_for.is_none() {
                forwarded_for = Some(value);
            }
            if name.eq_ignore_ascii_case("host") {
                host = value;
            }
            if drop.contains(name) || is_forwarding_claim(name) {
                continue;
            }
            if name.eq_ignore_ascii_case("authorization") && is_registry_token(value) {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                hyper::header::HeaderValue::from_bytes(value),
            ) {
                out.append(name, value);
            }
        }
        let client = request.client_ip.to_string();
        let chain = match forwarded_for {
            Some(previous) => {
                let mut v = previous.to_vec();
                v.extend_from_slice(b", ");
                v.extend_from_slice(client.as_bytes());
                v
            }
            None => client.into_bytes(),
        };
        let value = |bytes: &[u8]| {
            hyper::header::HeaderValue::from_bytes(bytes).unwrap_or(hyper::header::HeaderValue::from_static(""))
        };
        out.insert("x-forwarded-for", value(&chain));
        out.insert("x-forwarded-proto", hyper::header::HeaderValue::from_static("http"));
        out.insert("x-forwarded-host", value(host));
        out.insert(FORWARDED_HEADER, hyper::header::HeaderValue::from_static("1"));
        out
    }
}

/// Whether a client header claims something about the connection that only the proxy may
/// state: `X-Forwarded-*`, `Forwarded` (RFC 7239) and `X-Real-IP`, however spelled
/// (`X_Forwarded_Host`: some frameworks read underscores as dashes).
fn is_forwarding_claim(name: &str) -> bool {
    let normal = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    let is = |prefix: &str, whole: bool| {
        let n = name.as_bytes();
        (if whole {
            n.len() == prefix.len()
        } else {
            n.len() >= prefix.len()
        }) && n.iter().zip(prefix.bytes()).all(|(a, b)| normal(*a) == b)
    };
    is("x-forwarded-", false) || is("forwarded", true) || is("x-real-ip", true)
}

/// TLS to upstreams: rustls with ring, the system's CA certificates as roots.
fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert); // one unreadable certificate does not spoil the others
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// The fence's refusal behind a connect error, if that is what it was.
fn refusal<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(io) = error.downcast_ref::<io::Error>() {
            if let Some(refused) = io.get_ref().and_then(|inner| inner.downcast_ref::<Refused>()) {
                return Some(refused);
            }
        }
        cause = error.source();
    }
    None
}

/// The innermost cause of a client error, for messages ("Connection refused (os error 111)").
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Relays the upstream's answer to the client: head (without hop-by-hop headers) and body
/// streamed piece by piece, re-framed by its length or chunked.
async fn relay(
    answer: hyper::Response<hyper::body::Incoming>,
    request: &Outgoing<'_>,
    client: &mut OwnedWriteHalf,
    idle: Duration,
) -> Forwarded {
    let (parts, mut body) = answer.into_parts();
    let status = parts.status.as_u16();
    let bodiless = request.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let exact = body.size_hint().exact();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status,
        parts.status.canonical_reason().unwrap_or("Unknown")
    )
    .into_bytes();
    let drop = HopByHop::of(parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    for (name, value) in &parts.headers {
        if drop.contains(name.as_str()) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let chunked = !bodiless && exact.is_none() && !request.http10;
    // A HEAD or 304 answer keeps the length the upstream announced; a 1xx or 204 has none
    // (RFC 9110 section 8.6).
    let announced = (request.method == "HEAD" && status >= 200 && status != 204) || status == 304;
    if bodiless {
        if let Some(length) = parts.headers.get("content-length").filter(|_| announced) {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(length.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
    } else if let Some(n) = exact {
        head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    } else if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if request.sandboxed {
        head.extend_from_slice(b"content-security-policy: ");
        head.extend_from_slice(SANDBOX_POLICY.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    // Without a length an HTTP/1.0 client learns the end by the close.
    let keep = bodiless || exact.is_some() || chunked;
    if !keep {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    if bodiless {
        return match client.write_all(&head).await {
            Ok(()) => Forwarded::Relayed(true, status),
            Err(_) => Forwarded::Broken(status),
        };
    }
    let mut out = head;
    let gather = exact.is_some_and(|n| n <= GATHER);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            // The upstream failed or stalled mid-body: the client cannot be told but by a
            // close (its body ends short).
            Ok(Some(Err(_))) | Err(_) => {
                let _ = client.write_all(&out).await;
                return Forwarded::Broken(status);
            }
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers are dropped
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
        if !gather || out.len() >= (GATHER as usize) * 2 {
            if client.write_all(&out).await.is_err() {
                return Forwarded::Broken(status);
            }
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() && client.write_all(&out).await.is_err() {
        return Forwarded::Broken(status);
    }
    Forwarded::Relayed(keep, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_found_however_written() {
        for path in [
            "/svc/../x",
            "/svc/%2e%2e/x",
            "/svc/%2E%2e",
            "/svc/..%5cx",
            "/svc/%252e%252e/x",
            "/svc/./x",
            "/svc\\..\\x",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in ["/svc/x", "/svc/..x", "/svc/.well-known/y", "/svc/a%2", "/svc/%"] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }

    #[test]
    fn urls_split_into_what_the_proxy_needs() {
        let up = split_url("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!((up.host, up.path, up.netloc), ("127.0.0.1", "/base", "127.0.0.1:8080"));
        let up = split_url("http://[::1]:9/").unwrap();
        assert_eq!((up.host, up.path, up.netloc), ("[::1]", "", "[::1]:9"));
        let up = split_url("https://svc.example").unwrap();
        assert_eq!((up.scheme, up.netloc), ("https", "svc.example"));
        assert!(split_url("ftp://x").is_none());
        assert!(split_url("http://x:http").is_none());
        assert!(split_url("http://x:70000").is_none());
    }

    #[test]
    fn registry_tokens_are_recognised() {
        assert!(is_registry_token(b"Bearer rsv_abc"));
        assert!(is_registry_token(b"  bearer  rsv_abc"));
        assert!(is_registry_token(b"rsv_abc"));
        assert!(!is_registry_token(b"Bearer eyJhbGciOi"));
        assert!(!is_registry_token(b"Basic cnN2Xw=="));
    }
}
