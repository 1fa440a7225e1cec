//! The hot reads answered by the gates (the API port's and the data port's, `edge/`)
//! without entering Python: instance lookups (`GET /registry-svc/instances`), one instance
//! (`GET /registry-svc/instance/{id}`) and picks (`GET /registry-svc/instance/pick`).
//!
//! There is one implementation: each answer comes from the same `Registry` call the Python
//! handler makes (`ResponseCache::list_json`, `Store::get`, `Selector::pick`); the
//! selector's in-flight and ejection state is shared by the server's processes
//! (`shared.rs`), so a pick here skips an instance the proxy of any process ejected. The
//! gate answers only what it can answer exactly as the workers would: a valid token and a
//! well-formed query. A lookup's query is checked and put in its stored form by the rule
//! the workers ask too (`query.rs`: `ip=0:0::1` finds `::1`). Anything else (a missing or
//! unknown token, a query that rule refuses, a pick's value the gate does not take as it
//! is) is declined and goes to the workers, whose answer (often a 4xx naming the field) is
//! the one the client gets.

use std::sync::Arc;

use crate::core::model::INSTANCES;
use crate::core::select::{PickRequest, Picked};
use crate::registry::Registry;
use crate::tokens::Caller;

/// A 200 answer: the JSON body (shared with the response cache) and its registry index
/// (none for a pick, as from the workers).
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub body: Arc<Vec<u8>>,
    pub index: Option<u64>,
}

/// The reads answered here.
#[derive(Debug, PartialEq, Eq)]
pub enum Read<'a> {
    List,
    Pick,
    Instance(&'a str),
}

/// Which read `route` (a path without its query) is, if any.
pub fn read_of(route: &str) -> Option<Read<'_>> {
    // One trailing slash names the same route (the workers' router treats it so).
    let route = match route.strip_suffix('/') {
        Some(bare) if bare.len() > "/registry-svc".len() => bare,
        _ => route,
    };
    match route {
        "/registry-svc/instances" => Some(Read::List),
        "/registry-svc/instance/pick" => Some(Read::Pick),
        _ => {
            let id = route.strip_prefix("/registry-svc/instance/")?;
            (!id.is_empty() && !id.contains('/')).then_some(Read::Instance(id))
        }
    }
}

/// The answer to `GET path?query` with `authorization` (and a pick's prefix key, the
/// `X-Registry-Prefix-Key` header), or None to leave it to the workers.
pub fn answer(
    registry: &Registry,
    path: &str,
    authorization: Option<&str>,
    prefix_key: Option<&[u8]>,
) -> Option<Answer> {
    let (route, query) = path.split_once('?').unwrap_or((path, ""));
    let read = read_of(route)?;
    if replica_is_stale(registry) {
        return None;
    }
    let params = parse_query(query)?;
    let caller = registry.tokens.caller(registry, authorization?)?;
    // A role that may not view instances gets the workers' 403.
    if !caller.allows(crate::roles::INSTANCE_VIEW) {
        return None;
    }
    match read {
        Read::List => list(registry, &caller, &params),
        Read::Pick => pick(registry, &caller, &params, prefix_key),
        // `?index=`/`wait` block: the workers hold those.
        Read::Instance(id) if params.is_empty() => instance(registry, &caller, id),
        Read::Instance(_) => None,
    }
}

/// Whether this is a cluster replica that has not heard from etcd lately: its reads are
/// then left to the workers, which add the staleness header.
pub(crate) fn replica_is_stale(registry: &Registry) -> bool {
    if !registry.store.is_replica() {
        return false;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now > registry.store.fresh_until()
}

/// Percent-decoded query pairs (`+` is a space), or None for anything malformed.
pub fn parse_query(query: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((decode(name)?, decode(value)?));
    }
    Some(pairs)
}

/// One percent-encoded query name or value, decoded (`+` is a space), or None when it is
/// not percent-encoded UTF-8.
pub fn decode(text: &str) -> Option<String> {
    percent_decode(text, true)
}

/// One percent-encoded path segment, decoded (`+` is itself), or None when it is not
/// percent-encoded UTF-8.
pub fn decode_segment(text: &str) -> Option<String> {
    percent_decode(text, false)
}

