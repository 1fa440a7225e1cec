//! One client connection, held by hyper's HTTP/1.1 server with the gate's limits: heads up
//! to `max_head` bytes and `MAX_HEADERS` headers (past either, hyper answers 431 and
//! closes), the next head within `idle_timeout` (past it, the connection closes), requests
//! answered in order (pipelined ones too), `Expect: 100-continue` answered when the body is
//! first read. Each request goes to `Gate::answer`.
//!
//! A connection that ends on a refusal (the gate's, or hyper's 400 or 431 for a head it
//! cannot parse) is closed with a lingering read: the client may still be sending, and
//! closing with unread input would make the kernel reset the connection and lose the
//! answer (nginx's "lingering close").

use super::*;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;

use hyper::header::CONNECTION;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};

type Answering = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

/// Serves one client connection until the client, a refusal or the idle timeout ends it.
pub(crate) async fn serve(gate: Arc<Gate>, stream: TcpStream, peer: SocketAddr) {
    let client_ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    // Set when the gate answers with a refusal that closes the connection.
    let refused = Arc::new(AtomicBool::new(false));
    let service = {
        let (gate, refused) = (Arc::clone(&gate), Arc::clone(&refused));
        hyper::service::service_fn(move |request| -> Answering {
            let (gate, refused) = (Arc::clone(&gate), Arc::clone(&refused));
            Box::pin(async move {
                let answer = gate.answer(request, client_ip).await;
                if answer.headers().get(CONNECTION).is_some_and(|v| v == "close") {
                    refused.store(true, Ordering::Relaxed);
                }
                Ok(answer)
            })
        })
    };
    let mut connection = builder(&gate.limits).serve_connection(TokioIo::new(stream), service);
    let served = poll_fn(|cx| connection.poll_without_shutdown(cx)).await;
    let mut stream = connection.into_parts().io.into_inner();
    let linger = match &served {
        Ok(()) => refused.load(Ordering::Relaxed),
        Err(e) => e.is_parse() || e.is_parse_too_large(),
    };
    let _ = stream.shutdown().await;
    if linger {
        drain(&mut stream, LINGER, LINGER_MAX_BYTES, 64 << 10).await;
    }
}

/// hyper's HTTP/1.1 server with the gate's limits.
fn builder(limits: &Limits) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout)
        .max_header_size(limits.max_head)
        .max_headers(MAX_HEADERS)
        // Answers carry what the workers or the gate put in them; no Date of hyper's.
        .auto_date_header(false)
        .keep_alive(true);
    builder
}
