//! The apply path: every change to a record of the local store goes through here (a
//! cluster replica's batches and the state values commit on their caller's thread).
//!
//! Writes are queued to one writer thread per process, which commits whatever is pending
//! in one LMDB transaction (group commit) and syncs it once. Each write's checks run before
//! it touches anything, so a refused write leaves the others intact; a write of several
//! operations is atomic through a nested transaction. Every applied write bumps the
//! durable registry index (and the partition index of each slug it touches), and its
//! caller is answered only after the commit is on disk.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;

use heed::{Env, RoTxn, RwTxn, WithoutTls};

use crate::core::error::StoreError;
use crate::core::keys::{collection_meta_key, partition_meta_key, read_u64, Tables, META_INDEX, VERSION_LEN};
use crate::core::model::{self, CollectionSpec};
use crate::core::record::{decode_record, Expect, Op, Record, Result};
use crate::core::write_counts::{Counted, WriteCounts};

/// Longest run of pending writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// Called with a write's result once it is durable (or refused), on the writer thread.
pub type Completion = Box<dyn FnOnce(Result<u64>) + Send>;

/// Runs a batch's completions; lets a binding take a lock (e.g. Python's GIL) once per
/// batch instead of once per write.
pub type CompletionRunner = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// How the writer thread answers a write.
pub(crate) enum Reply {
    /// A caller blocked in `write`.
    Wait(mpsc::SyncSender<Result<u64>>),
    /// A caller that went on and wants a call back (`submit`).
    Call(Completion),
}

pub(crate) struct Pending {
    pub(crate) ops: Vec<Op>,
    pub(crate) reply: Reply,
}

fn bump_partition(
    tables: Tables,
    txn: &mut RwTxn<'_>,
    coll: &CollectionSpec,
    value: Option<&str>,
    version: u64,
) -> Result<()> {
    if let Some(value) = value {
        tables
            .meta
            .put(txn, &partition_meta_key(coll, value), &version.to_be_bytes())?;
    }
    Ok(())
}

/// What the writer thread of one process committed (for `/metrics`).
#[derive(Default, Debug)]
pub struct WriterStats {
    /// Writes applied (each may hold several operations).
    pub writes: AtomicU64,
    /// Transactions committed (group commits: one sync for a batch of writes).
    pub batches: AtomicU64,
}

pub(crate) fn writer_loop(
    env: &Env<WithoutTls>,
    tables: Tables,
    receiver: &mpsc::Receiver<Pending>,
    runner: &OnceLock<CompletionRunner>,
    stats: &WriterStats,
    counts: &WriteCounts,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let results = commit_batch(env, tables, counts, &batch);
        let applied = results.iter().filter(|r| r.is_ok()).count() as u64;
        if applied > 0 {
            stats.writes.fetch_add(applied, Ordering::Relaxed);
            stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        let mut calls = Vec::new();
        for (pending, result) in batch.into_iter().zip(results) {
            match pending.reply {
                // The caller may have gone away (e.g. its thread was interrupted); nothing to do.
                Reply::Wait(reply) => drop(reply.send(result)),
                Reply::Call(done) => calls.push((done, result)),
            }
        }
        if calls.is_empty() {
            continue;
        }
        let mut run_all = || {
            for (done, result) in calls.drain(..) {
                done(result);
            }
        };
        match runner.get() {
            Some(runner) => runner(&mut run_all),
            None => run_all(),
        }
    }
}

