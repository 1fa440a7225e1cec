//! The idle timeout, kept by the gate's watchdog (`server.rs`): a head that never ends is
//! closed after it, an answer slower than it is not cut.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use super::tests::{api_gate, upstream};
use crate::edge::Limits;

/// Reads until the gate closes the connection; what it sent, and how long that took
/// (None: still open after `limit`).
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), Some(started.elapsed())),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&out).into_owned(), Some(started.elapsed()))
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), None),
        }
    }
}

fn short_idle() -> Limits {
    Limits {
        idle_timeout: Duration::from_millis(400),
        ..Limits::default()
    }
}

#[test]
fn a_head_that_never_ends_is_closed_after_the_idle_timeout() {
    // The first request's head, or the next one's on a kept-alive connection.
    let up = upstream();
    let gate = api_gate(up.addr, short_idle());
    for earlier in [&b""[..], b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"] {
        for silent in [&b""[..], b"GET /health HTTP/1.1\r\nHost: x\r\n"] {
            let mut stream = TcpStream::connect(gate.local_addr()).unwrap();
            stream.write_all(earlier).unwrap();
            stream.write_all(silent).unwrap();
            let (out, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
            assert!(closed.is_some(), "still open: {earlier:?} then {silent:?}");
            assert!(
                closed.unwrap() >= Duration::from_millis(350),
                "closed early: {closed:?}"
            );
            assert_eq!(out.matches("HTTP/1.1 200 ").count(), earlier.len().min(1), "{out}");
        }
    }
}

#[test]
fn an_answer_slower_than_the_idle_timeout_is_not_cut() {
    // Workers that take 1.2 s (three idle timeouts) to answer.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let workers = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                std::thread::sleep(Duration::from_millis(1200));
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow");
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    let gate = api_gate(workers, short_idle());
    let mut stream = TcpStream::connect(gate.local_addr()).unwrap();
    stream
        .write_all(b"GET /registry-svc/instances?index=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (out, closed) = read_until_closed(&mut stream, Duration::from_secs(10));
    assert!(out.starts_with("HTTP/1.1 200 ") && out.ends_with("slow"), "{out}");
    // Then idle: closed one idle timeout after the answer, not before it.
    assert!(
        closed.is_some_and(|after| after >= Duration::from_millis(1500)),
        "{closed:?}"
    );
}
