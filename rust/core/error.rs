//! The store's errors: values a caller can act on, mapped to Python exceptions (and from
//! there to HTTP statuses) in one place each.

use std::fmt;

use heed::MdbError;

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
    /// The collection was written since the caller read it (a guarded write refused).
    CollectionChanged {
        collection: &'static str,
        expected: u64,
        actual: u64,
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
    /// The source of truth (etcd, in cluster mode) did not take or did not confirm the
    /// write; the message says which, and whether it may have been applied.
    Unavailable(String),
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
            StoreError::CollectionChanged {
                collection,
                expected,
                actual,
            } => write!(
                f,
                "{collection}: expected collection index {expected}, found {actual} (changed concurrently)"
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
            StoreError::Unavailable(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Mdb(MdbError::MapFull) => {
                StoreError::Full("the LMDB map size is exhausted; restart with a larger --map-size-mib".into())
            }
            other => StoreError::Lmdb(other.to_string()),
        }
    }
}
