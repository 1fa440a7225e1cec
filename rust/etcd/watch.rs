//! A watch of etcd's keys under a prefix, through the JSON gateway's `/v3/watch`: one
//! long-lived HTTP/1.1 answer, chunked, one JSON message per line. Read here, with the GIL
//! released, and handed to the replicator (`replica.py`) as messages whose keys and values
//! are already decoded: the replica's per-event cost is Rust's, not Python's.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{b64, unb64, Client, EtcdError, REQUIRE_LEADER};

/// A message longer than this ends the watch (etcd's own limit on a response is 1.5 MiB
/// per request by default; a watch response batches events under it).
const MAX_MESSAGE: usize = 64 << 20;

/// One change seen by a watch: a put (value set) or a delete (value None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub revision: u64,
}

/// One message of a watch stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The header revision.
    pub revision: u64,
    pub events: Vec<Event>,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: u64,
    pub cancel_reason: String,
}

pub struct Watch {
    conn: BufReader<TcpStream>,
    pub endpoint: String,
    /// Bytes of the current chunk not read yet.
    chunk_left: usize,
    /// Decoded bytes not yet handed out as a line.
    pending: Vec<u8>,
}

/// The range end covering every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn number(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap_or(0),
        other => other.as_u64().unwrap_or(0),
    }
}

fn broke(endpoint: &str, e: impl std::fmt::Display) -> EtcdError {
    EtcdError::Unavailable(format!("{endpoint}: watch stream broke: {e}"))
}

impl Watch {
    /// A watch of every key under `prefix` from `start_revision`, on the first endpoint
    /// that takes it (the client's preferred one first).
    pub fn open(
        client: &Client,
        prefix: &[u8],
        start_revision: u64,
        progress_notify: bool,
    ) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": start_revision.to_string(),
            "progress_notify": progress_notify,
        }})
        .to_string();
        let endpoints = client.endpoints();
        let mut errors = Vec::new();
        for attempt in 0..endpoints.len() {
            let endpoint = &endpoints[(client.preferred() + attempt) % endpoints.len()];
            match Watch::start(endpoint, &body, client.timeouts()) {
                Ok(watch) => return Ok(watch),
                Err(e) => errors.push(format!("{endpoint}: {e}")),
            }
        }
        Err(EtcdError::Unavailable(if errors.is_empty() {
            "no etcd endpoint".to_owned()
        } else {
            errors.join("; ")
        }))
    }

    fn start(endpoint: &str, body: &str, (timeout, connect_timeout): (Duration, Duration)) -> io::Result<Watch> {
        let address = endpoint
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        let stream = TcpStream::connect_timeout(&address, connect_timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let (name, value) = REQUIRE_LEADER;
        let request = format!(
            "POST /v3/watch HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\n{name}: {value}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut conn = BufReader::new(stream);
        conn.get_mut().write_all(request.as_bytes())?;
        let mut status_line = String::new();
        conn.read_line(&mut status_line)?;
        let status = status_line.split_whitespace().nth(1).unwrap_or("");
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if conn.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed in the answer's head",
                ));
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        }
        if status != "200" {
            return Err(io::Error::other(format!("HTTP {status}")));
        }
        if !chunked {
            return Err(io::Error::other("the watch answer is not a stream"));
        }
        // Established: the stream may rightly stay silent for long; the replicator's ping
        // tells a dead stream from a quiet one and closes it.
        conn.get_ref().set_read_timeout(None)?;
        Ok(Watch {
            conn,
            endpoint: endpoint.to_owned(),
            chunk_left: 0,
            pending: Vec::new(),
        })
    }

    /// A handle that can end the stream from another thread (`shutdown`).
    pub fn closer(&self) -> io::Result<TcpStream> {
        self.conn.get_ref().try_clone()
    }

    pub fn close(stream: &TcpStream) {
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Reads the next chunk's bytes into `pending`; false at the stream's end.
    fn fill(&mut self) -> io::Result<bool> {
        if self.chunk_left == 0 {
            let mut line = String::new();
            if self.conn.read_line(&mut line)? == 0 {
                return Ok(false);
            }
            if line.trim().is_empty() {
                // The CRLF that ends the previous chunk.
                line.clear();
                if self.conn.read_line(&mut line)? == 0 {
                    return Ok(false);
                }
            }
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                return Ok(false);
            }
            self.chunk_left = size;
        }
        let buffered = self.conn.fill_buf()?;
        if buffered.is_empty() {
            return Ok(false);
        }
        let take = buffered.len().min(self.chunk_left);
        if self.pending.len().saturating_add(take) > MAX_MESSAGE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "watch message too long"));
        }
        self.pending.extend_from_slice(&buffered[..take]);
        self.conn.consume(take);
        self.chunk_left -= take;
        Ok(true)
    }

    /// The next line of the stream (without its newline); None at the stream's end.
    fn line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let rest = self.pending.split_off(at + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                return Ok(Some(line));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// The next message; an error when the stream breaks, ends or says so.
    pub fn next_message(&mut self) -> Result<Message, EtcdError> {
        loop {
            let line = match self.line() {
                Ok(Some(line)) => line,
                Ok(None) => return Err(EtcdError::Unavailable(format!("{}: watch stream ended", self.endpoint))),
                Err(e) => return Err(broke(&self.endpoint, e)),
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let message: Value = serde_json::from_slice(&line).map_err(|e| broke(&self.endpoint, e))?;
            if let Some(error) = message.get("error") {
                let why = error["message"]
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_owned);
                return Err(EtcdError::Unavailable(format!(
                    "{}: watch failed: {why}",
                    self.endpoint
                )));
            }
            return Ok(parse_message(&message["result"]));
        }
    }
}

