//! One client connection, held by hyper's HTTP/1.1 server with the gate's limits: heads up
//! to `max_head` bytes and `MAX_HEADERS` headers (past either, hyper answers 431 and
//! closes), the next head within `idle_timeout` (past it, the connection closes), requests
//! answered in order (pipelined ones too), `Expect: 100-continue` answered when the body is
//! first read. Each request goes to `Gate::answer`.
//!
//! The idle timeout is kept by one watchdog per connection (`idle`), which looks a few
//! times per timeout at the connection's answers begun and ended, instead of hyper's
//! header-read timer, which arms and cancels a timer for every request (3-4% of a lookup's
//! CPU in `perf`).
//!
//! A connection that ends on a refusal (the gate's, or hyper's 400 or 431 for a head it
//! cannot parse) is closed with a lingering read: the client may still be sending, and
//! closing with unread input would make the kernel reset the connection and lose the
//! answer (nginx's "lingering close").

use super::*;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::task::Poll;

use hyper::header::CONNECTION;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

type Answering = Pin<Box<dyn Future<Output = Result<Answer, Infallible>> + Send>>;

/// Looks the idle watchdog takes per idle timeout: an idle connection is closed after
/// between one and 1 + 1/LOOKS idle timeouts.
const LOOKS: u32 = 4;

/// A connection's answers begun and ended: what the idle watchdog looks at.
#[derive(Default)]
struct Progress {
    begun: AtomicU64,
    ended: AtomicU64,
}

impl Progress {
    fn now(&self) -> (u64, u64) {
        (self.begun.load(Ordering::Relaxed), self.ended.load(Ordering::Relaxed))
    }
}

/// Returns once the connection went `timeout` without a request: none begun, none in
/// progress, none ended. A request in progress (a blocking query, a slow upstream) never
/// counts as idle.
async fn idle(progress: Arc<Progress>, timeout: Duration) {
    let look = timeout / LOOKS;
    let (mut seen, mut quiet) = ((0, 0), 0);
    loop {
        tokio::time::sleep(look).await;
        let now = progress.now();
        if now != seen || now.0 != now.1 {
            (seen, quiet) = (now, 0);
            continue;
        }
        quiet += 1;
        if quiet >= LOOKS {
            return;
        }
    }
}

/// Serves one client connection until the client, a refusal or the idle timeout ends it.
pub(crate) async fn serve(gate: Arc<Gate>, stream: TcpStream, peer: SocketAddr) {
    let client_ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    // Set when the gate answers with a refusal that closes the connection.
    let refused = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Progress::default());
    let service = {
        let (gate, refused, progress) = (Arc::clone(&gate), Arc::clone(&refused), Arc::clone(&progress));
        hyper::service::service_fn(move |request| -> Answering {
            let (gate, refused, progress) = (Arc::clone(&gate), Arc::clone(&refused), Arc::clone(&progress));
            progress.begun.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let answer = gate.answer(request, client_ip).await;
                if answer.headers().get(CONNECTION).is_some_and(|v| v == "close") {
                    refused.store(true, Ordering::Relaxed);
                }
                progress.ended.fetch_add(1, Ordering::Relaxed);
                Ok(answer)
            })
        })
    };
    let mut connection = builder(&gate.limits).serve_connection(TokioIo::new(stream), service);
    let mut watchdog = Some(Box::pin(idle(Arc::clone(&progress), gate.limits.idle_timeout)));
    let served = poll_fn(|cx| {
        if let Some(fired) = watchdog.as_mut().map(|w| w.as_mut().poll(cx).is_ready()) {
            if fired {
                watchdog = None;
                if progress.now().0 == 0 {
                    // No request yet: nothing to finish (hyper would go on waiting for a
                    // head it has a part of).
                    return Poll::Ready(None);
                }
                // After a request: hyper closes at once, unless an answer's body is still
                // being written, which it finishes first.
                Pin::new(&mut connection).graceful_shutdown();
            }
        }
        connection.poll_without_shutdown(cx).map(Some)
    })
    .await;
    let mut stream = connection.into_parts().io.into_inner();
    let linger = match &served {
        Some(Ok(())) => refused.load(Ordering::Relaxed),
        Some(Err(e)) => e.is_parse() || e.is_parse_too_large(),
        None => false,
    };
    let _ = stream.shutdown().await;
    if linger {
        drain(&mut stream, LINGER, LINGER_MAX_BYTES, 64 << 10).await;
    }
}

/// hyper's HTTP/1.1 server with the gate's limits.
fn builder(limits: &Limits) -> http1::Builder {
    // No timer: the idle timeout is the watchdog's (`idle`).
    let mut builder = http1::Builder::new();
    builder
        .max_header_size(limits.max_head)
        .max_headers(MAX_HEADERS)
        // Answers carry what the workers or the gate put in them; no Date of hyper's.
        .auto_date_header(false)
        .keep_alive(true);
    builder
}
