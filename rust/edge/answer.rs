//! The gate's own answers: refusals (JSON errors with the right status), the answers of hot
//! reads, and the lingering close after a refusal.

use super::*;

use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};

/// A refusal: status, message, and whether the connection must close after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
    /// The answer closes the connection, after a lingering read of what the client still
    /// sends (its body may be unread). Every refusal of the gate's own closes; the proxy's
    /// answers for an upstream (404, 502, 503) keep the connection.
    pub close: bool,
    /// Seconds to wait before asking again (`Retry-After`).
    pub retry_after: Option<u32>,
}

impl Refusal {
    /// A refusal, closing the connection after it.
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
            close: true,
            retry_after: None,
        }
    }

    /// The same answer on a connection that stays open (the request was read whole).
    pub(crate) fn keeping(mut self) -> Refusal {
        self.close = false;
        self
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> Refusal {
        self.retry_after = Some(seconds);
        self
    }

    fn body(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }

    /// The JSON error answer.
    pub fn answer(&self) -> Answer {
        let mut answer = json(self.status, Bytes::from(self.body()));
        if let Some(seconds) = self.retry_after {
            answer.headers_mut().insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.close {
            answer
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        answer
    }

    /// The same answer as raw bytes, closing, for a connection no HTTP server holds (one
    /// past the connection cap).
    pub(crate) fn raw(&self) -> Vec<u8> {
        let body = self.body();
        let retry = self
            .retry_after
            .map(|s| format!("retry-after: {s}\r\n"))
            .unwrap_or_default();
        let status = hyper::StatusCode::from_u16(self.status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\n{retry}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            body.len(),
        )
        .into_bytes()
    }
}

/// A JSON answer of the gate's own.
pub(crate) fn json(status: u16, body: Bytes) -> Answer {
    let mut answer = hyper::Response::new(full(body));
    *answer.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    answer
}

pub(crate) fn full(bytes: Bytes) -> AnswerBody {
    if bytes.is_empty() {
        return Empty::new().map_err(|e| match e {}).boxed_unsync();
    }
    Full::new(bytes).map_err(|e| match e {}).boxed_unsync()
}

/// `/health` while the workers do not answer yet: not ok, and when to ask again (a 503
/// with the health shape, `{"status":"starting"}`, rather than an error).
pub(crate) fn starting_health() -> Answer {
    let mut answer = json(503, Bytes::from_static(br#"{"status":"starting"}"#));
    answer.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1u32));
    answer
}

pub(crate) fn too_large(size: Option<u64>, limit: u64) -> Refusal {
    let size = match size {
        Some(size) => format!("{size} bytes"),
        None => format!("over {limit} bytes"),
    };
    Refusal::new(413, format!("request body is {size}; the limit is {limit}"))
}

/// A cached body shared with the cache, sent from where it lies.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// The answer of a read answered by the gate, framed as the workers frame theirs.
pub(crate) fn read_answer(answer: &reads::Answer) -> Answer {
    let body = Bytes::from_owner(Shared(Arc::clone(&answer.body)));
    let mut out = json(200, body);
    let headers = out.headers_mut();
    if name_the_answerer() {
        headers.insert("x-registry-answered-by", HeaderValue::from_static("gate"));
    }
    if let Some(index) = answer.index {
        headers.insert("x-registry-index", HeaderValue::from(index));
    }
    out
}

/// Reads what the client still sends and drops it, for at most `time` and `most` bytes,
/// `piece` bytes a read (a lingering close: closing with unread input would reset the
/// connection before the client reads our answer). The scratch buffer is on the heap: as
/// an array it would sit in every connection's future.
pub(crate) async fn drain<R: AsyncRead + Unpin>(rd: &mut R, time: Duration, most: usize, piece: usize) {
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

/// Whether answers name who gave them (`x-registry-answered-by: gate`, the workers say
/// `workers`): only when `REGISTRY_SVC_ANSWERED_BY=1`, which the parity tests set, so that
/// "the gate answers as the workers do" compares the two and not one with itself.
pub(crate) fn name_the_answerer() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os(ANSWERED_BY_ENV).is_some_and(|v| v == "1"))
}

/// The environment variable that turns `x-registry-answered-by` on (tests only).
pub const ANSWERED_BY_ENV: &str = "REGISTRY_SVC_ANSWERED_BY";
