//! A blocking HTTP/1.1 POST for etcd's JSON gateway, called by the cluster write path
//! (`etcd.py`) with the GIL released.
//!
//! Python's http.client costs about 175 us of GIL-holding CPU per call (header parsing
//! through the email package); under 32 concurrent writers that contention, not etcd, set
//! the pace. The gateway's unary answers are `Content-Length` framed, and a streaming RPC
//! given one request (a lease keep-alive) answers one chunked message, so this client is
//! small: one keep-alive connection per (thread, endpoint).
//!
//! A request is never sent twice. A kept connection is checked before it is used (closed
//! by the member meanwhile: a new one is opened, the request not yet written); once the
//! whole request was written, any failure is [`PostError::MaybeApplied`]: the member may
//! have applied it before the answer was lost, and only the caller can tell, by reading
//! what the request would have written (`etcd.py`, `cluster.py`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

const MAX_HEAD: usize = 16 << 10;
const MAX_BODY: usize = 64 << 20;

thread_local! {
    static CONNECTIONS: RefCell<HashMap<String, BufReader<TcpStream>>> = RefCell::new(HashMap::new());
}

/// Why a POST has no answer.
#[derive(Debug)]
pub enum PostError {
    /// The request was not (wholly) written: the member cannot have applied it.
    NotSent(io::Error),
    /// The request was written, the answer did not come (timeout, reset, close): the
    /// member may have applied it.
    MaybeApplied(io::Error),
}

impl PostError {
    pub fn io(&self) -> &io::Error {
        match self {
            PostError::NotSent(e) | PostError::MaybeApplied(e) => e,
        }
    }
}

/// POSTs `body` (JSON) to `http://endpoint/path` with `headers`; returns (status, body).
pub fn post(
    endpoint: &str,
    path: &str,
    body: &[u8],
    headers: &[(String, String)],
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<(u16, Vec<u8>), PostError> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {endpoint}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut payload = request.into_bytes();
    payload.extend_from_slice(body);
    CONNECTIONS.with(|cell| {
        let mut connections = cell.borrow_mut();
        let mut conn = match connections.remove(endpoint).filter(still_open) {
            Some(kept) => kept,
            None => connect(endpoint, connect_timeout).map_err(PostError::NotSent)?,
        };
        let (status, body, keep) = exchange(&mut conn, &payload, timeout)?;
        if keep {
            connections.insert(endpoint.to_owned(), conn);
        }
        Ok((status, body))
    })
}

/// Whether a kept connection can carry a request: nothing to read on it (the member
/// closed it, or sent what no request asked for, and it is dropped otherwise).
fn still_open(conn: &BufReader<TcpStream>) -> bool {
    if !conn.buffer().is_empty() {
        return false;
    }
    let stream = conn.get_ref();
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut probe = [0u8; 1];
    let open = matches!(stream.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

fn connect(endpoint: &str, timeout: Duration) -> io::Result<BufReader<TcpStream>> {
    let address = endpoint
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no address for {endpoint}")))?;
    let stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_nodelay(true)?;
    Ok(BufReader::new(stream))
}

/// Sends the request and reads its answer: (status, body, whether the connection may be
/// kept).
fn exchange(
    conn: &mut BufReader<TcpStream>,
    payload: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>, bool), PostError> {
    let set = |conn: &BufReader<TcpStream>| {
        conn.get_ref().set_read_timeout(Some(timeout))?;
        conn.get_ref().set_write_timeout(Some(timeout))
    };
    set(conn).map_err(PostError::NotSent)?;
    // A request not wholly written cannot be applied: the member waits for its length.
    conn.get_mut().write_all(payload).map_err(PostError::NotSent)?;
    answer(conn).map_err(PostError::MaybeApplied)
}

fn answer(conn: &mut BufReader<TcpStream>) -> io::Result<(u16, Vec<u8>, bool)> {
    let mut head = Vec::with_capacity(512);
    loop {
        let before = head.len();
        conn.read_until(b'\n', &mut head)?;
        if head.len() == before {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before an answer",
            ));
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer head too long"));
        }
    }
    let mut parsed_headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut parsed_headers);
    response
        .parse(&head)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad answer head: {e}")))?;
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let keep = !header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Streaming RPCs (lease keep-alive) answer one message, chunked.
        return Ok((status, read_chunked(conn)?, keep));
    }
    let length = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "answer without Content-Length"))?;
    if length > MAX_BODY {
        // Checked before the allocation: the length comes from the wire.
        return Err(io::Error::new(io::ErrorKind::InvalidData, "answer too long"));
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok((status, body, keep))
}

