//! The records a DNS question gets, read from the store with the selector's own rules: a
//! service name lists what `pick` could choose (`Selector::usable`), in an order drawn by
//! weight, so an instance of weight 300 comes first three times as often as one of 100.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

use super::names::{self, Subject};
use crate::core::model::{INSTANCES, NODES};
use crate::core::select::{self, Candidate};
use crate::core::store::Result;
use crate::registry::Registry;

/// The zone we are authoritative for.
pub struct Zone {
    /// Lowercase and fully qualified (`registry.`).
    pub domain: Name,
    mname: Name,
    rname: Name,
}

impl Zone {
    pub fn new(domain: &str) -> std::result::Result<Zone, String> {
        let text = if domain.ends_with('.') {
            domain.to_owned()
        } else {
            format!("{domain}.")
        };
        let bad = |e: &dyn std::fmt::Display| format!("--dns-domain '{domain}' is not a domain name: {e}");
        let domain = Name::from_ascii(&text).map_err(|e| bad(&e))?.to_lowercase();
        if domain.is_root() {
            return Err(bad(&"the root zone is not ours to answer"));
        }
        let under = |label: &str| Name::from_ascii(label).and_then(|l| l.append_domain(&domain));
        Ok(Zone {
            mname: under("ns").map_err(|e| bad(&e))?,
            rname: under("hostmaster").map_err(|e| bad(&e))?,
            domain,
        })
    }

    /// The zone's SOA: its serial is the store's index, its negative-caching time `ttl`.
    pub fn soa(&self, serial: u64, ttl: u32) -> Record {
        let soa = SOA::new(
            self.mname.clone(),
            self.rname.clone(),
            serial as u32,
            3600,
            600,
            86400,
            ttl,
        );
        Record::from_rdata(self.domain.clone(), ttl, RData::SOA(soa))
    }

