//! A slug's proxy settings, set with `PUT /registry-svc/routing/{slug}`: whether the slug
//! is cut from the forwarded path (`stripPrefix`), on how many other instances a request
//! is tried again after one could not be reached (`retries`), how long an upstream may
//! take to answer (`timeoutSeconds`, else `--proxy-timeout-seconds`), and the weights of
//! `least_load`'s score (`loadWeights`: queued, running, KV cache; 2:2:1 by default).
//!
//! One record per slug in the `routes` collection, keyed by the slug (replicated like any
//! record in cluster mode). The rules live here only: the API checks a body with `parse`
//! (through the binding) and stores `record`'s JSON; the gates read it per forwarded
//! request from the process's `RouteCache`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::core::cache::Stamp;
use crate::core::least_load::Weights;
use crate::core::model::ROUTES;
use crate::core::store::Store;

/// The most slugs a `RouteCache` holds before it starts again.
const MAX_CACHED_ROUTES: usize = 4096;

/// Retries after the first try; each goes to an instance not tried yet.
pub const DEFAULT_RETRIES: u32 = 1;
pub const MAX_RETRIES: u32 = 5;
/// The longest `timeoutSeconds` a slug may ask for (an hour).
pub const MAX_TIMEOUT_SECONDS: f64 = 3600.0;

/// What the proxy does for one slug.
#[derive(Debug, Clone, PartialEq)]
pub struct SlugRoute {
    pub strip_prefix: bool,
    pub retries: u32,
    /// None: the server's `--proxy-timeout-seconds`.
    pub timeout: Option<Duration>,
    /// The weights of `least_load`'s score (and of `prefix`'s, past its bound).
    pub load_weights: Weights,
}

/// The largest weight a term of `least_load`'s score may have.
pub const MAX_LOAD_WEIGHT: f64 = 100.0;

impl Default for SlugRoute {
    fn default() -> Self {
        SlugRoute {
            strip_prefix: false,
            retries: DEFAULT_RETRIES,
            timeout: None,
            load_weights: Weights::default(),
        }
    }
}

/// The slugs' settings as last read, dropped whenever the routes collection moves: a
/// forwarded request reads no LMDB for them while nothing was written (`Stamp`).
#[derive(Default)]
pub struct RouteCache {
    cached: RwLock<(Option<Stamp>, HashMap<String, SlugRoute>)>,
}

impl RouteCache {
    /// The settings of `slug` (see `SlugRoute::read`).
    pub fn get(&self, store: &Store, slug: &str) -> SlugRoute {
        let current = |stamp: &Option<Stamp>| {
            stamp
                .as_ref()
                .is_some_and(|s| s.is_current(store, &ROUTES, None).unwrap_or(false))
        };
        if let Ok(cached) = self.cached.read() {
            if let Some(route) = cached.1.get(slug) {
                if current(&cached.0) {
                    return route.clone();
                }
            }
        }
        // The stamp is read before the route it guards.
        let stamp = Stamp::read(store, &ROUTES, None).ok();
        let route = SlugRoute::read(store, slug);
        if let (Ok(mut cached), Some(stamp)) = (self.cached.write(), stamp) {
            if !current(&cached.0) || cached.1.len() >= MAX_CACHED_ROUTES {
                *cached = (Some(stamp), HashMap::new());
            }
            cached.1.insert(slug.to_owned(), route.clone());
        }
        route
    }
}

/// A bad field of a routing body: its name and what is wrong.
#[derive(Debug, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn problem(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

impl SlugRoute {
    /// The settings of `slug`: its stored record, or the defaults when it has none (or
    /// when the record cannot be read: a route never stops the proxy).
    pub fn read(store: &Store, slug: &str) -> SlugRoute {
        match store.get(&ROUTES, slug) {
            Ok(Some(record)) => parse(&record.json).unwrap_or_default(),
            _ => SlugRoute::default(),
        }
    }

