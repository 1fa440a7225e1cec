//! The floor of the library under the proxy: the leanest reverse proxy hyper 1.x makes, with
//! none of registry-svc's policy (no pick, no fence, no limits, no timers, no access log).
//!
//!     hyper_floor LISTEN UPSTREAM [THREADS]
//!
//! Like the gates, one single-threaded Tokio runtime per thread; unlike them, each client
//! connection gets its own upstream connection (opened again when the upstream closes it),
//! driven by a task on the same thread: no pool, no other thread, no header rules beyond
//! dropping the hop-by-hop ones, which is about as little as hyper lets a proxy do. `make bench` runs it beside
//! registry-svc's data port proxy and nginx's, so that the ratio to nginx can be read as
//! "ours / the library's floor" and "the library's floor / nginx". Loopback only.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Headers that belong to one connection, not forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The client connection's own upstream connection, opened when there is none.
struct Upstream {
    addr: SocketAddr,
    send: tokio::sync::Mutex<Option<SendRequest<Empty<Bytes>>>>,
}

impl Upstream {
    async fn send(&self, request: Request<Empty<Bytes>>) -> std::io::Result<Response<Incoming>> {
        let mut send = self.send.lock().await;
        if send.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(connection);
            *send = Some(sender);
        }
        let sender = send.as_mut().expect("opened above");
        sender.ready().await.map_err(std::io::Error::other)?;
        sender.send_request(request).await.map_err(std::io::Error::other)
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr) {
    let upstream = Arc::new(Upstream {
        addr: upstream,
        send: tokio::sync::Mutex::new(None),
    });
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let upstream = Arc::clone(&upstream);
        async move {
            let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
            let mut outgoing = Request::builder().method(request.method()).uri(target);
            for (name, value) in request.headers() {
                if !HOP_BY_HOP.contains(&name.as_str()) {
                    outgoing = outgoing.header(name, value);
                }
            }
            let outgoing = outgoing.body(Empty::new()).expect("a head copied from a parsed one");
            let answer = upstream.send(outgoing).await?;
            let (parts, body) = answer.into_parts();
            Ok::<_, std::io::Error>(Response::from_parts(parts, UnsyncBoxBody::new(body.boxed_unsync())))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await;
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "usage: hyper_floor LISTEN UPSTREAM [THREADS]",
        )
    };
    let listen: SocketAddr = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let upstream: SocketAddr = args.get(2).and_then(|a| a.parse().ok()).ok_or_else(usage)?;
    let threads: usize = args.get(3).map_or(Ok(2), |a| a.parse().map_err(|_| usage()))?;
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let listener = listener(listen)?;
                    loop {
                        let (client, _) = listener.accept().await?;
                        client.set_nodelay(true)?;
                        tokio::spawn(serve(client, upstream));
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker thread panicked")?;
    }
    Ok(())
}
