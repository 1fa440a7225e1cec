//! The cluster backend of the one write API (`writes.rs`): each write is one etcd txn whose
//! compares carry the write's preconditions and whose guard keys keep unique fields unique
//! across the cluster (`keys.rs`). A write is answered once this process's replica (fed
//! from etcd's watch) applied the txn's revision, so the next read here sees it; that
//! revision is its index.
//!
//! No blind retries: a txn whose answer was lost ([`EtcdError::Ambiguous`]) is resolved by
//! reading the record it would have written before anything is sent again. Ours (the same
//! bytes) means applied; still at the version the txn compared means not applied, so it
//! may be decided again; anything else was written by someone else meanwhile.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::{header_revision, range_kv, succeeded, Client, EtcdError, Kv};
use super::keys::{
    cmp_mod, cmp_value, op_delete, op_get, op_put, record_ops, unique_values, Claim, Layout, RecordTxn, GUARDED,
    MAX_TXN_OPS,
};
use crate::core::apply::Completion;
use crate::core::error::StoreError;
use crate::core::model::{self, CollectionSpec};
use crate::core::record::{Expect, Result};
use crate::core::store::Store;
use crate::writes::{Write, WriteBackend};

/// How often a write decides again on what etcd holds (each time someone else changed the
/// record between its read and its txn) before it gives up with a version mismatch.
const MAX_ATTEMPTS: usize = 8;
/// A replica that has not heard from etcd for this long is stale: reads say so, writes are
/// refused without being sent.
pub const STALE_AFTER_S: f64 = 3.0;
/// The replicator's state beside the records (`replica.py`): `contact` is when it last
/// heard from etcd (unix seconds).
pub const REPLICA_STATE: &str = "replica";
/// How long a write waits for the local replica to apply it before answering anyway (it
/// is committed in etcd; a read with `?index=` then waits for it).
pub const CATCH_UP_S: f64 = 5.0;
/// Threads that carry `submit`ted writes (each waits on etcd and on its replica).
const SUBMIT_THREADS: usize = 32;

type Job = Box<dyn FnOnce() + Send>;