pub fn parse_message(result: &Value) -> Message {
    let events = result["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|event| {
                    let kv = &event["kv"];
                    let deleted = event["type"].as_str() == Some("DELETE");
                    Event {
                        key: kv["key"].as_str().map(unb64).unwrap_or_default(),
                        value: (!deleted).then(|| kv["value"].as_str().map(unb64).unwrap_or_default()),
                        revision: number(&kv["mod_revision"]),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Message {
        revision: number(&result["header"]["revision"]),
        events,
        created: result["created"].as_bool().unwrap_or(false),
        canceled: result["canceled"].as_bool().unwrap_or(false),
        compact_revision: number(&result["compact_revision"]),
        cancel_reason: result["cancel_reason"].as_str().unwrap_or("").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn messages_split_across_chunks_are_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let body = crate::etcd::client::tests::read_request(&stream).unwrap();
            assert!(String::from_utf8(body).unwrap().contains("create_request"));
            let created = "{\"result\":{\"header\":{\"revision\":\"3\"},\"created\":true}}\n";
            let put = "{\"result\":{\"header\":{\"revision\":\"4\"},\"events\":[{\"kv\":{\"key\":\"YQ==\",\"value\":\"Yg==\",\"mod_revision\":\"4\"}},{\"type\":\"DELETE\",\"kv\":{\"key\":\"Yw==\",\"mod_revision\":\"4\"}}]}}\n";
            let (first, second) = put.split_at(30);
            let mut out = stream;
            write!(out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
            for part in [created, first, second] {
                write!(out, "{:x}\r\n{part}\r\n", part.len()).unwrap();
            }
            write!(out, "0\r\n\r\n").unwrap();
        });
        let client = Client::new(vec![endpoint], Duration::from_secs(2), Duration::from_millis(500));
        let mut watch = Watch::open(&client, b"a", 1, true).unwrap();
        assert!(watch.next_message().unwrap().created);
        let message = watch.next_message().unwrap();
        assert_eq!(message.revision, 4);
        assert_eq!(
            message.events,
            vec![
                Event {
                    key: b"a".to_vec(),
                    value: Some(b"b".to_vec()),
                    revision: 4
                },
                Event {
                    key: b"c".to_vec(),
                    value: None,
                    revision: 4
                },
            ]
        );
        assert!(matches!(watch.next_message(), Err(EtcdError::Unavailable(m)) if m.contains("ended")));
    }

    #[test]
    fn the_range_end_of_a_prefix() {
        assert_eq!(prefix_end(b"/r/v1/rec/"), b"/r/v1/rec0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }
}
