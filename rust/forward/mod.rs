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
//!
//! The phases, as Pingora names them, one module each: `admit` (what is refused before any
//! upstream is chosen), `peer` (the instance, fenced), `request` (the upstream request:
//! headers and body), `relay` (the answer, streamed back), `outcome` (what the attempt
//! teaches the selector and the counters).

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Frame};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::oneshot;

use crate::core::candidate::Target;
use crate::core::select::{Candidate, Outcome, PickRequest, Picked};
use crate::edge::Answer;
use crate::lanes::PerLane;
use crate::netguard::NetPolicy;
use crate::registry::Registry;

mod admit;
pub mod inference;
mod outcome;
mod peer;
mod relay;
mod request;

use admit::*;
pub use admit::{has_dot_segment, is_registry_token};
pub(crate) use outcome::source_text;
use outcome::*;
pub(crate) use peer::Connector;
use peer::*;
use relay::*;
use request::*;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const POOL_IDLE: Duration = Duration::from_secs(90);
const POOL_PER_HOST: usize = 256;
/// A request body up to this size is kept for a retry; a larger one is streamed once.
pub const RETRY_BODY: u64 = 64 << 10;
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

pub type RequestBody = UnsyncBoxBody<Bytes, io::Error>;

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

/// The forwarding side of a gate: the upstream connection pool and the network fence.
pub struct Forwarder {
    /// One pool per gate thread (`lanes.rs`).
    clients: PerLane<Client<Connector, RequestBody>>,
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
    pub headers: &'a hyper::HeaderMap,
    pub client_ip: IpAddr,
    /// Served on the dashboard's origin (the API port): the answer is sandboxed, so that
    /// a proxied page runs in an opaque origin and cannot read the dashboard's token.
    pub sandboxed: bool,
    /// Only an instance serving this model may answer (`inference.rs`).
    pub model: Option<&'a str>,
    /// The prompt a `prefix` pick places by.
    pub prompt: Option<&'a [u8]>,
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
    /// Arriving as the client sends it, and the signal that it has all been read (the wait
    /// for the answer starts then: a large upload may take longer than that wait).
    Streamed(RequestBody, oneshot::Receiver<()>),
}

/// A forwarded request that got no answer from an upstream: the status and message of the
/// error answer the client gets.
pub struct Failed(pub u16, pub String);

