//! What the store holds: collections, their secondary indexes, and how index keys are
//! derived from a record's JSON. Index entries are always computed from the stored bytes,
//! never passed in separately, so a record and its index entries cannot disagree.

use serde_json::Value;

/// One secondary index of a collection: a top-level string field of the record.
#[derive(Debug)]
pub struct IndexSpec {
    pub field: &'static str,
    /// Byte tag of the index inside the key space.
    pub tag: u8,
    /// At most one record may hold a given value (e.g. an instance URL).
    pub unique: bool,
    /// The field is an array of strings; each element is indexed.
    pub multi: bool,
}

/// A named set of records, each stored as the JSON bytes the API serves.
#[derive(Debug)]
pub struct CollectionSpec {
    pub name: &'static str,
    pub tag: u8,
    pub indexes: &'static [IndexSpec],
    /// A field whose values partition the collection (instances: `slug`). The store keeps
    /// a registry index per partition value, bumped by every write that touches it, so
    /// caches of one partition survive writes to others.
    pub partition: Option<&'static str>,
    /// Top-level string fields that may be filtered on without an index: matched by
    /// reading the candidates (rarely used filters, e.g. an instance's `scheme`).
    pub scanned: &'static [&'static str],
}

const fn idx(field: &'static str, tag: u8) -> IndexSpec {
    IndexSpec {
        field,
        tag,
        unique: false,
        multi: false,
    }
}

pub static INSTANCES: CollectionSpec = CollectionSpec {
    name: "instances",
    tag: 1,
    indexes: &[
        idx("slug", 1),
        idx("host", 2),
        idx("ip", 3),
        idx("deploymentId", 4),
        idx("nodeUrl", 5),
        IndexSpec {
            field: "url",
            tag: 6,
            unique: true,
            multi: false,
        },
        idx("status", 7),
        idx("zone", 8),
        IndexSpec {
            field: "tags",
            tag: 9,
            unique: false,
            multi: true,
        },
    ],
    partition: Some("slug"),
    scanned: &["scheme"],
};

pub static DEFINITIONS: CollectionSpec = CollectionSpec {
    name: "definitions",
    tag: 2,
    indexes: &[],
    partition: None,
    scanned: &[],
};

pub static NODES: CollectionSpec = CollectionSpec {
    name: "nodes",
    tag: 3,
    indexes: &[IndexSpec {
        field: "url",
        tag: 1,
        unique: true,
        multi: false,
    }],
    partition: None,
    scanned: &[],
};

pub static TOKENS: CollectionSpec = CollectionSpec {
    name: "tokens",
    tag: 4,
    indexes: &[IndexSpec {
        field: "secretHash",
        tag: 1,
        unique: true,
        multi: false,
    }],
    partition: None,
    scanned: &[],
};

/// A slug's proxy settings (`route.rs`), keyed by the slug.
pub static ROUTES: CollectionSpec = CollectionSpec {
    name: "routes",
    tag: 5,
    indexes: &[],
    partition: None,
    scanned: &[],
};

pub static COLLECTIONS: [&CollectionSpec; 5] = [&INSTANCES, &DEFINITIONS, &NODES, &TOKENS, &ROUTES];

/// Longest id the store accepts; keeps every LMDB key under its 511-byte limit.
pub const MAX_ID_LEN: usize = 128;
/// Index values longer than this are stored as a 128-bit hash of the value.
const MAX_INLINE_VALUE: usize = 256;
const HASHED_MARKER: u16 = u16::MAX;

pub fn collection(name: &str) -> Option<&'static CollectionSpec> {
    COLLECTIONS.iter().copied().find(|c| c.name == name)
}

impl CollectionSpec {
    pub fn index(&self, field: &str) -> Option<&'static IndexSpec> {
        self.indexes.iter().find(|i| i.field == field)
    }

    /// Key of a record: collection tag followed by the id.
    pub fn record_key(&self, id: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + id.len());
        key.push(self.tag);
        key.extend_from_slice(id.as_bytes());
        key
    }

    /// Prefix shared by every record of the collection.
    pub fn record_prefix(&self) -> [u8; 1] {
        [self.tag]
    }
}

