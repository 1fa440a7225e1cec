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

/// The host and port of an instance's (or a node's) URL.
pub fn host_and_port(url: &str) -> Option<(Host, u16)> {
    let parts = crate::forward::split_url(url)?;
    let bare = parts.host.trim_start_matches('[').trim_end_matches(']');
    let host = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => Host::Ip(crate::netguard::unmapped(ip)),
        Err(_) => Host::Name(bare.to_owned()),
    };
    Some((host, parts.port()))
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
    pub health: Health,
    pub weight: u32,
    pub zone: Option<String>,
    pub tags: Vec<String>,
    /// The pick response body: `{"instance": <stored JSON>}` (shared with the gates'
    /// answers, never copied per pick).
    pub body: Arc<Vec<u8>>,
}

impl Candidate {
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
        let tags = value
            .get("tags")
            .and_then(Value::as_array)
            .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        let url = text("url")?;
        let (host, port) = host_and_port(&url).map_or((None, 0), |(h, p)| (Some(h), p));
        let mut body = Vec::with_capacity(json.len() + 13);
        body.extend_from_slice(b"{\"instance\":");
        body.extend_from_slice(json);
        body.push(b'}');
        Some(Candidate {
            id: text("id")?,
            host,
            port,
            url,
            health,
            weight: value
                .get("weight")
                .and_then(Value::as_u64)
                .unwrap_or(100)
                .clamp(1, 1000) as u32,
            zone: text("zone"),
            tags,
            body: Arc::new(body),
        })
    }
}
