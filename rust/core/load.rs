//! Load signals of model servers (queued and running requests, KV-cache usage), each with
//! the time it was taken: scraped from an instance's metrics (`load_scrape.rs`) or pushed
//! to `PUT /registry-svc/instance/{id}/load`, read by the `least_load` and `prefix` picks
//! and shown with lookups (`load_json.rs`).
//!
//! Load is ephemeral: it lives in a memory-mapped table beside the balancer state that
//! every process of a server maps (`MAP_SHARED`), never in the store and never fsynced; a
//! restart forgets it and the next scrape or push brings it back. A reading older than
//! ten times its interval counts as unknown (`Reading::fresh`).
//!
//! The table is open addressing over a hash of the instance id, as the balancer state's
//! (`shared.rs`): a slot is claimed by a compare-and-swap of its key; a slot whose reading
//! is older than a minute may be taken over by another instance. A reading is one word
//! (queued, running, KV-cache usage and the interval, 16 bits each) beside the
//! CLOCK_MONOTONIC millisecond it was taken, so a reader never sees half of a report.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::core::hash::{fnv1a64, mix64};
use crate::core::shared::now_ms;

const MAGIC: u64 = 0x7273_765f_6c6f_0001; // "rsv_lo" v1
const SLOTS: usize = 1 << 15;
const PROBES: usize = 32;
const HEADER_WORDS: usize = 8;
const SLOT_WORDS: usize = 3;
const TABLE_WORDS: usize = HEADER_WORDS + SLOTS * SLOT_WORDS;
/// A slot whose reading is older than this may go to another instance.
const TAKEOVER_AFTER_MS: u64 = 60_000;
/// A reading counts while it is younger than this many of its intervals.
pub const FRESH_INTERVALS: u64 = 10;
/// The interval a pushed reading is judged by when its instance declares none.
pub const DEFAULT_INTERVAL_MS: u32 = 100;
/// The shortest scrape interval an instance may declare.
pub const MIN_INTERVAL_MS: u32 = 20;
/// The longest interval (a reading's interval is kept in 16 bits).
pub const MAX_INTERVAL_MS: u32 = 60_000;

/// One report of a model server's load.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Load {
    /// Requests waiting for a slot in the batch (vLLM `num_requests_waiting`).
    pub queued: u32,
    /// Requests in the batch (vLLM `num_requests_running`).
    pub running: u32,
    /// The share of the KV cache in use, 0 to 1 (vLLM `kv_cache_usage_perc`).
    pub kv_cache: f64,
}

/// A load as read back, with its age.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub load: Load,
    pub age_ms: u64,
    pub interval_ms: u32,
}

impl Reading {
    /// Whether the reading still counts (younger than `FRESH_INTERVALS` intervals).
    pub fn fresh(&self) -> bool {
        self.age_ms <= FRESH_INTERVALS * u64::from(self.interval_ms)
    }
}

/// The scraper's counts and the readings' ages (`LoadTable::stats`).
#[derive(Debug, Default)]
pub struct LoadStats {
    pub sources: u64,
    pub scrapes: u64,
    pub failures: u64,
    /// Each reading's age in milliseconds, and whether it still counts.
    pub ages: Vec<(u64, bool)>,
}

fn pack(load: Load, interval_ms: u32) -> u64 {
    let clamp16 = |v: u32| u64::from(v.min(u32::from(u16::MAX)));
    let kv = (load.kv_cache.clamp(0.0, 1.0) * 10_000.0).round() as u64;
    clamp16(load.queued) | clamp16(load.running) << 16 | kv << 32 | clamp16(interval_ms.max(1)) << 48
}

fn unpack(word: u64) -> (Load, u32) {
    let field = |shift: u32| ((word >> shift) & 0xffff) as u32;
    let load = Load {
        queued: field(0),
        running: field(16),
        kv_cache: f64::from(field(32)) / 10_000.0,
    };
    (load, field(48))
}

