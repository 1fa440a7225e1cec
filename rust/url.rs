//! Endpoint URLs in one canonical form, used by registration, uniqueness, probes and the
//! proxy; Python asks for it (`_core.parse_url`, `urls.py`).
//!
//! The canonical form of an instance or node URL:
//! - scheme `http` or `https`, lower-cased;
//! - host lower-cased: a DNS name (labels of letters, digits and '-', at most 63 characters
//!   each, 253 in all, the last label not all digits), an IPv4 address in dotted-quad form,
//!   or an IPv6 address in brackets, compressed (`[::1]`, as Python's `ipaddress` writes it:
//!   all hextets, `::ffff:102:304` for an IPv4-mapped one);
//! - the port only when it is not the scheme's default (`http://h:80` is `http://h`);
//! - a path of RFC 3986 path characters (percent-escapes allowed), or none; `/` alone is none;
//! - no user:password@, no query string, no fragment.
//!
//! Anything else is refused with a message naming what is wrong, so that two spellings of
//! one endpoint can never become two instances, and the address that is probed is the one
//! that is proxied to.

use std::net::Ipv6Addr;

pub const MAX_URL_LEN: usize = 2048;

/// A parsed canonical URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: &'static str,
    /// A DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    /// None: the scheme's default port.
    pub port: Option<u16>,
    /// `""` or `/...`.
    pub path: String,
}

