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
//!
//! The same page carries the notifier every process shares: a sequence that moves after
//! each counted write (and whenever someone calls [`WriteCounts::notify`], such as a gate
//! whose client left a blocking query), and a futex on it. A waiter sleeps in the kernel
//! until the sequence moves ([`WriteCounts::wait_past`]); a writer wakes the waiters of
//! every process, and makes the system call only while someone waits. It replaces the
//! pollers that read the registry index every 500 us (read-your-writes) and every 5 ms
//! (blocking queries); [`ChangeSignal`] hands it to an event loop as a file descriptor.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// The notifier's words after the counts: 0 the sequence (the futex), 1 how many wait.
    fn word(&self, which: usize) -> &AtomicU32 {
        assert!(which < 2);
        // SAFETY: as for `counter`; bytes 16..24 of the page, 4-aligned.
        unsafe { &*self.map.as_ptr().add(16).cast::<AtomicU32>().add(which) }
    }

    /// The replica's freshness, after the notifier's words: 0 whether the store is a
    /// cluster replica (0 or 1), 1 until when (unix ms) it counts as fresh. Set by the
    /// replicator, read by the gates and DNS of every process.
    fn freshness(&self, which: usize) -> &AtomicU64 {
        assert!(which < 2);
        // SAFETY: as for `counter`; bytes 24..40 of the page, 8-aligned.
        unsafe { &*self.map.as_ptr().add(24).cast::<AtomicU64>().add(which) }
    }

    /// Whether the store is a cluster replica (see `set_replica`).
    pub fn is_replica(&self) -> bool {
        self.freshness(0).load(Ordering::Acquire) != 0
    }

    /// Marks the store a cluster replica or not; a server sets it at its start (the file
    /// outlives it: a data dir once a replica may serve alone later).
    pub fn set_replica(&self, replica: bool) {
        self.freshness(0).store(u64::from(replica), Ordering::Release);
    }

    /// Until when (unix ms) the replica counts as fresh.
    pub fn fresh_until(&self) -> u64 {
        self.freshness(1).load(Ordering::Acquire)
    }

    /// Marks the store a replica, fresh until `unix_ms`.
    pub fn set_fresh_until(&self, unix_ms: u64) {
        self.freshness(1).store(unix_ms, Ordering::Release);
        self.set_replica(true);
    }

    /// Where the notifier stands: pass it to `wait_past`.
    pub fn sequence(&self) -> u32 {
        self.word(0).load(Ordering::SeqCst)
    }

    /// Moves the sequence and wakes whoever waits on it, in every process.
    pub fn notify(&self) {
        self.word(0).fetch_add(1, Ordering::SeqCst);
        if self.word(1).load(Ordering::SeqCst) > 0 {
            futex(self.word(0), libc::FUTEX_WAKE, i32::MAX as u32, None);
        }
    }

    /// Waits until the sequence is no longer `seen`, at most `timeout`; returns where it
    /// stands then.
    pub fn wait_past(&self, seen: u32, timeout: Duration) -> u32 {
        let waiters = self.word(1);
        waiters.fetch_add(1, Ordering::SeqCst);
        // Counted as waiting before the sequence is read: a notify after that read sees
        // the count and makes the call (or the kernel finds the value moved).
        let deadline = std::time::Instant::now() + timeout;
        let mut now = self.sequence();
        while now == seen {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            futex(self.word(0), libc::FUTEX_WAIT, seen, Some(left));
            now = self.sequence();
        }
        waiters.fetch_sub(1, Ordering::SeqCst);
        now
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
        self.0.notify();
    }
}

