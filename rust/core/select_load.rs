//! The selector's picks for model servers: `least_load` (`least_load.rs`) and `prefix`
//! (`prefix.rs`) over the usable instances, with the load signals every process shares.

use super::*;

use crate::core::least_load::{self, Signal, Weights};
use crate::core::prefix::{bound, chain, owner_key};

impl Selector {
    /// The `least_load` or `prefix` choice among `usable`; None when every one is saturated.
    pub(super) fn choose_by_load<'c>(
        &self,
        req: &PickRequest<'_>,
        usable: &[&'c Arc<Candidate>],
        policy: Policy,
    ) -> Option<&'c Arc<Candidate>> {
        let signals = least_load::signals(&self.load, &self.shared, usable);
        let prompt = match (policy, req.prefix) {
            (Policy::Prefix, Some(prompt)) => prompt,
            _ => return self.least_loaded(usable, &signals, req.weights.unwrap_or_default()),
        };
        let blocks = chain(req.slug, prompt);
        let keys: Vec<u64> = usable.iter().map(|c| owner_key(&c.id)).collect();
        let chosen = {
            let mut index = self.prefix.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let matched = index.matches(&blocks, &keys);
            let chosen = self
                .by_prefix(usable, &signals, &matched, blocks[0])
                .or_else(|| self.least_loaded(usable, &signals, req.weights.unwrap_or_default()))?;
            let at = usable.iter().position(|c| Arc::ptr_eq(c, chosen)).unwrap_or(0);
            index.record(&blocks, keys[at]);
            chosen
        };
        Some(chosen)
    }

    fn least_loaded<'c>(
        &self,
        usable: &[&'c Arc<Candidate>],
        signals: &[Signal],
        weights: Weights,
    ) -> Option<&'c Arc<Candidate>> {
        let mut random = || self.random();
        least_load::choose(signals, weights, &mut random).map(|i| usable[i])
    }

    /// The instance holding the longest prefix within the load bound (the less loaded of
    /// equal holders); with no holder at all, the first block's rendezvous choice within
    /// the bound. None: leave it to `least_load`.
    fn by_prefix<'c>(
        &self,
        usable: &[&'c Arc<Candidate>],
        signals: &[Signal],
        matched: &[usize],
        first_block: u64,
    ) -> Option<&'c Arc<Candidate>> {
        let total: f64 = signals.iter().map(Signal::requests).sum();
        let limit = bound(total, usable.len());
        let within = |i: usize| !signals[i].saturated() && signals[i].requests() < limit;
        let holder = (0..usable.len())
            .filter(|&i| matched[i] > 0 && within(i))
            .max_by(|&a, &b| {
                matched[a]
                    .cmp(&matched[b])
                    .then(signals[b].requests().total_cmp(&signals[a].requests()))
            });
        if let Some(i) = holder {
            return Some(usable[i]);
        }
        if matched.iter().any(|m| *m > 0) {
            return None; // held, but its holders are busy: the least loaded takes it
        }
        let open: Vec<&'c Arc<Candidate>> = (0..usable.len()).filter(|&i| within(i)).map(|i| usable[i]).collect();
        (!open.is_empty()).then(|| rendezvous(&open, &format!("{first_block:016x}")))
    }
}
