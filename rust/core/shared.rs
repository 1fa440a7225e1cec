//! Load-balancing state shared by every process of a server: per instance, the requests in
//! flight (least-request) and the outlier-ejection record, in a memory-mapped file that each
//! process maps (`MAP_SHARED`), so a process's failures eject an instance for all of them,
//! and a least-request pick sees the requests the other processes have in flight.
//!
//! The file is a fixed table of slots addressed by a hash of the instance id (open
//! addressing, linear probing over a short window). Every field is an atomic; a slot is
//! claimed by a compare-and-swap of its key, and kept. When the window is full, a slot that
//! holds nothing (no request in flight, no failures, never ejected) is taken over; when
//! none is, the instance goes untracked (counted as idle and never ejected) rather than
//! blocking a pick. A slot's key and its count of requests in flight share one word: a
//! count is added only while the key is still the instance's, and a takeover happens only
//! while the count is zero, each by one compare-and-swap, so a count can never land on the
//! slot's next owner nor be left behind when its request ends (review finding 15). Times are CLOCK_MONOTONIC milliseconds, which every process of the
//! machine shares. Without a file (tests, an in-process store) the same table lives on the
//! heap and is private to the process.
//!
//! In-flight counts belong to the process that began them: after the slots, a table of
//! process ids (a process claims an entry at its first count) and, per entry, a column of
//! that process's counts beside the sums the picks read. When a process dies mid-request
//! (a crashed worker), `reap_dead` takes its column out of the sums, so a least-request
//! pick does not shun an instance for requests nobody is waiting on any more.
//!
//! Last, a ring of abandoned blocking queries: a gate whose client went away while the
//! workers held its `?index=` query writes the query's id there, and the worker holding
//! it drops the waiter (Robyn does not tell a handler that its connection closed).

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::core::hash::{fnv1a64, mix64};

const MAGIC: u64 = 0x7273_765f_6c62_0003; // "rsv_lb" v3: key and count in one word
const SLOTS: usize = 1 << 15;
const PROBES: usize = 32;
const HEADER_BYTES: usize = 64;
/// Processes whose counts are kept apart; a process past them counts in the sums only
/// (its counts are then not reaped if it dies).
pub const PROCESSES: usize = 64;

/// Bits of a slot's `held` word that count requests in flight (the rest is the key).
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

/// The key of `id` in a slot's `held` word: 40 bits of its hash, mixed (FNV-1a alone
/// spreads ids that differ in their last bytes poorly over the middle bits), odd (0 is a
/// free slot).
fn key_of(id: &str) -> u64 {
    (mix64(fnv1a64(id.as_bytes())) >> COUNT_BITS) | 1
}

fn key_in(held: u64) -> u64 {
    held >> COUNT_BITS
}

fn count_in(held: u64) -> u64 {
    held & COUNT_MASK
}

/// One instance's shared record.
#[repr(C)]
pub struct Slot {
    /// The key (`key_of`, high 40 bits; 0 = free) and the requests in flight to the
    /// instance over every process (low 24 bits).
    held: AtomicU64,
    /// Ejected until this CLOCK_MONOTONIC millisecond (0 = never ejected).
    until_ms: AtomicU64,
    _spare: AtomicU32,
    failures: AtomicU32,
    successes: AtomicU32,
    ejections: AtomicU32,
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    slots: AtomicU64,
    /// The latest `until_ms` of any ejection: while it is past, nothing is ejected and a
    /// pick skips every per-instance lookup.
    latest_until_ms: AtomicU64,
}

enum Region {
    File(memmap2::MmapMut),
    Heap(Vec<AtomicU64>),
}

/// The table, mapped from a file or private.
pub struct SharedState {
    region: Region,
    /// This process's entry in the process table (None: none was free).
    column: OnceLock<Option<usize>>,
}

const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
const PIDS_OFFSET: usize = HEADER_BYTES + SLOTS * SLOT_BYTES;
const COLUMNS_OFFSET: usize = PIDS_OFFSET + PROCESSES * 8;
const CANCELLED_OFFSET: usize = COLUMNS_OFFSET + PROCESSES * SLOTS * 4;
/// Abandoned queries remembered; a worker that falls further behind than this (it looks
/// every few milliseconds while it holds queries) lets the rest run out their wait.
const CANCELLED: usize = 4096;
const TABLE_BYTES: usize = CANCELLED_OFFSET + 8 + CANCELLED * 8;

