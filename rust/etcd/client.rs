//! The server's one etcd client for unary calls: etcd's JSON gateway (`/v3/kv/txn`,
//! `/v3/kv/range`, `/v3/lease/*`) over `http.rs`, with failover across the endpoints and the
//! rule for a call whose answer was lost. The write path (`writes.rs`) calls it from Rust;
//! Python's `etcd.Client` calls it through `_core.EtcdClient` for everything else.
//!
//! A call that is not idempotent (a txn) moves to the next endpoint only when it was not
//! sent. Sent and unanswered, it is [`EtcdError::Ambiguous`] and is never sent again: the
//! caller reads what it would have written first (`writes.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use data_encoding::BASE64;
use serde_json::{json, Value};

use super::http::{post, PostError};

/// gRPC codes etcd answers with.
pub const CODE_OUT_OF_RANGE: i64 = 11;
pub const CODE_UNAVAILABLE: i64 = 14;

/// A member that cannot reach a leader refuses requests carrying this metadata instead of
/// answering from its own (possibly stale) state, and cancels such watches.
pub const REQUIRE_LEADER: (&str, &str) = ("Grpc-Metadata-hasleader", "true");

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// No endpoint took the request (refused, reset, timed out before it was sent, no
    /// leader): it was not applied.
    Unavailable(String),
    /// A write was sent and its answer lost (a timeout, a reset, or etcd's own
    /// "unavailable" after it took the request): it may have been applied.
    Ambiguous(String),
    /// The revision asked for is older than etcd's compaction.
    Compacted(String),
    /// etcd answered with an error.
    Answer { code: i64, message: String },
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unavailable(m) | EtcdError::Ambiguous(m) | EtcdError::Compacted(m) => f.write_str(m),
            EtcdError::Answer { message, .. } => f.write_str(message),
        }
    }
}

pub struct Client {
    endpoints: Vec<String>,
    headers: Vec<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    /// The endpoint that answered last: tried first.
    preferred: AtomicUsize,
}

/// A key's value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub mod_revision: u64,
    pub value: Vec<u8>,
}

