//! The shared balancer state: slots, counts and ejections across (simulated) processes.

use super::*;
use std::fs::OpenOptions;
use std::sync::Arc;

#[test]
fn two_mappings_of_one_file_share_counts_and_ejections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.state");
    let a = SharedState::open(&path).unwrap();
    let b = SharedState::open(&path).unwrap();
    a.begin("i-1");
    a.begin("i-1");
    b.begin("i-1");
    assert_eq!(b.in_flight("i-1"), 3);
    b.end("i-1");
    assert_eq!(a.in_flight("i-1"), 2);
    assert_eq!(a.in_flight("i-2"), 0);
    let now = now_ms();
    assert!(!b.any_ejected(now));
    assert_eq!(a.failed("i-2", 2, now), None);
    assert_eq!(b.failed("i-2", 2, now), Some(0)); // the streak spans both processes
    a.eject("i-2", now + 10_000);
    assert!(b.is_ejected("i-2", now));
    assert!(b.any_ejected(now));
    assert!(!b.is_ejected("i-2", now + 10_000));
    // A new server start (a fresh file) begins empty; reopening keeps the table.
    drop((a, b));
    let c = SharedState::open(&path).unwrap();
    assert_eq!(c.in_flight("i-1"), 2);
    std::fs::remove_file(&path).unwrap();
    let d = SharedState::open(&path).unwrap();
    assert_eq!(d.in_flight("i-1"), 0);
}

#[test]
fn a_dead_process_s_counts_are_reaped_and_a_live_one_s_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.state");
    let mine = SharedState::open(&path).unwrap();
    mine.begin("i-1");
    // Another process's entry: a pid that cannot exist, holding two requests.
    let other = SharedState::open(&path).unwrap();
    let dead = i64::from(i32::MAX);
    other.pids()[1].store(dead, Ordering::Release);
    other.column.set(Some(1)).unwrap();
    other.begin("i-1");
    other.begin("i-1");
    assert_eq!(mine.in_flight("i-1"), 3);
    assert_eq!(mine.reap_dead(), 2);
    assert_eq!(mine.in_flight("i-1"), 1);
    assert_eq!(mine.pids()[1].load(Ordering::Acquire), 0, "the entry is free again");
    // The dead process's late `end` (it cannot come, but a reused entry might) does
    // not take this process's count.
    other.end("i-1");
    assert_eq!(mine.in_flight("i-1"), 1);
    mine.end("i-1");
    assert_eq!(mine.in_flight("i-1"), 0);
}

#[test]
fn abandoned_queries_reach_every_mapping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.state");
    let gate = SharedState::open(&path).unwrap();
    let worker = SharedState::open(&path).unwrap();
    let (seen, ids) = worker.cancelled_since(0);
    assert!(ids.is_empty());
    gate.cancel_query(7);
    gate.cancel_query(9);
    let (seen, ids) = worker.cancelled_since(seen);
    assert_eq!(ids, vec![7, 9]);
    assert!(worker.cancelled_since(seen).1.is_empty());
    // A reader that fell behind by more than the ring sees the newest only.
    for id in 0..(CANCELLED as u64 + 10) {
        gate.cancel_query(id + 100);
    }
    let (_, ids) = worker.cancelled_since(seen);
    assert_eq!(ids.len(), CANCELLED);
    assert_eq!(ids.last(), Some(&(CANCELLED as u64 + 109)));
}

#[test]
fn in_flight_never_goes_below_zero_and_unknown_ids_stay_untracked() {
    let state = SharedState::private();
    state.end("nobody");
    assert_eq!(state.in_flight("nobody"), 0);
    state.begin("x");
    state.end("x");
    state.end("x");
    assert_eq!(state.in_flight("x"), 0);
}

#[test]
fn a_full_window_takes_over_idle_slots_and_keeps_busy_ones() {
    let state = SharedState::private();
    // Far more ids than slots in one probe window land somewhere, or go untracked,
    // without a panic; busy ones keep their counts.
    for i in 0..(SLOTS * 2) {
        state.begin(&format!("busy-{i}"));
    }
    let tracked = (0..SLOTS * 2)
        .filter(|i| state.in_flight(&format!("busy-{i}")) == 1)
        .count();
    assert!(tracked >= SLOTS * 9 / 10, "{tracked}");
    for i in 0..(SLOTS * 2) {
        state.end(&format!("busy-{i}"));
    }
    // All idle now: new ids can take over.
    state.begin("newcomer");
    assert_eq!(state.in_flight("newcomer"), 1);
}

#[test]
fn instants_map_onto_the_shared_clock() {
    let now = Instant::now();
    let ms = ms_at(now);
    let later = ms_at(now + std::time::Duration::from_secs(5));
    assert!((later - ms).abs_diff(5000) <= 2);
}

