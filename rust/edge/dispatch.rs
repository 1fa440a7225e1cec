//! Which role answers what: each request of a connection is answered here (hot reads,
//! refusals), sent to the workers (with their responses kept in order), or given to the
//! proxy; and what the data port refuses.

use super::*;

/// What the data port answers to a registry route it does not serve (None: served): a
/// write is a 405, a read of another route a 404, each naming the API port (`api_port`, 0
/// when unknown). Paths that are not registry routes are the proxy's.
pub fn data_port_refusal(method: &str, path: &str, api_port: u16) -> Option<Refusal> {
    if !registry_route(path) {
        return None;
    }
    let route = path.split('?').next().unwrap_or_default();
    let api = match api_port {
        0 => "use the API port".to_owned(),
        port => format!("use the API port ({port})"),
    };
    if method != "GET" && method != "HEAD" {
        return Some(Refusal::new(
            405,
            format!("{method} is not allowed on {route} on the data port, which serves reads; {api}"),
        ));
    }
    if route != "/health" && reads::read_of(route).is_none() {
        return Some(Refusal::new(
            404,
            format!(
                "{method} {route} is not served on the data port (instance lookups, picks and the proxy are); {api}"
            ),
        ));
    }
    None
}

/// Where responses to the client come from: nothing yet, or a task copying the workers'
/// responses that hands the client's write half back when the workers close.
pub(crate) enum Responses {
    Direct(OwnedWriteHalf),
    Relayed {
        upstream: OwnedWriteHalf,
        task: JoinHandle<OwnedWriteHalf>,
        /// Set when the gate itself ends the exchange with the workers (`finish`): the
        /// client is then still the gate's to answer or close.
        finishing: Arc<std::sync::atomic::AtomicBool>,
    },
}

impl Responses {
    /// The client's write half, once every response already under way has been relayed.
    pub(crate) async fn finish(self) -> Option<OwnedWriteHalf> {
        match self {
            Responses::Direct(client) => Some(client),
            Responses::Relayed {
                mut upstream,
                task,
                finishing,
            } => {
                finishing.store(true, Ordering::Release);
                let _ = upstream.shutdown().await;
                task.await.ok()
            }
        }
    }
}

/// What a connection does after one request.
enum Step {
    /// Read the next request, with the responses still to send.
    Next(Responses),
    /// Done: closed, or left to close.
    Close,
    /// Refused: answer after what the workers still owe the client, then close.
    Refuse(Refusal, Option<OwnedWriteHalf>),
}

impl Gate {
    /// Serves one client connection: each request answered here, sent to the workers (in
    /// order), or proxied, until the client or a refusal ends it.
    pub(crate) async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let (rd, wr) = stream.into_split();
        let mut incoming = Incoming { rd, buf: Vec::new() };
        let mut responses = Responses::Direct(wr);
        // The blocking queries this connection sent to the workers, newest last.
        let mut queries: Vec<u64> = Vec::new();
        let client_ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        loop {
            let direct = matches!(responses, Responses::Direct(_));
            let step = match self.next_request(&mut incoming, client_ip, direct).await {
                Ok(Some(Next::Forward(request, close, query))) => {
                    if let Some(id) = query {
                        if queries.len() == QUERIES_KEPT {
                            queries.remove(0);
                        }
                        queries.push(id);
                    }
                    self.on_forward(responses, request, close).await
                }
                Ok(Some(Next::Proxy(head))) => self.on_proxy(responses, &head, &mut incoming, client_ip).await,
                Ok(Some(Next::Answer(head, body, close))) => self.on_answer(responses, &head, &body, close).await,
                Ok(Some(Next::Idle)) => {
                    if let Some(mut client) = responses.finish().await {
                        let _ = client.shutdown().await;
                    }
                    Step::Close
                }
                Ok(None) => {
                    self.client_gone(responses, &queries).await;
                    Step::Close
                }
                Err(refusal) => {
                    if refusal.status != 0 {
                        self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Step::Refuse(refusal, responses.finish().await)
                }
            };
            match step {
                Step::Next(next) => responses = next,
                Step::Close => return,
                Step::Refuse(refusal, client) => return refuse(refusal, client, incoming).await,
            }
        }
    }

