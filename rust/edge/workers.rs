//! The relay to the workers: requests the gate does not answer itself go to the Robyn
//! workers over a pool of kept-alive loopback connections shared by every client (hyper's
//! client), each body read whole first and sent by `Content-Length`. The workers' answers
//! come back as they are, less the headers of their own connection.

use super::*;

use crate::lanes::PerLane;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A pooled connection to the workers idle this long is closed first by the gate, well
/// before the workers' own keep-alive timeout (5 s) could close it under a request.
const POOL_IDLE: Duration = Duration::from_secs(2);
/// Request headers that belong to the client's connection, or to the gate's own
/// conversation with the workers (never taken from a client).
const NOT_RELAYED: [&str; 9] = [
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "content-length",
    "expect",
    "upgrade",
    CLIENT_ADDR_HEADER,
    QUERY_HEADER,
];
/// Answer headers of the workers' connection, not the client's.
const NOT_ANSWERED: [&str; 4] = ["connection", "keep-alive", "transfer-encoding", "upgrade"];

pub(crate) struct Workers {
    /// One pool per gate thread (`lanes.rs`).
    clients: PerLane<Client<HttpConnector, Full<Bytes>>>,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

/// A request for the workers, its body read.
pub(crate) struct ForWorkers {
    pub parts: hyper::http::request::Parts,
    pub body: Bytes,
    /// The client sent a body (framed by length or chunked), even an empty one.
    pub framed: bool,
    pub client_ip: IpAddr,
    /// The blocking query's id, when it is one.
    pub query: Option<u64>,
}

impl Workers {
    pub(crate) fn new(upstream: SocketAddr) -> Workers {
        let clients = PerLane::new(|| {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(2)));
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(TokioTimer::new())
                .set_host(false)
                .build(http)
        });
        Workers {
            clients,
            base: format!("http://{upstream}"),
        }
    }

    /// Sends `request` to the workers and gives their answer; Err when they cannot be
    /// reached (a connect failure: the server is starting or its workers restarting) or
    /// went away before answering.
    pub(crate) async fn send(&self, request: ForWorkers) -> Result<Answer, hyper_util::client::legacy::Error> {
        let ForWorkers {
            parts,
            body,
            framed,
            client_ip,
            query,
        } = request;
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut headers = hyper::HeaderMap::with_capacity(parts.headers.len() + 3);
        for (name, value) in &parts.headers {
            if !NOT_RELAYED.contains(&name.as_str()) {
                headers.append(name, value.clone());
            }
        }
        if framed {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        }
        if let Some(id) = query {
            headers.insert(HeaderName::from_static(QUERY_HEADER), HeaderValue::from(id));
        }
        if let Ok(addr) = HeaderValue::from_str(&client_ip.to_string()) {
            headers.insert(HeaderName::from_static(CLIENT_ADDR_HEADER), addr);
        }
        let mut outgoing = hyper::Request::new(Full::new(body));
        *outgoing.method_mut() = parts.method;
        *outgoing.uri_mut() = format!("{}{target}", self.base)
            .parse()
            .unwrap_or_else(|_| hyper::Uri::from_static("/"));
        *outgoing.headers_mut() = headers;
        let answer = self.clients.get().request(outgoing).await?;
        let (mut parts, body) = answer.into_parts();
        for name in NOT_ANSWERED {
            parts.headers.remove(name);
        }
        let body = body.map_err(io::Error::other).boxed_unsync();
        Ok(hyper::Response::from_parts(parts, body))
    }
}

/// Cancels a blocking query in the workers when its client goes away before the answer
/// (hyper drops the request's future when the client closes): the workers' waiter goes
/// with it, through the shared ring of abandoned queries, told at once by the store's
/// notifier.
pub(crate) struct QueryGuard<'g> {
    pub gate: &'g Gate,
    pub id: Option<u64>,
}

impl Drop for QueryGuard<'_> {
    fn drop(&mut self) {
        if let (Some(id), Some(registry)) = (self.id, &self.gate.reads) {
            registry.selector.shared().cancel_query(id);
            registry.store.write_counts().notify();
        }
    }
}
