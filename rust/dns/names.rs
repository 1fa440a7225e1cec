//! Which registry record a DNS name asks about: Consul's name forms, under our domain.
//!
//! | name (below the domain)            | subject                                   |
//! |------------------------------------|-------------------------------------------|
//! | (the domain itself)                | the zone apex: SOA and NS                 |
//! | `<slug>.service`                   | the slug's routable instances             |
//! | `<tag>.<slug>.service`             | only those with the tag                   |
//! | `<slug>.service.<zone>`            | only those in the zone (either form above)|
//! | `_<slug>._tcp.service`             | SRV form (RFC 2782); `_<slug>._<tag>` too |
//! | `<instance-id>.instance`           | one instance's address                    |
//! | `<node-id>.node`                   | one node's address                        |
//! | `<hex address>.addr`               | an address itself (Consul's SRV targets)  |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::reads::is_slug;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Apex,
    Service {
        slug: String,
        tag: Option<String>,
        zone: Option<String>,
    },
    Instance(String),
    Node(String),
    Addr(IpAddr),
}

/// The subject of a name whose labels below the domain are `labels` (lowercase, leftmost
/// first), or None when no record of ours can have that name (NXDOMAIN).
pub fn subject(labels: &[&str]) -> Option<Subject> {
    match labels {
        [] => Some(Subject::Apex),
        [head @ .., "service"] => service(head, None),
        [head @ .., "service", zone] => service(head, Some(zone)),
        [id, "instance"] => Some(Subject::Instance((*id).to_owned())),
        [id, "node"] => Some(Subject::Node((*id).to_owned())),
        [hex, "addr"] => addr(hex).map(Subject::Addr),
        _ => None,
    }
}

fn service(head: &[&str], zone: Option<&str>) -> Option<Subject> {
    let (slug, tag) = match head {
        [slug] => (*slug, None),
        [service, protocol] if service.starts_with('_') && protocol.starts_with('_') => {
            let tag = &protocol[1..];
            (&service[1..], (tag != "tcp").then_some(tag))
        }
        [tag, slug] if !tag.starts_with('_') => (*slug, Some(*tag)),
        _ => return None,
    };
    if !is_slug(slug) || tag.is_some_and(str::is_empty) {
        return None;
    }
    Some(Subject::Service {
        slug: slug.to_owned(),
        tag: tag.map(str::to_owned),
        zone: zone.map(str::to_owned),
    })
}

/// Consul's address names: 8 hex digits for IPv4, 32 for IPv6.
fn addr(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        8 => u32::from_str_radix(hex, 16).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(hex, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

/// The `.addr` label of an address (the inverse of `addr`).
pub fn addr_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

/// Whether an instance id can be a DNS label as it is: a lowercase label (DNS names are
/// compared without case, so an id with capitals could not be found from its name).
pub fn is_label(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(slug: &str, tag: Option<&str>, zone: Option<&str>) -> Option<Subject> {
        Some(Subject::Service {
            slug: slug.into(),
            tag: tag.map(Into::into),
            zone: zone.map(Into::into),
        })
    }

    #[test]
    fn consul_name_forms_name_their_subjects() {
        assert_eq!(subject(&[]), Some(Subject::Apex));
        assert_eq!(subject(&["web", "service"]), service("web", None, None));
        assert_eq!(subject(&["v2", "web", "service"]), service("web", Some("v2"), None));
        assert_eq!(subject(&["web", "service", "eu-1"]), service("web", None, Some("eu-1")));
        assert_eq!(
            subject(&["v2", "web", "service", "eu-1"]),
            service("web", Some("v2"), Some("eu-1"))
        );
        assert_eq!(subject(&["_web", "_tcp", "service"]), service("web", None, None));
        assert_eq!(subject(&["_web", "_gpu", "service"]), service("web", Some("gpu"), None));
        assert_eq!(
            subject(&["inst_1", "instance"]),
            Some(Subject::Instance("inst_1".into()))
        );
        assert_eq!(subject(&["node_1", "node"]), Some(Subject::Node("node_1".into())));
        assert_eq!(
            subject(&["7f000001", "addr"]),
            Some(Subject::Addr(IpAddr::V4(Ipv4Addr::LOCALHOST)))
        );
    }

    #[test]
    fn names_no_record_can_have_are_none() {
        for labels in [
            &["service"][..],
            &["a", "b", "web", "service"],
            &["_web", "service"],
            &["web", "_tcp", "service"],
            &["-bad-", "service"],
            &["Web", "service"],
            &["__", "_", "service"],
            &["a", "b", "instance"],
            &["instance"],
            &["zz", "addr"],
            &["7f00000g", "addr"],
            &["web"],
            &["web", "services"],
        ] {
            assert_eq!(subject(labels), None, "{labels:?}");
        }
    }

    #[test]
    fn address_labels_round_trip() {
        for ip in ["127.0.0.1", "::1", "2001:db8::5", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(addr(&addr_label(ip)), Some(ip));
        }
    }

    #[test]
    fn only_lowercase_single_label_ids_name_an_instance() {
        assert!(is_label("inst_0a1b2c3d4e5f6a7b"));
        assert!(!is_label("Inst_1"));
        assert!(!is_label("a.b"));
        assert!(!is_label("a:b"));
        assert!(!is_label(&"a".repeat(64)));
    }
}