#[test]
fn a_table_of_another_length_is_replaced_not_shrunk_under_its_mappers() {
    // Review finding 15: `open` truncated a file of the wrong length to 0, so a process
    // still mapping it (an older build on the same data dir) faulted on its next read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.state");
    let old_len = TABLE_BYTES + (1 << 20);
    let old = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    old.set_len(old_len as u64).unwrap();
    // SAFETY: a test's own file, mapped and read by this test only.
    let mut old_map = unsafe { memmap2::MmapMut::map_mut(&old).unwrap() };
    old_map[old_len - 1] = 0xAB;
    old_map[0] = 0xCD;
    let state = SharedState::open(&path).unwrap();
    // The old mapping is whole (a shrunk file would fault here) and untouched.
    assert_eq!((old_map[0], old_map[old_len - 1]), (0xCD, 0xAB));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), TABLE_BYTES as u64);
    state.begin("i-1");
    assert_eq!(
        SharedState::open(&path).unwrap().in_flight("i-1"),
        1,
        "the new table is the path's"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
}

#[test]
fn a_foreign_table_of_the_same_length_starts_from_nothing() {
    // Review finding 15: a magic mismatch reset the keys only, so counts of another layout
    // were read as this one's.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("balancer.state");
    std::fs::write(&path, vec![0x01u8; TABLE_BYTES]).unwrap();
    let state = SharedState::open(&path).unwrap();
    state.begin("i-1");
    assert_eq!(state.in_flight("i-1"), 1);
    assert!(!state.any_ejected(now_ms()));
    assert_eq!(state.cancelled_since(0), (0, vec![]));
    assert_eq!(state.reap_dead(), 0);
}

#[test]
fn processes_opening_a_new_table_at_once_all_get_the_same_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join("balancer.state"));
    let states: Vec<_> = (0..8)
        .map(|i| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                let state = SharedState::open(&path).unwrap();
                state.begin(&format!("i-{i}"));
                state
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for state in &states {
        for i in 0..8 {
            assert_eq!(
                state.in_flight(&format!("i-{i}")),
                1,
                "every opener's count in every mapping"
            );
        }
    }
}

#[test]
fn ejections_are_forgotten_only_once_all_are_over() {
    let state = SharedState::private();
    assert!(!state.ever_ejected(), "a pick reads no clock before any ejection");
    state.eject("i-1", 1_000);
    state.eject("i-2", 2_000);
    assert!(state.ever_ejected());
    state.forget_ejections_over(1_500); // i-2 still lasts
    assert!(state.ever_ejected() && state.any_ejected(1_500));
    state.forget_ejections_over(2_000);
    assert!(!state.ever_ejected());
    state.eject("i-3", 3_000);
    assert!(state.ever_ejected() && state.is_ejected("i-3", 2_500));
}

/// Ids whose slots all start in one probe window: more of them than the window holds, so
/// every claim past the first 32 takes over an idle slot.
fn colliding_ids(count: usize) -> Vec<String> {
    let band = (key_of("anchor") as usize) & (SLOTS - 1);
    (0u64..)
        .map(|n| format!("c-{n}"))
        .filter(|id| ((key_of(id) as usize) & (SLOTS - 1)).wrapping_sub(band) < 4)
        .take(count)
        .collect()
}

fn takeovers_under_load_leave_no_count_behind(state: Arc<SharedState>) {
    let ids = Arc::new(colliding_ids(48));
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (state, ids) = (Arc::clone(&state), Arc::clone(&ids));
            std::thread::spawn(move || {
                for n in 0..4000 {
                    let id = &ids[(n * 7 + t * 13) % ids.len()];
                    state.begin(id);
                    if n % 3 == 0 {
                        std::thread::yield_now();
                    }
                    state.end(id);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let left: u64 = state
        .slots()
        .iter()
        .map(|s| count_in(s.held.load(Ordering::SeqCst)))
        .sum();
    assert_eq!(left, 0, "in-flight counts left behind by ended requests");
    if let Some(column) = state.own_column() {
        assert_eq!(
            column.iter().map(|c| u64::from(c.load(Ordering::SeqCst))).sum::<u64>(),
            0
        );
    }
    for id in ids.iter() {
        assert_eq!(state.in_flight(id), 0, "{id}");
    }
}

#[test]
fn slots_changing_hands_under_concurrent_requests_leak_no_count() {
    // Review finding 15: a takeover between a request's look-up and its count used to
    // leave the count on the slot's next owner, never ended.
    for _ in 0..5 {
        takeovers_under_load_leave_no_count_behind(Arc::new(SharedState::private()));
        let dir = tempfile::tempdir().unwrap();
        let mapped = SharedState::open(&dir.path().join("balancer.state")).unwrap();
        takeovers_under_load_leave_no_count_behind(Arc::new(mapped));
    }
}