/// Applies each pending write in its own nested transaction inside one outer transaction,
/// then commits (and syncs) once. Returns one result per pending write.
fn commit_batch(env: &Env<WithoutTls>, tables: Tables, counts: &WriteCounts, batch: &[Pending]) -> Vec<Result<u64>> {
    let mut results: Vec<Result<u64>> = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<()> {
        let mut wtxn = env.write_txn()?;
        // Counted from here until after the commit (dropped last: declared after wtxn).
        let _counted = Counted::new(counts);
        let start = read_u64(&tables.meta, &wtxn, META_INDEX)?;
        let mut counter = start;
        for pending in batch {
            let next = counter + 1;
            let outcome = if let [op] = pending.ops.as_slice() {
                // One operation: check, then write straight into the batch's transaction.
                // A refused check wrote nothing; a failed write breaks the whole batch (`?`).
                match check_op(tables, &wtxn, op) {
                    Ok(checked) => write_op(tables, &mut wtxn, op, checked, next).map(|()| Ok(()))?,
                    Err(e) => Err(e),
                }
            } else {
                // Several operations are atomic together: a nested transaction undoes the
                // earlier ones if a later one is refused. (Nested transactions cost a large
                // allocation each, hence not for single operations.)
                let mut child = env.nested_write_txn(&mut wtxn)?;
                let applied = pending.ops.iter().try_for_each(|op| {
                    let checked = check_op(tables, &child, op)?;
                    write_op(tables, &mut child, op, checked, next)
                });
                match applied {
                    Ok(()) => {
                        child.commit()?;
                        Ok(())
                    }
                    Err(e) => {
                        child.abort();
                        Err(e)
                    }
                }
            };
            match outcome {
                Ok(()) => {
                    counter = next;
                    for coll in pending.ops.iter().filter_map(Op::written_collection) {
                        tables
                            .meta
                            .put(&mut wtxn, &collection_meta_key(coll), &next.to_be_bytes())?;
                    }
                    results.push(Ok(next));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if counter != start {
            tables.meta.put(&mut wtxn, META_INDEX, &counter.to_be_bytes())?;
        }
        wtxn.commit()?;
        Ok(())
    })();
    match outcome {
        Ok(()) => results,
        // The outer transaction failed: nothing in this batch was written.
        Err(e) => batch.iter().map(|_| Err(e.clone())).collect(),
    }
}

fn check_expect(coll: &CollectionSpec, id: &str, expect: Expect, current: Option<u64>) -> Result<()> {
    let ok = match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Version(v) => current == Some(v),
    };
    if ok {
        return Ok(());
    }
    let expected = match expect {
        Expect::Version(v) => Some(v),
        _ => None,
    };
    Err(StoreError::VersionMismatch {
        collection: coll.name,
        id: id.to_owned(),
        expected,
        actual: current,
    })
}

/// What `check_op` learned, for `write_op` to apply.
struct Checked {
    keys: Option<model::RecordKeys>,
    old: Option<Record>,
}

/// Every check of an operation (record validity, version precondition, unique indexes),
/// reading only: an operation refused here has written nothing.
fn check_op(tables: Tables, txn: &RoTxn<'_, WithoutTls>, op: &Op) -> Result<Checked> {
    match op {
        Op::Put { coll, id, json, expect } => {
            let keys = model::record_keys(coll, id, json).map_err(StoreError::InvalidRecord)?;
            let old = tables.records.get(txn, &coll.record_key(id))?.map(decode_record);
            check_expect(coll, id, *expect, old.as_ref().map(|r| r.version))?;
            for (spec, value) in keys.entries.iter().filter(|(spec, _)| spec.unique) {
                let prefix = model::index_prefix(coll, spec, value);
                for entry in tables.index.prefix_iter(txn, &prefix)? {
                    let holder = &entry?.0[prefix.len()..];
                    if holder != id.as_bytes() {
                        return Err(StoreError::Unique {
                            collection: coll.name,
                            field: spec.field,
                            value: value.clone(),
                            holder: String::from_utf8_lossy(holder).into_owned(),
                        });
                    }
                }
            }
            Ok(Checked { keys: Some(keys), old })
        }
        Op::Guard { coll, collection_index } => {
            let actual = read_u64(&tables.meta, txn, &collection_meta_key(coll))?;
            if actual != *collection_index {
                return Err(StoreError::CollectionChanged {
                    collection: coll.name,
                    expected: *collection_index,
                    actual,
                });
            }
            Ok(Checked { keys: None, old: None })
        }
        Op::Delete { coll, id, expect } => {
            let old = tables
                .records
                .get(txn, &coll.record_key(id))?
                .map(decode_record)
                .ok_or_else(|| StoreError::NotFound {
                    collection: coll.name,
                    id: id.clone(),
                })?;
            check_expect(coll, id, *expect, Some(old.version))?;
            Ok(Checked {
                keys: None,
                old: Some(old),
            })
        }
    }
}

/// Applies a checked operation. An error here leaves a partial write in `txn`, which the
/// caller must then abort.
fn write_op(tables: Tables, txn: &mut RwTxn<'_>, op: &Op, checked: Checked, version: u64) -> Result<()> {
    let (coll, id) = match op {
        Op::Put { coll, id, .. } | Op::Delete { coll, id, .. } => (*coll, id),
        Op::Guard { .. } => return Ok(()),
    };
    if let Some(old) = &checked.old {
        let old_keys = remove_index_entries(tables, txn, coll, id, &old.json)?;
        bump_partition(tables, txn, coll, old_keys.partition(coll), version)?;
    }
    let record_key = coll.record_key(id);
    match (op, checked.keys) {
        (Op::Put { json, .. }, Some(keys)) => {
            bump_partition(tables, txn, coll, keys.partition(coll), version)?;
            for (spec, value) in &keys.entries {
                let mut key = model::index_prefix(coll, spec, value);
                key.extend_from_slice(id.as_bytes());
                tables.index.put(txn, &key, &[])?;
            }
            let mut stored = Vec::with_capacity(VERSION_LEN + json.len());
            stored.extend_from_slice(&version.to_be_bytes());
            stored.extend_from_slice(json);
            tables.records.put(txn, &record_key, &stored)?;
        }
        _ => {
            tables.records.delete(txn, &record_key)?;
        }
    }
    Ok(())
}

/// Deletes the index entries of a stored record; returns its keys.
pub(crate) fn remove_index_entries(
    tables: Tables,
    txn: &mut RwTxn<'_>,
    coll: &CollectionSpec,
    id: &str,
    json: &[u8],
) -> Result<model::RecordKeys> {
    let keys = model::record_keys(coll, id, json).map_err(StoreError::InvalidRecord)?;
    for (spec, value) in &keys.entries {
        let mut key = model::index_prefix(coll, spec, value);
        key.extend_from_slice(id.as_bytes());
        tables.index.delete(txn, &key)?;
    }
    Ok(keys)
}
