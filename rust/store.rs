//! The registry store: records as JSON bytes in LMDB (via heed), secondary indexes kept in
//! the same transaction as the records, and one apply path for every change.
//!
//! Every write goes through [`Store::write`], which hands the operation to a single writer
//! thread. That thread commits whatever writes are pending in one LMDB transaction (group
//! commit), giving each write its own nested transaction so that one failing write does
//! not undo the others, and bumps a durable registry index once per successful write.
//! A write is acknowledged only after the transaction is committed and synced to disk.
//! Several processes may open the same directory: LMDB serializes their writers.

use std::fmt;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions, MdbError, RoTxn, RwTxn, WithoutTls};

use crate::model::{self, CollectionSpec};

const META_INDEX: &[u8] = b"index";
const META_COLLECTION_PREFIX: &[u8] = b"collection-index:";
const META_PARTITION_PREFIX: &[u8] = b"partition-index:";
/// Longest run of pending writes committed in one transaction.
const MAX_BATCH: usize = 512;
const VERSION_LEN: usize = 8;

/// Everything that can go wrong in the store, as values a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound {
        collection: &'static str,
        id: String,
    },
    /// The record's version is not the one the write expected (a concurrent change won).
    VersionMismatch {
        collection: &'static str,
        id: String,
        expected: Option<u64>,
        actual: Option<u64>,
    },
    /// A unique index already holds this value for another record.
    Unique {
        collection: &'static str,
        field: &'static str,
        value: String,
        holder: String,
    },
    InvalidRecord(String),
    UnknownCollection(String),
    UnknownFilter {
        collection: &'static str,
        field: String,
    },
    /// The LMDB map is full: nothing was written.
    Full(String),
    Lmdb(String),
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotFound { collection, id } => write!(f, "{collection}: no record with id '{id}'"),
            StoreError::VersionMismatch {
                collection,
                id,
                expected,
                actual,
            } => write!(
                f,
                "{collection}/{id}: expected version {expected:?}, found {actual:?} (changed concurrently)"
            ),
            StoreError::Unique {
                collection,
                field,
                value,
                holder,
            } => {
                write!(f, "{collection}: {field} '{value}' is already held by '{holder}'")
            }
            StoreError::InvalidRecord(msg) => write!(f, "invalid record: {msg}"),
            StoreError::UnknownCollection(name) => write!(f, "unknown collection '{name}'"),
            StoreError::UnknownFilter { collection, field } => {
                write!(f, "{collection} cannot be filtered by '{field}'")
            }
            StoreError::Full(msg) => write!(f, "store is full: {msg}"),
            StoreError::Lmdb(msg) => write!(f, "storage error: {msg}"),
            StoreError::Closed => write!(f, "the store is closed"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => {
                StoreError::Full("the LMDB map size is exhausted; restart with a larger --map-size".into())
            }
            other => StoreError::Lmdb(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A precondition on the current version of the record a write touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    Absent,
    Version(u64),
}

#[derive(Debug, Clone)]
pub enum Op {
    Put {
        coll: &'static CollectionSpec,
        id: String,
        json: Vec<u8>,
        expect: Expect,
    },
    Delete {
        coll: &'static CollectionSpec,
        id: String,
        expect: Expect,
    },
}

impl Op {
    fn collection(&self) -> &'static CollectionSpec {
        match self {
            Op::Put { coll, .. } | Op::Delete { coll, .. } => coll,
        }
    }
}

/// A record as read: the registry index of its last write, and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub json: Vec<u8>,
}

/// An equality filter on an indexed field (or `id`).
pub type Filter = (String, String);

#[derive(Clone, Copy)]
struct Tables {
    records: Database<Bytes, Bytes>,
    index: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
}

/// Called with a write's result once it is durable (or refused), on the writer thread.
pub type Completion = Box<dyn FnOnce(Result<u64>) + Send>;

/// Runs a batch's completions; lets a binding take a lock (e.g. Python's GIL) once per
/// batch instead of once per write.
pub type CompletionRunner = Box<dyn Fn(&mut dyn FnMut()) + Send + Sync>;

