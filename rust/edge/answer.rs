//! The gate's own answers: refusals (JSON errors with the right status and framing),
//! the answer heads of hot reads, and the lingering close after a refusal.

use super::*;

/// A refusal: status, reason phrase, message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }

    /// The JSON error response, closing the connection.
    pub fn response(&self) -> Vec<u8> {
        error_response(self.status, &self.message, true)
    }

    /// The same with extra headers (`retry-after`).
    pub(crate) fn response_with(&self, headers: &[(&str, &str)]) -> Vec<u8> {
        json_answer(
            self.status,
            &serde_json::json!({ "error": self.message }).to_string(),
            headers,
            true,
        )
    }
}

/// `{"error": message}` with `status`, closing the connection after it when `close`.
pub(crate) fn error_response(status: u16, message: &str, close: bool) -> Vec<u8> {
    json_answer(status, &serde_json::json!({ "error": message }).to_string(), &[], close)
}

/// A JSON answer of the gate's own: `status`, `headers` (`retry-after`), `body`, and
/// `connection: close` when `close`.
pub(crate) fn json_answer(status: u16, body: &str, headers: &[(&str, &str)], close: bool) -> Vec<u8> {
    let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
    let connection = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n{connection}\r\n{body}",
        reason(status),
        body.len(),
    )
    .into_bytes()
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Error",
    }
}

/// `/health` while the workers do not answer yet: not ok, and when to ask again (a 503
/// with the health shape, `{"status":"starting"}`, rather than an error).
pub(crate) fn starting_health() -> Vec<u8> {
    json_answer(503, r#"{"status":"starting"}"#, &[("retry-after", "1")], true)
}

pub(crate) fn too_large(size: u64, limit: u64) -> Refusal {
    Refusal::new(413, format!("request body is {size} bytes; the limit is {limit}"))
}

/// The client went away mid-request: nothing to answer.
pub(crate) fn gone() -> Refusal {
    Refusal::new(0, "client gone")
}

/// Writes `head` then `body` in as few writes as the socket takes (one, mostly): the
/// cached body is sent from where it lies, not copied behind the head.
pub(crate) async fn write_both(client: &mut OwnedWriteHalf, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = client
            .write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= head.len() {
            body = &body[n - head.len()..];
            head = &[];
        } else {
            head = &head[n..];
        }
    }
    Ok(())
}

/// The head of a read answered by the gate, framed as the workers frame theirs.
pub(crate) fn response_head(answer: &reads::Answer, close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        answer.body.len(),
    );
    if name_the_answerer() {
        out.push_str("x-registry-answered-by: gate\r\n");
    }
    if let Some(index) = answer.index {
        out.push_str(&format!("x-registry-index: {index}\r\n"));
    }
    if close {
        out.push_str("connection: close\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// Answers a refusal and closes. The client may still be sending the body we refused:
/// closing at once would make the kernel reset the connection and lose the answer, so
/// what it sends is read and dropped (never kept) for a short while first (nginx's
/// "lingering close").
pub(crate) async fn refuse(refusal: Refusal, client: Option<OwnedWriteHalf>, mut incoming: Incoming) {
    let Some(mut client) = client else { return };
    if refusal.status == 0 {
        return; // the client is gone
    }
    if client.write_all(&refusal.response()).await.is_err() {
        return;
    }
    let _ = client.shutdown().await;
    drain(&mut incoming.rd, LINGER, LINGER_MAX_BYTES, 64 << 10).await;
}

/// Reads what the client still sends and drops it, for at most `time` and `most` bytes,
/// `piece` bytes a read (a lingering close: closing with unread input would reset the
/// connection before the client reads our answer). The scratch buffer is on the heap: as
/// an array it would sit in every connection's future.
pub(crate) async fn drain(rd: &mut OwnedReadHalf, time: Duration, most: usize, piece: usize) {
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