    /// A request for the workers: sent, its answer relayed in order.
    async fn on_forward(&self, responses: Responses, request: Vec<u8>, close: bool) -> Step {
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        let Ok(responses) = self.forward(responses, request).await else {
            return Step::Close; // the client went away, or was already answered
        };
        if !close {
            return Step::Next(responses);
        }
        // The client reads to the close: no further request is read.
        if let Some(mut client) = responses.finish().await {
            let _ = client.shutdown().await;
        }
        Step::Close
    }

    /// A request for the proxy, once the workers' answers to earlier requests are out.
    async fn on_proxy(&self, responses: Responses, head: &Head, incoming: &mut Incoming, client_ip: IpAddr) -> Step {
        self.stats.proxied.fetch_add(1, Ordering::Relaxed);
        let Some(mut client) = responses.finish().await else {
            return Step::Close;
        };
        let started = std::time::Instant::now();
        let outcome = self.proxy(head, incoming, &mut client, client_ip).await;
        if self.options.access_log {
            let status = match &outcome {
                Ok((_, status)) => *status,
                Err(refusal) => refusal.status,
            };
            access_line(head, status, started.elapsed(), client_ip);
        }
        match outcome {
            Ok((true, _)) if !head.close => Step::Next(Responses::Direct(client)),
            Ok(_) => {
                let _ = client.shutdown().await;
                Step::Close
            }
            Err(refusal) => Step::Refuse(refusal, Some(client)),
        }
    }

    /// An answer the gate gave itself (a hot read).
    async fn on_answer(&self, mut responses: Responses, head: &[u8], body: &[u8], close: bool) -> Step {
        self.stats.answered.fetch_add(1, Ordering::Relaxed);
        let Responses::Direct(client) = &mut responses else {
            return Step::Close;
        };
        if write_both(client, head, body).await.is_err() {
            return Step::Close;
        }
        if close {
            let _ = client.shutdown().await;
            return Step::Close;
        }
        Step::Next(responses)
    }

    /// The client closed its side. A response still under way is abandoned, as nginx does
    /// when a client goes away: the connection to the workers is dropped with it, so a
    /// blocking query held for this client holds no descriptor of the gate's any more.
    async fn client_gone(&self, responses: Responses, queries: &[u64]) {
        match responses {
            Responses::Direct(mut client) => {
                let _ = client.shutdown().await;
            }
            Responses::Relayed { upstream, task, .. } => {
                task.abort();
                drop(upstream);
                self.abandon(queries);
            }
        }
    }