    /// `label.<domain>`.
    fn name(&self, label: &str, kind: &str) -> Option<Name> {
        Name::from_ascii(format!("{label}.{kind}"))
            .ok()?
            .append_domain(&self.domain)
            .ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Records,
    /// The name exists but has no record of the asked type.
    NoData,
    NxDomain,
}

pub struct Reply {
    pub found: Found,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Reply {
    pub fn nothing(found: Found) -> Reply {
        Reply {
            found,
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }

    fn records(answers: Vec<Record>, additionals: Vec<Record>) -> Reply {
        let found = if answers.is_empty() {
            Found::NoData
        } else {
            Found::Records
        };
        Reply {
            found,
            answers,
            additionals,
        }
    }
}

/// Where an instance or node is: an address, or a host name (answered as a CNAME, never
/// resolved by us).
enum Host {
    Ip(IpAddr),
    Name(Name),
}

struct Endpoint {
    host: Host,
    port: u16,
}

impl Endpoint {
    /// None for a host that is no DNS name.
    fn new(host: &select::Host, port: u16) -> Option<Endpoint> {
        let host = match host {
            select::Host::Ip(ip) => Host::Ip(*ip),
            select::Host::Name(name) => Host::Name(Name::from_ascii(format!("{name}.")).ok()?),
        };
        Some(Endpoint { host, port })
    }
}

/// A candidate's endpoint, from the parts selection parsed once.
fn endpoint_of(candidate: &Candidate) -> Option<Endpoint> {
    Endpoint::new(candidate.host.as_ref()?, candidate.port)
}

/// The endpoint of a stored record's URL (a node's, or one instance's).
fn endpoint(json: &[u8]) -> Option<Endpoint> {
    let value: Value = serde_json::from_slice(json).ok()?;
    let (host, port) = select::host_and_port(value.get("url").and_then(Value::as_str)?)?;
    Endpoint::new(&host, port)
}

/// The answer to `qtype` for the name `labels` (below the domain, lowercase) at `qname`.
pub fn reply(
    registry: &Registry,
    zone: &Zone,
    labels: &[&str],
    qname: &Name,
    qtype: RecordType,
    ttl: u32,
) -> Result<Reply> {
    let Some(subject) = names::subject(labels) else {
        return Ok(Reply::nothing(Found::NxDomain));
    };
    Ok(match subject {
        Subject::Apex => {
            let answers = match qtype {
                RecordType::SOA | RecordType::ANY => vec![zone.soa(registry.store.index()?, ttl)],
                RecordType::NS => vec![Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::NS(NS(zone.mname.clone())),
                )],
                _ => Vec::new(),
            };
            Reply::records(answers, Vec::new())
        }
        Subject::Service { slug, tag, zone: area } => service(
            registry,
            zone,
            &slug,
            tag.as_deref(),
            area.as_deref(),
            qname,
            qtype,
            ttl,
        )?,
        Subject::Instance(id) => match registry.store.get(&INSTANCES, &id)? {
            Some(record) => one_host(endpoint(&record.json), qname, qtype, ttl),
            None => Reply::nothing(Found::NxDomain),
        },
        Subject::Node(id) => match registry.store.get(&NODES, &id)? {
            Some(record) => one_host(endpoint(&record.json), qname, qtype, ttl),
            None => Reply::nothing(Found::NxDomain),
        },
        Subject::Addr(ip) => one_host(
            Some(Endpoint {
                host: Host::Ip(ip),
                port: 0,
            }),
            qname,
            qtype,
            ttl,
        ),
    })
}

/// An address record for `ip` at `owner` when `qtype` asks for its family.
fn address(owner: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let data = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(owner.clone(), ttl, data))
}

fn one_host(found: Option<Endpoint>, qname: &Name, qtype: RecordType, ttl: u32) -> Reply {
    let answers = match found.map(|e| e.host) {
        Some(Host::Ip(ip)) => address(qname, ip, qtype, ttl).into_iter().collect(),
        Some(Host::Name(host)) => vec![Record::from_rdata(qname.clone(), ttl, RData::CNAME(CNAME(host)))],
        None => Vec::new(),
    };
    Reply::records(answers, Vec::new())
}

#[allow(clippy::too_many_arguments)]
fn service(
    registry: &Registry,
    zone: &Zone,
    slug: &str,
    tag: Option<&str>,
    area: Option<&str>,
    qname: &Name,
    qtype: RecordType,
    ttl: u32,
) -> Result<Reply> {
    let candidates = registry.selector.candidates(&registry.store, slug)?;
    if candidates.all.is_empty() {
        return Ok(Reply::nothing(Found::NxDomain));
    }
    // DNS compares names without case: so do the tag and zone labels.
    let same = |label: &str, value: &str| label.eq_ignore_ascii_case(value);
    let chosen: Vec<Arc<Candidate>> = candidates
        .all
        .iter()
        .filter(|c| area.is_none_or(|a| c.zone.as_deref().is_some_and(|z| same(a, z))))
        .filter(|c| tag.is_none_or(|t| c.tags.iter().any(|have| same(t, have))))
        .cloned()
        .collect();
    let usable = registry.selector.usable(&chosen, Instant::now());
    let ordered = by_weight(usable, || registry.selector.random());
    let endpoints: Vec<(&Candidate, Endpoint)> = ordered
        .iter()
        .filter_map(|c| endpoint_of(c).map(|e| (c.as_ref(), e)))
        .collect();
    if qtype == RecordType::SRV {
        return Ok(srv(zone, &endpoints, qname, ttl));
    }
    if !matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
        return Ok(Reply::nothing(Found::NoData));
    }
    let any_address = endpoints.iter().any(|(_, e)| matches!(e.host, Host::Ip(_)));
    let answers: Vec<Record> = if any_address {
        endpoints
            .iter()
            .filter_map(|(_, e)| match e.host {
                Host::Ip(ip) => address(qname, ip, qtype, ttl),
                Host::Name(_) => None,
            })
            .collect()
    } else {
        // Only instances registered by host name: a name has at most one CNAME, so the
        // first by weight.
        endpoints
            .iter()
            .find_map(|(_, e)| match &e.host {
                Host::Name(host) => Some(Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::CNAME(CNAME(host.clone())),
                )),
                Host::Ip(_) => None,
            })
            .into_iter()
            .collect()
    };
    Ok(Reply::records(answers, Vec::new()))
}