    /// The stored record for `slug`:
    /// `{"id", "stripPrefix", "retries", "timeoutSeconds"?, "loadWeights"}`.
    pub fn record(&self, slug: &str) -> String {
        let mut out = Map::new();
        out.insert("id".into(), Value::from(slug));
        out.insert("stripPrefix".into(), Value::from(self.strip_prefix));
        out.insert("retries".into(), Value::from(self.retries));
        if let Some(timeout) = self.timeout {
            out.insert("timeoutSeconds".into(), Value::from(timeout.as_secs_f64()));
        }
        let w = self.load_weights;
        let weights = serde_json::json!({"queued": w.queued, "running": w.running, "kvCache": w.kv_cache});
        out.insert("loadWeights".into(), weights);
        Value::Object(out).to_string()
    }

    /// The path and query the upstream gets for the client's `target` (`/<slug>/rest?q`):
    /// as sent, or without its first segment when `stripPrefix` is set (`/rest?q`; the
    /// slug alone becomes `/`).
    pub fn upstream_target<'t>(&self, target: &'t str) -> Cow<'t, str> {
        if !self.strip_prefix {
            return Cow::Borrowed(target);
        }
        let rest = &target[1..];
        let cut = rest.find(['/', '?']).map_or("", |at| &rest[at..]);
        if cut.starts_with('/') {
            Cow::Borrowed(cut)
        } else {
            Cow::Owned(format!("/{cut}"))
        }
    }
}

