//! `/<slug>/...` through the gate's proxy (`forward.rs`): the request body pumped to the
//! upstream as it arrives, `Expect: 100-continue`, and the answer relayed.

use super::*;

/// How a streamed request body ended.
pub(crate) enum Pumped {
    /// Read to its end.
    Whole,
    /// The proxy stopped taking it (it answered without it): the rest is still on the
    /// connection, which must close.
    Abandoned,
}

impl Gate {
    /// Forwards a proxied request with the gate's proxy and relays the answer. Ok((keep,
    /// status)): whether the connection may take another request, and the status sent.
    pub(crate) async fn proxy(
        &self,
        head: &Head,
        incoming: &mut Incoming,
        client: &mut OwnedWriteHalf,
        client_ip: IpAddr,
    ) -> Result<(bool, u16), Refusal> {
        let (Some(forwarder), Some(registry)) = (&self.forwarder, &self.reads) else {
            return Err(Refusal::new(502, "no proxy"));
        };
        let request = Outgoing {
            method: &head.method,
            target: &head.path,
            slug: proxied_slug(&head.path).unwrap_or_default(),
            headers: &head.headers,
            client_ip,
            http10: head.http10,
            sandboxed: self.role == Role::Api,
        };
        let timeout = self.limits.request_timeout;
        if head.expect_continue && head.framing != Framing::None {
            // The body is welcome: the client need not wait (curl waits a second).
            client
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| gone())?;
        }
        let (forwarded, pumped) = match head.framing {
            Framing::None => (
                forwarder
                    .forward(registry, &request, Payload::Kept(Bytes::new()), client)
                    .await,
                Pumped::Whole,
            ),
            Framing::Length(n) if n <= RETRY_BODY => {
                let mut body = Vec::with_capacity(n as usize);
                match tokio::time::timeout(timeout, incoming.exact(n as usize, &mut body)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(gone()),
                    Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
                }
                let payload = Payload::Kept(Bytes::from(body));
                (
                    forwarder.forward(registry, &request, payload, client).await,
                    Pumped::Whole,
                )
            }
            framing => {
                let (tx, rx) = mpsc::channel(8);
                let length = match framing {
                    Framing::Length(n) => Some(n),
                    _ => None,
                };
                let pump = pump_body(incoming, framing, head.limit, tx, timeout);
                let payload = Payload::Streamed(rx, length);
                let (pumped, forwarded) = tokio::join!(pump, forwarder.forward(registry, &request, payload, client));
                match (pumped, forwarded) {
                    (Err(refusal), Forwarded::Error(..)) => return Err(refusal),
                    (Err(_), Forwarded::Relayed(_, status) | Forwarded::Broken(status)) => return Ok((false, status)),
                    (Ok(pumped), forwarded) => (forwarded, pumped),
                }
            }
        };
        match (forwarded, pumped) {
            (Forwarded::Relayed(keep, status), Pumped::Whole) => Ok((keep, status)),
            (Forwarded::Relayed(_, status), Pumped::Abandoned) | (Forwarded::Broken(status), _) => Ok((false, status)),
            (Forwarded::Error(status, message), Pumped::Abandoned) => Err(Refusal::new(status, message)),
            (Forwarded::Error(status, message), Pumped::Whole) => {
                let response = error_response(status, &message, false);
                Ok((client.write_all(&response).await.is_ok(), status))
            }
        }
    }
}

/// Feeds a request body to the proxy as it arrives, piece by piece (a chunked one
/// decoded, refused past `limit`). When the body cannot be read to its end, the proxy is
/// told so: a cut body must fail upstream, never reach it as a whole one.
pub(crate) async fn pump_body(
    incoming: &mut Incoming,
    framing: Framing,
    limit: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) -> Result<Pumped, Refusal> {
    let pumped = pump_pieces(incoming, framing, limit, &tx, timeout).await;
    if pumped.is_err() {
        let cut = io::Error::new(io::ErrorKind::UnexpectedEof, "the client's body was cut short");
        let _ = tx.send(Err(cut)).await;
    }
    pumped
}

pub(crate) async fn pump_pieces(
    incoming: &mut Incoming,
    framing: Framing,
    limit: u64,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) -> Result<Pumped, Refusal> {
    let mut left = match framing {
        Framing::None => return Ok(Pumped::Whole),
        Framing::Length(n) => n,
        Framing::Chunked => 0,
    };
    let mut total = 0u64;
    let mut in_chunk = false;
    loop {
        if framing == Framing::Chunked && left == 0 {
            if in_chunk && !incoming.line().await?.is_empty() {
                // The CRLF after a chunk's data.
                return Err(Refusal::new(400, "malformed chunked body"));
            }
            let size = incoming.chunk_size().await?;
            if size == 0 {
                return Ok(Pumped::Whole);
            }
            total = total.saturating_add(size);
            if total > limit {
                return Err(too_large(total, limit));
            }
            left = size;
            in_chunk = true;
        }
        if left == 0 {
            return Ok(Pumped::Whole); // Content-Length read
        }
        if incoming.buf.is_empty() {
            match tokio::time::timeout(timeout, incoming.fill()).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(gone()),
                Err(_) => return Err(Refusal::new(408, "the request body did not arrive in time")),
            }
        }
        let take = incoming.buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let piece = Bytes::copy_from_slice(&incoming.buf[..take]);
        incoming.buf.drain(..take);
        left -= take as u64;
        if tx.send(Ok(piece)).await.is_err() {
            return Ok(Pumped::Abandoned); // the proxy answered without the rest
        }
    }
}