    /// The next request, checked and buffered: head (with its new framing) and body; or
    /// answered here, when it is a hot read and nothing of this connection went to the
    /// workers yet (their answers must come first, and they are relayed unparsed).
    pub(crate) async fn next_request(
        &self,
        incoming: &mut Incoming,
        client_ip: IpAddr,
        direct: bool,
    ) -> Result<Option<Next>, Refusal> {
        let raw = match incoming.head(&self.limits).await? {
            HeadRead::Head(raw) => raw,
            HeadRead::Gone => return Ok(None),
            HeadRead::Idle => return Ok(Some(Next::Idle)),
        };
        let head = check_head(&raw, &self.limits)?;
        if self.role == Role::Data {
            if let Some(refusal) = data_port_refusal(&head.method, &head.path, self.options.api_port) {
                return Err(refusal);
            }
        }
        if let (true, true, "GET", Framing::None, Some(registry)) = (
            direct,
            self.options.answer_reads,
            head.method.as_str(),
            head.framing,
            &self.reads,
        ) {
            // The tokens are the registry's: one cache per process, the workers' too.
            if let Some(answer) = reads::answer(registry, &head.path, head.authorization.as_deref()) {
                let body = Arc::clone(&answer.body);
                return Ok(Some(Next::Answer(response_head(&answer, head.close), body, head.close)));
            }
        }
        if self.forwarder.is_some() && proxied_slug(&head.path).is_some() {
            return Ok(Some(Next::Proxy(head)));
        }
        let expected = match head.framing {
            Framing::Length(n) => n,
            Framing::Chunked => head.limit,
            Framing::None => 0,
        };
        // Hold budget for the body while it is buffered and forwarded.
        let permits = u32::try_from(expected.min(self.limits.buffered_bodies as u64)).unwrap_or(u32::MAX);
        let _held = if permits > 0 {
            Some(self.budget.acquire_many(permits).await.map_err(|_| gone())?)
        } else {
            None
        };
        let mut body = Vec::new();
        let read = async {
            match head.framing {
                Framing::None => Ok(()),
                Framing::Length(n) => incoming.exact(n as usize, &mut body).await.map_err(|_| gone()),
                Framing::Chunked => {
                    body = incoming.chunked(head.limit).await?;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(self.limits.request_timeout, read).await {
            Ok(result) => result?,
            Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
        }
        let mut request = head.forwarded;
        if head.framing != Framing::None {
            request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        let query = (head.method == "GET" && is_blocking(&head.path)).then(|| self.next_query_id());
        if let Some(id) = query {
            request.extend_from_slice(format!("{QUERY_HEADER}: {id}\r\n").as_bytes());
        }
        request.extend_from_slice(format!("{CLIENT_ADDR_HEADER}: {client_ip}\r\n\r\n").as_bytes());
        request.extend_from_slice(&body);
        Ok(Some(Next::Forward(request, head.close, query)))
    }

    /// A blocking query's id, unique over the server's processes: this process's id, then
    /// a count.
    pub(crate) fn next_query_id(&self) -> u64 {
        (u64::from(std::process::id()) << 32) | u64::from(self.queries.fetch_add(1, Ordering::Relaxed))
    }

    /// Tells the workers that the blocking queries `ids` lost their client.
    pub(crate) fn abandon(&self, ids: &[u64]) {
        if let Some(registry) = &self.reads {
            for id in ids {
                registry.selector.shared().cancel_query(*id);
            }
        }
    }

    /// Sends one request to the workers, connecting (and starting the relay of their
    /// responses) on the first one.
    pub(crate) async fn forward(&self, responses: Responses, request: Vec<u8>) -> Result<Responses, Refusal> {
        let mut relayed = match responses {
            Responses::Relayed {
                upstream,
                task,
                finishing,
            } => (upstream, task, finishing),
            Responses::Direct(mut client) => {
                let stream = match TcpStream::connect(self.upstream).await {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Starting (the gate listens before the workers answer), or the
                        // workers are being restarted: a retry shortly will be answered.
                        let answer = if is_health_check(&request) {
                            starting_health()
                        } else {
                            Refusal::new(
                                503,
                                format!("the server is starting: its workers do not answer yet ({e}); retry shortly"),
                            )
                            .response_with(&[("retry-after", "1")])
                        };
                        let _ = client.write_all(&answer).await;
                        let _ = client.shutdown().await;
                        return Err(gone());
                    }
                };
                let _ = stream.set_nodelay(true);
                let (mut upstream_rd, upstream_wr) = stream.into_split();
                let finishing = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let ours = Arc::clone(&finishing);
                let task = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut upstream_rd, &mut client).await;
                    if !ours.load(Ordering::Acquire) {
                        // The workers closed on their own (a worker died, or they end the
                        // connection): no answer can come on it any more, so the client is
                        // told by the close rather than left waiting for the idle timeout.
                        let _ = client.shutdown().await;
                    }
                    client
                });
                (upstream_wr, task, finishing)
            }
        };
        if relayed.0.write_all(&request).await.is_err() {
            return Err(gone());
        }
        Ok(Responses::Relayed {
            upstream: relayed.0,
            task: relayed.1,
            finishing: relayed.2,
        })
    }
}

/// The slug of a path the gate's proxy may forward (a valid slug as its first segment, not
/// a registry route); None leaves the request to the workers.
pub(crate) fn proxied_slug(path: &str) -> Option<&str> {
    if registry_route(path) {
        return None;
    }
    let first = path.strip_prefix('/')?.split(['/', '?']).next()?;
    reads::is_slug(first).then_some(first)
}