/// A routing body (`{"stripPrefix": true, "retries": 2, "timeoutSeconds": 5}`; an absent
/// field takes its default, `null` too). Every field is checked; the first bad one is
/// named. `id` is allowed (a stored record has it) and ignored.
pub fn parse(json: &[u8]) -> Result<SlugRoute, FieldError> {
    let value: Value = serde_json::from_slice(json).map_err(|e| problem("body", format!("not valid JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(problem("body", "must be a JSON object"));
    };
    let mut route = SlugRoute::default();
    for (name, value) in &fields {
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "id" => {}
            "stripPrefix" => {
                route.strip_prefix = value.as_bool().ok_or_else(|| problem(name, "must be true or false"))?;
            }
            "retries" => {
                route.retries = value
                    .as_u64()
                    .filter(|n| *n <= u64::from(MAX_RETRIES))
                    .ok_or_else(|| problem(name, format!("must be a whole number from 0 to {MAX_RETRIES}")))?
                    as u32;
            }
            "timeoutSeconds" => {
                let seconds = value
                    .as_f64()
                    .filter(|s| *s > 0.0 && *s <= MAX_TIMEOUT_SECONDS)
                    .ok_or_else(|| {
                        problem(
                            name,
                            format!("must be a number of seconds over 0, at most {MAX_TIMEOUT_SECONDS}"),
                        )
                    })?;
                route.timeout = Some(Duration::from_secs_f64(seconds));
            }
            "loadWeights" => route.load_weights = load_weights(value)?,
            other => {
                return Err(problem(
                    other,
                    "unknown field (known: stripPrefix, retries, timeoutSeconds, loadWeights)",
                ))
            }
        }
    }
    Ok(route)
}

/// `{"queued": 2, "running": 2, "kvCache": 1}`: each term from 0 to `MAX_LOAD_WEIGHT`
/// (an absent one keeps its default), not all 0.
fn load_weights(value: &Value) -> Result<Weights, FieldError> {
    let Value::Object(fields) = value else {
        return Err(problem(
            "loadWeights",
            "must be an object of queued, running and kvCache",
        ));
    };
    let mut weights = Weights::default();
    for (name, term) in fields {
        let slot = match name.as_str() {
            "queued" => &mut weights.queued,
            "running" => &mut weights.running,
            "kvCache" => &mut weights.kv_cache,
            _ => {
                return Err(problem(
                    &format!("loadWeights.{name}"),
                    "unknown term (known: queued, running, kvCache)",
                ))
            }
        };
        *slot = term
            .as_f64()
            .filter(|w| (0.0..=MAX_LOAD_WEIGHT).contains(w))
            .ok_or_else(|| {
                problem(
                    &format!("loadWeights.{name}"),
                    format!("must be a number from 0 to {MAX_LOAD_WEIGHT}"),
                )
            })?;
    }
    if weights.queued + weights.running + weights.kv_cache <= 0.0 {
        return Err(problem("loadWeights", "at least one weight must be over 0"));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip() -> SlugRoute {
        SlugRoute {
            strip_prefix: true,
            ..SlugRoute::default()
        }
    }

    #[test]
    fn the_cache_follows_every_write_of_a_route() {
        use crate::core::store::Expect;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 24).unwrap();
        let routes = RouteCache::default();
        assert_eq!(routes.get(&store, "web"), SlugRoute::default());
        let put = |route: &SlugRoute| {
            store
                .put(&ROUTES, "web", route.record("web").into_bytes(), Expect::Any)
                .unwrap()
        };
        put(&strip());
        assert_eq!(routes.get(&store, "web"), strip());
        assert_eq!(routes.get(&store, "other"), SlugRoute::default());
        let timed = SlugRoute {
            timeout: Some(Duration::from_secs(3)),
            ..strip()
        };
        put(&timed);
        assert_eq!(routes.get(&store, "web"), timed);
        store.delete(&ROUTES, "web", Expect::Any).unwrap();
        assert_eq!(routes.get(&store, "web"), SlugRoute::default());
    }

    #[test]
    fn the_slug_is_cut_only_when_asked() {
        assert_eq!(SlugRoute::default().upstream_target("/web/a?b=1"), "/web/a?b=1");
        assert_eq!(strip().upstream_target("/web/a/b?c=/d"), "/a/b?c=/d");
        assert_eq!(strip().upstream_target("/web"), "/");
        assert_eq!(strip().upstream_target("/web/"), "/");
        assert_eq!(strip().upstream_target("/web?x=1"), "/?x=1");
        assert_eq!(strip().upstream_target("/we%62/a"), "/a");
    }

    #[test]
    fn a_body_is_checked_field_by_field() {
        let route = parse(br#"{"stripPrefix":true,"retries":3,"timeoutSeconds":2.5}"#).unwrap();
        assert_eq!(
            route,
            SlugRoute {
                strip_prefix: true,
                retries: 3,
                timeout: Some(Duration::from_millis(2500)),
                load_weights: Weights::default(),
            }
        );
        assert_eq!(parse(b"{}").unwrap(), SlugRoute::default());
        assert_eq!(parse(br#"{"timeoutSeconds":null}"#).unwrap(), SlugRoute::default());
        let field = |json: &[u8]| parse(json).unwrap_err().field;
        assert_eq!(field(br#"{"stripPrefix":"yes"}"#), "stripPrefix");
        assert_eq!(field(br#"{"retries":6}"#), "retries");
        assert_eq!(field(br#"{"retries":-1}"#), "retries");
        assert_eq!(field(br#"{"retries":1.5}"#), "retries");
        assert_eq!(field(br#"{"timeoutSeconds":0}"#), "timeoutSeconds");
        assert_eq!(field(br#"{"timeoutSeconds":3601}"#), "timeoutSeconds");
        assert_eq!(field(br#"{"timeout":1}"#), "timeout");
        assert_eq!(field(br#"{"loadWeights":[1]}"#), "loadWeights");
        assert_eq!(
            field(br#"{"loadWeights":{"queued":0,"running":0,"kvCache":0}}"#),
            "loadWeights"
        );
        assert_eq!(field(br#"{"loadWeights":{"queued":101}}"#), "loadWeights.queued");
        assert_eq!(field(br#"{"loadWeights":{"queue":1}}"#), "loadWeights.queue");
        let weighted = parse(br#"{"loadWeights":{"kvCache":5}}"#).unwrap().load_weights;
        assert_eq!((weighted.queued, weighted.running, weighted.kv_cache), (2.0, 2.0, 5.0));
        assert_eq!(field(b"[1]"), "body");
        assert_eq!(field(b"{"), "body");
    }

    #[test]
    fn a_record_reads_back_as_itself() {
        let route = SlugRoute {
            strip_prefix: true,
            retries: 0,
            timeout: Some(Duration::from_secs(7)),
            load_weights: Weights {
                queued: 1.0,
                running: 0.0,
                kv_cache: 3.5,
            },
        };
        let record = route.record("web");
        assert!(record.starts_with(r#"{"id":"web","#), "{record}");
        assert_eq!(parse(record.as_bytes()).unwrap(), route);
        assert!(!SlugRoute::default().record("web").contains("timeoutSeconds"));
    }
}
