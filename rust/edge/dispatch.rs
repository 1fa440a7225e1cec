//! Which role answers what: each request is answered here (hot reads, refusals), sent to
//! the workers, or given to the proxy; and what the data port refuses.

use super::*;

use crate::forward::source_text;
use workers::{ForWorkers, QueryGuard};

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

impl Gate {
    /// The answer to one request: the gate's own (a hot read, a refusal), the proxy's, or
    /// the workers'.
    pub(crate) async fn answer(&self, request: Request, client_ip: IpAddr) -> Answer {
        match self.dispatch(request, client_ip).await {
            Ok(answer) => answer,
            Err(refusal) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                refusal.answer()
            }
        }
    }

    async fn dispatch(&self, request: Request, client_ip: IpAddr) -> Result<Answer, Refusal> {
        let limit = check_request(&request, &self.limits)?;
        let path = target(&request);
        if self.role == Role::Data {
            if let Some(refusal) = data_port_refusal(request.method().as_str(), path, self.options.api_port) {
                return Err(refusal);
            }
        }
        if let (true, &hyper::Method::GET, true, Some(registry)) = (
            self.options.answer_reads,
            request.method(),
            hyper::body::Body::is_end_stream(request.body()),
            &self.reads,
        ) {
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            // The tokens are the registry's: one cache per process, the workers' too.
            let prefix_key = request
                .headers()
                .get(crate::forward::inference::PREFIX_HEADER)
                .map(hyper::header::HeaderValue::as_bytes);
            if let Some(answer) = reads::answer(registry, path, authorization, prefix_key) {
                self.stats.answered.fetch_add(1, Ordering::Relaxed);
                return Ok(read_answer(&answer));
            }
        }
        if self.forwarder.is_some() && proxied_slug(path).is_some() {
            self.stats.proxied.fetch_add(1, Ordering::Relaxed);
            return Ok(self.proxy(request, client_ip, limit).await);
        }
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        self.to_workers(request, client_ip, limit).await
    }

    /// A request for the workers: its body read whole (within the buffered-bodies budget),
    /// sent on a pooled connection, their answer given back.
    async fn to_workers(&self, request: Request, client_ip: IpAddr, limit: u64) -> Result<Answer, Refusal> {
        let health = is_health_check(&request);
        let query =
            (request.method() == hyper::Method::GET && is_blocking(target(&request))).then(|| self.next_query_id());
        let (parts, body) = request.into_parts();
        let framed = parts.headers.contains_key(hyper::header::CONTENT_LENGTH)
            || parts.headers.contains_key(hyper::header::TRANSFER_ENCODING);
        let body = if hyper::body::Body::is_end_stream(&body) {
            Bytes::new()
        } else {
            // Hold budget for the body while it is buffered and forwarded.
            let expected = hyper::body::Body::size_hint(&body).exact().unwrap_or(limit);
            let permits = u32::try_from(expected.min(self.limits.buffered_bodies as u64)).unwrap_or(u32::MAX);
            let _held = self
                .budget
                .acquire_many(permits)
                .await
                .map_err(|_| Refusal::new(503, "the server is stopping"))?;
            read_body(body, limit, self.limits.request_timeout).await?
        };
        let mut guard = QueryGuard { gate: self, id: query };
        let sent = self
            .workers
            .send(ForWorkers {
                parts,
                body,
                framed,
                client_ip,
                query,
            })
            .await;
        guard.id = None; // answered (or failed): nothing is held for this client any more
        match sent {
            Ok(answer) => Ok(answer),
            // Starting (the gate listens before the workers answer), or the workers are
            // being restarted: a retry shortly will be answered.
            Err(e) if e.is_connect() && health => Ok(starting_health()),
            Err(e) if e.is_connect() => Err(Refusal::new(
                503,
                format!("the server is starting: its workers do not answer yet ({}); retry shortly", source_text(&e)),
            )
            .retry_after(1)),
            // A worker died or the server is stopping with the request under way.
            Err(e) => Err(Refusal::new(
                503,
                format!(
                    "the server is stopping or restarting: its workers closed the connection without an answer ({}); retry shortly",
                    source_text(&e)
                ),
            )
            .retry_after(1)),
        }
    }

    /// A blocking query's id, unique over the server's processes: this process's id, then
    /// a count.
    pub(crate) fn next_query_id(&self) -> u64 {
        (u64::from(std::process::id()) << 32) | u64::from(self.queries.fetch_add(1, Ordering::Relaxed))
    }
}

/// The slug of a path the gate's proxy may forward (a valid slug as its first segment, not
/// a registry route); None leaves the request to the workers.
pub(crate) fn proxied_slug(path: &str) -> Option<&str> {
    if registry_route(path) {
        return None;
    }
    let first = path.strip_prefix('/')?.split(['/', '?']).next()?;
    reads::is_slug(first).then_some(first)
}
