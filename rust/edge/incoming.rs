//! The client side of a connection: reading heads, exact and chunked bodies, with the
//! limits and timeouts of the gate.

use super::*;

/// The client side of a connection: its read half and what was read but not used yet.
pub(crate) struct Incoming {
    pub(crate) rd: OwnedReadHalf,
    pub(crate) buf: Vec<u8>,
}

pub(crate) enum HeadRead {
    Head(Vec<u8>),
    /// The client closed its side.
    Gone,
    /// The client sent nothing for the idle timeout.
    Idle,
}

impl Incoming {
    /// Reads what has arrived into `buf`'s spare room (no zeroed scratch buffer and no
    /// copy: the profile of the data port showed both).
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(16 << 10);
        self.rd.read_buf(&mut self.buf).await
    }

    /// Waits until the client sends something (or closes) within `until`; a connection
    /// idle for a while gives its buffer back first, so that idle connections hold only
    /// their task and socket (the next request on a busy one finds its buffer still there).
    pub(crate) async fn arrival(&mut self, until: tokio::time::Instant) -> Option<HeadRead> {
        let soon = tokio::time::Instant::now() + IDLE_RELEASE;
        if soon < until && self.buf.is_empty() {
            if let Ok(ready) = tokio::time::timeout_at(soon, self.rd.readable()).await {
                return ready.is_err().then_some(HeadRead::Gone);
            }
            self.buf = Vec::new();
        }
        match tokio::time::timeout_at(until, self.rd.readable()).await {
            Ok(Ok(())) => None,
            Ok(Err(_)) => Some(HeadRead::Gone),
            Err(_) => Some(HeadRead::Idle),
        }
    }

    pub(crate) async fn head(&mut self, limits: &Limits) -> Result<HeadRead, Refusal> {
        // Idle between requests: wait for a first byte (tolerating stray CRLFs).
        let until = tokio::time::Instant::now() + limits.idle_timeout;
        loop {
            let stray = self.buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
            self.buf.drain(..stray);
            if !self.buf.is_empty() {
                break;
            }
            if let Some(gone) = self.arrival(until).await {
                return Ok(gone);
            }
            self.buf.reserve(16 << 10);
            match self.rd.try_read_buf(&mut self.buf) {
                Ok(0) => return Ok(HeadRead::Gone),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Ok(HeadRead::Gone),
            }
        }
        let deadline = tokio::time::Instant::now() + limits.request_timeout;
        let mut scanned = 0;
        loop {
            let end = find_head_end(&self.buf, scanned)?;
            scanned = self.buf.len().saturating_sub(3);
            if let Some(end) = end {
                if end > limits.max_head {
                    return Err(Refusal::new(
                        431,
                        format!("request head over {} bytes", limits.max_head),
                    ));
                }
                // The buffer keeps its room for the next request.
                let head = self.buf[..end].to_vec();
                self.buf.drain(..end);
                return Ok(HeadRead::Head(head));
            }
            if self.buf.len() > limits.max_head {
                return Err(Refusal::new(
                    431,
                    format!("request head over {} bytes", limits.max_head),
                ));
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(HeadRead::Gone),
                Ok(Ok(_)) => {}
                Err(_) => return Err(Refusal::new(408, "the request head did not arrive in time")),
            }
        }
    }

    /// Exactly `n` body bytes.
    pub(crate) async fn exact(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let rest = self.buf.split_off(n);
        out.extend_from_slice(&std::mem::replace(&mut self.buf, rest));
        Ok(())
    }

    pub(crate) async fn line(&mut self) -> Result<Vec<u8>, Refusal> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let rest = self.buf.split_off(end + 2);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_CHUNK_LINE {
                return Err(Refusal::new(400, "malformed chunked body"));
            }
            if self.fill().await.map_err(|_| gone())? == 0 {
                return Err(gone());
            }
        }
    }

    /// The size on a chunk's line; after the last chunk (size 0) its trailers are read and
    /// dropped, up to the blank line.
    pub(crate) async fn chunk_size(&mut self) -> Result<u64, Refusal> {
        let line = self.line().await?;
        let size = parse_chunk_size(&line).ok_or_else(|| Refusal::new(400, "malformed chunked body"))?;
        if size == 0 {
            while !self.line().await?.is_empty() {}
        }
        Ok(size)
    }

    /// A chunked body, decoded, refused past `limit`.
    pub(crate) async fn chunked(&mut self, limit: u64) -> Result<Vec<u8>, Refusal> {
        let mut body = Vec::new();
        loop {
            let size = self.chunk_size().await?;
            if size == 0 {
                return Ok(body);
            }
            // The size comes from the wire: saturating, so that a huge one cannot wrap the total.
            let total = (body.len() as u64).saturating_add(size);
            if total > limit {
                return Err(too_large(total, limit));
            }
            self.exact(size as usize, &mut body).await.map_err(|_| gone())?;
            if !self.line().await?.is_empty() {
                return Err(Refusal::new(400, "malformed chunked body"));
            }
        }
    }
}
