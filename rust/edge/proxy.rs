//! `/<slug>/...` through the gate's proxy (`forward/`): a small body read first (so that an
//! idempotent request can be retried), a larger one streamed to the upstream as it arrives
//! (within the proxy's body limit and the request timeout), and the answer relayed.

use super::*;

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use crate::core::select::Policy;
use crate::forward::inference::{inference_of, Inference, PREFIX_HEADER};
use crate::forward::{Outgoing, Payload, RETRY_BODY};

impl Gate {
    /// Forwards a proxied request with the gate's proxy and gives its answer.
    pub(crate) async fn proxy(&self, request: Request, client_ip: IpAddr, limit: u64) -> Answer {
        let (Some(forwarder), Some(registry)) = (&self.forwarder, &self.reads) else {
            return Refusal::new(502, "no proxy").answer();
        };
        let started = std::time::Instant::now();
        let (parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let slug = proxied_slug(path).unwrap_or_default();
        // Model servers' requests are read whole: their body says where they go.
        let by_load = matches!(registry.selector.policy_of(slug), Policy::LeastLoad | Policy::Prefix);
        // Why a streamed body stopped short, when it was the client's doing.
        let cut = Arc::new(Mutex::new(None));
        let (payload, whole) = if by_load && !body.is_end_stream() {
            match read_body(body, limit, self.limits.request_timeout).await {
                Ok(bytes) => (Ok(Payload::Kept(bytes.clone())), bytes),
                Err(refusal) => (Err(refusal), Bytes::new()),
            }
        } else {
            (self.payload(body, limit, &cut).await, Bytes::new())
        };
        let facts = if by_load {
            inference_of(&whole)
        } else {
            Inference::default()
        };
        let outgoing = Outgoing {
            method: parts.method.as_str(),
            target: path,
            slug,
            headers: &parts.headers,
            client_ip,
            sandboxed: self.role == Role::Api,
            model: facts.model.as_deref(),
            prompt: parts
                .headers
                .get(PREFIX_HEADER)
                .map(|key| key.as_bytes())
                .or(facts.prompt),
        };
        let answer = match payload {
            Err(refusal) => refusal.answer(),
            Ok(payload) => match forwarder.forward(registry, &outgoing, payload).await {
                Ok(answer) => answer,
                Err((status, message)) => match cut.lock().ok().and_then(|mut c| c.take()) {
                    Some(refusal) => refusal,
                    // Saturated model servers: ask again in a second.
                    None if status == 429 => Refusal::new(status, message).keeping().retry_after(1),
                    None => Refusal::new(status, message).keeping(),
                }
                .answer(),
            },
        };
        if self.options.access_log {
            access_line(
                outgoing.method,
                path,
                answer.status().as_u16(),
                started.elapsed(),
                client_ip,
            );
        }
        answer
    }

    /// The body to forward: none, a small one kept whole (so that an idempotent request
    /// can be retried), or a larger one streamed as it arrives (`cut` says why it stopped
    /// short when that was the client's doing).
    async fn payload(&self, body: Incoming, limit: u64, cut: &Arc<Mutex<Option<Refusal>>>) -> Result<Payload, Refusal> {
        match body.size_hint().exact() {
            _ if body.is_end_stream() => Ok(Payload::Kept(Bytes::new())),
            Some(n) if n <= RETRY_BODY => read_body(body, limit, self.limits.request_timeout)
                .await
                .map(Payload::Kept),
            _ => {
                let (sent, body_sent) = oneshot::channel();
                let streamed = ClientBody {
                    body,
                    left: limit,
                    limit,
                    timeout: self.limits.request_timeout,
                    sleep: Box::pin(tokio::time::sleep(self.limits.request_timeout)),
                    sent: Some(sent),
                    cut: Arc::clone(cut),
                };
                Ok(Payload::Streamed(
                    http_body_util::BodyExt::boxed_unsync(streamed),
                    body_sent,
                ))
            }
        }
    }
}

/// A client's body streamed to the upstream: cut at `limit` bytes (a 413 for the client)
/// or when a piece takes longer than `timeout` (a 408); `sent` fires once it is read to its
/// end, which starts the wait for the upstream's answer.
struct ClientBody {
    body: Incoming,
    left: u64,
    limit: u64,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    sent: Option<oneshot::Sender<()>>,
    cut: Arc<Mutex<Option<Refusal>>>,
}

impl ClientBody {
    fn cut(&mut self, refusal: Refusal) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let error = io::Error::new(io::ErrorKind::UnexpectedEof, refusal.message.clone());
        if let Ok(mut cut) = self.cut.lock() {
            *cut = Some(refusal);
        }
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    return this.cut(Refusal::new(408, "the request body did not arrive in time"));
                }
                Poll::Pending
            }
            Poll::Ready(None) => {
                if let Some(sent) = this.sent.take() {
                    let _ = sent.send(());
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.cut(body_error(&e)),
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |d| d.len() as u64);
                if size > this.left {
                    return this.cut(too_large(None, this.limit));
                }
                this.left -= size;
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
