//! The API port's gate, end to end over loopback: a real `Front` in front of a fake
//! upstream that answers each request with the bytes it received.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::edge::{data_port_refusal, Front, Limits, Options, Role};

pub(super) struct Upstream {
    pub(super) addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

/// Answers every request (head plus Content-Length body) with 200 and the raw request as
/// body (none for HEAD), on kept-alive connections.
pub(super) fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < end + 4 + length {
                            break;
                        }
                        let request: Vec<u8> = buf.drain(..end + 4 + length).collect();
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", request.len());
                        // An answer to HEAD has no body.
                        let body: &[u8] = if head.starts_with("head ") { b"" } else { &request };
                        if stream.write_all(answer.as_bytes()).is_err() || stream.write_all(body).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Upstream { addr, connections }
}

pub(super) fn front(up: &Upstream) -> Front {
    let limits = Limits {
        api_body: 1024,
        proxy_body: 4096,
        ..Limits::default()
    };
    api_gate(up.addr, limits)
}

/// A gate of `role` on `listen` with default limits, no registry and no proxy.
fn gate_on(listen: SocketAddr, up: &Upstream, role: Role) -> std::io::Result<Front> {
    gate_to(listen, up.addr, Limits::default(), role)
}

/// An API gate on a free port in front of `workers`, with `limits`.
pub(super) fn api_gate(workers: SocketAddr, limits: Limits) -> Front {
    gate_to("127.0.0.1:0".parse().unwrap(), workers, limits, Role::Api).unwrap()
}

fn gate_to(listen: SocketAddr, workers: SocketAddr, limits: Limits, role: Role) -> std::io::Result<Front> {
    Front::start(listen, workers, limits, 1, None, role, None, Options::default())
}