/// How the writer thread answers a write.
enum Reply {
    /// A caller blocked in `write`.
    Wait(mpsc::SyncSender<Result<u64>>),
    /// A caller that went on and wants a call back (`submit`).
    Call(Completion),
}

struct Pending {
    ops: Vec<Op>,
    reply: Reply,
}

pub struct Store {
    env: Env<WithoutTls>,
    tables: Tables,
    sender: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    runner: Arc<OnceLock<CompletionRunner>>,
}

impl Store {
    /// Opens (creating if needed) the store in directory `path`. Stale reader slots left by
    /// killed processes are cleared. Open it after any fork, never before.
    pub fn open(path: &Path, map_size: usize) -> Result<Store> {
        std::fs::create_dir_all(path).map_err(|e| StoreError::Lmdb(format!("{}: {e}", path.display())))?;
        // SAFETY: heed requires that the environment is not opened twice in one process
        // (it checks) and that the files are not modified by other means; the server opens
        // one Store per process, after fork.
        let env = unsafe {
            EnvOpenOptions::new()
                .read_txn_without_tls()
                .map_size(map_size)
                .max_readers(512)
                .max_dbs(4)
                .open(path)?
        };
        env.clear_stale_readers()?;
        let mut wtxn = env.write_txn()?;
        let tables = Tables {
            records: env.create_database(&mut wtxn, Some("records"))?,
            index: env.create_database(&mut wtxn, Some("index"))?,
            meta: env.create_database(&mut wtxn, Some("meta"))?,
        };
        wtxn.commit()?;

        let (sender, receiver) = mpsc::channel::<Pending>();
        let writer_env = env.clone();
        let runner = Arc::new(OnceLock::new());
        let writer_runner = Arc::clone(&runner);
        let writer = std::thread::Builder::new()
            .name("registry-store-writer".into())
            .spawn(move || writer_loop(&writer_env, tables, &receiver, &writer_runner))
            .map_err(|e| StoreError::Lmdb(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            env,
            tables,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            runner,
        })
    }

