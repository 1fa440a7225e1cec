//! A request head, checked before a byte of its body is read: framing (RFC 9112 section
//! 6), limits, method, target, and where the head ends.

use super::*;

/// How the body of a request is framed.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A checked request head, ready to forward (without its framing headers).
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub framing: Framing,
    pub limit: u64,
    pub authorization: Option<String>,
    /// The client asked to close after this request (`Connection: close`, or HTTP/1.0
    /// without keep-alive).
    pub close: bool,
    /// Request line and headers, minus framing and client-address headers, without the
    /// final blank line.
    pub forwarded: Vec<u8>,
    /// The headers of `forwarded`, for the proxy.
    pub headers: Vec<(String, Vec<u8>)>,
    pub http10: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
}

/// Parses and checks a complete request head (`raw` ends with the blank line).
pub fn check_head(raw: &[u8], limits: &Limits) -> Result<Head, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(431, format!("more than {MAX_HEADERS} request headers")))
        }
        Err(e) => return Err(Refusal::new(400, format!("malformed request: {e}"))),
    }
    let method = request.method.unwrap_or_default().to_owned();
    let path = request.path.unwrap_or_default().to_owned();
    if !METHODS.contains(&method.as_str()) {
        return Err(Refusal::new(405, format!("{method} is not allowed on {path}")));
    }
    check_target(&path)?;
    let request_line = format!("{method} {path} HTTP/1.{}\r\n", request.version.unwrap_or(1));
    // The proxy's copy of the headers; the registry's own routes do not need one.
    let scan = HeaderScan::of(request.headers, request_line, !registry_route(&path));
    let framing = framing_of(&scan.lengths, &scan.codings)?;
    check_content_type(scan.multipart_form, &path)?;
    // One table of the registry's routes (finding 7 of the 2026-12 review: xDS got the
    // proxy's limit, 16 MiB, into Robyn, which buffers bodies whole).
    let limit = if registry_route(&path) {
        limits.api_body
    } else {
        limits.proxy_body
    };
    if let Framing::Length(n) = framing {
        if n > limit {
            return Err(too_large(n, limit));
        }
    }
    let http10 = request.version == Some(0);
    let expect_continue = !http10
        && scan
            .kept
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case(b"100-continue"));
    let close = scan.connection.contains("close") || (http10 && !scan.connection.contains("keep-alive"));
    Ok(Head {
        method,
        path,
        framing,
        limit,
        authorization: scan.authorization,
        close,
        forwarded: scan.forwarded,
        headers: scan.kept,
        http10,
        expect_continue,
    })
}

/// What a head's headers say, read in one pass: the framing headers apart, the rest
/// copied for the workers (and, for a proxied path, for the proxy).
struct HeaderScan<'r> {
    lengths: Vec<&'r [u8]>,
    codings: Vec<String>,
    authorization: Option<String>,
    /// `Connection`, lower-cased.
    connection: String,
    /// Some(has a boundary) for a `multipart/form-data` body.
    multipart_form: Option<bool>,
    /// The request line and the headers the workers get.
    forwarded: Vec<u8>,
    /// The headers the proxy gets (none for the registry's own routes).
    kept: Vec<(String, Vec<u8>)>,
}

impl<'r> HeaderScan<'r> {
    fn of(headers: &[httparse::Header<'r>], request_line: String, proxied: bool) -> HeaderScan<'r> {
        let mut scan = HeaderScan {
            lengths: Vec::new(),
            codings: Vec::new(),
            authorization: None,
            connection: String::new(),
            multipart_form: None,
            forwarded: request_line.into_bytes(),
            kept: Vec::new(),
        };
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                scan.lengths.push(header.value);
                continue;
            }
            if name.eq_ignore_ascii_case("transfer-encoding") {
                let text = String::from_utf8_lossy(header.value);
                let codings = text.split(',').map(|c| c.trim().to_ascii_lowercase());
                scan.codings.extend(codings.filter(|c| !c.is_empty()));
                continue;
            }
            // The gate's own headers to the workers are never taken from a client.
            if name.eq_ignore_ascii_case(CLIENT_ADDR_HEADER) || name.eq_ignore_ascii_case(QUERY_HEADER) {
                continue;
            }
            if name.eq_ignore_ascii_case("authorization") {
                scan.authorization = std::str::from_utf8(header.value).ok().map(str::to_owned);
            } else if name.eq_ignore_ascii_case("connection") {
                scan.connection = String::from_utf8_lossy(header.value).to_ascii_lowercase();
            } else if name.eq_ignore_ascii_case("content-type") {
                let value = String::from_utf8_lossy(header.value).to_ascii_lowercase();
                if value.trim_start().starts_with("multipart/form-data") {
                    scan.multipart_form = Some(value.contains("boundary="));
                }
            }
            scan.forwarded.extend_from_slice(name.as_bytes());
            scan.forwarded.extend_from_slice(b": ");
            scan.forwarded.extend_from_slice(header.value);
            scan.forwarded.extend_from_slice(b"\r\n");
            if proxied {
                scan.kept.push((name.to_owned(), header.value.to_vec()));
            }
        }
        scan
    }
}