/// The key of `id` in a slot (never 0, which marks a free slot).
fn key_of(id: &str) -> u64 {
    mix64(fnv1a64(id.as_bytes())) | 1
}

enum Words {
    File(memmap2::MmapMut),
    Heap(Vec<AtomicU64>),
}

/// The table of load readings, mapped from a file or private to the process.
pub struct LoadTable {
    words: Words,
}

impl Default for LoadTable {
    fn default() -> Self {
        LoadTable::private()
    }
}

impl LoadTable {
    /// A table private to this process (tests, an in-process store).
    pub fn private() -> LoadTable {
        let table = LoadTable {
            words: Words::Heap((0..TABLE_WORDS).map(|_| AtomicU64::new(0)).collect()),
        };
        table.header()[0].store(MAGIC, Ordering::Release);
        table
    }

    /// The table in `path`, shared by every process that opens it (the supervisor removes
    /// it at start, beside the balancer state).
    pub fn open(path: &Path) -> std::io::Result<LoadTable> {
        let (map, fresh) = crate::core::shared::open_table(path, TABLE_WORDS * 8, MAGIC)?;
        let table = LoadTable {
            words: Words::File(map),
        };
        if fresh {
            table.header()[0].store(MAGIC, Ordering::Release);
        }
        Ok(table)
    }

