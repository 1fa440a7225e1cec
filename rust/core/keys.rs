//! The store's keys and tables: the LMDB databases, the meta keys of the registry index,
//! of each collection and each partition (a slug's instances), and the state keys. A leaf
//! module, so that the store, its apply path and the replica share them without going
//! through one another.

use heed::types::Bytes;
use heed::{Database, RoTxn, WithoutTls};

use crate::core::error::StoreError;
use crate::core::model::CollectionSpec;

pub(crate) const META_INDEX: &[u8] = b"index";
const META_COLLECTION_PREFIX: &[u8] = b"collection-index:";
const META_PARTITION_PREFIX: &[u8] = b"partition-index:";
const META_STATE_PREFIX: &[u8] = b"state:";
pub(crate) const VERSION_LEN: usize = 8;

#[derive(Clone, Copy)]
pub(crate) struct Tables {
    pub(crate) records: Database<Bytes, Bytes>,
    pub(crate) index: Database<Bytes, Bytes>,
    pub(crate) meta: Database<Bytes, Bytes>,
}

pub(crate) fn state_key(name: &str) -> Vec<u8> {
    let mut key = META_STATE_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn collection_meta_key(coll: &CollectionSpec) -> Vec<u8> {
    let mut key = META_COLLECTION_PREFIX.to_vec();
    key.extend_from_slice(coll.name.as_bytes());
    key
}

pub(crate) fn partition_meta_key(coll: &CollectionSpec, value: &str) -> Vec<u8> {
    let mut key = META_PARTITION_PREFIX.to_vec();
    key.push(coll.tag);
    key.extend_from_slice(value.as_bytes());
    key
}

pub(crate) fn read_u64(
    meta: &Database<Bytes, Bytes>,
    rtxn: &RoTxn<'_, WithoutTls>,
    key: &[u8],
) -> Result<u64, StoreError> {
    Ok(match meta.get(rtxn, key)? {
        Some(raw) if raw.len() == 8 => u64::from_be_bytes(raw.try_into().expect("8 bytes")),
        _ => 0,
    })
}
