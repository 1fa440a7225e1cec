//! Phase 3, the upstream request: the headers the upstream gets, and the body, kept or
//! streamed as it arrives.

use super::*;

/// A body fed from a channel (the client's request body, as it arrives); `sent` fires
/// once hyper has taken all of it.
pub(crate) struct ChannelBody {
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

/// The client's headers as the upstream gets them.
pub(crate) fn upstream_headers(request: &Outgoing<'_>) -> hyper::HeaderMap {
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

/// What every attempt of one request shares: the upstream's headers, the target (the
/// slug's prefix stripped when its route says so) and the answer's timeout.
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
    payload: &mut Payload,
) -> Result<(hyper::Request<RequestBody>, oneshot::Receiver<()>), hyper::http::Error> {
    let (sent, body_sent) = oneshot::channel();
    let body: RequestBody = match payload {
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
        upstream.scheme, upstream.netloc, upstream.path, plan.target
    );
    let mut built = hyper::Request::builder()
        .method(request.method)
        .uri(uri.as_str())
        .header("host", upstream.netloc.as_str())
        .body(body)?;
    built.headers_mut().extend(plan.headers.clone());
    Ok((built, body_sent))
}