    fn all(&self) -> &[AtomicU64] {
        match &self.words {
            // SAFETY: the map is TABLE_WORDS * 8 bytes, page-aligned, never shrunk, and
            // only ever accessed through atomics (every bit pattern is a valid u64).
            Words::File(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<AtomicU64>(), TABLE_WORDS) },
            Words::Heap(words) => words,
        }
    }

    /// Word 0: the magic; word 1: reports ever made (0: nothing to show anywhere); words
    /// 2-4: the scraper's scrapes, its failed scrapes, and the sources it scrapes now.
    fn header(&self) -> &[AtomicU64] {
        &self.all()[..HEADER_WORDS]
    }

    /// Slot `i`: key, reading, the millisecond it was taken.
    fn slot(&self, i: usize) -> &[AtomicU64] {
        let at = HEADER_WORDS + (i % SLOTS) * SLOT_WORDS;
        &self.all()[at..at + SLOT_WORDS]
    }

    /// Whether any reading was ever reported (a lookup without one adds nothing).
    pub fn any(&self) -> bool {
        self.header()[1].load(Ordering::Relaxed) != 0
    }

    /// Records `load` for instance `id`, taken at `at_ms` (CLOCK_MONOTONIC ms) by a source
    /// that reports every `interval_ms`. False when the table has no room for it.
    pub fn report(&self, id: &str, load: Load, interval_ms: u32, at_ms: u64) -> bool {
        let key = key_of(id);
        let start = key as usize;
        let mut claimed = None;
        for probe in 0..PROBES {
            let slot = self.slot(start.wrapping_add(probe));
            let held = slot[0].load(Ordering::Acquire);
            if held == key {
                claimed = Some(slot);
                break;
            }
            let stale = held != 0 && slot[2].load(Ordering::Relaxed).saturating_add(TAKEOVER_AFTER_MS) < at_ms;
            if (held == 0 || stale)
                && slot[0]
                    .compare_exchange(held, key, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                claimed = Some(slot);
                break;
            }
        }
        let Some(slot) = claimed else {
            return false;
        };
        slot[1].store(pack(load, interval_ms), Ordering::Release);
        slot[2].store(at_ms, Ordering::Release);
        self.header()[1].fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The latest reading of instance `id` at `now_ms`, fresh or not.
    pub fn reading(&self, id: &str, now_ms: u64) -> Option<Reading> {
        if !self.any() {
            return None;
        }
        let key = key_of(id);
        for probe in 0..PROBES {
            let slot = self.slot((key as usize).wrapping_add(probe));
            match slot[0].load(Ordering::Acquire) {
                0 => return None,
                held if held == key => {
                    let at = slot[2].load(Ordering::Acquire);
                    let (load, interval_ms) = unpack(slot[1].load(Ordering::Acquire));
                    if at == 0 {
                        return None; // claimed, not written yet
                    }
                    return Some(Reading {
                        load,
                        age_ms: now_ms.saturating_sub(at),
                        interval_ms,
                    });
                }
                _ => {}
            }
        }
        None
    }

    /// Counts one scrape (`load/`), and whether it failed.
    pub fn count_scrape(&self, ok: bool) {
        self.header()[2].fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.header()[3].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The number of sources the scraper scrapes now.
    pub fn set_sources(&self, count: u64) {
        self.header()[4].store(count, Ordering::Relaxed);
    }

    /// What `/metrics` shows: the scraper's counts and the age of every reading held.
    pub fn stats(&self, now_ms: u64) -> LoadStats {
        let header = self.header();
        let mut ages = Vec::new();
        for i in 0..SLOTS {
            let slot = self.slot(i);
            let at = slot[2].load(Ordering::Acquire);
            if slot[0].load(Ordering::Acquire) != 0 && at != 0 {
                let (_, interval_ms) = unpack(slot[1].load(Ordering::Acquire));
                let reading = Reading {
                    load: Load::default(),
                    age_ms: now_ms.saturating_sub(at),
                    interval_ms,
                };
                ages.push((reading.age_ms, reading.fresh()));
            }
        }
        LoadStats {
            sources: header[4].load(Ordering::Relaxed),
            scrapes: header[2].load(Ordering::Relaxed),
            failures: header[3].load(Ordering::Relaxed),
            ages,
        }
    }

    /// The reading of `id` now, if it still counts.
    pub fn fresh(&self, id: &str) -> Option<Load> {
        self.reading(id, now_ms()).filter(Reading::fresh).map(|r| r.load)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_whole_with_its_age() {
        let table = LoadTable::private();
        assert!(!table.any());
        assert_eq!(table.reading("a", 1000), None);
        let load = Load {
            queued: 3,
            running: 70_000, // past 16 bits: kept as the most it can say
            kv_cache: 0.4242,
        };
        assert!(table.report("a", load, 100, 1000));
        let read = table.reading("a", 1250).unwrap();
        assert_eq!(read.load.queued, 3);
        assert_eq!(read.load.running, 65_535);
        assert!((read.load.kv_cache - 0.4242).abs() < 1e-9);
        assert_eq!((read.age_ms, read.interval_ms), (250, 100));
        assert!(read.fresh());
        assert!(!table.reading("a", 1000 + 1001).unwrap().fresh());
        assert_eq!(table.reading("b", 1250), None);
    }

    #[test]
    fn a_slot_long_unreported_goes_to_another_instance() {
        let table = LoadTable::private();
        // Fill every probe of one start with other keys: find ids whose probes collide.
        let first = key_of("x0") as usize % SLOTS;
        let colliding: Vec<String> = (0..)
            .map(|i| format!("x{i}"))
            .filter(|id| key_of(id) as usize % SLOTS == first)
            .take(PROBES + 1)
            .collect();
        for id in &colliding[..PROBES] {
            assert!(table.report(id, Load::default(), 100, 1_000));
        }
        let late = &colliding[PROBES];
        assert!(!table.report(late, Load::default(), 100, 2_000), "the window is full");
        assert!(table.report(late, Load::default(), 100, 1_000 + TAKEOVER_AFTER_MS + 1));
        assert!(table.reading(late, 70_000).is_some());
    }

    #[test]
    fn processes_mapping_the_file_see_each_others_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("load.state");
        let one = LoadTable::open(&path).unwrap();
        let two = LoadTable::open(&path).unwrap();
        one.report(
            "i",
            Load {
                queued: 9,
                running: 1,
                kv_cache: 1.0,
            },
            50,
            10,
        );
        assert_eq!(two.reading("i", 20).unwrap().load.queued, 9);
    }
}
