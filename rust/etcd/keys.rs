//! Where a registry lives in etcd, and the operations that keep a record's guard keys in
//! step with it. Key layout under the prefix (default `/registry-svc/`), versioned so that a
//! later format can live beside this one:
//!
//! ```text
//! v1/rec/<collection>/<id>              the record's JSON, exactly as served
//! v1/uniq/<collection>/<field>/<b64>    guard of a unique field value -> the holder's id
//! v1/coll/<collection>                  touched by every write of a guarded collection
//! v1/live/<node id>                     node liveness, bound to the node's lease
//! v1/elect/<job>                        the server running cluster-wide sweeps (leased)
//! v1/meta/bootstrap                     the first admin token's id (created once)
//! ```
//!
//! Invariant kept by every transaction: a guard key exists exactly while a record holds that
//! value, and names that record. The unique fields are the store's unique indexes
//! (`core/model.rs`), so the rule is stated once for both backends.

use data_encoding::BASE64URL_NOPAD;
use serde_json::{json, Value};

use super::client::b64;
use crate::core::model::{self, CollectionSpec};

pub const DEFAULT_PREFIX: &str = "/registry-svc/";
/// etcd's --max-txn-ops (its default): the most operations (or compares) one txn may carry.
pub const MAX_TXN_OPS: usize = 128;
/// Collections whose deletes may be guarded on "nothing else changed" (the last admin token).
pub const GUARDED: &[&str] = &["tokens"];

/// Why `prefix` cannot hold a registry's keys, or None: it must start and end with '/'
/// and name something below the root (the root is every other tenant's key space).
pub fn prefix_problem(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        return Some(format!("must start and end with '/', got '{prefix}'"));
    }
    if prefix == "/" {
        return Some("must name a prefix below '/' (e.g. /registry-svc/), not the root of etcd's key space".into());
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    pub fn new(prefix: &str) -> Result<Layout, String> {
        match prefix_problem(prefix) {
            Some(problem) => Err(format!("etcd prefix {problem}")),
            None => Ok(Layout {
                prefix: prefix.to_owned(),
            }),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}v1/{rest}", self.prefix).into_bytes()
    }

    pub fn root(&self) -> Vec<u8> {
        self.key("")
    }

    pub fn rec_prefix(&self) -> Vec<u8> {
        self.key("rec/")
    }

    pub fn rec(&self, collection: &str, id: &str) -> Vec<u8> {
        self.key(&format!("rec/{collection}/{id}"))
    }

    /// (collection, id) of a record key, None for anything else.
    pub fn parse_rec<'k>(&self, key: &'k [u8]) -> Option<(&'static CollectionSpec, &'k str)> {
        let rest = key.strip_prefix(self.rec_prefix().as_slice())?;
        let (collection, id) = std::str::from_utf8(rest).ok()?.split_once('/')?;
        let spec = model::collection(collection)?;
        (!id.is_empty()).then_some((spec, id))
    }

    pub fn uniq(&self, collection: &str, field: &str, value: &str) -> Vec<u8> {
        let encoded = BASE64URL_NOPAD.encode(value.as_bytes());
        self.key(&format!("uniq/{collection}/{field}/{encoded}"))
    }

    pub fn coll(&self, collection: &str) -> Vec<u8> {
        self.key(&format!("coll/{collection}"))
    }

    pub fn live_prefix(&self) -> Vec<u8> {
        self.key("live/")
    }

    pub fn live(&self, node_id: &str) -> Vec<u8> {
        self.key(&format!("live/{node_id}"))
    }

    pub fn elect(&self, job: &str) -> Vec<u8> {
        self.key(&format!("elect/{job}"))
    }

    pub fn bootstrap(&self) -> Vec<u8> {
        self.key("meta/bootstrap")
    }
}

/// Compare a key's mod revision (0 for an absent key); `result` EQUAL, LESS, GREATER.
pub fn cmp_mod(key: &[u8], revision: u64, result: &str) -> Value {
    json!({"target": "MOD", "key": b64(key), "result": result, "mod_revision": revision.to_string()})
}

pub fn cmp_absent(key: &[u8]) -> Value {
    json!({"target": "CREATE", "key": b64(key), "result": "EQUAL", "create_revision": "0"})
}

pub fn cmp_value(key: &[u8], value: &[u8]) -> Value {
    json!({"target": "VALUE", "key": b64(key), "result": "EQUAL", "value": b64(value)})
}

pub fn op_put(key: &[u8], value: &[u8]) -> Value {
    json!({"request_put": {"key": b64(key), "value": b64(value)}})
}

pub fn op_delete(key: &[u8]) -> Value {
    json!({"request_delete_range": {"key": b64(key)}})
}