/// SRV records (port and target) with the targets' addresses as additional records. A
/// target is `<id>.instance.<domain>`, or `<hex>.addr.<domain>` for an id that is no DNS
/// label, or the host name an instance was registered with.
fn srv(zone: &Zone, endpoints: &[(&Candidate, Endpoint)], qname: &Name, ttl: u32) -> Reply {
    let mut answers = Vec::with_capacity(endpoints.len());
    let mut additionals = Vec::new();
    for (candidate, endpoint) in endpoints {
        let target = match &endpoint.host {
            Host::Ip(ip) => {
                let named = names::is_label(&candidate.id)
                    .then(|| zone.name(&candidate.id, "instance"))
                    .flatten();
                let Some(target) = named.or_else(|| zone.name(&names::addr_label(*ip), "addr")) else {
                    continue;
                };
                additionals.extend(address(&target, *ip, RecordType::ANY, ttl));
                target
            }
            Host::Name(host) => host.clone(),
        };
        let weight = u16::try_from(candidate.weight).unwrap_or(u16::MAX);
        let data = RData::SRV(SRV::new(1, weight, endpoint.port, target));
        answers.push(Record::from_rdata(qname.clone(), ttl, data));
    }
    Reply::records(answers, additionals)
}

/// A random order in which each instance comes first in proportion to its weight, and so
/// on down the list (Efraimidis and Spirakis: sort by u^(1/weight), u uniform in (0, 1]).
fn by_weight(usable: Vec<Arc<Candidate>>, mut random: impl FnMut() -> u64) -> Vec<Arc<Candidate>> {
    let mut keyed: Vec<(f64, Arc<Candidate>)> = usable
        .into_iter()
        .map(|c| {
            let u = ((random() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            (u.powf(1.0 / f64::from(c.weight.max(1))), c)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0));
    keyed.into_iter().map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, weight: u32) -> Arc<Candidate> {
        let json = format!(r#"{{"id":"{id}","url":"http://127.0.0.1:1","status":"Healthy","weight":{weight}}}"#);
        Arc::new(Candidate::from_json(json.as_bytes()).unwrap())
    }

    #[test]
    fn the_first_place_goes_by_weight() {
        let usable = vec![candidate("heavy", 300), candidate("light", 100)];
        let mut state = 7u64;
        let mut random = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = state;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        let heavy_first = (0..4000)
            .filter(|_| by_weight(usable.clone(), &mut random)[0].id == "heavy")
            .count();
        // Expected 3,000 of 4,000; a bound four standard deviations (about 27) wide.
        assert!((2890..=3110).contains(&heavy_first), "{heavy_first}");
    }

    #[test]
    fn endpoints_keep_addresses_and_host_names_apart() {
        let e = endpoint(br#"{"url":"http://[::ffff:127.0.0.1]:81/x"}"#).unwrap();
        assert!(matches!(e.host, Host::Ip(ip) if ip == IpAddr::from([127, 0, 0, 1])));
        assert_eq!(e.port, 81);
        let json = br#"{"id":"a","url":"https://user-service","status":"Healthy"}"#;
        let e = endpoint_of(&Candidate::from_json(json).unwrap()).unwrap();
        assert!(matches!(e.host, Host::Name(ref n) if n.to_ascii() == "user-service."));
        assert_eq!(e.port, 443);
    }

    #[test]
    fn a_zone_needs_a_domain_below_the_root() {
        assert_eq!(Zone::new("Registry").unwrap().domain.to_ascii(), "registry.");
        assert!(Zone::new(".").is_err());
        assert!(Zone::new("a..b").is_err());
    }
}