impl SharedState {
    /// A table private to this process.
    pub fn private() -> SharedState {
        let words = (0..PIDS_OFFSET / 8).map(|_| AtomicU64::new(0)).collect();
        let state = SharedState {
            region: Region::Heap(words),
            column: OnceLock::new(),
        };
        state.init();
        state
    }

    fn init(&self) {
        let header = self.header();
        header.slots.store(SLOTS as u64, Ordering::Release);
        header.magic.store(MAGIC, Ordering::Release);
    }

    fn base(&self) -> *const u8 {
        match &self.region {
            Region::File(map) => map.as_ptr(),
            Region::Heap(words) => words.as_ptr().cast(),
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the region is at least PIDS_OFFSET long, 8-aligned (a page or a u64
        // vector), and Header is three u64 atomics.
        unsafe { &*self.base().cast::<Header>() }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: as in `header` (a private table holds the header and slots only); the
        // slots follow the 64-byte header, each 32 bytes of atomics, and every bit pattern
        // is a valid atomic.
        unsafe { std::slice::from_raw_parts(self.base().add(HEADER_BYTES).cast::<Slot>(), SLOTS) }
    }

    /// The process table: each entry a pid (0 = free).
    fn pids(&self) -> &[AtomicI64] {
        // SAFETY: as in `slots`; PROCESSES 8-byte atomics at an 8-aligned offset.
        unsafe { std::slice::from_raw_parts(self.base().add(PIDS_OFFSET).cast::<AtomicI64>(), PROCESSES) }
    }

    /// Process entry `p`'s in-flight counts, one per slot.
    fn column(&self, p: usize) -> &[AtomicU32] {
        // SAFETY: as in `slots`; column p is SLOTS 4-byte atomics inside the region.
        unsafe {
            std::slice::from_raw_parts(
                self.base().add(COLUMNS_OFFSET + p * SLOTS * 4).cast::<AtomicU32>(),
                SLOTS,
            )
        }
    }

    fn is_shared(&self) -> bool {
        matches!(self.region, Region::File(_))
    }

    /// This process's column, claimed on first use (none in a private table: its counts
    /// die with the process anyway).
    fn own_column(&self) -> Option<&[AtomicU32]> {
        if !self.is_shared() {
            return None;
        }
        let p = (*self.column.get_or_init(|| {
            let pid = i64::from(std::process::id());
            let pids = self.pids();
            if let Some(p) = pids.iter().position(|e| e.load(Ordering::Acquire) == pid) {
                return Some(p);
            }
            pids.iter()
                .position(|e| e.compare_exchange(0, pid, Ordering::AcqRel, Ordering::Acquire).is_ok())
        }))?;
        Some(self.column(p))
    }

    fn index_of(&self, slot: &Slot) -> usize {
        (slot as *const Slot as usize - self.slots().as_ptr() as usize) / SLOT_BYTES
    }

    /// The ring of abandoned queries: its count of pushes, then its entries.
    fn cancelled(&self) -> (&AtomicU64, &[AtomicU64]) {
        // SAFETY: as in `slots`; 1 + CANCELLED 8-byte atomics at an 8-aligned offset.
        unsafe {
            let at = self.base().add(CANCELLED_OFFSET);
            (
                &*at.cast::<AtomicU64>(),
                std::slice::from_raw_parts(at.add(8).cast::<AtomicU64>(), CANCELLED),
            )
        }
    }

    /// Says that blocking query `id` was abandoned by its client (a shared table only).
    pub fn cancel_query(&self, id: u64) {
        if !self.is_shared() {
            return;
        }
        let (count, ring) = self.cancelled();
        let at = count.fetch_add(1, Ordering::AcqRel);
        ring[(at % CANCELLED as u64) as usize].store(id, Ordering::Release);
    }

    /// The queries abandoned since `seen` (a count this returned before; 0 at first), and
    /// the count to pass next time.
    pub fn cancelled_since(&self, seen: u64) -> (u64, Vec<u64>) {
        if !self.is_shared() {
            return (seen, Vec::new());
        }
        let (count, ring) = self.cancelled();
        let now = count.load(Ordering::Acquire);
        let from = seen.max(now.saturating_sub(CANCELLED as u64));
        let ids = (from..now)
            .map(|i| ring[(i % CANCELLED as u64) as usize].load(Ordering::Acquire))
            .collect();
        (now, ids)
    }

    /// Takes the counts of processes that are gone out of the sums and frees their
    /// entries. Returns the requests so forgotten.
    pub fn reap_dead(&self) -> u64 {
        let mut forgotten = 0u64;
        if !self.is_shared() {
            return 0;
        }
        for (p, entry) in self.pids().iter().enumerate() {
            let pid = entry.load(Ordering::Acquire);
            if pid == 0 || process_alive(pid) {
                continue;
            }
            let slots = self.slots();
            for (i, count) in self.column(p).iter().enumerate() {
                let n = count.swap(0, Ordering::AcqRel);
                if n > 0 {
                    forgotten += u64::from(n);
                    let _ = slots[i].held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                        Some(held - count_in(held).min(u64::from(n)))
                    });
                }
            }
            let _ = entry.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        forgotten
    }

    /// The slot of `id`, claiming one when `claim` (None: untracked).
    fn slot(&self, id: &str, claim: bool) -> Option<&Slot> {
        let key = key_of(id);
        let slots = self.slots();
        let start = (key as usize) & (SLOTS - 1);
        for probe in 0..PROBES {
            let slot = &slots[(start + probe) & (SLOTS - 1)];
            let held = slot.held.load(Ordering::Acquire);
            match key_in(held) {
                k if k == key => return Some(slot),
                0 if !claim => return None, // keys are never removed: a free slot ends the run
                0 => match slot
                    .held
                    .compare_exchange(0, key << COUNT_BITS, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(slot),
                    Err(now) if key_in(now) == key => return Some(slot),
                    Err(_) => continue,
                },
                _ => continue,
            }
        }
        if !claim {
            return None;
        }
        // The window is full: take over a slot that holds nothing. The word compared is the
        // one whose count was seen to be zero: a count added meanwhile fails the swap.
        let now = now_ms();
        for probe in 0..PROBES {
            let slot = &slots[(start + probe) & (SLOTS - 1)];
            let held = slot.held.load(Ordering::Acquire);
            if key_in(held) == key {
                return Some(slot); // another process took one over for this id meanwhile
            }
            if slot.is_idle(held, now)
                && slot
                    .held
                    .compare_exchange(held, key << COUNT_BITS, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.successes.store(0, Ordering::Relaxed);
                return Some(slot);
            }
        }
        None
    }

    /// Every slot of `id`'s window holding its key: one, except when two processes took
    /// over slots for a new id at the same moment (its counts then spread over both).
    fn slots_of(&self, id: &str) -> impl Iterator<Item = &Slot> {
        let key = key_of(id);
        let slots = self.slots();
        let start = (key as usize) & (SLOTS - 1);
        (0..PROBES)
            .map(move |probe| &slots[(start + probe) & (SLOTS - 1)])
            .take_while(|slot| slot.held.load(Ordering::Acquire) != 0)
            .filter(move |slot| key_in(slot.held.load(Ordering::Acquire)) == key)
    }

    /// One more request in flight to `id`, from this process.
    pub fn begin(&self, id: &str) {
        let key = key_of(id);
        for _ in 0..3 {
            let Some(slot) = self.slot(id, true) else {
                return; // untracked
            };
            let counted = slot.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (key_in(held) == key && count_in(held) < COUNT_MASK).then_some(held + 1)
            });
            match counted {
                Ok(_) => {
                    if let Some(column) = self.own_column() {
                        column[self.index_of(slot)].fetch_add(1, Ordering::AcqRel);
                    }
                    return;
                }
                // Taken over between the look and the count: look again.
                Err(held) if key_in(held) != key => continue,
                Err(_) => return, // the count is full
            }
        }
    }

    /// One request fewer in flight to `id` (never below zero), from this process: on a slot
    /// this process counted on, when it keeps counts apart. The slot is still `id`'s: it
    /// cannot be taken over while the request counts on it.
    pub fn end(&self, id: &str) {
        let key = key_of(id);
        let column = self.own_column();
        for slot in self.slots_of(id) {
            if let Some(column) = column {
                let own = &column[self.index_of(slot)];
                if own
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                    .is_err()
                {
                    continue; // not counted here by this process (or reaped)
                }
            }
            let ended = slot.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (key_in(held) == key && count_in(held) > 0).then(|| held - 1)
            });
            if ended.is_ok() || column.is_some() {
                return;
            }
        }
    }

    /// Requests in flight to `id`, over every process.
    pub fn in_flight(&self, id: &str) -> u32 {
        let total: u64 = self
            .slots_of(id)
            .map(|s| count_in(s.held.load(Ordering::Acquire)))
            .sum();
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Whether anything may be ejected at `now` (a cheap test before per-instance ones).
    pub fn any_ejected(&self, now: u64) -> bool {
        self.header().latest_until_ms.load(Ordering::Acquire) > now
    }

    /// Whether any ejection may still last: false without reading the clock while none
    /// was made since they were last all found over (`forget_ejections_over`).
    pub fn ever_ejected(&self) -> bool {
        self.header().latest_until_ms.load(Ordering::Acquire) != 0
    }

    /// Notes that every ejection is over at `now`, so that `ever_ejected` is false again;
    /// an ejection made meanwhile raised the latest end, and is kept.
    pub fn forget_ejections_over(&self, now: u64) {
        let latest = &self.header().latest_until_ms;
        let seen = latest.load(Ordering::Acquire);
        if seen != 0 && seen <= now {
            let _ = latest.compare_exchange(seen, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Whether `id` is ejected at `now`.
    pub fn is_ejected(&self, id: &str, now: u64) -> bool {
        self.slot(id, false)
            .is_some_and(|s| s.until_ms.load(Ordering::Acquire) > now)
    }

    /// Records a success: ends the failure streak, and after `forgive_after` successes in a
    /// row forgets past ejections.
    pub fn succeeded(&self, id: &str, forgive_after: u32) {
        let Some(slot) = self.slot(id, false) else {
            return;
        };
        slot.failures.store(0, Ordering::Release);
        if slot.successes.fetch_add(1, Ordering::AcqRel) + 1 >= forgive_after {
            slot.ejections.store(0, Ordering::Release);
        }
    }

    /// Records a failure. Returns the ejection count to eject with when this failure ends a
    /// streak of `threshold` and the instance is not ejected already (the caller decides,
    /// by the panic threshold, whether to `eject`); None otherwise.
    pub fn failed(&self, id: &str, threshold: u32, now: u64) -> Option<u32> {
        let slot = self.slot(id, true)?;
        slot.successes.store(0, Ordering::Release);
        let failures = slot.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < threshold || slot.until_ms.load(Ordering::Acquire) > now {
            return None;
        }
        // One process wins the streak; the others see it reset.
        slot.failures
            .compare_exchange(failures, 0, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(slot.ejections.load(Ordering::Acquire))
    }

    /// Ejects `id` until `until` (CLOCK_MONOTONIC ms).
    pub fn eject(&self, id: &str, until: u64) {
        let Some(slot) = self.slot(id, true) else {
            return;
        };
        slot.until_ms.store(until, Ordering::Release);
        slot.ejections.fetch_add(1, Ordering::AcqRel);
        self.header().latest_until_ms.fetch_max(until, Ordering::AcqRel);
    }
}

impl Slot {
    /// Whether the slot, whose `held` word is `held`, holds nothing worth keeping at `now`.
    fn is_idle(&self, held: u64, now: u64) -> bool {
        count_in(held) == 0
            && self.failures.load(Ordering::Acquire) == 0
            && self.ejections.load(Ordering::Acquire) == 0
            && self.until_ms.load(Ordering::Acquire) <= now
    }
}

/// Whether process `pid` exists (a signal 0 reaches it, or it is another user's).
fn process_alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() != libc::ESRCH }
}

/// CLOCK_MONOTONIC in milliseconds: the same clock in every process of the machine.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec out-pointer; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// `at` on the `now_ms` clock (std's `Instant` is CLOCK_MONOTONIC too, but opaque).
pub fn ms_at(at: Instant) -> u64 {
    let (now, ms) = (Instant::now(), now_ms());
    if at >= now {
        ms.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        ms.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

#[path = "shared_file.rs"]
mod file;
pub(crate) use file::open_table;

#[cfg(test)]
#[path = "shared_tests.rs"]
mod tests;