impl Endpoint {
    /// The host as a URL writes it: an IPv6 address in brackets.
    pub fn written_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// `host[:port]` as the URL (and a Host header) carries it.
    pub fn netloc(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.written_host()),
            None => self.written_host(),
        }
    }

    /// The port to connect to: the URL's, or its scheme's default.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| default_port(self.scheme))
    }

    /// The URL in canonical form.
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.netloc(), self.path)
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The canonical endpoint of an absolute http(s) URL, or what is wrong with it (phrased
/// to follow the field's name: "url: ...").
pub fn parse_url(text: &str) -> Result<Endpoint, String> {
    if text.chars().count() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    if text
        .chars()
        .any(|c| c.is_whitespace() || (c as u32) < 0x20 || c as u32 == 0x7f)
    {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    let (scheme, rest) =
        split_scheme(text).ok_or_else(|| format!("must be an absolute http:// or https:// URL, got '{text}'"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => "http",
        "https" => "https",
        _ => return Err(format!("must be an http:// or https:// URL, got '{text}'")),
    };
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    if authority.contains(['?', '#']) || path.contains(['?', '#']) {
        return Err("must not have a query string or fragment".to_owned());
    }
    if authority.contains('@') {
        return Err("must not contain credentials (user:password@)".to_owned());
    }
    let (raw_host, bracketed, port) =
        split_authority(authority).ok_or_else(|| format!("has an invalid host or port: '{authority}'"))?;
    if bracketed && !raw_host.contains(':') {
        return Err(format!("'[{raw_host}]' is not a bracketed IPv6 address"));
    }
    let host = canonical_host(raw_host)?;
    let port = match port {
        None => None,
        Some(digits) => {
            let number = digits.parse::<u32>().ok().filter(|p| (1..=65535).contains(p));
            let port = number.ok_or_else(|| "has an invalid port (must be 1-65535)".to_owned())? as u16;
            (port != default_port(scheme)).then_some(port)
        }
    };
    Ok(Endpoint {
        scheme,
        host,
        port,
        path: canonical_path(path)?,
    })
}

/// `scheme` and what follows `://`, the scheme being a letter, then letters, digits, `+`,
/// `.` or `-`.
fn split_scheme(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = text.split_once("://")?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

/// (host, whether it was bracketed, the port's digits) of `host[:port]` or `[v6][:port]`.
fn split_authority(authority: &str) -> Option<(&str, bool, Option<&str>)> {
    let (host, bracketed, after) = if let Some(inner) = authority.strip_prefix('[') {
        let close = inner.find(']')?;
        (&inner[..close], true, &inner[close + 1..])
    } else {
        let end = authority.find([':', '[', ']']).unwrap_or(authority.len());
        (&authority[..end], false, &authority[end..])
    };
    let port = match after {
        "" => None,
        _ => {
            let digits = after.strip_prefix(':')?;
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(digits)
        }
    };
    Some((host, bracketed, port))
}

/// A host name or IP address in canonical form (IPv6 without brackets), or what is wrong.
pub fn canonical_host(text: &str) -> Result<String, String> {
    if text.contains(':') {
        let (address, zone) = text.split_once('%').map_or((text, None), |(a, z)| (a, Some(z)));
        let parsed = address
            .parse::<Ipv6Addr>()
            .ok()
            .filter(|_| zone.is_none_or(|z| !z.is_empty() && !z.contains('%')));
        return match (parsed, zone) {
            (Some(_), Some(_)) => Err("an IPv6 zone (%...) is not allowed".to_owned()),
            (Some(ip), None) => Ok(python_ipv6(ip)),
            (None, _) => Err(format!("'{text}' is not a valid IPv6 address")),
        };
    }
    let lowered = text.to_lowercase();
    if let Some(v4) = strict_ipv4(&lowered) {
        return Ok(v4);
    }
    if lowered.is_empty() {
        return Err("must include a host".to_owned());
    }
    if lowered.chars().count() > 253 {
        return Err("host name is longer than 253 characters".to_owned());
    }
    let labels: Vec<&str> = lowered.split('.').collect();
    if !labels.iter().all(|l| is_label(l)) {
        return Err(format!(
            "'{text}' is not a valid host name (dot-separated labels of letters, digits and '-', \
             1-63 characters each, not starting or ending with '-')"
        ));
    }
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        // `1.2.3` or `2130706433` would be read as IPv4 by resolvers: refuse the ambiguity.
        return Err(format!("'{text}' is neither an IPv4 address nor a host name"));
    }
    Ok(lowered)
}

/// An IP address in the form Python's `str(ip_address(text))` writes (dotted quads, IPv6 as
/// `python_ipv6`), or what is wrong: the one rule for `ip` fields and filters, the API's
/// (`models.IpAddress`, through `_core.canonical_ip`) and the gates' (`reads.rs`).
pub fn canonical_ip(text: &str) -> Result<String, String> {
    let not_ip = || format!("'{text}' is not an IPv4 or IPv6 address");
    if !text.contains(':') {
        return strict_ipv4(text).ok_or_else(not_ip);
    }
    match canonical_host(text) {
        Ok(v6) => Ok(v6),
        Err(zone) if zone.starts_with("an IPv6 zone") => Err(zone),
        Err(_) => Err(not_ip()),
    }
}

/// A DNS label: 1-63 lowercase letters, digits and `-`, not starting or ending with `-`.
fn is_label(label: &str) -> bool {
    let b = label.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
        && b.iter().all(|c| edge(c) || *c == b'-')
}

/// Four decimal octets of 0-255 without leading zeros, as Python's `IPv4Address` takes
/// them (and writes them back).
fn strict_ipv4(text: &str) -> Option<String> {
    let octets: Vec<&str> = text.split('.').collect();
    let valid = octets.len() == 4
        && octets.iter().all(|o| {
            (1..=3).contains(&o.len())
                && o.bytes().all(|b| b.is_ascii_digit())
                && (o.len() == 1 || !o.starts_with('0'))
                && o.parse::<u16>().is_ok_and(|n| n <= 255)
        });
    valid.then(|| text.to_owned())
}

/// An IPv6 address as Python's `str(IPv6Address)` writes it: lowercase hextets without
/// leading zeros, the longest run of two or more zero hextets (the first, on a tie) as `::`.
fn python_ipv6(ip: Ipv6Addr) -> String {
    let hextets = ip.segments();
    let (mut best, mut best_len) = (usize::MAX, 0);
    let mut i = 0;
    while i < 8 {
        if hextets[i] == 0 {
            let start = i;
            while i < 8 && hextets[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                (best, best_len) = (start, i - start);
            }
        } else {
            i += 1;
        }
    }
    let hex = |range: &[u16]| range.iter().map(|h| format!("{h:x}")).collect::<Vec<_>>().join(":");
    if best_len < 2 {
        return hex(&hextets);
    }
    format!("{}::{}", hex(&hextets[..best]), hex(&hextets[best + best_len..]))
}

/// A URL path of RFC 3986 characters (`""` for none or `/`), or what is wrong with it.
pub fn canonical_path(path: &str) -> Result<String, String> {
    if path.is_empty() || path == "/" {
        return Ok(String::new());
    }
    if !path.starts_with('/') {
        return Err("path must start with '/'".to_owned());
    }
    if path.contains(['?', '#']) {
        return Err("must not have a query string or fragment".to_owned());
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let escape = bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
            if !escape {
                return Err(PATH_PROBLEM.to_owned());
            }
            i += 3;
            continue;
        }
        if !(c.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&c)) {
            return Err(PATH_PROBLEM.to_owned());
        }
        i += 1;
    }
    Ok(path.to_owned())
}

const PATH_PROBLEM: &str = "path may contain only letters, digits, '/', percent-escapes (%XX) and -._~!$&'()*+,;=:@";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_canonical_form() {
        let url = |t: &str| parse_url(t).map(|e| e.url());
        assert_eq!(url("HTTP://Api.Example:80/").unwrap(), "http://api.example");
        assert_eq!(url("http://[0:0::1]:8080/a/b").unwrap(), "http://[::1]:8080/a/b");
        assert_eq!(url("https://[::FFFF:1.2.3.4]:443").unwrap(), "https://[::ffff:102:304]");
        assert_eq!(url("http://10.0.0.1:080").unwrap(), "http://10.0.0.1");
        assert_eq!(url("http://h:0").unwrap_err(), "has an invalid port (must be 1-65535)");
        assert_eq!(
            url("http://u@h").unwrap_err(),
            "must not contain credentials (user:password@)"
        );
        assert_eq!(
            url("http://h/?").unwrap_err(),
            "must not have a query string or fragment"
        );
        assert_eq!(
            url("http://1.2.3").unwrap_err(),
            "'1.2.3' is neither an IPv4 address nor a host name"
        );
        assert_eq!(
            url("http://[fe80::1%eth0]").unwrap_err(),
            "an IPv6 zone (%...) is not allowed"
        );
        assert_eq!(
            url("http://[1.2.3.4]").unwrap_err(),
            "'[1.2.3.4]' is not a bracketed IPv6 address"
        );
        assert_eq!(
            url("http://01.2.3.4").unwrap_err(),
            "'01.2.3.4' is neither an IPv4 address nor a host name"
        );
    }

    #[test]
    fn ipv6_is_written_as_python_writes_it() {
        for (given, want) in [
            ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("::", "::"),
            ("1::", "1::"),
            ("0:0:0:0:0:0:0:1", "::1"),
            ("1:2:3:4:5:6:7:0", "1:2:3:4:5:6:7:0"),
            ("::1.2.3.4", "::102:304"),
        ] {
            assert_eq!(python_ipv6(given.parse().unwrap()), want, "{given}");
        }
    }
}
