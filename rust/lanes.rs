//! One value per gate thread: each thread of a gate runs its own single-threaded runtime
//! (`edge/mod.rs`), and a connection pool shared by all of them hands a connection opened
//! on one thread to a request on another, so every exchange on it wakes the other thread
//! (an eventfd write, a context switch). [`PerLane`] keeps one pool per thread instead.
//! A thread that never said which lane it is (tests, other callers) uses lane 0: shared,
//! still correct, only slower.

use std::cell::Cell;
use std::sync::OnceLock;

/// The most lanes a `PerLane` keeps apart (threads past it share).
const MAX_LANES: usize = 64;

thread_local! {
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// Makes the calling thread lane `lane` (a gate thread, at its start).
pub fn enter(lane: usize) {
    LANE.with(|l| l.set(lane));
}

/// A value per lane, each made on first use by the lane that uses it.
pub struct PerLane<T> {
    slots: Box<[OnceLock<T>]>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> PerLane<T> {
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> PerLane<T> {
        PerLane {
            slots: (0..MAX_LANES).map(|_| OnceLock::new()).collect(),
            make: Box::new(make),
        }
    }

    /// The calling thread's value.
    pub fn get(&self) -> &T {
        let lane = LANE.with(Cell::get) % self.slots.len();
        self.slots[lane].get_or_init(&self.make)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn each_lane_gets_its_own_value_made_once() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&made);
        let values = Arc::new(PerLane::new(move || counter.fetch_add(1, Ordering::SeqCst)));
        let on = |lane: usize| {
            let values = Arc::clone(&values);
            std::thread::spawn(move || {
                enter(lane);
                (*values.get(), *values.get())
            })
            .join()
            .unwrap()
        };
        let (a, a_again) = on(1);
        let (b, _) = on(2);
        assert_eq!(a, a_again);
        assert_ne!(a, b);
        assert_eq!(on(1).0, a, "a lane's value outlives the thread that made it");
        assert_eq!(made.load(Ordering::SeqCst), 2);
    }
}
