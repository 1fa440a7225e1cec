//! The load-balancing policies: their names (the one list the API, the flags and the CLI
//! take), and the choices that are pure functions of the usable candidates (smooth
//! weighted round robin, rendezvous hashing). The stateful ones (round robin's counter,
//! least request's in-flight counts) live with the selector's state (`select.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use crate::core::hash::{fnv1a64, mix64};
use crate::core::select::Candidate;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    RoundRobin,
    Random,
    Weighted,
    LeastRequest,
    ConsistentHash,
    /// Model servers by their load signals (`least_load.rs`).
    LeastLoad,
    /// Model servers by prompt-prefix affinity, then load (`prefix.rs`).
    Prefix,
}

impl Policy {
    /// Every policy's name, in the order the API documents them (exported to Python as
    /// `_core.POLICIES`: the CLI, the flags and the request models take them from here).
    pub const NAMES: [&'static str; 7] = [
        "round_robin",
        "random",
        "weighted",
        "least_request",
        "consistent_hash",
        "least_load",
        "prefix",
    ];

    pub fn parse(name: &str) -> Option<Policy> {
        Some(match name {
            "round_robin" => Policy::RoundRobin,
            "random" => Policy::Random,
            "weighted" => Policy::Weighted,
            "least_request" => Policy::LeastRequest,
            "consistent_hash" => Policy::ConsistentHash,
            "least_load" => Policy::LeastLoad,
            "prefix" => Policy::Prefix,
            _ => return None,
        })
    }

    /// The policy's name, as `parse` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::Random => "random",
            Policy::Weighted => "weighted",
            Policy::LeastRequest => "least_request",
            Policy::ConsistentHash => "consistent_hash",
            Policy::LeastLoad => "least_load",
            Policy::Prefix => "prefix",
        }
    }
}

/// Smooth weighted round robin (as in nginx): over any window of sum(weights) picks each
/// instance is chosen exactly its weight's times, interleaved rather than in bursts.
pub(crate) fn smooth_weighted<'c>(
    current: &mut HashMap<String, i64>,
    usable: &[&'c Arc<Candidate>],
) -> &'c Arc<Candidate> {
    current.retain(|id, _| usable.iter().any(|c| &c.id == id));
    let total: i64 = usable.iter().map(|c| i64::from(c.weight)).sum();
    let mut best = 0;
    let mut best_weight = i64::MIN;
    for (i, c) in usable.iter().enumerate() {
        let w = current.entry(c.id.clone()).or_insert(0);
        *w += i64::from(c.weight);
        if *w > best_weight {
            best_weight = *w;
            best = i;
        }
    }
    *current.get_mut(&usable[best].id).expect("present") -= total;
    usable[best]
}

/// Rendezvous (highest random weight) hashing: the same key keeps its instance while that
/// instance stays, and only the keys of a removed instance (or 1/N of keys, to a new one)
/// move.
pub(crate) fn rendezvous<'c>(usable: &[&'c Arc<Candidate>], key: &str) -> &'c Arc<Candidate> {
    let key_hash = fnv1a64(key.as_bytes());
    usable
        .iter()
        .copied()
        .max_by_key(|c| (mix64(key_hash ^ fnv1a64(c.id.as_bytes())), std::cmp::Reverse(&c.id)))
        .expect("non-empty")
}
