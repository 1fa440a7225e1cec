//! Phase 4, the answer: relayed to the client as it comes, its head without hop-by-hop
//! headers; hyper's server frames the body for the client (by its length, chunked, or to
//! the close for an HTTP/1.0 client).

use super::*;

use std::future::Future;

use hyper::header::{HeaderValue, CONTENT_LENGTH};

/// The upstream's answer as the client gets it: hop-by-hop headers dropped, the body
/// streamed piece by piece (trailers dropped), a piece that takes longer than `idle` ending
/// it short (the client learns by the close).
pub(crate) fn relay(answer: hyper::Response<hyper::body::Incoming>, request: &Outgoing<'_>, idle: Duration) -> Answer {
    let (mut parts, body) = answer.into_parts();
    let status = parts.status.as_u16();
    let bodiless = request.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    // A HEAD or 304 answer keeps the length the upstream announced; a 1xx or 204 has none
    // (RFC 9110 section 8.6). Any other body's length is the one hyper reads.
    let announced = (request.method == "HEAD" && status >= 200 && status != 204) || status == 304;
    let length = parts.headers.get(CONTENT_LENGTH).filter(|_| announced).cloned();
    // Removed in place: the map is not rebuilt for the few names that go.
    let drop = HopByHop::of(parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let doomed: Vec<_> = parts
        .headers
        .keys()
        .filter(|n| drop.contains(n.as_str()))
        .cloned()
        .collect();
    for name in doomed {
        parts.headers.remove(name);
    }
    if let Some(length) = length {
        parts.headers.insert(CONTENT_LENGTH, length);
    }
    if request.sandboxed {
        parts
            .headers
            .insert("content-security-policy", HeaderValue::from_static(SANDBOX_POLICY));
    }
    let body = if bodiless {
        Empty::new().map_err(|e| match e {}).boxed_unsync()
    } else {
        Relayed {
            body,
            idle,
            sleep: None,
        }
        .boxed_unsync()
    };
    hyper::Response::from_parts(parts, body)
}

/// An upstream's body on its way to the client: data only, each piece within `idle`. The
/// timer starts the first time a piece is not there yet: a body that arrived with its head
/// (most small answers) never needs one.
struct Relayed {
    body: hyper::body::Incoming,
    idle: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        loop {
            return match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => match this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle)))
                    .as_mut()
                    .poll(cx)
                {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the upstream stalled mid-answer",
                    )))),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io::Error::other(e)))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if let Some(sleep) = &mut this.sleep {
                            sleep.as_mut().reset(tokio::time::Instant::now() + this.idle);
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(_) => continue, // trailers are dropped
                },
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
