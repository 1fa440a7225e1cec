//! One write API whatever the backend. Every write the registry makes (a handler's, the
//! health checker's, the node agent's, an import's) is a [`Write`] given to the process's
//! [`WriteBackend`]: [`Local`], the store's own writer thread with its group commit, or
//! `etcd::writes::EtcdWrites`, one etcd txn per write, answered once this process's replica
//! applied it. Python calls `Store.put`/`put_many`/`delete`/`put_nowait` and never learns
//! which; a write method added later goes through this trait or does not exist.

use std::sync::Arc;

use crate::core::apply::Completion;
use crate::core::model::CollectionSpec;
use crate::core::record::{Expect, Op, Result};
use crate::core::store::Store;

#[derive(Debug, Clone)]
pub enum Write {
    Put {
        coll: &'static CollectionSpec,
        id: String,
        json: Vec<u8>,
        expect: Expect,
    },
    /// Records of one collection, all or nothing.
    PutMany {
        coll: &'static CollectionSpec,
        items: Vec<(String, Vec<u8>)>,
    },
    /// With `collection_index`: only if nothing in the collection was written after it
    /// (the last admin token is never deleted by two requests at once).
    Delete {
        coll: &'static CollectionSpec,
        id: String,
        expect: Expect,
        collection_index: Option<u64>,
    },
}

pub trait WriteBackend: Send + Sync {
    /// Applies `write`; returns the index at which this process's store shows it (the
    /// registry index, or in cluster mode etcd's revision).
    fn write(&self, store: &Store, write: Write) -> Result<u64>;
    /// `write` without blocking the caller: `done` is called from another thread with
    /// what `write` would have returned.
    fn submit(self: Arc<Self>, store: Arc<Store>, write: Write, done: Completion) -> Result<()>;
    /// "local" or "etcd": what `/health` and the metrics say.
    fn name(&self) -> &'static str;
}

/// The single-machine backend: the store's writer thread (group commit, fsync).
pub struct Local;

impl Local {
    fn ops(write: Write) -> Vec<Op> {
        match write {
            Write::Put { coll, id, json, expect } => vec![Op::Put { coll, id, json, expect }],
            Write::PutMany { coll, items } => items
                .into_iter()
                .map(|(id, json)| Op::Put {
                    coll,
                    id,
                    json,
                    expect: Expect::Any,
                })
                .collect(),
            Write::Delete {
                coll,
                id,
                expect,
                collection_index,
            } => {
                let mut ops = Vec::with_capacity(2);
                if let Some(collection_index) = collection_index {
                    ops.push(Op::Guard { coll, collection_index });
                }
                ops.push(Op::Delete { coll, id, expect });
                ops
            }
        }
    }
}

impl WriteBackend for Local {
    fn write(&self, store: &Store, write: Write) -> Result<u64> {
        store.write(Local::ops(write))
    }

    fn submit(self: Arc<Self>, store: Arc<Store>, write: Write, done: Completion) -> Result<()> {
        store.submit(Local::ops(write), done)
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