/// Connections to instances: http or https, each address fenced by `policy` (the proxy's,
/// or the probes' for the load scraper, `load/`).
pub(crate) fn fenced_connector(policy: &Arc<NetPolicy>) -> Connector {
    let mut http = HttpConnector::new_with_resolver(Fenced(Arc::clone(policy)));
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    http.set_nodelay(true);
    http.enforce_http(false);
    HttpsConnectorBuilder::new()
        .with_tls_config(tls_config())
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

impl Forwarder {
    /// https upstreams are verified against the system's CA certificates (`SSL_CERT_FILE`
    /// / `SSL_CERT_DIR` point elsewhere); without any, every https upstream fails its
    /// handshake (a 502 naming the unknown issuer), and plain http works as ever.
    pub fn new(policy: NetPolicy, timeout: Duration) -> Forwarder {
        let policy = Arc::new(policy);
        let connector = fenced_connector(&policy);
        let clients = PerLane::new(move || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(POOL_PER_HOST)
                .pool_timer(TokioTimer::new())
                .retry_canceled_requests(false)
                .set_host(false)
                .build(connector.clone())
        });
        Forwarder {
            clients,
            policy,
            timeout,
            stats: ProxyStats::default(),
        }
    }

    /// Forwards `request` and gives the answer to relay: admitted, then tried on up to
    /// `1 + retries` instances (retries only for idempotent requests whose body was kept),
    /// each attempt's outcome recorded.
    pub async fn forward(
        &self,
        registry: &Registry,
        request: &Outgoing<'_>,
        mut payload: Payload,
    ) -> Result<Answer, (u16, String)> {
        if let Some(Failed(status, message)) = admit(request) {
            return Err((status, message));
        }
        let route = registry.routes.get(&registry.store, request.slug);
        let mut plan = Plan {
            headers: upstream_headers(request),
            target: route.upstream_target(request.target),
            timeout: route.timeout.unwrap_or(self.timeout),
        };
        let retryable = IDEMPOTENT.contains(&request.method) && matches!(payload, Payload::Kept(_));
        let tries = if retryable { 1 + route.retries } else { 1 };
        let mut tried: Vec<String> = Vec::new();
        let mut last_error = String::new();
        for attempt_no in 0..tries {
            let chosen = match choose(registry, request, &tried, &last_error) {
                Ok(chosen) => chosen,
                Err(Failed(status, message)) => return Err((status, message)),
            };
            let attempt = Attempt {
                registry,
                stats: &self.stats,
                slug: request.slug,
                id: &chosen.id,
                url: &chosen.url,
                target: chosen.target.as_ref(),
            };
            // The last attempt takes the headers instead of a copy.
            let headers = if attempt_no + 1 == tries {
                std::mem::take(&mut plan.headers)
            } else {
                plan.headers.clone()
            };
            match self.try_once(&attempt, request, &plan, headers, &mut payload).await {
                Tried::Answered(answer) => return Ok(relay(answer, request, plan.timeout)),
                Tried::Failed(Failed(status, message)) => return Err((status, message)),
                Tried::NextInstance(why) => {
                    tried.push(chosen.id.clone());
                    last_error = why;
                }
            }
        }
        Err((502, last_error))
    }

    /// One attempt on one instance: fenced, sent, answered within the timeout; its
    /// outcome recorded.
    async fn try_once(
        &self,
        attempt: &Attempt<'_>,
        request: &Outgoing<'_>,
        plan: &Plan<'_>,
        headers: hyper::HeaderMap,
        payload: &mut Payload,
    ) -> Tried {
        let (url, slug) = (attempt.url, attempt.slug);
        let upstream = match self.fenced(attempt.target) {
            Ok(upstream) => upstream,
            Err(why) => {
                attempt.record(Outcome::Failure, &attempt.stats.not_contacted);
                return Tried::NextInstance(format!("upstream {url} of '{slug}' not contacted: {why}"));
            }
        };
        let (outgoing, body_sent) = match upstream_request(request, upstream, plan, headers, payload) {
            Ok(built) => built,
            Err(e) => {
                attempt.abandon();
                return Tried::Failed(Failed(400, format!("the request cannot be forwarded: {e}")));
            }
        };
        // The response timeout starts once the body is sent: a large upload may take
        // longer than the wait for an answer.
        let deadline = async {
            let _ = body_sent.await;
            tokio::time::sleep(plan.timeout).await;
        };
        let answered = tokio::select! {
            answered = self.clients.get().request(outgoing) => Some(answered),
            () = deadline => None,
        };
        attempt.judge(answered, plan.timeout)
    }

    /// The instance's target, once the fence allows its address (a host name is fenced by
    /// the connector's resolver, `Fenced`).
    fn fenced<'t>(&self, target: Option<&'t Target>) -> Result<&'t Target, String> {
        let up = target.ok_or_else(|| "not an http:// or https:// URL in canonical form".to_owned())?;
        match up.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => self.policy.check(ip).map(|()| up),
            Err(_) => Ok(up),
        }
    }
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
    fn registry_tokens_are_recognised() {
        assert!(is_registry_token(b"Bearer rsv_abc"));
        assert!(is_registry_token(b"  bearer  rsv_abc"));
        assert!(is_registry_token(b"rsv_abc"));
        assert!(!is_registry_token(b"Bearer eyJhbGciOi"));
        assert!(!is_registry_token(b"Basic cnN2Xw=="));
    }
}
