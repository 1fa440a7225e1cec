//! A request as hyper read it, checked before a byte of its body is read (method, target,
//! content type, declared size), and its body read within the limits.

use super::*;

use hyper::body::{Body, Incoming};
use hyper::header::CONTENT_TYPE;

pub(crate) type Request = hyper::Request<Incoming>;

/// Checks a request's head; Ok: the largest body it may have.
pub(crate) fn check_request(request: &Request, limits: &Limits) -> Result<u64, Refusal> {
    let method = request.method().as_str();
    let path = target(request);
    if !METHODS.contains(&method) {
        return Err(Refusal::new(405, format!("{method} is not allowed on {path}")));
    }
    check_target(request)?;
    check_content_type(request, path)?;
    // One table of the registry's routes (finding 7 of the 2026-12 review: xDS got the
    // proxy's limit, 16 MiB, into Robyn, which buffers bodies whole).
    let limit = if registry_route(path) {
        limits.api_body
    } else {
        limits.proxy_body
    };
    match request.body().size_hint().exact() {
        Some(n) if n > limit => Err(too_large(Some(n), limit)),
        _ => Ok(limit),
    }
}

/// The request's target: path and query, as sent.
pub(crate) fn target(request: &Request) -> &str {
    request.uri().path_and_query().map_or("/", |p| p.as_str())
}

/// Only the origin form (`/path?query`) is served. The absolute form (`http://host/path`)
/// is for forward proxies, and routing it by its path would need every check of that route
/// applied to a second spelling; `*` (OPTIONS) asks about a server, not a resource. (A raw
/// byte outside ASCII never gets here: hyper refuses such a target with a 400.)
fn check_target(request: &Request) -> Result<(), Refusal> {
    let uri = request.uri();
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path().starts_with('/') {
        return Ok(());
    }
    Err(Refusal::new(
        400,
        format!(
            "request target '{}': only a path starting with '/' is served (no absolute form, no '*')",
            uri.to_string().escape_default()
        ),
    ))
}

/// A `multipart/form-data` body: a 415 on the registry's routes (they take JSON), and a 400
/// without a boundary anywhere (Robyn parses such bodies before any handler and answered a
/// malformed one with a bare 500).
fn check_content_type(request: &Request, path: &str) -> Result<(), Refusal> {
    let Some(value) = request.headers().get(CONTENT_TYPE) else {
        return Ok(());
    };
    let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
    if !value.trim_start().starts_with("multipart/form-data") {
        return Ok(());
    }
    if registry_route(path) {
        return Err(Refusal::new(
            415,
            "Content-Type: the registry's routes take application/json, not multipart/form-data",
        ));
    }
    if !value.contains("boundary=") {
        return Err(Refusal::new(
            400,
            "Content-Type: multipart/form-data without a boundary",
        ));
    }
    Ok(())
}

/// Reads a body whole: at most `limit` bytes (a 413 as soon as the decoded total passes
/// it), within `timeout` (a 408).
pub(crate) async fn read_body(mut body: Incoming, limit: u64, timeout: Duration) -> Result<Bytes, Refusal> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let frame = match tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut body)).await {
            Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(body_error(&e)),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len() as u64);
        if total > limit {
            return Err(too_large(None, limit));
        }
        // One piece (the usual case) is kept as it came; more are joined.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(piece) = first.take() {
                    rest.extend_from_slice(&piece);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

/// What a body that failed to arrive gets: a 400 when its chunked framing is malformed; the
/// same, unread by anyone, when the client went away.
pub(crate) fn body_error(error: &hyper::Error) -> Refusal {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData) {
                return Refusal::new(400, "malformed chunked body");
            }
        }
        source = e.source();
    }
    Refusal::new(400, "the request body was cut short")
}

/// Whether a request to forward is `GET` or `HEAD /health`.
pub(crate) fn is_health_check(request: &Request) -> bool {
    matches!(request.method().as_str(), "GET" | "HEAD") && request.uri().path() == "/health"
}

/// Whether the query of `path` is a blocking query the workers will hold: decoded, and
/// judged by the rule the workers apply (`query::blocking`; one that is refused is
/// answered at once).
pub(crate) fn is_blocking(path: &str) -> bool {
    let Some((_, query)) = path.split_once('?') else {
        return false;
    };
    let Some(pairs) = crate::reads::parse_query(query) else {
        return false;
    };
    let last = |name: &str| pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    matches!(crate::query::blocking(last("index"), last("wait")), Ok(Some(_)))
}