/// Sends `data`, then reads until the gate closes or 2 s pass without a byte.
fn exchange(front: &Front, data: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(front.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.write_all(data).unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 65536];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn a_body_over_the_limit_is_refused_before_it_is_read() {
    let up = upstream();
    let gate = front(&up);
    let mut data = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n".to_vec();
    data.extend_from_slice(&[b'x'; 8192]);
    let (out, closed) = exchange(&gate, &data);
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(
        out.ends_with(r#"{"error":"request body is 1073741824 bytes; the limit is 1024"}"#),
        "{out}"
    );
    assert!(closed);
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "nothing reached the workers");
}

#[test]
fn proxied_paths_have_their_own_limit() {
    let up = upstream();
    let gate = front(&up);
    let body = vec![b'y'; 2000];
    let mut data = format!(
        "POST /some-svc/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    data.extend_from_slice(&body);
    let (out, _) = exchange(&gate, &data);
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
}

#[test]
fn chunked_bodies_are_decoded_and_limited() {
    let up = upstream();
    let gate = front(&up);
    let ok = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n";
    let (out, _) = exchange(&gate, ok);
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let forwarded = out.to_lowercase();
    assert!(
        forwarded.contains("content-length: 11\r\n") && forwarded.ends_with("\r\n\r\nhello world"),
        "{out}"
    );
    assert!(!forwarded.contains("transfer-encoding"), "{out}");
    let mut big = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        big.extend_from_slice(b"200\r\n");
        big.extend_from_slice(&[b'z'; 512]);
        big.extend_from_slice(b"\r\n");
    }
    let (out, closed) = exchange(&gate, &big);
    assert!(out.starts_with("HTTP/1.1 413 ") && closed, "{out}");
}

#[test]
fn ambiguous_framing_and_unknown_methods_are_refused_and_closed() {
    let up = upstream();
    let gate = front(&up);
    // Content-Length beside chunked: the body is read by Transfer-Encoding alone and the
    // connection closes after the answer (RFC 9112 section 6.3), so nothing behind it is
    // read as a request of its own.
    let smuggle = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let (out, closed) = exchange(&gate, smuggle);
    assert!(out.starts_with("HTTP/1.1 200 ") && closed, "{out}");
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(!out.contains("GET /health"), "{out}");
    let workers_saw = up.connections.load(Ordering::SeqCst);
    let (out, closed) = exchange(&gate, b"FOO /registry-svc/instances HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 405 ") && closed, "{out}");
    assert!(
        out.ends_with(r#"{"error":"FOO is not allowed on /registry-svc/instances"}"#),
        "{out}"
    );
    let (out, _) = exchange(
        &gate,
        b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    assert_eq!(up.connections.load(Ordering::SeqCst), workers_saw);
}

#[test]
fn pipelined_requests_are_answered_in_order_and_a_refusal_waits_for_earlier_answers() {
    let up = upstream();
    let gate = front(&up);
    let data =
        b"GET /health?n=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /health?n=2 HTTP/1.1\r\nHost: x\r\n\r\nFOO / HTTP/1.1\r\n\r\n";
    let (out, closed) = exchange(&gate, data);
    let first = out.find("GET /health?n=1").unwrap();
    let second = out.find("GET /health?n=2").unwrap();
    let refused = out.find("HTTP/1.1 405").unwrap();
    assert!(first < second && second < refused && closed, "{out}");
}

#[test]
fn the_client_address_header_is_the_gates_own() {
    let up = upstream();
    let gate = front(&up);
    let (out, _) = exchange(
        &gate,
        b"GET /svc/x HTTP/1.1\r\nHost: x\r\nX-Registry-Client-Addr: 6.6.6.6\r\nConnection: close\r\n\r\n",
    );
    assert!(
        out.contains("x-registry-client-addr: 127.0.0.1\r\n") && !out.contains("6.6.6.6"),
        "{out}"
    );
}

#[test]
fn an_oversized_head_is_a_431() {
    let up = upstream();
    let gate = front(&up);
    let mut data = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    data.extend_from_slice(&vec![b'a'; 40 << 10]);
    let (out, closed) = exchange(&gate, &data);
    assert!(out.starts_with("HTTP/1.1 431 ") && closed, "{out}");
}

#[test]
fn a_taken_port_is_an_error() {
    let up = upstream();
    let gate = front(&up);
    assert!(gate_on(gate.local_addr(), &up, Role::Api).is_err());
}

#[test]
fn malformed_framing_is_a_400_and_closes() {
    let up = upstream();
    let gate = front(&up);
    for bad in [
        &b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n"[..],
        b"PUT /x HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"PUT /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let (out, closed) = exchange(&gate, bad);
        assert!(
            out.starts_with("HTTP/1.1 400 ") && closed,
            "{}: {out}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn multipart_forms_are_refused_on_the_registrys_routes_and_need_a_boundary_elsewhere() {
    let up = upstream();
    let gate = front(&up);
    let status = |line: &str, content_type: &str| {
        let raw = format!("{line} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n");
        let (out, _) = exchange(&gate, raw.as_bytes());
        out.get(9..12).unwrap_or_default().to_owned()
    };
    for path in [
        "/registry-svc/instance",
        "/health",
        "/metrics",
        "/version",
        "/ui/app.js",
        "/v3/discovery:endpoints",
    ] {
        assert_eq!(
            status(&format!("PUT {path}"), "multipart/form-data; boundary=x"),
            "415",
            "{path}"
        );
    }
    assert_eq!(status("POST /svc/upload", "Multipart/Form-Data"), "400");
    assert_eq!(status("POST /svc/upload", "multipart/form-data; boundary=b"), "200");
    assert_eq!(status("PUT /registry-svc/instance", "multipart/mixed"), "200");
    assert_eq!(status("POST /healthz/x", "multipart/form-data; boundary=b"), "200");
}

#[test]
fn access_stamps_are_utc_like_pythons() {
    use std::time::Duration;
    assert_eq!(
        crate::edge::utc_stamp(Duration::from_millis(0)),
        "1970-01-01T00:00:00.000Z"
    );
    // 2026-12-02T01:02:03.456Z
    assert_eq!(
        crate::edge::utc_stamp(Duration::from_millis(1_796_173_323_456)),
        "2026-12-02T01:02:03.456Z"
    );
    assert_eq!(
        crate::edge::utc_stamp(Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00.000Z"
    );
}

#[test]
fn a_huge_chunk_size_cannot_wrap_the_body_limit() {
    // One byte, then a size that wraps a u64 total to 0 when added unchecked: the gate
    // refuses the body once what it decoded passes the limit, and reads no more of it.
    let up = upstream();
    let gate = front(&up);
    let mut data = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n".to_vec();
    data.extend_from_slice(&[b'x'; 4096]);
    let (out, closed) = exchange(&gate, &data);
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(closed);
    assert_eq!(up.connections.load(Ordering::SeqCst), 0, "nothing reached the workers");
}

#[test]
fn chunk_sizes_are_hex_digits_and_nothing_else() {
    let up = upstream();
    let gate = front(&up);
    for size in ["+3", " 3", "-1", "0x3", "g", "10000000000000000"] {
        let data = format!(
            "PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc\r\n0\r\n\r\n"
        );
        let (out, closed) = exchange(&gate, data.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400 "), "{size}: {out}");
        assert!(out.contains("malformed chunked body"), "{size}: {out}");
        assert!(closed);
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn a_bare_lf_ends_a_line_as_rfc_9112_allows() {
    // RFC 9112 section 2.2: a recipient MAY read a bare LF as a line's end; hyper does. The
    // request is read once, as one request, and what follows it as the next.
    let up = upstream();
    let gate = front(&up);
    let data = b"GET /health?n=1 HTTP/1.1\nHost: x\nX: y\r\n\r\nGET /health?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (out, closed) = exchange(&gate, data);
    assert_eq!(out.matches("HTTP/1.1 200 ").count(), 2, "{out}");
    assert!(out.contains("x: y\r\n") && closed, "{out}");
}

#[test]
fn a_head_over_the_limit_is_a_431_even_in_one_read() {
    let up = upstream();
    let gate = front(&up);
    let mut data = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    data.extend_from_slice(&[b'a'; 40 << 10]);
    data.extend_from_slice(b"\r\n\r\n");
    let mut stream = TcpStream::connect(gate.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    stream.write_all(&data).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

#[test]
fn only_origin_form_targets_are_served() {
    let up = upstream();
    let gate = front(&up);
    for target in ["http://x/registry-svc/tokens", "https://x/metrics", "*"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (out, closed) = exchange(&gate, raw.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400 ") && closed, "{target}: {out}");
        assert!(out.contains("only a path starting with '/'"), "a JSON error: {out}");
    }
    // Not a target at all: hyper's own 400.
    let (out, closed) = exchange(&gate, b"GET x/y HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 ") && closed, "{out}");
    assert_eq!(up.connections.load(Ordering::SeqCst), 0);
}

#[test]
fn connection_close_ends_a_forwarded_exchange() {
    let up = upstream();
    let gate = front(&up);
    let mut stream = TcpStream::connect(gate.local_addr()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
        .write_all(b"GET /registry-svc/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).unwrap(); // an Err here is the 5 s read timeout: not closed
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200 "));
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn connections_past_the_cap_get_a_503() {
    let up = upstream();
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let gate = api_gate(up.addr, limits);
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(gate.local_addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let (out, closed) = exchange(&gate, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("retry-after: 1\r\n"), "{out}");
    assert!(closed);
    drop(held);
    let answered = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        exchange(&gate, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .0
            .starts_with("HTTP/1.1 200 ")
    });
    assert!(answered, "a freed slot takes a new connection");
}

#[test]
fn workers_that_do_not_answer_yet_get_a_503_with_retry_after() {
    // The gate listens before the workers do (start-up, a restart of the workers).
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let gate = api_gate(closed, Limits::default());
    let (out, closed) = exchange(
        &gate,
        b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("retry-after: 1\r\n"), "{out}");
    assert!(out.contains("starting"), "{out}");
    assert!(closed);
    // `/health` says so in its own shape.
    let (out, _) = exchange(&gate, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 503 "), "{out}");
    assert!(out.contains("retry-after: 1\r\n"), "{out}");
    assert!(out.ends_with(r#"{"status":"starting"}"#), "{out}");
}

#[test]
fn the_access_line_has_its_fields_in_order_and_escaped() {
    let entry = crate::edge::AccessEntry {
        method: "GET",
        path: "/web/a\"b",
        route: "/<slug>/*",
        status: 200,
        took: Duration::from_micros(412),
        token: None,
        client: Some("127.0.0.1"),
    };
    assert_eq!(
        crate::edge::access_json(Duration::from_millis(1_796_173_323_456), &entry),
        r#"{"ts":"2026-12-02T01:02:03.456Z","type":"access","method":"GET","path":"/web/a\"b","route":"/<slug>/*","status":200,"durationMs":0.412,"token":null,"client":"127.0.0.1"}"#
    );
}

#[path = "data_port_tests.rs"]
mod data_port;

#[test]
fn connections_are_served_on_every_thread_and_stop_ends_them_all() {
    let up = upstream();
    let mut gate = Front::start(
        "127.0.0.1:0".parse().unwrap(),
        up.addr,
        Limits::default(),
        3,
        None,
        Role::Api,
        None,
        Options::default(),
    )
    .unwrap();
    // Seven connections: the accepting thread keeps the 3rd and 6th, hands the others out;
    // each answers two requests on its kept-alive connection.
    let mut clients: Vec<TcpStream> = (0..7).map(|_| TcpStream::connect(gate.local_addr()).unwrap()).collect();
    for round in 0..2 {
        for (i, client) in clients.iter_mut().enumerate() {
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let request = format!("GET /registry-svc/nodes?c={i}&r={round} HTTP/1.1\r\nHost: x\r\n\r\n");
            client.write_all(request.as_bytes()).unwrap();
            // The echo's head and body may come in two pieces: read until the body is in.
            let (mut answer, mut chunk) = (String::new(), [0u8; 4096]);
            while !answer.contains(&format!("c={i}&r={round}")) {
                let n = client.read(&mut chunk).unwrap();
                assert!(n > 0, "closed early: {answer}");
                answer.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        }
    }
    gate.stop();
    for mut client in clients {
        let mut rest = [0u8; 16];
        assert!(
            matches!(client.read(&mut rest), Ok(0) | Err(_)),
            "the connection closed with the gate"
        );
    }
}
