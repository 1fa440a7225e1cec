//! The shared balancer state: slots, counts and ejections across (simulated) processes.

use super::*;

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