    /// Applies `ops` atomically through the writer thread and returns the registry index
    /// of the write, once it is durable.
    pub fn write(&self, ops: Vec<Op>) -> Result<u64> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(Pending {
            ops,
            reply: Reply::Wait(reply),
        })?;
        answer.recv().map_err(|_| StoreError::Closed)?
    }

    /// Like `write`, without waiting: `done` is called on the writer thread once the write
    /// is durable (or refused). Lets an event loop await writes without a thread per write.
    pub fn submit(&self, ops: Vec<Op>, done: Completion) -> Result<()> {
        self.enqueue(Pending {
            ops,
            reply: Reply::Call(done),
        })
    }

    /// Sets how completions of `submit`ted writes are run (once; later calls are ignored).
    pub fn set_completion_runner(&self, runner: CompletionRunner) {
        let _ = self.runner.set(runner);
    }

    fn enqueue(&self, pending: Pending) -> Result<()> {
        let guard = self.sender.lock().map_err(|_| StoreError::Closed)?;
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        sender.send(pending).map_err(|_| StoreError::Closed)
    }

    pub fn put(&self, coll: &'static CollectionSpec, id: &str, json: Vec<u8>, expect: Expect) -> Result<u64> {
        self.write(vec![Op::Put {
            coll,
            id: id.to_owned(),
            json,
            expect,
        }])
    }

    pub fn delete(&self, coll: &'static CollectionSpec, id: &str, expect: Expect) -> Result<u64> {
        self.write(vec![Op::Delete {
            coll,
            id: id.to_owned(),
            expect,
        }])
    }

    /// Stops the writer thread after it has committed what is pending.
    pub fn close(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    fn read_txn(&self) -> Result<RoTxn<'_, WithoutTls>> {
        Ok(self.env.read_txn()?)
    }

    /// The registry index: the number of writes ever applied.
    pub fn index(&self) -> Result<u64> {
        let rtxn = self.read_txn()?;
        read_u64(&self.tables.meta, &rtxn, META_INDEX)
    }

    /// The registry index of the last write to `coll` (0 if never written).
    pub fn collection_index(&self, coll: &CollectionSpec) -> Result<u64> {
        let rtxn = self.read_txn()?;
        read_u64(&self.tables.meta, &rtxn, &collection_meta_key(coll))
    }

    /// The registry index of the last write that touched partition `value` of `coll`
    /// (e.g. the instances of one slug); 0 if never written.
    pub fn partition_index(&self, coll: &CollectionSpec, value: &str) -> Result<u64> {
        let rtxn = self.read_txn()?;
        read_u64(&self.tables.meta, &rtxn, &partition_meta_key(coll, value))
    }

    pub fn get(&self, coll: &CollectionSpec, id: &str) -> Result<Option<Record>> {
        let rtxn = self.read_txn()?;
        Ok(self.tables.records.get(&rtxn, &coll.record_key(id))?.map(decode_record))
    }

    /// Records of `coll` matching every filter (all records without filters), sorted by id,
    /// with the registry index they were read at.
    pub fn list(&self, coll: &'static CollectionSpec, filters: &[Filter]) -> Result<(u64, Vec<Record>)> {
        let rtxn = self.read_txn()?;
        let index = read_u64(&self.tables.meta, &rtxn, META_INDEX)?;
        let mut out = Vec::new();
        self.for_each_match(&rtxn, coll, filters, |raw| out.push(decode_record(raw)))?;
        Ok((index, out))
    }

    /// The JSON document `{"<key>": [record, ...]}` built from the stored bytes, without
    /// parsing them, plus the registry index it was read at.
    pub fn list_json(&self, coll: &'static CollectionSpec, filters: &[Filter], key: &str) -> Result<(u64, Vec<u8>)> {
        let rtxn = self.read_txn()?;
        let index = read_u64(&self.tables.meta, &rtxn, META_INDEX)?;
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(b"{\"");
        body.extend_from_slice(key.as_bytes());
        body.extend_from_slice(b"\":[");
        let mut first = true;
        self.for_each_match(&rtxn, coll, filters, |raw| {
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(&raw[VERSION_LEN..]);
        })?;
        body.extend_from_slice(b"]}");
        Ok((index, body))
    }

    /// Records of `coll` written after registry index `since`, the index they were read
    /// at, and how many records `coll` holds now (so a reader can tell that some were
    /// deleted). Scans keys and versions only; just the changed records are copied.
    pub fn changes(&self, coll: &'static CollectionSpec, since: u64) -> Result<(u64, Vec<Record>, u64)> {
        let rtxn = self.read_txn()?;
        let index = read_u64(&self.tables.meta, &rtxn, META_INDEX)?;
        let mut changed = Vec::new();
        let mut live = 0u64;
        for entry in self.tables.records.prefix_iter(&rtxn, &coll.record_prefix())? {
            let (_, raw) = entry?;
            live += 1;
            if u64::from_be_bytes(raw[..VERSION_LEN].try_into().expect("8 bytes")) > since {
                changed.push(decode_record(raw));
            }
        }
        Ok((index, changed, live))
    }

    /// Every id in `coll`, sorted.
    pub fn ids(&self, coll: &'static CollectionSpec) -> Result<Vec<String>> {
        let rtxn = self.read_txn()?;
        let prefix = coll.record_prefix();
        let mut ids = Vec::new();
        for entry in self.tables.records.prefix_iter(&rtxn, &prefix)? {
            ids.push(String::from_utf8_lossy(&entry?.0[prefix.len()..]).into_owned());
        }
        Ok(ids)
    }

    /// Ids of the records of `coll` whose indexed `field` equals `value`, sorted.
    pub fn ids_by(&self, coll: &'static CollectionSpec, field: &str, value: &str) -> Result<Vec<String>> {
        let rtxn = self.read_txn()?;
        let ids = self.index_ids(&rtxn, coll, field, value)?;
        Ok(ids
            .into_iter()
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .collect())
    }

    fn index_ids(
        &self,
        rtxn: &RoTxn<'_, WithoutTls>,
        coll: &'static CollectionSpec,
        field: &str,
        value: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let spec = coll.index(field).ok_or_else(|| StoreError::UnknownFilter {
            collection: coll.name,
            field: field.to_owned(),
        })?;
        let prefix = model::index_prefix(coll, spec, value);
        let mut ids = Vec::new();
        for entry in self.tables.index.prefix_iter(rtxn, &prefix)? {
            let (key, _) = entry?;
            ids.push(key[prefix.len()..].to_vec());
        }
        Ok(ids)
    }

    fn for_each_match(
        &self,
        rtxn: &RoTxn<'_, WithoutTls>,
        coll: &'static CollectionSpec,
        filters: &[Filter],
        mut visit: impl FnMut(&[u8]),
    ) -> Result<()> {
        if filters.is_empty() {
            for entry in self.tables.records.prefix_iter(rtxn, &coll.record_prefix())? {
                visit(entry?.1);
            }
            return Ok(());
        }
        let mut candidates: Option<Vec<Vec<u8>>> = None;
        for (field, value) in filters {
            let ids = if field == "id" {
                vec![value.as_bytes().to_vec()]
            } else {
                self.index_ids(rtxn, coll, field, value)?
            };
            candidates = Some(match candidates {
                None => ids,
                Some(current) => intersect_sorted(current, &ids),
            });
            if candidates.as_ref().is_some_and(Vec::is_empty) {
                return Ok(());
            }
        }
        for id in candidates.unwrap_or_default() {
            let mut key = Vec::with_capacity(1 + id.len());
            key.push(coll.tag);
            key.extend_from_slice(&id);
            if let Some(raw) = self.tables.records.get(rtxn, &key)? {
                visit(raw);
            }
        }
        Ok(())
    }

    /// Number of index entries across all collections (used by consistency checks).
    pub fn index_entry_count(&self) -> Result<u64> {
        let rtxn = self.read_txn()?;
        Ok(self.tables.index.len(&rtxn)?)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn intersect_sorted(a: Vec<Vec<u8>>, b: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(a.len().min(b.len()));
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i].clone());
                i += 1;
                j += 1;
            }
        }
    }
    out
}

