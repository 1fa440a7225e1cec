//! `least_load`: the pick for model servers. Instances whose queue is over a limit or
//! whose KV cache is full are filtered out (none left: the slug is saturated, a 429); the
//! rest are scored on queued requests, running requests and KV-cache usage (weights 2:2:1,
//! as llm-d's scheduler by default), and the power of two choices runs over the rest: of two
//! instances drawn at random, the better scored. The best is chosen most often, but picks
//! made between two readings (a reading is up to one interval old) do not all land on it.
//!
//! Signals come from the shared load table (`load.rs`); the requests this server itself has
//! in flight to an instance (`shared.rs`) stand in for its running count while they are
//! more, since a reading is up to one interval old. An instance without a fresh reading is
//! scored with the mean queue and KV usage of those that have one.

use std::sync::Arc;

use crate::core::candidate::Candidate;
use crate::core::load::{Load, LoadTable};
use crate::core::shared::SharedState;

/// An instance with more requests waiting than this is not sent another.
pub const QUEUE_LIMIT: u32 = 128;
/// An instance whose KV cache is at least this full is not sent another.
pub const KV_CACHE_FULL: f64 = 0.99;

/// The message of a 429: every routable instance of `slug` is over its bounds.
pub fn saturated(slug: &str) -> String {
    format!(
        "every instance of '{slug}' is saturated (more than {QUEUE_LIMIT} requests queued, or its KV cache full); \
         try again shortly"
    )
}

/// The score's weights: queued requests, running requests, KV-cache usage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub queued: f64,
    pub running: f64,
    pub kv_cache: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            queued: 2.0,
            running: 2.0,
            kv_cache: 1.0,
        }
    }
}

/// What the selector knows of one instance's load right now.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    pub queued: f64,
    pub running: f64,
    pub kv_cache: f64,
    /// Whether a fresh reading stood behind it.
    pub known: bool,
}

impl Signal {
    /// Requests it holds, waiting or running: what the prefix pick's bound compares.
    pub fn requests(&self) -> f64 {
        self.queued + self.running
    }

    /// Over the queue limit or with its KV cache full.
    pub fn saturated(&self) -> bool {
        self.known && (self.queued > f64::from(QUEUE_LIMIT) || self.kv_cache >= KV_CACHE_FULL)
    }
}

/// The signals of `usable`, in its order.
pub fn signals(load: &LoadTable, shared: &SharedState, usable: &[&Arc<Candidate>]) -> Vec<Signal> {
    let mut out: Vec<Signal> = usable
        .iter()
        .map(|c| {
            let in_flight = f64::from(shared.in_flight(&c.id));
            match load.fresh(&c.id) {
                Some(Load {
                    queued,
                    running,
                    kv_cache,
                }) => Signal {
                    queued: f64::from(queued),
                    running: f64::from(running).max(in_flight),
                    kv_cache,
                    known: true,
                },
                None => Signal {
                    queued: 0.0,
                    running: in_flight,
                    kv_cache: 0.0,
                    known: false,
                },
            }
        })
        .collect();
    let known: Vec<&Signal> = out.iter().filter(|s| s.known).collect();
    if !known.is_empty() && known.len() < out.len() {
        let n = known.len() as f64;
        let queued = known.iter().map(|s| s.queued).sum::<f64>() / n;
        let kv_cache = known.iter().map(|s| s.kv_cache).sum::<f64>() / n;
        for s in out.iter_mut().filter(|s| !s.known) {
            s.queued = queued;
            s.kv_cache = kv_cache;
        }
    }
    out
}

/// Scores (lower is better) of `signals`, each term scaled by the largest of its kind.
pub fn scores(signals: &[Signal], weights: Weights) -> Vec<f64> {
    let most = |f: fn(&Signal) -> f64| signals.iter().map(f).fold(0.0_f64, f64::max).max(1.0);
    let (queued, running) = (most(|s| s.queued), most(|s| s.running));
    signals
        .iter()
        .map(|s| {
            weights.queued * s.queued / queued + weights.running * s.running / running + weights.kv_cache * s.kv_cache
        })
        .collect()
}

/// The index in `signals` of the instance to send the next request to, or None when every
/// one is saturated. `random` gives uniform 64-bit numbers.
pub fn choose(signals: &[Signal], weights: Weights, random: &mut dyn FnMut() -> u64) -> Option<usize> {
    let scores = scores(signals, weights);
    let open: Vec<usize> = (0..signals.len()).filter(|&i| !signals[i].saturated()).collect();
    if open.len() <= 1 {
        return open.first().copied();
    }
    let n = open.len() as u64;
    let a = (random() % n) as usize;
    let mut b = (random() % (n - 1)) as usize;
    if b >= a {
        b += 1;
    }
    let (a, b) = (open[a], open[b]);
    Some(if scores[b] < scores[a] { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(queued: f64, running: f64, kv_cache: f64) -> Signal {
        Signal {
            queued,
            running,
            kv_cache,
            known: true,
        }
    }

    #[test]
    fn the_idle_half_is_chosen_and_the_saturated_never() {
        let signals = [
            signal(10.0, 8.0, 0.9),
            signal(0.0, 1.0, 0.1),
            signal(0.0, 2.0, 0.2),
            signal(200.0, 0.0, 0.0), // over the queue limit
            signal(0.0, 0.0, 0.995), // KV cache full
            signal(9.0, 9.0, 0.8),
        ];
        let mut x = 0u64;
        let mut random = || {
            x = crate::core::hash::mix64(x.wrapping_add(1));
            x
        };
        let mut seen = [0usize; 6];
        for _ in 0..1000 {
            seen[choose(&signals, Weights::default(), &mut random).unwrap()] += 1;
        }
        assert_eq!(seen[3] + seen[4], 0, "{seen:?}");
        assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
        // Of the six pairs of the four open ones, five hold the idle 1 or 2 (p = 5/6).
        assert!(seen[1] + seen[2] > 750, "{seen:?}");
        assert!(seen[0] > 0 || seen[5] > 0, "{seen:?}");
    }

    #[test]
    fn every_instance_saturated_chooses_none() {
        let signals = [signal(500.0, 0.0, 0.0), signal(0.0, 0.0, 1.0)];
        assert_eq!(choose(&signals, Weights::default(), &mut || 7), None);
        let unknown = Signal {
            known: false,
            ..signal(500.0, 0.0, 1.0)
        };
        assert_eq!(choose(&[unknown], Weights::default(), &mut || 7), Some(0));
    }
}