fn read_chunked(conn: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        conn.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                line.clear();
                conn.read_line(&mut line)?;
                if line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "answer too long"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        conn.read_exact(&mut crlf)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A peer that answers each request on a connection with the next canned answer, and
    /// closes the connection after `per_connection` answers.
    fn peer(answers: Vec<&'static [u8]>, per_connection: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            for stream in listener.incoming() {
                let mut reader = BufReader::new(stream.unwrap());
                for _ in 0..per_connection {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        if reader.read_until(b'\n', &mut head).unwrap() == 0 {
                            return;
                        }
                    }
                    let text = String::from_utf8_lossy(&head).to_lowercase();
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let Some(answer) = answers.next() else { return };
                    reader.get_mut().write_all(answer).unwrap();
                }
            }
        });
        endpoint
    }

    fn call(endpoint: &str) -> Result<(u16, Vec<u8>), PostError> {
        let second = Duration::from_secs(1);
        post(
            endpoint,
            "/v3/kv/range",
            b"{}",
            &[("X-Test".into(), "1".into())],
            second,
            second,
        )
    }

    #[test]
    fn length_and_chunked_answers_share_one_connection() {
        let endpoint = peer(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n",
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nnope",
            ],
            3,
        );
        assert_eq!(call(&endpoint).unwrap(), (200, b"{}".to_vec()));
        assert_eq!(call(&endpoint).unwrap(), (200, b"{\"a\"}".to_vec()));
        assert_eq!(call(&endpoint).unwrap(), (503, b"nope".to_vec()));
    }

    #[test]
    fn a_connection_the_peer_closes_is_not_used_again() {
        let endpoint = peer(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
            ],
            1,
        );
        assert_eq!(call(&endpoint).unwrap().1, b"1");
        assert_eq!(call(&endpoint).unwrap().1, b"2");
    }

    #[test]
    fn a_request_whose_answer_is_lost_is_never_sent_again() {
        // The peer reads each request whole, counts it, and closes without answering: as a
        // member that applied a txn and lost the connection before its answer.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&received);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut reader = BufReader::new(stream.unwrap());
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    if reader.read_until(b'\n', &mut head).unwrap_or(0) == 0 {
                        break;
                    }
                }
                let mut body = [0u8; 2];
                let _ = reader.read_exact(&mut body);
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let err = call(&endpoint).unwrap_err();
        assert!(matches!(err, PostError::MaybeApplied(_)), "{err:?}");
        assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Nobody listening: not sent at all.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        assert!(matches!(call(&closed).unwrap_err(), PostError::NotSent(_)));
    }

    #[test]
    fn answers_over_the_limit_are_refused_before_they_are_allocated() {
        let endpoint = peer(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n",
            ],
            1,
        );
        for _ in 0..2 {
            let err = call(&endpoint).unwrap_err();
            assert_eq!(err.io().to_string(), "answer too long");
        }
    }

    #[test]
    fn a_silent_peer_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let quick = Duration::from_millis(100);
        let err = post(&endpoint, "/", b"{}", &[], quick, quick).unwrap_err();
        assert!(
            matches!(&err, PostError::MaybeApplied(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)),
            "{err:?}"
        );
        drop(listener);
    }
}