/// The body's framing (RFC 9112 section 6): by one Content-Length (repeats must agree), by
/// `chunked` alone, or none; both at once, or another coding, is refused (a request
/// smuggling vector otherwise).
fn framing_of(lengths: &[&[u8]], codings: &[String]) -> Result<Framing, Refusal> {
    match (lengths, codings) {
        ([], []) => Ok(Framing::None),
        ([], [only]) if only == "chunked" => Ok(Framing::Chunked),
        ([], _) => Err(Refusal::new(
            400,
            format!(
                "unsupported Transfer-Encoding '{}'; only chunked is accepted",
                codings.join(", ")
            ),
        )),
        (_, [_, ..]) => Err(Refusal::new(
            400,
            "a request must not carry both Content-Length and Transfer-Encoding",
        )),
        (first, []) => {
            let parse = |v: &[u8]| -> Option<u64> {
                let text = std::str::from_utf8(v).ok()?.trim();
                (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| text.parse().ok())
                    .flatten()
            };
            let values: Vec<Option<u64>> = first.iter().map(|v| parse(v)).collect();
            match values.first() {
                Some(Some(n)) if values.iter().all(|v| *v == Some(*n)) => Ok(Framing::Length(*n)),
                _ => Err(Refusal::new(400, "invalid or conflicting Content-Length")),
            }
        }
    }
}

/// A `multipart/form-data` body: a 415 on the registry's routes (they take JSON), and a 400
/// without a boundary anywhere (Robyn parses such bodies before any handler and answered a
/// malformed one with a bare 500).
fn check_content_type(multipart_form: Option<bool>, path: &str) -> Result<(), Refusal> {
    match multipart_form {
        Some(_) if registry_route(path) => Err(Refusal::new(
            415,
            "Content-Type: the registry's routes take application/json, not multipart/form-data",
        )),
        Some(false) => Err(Refusal::new(
            400,
            "Content-Type: multipart/form-data without a boundary",
        )),
        _ => Ok(()),
    }
}

/// Only the origin form (`/path?query`) is served. The absolute form (`http://host/path`)
/// is for forward proxies, and routing it by its path would need every check of that route
/// applied to a second spelling; `*` (OPTIONS) asks about a server, not a resource. A raw
/// byte outside ASCII must be percent-encoded (RFC 3986).
pub(crate) fn check_target(path: &str) -> Result<(), Refusal> {
    if !path.starts_with('/') {
        return Err(Refusal::new(
            400,
            format!(
                "request target '{}': only a path starting with '/' is served (no absolute form, no '*')",
                path.escape_default()
            ),
        ));
    }
    if !path.is_ascii() {
        return Err(Refusal::new(
            400,
            "request target: a byte outside ASCII must be percent-encoded",
        ));
    }
    Ok(())
}

/// Whether a request to forward (its raw head first) is `GET` or `HEAD /health`.
pub(crate) fn is_health_check(request: &[u8]) -> bool {
    [&b"GET /health"[..], b"HEAD /health"]
        .iter()
        .any(|start| request.starts_with(start) && matches!(request.get(start.len()), Some(b' ' | b'?')))
}

/// Whether the query of `path` asks to block (`index=`): the workers hold such reads.
pub(crate) fn is_blocking(path: &str) -> bool {
    path.split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|pair| pair.split('=').next() == Some("index")))
}

/// The size on a chunk's line (RFC 9112 section 7.1: `1*HEXDIG`, then optional
/// `;extensions`): no sign, no spaces before it, at most 16 digits (a u64). None when it is
/// anything else.
pub fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    // Whitespace may stand before the extensions (BWS), nothing else.
    let rest = match rest.iter().position(|b| *b != b' ' && *b != b'\t') {
        Some(at) => &rest[at..],
        None => &[][..],
    };
    if !rest.is_empty() && rest[0] != b';' {
        return None;
    }
    let text = std::str::from_utf8(&line[..digits]).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// Where the head in `buf` ends (after its blank line), looking from `from` on (the bytes
/// before it were looked at already). A line feed without its carriage return is refused:
/// parsers disagree on where such a head ends (a front proxy could be made to see one
/// request where the gate sees two), so RFC 9112 section 2.2's leniency is not taken.
pub(crate) fn find_head_end(buf: &[u8], from: usize) -> Result<Option<usize>, Refusal> {
    let mut at = from;
    while let Some(offset) = buf[at..].iter().position(|b| *b == b'\n') {
        let lf = at + offset;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(Refusal::new(
                400,
                "malformed request: a line of the head ends in a bare LF (CRLF is required)",
            ));
        }
        if lf >= 3 && &buf[lf - 3..=lf] == b"\r\n\r\n" {
            return Ok(Some(lf + 1));
        }
        at = lf + 1;
    }
    Ok(None)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