pub fn op_get(key: &[u8]) -> Value {
    json!({"request_range": {"key": b64(key)}})
}

/// The unique fields' values of a record (as the store's unique indexes see them); a
/// record that does not validate has none (it is refused before any txn is built).
pub fn unique_values(coll: &CollectionSpec, id: &str, json: &[u8]) -> Vec<(&'static str, String)> {
    model::record_keys(coll, id, json)
        .map(|keys| {
            keys.entries
                .into_iter()
                .filter(|(spec, _)| spec.unique)
                .map(|(spec, value)| (spec.field, value))
                .collect()
        })
        .unwrap_or_default()
}

/// A guard key a write claims: the field, its value, and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub field: &'static str,
    pub value: String,
    pub guard: Vec<u8>,
}

/// What putting a record takes beyond the compare on its own version: compares on the
/// guards it newly claims (absent), the success ops (the record, its guards in step, the
/// collection key of a guarded collection), and the claims in compare order.
pub struct RecordTxn {
    pub compares: Vec<Value>,
    pub ops: Vec<Value>,
    pub claimed: Vec<Claim>,
}

pub fn record_ops(layout: &Layout, coll: &CollectionSpec, id: &str, json: &[u8], old: Option<&[u8]>) -> RecordTxn {
    let mut txn = RecordTxn {
        compares: Vec::new(),
        ops: vec![op_put(&layout.rec(coll.name, id), json)],
        claimed: Vec::new(),
    };
    let new_values = unique_values(coll, id, json);
    let old_values = old.map(|o| unique_values(coll, id, o)).unwrap_or_default();
    let held =
        |values: &[(&str, String)], field: &str| values.iter().find(|(f, _)| *f == field).map(|(_, v)| v.clone());
    for (field, value) in &new_values {
        if held(&old_values, field).as_ref() == Some(value) {
            continue;
        }
        let guard = layout.uniq(coll.name, field, value);
        txn.compares.push(cmp_absent(&guard));
        txn.ops.push(op_put(&guard, id.as_bytes()));
        txn.claimed.push(Claim {
            field,
            value: value.clone(),
            guard,
        });
    }
    for (field, value) in &old_values {
        if held(&new_values, field).as_ref() != Some(value) {
            txn.ops.push(op_delete(&layout.uniq(coll.name, field, value)));
        }
    }
    if GUARDED.contains(&coll.name) {
        txn.ops.push(op_put(&layout.coll(coll.name), b""));
    }
    txn
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::{INSTANCES, NODES};

    #[test]
    fn keys_follow_the_layout_and_parse_back() {
        let layout = Layout::new("/r/").unwrap();
        assert_eq!(layout.rec("instances", "a/b"), b"/r/v1/rec/instances/a/b");
        assert_eq!(
            layout.uniq("instances", "url", "http://x:1"),
            b"/r/v1/uniq/instances/url/aHR0cDovL3g6MQ"
        );
        let key = layout.rec("instances", "i1");
        let (coll, id) = layout.parse_rec(&key).unwrap();
        assert_eq!((coll.name, id), ("instances", "i1"));
        assert!(layout.parse_rec(b"/r/v1/rec/nope/i1").is_none());
        assert!(layout.parse_rec(b"/r/v1/rec/instances/").is_none());
        assert!(layout.parse_rec(b"/other/v1/rec/instances/i1").is_none());
        assert!(Layout::new("/").is_err());
        assert!(Layout::new("registry").is_err());
    }

    #[test]
    fn a_put_claims_new_unique_values_and_releases_old_ones() {
        let layout = Layout::new(DEFAULT_PREFIX).unwrap();
        let old = br#"{"id":"i1","slug":"s","url":"http://127.0.0.1:1"}"#;
        let new = br#"{"id":"i1","slug":"s","url":"http://127.0.0.1:2"}"#;
        let txn = record_ops(&layout, &INSTANCES, "i1", new, Some(old));
        assert_eq!(txn.claimed.len(), 1);
        assert_eq!(txn.claimed[0].value, "http://127.0.0.1:2");
        assert_eq!(
            txn.compares,
            vec![cmp_absent(&layout.uniq("instances", "url", "http://127.0.0.1:2"))]
        );
        // The record, the new guard, the old guard's delete.
        assert_eq!(txn.ops.len(), 3);
        assert_eq!(
            txn.ops[2],
            op_delete(&layout.uniq("instances", "url", "http://127.0.0.1:1"))
        );
        // Unchanged values claim nothing.
        let same = record_ops(&layout, &INSTANCES, "i1", new, Some(new));
        assert!(same.claimed.is_empty() && same.ops.len() == 1);
        assert!(NODES.indexes.iter().any(|i| i.unique));
    }
}