impl Client {
    /// A client of `endpoints` (`host:port`, tried in turn from the one that answered
    /// last). Each process starts at its own endpoint (by its pid), as etcd's own clients
    /// spread over the members: the servers' calls and watches do not all land on one
    /// member, which would then translate every gateway call and stream every event alone.
    pub fn new(endpoints: Vec<String>, timeout: Duration, connect_timeout: Duration) -> Client {
        let start = std::process::id() as usize % endpoints.len().max(1);
        Client {
            endpoints,
            headers: vec![(REQUIRE_LEADER.0.to_owned(), REQUIRE_LEADER.1.to_owned())],
            timeout,
            connect_timeout,
            preferred: AtomicUsize::new(start),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// (per call, to connect).
    pub fn timeouts(&self) -> (Duration, Duration) {
        (self.timeout, self.connect_timeout)
    }

    /// The index of the endpoint that answered last.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// POSTs `body` to `path` on the first endpoint that answers; returns the answer's JSON.
    pub fn call(
        &self,
        path: &str,
        body: &[u8],
        timeout: Option<Duration>,
        idempotent: bool,
    ) -> Result<Vec<u8>, EtcdError> {
        let mut errors: Vec<String> = Vec::new();
        let count = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let timeout = timeout.unwrap_or(self.timeout);
        for attempt in 0..count {
            let index = (start + attempt) % count;
            let endpoint = &self.endpoints[index];
            let (status, raw) = match post(endpoint, path, body, &self.headers, timeout, self.connect_timeout) {
                Ok(answer) => answer,
                Err(PostError::MaybeApplied(e)) => {
                    errors.push(format!("{endpoint}: {}", lost(&e)));
                    if !idempotent {
                        return Err(EtcdError::Ambiguous(errors.join("; ")));
                    }
                    continue;
                }
                Err(PostError::NotSent(e)) => {
                    errors.push(format!("{endpoint}: {}", not_sent(&e)));
                    continue;
                }
            };
            if status == 200 {
                self.preferred.store(index, Ordering::Relaxed);
                return Ok(raw);
            }
            let answer: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            let code = answer["code"].as_i64().unwrap_or(0);
            let message = answer["message"]
                .as_str()
                .or(answer["error"].as_str())
                .map_or_else(|| format!("HTTP {status}"), str::to_owned);
            if code == CODE_UNAVAILABLE {
                // "No leader" (refused before any proposal, require-leader) is never
                // applied; "request timed out" or "leader changed" may be.
                errors.push(format!("{endpoint}: {message}"));
                if !idempotent && !message.contains("no leader") {
                    return Err(EtcdError::Ambiguous(errors.join("; ")));
                }
                continue;
            }
            if code == CODE_OUT_OF_RANGE && message.contains("compacted") {
                return Err(EtcdError::Compacted(message));
            }
            return Err(EtcdError::Answer { code, message });
        }
        Err(EtcdError::Unavailable(if errors.is_empty() {
            "no etcd endpoint".to_owned()
        } else {
            errors.join("; ")
        }))
    }

    pub(crate) fn call_json(&self, path: &str, body: &Value, idempotent: bool) -> Result<Value, EtcdError> {
        let raw = self.call(path, body.to_string().as_bytes(), None, idempotent)?;
        serde_json::from_slice(&raw).map_err(|e| EtcdError::Answer {
            code: 0,
            message: format!("etcd's answer is not JSON: {e}"),
        })
    }

    /// One txn; its answer (never sent twice: see `Ambiguous`).
    pub fn txn(&self, compare: Vec<Value>, success: Vec<Value>, failure: Vec<Value>) -> Result<Value, EtcdError> {
        let body = json!({"compare": compare, "success": success, "failure": failure});
        self.call_json("/v3/kv/txn", &body, false)
    }

    /// A linearizable read of one key: (etcd's revision, the key-value if present).
    pub fn get(&self, key: &[u8]) -> Result<(u64, Option<Kv>), EtcdError> {
        let answer = self.call_json("/v3/kv/range", &json!({"key": b64(key)}), true)?;
        Ok((header_revision(&answer), answer["kvs"].get(0).map(kv_of)))
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock)
}

fn lost(e: &std::io::Error) -> String {
    if timed_out(e) {
        "timed out after the request was sent".to_owned()
    } else {
        format!("{e} after the request was sent")
    }
}

fn not_sent(e: &std::io::Error) -> String {
    if timed_out(e) {
        "timed out".to_owned()
    } else {
        e.to_string()
    }
}

pub fn b64(data: &[u8]) -> String {
    BASE64.encode(data)
}

pub fn unb64(text: &str) -> Vec<u8> {
    BASE64.decode(text.as_bytes()).unwrap_or_default()
}

/// etcd's numbers travel as strings of digits.
fn number(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

/// The revision in an answer's header.
pub fn header_revision(answer: &Value) -> u64 {
    number(&answer["header"]["revision"])
}

pub fn kv_of(kv: &Value) -> Kv {
    Kv {
        mod_revision: number(&kv["mod_revision"]),
        value: kv["value"].as_str().map(unb64).unwrap_or_default(),
    }
}

/// The key-value of the `position`-th range in a txn's answer (None if absent).
pub fn range_kv(answer: &Value, position: usize) -> Option<Kv> {
    answer["responses"]
        .get(position)
        .and_then(|r| r["response_range"]["kvs"].get(0))
        .map(kv_of)
}

/// Whether a txn's compares held.
pub fn succeeded(answer: &Value) -> bool {
    answer["succeeded"].as_bool().unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// The body of the next request on `stream` (None when it closes first).
    pub(crate) fn read_request(stream: &std::net::TcpStream) -> Option<Vec<u8>> {
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        std::io::Read::read_exact(&mut reader, &mut body).ok()?;
        Some(body)
    }

    /// A member that answers every request with `answer` (status, JSON).
    fn member(status: u16, answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if read_request(&stream).is_none() {
                    return;
                }
                let mut out = stream;
                let _ = write!(
                    out,
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        endpoint
    }

    /// A client that tries `endpoints` in order, whatever this process's pid.
    fn client(endpoints: Vec<String>) -> Client {
        let c = Client::new(endpoints, Duration::from_secs(2), Duration::from_millis(200));
        c.preferred.store(0, Ordering::Relaxed);
        c
    }

    fn closed_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[test]
    fn a_refused_endpoint_is_skipped_and_the_one_that_answered_is_preferred() {
        let good = member(200, r#"{"header":{"revision":"7"}}"#);
        let c = client(vec![closed_port(), good]);
        let answer = c.txn(vec![], vec![], vec![]).unwrap();
        assert_eq!(header_revision(&answer), 7);
        assert_eq!(c.preferred.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_txn_that_etcd_may_have_applied_is_not_sent_to_the_next_member() {
        let timed_out = member(503, r#"{"code":14,"message":"etcdserver: request timed out"}"#);
        let good = member(200, r#"{"header":{"revision":"7"}}"#);
        let c = client(vec![timed_out.clone(), good.clone()]);
        assert!(matches!(c.txn(vec![], vec![], vec![]), Err(EtcdError::Ambiguous(_))));
        // A read may go on: it changes nothing.
        assert_eq!(client(vec![timed_out, good]).get(b"k").unwrap().0, 7);
    }

    #[test]
    fn no_leader_is_never_applied_so_the_txn_moves_on() {
        let leaderless = member(503, r#"{"code":14,"message":"etcdserver: no leader"}"#);
        let good = member(200, r#"{"header":{"revision":"9"},"succeeded":true}"#);
        let answer = client(vec![leaderless, good]).txn(vec![], vec![], vec![]).unwrap();
        assert!(succeeded(&answer));
    }

    #[test]
    fn compaction_and_other_answers_are_errors_with_etcds_code() {
        let compacted = member(
            400,
            r#"{"code":11,"message":"etcdserver: mvcc: required revision has been compacted"}"#,
        );
        assert!(matches!(
            client(vec![compacted]).get(b"k"),
            Err(EtcdError::Compacted(_))
        ));
        let too_many = member(
            400,
            r#"{"code":3,"message":"etcdserver: too many operations in txn request"}"#,
        );
        assert_eq!(
            client(vec![too_many]).get(b"k"),
            Err(EtcdError::Answer {
                code: 3,
                message: "etcdserver: too many operations in txn request".into()
            })
        );
        assert!(matches!(
            client(vec![closed_port()]).get(b"k"),
            Err(EtcdError::Unavailable(_))
        ));
    }

    #[test]
    fn answers_decode_revisions_and_values() {
        let answer: Value = serde_json::from_str(
            r#"{"header":{"revision":"12"},"responses":[{"response_range":{}},{"response_range":{"kvs":[{"mod_revision":"5","value":"aGk="}]}}]}"#,
        )
        .unwrap();
        assert_eq!(header_revision(&answer), 12);
        assert_eq!(range_kv(&answer, 0), None);
        assert_eq!(
            range_kv(&answer, 1),
            Some(Kv {
                mod_revision: 5,
                value: b"hi".to_vec()
            })
        );
    }
}
