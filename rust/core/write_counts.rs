//! The store's write counts in shared memory: how many write transactions began and how
//! many finished, over every process that opens the store (the file `write-counts` beside
//! LMDB's own). Readers that cache what they read (the response cache, the selector's
//! candidates, the token cache) compare the counts instead of opening an LMDB read
//! transaction per request: while no write began since an entry was last confirmed
//! against LMDB, it is still what LMDB holds.
//!
//! A writer counts `begun` once it holds LMDB's write lock and before it commits, and
//! `done` after the commit returned. A reader loads `done`, then `begun`: equal, no write
//! was between the two counts when `done` was loaded, so every commit that began until
//! then is visible to a read transaction started afterwards ([`WriteCounts::settled`]). An
//! entry confirmed by such a transaction is current while the counts stay at that value.
//! A process killed between its commit and its `done` leaves the counts unequal: readers
//! then confirm against LMDB on every read, as they did before this file existed, until
//! the store's directory is opened by a process that finds no other one using it.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// The file's length: one page (two counters are used).
const FILE_BYTES: u64 = 4096;

/// The counts, mapped from the store directory's `write-counts` file.
pub struct WriteCounts {
    map: memmap2::MmapMut,
}

impl WriteCounts {
    /// Maps `dir/write-counts`, creating it (zeroed) when missing. The file only grows: a zeroed
    /// page is a valid state (no write counted).
    pub fn open(dir: &Path) -> std::io::Result<WriteCounts> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("write-counts"))?;
        if file.metadata()?.len() < FILE_BYTES {
            file.set_len(FILE_BYTES)?;
        }
        // SAFETY: the file is in the store's directory (the data dir is 0700), at least
        // FILE_BYTES long and never shrunk by us, and only ever accessed through atomics
        // (page-aligned, so the two u64s are aligned), by this and the other processes
        // that open the store.
        let map = unsafe { memmap2::MmapOptions::new().len(FILE_BYTES as usize).map_mut(&file)? };
        Ok(WriteCounts { map })
    }

    fn counter(&self, which: usize) -> &AtomicU64 {
        assert!(which < 2);
        // SAFETY: the map is page-aligned and FILE_BYTES long; AtomicU64 has u64's layout,
        // and the counters are only accessed atomically.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>().add(which) }
    }

    /// Counts a write transaction that is about to commit (call it holding the write lock).
    pub fn begin(&self) {
        self.counter(0).fetch_add(1, Ordering::SeqCst);
    }

    /// Counts a write transaction that committed (or was given up).
    pub fn end(&self) {
        self.counter(1).fetch_add(1, Ordering::SeqCst);
    }

    /// The count of writes when none is under way, or None while one is: take it before
    /// a read that confirms a cached entry, and keep it with the entry.
    pub fn settled(&self) -> Option<u64> {
        let done = self.counter(1).load(Ordering::SeqCst);
        let begun = self.counter(0).load(Ordering::SeqCst);
        (begun == done).then_some(done)
    }

    /// Whether no write began since `seen` was taken by `settled` (u64::MAX: never).
    pub fn unchanged_since(&self, seen: u64) -> bool {
        seen != u64::MAX && self.settled() == Some(seen)
    }

    /// Makes the counts equal again after a process died between a commit and its count:
    /// only for a caller that knows no other process has the store open.
    pub fn settle(&self) {
        let begun = self.counter(0).load(Ordering::SeqCst);
        self.counter(1).store(begun, Ordering::SeqCst);
    }
}

/// Counts one write transaction in `counts` for as long as it is held: begun when made,
/// done when dropped (after the commit, or when the transaction is given up).
pub(crate) struct Counted<'c>(&'c WriteCounts);

impl<'c> Counted<'c> {
    pub(crate) fn new(counts: &'c WriteCounts) -> Counted<'c> {
        counts.begin();
        Counted(counts)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_settled_only_between_writes_and_seen_by_every_opener() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (
            WriteCounts::open(dir.path()).unwrap(),
            WriteCounts::open(dir.path()).unwrap(),
        );
        assert_eq!(one.settled(), Some(0));
        let seen = one.settled().unwrap();
        assert!(two.unchanged_since(seen));
        {
            let _write = Counted::new(&two);
            assert_eq!(one.settled(), None, "a write under way is never settled");
            assert!(!one.unchanged_since(seen));
        }
        assert_eq!(one.settled(), Some(1));
        assert!(!one.unchanged_since(seen));
        assert!(!one.unchanged_since(u64::MAX));
        // A writer that never counted its end (killed) leaves them unsettled until settle.
        two.begin();
        assert_eq!(one.settled(), None);
        one.settle();
        assert_eq!(two.settled(), Some(2));
        // A shorter file (another layout) is grown, not refused.
        drop((one, two));
        std::fs::write(dir.path().join("write-counts"), [0u8; 8]).unwrap();
        assert_eq!(WriteCounts::open(dir.path()).unwrap().settled(), Some(0));
    }
}