/// Prefix of the index entries for `value` in index `spec` of collection `coll`.
/// The full entry key is this prefix followed by the record id; entries for one value are
/// therefore sorted by id, which lets lookups intersect them by merging.
pub fn index_prefix(coll: &CollectionSpec, spec: &IndexSpec, value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut key = Vec::with_capacity(4 + bytes.len().min(MAX_INLINE_VALUE) + 16);
    key.push(coll.tag);
    key.push(spec.tag);
    if bytes.len() <= MAX_INLINE_VALUE {
        key.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        key.extend_from_slice(bytes);
    } else {
        key.extend_from_slice(&HASHED_MARKER.to_be_bytes());
        key.extend_from_slice(&fnv1a_128(bytes).to_be_bytes());
    }
    key
}

/// FNV-1a, 128-bit: stable across Rust versions (unlike `DefaultHasher`), which matters
/// because these keys are persisted.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    bytes
        .iter()
        .fold(OFFSET, |h, b| (h ^ u128::from(*b)).wrapping_mul(PRIME))
}

/// The index values a record contributes, per index, derived from its JSON.
#[derive(Debug)]
pub struct RecordKeys {
    pub entries: Vec<(&'static IndexSpec, String)>,
}

/// Validates a record for `coll` and derives its index entries.
/// The record must be a JSON object whose `id` equals `id`.
pub fn record_keys(coll: &CollectionSpec, id: &str, json: &[u8]) -> Result<RecordKeys, String> {
    validate_id(id)?;
    let value: Value = serde_json::from_slice(json).map_err(|e| format!("record is not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or("record must be a JSON object")?;
    match obj.get("id") {
        Some(Value::String(s)) if s == id => {}
        _ => return Err(format!("record field 'id' must equal the key '{id}'")),
    }
    let mut entries = Vec::new();
    for spec in coll.indexes {
        match obj.get(spec.field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if !spec.multi => entries.push((spec, s.clone())),
            Some(Value::Array(items)) if spec.multi => {
                let mut seen: Vec<&str> = Vec::new();
                for item in items {
                    let s = item
                        .as_str()
                        .ok_or_else(|| format!("field '{}' must hold only strings", spec.field))?;
                    if !seen.contains(&s) {
                        seen.push(s);
                        entries.push((spec, s.to_owned()));
                    }
                }
            }
            Some(_) => {
                let kind = if spec.multi { "an array of strings" } else { "a string" };
                return Err(format!("field '{}' must be {kind}", spec.field));
            }
        }
    }
    Ok(RecordKeys { entries })
}

impl RecordKeys {
    /// The record's value of the collection's partition field, if it has one.
    pub fn partition(&self, coll: &CollectionSpec) -> Option<&str> {
        let field = coll.partition?;
        self.entries
            .iter()
            .find(|(spec, _)| spec.field == field)
            .map(|(_, v)| v.as_str())
    }
}

pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("id must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("id is longer than {MAX_ID_LEN} bytes"));
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err("id must not contain '/' or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_json() {
        let json = br#"{"id":"a","slug":"s","url":"http://x","tags":["t","u","t"],"host":null}"#;
        let keys = record_keys(&INSTANCES, "a", json).unwrap();
        let got: Vec<(&str, &str)> = keys.entries.iter().map(|(s, v)| (s.field, v.as_str())).collect();
        assert_eq!(
            got,
            vec![("slug", "s"), ("url", "http://x"), ("tags", "t"), ("tags", "u")]
        );
    }

    #[test]
    fn mismatched_id_and_wrong_types_are_rejected() {
        assert!(record_keys(&INSTANCES, "a", br#"{"id":"b"}"#).is_err());
        assert!(record_keys(&INSTANCES, "a", br#"{"id":"a","slug":3}"#).is_err());
        assert!(record_keys(&INSTANCES, "a", br#"{"id":"a","tags":"x"}"#).is_err());
        assert!(record_keys(&INSTANCES, "a", b"[1]").is_err());
        assert!(record_keys(&INSTANCES, "a/b", br#"{"id":"a/b"}"#).is_err());
    }

    #[test]
    fn long_values_are_hashed_and_prefixes_do_not_collide() {
        let spec = INSTANCES.index("url").unwrap();
        let long = "x".repeat(1000);
        let key = index_prefix(&INSTANCES, spec, &long);
        assert_eq!(key.len(), 2 + 2 + 16);
        // "ab" must not be a prefix-match of "abc": the length is part of the key.
        let ab = index_prefix(&INSTANCES, spec, "ab");
        let abc = index_prefix(&INSTANCES, spec, "abc");
        assert!(!abc.starts_with(&ab));
    }
}
