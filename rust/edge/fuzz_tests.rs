//! The gate's HTTP layer (hyper and the gate's checks) under generated and adversarial
//! input, over real connections: heads built from hostile pieces (bare LF, NUL, obs-fold,
//! conflicting framing, huge and malformed lengths, odd targets) must be refused with a 4xx
//! or forwarded re-framed, never panic; whole connections of random bytes must end (answered or closed) and leave the
//! gate serving; a flood of refused bodies must not grow memory past the limits.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use proptest::prelude::*;

use super::tests::{front, upstream};
use crate::edge::{Front, Limits, Options, Role};

/// What a generated request may get: the gate's refusals and hyper's, or the workers'
/// answer (200).
const STATUSES: [&str; 9] = ["200", "400", "405", "408", "413", "415", "431", "501", "503"];

fn request_line() -> impl Strategy<Value = String> {
    let methods = prop::sample::select(vec!["GET", "PUT", "POST", "HEAD", "DELETE", "FOO", "get", "", "G ET"]);
    let targets = prop::sample::select(vec![
        "/registry-svc/instance",
        "/registry-svc/instances?slug=a",
        "/health",
        "/web/x?y=1",
        "/v3/discovery:endpoints",
        "http://host/x",
        "*",
        "/a b",
        "/\u{e9}",
        "",
        "/%00",
        "//x",
    ]);
    let versions = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 ", "", "http/1.1"]);
    (methods, targets, versions).prop_map(|(m, t, v)| format!("{m} {t} {v}"))
}

fn header() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "Host",
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "Expect",
        "Content-Type",
        "Authorization",
        "X-Registry-Client-Addr",
        "Bad Name",
        "",
        "X\u{0}Y",
    ]);
    let values = prop::sample::select(vec![
        "x",
        "0",
        "5",
        "18446744073709551616",
        "99999999999999999999999",
        "-1",
        " 5 ",
        "5, 6",
        "chunked",
        "gzip, chunked",
        "chunked, chunked",
        "close",
        "100-continue",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "Bearer rsv_x",
        "a\u{0}b",
        "",
    ]);
    (names, values).prop_map(|(n, v)| format!("{n}: {v}"))
}

/// A head from hostile pieces: lines ending in CRLF or a bare LF, some folded.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        request_line(),
        prop::collection::vec((header(), any::<bool>(), any::<bool>()), 0..12),
        any::<bool>(),
    )
        .prop_map(|(line, headers, bare_end)| {
            let mut raw = format!("{line}\r\n").into_bytes();
            for (h, bare_lf, folded) in headers {
                raw.extend_from_slice(h.as_bytes());
                raw.extend_from_slice(if bare_lf { b"\n" } else { b"\r\n" });
                if folded {
                    raw.extend_from_slice(b" folded\r\n");
                }
            }
            raw.extend_from_slice(if bare_end { b"\n" } else { b"\r\n" });
            raw
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_heads_are_refused_with_a_4xx_or_forwarded_reframed(raw in head()) {
        let (up, gate) = SHARED.get_or_init(|| {
            let up = upstream();
            let limits = Limits {
                api_body: 1024,
                proxy_body: 4096,
                request_timeout: Duration::from_millis(300),
                ..Limits::default()
            };
            let gate = Front::start("127.0.0.1:0".parse().unwrap(), up.addr, limits, 1, None, Role::Api, None, Options::default()).unwrap();
            (up, gate)
        });
        let _ = up;
        // The head, asking to close after its answer, and a small body behind it.
        let mut data = raw[..raw.len() - 2].to_vec();
        data.extend_from_slice(b"Connection: close\r\n\r\nhello");
        let out = exchange(gate.local_addr(), &data);
        let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
        let status = text.get(9..12).unwrap_or("none");
        prop_assert!(STATUSES.contains(&status), "{status}: {text}");
        if status == "200" && !raw.starts_with(b"HEAD ") {
            // Forwarded: the workers got it re-framed by length, with the gate's own
            // client address only.
            let forwarded = text.split("\r\n\r\n").nth(1).unwrap_or_default();
            prop_assert!(!forwarded.contains("transfer-encoding:"), "{text}");
            prop_assert!(forwarded.matches("x-registry-client-addr: 127.0.0.1").count() == 1, "{text}");
        }
    }
}

static SHARED: std::sync::OnceLock<(super::tests::Upstream, Front)> = std::sync::OnceLock::new();

/// Sends `data` and reads until the gate closes (at most 3 s).
fn exchange(port: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(port).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = stream.write_all(data);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// Sends `data`, closes the sending side, and reads what comes back until the gate closes
/// (at most 5 s).
fn send_and_close(port: std::net::SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(port).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn connections_of_hostile_bytes_end_and_the_gate_goes_on(
        first in head(),
        noise in prop::collection::vec(any::<u8>(), 0..2048),
        chunky in any::<bool>(),
    ) {
        let up = upstream();
        let gate = front(&up);
        let mut data = first;
        if chunky {
            data.extend_from_slice(b"5;ext=\"x\"\r\nhello\r\nffffffffffffffff\r\n");
        }
        data.extend_from_slice(&noise);
        let out = String::from_utf8_lossy(&send_and_close(gate.local_addr(), &data)).into_owned();
        // Whatever it answered, each answer is a status line the gate or the workers send.
        for line in out.lines().filter(|l| l.starts_with("HTTP/")) {
            prop_assert!(line.starts_with("HTTP/1.1 ") || line.starts_with("HTTP/1.0 "), "{line}");
        }
        // A client that closes its side abandons its request (the gate drops it, as nginx
        // does), so the check that the gate goes on keeps the connection open.
        let mut fine = TcpStream::connect(gate.local_addr()).unwrap();
        fine.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        fine.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut status = [0u8; 13];
        fine.read_exact(&mut status).unwrap();
        prop_assert_eq!(&status, b"HTTP/1.1 200 ");
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

#[test]
fn ten_thousand_headers_and_refused_floods_do_not_grow_memory() {
    let up = upstream();
    let gate = front(&up);
    let mut many = b"GET /health HTTP/1.1\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let out = send_and_close(gate.local_addr(), &many);
    assert!(out.starts_with(b"HTTP/1.1 431 "), "{}", String::from_utf8_lossy(&out));
    // 64 connections, each a chunked body that claims more than the limit and then sends
    // 1 MiB, all from one shared buffer (so that what grows is the gate, not the clients).
    let mut data = b"PUT /registry-svc/instance HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\nffffffffffffffff\r\n".to_vec();
    data.extend_from_slice(&vec![b'x'; 1 << 20]);
    let data = std::sync::Arc::new(data);
    let before = resident_bytes();
    let mut threads = Vec::new();
    for _ in 0..64 {
        let addr = gate.local_addr();
        let data = std::sync::Arc::clone(&data);
        threads.push(std::thread::spawn(move || send_and_close(addr, &data)));
    }
    for thread in threads {
        let out = thread.join().unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 413 "),
            "{}",
            String::from_utf8_lossy(&out[..out.len().min(200)])
        );
    }
    let grown = resident_bytes().saturating_sub(before);
    // 64 MiB went to the gate; what it keeps of it is the lingering reads' buffers at most.
    eprintln!("the gate grew by {} KiB", grown >> 10);
    assert!(grown < 32 << 20, "the gate grew by {} MiB", grown >> 20);
}