/// Seconds since this store's replica last heard from etcd, when that is more than
/// [`STALE_AFTER_S`] (None while it is fresh): the rule behind the workers' staleness
/// header, `/health`, the sweeper's judgement and the refusal of writes.
pub fn staleness(store: &Store) -> Result<Option<f64>> {
    let state = store.state(REPLICA_STATE)?.unwrap_or_default();
    let contact = serde_json::from_slice::<Value>(&state)
        .ok()
        .and_then(|s| s["contact"].as_f64())
        .unwrap_or(0.0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let age = now - contact;
    Ok((age > STALE_AFTER_S).then_some(age))
}

pub struct EtcdWrites {
    client: Arc<Client>,
    layout: Layout,
    /// How long a write waits for the local replica to apply it before answering anyway.
    catch_up: Duration,
    jobs: OnceLock<Mutex<Sender<Job>>>,
}

fn expected(expect: Expect) -> Option<u64> {
    match expect {
        Expect::Any => None,
        Expect::Absent => Some(0),
        Expect::Version(v) => Some(v),
    }
}

fn mismatch(coll: &CollectionSpec, id: &str, expected: Option<u64>, actual: u64) -> StoreError {
    StoreError::VersionMismatch {
        collection: coll.name,
        id: id.to_owned(),
        expected: expected.filter(|v| *v != 0),
        actual: (actual != 0).then_some(actual),
    }
}

/// After a lost answer that was not applied: the record as it is now, which the next
/// attempt decides on, unless the caller expected the version it no longer has.
fn decide_again(coll: &CollectionSpec, id: &str, expect: Option<u64>, at: u64, now: Option<Kv>) -> Result<Option<Kv>> {
    if version(&now) != at && expect.is_some() {
        return Err(mismatch(coll, id, expect, version(&now)));
    }
    Ok(now)
}

fn version(kv: &Option<Kv>) -> u64 {
    kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// A txn's failure as the store's error (the txn was not applied, or it is not known).
fn unconfirmed(e: EtcdError) -> StoreError {
    match e {
        EtcdError::Unavailable(e) | EtcdError::Ambiguous(e) => StoreError::Unavailable(format!(
            "etcd did not confirm the write ({e}); it was not acknowledged: read before retrying"
        )),
        other => StoreError::Unavailable(format!("etcd refused the write: {other}")),
    }
}

impl EtcdWrites {
    pub fn new(client: Arc<Client>, layout: Layout, catch_up: Duration) -> EtcdWrites {
        EtcdWrites {
            client,
            layout,
            catch_up,
            jobs: OnceLock::new(),
        }
    }

    /// Refuses a write while this server's replica is out of contact with etcd: the write
    /// would likely fail, and its answer could not be read back here.
    fn require_contact(&self, store: &Store) -> Result<()> {
        match staleness(store)? {
            Some(age) => Err(StoreError::Unavailable(format!(
                "etcd is unreachable from this server (no contact for {age:.1}s); nothing was written"
            ))),
            None => Ok(()),
        }
    }

    /// Waits (at most `catch_up`) until the local replica applied `revision`.
    fn wait_applied(&self, store: &Store, revision: u64) {
        // Past the wait the write is answered anyway: it is in etcd, and the replica follows.
        let _ = store.wait_index(revision, self.catch_up);
    }

    /// etcd's revision and the record as it is now (a linearizable read), after a lost
    /// answer. An error when etcd cannot say: the write is neither confirmed nor refused.
    fn read_back(&self, key: &[u8]) -> Result<(u64, Option<Kv>)> {
        self.client.get(key).map_err(|e| {
            StoreError::Unavailable(format!(
                "etcd did not confirm the write and cannot be read back ({e}); it was not acknowledged: read before retrying"
            ))
        })
    }

    fn fetch(&self, key: &[u8]) -> Result<Option<Kv>> {
        self.client
            .get(key)
            .map(|(_, kv)| kv)
            .map_err(|e| StoreError::Unavailable(format!("etcd is unavailable ({e}); nothing was written")))
    }

    fn put(&self, store: &Store, coll: &'static CollectionSpec, id: &str, json: &[u8], expect: Expect) -> Result<u64> {
        model::record_keys(coll, id, json).map_err(StoreError::InvalidRecord)?;
        self.require_contact(store)?;
        let revision = self.put_txn(store, coll, id, json, expected(expect))?;
        self.wait_applied(store, revision);
        Ok(revision)
    }

    fn put_txn(
        &self,
        store: &Store,
        coll: &'static CollectionSpec,
        id: &str,
        json: &[u8],
        expect: Option<u64>,
    ) -> Result<u64> {
        let key = self.layout.rec(coll.name, id);
        let mut current = store.get(coll, id)?.map(|r| Kv {
            mod_revision: r.version,
            value: r.json,
        });
        // Guards this record already holds (a claim that found its own id).
        let mut own_guards: Vec<Vec<u8>> = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let at = version(&current);
            if expect.is_some_and(|e| e != at) {
                return Err(mismatch(coll, id, expect, at));
            }
            let (txn, compares, failure) = self.put_request(coll, id, json, &current, &own_guards);
            let answer = match self.client.txn(compares, txn.ops, failure) {
                Ok(answer) => answer,
                Err(EtcdError::Ambiguous(_)) => {
                    let (_, now) = self.read_back(&key)?;
                    if let Some(kv) = now.as_ref().filter(|kv| kv.value == json) {
                        return Ok(kv.mod_revision);
                    }
                    current = decide_again(coll, id, expect, at, now)?;
                    continue;
                }
                Err(e) => return Err(unconfirmed(e)),
            };
            let revision = header_revision(&answer);
            if succeeded(&answer) {
                return Ok(revision);
            }
            let now = range_kv(&answer, 0);
            if version(&now) != at {
                // Changed meanwhile (or this replica is behind): decide again on etcd's
                // record, and let a caller that retries read a replica that caught up.
                self.wait_applied(store, revision);
                if expect.is_some() {
                    return Err(mismatch(coll, id, expect, version(&now)));
                }
                current = now;
                continue;
            }
            for (position, claim) in txn.claimed.iter().enumerate() {
                match holder(&answer, position + 1) {
                    Some(holder) if holder == id => own_guards.push(claim.guard.clone()),
                    Some(holder) => {
                        self.wait_applied(store, revision);
                        return Err(conflict(coll, claim, holder));
                    }
                    None => {}
                }
            }
        }
        Err(mismatch(coll, id, expect, version(&current)))
    }

    /// A put's txn on the record as it is (`current`): its ops and claims, the compares
    /// (its version; each newly claimed guard absent, or still ours where an earlier
    /// attempt found it ours), and the reads that explain a failure.
    fn put_request(
        &self,
        coll: &'static CollectionSpec,
        id: &str,
        json: &[u8],
        current: &Option<Kv>,
        own_guards: &[Vec<u8>],
    ) -> (RecordTxn, Vec<Value>, Vec<Value>) {
        let key = self.layout.rec(coll.name, id);
        let mut txn = record_ops(
            &self.layout,
            coll,
            id,
            json,
            current.as_ref().map(|c| c.value.as_slice()),
        );
        let mut compares = vec![cmp_mod(&key, version(current), "EQUAL")];
        let mut failure = vec![op_get(&key)];
        for (claim, compare) in txn.claimed.iter().zip(std::mem::take(&mut txn.compares)) {
            let own = own_guards.contains(&claim.guard);
            compares.push(if own {
                cmp_value(&claim.guard, id.as_bytes())
            } else {
                compare
            });
            failure.push(op_get(&claim.guard));
        }
        (txn, compares, failure)
    }
}

/// Who holds the guard read at `position` of a failed txn's answer (None: nobody).
fn holder(answer: &Value, position: usize) -> Option<String> {
    range_kv(answer, position).map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

fn conflict(coll: &CollectionSpec, claim: &Claim, holder: String) -> StoreError {
    StoreError::Unique {
        collection: coll.name,
        field: claim.field,
        value: claim.value.clone(),
        holder,
    }
}

impl EtcdWrites {
    fn put_many(&self, store: &Store, coll: &'static CollectionSpec, items: &[(String, Vec<u8>)]) -> Result<u64> {
        let mut ids: Vec<&str> = items.iter().map(|(id, _)| id.as_str()).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(StoreError::InvalidRecord(format!(
                "{}: the same id twice in one write",
                coll.name
            )));
        }
        for (id, json) in items {
            model::record_keys(coll, id, json).map_err(StoreError::InvalidRecord)?;
        }
        self.require_contact(store)?;
        for _ in 0..MAX_ATTEMPTS {
            let (compares, ops, claimed) = self.many_request(coll, items)?;
            let needed = ops.len().max(compares.len());
            if needed > MAX_TXN_OPS {
                return Err(StoreError::InvalidRecord(format!(
                    "{} records need {needed} operations in one etcd txn, past etcd's {MAX_TXN_OPS}; nothing was \
                     written: write fewer at once",
                    items.len()
                )));
            }
            let failure = claimed.iter().map(|c| op_get(&c.guard)).collect();
            let answer = match self.client.txn(compares, ops, failure) {
                Ok(answer) => answer,
                Err(EtcdError::Ambiguous(_)) => {
                    // One txn: all of it applied, or none (or another changed them meanwhile).
                    let mut revision = 0;
                    let mut all_ours = true;
                    for (id, json) in items {
                        let (at, now) = self.read_back(&self.layout.rec(coll.name, id))?;
                        revision = revision.max(at);
                        all_ours &= now.is_some_and(|kv| kv.value == *json);
                    }
                    if all_ours {
                        self.wait_applied(store, revision);
                        return Ok(revision);
                    }
                    continue;
                }
                Err(e) => return Err(unconfirmed(e)),
            };
            let revision = header_revision(&answer);
            if succeeded(&answer) {
                self.wait_applied(store, revision);
                return Ok(revision);
            }
            for (position, claim) in claimed.iter().enumerate() {
                if let Some(holder) = holder(&answer, position).filter(|h| !ids.contains(&h.as_str())) {
                    self.wait_applied(store, revision);
                    return Err(conflict(coll, claim, holder));
                }
            }
            // A record changed meanwhile: read the versions again.
        }
        Err(StoreError::VersionMismatch {
            collection: coll.name,
            id: items.first().map(|(id, _)| id.clone()).unwrap_or_default(),
            expected: None,
            actual: None,
        })
    }

    /// One txn putting every record of a `put_many` on etcd's records as they are now:
    /// (compares, ops, claims).
    fn many_request(
        &self,
        coll: &'static CollectionSpec,
        items: &[(String, Vec<u8>)],
    ) -> Result<(Vec<Value>, Vec<Value>, Vec<Claim>)> {
        let (mut compares, mut ops, mut claimed) = (Vec::new(), Vec::new(), Vec::new());
        for (id, json) in items {
            let key = self.layout.rec(coll.name, id);
            let current = self.fetch(&key)?;
            let txn = record_ops(
                &self.layout,
                coll,
                id,
                json,
                current.as_ref().map(|c| c.value.as_slice()),
            );
            compares.push(cmp_mod(&key, version(&current), "EQUAL"));
            compares.extend(txn.compares);
            ops.extend(txn.ops);
            claimed.extend(txn.claimed);
        }
        Ok((compares, ops, claimed))
    }

    fn delete(
        &self,
        store: &Store,
        coll: &'static CollectionSpec,
        id: &str,
        expect: Expect,
        collection_index: Option<u64>,
    ) -> Result<u64> {
        self.require_contact(store)?;
        let expect = expected(expect);
        let key = self.layout.rec(coll.name, id);
        let coll_key = self.layout.coll(coll.name);
        let mut current = match store.get(coll, id)? {
            Some(r) => Some(Kv {
                mod_revision: r.version,
                value: r.json,
            }),
            None => self.fetch(&key)?,
        };
        for _ in 0..MAX_ATTEMPTS {
            let Some(kv) = current.as_ref() else {
                return Err(StoreError::NotFound {
                    collection: coll.name,
                    id: id.to_owned(),
                });
            };
            let at = kv.mod_revision;
            if expect.is_some_and(|e| e != at) {
                return Err(mismatch(coll, id, expect, at));
            }
            let mut ops = vec![op_delete(&key)];
            for (field, value) in unique_values(coll, id, &kv.value) {
                ops.push(op_delete(&self.layout.uniq(coll.name, field, &value)));
            }
            let mut compares = vec![cmp_mod(&key, at, "EQUAL")];
            if let Some(index) = collection_index {
                // Every write of a guarded collection touches its coll key at its revision.
                compares.push(cmp_mod(&coll_key, index + 1, "LESS"));
            }
            if GUARDED.contains(&coll.name) {
                ops.push(op_put(&coll_key, b""));
            }
            let answer = match self.client.txn(compares, ops, vec![op_get(&key), op_get(&coll_key)]) {
                Ok(answer) => answer,
                Err(EtcdError::Ambiguous(_)) => {
                    // Gone means applied (or deleted by another: gone either way); still at
                    // the compared version, not applied; otherwise decide again.
                    let (revision, now) = self.read_back(&key)?;
                    if now.is_none() {
                        self.wait_applied(store, revision);
                        return Ok(revision);
                    }
                    current = decide_again(coll, id, expect, at, now)?;
                    continue;
                }
                Err(e) => return Err(unconfirmed(e)),
            };
            let revision = header_revision(&answer);
            self.wait_applied(store, revision);
            if succeeded(&answer) {
                return Ok(revision);
            }
            let now = range_kv(&answer, 0);
            if version(&now) == at {
                return Err(StoreError::CollectionChanged {
                    collection: coll.name,
                    expected: collection_index.unwrap_or(0),
                    actual: range_kv(&answer, 1).map_or(0, |kv| kv.mod_revision),
                });
            }
            if expect.is_some() {
                return Err(mismatch(coll, id, expect, version(&now)));
            }
            current = now;
        }
        Err(mismatch(coll, id, expect, version(&current)))
    }

    /// The pool's sender, its threads started on the first submitted write.
    fn jobs(&self) -> &Mutex<Sender<Job>> {
        self.jobs.get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Job>();
            let receiver = Arc::new(Mutex::new(receiver));
            for n in 0..SUBMIT_THREADS {
                let receiver: Arc<Mutex<Receiver<Job>>> = Arc::clone(&receiver);
                let spawned = std::thread::Builder::new()
                    .name(format!("etcd-write-{n}"))
                    .spawn(move || loop {
                        let job = match receiver.lock() {
                            Ok(r) => r.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    });
                if spawned.is_err() && n > 0 {
                    break; // fewer threads still carry every job
                }
            }
            Mutex::new(sender)
        })
    }
}

impl WriteBackend for EtcdWrites {
    fn write(&self, store: &Store, write: Write) -> Result<u64> {
        match write {
            Write::Put { coll, id, json, expect } => self.put(store, coll, &id, &json, expect),
            Write::PutMany { coll, items } => self.put_many(store, coll, &items),
            Write::Delete {
                coll,
                id,
                expect,
                collection_index,
            } => self.delete(store, coll, &id, expect, collection_index),
        }
    }

    fn submit(self: Arc<Self>, store: Arc<Store>, write: Write, done: Completion) -> Result<()> {
        let jobs = self.jobs().lock().map_err(|_| StoreError::Closed)?.clone();
        let job: Job = Box::new(move || done(self.write(&store, write)));
        // No thread could start: the caller hears so now instead of waiting for ever.
        jobs.send(job).map_err(|_| StoreError::Closed)
    }

    fn name(&self) -> &'static str {
        "etcd"
    }
}
