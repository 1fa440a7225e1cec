//! Threads waiting for the registry index to reach a revision (a cluster write waits for
//! its replica; the replicator may live in another process). One thread per store, started
//! while anyone waits, reads the index whenever the store's shared notifier moves
//! (`write_counts.rs`: every counted write, in any process, moves it) and wakes the
//! waiters; a waiter holds no lock of the caller (no GIL).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, WithoutTls};

use crate::core::error::StoreError;
use crate::core::keys::{read_u64, META_INDEX};
use crate::core::write_counts::WriteCounts;

/// The longest the thread sleeps without looking (a writer killed before it notified).
const WAIT_FALLBACK: Duration = Duration::from_millis(100);

/// The waiters of one store, and its poller's state.
#[derive(Default)]
pub(crate) struct IndexWaiter {
    state: Mutex<WaitState>,
    changed: Condvar,
}

#[derive(Default)]
struct WaitState {
    waiting: usize,
    polling: bool,
    seen: u64,
}

impl IndexWaiter {
    /// Waits until the index in `meta` is at least `revision`, or `deadline`; whether it
    /// got there. Starts the poller when none runs; a poller that cannot start leaves no
    /// waiter or poller counted behind (the next wait tries again).
    pub(crate) fn wait(
        self: &Arc<Self>,
        env: &Env<WithoutTls>,
        meta: Database<Bytes, Bytes>,
        counts: &Arc<WriteCounts>,
        revision: u64,
        deadline: Instant,
    ) -> Result<bool, StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Closed)?;
        if !state.polling {
            let (env, shared, counts) = (env.clone(), Arc::clone(self), Arc::clone(counts));
            std::thread::Builder::new()
                .name("registry-index-wait".into())
                .spawn(move || follow_index(&env, meta, &shared, &counts))
                .map_err(|e| StoreError::Lmdb(format!("cannot start the index waiter: {e}")))?;
            state.polling = true;
        }
        state.waiting += 1;
        let reached = loop {
            if state.seen >= revision {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map_err(|_| StoreError::Closed)?
                .0;
        };
        state.waiting -= 1;
        Ok(reached)
    }
}

fn follow_index(env: &Env<WithoutTls>, meta: Database<Bytes, Bytes>, waiter: &IndexWaiter, counts: &WriteCounts) {
    loop {
        // Taken before the index is read: a write after the read moves it.
        let moved = counts.sequence();
        let index = env
            .read_txn()
            .ok()
            .and_then(|rtxn| read_u64(&meta, &rtxn, META_INDEX).ok());
        let Ok(mut state) = waiter.state.lock() else {
            return;
        };
        if let Some(index) = index {
            if index != state.seen {
                state.seen = index;
                waiter.changed.notify_all();
            }
        }
        if state.waiting == 0 {
            state.polling = false;
            return;
        }
        drop(state);
        counts.wait_past(moved, WAIT_FALLBACK);
    }
}
