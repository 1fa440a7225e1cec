//! The picker's gRPC server: a TCP listener, hyper's HTTP/2 connections, tonic's gRPC
//! codec and streaming, on a runtime of its own (two threads).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::messages::{HealthCheckRequest, HealthCheckResponse, ProcessingRequest, ProcessingResponse, Request};
use super::{carry_on, Decision, Exchange, Picker};
use crate::registry::Registry;

const PROCESS: &str = "/envoy.service.ext_proc.v3.ExternalProcessor/Process";
const HEALTH: &str = "/grpc.health.v1.Health/Check";

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The running picker; dropping it stops it.
pub struct Epp {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    address: SocketAddr,
}

impl Epp {
    /// Listens on `listen` and answers from `registry` until dropped.
    pub fn start(listen: SocketAddr, registry: Arc<Registry>) -> std::io::Result<Epp> {
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("registry-epp")
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let picker = Arc::new(Picker { registry });
        let thread = std::thread::Builder::new()
            .name("registry-epp-accept".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        accept(listener, picker, stopped).await;
                    }
                });
            })?;
        Ok(Epp {
            stop: Some(stop),
            thread: Some(thread),
            address,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for Epp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, picker: Arc<Picker>, mut stopped: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(Grpc { picker: Arc::clone(&picker) });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut stopped => return,
        }
    }
}

/// The gRPC methods by path.
#[derive(Clone)]
struct Grpc {
    picker: Arc<Picker>,
}

impl tower_service::Service<hyper::Request<Incoming>> for Grpc {
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: hyper::Request<Incoming>) -> Self::Future {
        let picker = Arc::clone(&self.picker);
        match request.uri().path() {
            PROCESS => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.streaming(Process(picker), request).await)
            }),
            HEALTH => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Health, request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// `ExternalProcessor/Process`: one stream per HTTP request.
struct Process(Arc<Picker>);

impl tonic::server::StreamingService<ProcessingRequest> for Process {
    type Response = ProcessingResponse;
    type ResponseStream = ReceiverStream<Result<ProcessingResponse, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<ProcessingRequest>>) -> Self::Future {
        let picker = Arc::clone(&self.0);
        Box::pin(async move {
            let authorization = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (sender, receiver) = mpsc::channel(4);
            tokio::spawn(exchange(picker, authorization, request.into_inner(), sender));
            Ok(tonic::Response::new(ReceiverStream::new(receiver)))
        })
    }
}

/// Reads one request's messages and answers each.
async fn exchange(
    picker: Arc<Picker>,
    authorization: Option<String>,
    mut inbound: Streaming<ProcessingRequest>,
    sender: mpsc::Sender<Result<ProcessingResponse, Status>>,
) {
    let mut seen = Exchange::default();
    while let Ok(Some(message)) = inbound.message().await {
        let Some(request) = message.request else {
            continue;
        };
        let answer = match &request {
            Request::RequestHeaders(headers) => {
                let whole = seen.headers(headers);
                if !picker.allows(authorization.as_deref(), &seen.slug) {
                    let refused =
                        Decision::Refuse(401, format!("a registry token that may view '{}' is needed", seen.slug));
                    let _ = sender.send(Ok(refused.response(false))).await;
                    return;
                }
                if whole {
                    seen.decide(&picker.registry).response(false)
                } else {
                    carry_on(&request)
                }
            }
            Request::RequestBody(piece) if seen.body(piece) => seen.decide(&picker.registry).response(true),
            _ => carry_on(&request),
        };
        if sender.send(Ok(answer)).await.is_err() {
            return;
        }
    }
}

/// `grpc.health.v1.Health/Check`: SERVING while the picker runs.
struct Health;

impl tonic::server::UnaryService<HealthCheckRequest> for Health {
    type Response = HealthCheckResponse;
    type Future = BoxFuture<tonic::Response<HealthCheckResponse>, Status>;

    fn call(&mut self, _request: tonic::Request<HealthCheckRequest>) -> Self::Future {
        Box::pin(async { Ok(tonic::Response::new(HealthCheckResponse { status: 1 })) })
    }
}