fn percent_decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => {
                // Two hex digits, nothing else (`from_str_radix` alone would take "+1").
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Query pairs by name (the first appearance's order), sorted by name as the workers get
/// them.
pub fn by_name(params: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for (name, value) in params {
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, values)) => values.push(value.clone()),
            None => out.push((name.clone(), vec![value.clone()])),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn list(registry: &Registry, caller: &Caller, params: &[(String, String)]) -> Option<Answer> {
    // A query the rule refuses is the workers' to answer (their 400 carries the same words).
    let mut filters = crate::query::lookup_filters(&by_name(params)).ok()?;
    if !caller.sees_every_slug() {
        filters.push(("slug".to_owned(), caller.slug.clone().unwrap_or_default()));
    }
    let (index, body) = registry
        .responses
        .list_json(&registry.store, &INSTANCES, &filters, "instances")
        .ok()?;
    Some(Answer {
        body: with_load(registry, body),
        index: Some(index),
    })
}

/// `body` with the load readings of the instances it carries (`core/load_json.rs`).
pub fn with_load(registry: &Registry, body: Arc<Vec<u8>>) -> Arc<Vec<u8>> {
    match crate::core::load_json::with_load(registry.selector.load(), &body) {
        Some(annotated) => Arc::new(annotated),
        None => body,
    }
}

/// `GET /registry-svc/instance/{id}`: `{"instance": ...}` with the record's version as the
/// index; a record of a slug the caller may not see is the workers' 404.
fn instance(registry: &Registry, caller: &Caller, id: &str) -> Option<Answer> {
    // Anything else (percent-encoded ids included) is the workers' to answer.
    if !crate::rules::is_record_id(id) {
        return None;
    }
    let record = registry.store.get(&INSTANCES, id).ok()??;
    if !caller.sees_every_slug() {
        let value: serde_json::Value = serde_json::from_slice(&record.json).ok()?;
        if value.get("slug").and_then(serde_json::Value::as_str) != caller.slug.as_deref() {
            return None;
        }
    }
    let mut body = Vec::with_capacity(record.json.len() + 13);
    body.extend_from_slice(b"{\"instance\":");
    body.extend_from_slice(&record.json);
    body.push(b'}');
    Some(Answer {
        body: with_load(registry, Arc::new(body)),
        index: Some(record.version),
    })
}

pub use crate::rules::is_slug;

/// `GET /registry-svc/instance/pick`: the chosen instance's `{"instance": ...}` body. Only a
/// query the rule takes (`query.rs`) with a result is answered here; every refusal (a bad
/// parameter, a slug the caller may not see, an unknown slug, nothing routable) is the
/// workers'.
fn pick(registry: &Registry, caller: &Caller, params: &[(String, String)], prefix: Option<&[u8]>) -> Option<Answer> {
    let query = crate::query::pick_query(&by_name(params)).ok()?;
    if !caller.sees_every_slug() && caller.slug.as_ref() != Some(&query.slug) {
        return None;
    }
    let request = PickRequest {
        slug: &query.slug,
        policy: query.policy,
        zone: query.zone.as_deref(),
        key: query.key.as_deref(),
        tags: &query.tags,
        model: query.model.as_deref(),
        prefix,
        ..PickRequest::default()
    };
    match registry.pick(&request).ok()? {
        Picked::Instance(chosen) => Some(Answer {
            body: with_load(registry, Arc::clone(&chosen.body)),
            index: None,
        }),
        Picked::UnknownSlug | Picked::NoneRoutable | Picked::NoModel | Picked::Saturated => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_like_the_workers() {
        let pairs = parse_query("slug=a&tag=x+y&tag=%C3%A9&flag&=v&empty=").unwrap();
        let want = [
            ("slug", "a"),
            ("tag", "x y"),
            ("tag", "é"),
            ("flag", ""),
            ("", "v"),
            ("empty", ""),
        ];
        assert_eq!(pairs, want.map(|(k, v)| (k.to_owned(), v.to_owned())));
        assert_eq!(parse_query("a=%zz"), None);
        assert_eq!(parse_query("a=%4"), None);
        assert_eq!(parse_query("a=%ff"), None); // not UTF-8: the workers refuse it too
                                                // Two hex digits and nothing else: `from_str_radix` alone takes a sign.
        assert_eq!(parse_query("a=%+1"), None);
        assert_eq!(parse_query("a=%-1"), None);
        assert_eq!(decode("%2B%2b"), Some("++".to_owned()));
        assert_eq!(decode_segment("a+b%20c"), Some("a+b c".to_owned()));
        assert_eq!(decode_segment("inst%zz"), None);
    }

    #[test]
    fn a_replica_is_stale_once_its_freshness_passes() {
        use crate::core::cache::ResponseCache;
        use crate::core::select::{EjectionConfig, Policy, Selector};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let ejection = EjectionConfig {
            consecutive_failures: 5,
            base: Duration::from_secs(1),
            max: Duration::from_secs(2),
        };
        let registry = Registry {
            store: std::sync::Arc::new(crate::core::store::Store::open(dir.path(), 1 << 24).unwrap()),
            writes: std::sync::Arc::new(crate::writes::Local),
            selector: Selector::new(Policy::RoundRobin, std::collections::HashMap::new(), ejection),
            responses: ResponseCache::default(),
            tokens: Default::default(),
            routes: Default::default(),
        };
        assert!(!replica_is_stale(&registry)); // a single-machine store never is
        registry.store.set_fresh_until(0);
        assert!(replica_is_stale(&registry));
        registry.store.set_fresh_until(u64::MAX);
        assert!(!replica_is_stale(&registry));
    }
}
