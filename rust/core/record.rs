//! A record and the operations that write one: the values the store, the apply path
//! (`apply.rs`) and the replica (`replica.rs`) all speak, kept apart from each so that none
//! of them needs another for its vocabulary.

use crate::core::error::StoreError;
use crate::core::keys::VERSION_LEN;
use crate::core::model::CollectionSpec;

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
    /// Writes nothing; refuses the whole write unless the collection index of `coll` is
    /// still `collection_index`. Makes a decision over a whole collection (e.g. "another
    /// admin token remains") hold at commit time.
    Guard {
        coll: &'static CollectionSpec,
        collection_index: u64,
    },
}

impl Op {
    /// The collection the operation writes to, if it writes.
    pub(crate) fn written_collection(&self) -> Option<&'static CollectionSpec> {
        match self {
            Op::Put { coll, .. } | Op::Delete { coll, .. } => Some(coll),
            Op::Guard { .. } => None,
        }
    }
}

/// A record as read: the registry index of its last write, and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub json: Vec<u8>,
}

/// A stored value as a record: its version (big-endian, `VERSION_LEN` bytes), then the JSON.
pub(crate) fn decode_record(raw: &[u8]) -> Record {
    let mut version = [0u8; VERSION_LEN];
    version.copy_from_slice(&raw[..VERSION_LEN]);
    Record {
        version: u64::from_be_bytes(version),
        json: raw[VERSION_LEN..].to_vec(),
    }
}
