//! Phase 4, the answer: relayed to the client as it comes, head without hop-by-hop headers,
//! body re-framed by its length or chunked.

use super::*;

/// How the answer's body goes to the client.
struct Framing {
    /// No body at all (HEAD, 1xx, 204, 304).
    bodiless: bool,
    /// Its length, when the upstream gave one.
    exact: Option<u64>,
    /// Sent chunked (no length, and an HTTP/1.1 client).
    chunked: bool,
    /// The connection may carry another request afterwards.
    keep: bool,
}

/// Relays the upstream's answer to the client: head (without hop-by-hop headers) and body
/// streamed piece by piece, re-framed by its length or chunked.
pub(crate) async fn relay(
    answer: hyper::Response<hyper::body::Incoming>,
    request: &Outgoing<'_>,
    client: &mut OwnedWriteHalf,
    idle: Duration,
) -> Forwarded {
    let (parts, body) = answer.into_parts();
    let status = parts.status.as_u16();
    let (head, framing) = answer_head(&parts, body.size_hint().exact(), request);
    if framing.bodiless {
        return match client.write_all(&head).await {
            Ok(()) => Forwarded::Relayed(true, status),
            Err(_) => Forwarded::Broken(status),
        };
    }
    match stream_body(body, head, &framing, client, idle).await {
        Ok(()) => Forwarded::Relayed(framing.keep, status),
        Err(()) => Forwarded::Broken(status),
    }
}

/// The answer's head as the client gets it, and how its body will be framed.
fn answer_head(parts: &hyper::http::response::Parts, exact: Option<u64>, request: &Outgoing<'_>) -> (Vec<u8>, Framing) {
    let status = parts.status.as_u16();
    let bodiless = request.method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status,
        parts.status.canonical_reason().unwrap_or("Unknown")
    )
    .into_bytes();
    let drop = HopByHop::of(parts.headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    let mut header = |name: &[u8], value: &[u8]| {
        head.extend_from_slice(name);
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    };
    for (name, value) in &parts.headers {
        if !drop.contains(name.as_str()) {
            header(name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let chunked = !bodiless && exact.is_none() && !request.http10;
    // A HEAD or 304 answer keeps the length the upstream announced; a 1xx or 204 has none
    // (RFC 9110 section 8.6).
    let announced = (request.method == "HEAD" && status >= 200 && status != 204) || status == 304;
    if bodiless {
        if let Some(length) = parts.headers.get("content-length").filter(|_| announced) {
            header(b"content-length", length.as_bytes());
        }
    } else if let Some(n) = exact {
        header(b"content-length", n.to_string().as_bytes());
    } else if chunked {
        header(b"transfer-encoding", b"chunked");
    }
    if request.sandboxed {
        header(b"content-security-policy", SANDBOX_POLICY.as_bytes());
    }
    // Without a length an HTTP/1.0 client learns the end by the close.
    let keep = bodiless || exact.is_some() || chunked;
    if !keep {
        header(b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");
    let framing = Framing {
        bodiless,
        exact,
        chunked,
        keep,
    };
    (head, framing)
}

/// Sends `head` and then the body as it arrives (a small one gathered into one write with
/// the head); Err when the client or the upstream went away or the upstream stalled.
async fn stream_body(
    mut body: hyper::body::Incoming,
    head: Vec<u8>,
    framing: &Framing,
    client: &mut OwnedWriteHalf,
    idle: Duration,
) -> Result<(), ()> {
    let mut out = head;
    let gather = framing.exact.is_some_and(|n| n <= GATHER);
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            // The upstream failed or stalled mid-body: the client cannot be told but by a
            // close (its body ends short).
            Ok(Some(Err(_))) | Err(_) => {
                let _ = client.write_all(&out).await;
                return Err(());
            }
        };
        let Ok(data) = frame.into_data() else { continue }; // trailers are dropped
        if data.is_empty() {
            continue;
        }
        if framing.chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
        if !gather || out.len() >= (GATHER as usize) * 2 {
            client.write_all(&out).await.map_err(|_| ())?;
            out.clear();
        }
    }
    if framing.chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        client.write_all(&out).await.map_err(|_| ())?;
    }
    Ok(())
}