/// The futex system call on a word of the shared page (not FUTEX_PRIVATE: the waiters
/// and the wakers are other processes too). Errors (EAGAIN: the value moved; ETIMEDOUT;
/// EINTR) all mean "look again", which every caller does.
fn futex(word: &AtomicU32, op: libc::c_int, value: u32, timeout: Option<Duration>) {
    let spec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let spec_ptr = spec.as_ref().map_or(std::ptr::null(), |s| s as *const libc::timespec);
    // SAFETY: `word` is a live, 4-aligned u32 in a shared mapping; the timespec outlives
    // the call; FUTEX_WAIT and FUTEX_WAKE read nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op,
            value,
            spec_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// The notifier as a file descriptor an event loop can watch (an eventfd): readable once
/// the store's sequence moved since the last `clear`. One thread per signal waits on the
/// futex and writes the eventfd; it ends within `POLL_STOP` of `close`.
pub struct ChangeSignal {
    fd: libc::c_int,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often the signal's thread looks whether it should stop.
const POLL_STOP: Duration = Duration::from_millis(200);

impl ChangeSignal {
    pub fn start(counts: Arc<WriteCounts>) -> std::io::Result<ChangeSignal> {
        // SAFETY: plain system call; the descriptor is owned by the signal from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("registry-changes".into())
            .spawn(move || {
                let mut seen = counts.sequence();
                while !thread_stop.load(Ordering::Relaxed) {
                    let now = counts.wait_past(seen, POLL_STOP);
                    if now != seen {
                        seen = now;
                        let one: u64 = 1;
                        // SAFETY: writes 8 bytes from a live u64 to our eventfd (a full
                        // counter, EAGAIN, only means it is readable already).
                        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
                    }
                }
            });
        match spawned {
            Ok(thread) => Ok(ChangeSignal {
                fd,
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                // SAFETY: our descriptor, not handed out.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    pub fn fd(&self) -> libc::c_int {
        self.fd
    }

    /// Makes the descriptor unreadable until the next move; whether it was readable.
    pub fn clear(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64 from our (non-blocking) eventfd.
        unsafe { libc::read(self.fd, std::ptr::addr_of_mut!(value).cast(), 8) == 8 }
    }

    /// Stops the thread and closes the descriptor.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            // SAFETY: our descriptor; the thread that wrote it has ended.
            unsafe { libc::close(self.fd) };
        }
    }
}

impl Drop for ChangeSignal {
    fn drop(&mut self) {
        self.close();
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
        // Another opener's waiter wakes when a write is counted here.
        let seen = one.sequence();
        let waiter = {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let counts = WriteCounts::open(&dir).unwrap();
                counts.wait_past(seen, Duration::from_secs(30))
            })
        };
        while two.word(1).load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        drop(Counted::new(&two));
        assert_ne!(waiter.join().unwrap(), seen);
        // With nothing moving, a wait ends at its timeout.
        let still = one.sequence();
        assert_eq!(one.wait_past(still, Duration::from_millis(20)), still);
        // Freshness set by one opener is what every other reads.
        assert!(!two.is_replica());
        one.set_fresh_until(1234);
        assert!(two.is_replica());
        assert_eq!(two.fresh_until(), 1234);
        two.set_replica(false);
        assert!(!one.is_replica());
        // A shorter file (another layout) is grown, not refused.
        drop((one, two));
        std::fs::write(dir.path().join("write-counts"), [0u8; 8]).unwrap();
        assert_eq!(WriteCounts::open(dir.path()).unwrap().settled(), Some(0));
    }
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    fn readable(fd: libc::c_int, within: Duration) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&mut poll, 1, within.as_millis() as libc::c_int) == 1 }
    }

    #[test]
    fn the_descriptor_is_readable_after_a_write_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let counts = Arc::new(WriteCounts::open(dir.path()).unwrap());
        let mut signal = ChangeSignal::start(Arc::clone(&counts)).unwrap();
        assert!(!readable(signal.fd(), Duration::from_millis(50)));
        drop(Counted::new(&counts));
        assert!(readable(signal.fd(), Duration::from_secs(10)));
        assert!(signal.clear());
        assert!(!signal.clear());
        counts.notify(); // a gate's notice moves it too
        assert!(readable(signal.fd(), Duration::from_secs(10)));
        signal.close();
    }
}
