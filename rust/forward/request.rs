//! Phase 3, the upstream request: the headers the upstream gets, and the body, kept or
//! streamed as it arrives.

use super::*;

/// The client's headers as the upstream gets them.
pub(crate) fn upstream_headers(request: &Outgoing<'_>) -> hyper::HeaderMap {
    let drop = HopByHop::of(request.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let mut out = hyper::HeaderMap::with_capacity(request.headers.len() + 4);
    let mut forwarded_for: Option<&[u8]> = None;
    let mut host: &[u8] = b"";
    for (name, value) in request.headers {
        let name = name.as_str();
        let bytes = value.as_bytes();
        if name == "x-forwarded-for" && forwarded_for.is_none() {
            forwarded_for = Some(bytes);
        }
        if name == "host" {
            host = bytes;
        }
        if drop.contains(name) || is_forwarding_claim(name) {
            continue;
        }
        if name == "authorization" && is_registry_token(bytes) {
            continue;
        }
        if let Ok(name) = hyper::header::HeaderName::from_bytes(name.as_bytes()) {
            out.append(name, value.clone());
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

/// What every attempt of one request shares: the upstream's headers (each attempt gets a
/// copy, the last one the map itself), the target (the slug's prefix stripped when its
/// route says so) and the answer's timeout.
pub(crate) struct Plan<'t> {
    pub headers: hyper::HeaderMap,
    pub target: std::borrow::Cow<'t, str>,
    pub timeout: Duration,
}

/// The request for `upstream`, and a signal that fires once its body was sent.
pub(crate) fn upstream_request(
    request: &Outgoing<'_>,
    upstream: &Target,
    plan: &Plan<'_>,
    headers: hyper::HeaderMap,
    payload: &mut Payload,
) -> Result<(hyper::Request<RequestBody>, oneshot::Receiver<()>), hyper::http::Error> {
    let (body, body_sent): (RequestBody, _) = match payload {
        Payload::Kept(bytes) => {
            let (sent, body_sent) = oneshot::channel();
            let _ = sent.send(());
            let body = if bytes.is_empty() {
                Empty::new().map_err(|e| match e {}).boxed_unsync()
            } else {
                Full::new(bytes.clone()).map_err(|e| match e {}).boxed_unsync()
            };
            (body, body_sent)
        }
        // Streamed once: a second attempt finds it taken (and is never made: only a kept
        // body is retried).
        Payload::Streamed(body, sent) => {
            let (_, spent) = oneshot::channel();
            (
                std::mem::replace(body, Empty::new().map_err(|e| match e {}).boxed_unsync()),
                std::mem::replace(sent, spent),
            )
        }
    };
    let uri = format!(
        "{}://{}{}{}",
        upstream.scheme, upstream.netloc, upstream.path, plan.target
    );
    let mut built = hyper::Request::builder()
        .method(request.method)
        .uri(uri.as_str())
        .body(body)?;
    *built.headers_mut() = headers;
    let host = hyper::header::HeaderValue::from_str(&upstream.netloc)?;
    built.headers_mut().insert(hyper::header::HOST, host);
    Ok((built, body_sent))
}
