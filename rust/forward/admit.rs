//! Phase 1, admit: what is refused before any upstream is chosen (a loop, a dot segment),
//! and the header rules of the request (hop-by-hop, forwarding claims, registry tokens).

use super::*;

/// Whether `path` has a `.` or `..` segment once percent-decoded (twice), counting `\` as a
/// separator (some servers do) and ignoring a segment's `;parameters` (Java servlet
/// containers strip them and then act on the `..` left: `/..;/admin`).
pub fn has_dot_segment(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    let once = percent_decode(path.as_bytes());
    let twice = percent_decode(&once);
    twice.split(|b| *b == b'/' || *b == b'\\').any(|segment| {
        let bare = segment.split(|b| *b == b';').next().unwrap_or_default();
        bare == b"." || bare == b".."
    })
}

pub(crate) fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Whether an Authorization value carries a registry token (bare or as a bearer).
pub fn is_registry_token(value: &[u8]) -> bool {
    let text = String::from_utf8_lossy(value);
    let mut text = text.trim();
    if text.len() >= 7 && text[..7].eq_ignore_ascii_case("bearer ") {
        text = text[7..].trim();
    }
    text.starts_with(crate::tokens::SECRET_PREFIX)
}

/// The hop-by-hop headers of one message: the standard ones plus any its Connection
/// header names (allocating only for those, which are rare).
pub(crate) struct HopByHop(Vec<String>);

impl HopByHop {
    pub(crate) fn of<'h>(headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> HopByHop {
        let mut named = Vec::new();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("connection") {
                named.extend(
                    String::from_utf8_lossy(value)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty()),
                );
            }
        }
        HopByHop(named)
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) || self.0.iter().any(|h| name.eq_ignore_ascii_case(h))
    }
}

/// Whether a client header claims something about the connection that only the proxy may
/// state: `X-Forwarded-*`, `Forwarded` (RFC 7239) and `X-Real-IP`, however spelled
/// (`X_Forwarded_Host`: some frameworks read underscores as dashes).
pub(crate) fn is_forwarding_claim(name: &str) -> bool {
    let normal = |b: u8| if b == b'_' { b'-' } else { b.to_ascii_lowercase() };
    let is = |prefix: &str, whole: bool| {
        let n = name.as_bytes();
        (if whole {
            n.len() == prefix.len()
        } else {
            n.len() >= prefix.len()
        }) && n.iter().zip(prefix.bytes()).all(|(a, b)| normal(*a) == b)
    };
    is("x-forwarded-", false) || is("forwarded", true) || is("x-real-ip", true)
}

/// The answer to a request that is refused before any upstream is chosen: one that a
/// registry already forwarded (a loop), or a path with a dot segment.
pub(crate) fn admit(request: &Outgoing<'_>) -> Option<Failed> {
    let slug = request.slug;
    if request.headers.contains_key(FORWARDED_HEADER) {
        return Some(Failed(
            508,
            format!("loop detected: this request to '{slug}' was already forwarded by a registry"),
        ));
    }
    let path = request.target.split('?').next().unwrap_or_default();
    has_dot_segment(path).then(|| {
        Failed(
            400,
            "path: '.' and '..' segments are not forwarded (they would leave the slug)".to_owned(),
        )
    })
}
