//! The registry store: records as JSON bytes in LMDB (via heed), secondary indexes kept in
//! the same transaction as the records, and the reads. Every write of a record goes
//! through the apply path in `apply.rs` ([`Store::write`], [`Store::submit`]); a replica's
//! batches (`apply_replica`) and the small state values (`set_state`) commit on the
//! caller's thread. Several processes may open the same directory: LMDB serializes their
//! writers.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heed::{Env, EnvOpenOptions, RoTxn, WithoutTls};

use crate::core::apply::{writer_loop, Pending, Reply};
pub use crate::core::apply::{Completion, CompletionRunner, WriterStats};
pub use crate::core::error::StoreError;
use crate::core::keys::{
    collection_meta_key, partition_meta_key, read_u64, state_key, Tables, META_INDEX, VERSION_LEN,
};
use crate::core::model::{self, CollectionSpec};
pub(crate) use crate::core::record::decode_record;
pub use crate::core::record::{Expect, Op, Record, Result};
use crate::core::replica::{self, ReplicaChange};
use crate::core::wait::IndexWaiter;
use crate::core::write_counts::{Counted, WriteCounts};

/// An equality filter on an indexed field (or `id`).
pub type Filter = (String, String);

pub struct Store {
    env: Env<WithoutTls>,
    tables: Tables,
    sender: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    runner: Arc<OnceLock<CompletionRunner>>,
    waiter: Arc<IndexWaiter>,
    stats: Arc<WriterStats>,
    /// Write transactions begun and done, over every process of the store (`write_counts.rs`).
    write_counts: Arc<WriteCounts>,
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
        let write_counts = Arc::new(
            WriteCounts::open(path).map_err(|e| StoreError::Lmdb(format!("{}/write-counts: {e}", path.display())))?,
        );

