//! Serialized list responses, cached per filter set and validated by registry index.
//!
//! A cached body is valid while its *validity token* is unchanged: the partition index of
//! the slug when the filters include one (a write to another slug does not invalidate
//! it), else the collection index. The token is read before the body is built, so a body
//! can be newer than its token but never older: a concurrent write only causes a rebuild.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::core::model::CollectionSpec;
use crate::core::store::{Filter, Result, Store};

/// Bytes of cached list responses one process keeps (keys and bodies).
pub const RESPONSE_CACHE_BYTES: usize = 64 << 20;
/// Per-entry bookkeeping counted on top of key and value bytes.
const ENTRY_OVERHEAD: usize = 96;

/// A map whose entries have a size, holding at most `max_bytes` in all: a caller that
/// varies its queries can make the cache churn, never grow. An entry larger than
/// `max_entry` bytes is not kept; an insert that would pass the budget empties the map
/// first (entries are rebuilt from the store on demand, so dropping them is safe).
pub struct BoundedMap<K, V> {
    entries: HashMap<K, (V, usize)>,
    bytes: usize,
    max_bytes: usize,
    max_entry: usize,
}

impl<K: Hash + Eq, V> BoundedMap<K, V> {
    pub fn new(max_bytes: usize, max_entry: usize) -> BoundedMap<K, V> {
        BoundedMap {
            entries: HashMap::new(),
            bytes: 0,
            max_bytes,
            max_entry: max_entry.min(max_bytes),
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.entries.get(key).map(|(value, _)| value)
    }

    /// Inserts `value`, accounted as `size` bytes (plus a fixed overhead).
    pub fn insert(&mut self, key: K, value: V, size: usize) {
        let size = size + ENTRY_OVERHEAD;
        if let Some((_, old)) = self.entries.remove(&key) {
            self.bytes -= old;
        }
        if size > self.max_entry {
            return;
        }
        if self.bytes + size > self.max_bytes {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.insert(key, (value, size));
    }

    /// Bytes accounted to the entries now held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// When a cached thing was read, and how to tell cheaply that it is still current.
///
/// `token` is the partition index (or the collection index, without a partition) read
/// before the thing was built. `checked_at` is the collection index at which the token
/// was last confirmed: while the collection index stays there, no write happened at all
/// and the (hot) collection key is the only read. After a write anywhere, the partition
/// is looked up once and, if untouched, the stamp moves forward.
pub struct Stamp {
    token: u64,
    checked_at: AtomicU64,
    /// The store's write count when the stamp was last confirmed (`write_counts.rs`;
    /// u64::MAX: never): while it stays there, no LMDB read is needed at all.
    seen: AtomicU64,
}

impl Stamp {
    /// Reads the stamp; call it before building what it guards.
    pub fn read(store: &Store, coll: &CollectionSpec, partition: Option<&str>) -> Result<Stamp> {
        let seen = store.write_counts().settled().unwrap_or(u64::MAX);
        let checked = store.collection_index(coll)?;
        let token = match partition {
            Some(value) => store.partition_index(coll, value)?,
            None => checked,
        };
        Ok(Stamp {
            token,
            checked_at: AtomicU64::new(checked),
            seen: AtomicU64::new(seen),
        })
    }

    /// Whether nothing the stamp guards was written since it was read.
    pub fn is_current(&self, store: &Store, coll: &CollectionSpec, partition: Option<&str>) -> Result<bool> {
        let settled = store.write_counts().settled();
        if settled.is_some_and(|s| s == self.seen.load(Ordering::Acquire)) {
            return Ok(true);
        }
        let now = store.collection_index(coll)?;
        if now != self.checked_at.load(Ordering::Acquire) {
            let Some(value) = partition else {
                return Ok(false);
            };
            if store.partition_index(coll, value)? != self.token {
                return Ok(false);
            }
            self.checked_at.store(now, Ordering::Release);
        }
        // Confirmed by reads made after `settled` was taken: current at that count.
        if let Some(s) = settled {
            self.seen.store(s, Ordering::Release);
        }
        Ok(true)
    }
}

struct Entry {
    stamp: Stamp,
    body: Arc<Vec<u8>>,
}

pub struct ResponseCache {
    entries: RwLock<BoundedMap<Vec<u8>, Entry>>,
}

impl Default for ResponseCache {
    fn default() -> Self {
        ResponseCache::with_budget(RESPONSE_CACHE_BYTES)
    }
}

fn cache_key(coll: &CollectionSpec, filters: &[Filter], key: &str) -> Vec<u8> {
    let mut sorted: Vec<&Filter> = filters.iter().collect();
    sorted.sort();
    let mut out = vec![coll.tag];
    out.extend_from_slice(key.as_bytes());
    for (field, value) in sorted {
        out.push(0);
        out.extend_from_slice(field.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// The partition value the filters pin, if any (e.g. `slug=S` for instances).
fn partition_of<'f>(coll: &CollectionSpec, filters: &'f [Filter]) -> Option<&'f str> {
    let field = coll.partition?;
    filters.iter().find(|(f, _)| f == field).map(|(_, v)| v.as_str())
}

impl ResponseCache {
    pub fn with_budget(max_bytes: usize) -> ResponseCache {
        ResponseCache {
            // Half the budget for one body: a full listing of a large registry is worth
            // keeping, a second one evicts the first.
            entries: RwLock::new(BoundedMap::new(max_bytes, max_bytes / 2)),
        }
    }

    /// (entries, bytes) held now.
    pub fn usage(&self) -> (usize, usize) {
        let entries = self.entries.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (entries.len(), entries.bytes())
    }

    /// `store.list_json(coll, filters, key)`, served from the cache while still valid.
    /// Returns the result's own index (the partition's, e.g. one slug's instances, else the
    /// collection's), read before the body: every write the body lacks has a higher index,
    /// and the index is the same in every process as long as the result is unchanged.
    pub fn list_json(
        &self,
        store: &Store,
        coll: &'static CollectionSpec,
        filters: &[Filter],
        key: &str,
    ) -> Result<(u64, Arc<Vec<u8>>)> {
        let partition = partition_of(coll, filters);
        let cache_key = cache_key(coll, filters, key);
        if let Some(entry) = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&cache_key)
        {
            if entry.stamp.is_current(store, coll, partition)? {
                return Ok((entry.stamp.token, Arc::clone(&entry.body)));
            }
        }
        let stamp = Stamp::read(store, coll, partition)?;
        let (_, body) = store.list_json(coll, filters, key)?;
        let index = stamp.token;
        let body = Arc::new(body);
        let size = cache_key.len() + body.len();
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                cache_key,
                Entry {
                    stamp,
                    body: Arc::clone(&body),
                },
                size,
            );
        Ok((index, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::model::INSTANCES;
    use crate::core::store::Expect;
    use crate::core::write_counts::WriteCounts;

    fn put(store: &Store, id: &str, slug: &str) {
        let json = serde_json::json!({"id": id, "slug": slug, "url": format!("http://{id}")}).to_string();
        store.put(&INSTANCES, id, json.into_bytes(), Expect::Any).unwrap();
    }

    fn slug_filter(slug: &str) -> Vec<Filter> {
        vec![("slug".to_owned(), slug.to_owned())]
    }

    #[test]
    fn cached_bodies_follow_their_slug_and_survive_other_slugs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let cache = ResponseCache::default();
        put(&store, "a1", "a");
        let (_, first) = cache
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        put(&store, "b1", "b"); // another slug: a's entry stays valid
        let (_, again) = cache
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        put(&store, "a2", "a"); // same slug: rebuilt
        let (_, fresh) = cache
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert_eq!(fresh.windows(4).filter(|w| w == b"\"id\"").count(), 2);
        // Moving an instance out of a slug invalidates the old slug too.
        put(&store, "a2", "b");
        let (_, moved) = cache
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        assert_eq!(moved.windows(4).filter(|w| w == b"\"id\"").count(), 1);
        store.delete(&INSTANCES, "a1", Expect::Any).unwrap();
        let (_, gone) = cache
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        assert_eq!(gone.as_slice(), br#"{"instances":[]}"#);
    }

    #[test]
    fn an_unchanged_write_count_serves_without_reading_and_a_write_never_goes_unseen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let cache = ResponseCache::default();
        put(&store, "a1", "a");
        let list = || {
            cache
                .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
                .unwrap()
                .1
        };
        let first = list();
        assert!(Arc::ptr_eq(&first, &list()), "served from the cache");
        // Another process's write: counted in the shared file, seen here at once.
        let other = WriteCounts::open(dir.path()).unwrap();
        put(&store, "a2", "a");
        let second = list();
        assert_eq!(second.windows(4).filter(|w| w == b"\"id\"").count(), 2);
        // A writer killed between its commit and its count: the counts stay unequal, and
        // every read confirms against LMDB instead (still current, still no stale answer).
        other.begin();
        assert!(Arc::ptr_eq(&second, &list()));
        put(&store, "a3", "a");
        assert_eq!(list().windows(4).filter(|w| w == b"\"id\"").count(), 3);
    }

    #[test]
    fn varied_queries_never_grow_the_cache_past_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        for i in 0..50 {
            put(&store, &format!("a{i}"), "a");
        }
        let budget = 64 << 10;
        let cache = ResponseCache::with_budget(budget);
        for i in 0..2000 {
            let filters = vec![
                ("slug".to_owned(), "a".to_owned()),
                ("zone".to_owned(), format!("z{i}")),
            ];
            cache.list_json(&store, &INSTANCES, &filters, "instances").unwrap();
            assert!(cache.usage().1 <= budget);
        }
        // A body over half the budget is served but not kept.
        let small = ResponseCache::with_budget(4 << 10);
        let (_, big) = small
            .list_json(&store, &INSTANCES, &slug_filter("a"), "instances")
            .unwrap();
        assert!(big.len() > 2 << 10);
        assert_eq!(small.usage(), (0, 0));
    }

    #[test]
    fn filters_without_a_slug_follow_the_collection() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let cache = ResponseCache::default();
        put(&store, "a1", "a");
        let (_, all) = cache.list_json(&store, &INSTANCES, &[], "instances").unwrap();
        put(&store, "b1", "b");
        let (_, after) = cache.list_json(&store, &INSTANCES, &[], "instances").unwrap();
        assert!(!Arc::ptr_eq(&all, &after));
        assert_eq!(after.windows(4).filter(|w| w == b"\"id\"").count(), 2);
    }
}