fn decode_record(raw: &[u8]) -> Record {
    let mut version = [0u8; VERSION_LEN];
    version.copy_from_slice(&raw[..VERSION_LEN]);
    Record {
        version: u64::from_be_bytes(version),
        json: raw[VERSION_LEN..].to_vec(),
    }
}

fn collection_meta_key(coll: &CollectionSpec) -> Vec<u8> {
    let mut key = META_COLLECTION_PREFIX.to_vec();
    key.extend_from_slice(coll.name.as_bytes());
    key
}

fn partition_meta_key(coll: &CollectionSpec, value: &str) -> Vec<u8> {
    let mut key = META_PARTITION_PREFIX.to_vec();
    key.push(coll.tag);
    key.extend_from_slice(value.as_bytes());
    key
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

fn read_u64(meta: &Database<Bytes, Bytes>, rtxn: &RoTxn<'_, WithoutTls>, key: &[u8]) -> Result<u64> {
    Ok(match meta.get(rtxn, key)? {
        Some(raw) if raw.len() == 8 => u64::from_be_bytes(raw.try_into().expect("8 bytes")),
        _ => 0,
    })
}

fn writer_loop(
    env: &Env<WithoutTls>,
    tables: Tables,
    receiver: &mpsc::Receiver<Pending>,
    runner: &OnceLock<CompletionRunner>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let results = commit_batch(env, tables, &batch);
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
fn commit_batch(env: &Env<WithoutTls>, tables: Tables, batch: &[Pending]) -> Vec<Result<u64>> {
    let mut results: Vec<Result<u64>> = Vec::with_capacity(batch.len());
    let outcome = (|| -> Result<()> {
        let mut wtxn = env.write_txn()?;
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
                    for op in &pending.ops {
                        tables
                            .meta
                            .put(&mut wtxn, &collection_meta_key(op.collection()), &next.to_be_bytes())?;
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
fn remove_index_entries(
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