        let (sender, receiver) = mpsc::channel::<Pending>();
        let writer_env = env.clone();
        let runner = Arc::new(OnceLock::new());
        let writer_runner = Arc::clone(&runner);
        let stats = Arc::new(WriterStats::default());
        let writer_stats = Arc::clone(&stats);
        let writer_counts = Arc::clone(&write_counts);
        let writer = std::thread::Builder::new()
            .name("registry-store-writer".into())
            .spawn(move || {
                writer_loop(
                    &writer_env,
                    tables,
                    &receiver,
                    &writer_runner,
                    &writer_stats,
                    &writer_counts,
                )
            })
            .map_err(|e| StoreError::Lmdb(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            env,
            tables,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            runner,
            waiter: Arc::new(IndexWaiter::default()),
            stats,
            write_counts,
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

    /// Stops the writer thread after it has committed what is pending, and waits for it.
    /// A caller holding a lock that completions take (Python's GIL) must release it first.
    pub fn close(&self) {
        self.stop_writer();
        if let Some(handle) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = handle.join();
        }
    }

    /// Tells the writer thread to stop once what is pending is committed, without waiting.
    fn stop_writer(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
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

    /// The write counts every process of the store shares: what cached reads compare.
    pub fn write_counts(&self) -> &Arc<WriteCounts> {
        &self.write_counts
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
        let (scanned, indexed): (Vec<&Filter>, Vec<&Filter>) = filters
            .iter()
            .partition(|(field, _)| coll.scanned.contains(&field.as_str()));
        let mut matches = |raw: &[u8]| {
            if scanned.is_empty() || scanned_match(&raw[VERSION_LEN..], &scanned) {
                visit(raw);
            }
        };
        if indexed.is_empty() {
            for entry in self.tables.records.prefix_iter(rtxn, &coll.record_prefix())? {
                matches(entry?.1);
            }
            return Ok(());
        }
        let mut candidates: Option<Vec<Vec<u8>>> = None;
        for (field, value) in indexed {
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
                matches(raw);
            }
        }
        Ok(())
    }

    /// Applies changes committed in etcd (cluster mode) in one transaction, and records
    /// that the replica has reached revision `applied`. See `replica.rs`.
    pub fn apply_replica(&self, changes: &[ReplicaChange], applied: u64, mode: replica::Mode) -> Result<()> {
        self.write_counts.set_replica(true);
        let mut wtxn = self.env.write_txn()?;
        let _counted = Counted::new(&self.write_counts);
        replica::apply(self.tables, &mut wtxn, changes, applied, mode)?;
        wtxn.commit()?;
        Ok(())
    }

    /// (id, version) of every record of `coll`, sorted by id: what a replica compares with
    /// etcd's keys and mod revisions.
    pub fn versions(&self, coll: &'static CollectionSpec) -> Result<Vec<(String, u64)>> {
        let rtxn = self.read_txn()?;
        let prefix = coll.record_prefix();
        let mut out = Vec::new();
        for entry in self.tables.records.prefix_iter(&rtxn, &prefix)? {
            let (key, raw) = entry?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            out.push((id, decode_record(raw).version));
        }
        Ok(out)
    }

    /// Waits until the registry index is at least `revision`, at most `timeout`; returns
    /// whether it got there.
    pub fn wait_index(&self, revision: u64, timeout: Duration) -> Result<bool> {
        if self.index()? >= revision {
            return Ok(true);
        }
        self.waiter.wait(
            &self.env,
            self.tables.meta,
            &self.write_counts,
            revision,
            Instant::now() + timeout,
        )
    }

    /// (writes, group-commit batches) this process's writer committed.
    pub fn writer_stats(&self) -> (u64, u64) {
        (
            self.stats.writes.load(Ordering::Relaxed),
            self.stats.batches.load(Ordering::Relaxed),
        )
    }

    /// Whether the store is a cluster replica: fed from etcd by the replicator of this
    /// server (in whichever process), in the shared page (`write_counts.rs`).
    pub fn is_replica(&self) -> bool {
        self.write_counts.is_replica()
    }

    /// Until when (unix ms) the replica counts as fresh: set by the replicator at each
    /// contact with etcd, read by the gates and DNS of every process of the server.
    pub fn fresh_until(&self) -> u64 {
        self.write_counts.fresh_until()
    }

    /// Marks the store a cluster replica, fresh until `unix_ms`, for every process.
    pub fn set_fresh_until(&self, unix_ms: u64) {
        self.write_counts.set_fresh_until(unix_ms);
    }

    /// Marks the store as no cluster's replica (a server started without etcd: the page
    /// may say otherwise from an earlier run).
    pub fn forget_replica(&self) {
        self.write_counts.set_replica(false);
    }

    /// A small state value kept beside the records (e.g. the replica's etcd contact), by
    /// name; written outside the registry's revisions, so it wakes no watcher.
    pub fn state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let rtxn = self.read_txn()?;
        Ok(self.tables.meta.get(&rtxn, &state_key(name))?.map(<[u8]>::to_vec))
    }

    /// Sets a state value (see `state`), durably.
    pub fn set_state(&self, name: &str, value: &[u8]) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        let _counted = Counted::new(&self.write_counts);
        self.tables.meta.put(&mut wtxn, &state_key(name), value)?;
        wtxn.commit()?;
        Ok(())
    }

    /// Number of index entries across all collections (used by consistency checks).
    pub fn index_entry_count(&self) -> Result<u64> {
        let rtxn = self.read_txn()?;
        Ok(self.tables.index.len(&rtxn)?)
    }
}

impl Drop for Store {
    /// Does not wait for the writer: it may be about to run completions that need a lock
    /// the dropping thread holds (the GIL). It owns its own handle on the environment,
    /// commits what is pending and exits.
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// Whether the record's top-level string fields equal every scanned filter.
fn scanned_match(json: &[u8], filters: &[&Filter]) -> bool {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return false;
    };
    filters
        .iter()
        .all(|(field, wanted)| value.get(field).and_then(serde_json::Value::as_str) == Some(wanted.as_str()))
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
