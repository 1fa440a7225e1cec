//! One instance as selection sees it: read once from its stored JSON (health, weight,
//! zone, tags, address) with its ready-made `{"instance": ...}` body, so that a pick parses
//! nothing.

use std::sync::Arc;

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unknown,
    /// Unhealthy, Starting or Stopping: never routed to.
    Excluded,
}

/// Where an instance is, from its URL: an address (IPv4-mapped ones unmapped), or the
/// host name it was registered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(std::net::IpAddr),
    Name(String),
}

/// Where the proxy sends an instance's requests: its URL in parts (`url.rs`), parsed
/// once when the slug's candidates are read, never per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: &'static str,
    /// `host[:port]`, as the request's URI and Host header carry it.
    pub netloc: String,
    /// The host as the URL writes it: an IPv6 address keeps its brackets.
    pub host: String,
    /// The URL's path without a trailing '/' (`""` for none).
    pub path: String,
}

/// The host and port of an instance's (or a node's) URL (the scheme's default port when
/// it names none).
pub fn host_and_port(url: &str) -> Option<(Host, u16)> {
    parts(url).map(|(host, port, _)| (host, port))
}

/// The host, port and proxy target of a URL in canonical form.
pub fn parts(url: &str) -> Option<(Host, u16, Target)> {
    let e = crate::url::parse_url(url).ok()?;
    let host = match e.host.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(crate::netguard::unmapped(ip)),
        Err(_) => Host::Name(e.host.clone()),
    };
    let target = Target {
        scheme: e.scheme,
        netloc: e.netloc(),
        host: e.written_host(),
        path: e.path.trim_end_matches('/').to_owned(),
    };
    Some((host, e.effective_port(), target))
}

/// One instance as selection sees it.
#[derive(Debug)]
pub struct Candidate {
    pub id: String,
    pub url: String,
    /// The URL's host and port (the scheme's default when it names none), parsed once
    /// when the slug's candidates are read (DNS answers with them).
    pub host: Option<Host>,
    pub port: u16,
    /// Where the proxy sends its requests (None: a stored URL not in canonical form).
    pub target: Option<Target>,
    pub health: Health,
    pub weight: u32,
    pub zone: Option<String>,
    pub tags: Vec<String>,
    /// The models (and adapters) it serves, as registered (`models`).
    pub models: Vec<String>,
    /// The pick response body: `{"instance": <stored JSON>}` (shared with the gates'
    /// answers, never copied per pick).
    pub body: Arc<Vec<u8>>,
}

impl Candidate {
    /// Whether it lists `model` among the models it serves.
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }

    /// Builds a candidate from an instance's stored JSON.
    pub fn from_json(json: &[u8]) -> Option<Candidate> {
        let value: Value = serde_json::from_slice(json).ok()?;
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        // In maintenance: never routed, whatever its checks say (they go on meanwhile).
        let in_maintenance = value.get("maintenance").is_some_and(|m| !m.is_null());
        let health = match value.get("status").and_then(Value::as_str) {
            _ if in_maintenance => Health::Excluded,
            Some("Healthy") => Health::Healthy,
            Some("Unknown") | None => Health::Unknown,
            Some(_) => Health::Excluded,
        };
        let strings = |key: &str| -> Vec<String> {
            value
                .get(key)
                .and_then(Value::as_array)
                .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let (tags, models) = (strings("tags"), strings("models"));
        let url = text("url")?;
        let (host, port, target) = match parts(&url) {
            Some((host, port, target)) => (Some(host), port, Some(target)),
            None => (None, 0, None),
        };
        let mut body = Vec::with_capacity(json.len() + 13);
        body.extend_from_slice(b"{\"instance\":");
        body.extend_from_slice(json);
        body.push(b'}');
        Some(Candidate {
            id: text("id")?,
            host,
            port,
            target,
            url,
            health,
            weight: value
                .get("weight")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 1000) as u32,
            zone: text("zone"),
            tags,
            models,
            body: Arc::new(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_the_parts_the_proxy_and_dns_need() {
        let (host, port, t) = parts("http://127.0.0.1:8080/base/").unwrap();
        assert_eq!((host, port), (Host::Ip("127.0.0.1".parse().unwrap()), 8080));
        assert_eq!(
            (t.host.as_str(), t.path.as_str(), t.netloc.as_str()),
            ("127.0.0.1", "/base", "127.0.0.1:8080")
        );
        let (_, port, t) = parts("http://[::1]:9/").unwrap();
        assert_eq!(
            (port, t.host.as_str(), t.path.as_str(), t.netloc.as_str()),
            (9, "[::1]", "", "[::1]:9")
        );
        let (host, port, t) = parts("https://svc.example").unwrap();
        assert_eq!(
            (host, port, t.scheme, t.netloc.as_str()),
            (Host::Name("svc.example".into()), 443, "https", "svc.example")
        );
        let (host, _, _) = parts("http://[::ffff:102:304]:80").unwrap();
        assert_eq!(host, Host::Ip("1.2.3.4".parse().unwrap()));
        assert!(parts("ftp://x").is_none());
        assert!(parts("http://x:http").is_none());
        assert!(parts("http://x:70000").is_none());
    }
}
