//! The LMDB side of a cluster replica: applying what etcd says, at etcd's revisions.
//!
//! In cluster mode etcd is the source of truth and this store is a local copy fed by the
//! replicator (Python, `replica.py`: list at a revision, then watch). Each batch of changes
//! (one watch response, or a whole relist) is applied here in one LMDB transaction that
//! also stores the revision the replica has reached, so a crash leaves the copy at a
//! revision it fully reflects. A record's version is its etcd `mod_revision`, and the
//! collection and partition indexes move to the revision of the change, exactly as the
//! local apply path moves them, so caches, blocking queries and selection work unchanged.
//!
//! No precondition or unique check runs here: etcd already enforced them (guard keys in the
//! same txn), and a replica must take whatever committed history says.

use heed::RwTxn;

use crate::core::apply::remove_index_entries;
use crate::core::error::StoreError;
use crate::core::keys::{collection_meta_key, partition_meta_key, read_u64, Tables, META_INDEX, VERSION_LEN};
use crate::core::model::{self, CollectionSpec};
use crate::core::record::{decode_record, Result};

/// One committed change, as etcd reported it.
#[derive(Debug, Clone)]
pub struct ReplicaChange {
    pub coll: &'static CollectionSpec,
    pub id: String,
    /// The record's JSON; None for a delete.
    pub json: Option<Vec<u8>>,
    /// The etcd revision of the change (the record's `mod_revision`, or the delete's).
    pub revision: u64,
}

/// How a batch of changes relates to what the replica holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Watch events: a change at or below the revision a record is already at is skipped
    /// (a duplicated or replayed event), so applying a batch twice changes nothing.
    Events,
    /// etcd's own state, read at a revision (a relist, an anti-entropy repair): applied as
    /// given, whatever the local copy says.
    Exact,
}

/// Applies `changes` in order and sets the applied revision to `applied`, in `txn`.
pub(crate) fn apply(
    tables: Tables,
    txn: &mut RwTxn<'_>,
    changes: &[ReplicaChange],
    applied: u64,
    mode: Mode,
) -> Result<()> {
    for change in changes {
        let key = change.coll.record_key(&change.id);
        let old = tables.records.get(txn, &key)?.map(decode_record);
        match (&old, &change.json) {
            // A replayed or duplicated event: the record is already at or past it.
            (Some(old), _) if mode == Mode::Events && old.version >= change.revision => continue,
            (None, None) => continue,
            _ => {}
        }
        if let Some(old) = &old {
            let old_keys = remove_index_entries(tables, txn, change.coll, &change.id, &old.json)?;
            bump(
                tables,
                txn,
                change.coll,
                old_keys.partition(change.coll),
                change.revision,
            )?;
        }
        match &change.json {
            Some(json) => {
                let keys = model::record_keys(change.coll, &change.id, json).map_err(StoreError::InvalidRecord)?;
                bump(tables, txn, change.coll, keys.partition(change.coll), change.revision)?;
                for (spec, value) in &keys.entries {
                    let mut entry = model::index_prefix(change.coll, spec, value);
                    entry.extend_from_slice(change.id.as_bytes());
                    tables.index.put(txn, &entry, &[])?;
                }
                let mut stored = Vec::with_capacity(VERSION_LEN + json.len());
                stored.extend_from_slice(&change.revision.to_be_bytes());
                stored.extend_from_slice(json);
                tables.records.put(txn, &key, &stored)?;
            }
            None => {
                tables.records.delete(txn, &key)?;
            }
        }
        let coll_key = collection_meta_key(change.coll);
        let current = read_u64(&tables.meta, txn, &coll_key)?;
        tables
            .meta
            .put(txn, &coll_key, &current.max(change.revision).to_be_bytes())?;
    }
    let current = read_u64(&tables.meta, txn, META_INDEX)?;
    tables.meta.put(txn, META_INDEX, &current.max(applied).to_be_bytes())?;
    Ok(())
}

fn bump(tables: Tables, txn: &mut RwTxn<'_>, coll: &CollectionSpec, value: Option<&str>, revision: u64) -> Result<()> {
    if let Some(value) = value {
        let key = partition_meta_key(coll, value);
        let current = read_u64(&tables.meta, txn, &key)?;
        tables.meta.put(txn, &key, &current.max(revision).to_be_bytes())?;
    }
    Ok(())
}
