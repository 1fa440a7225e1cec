//! Load-balancing selection: which instance of a slug gets the next request.
//!
//! The candidates of a slug are read from the store through the slug index and cached,
//! keyed on the slug's partition index, so a pick parses no JSON. Each
//! candidate carries its ready-made `{"instance": ...}` response body.
//!
//! Routable: `Healthy` instances; `Unknown` ones only while none is Healthy; never
//! `Unhealthy`, `Starting` or `Stopping`, nor one in maintenance. Tags filter first, then zone preference, then
//! passive outlier ejection (never more than half of the slug), then the policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::core::cache::{BoundedMap, Stamp};
pub use crate::core::candidate::{host_and_port, Candidate, Health, Host};
use crate::core::hash::mix64;
use crate::core::load::LoadTable;
pub use crate::core::policy::Policy;
use crate::core::policy::{rendezvous, smooth_weighted};
use crate::core::prefix::PrefixIndex;

/// Bytes of cached pick candidates one process keeps (their bodies dominate). Keys are
/// valid slugs and entries are bounded by what the store holds, so one slug may use it all.
const CANDIDATE_CACHE_BYTES: usize = 128 << 20;
use crate::core::model::INSTANCES;
use crate::core::shared::{ms_at, SharedState};
use crate::core::store::{Result, Store};

/// What a caller asks for.
#[derive(Debug, Default, Clone)]
pub struct PickRequest<'a> {
    pub slug: &'a str,
    pub policy: Option<Policy>,
    pub zone: Option<&'a str>,
    pub key: Option<&'a str>,
    pub tags: &'a [String],
    /// Count the pick as an in-flight request until `release` (the proxy does; a sidecar
    /// asking `pick` does not).
    pub track: bool,
    /// Instances to avoid while another is routable (a retry goes elsewhere).
    pub exclude: &'a [String],
    /// Only instances that list this model (`models`) may be chosen.
    pub model: Option<&'a str>,
    /// The prompt (or prefix key) the `prefix` policy places by.
    pub prefix: Option<&'a [u8]>,
    /// `least_load`'s weights (the slug's `loadWeights`, `route.rs`; None: 2:2:1).
    pub weights: Option<crate::core::least_load::Weights>,
}

#[derive(Debug)]
pub enum Picked {
    Instance(Arc<Candidate>),
    /// The slug has no instances at all.
    UnknownSlug,
    /// The slug has instances, but none is routable.
    NoneRoutable,
    /// No instance of the slug lists the model asked for.
    NoModel,
    /// Every routable instance is over its queue limit or has its KV cache full
    /// (`least_load`, `prefix`).
    Saturated,
}

/// How a proxied request to an instance went, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect failure or a 5xx answer.
    Failure,
    /// The request was not sent (e.g. the client went away): only the in-flight count moves.
    Abandoned,
}

/// Outlier detection settings.
#[derive(Debug, Clone, Copy)]
pub struct EjectionConfig {
    pub consecutive_failures: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
        }
    }
}

/// Per-slug policy state; it outlives candidate rebuilds so that, e.g., round robin stays
/// even while the registry changes.
#[derive(Debug, Default)]
struct PolicyState {
    next: AtomicUsize,
    smooth_weights: Mutex<HashMap<String, i64>>,
}

/// A slug's candidates as cached, with the routable set for requests without tag or zone
/// precomputed so that the common pick touches only the instance it chooses.
pub struct SlugCandidates {
    pub all: Vec<Arc<Candidate>>,
    default_routable: Vec<Arc<Candidate>>,
}

impl SlugCandidates {
    pub fn new(all: Vec<Arc<Candidate>>) -> SlugCandidates {
        let default_routable = routable(&all, &[], None).into_iter().cloned().collect();
        SlugCandidates { all, default_routable }
    }
}

struct CachedSlug {
    stamp: Stamp,
    candidates: Arc<SlugCandidates>,
}

pub struct Selector {
    default_policy: Policy,
    slug_policies: HashMap<String, Policy>,
    ejection: EjectionConfig,
    cache: RwLock<BoundedMap<String, CachedSlug>>,
    policy_state: RwLock<HashMap<String, Arc<PolicyState>>>,
    /// In-flight counts and outlier ejection, shared by the server's processes when
    /// mapped from a file (`shared.rs`).
    shared: SharedState,
    /// Model servers' load signals, shared like `shared` (`load.rs`).
    load: LoadTable,
    /// Where prompt prefixes were sent (`prefix.rs`; this process's own).
    prefix: Mutex<PrefixIndex>,
    rng: AtomicU64,
}

impl Default for Selector {
    fn default() -> Self {
        Selector::new(Policy::RoundRobin, HashMap::new(), EjectionConfig::default())
    }
}

impl Selector {
    pub fn new(default_policy: Policy, slug_policies: HashMap<String, Policy>, ejection: EjectionConfig) -> Selector {
        Selector::with_state(default_policy, slug_policies, ejection, SharedState::private())
    }

    /// A selector whose in-flight and ejection state is `shared` (a table every process of
    /// the server maps, or a private one).
    pub fn with_state(
        default_policy: Policy,
        slug_policies: HashMap<String, Policy>,
        ejection: EjectionConfig,
        shared: SharedState,
    ) -> Selector {
        // The wall clock's nanoseconds and the pid: a new sequence at every start (the
        // time since `Instant::now()` is about zero, which made it the same each time).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        Selector {
            default_policy,
            slug_policies,
            ejection,
            cache: RwLock::new(BoundedMap::new(CANDIDATE_CACHE_BYTES, CANDIDATE_CACHE_BYTES)),
            policy_state: RwLock::new(HashMap::new()),
            shared,
            load: LoadTable::private(),
            prefix: Mutex::new(PrefixIndex::default()),
            rng: AtomicU64::new(seed),
        }
    }

    /// The selector with `load` as its table of load signals (one every process maps).
    pub fn with_load(mut self, load: LoadTable) -> Selector {
        self.load = load;
        self
    }

    /// The load signals picks read.
    pub fn load(&self) -> &LoadTable {
        &self.load
    }

    /// The policy a pick of `slug` uses when it names none.
    pub fn policy_of(&self, slug: &str) -> Policy {
        self.slug_policies.get(slug).copied().unwrap_or(self.default_policy)
    }

    /// The candidates of `slug`, from the cache while no write touched the slug.
    pub fn candidates(&self, store: &Store, slug: &str) -> Result<Arc<SlugCandidates>> {
        if let Some(hit) = self
            .cache
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(slug)
        {
            if hit.stamp.is_current(store, &INSTANCES, Some(slug))? {
                return Ok(Arc::clone(&hit.candidates));
            }
        }
        let stamp = Stamp::read(store, &INSTANCES, Some(slug))?;
        let (_, records) = store.list(&INSTANCES, &[("slug".to_owned(), slug.to_owned())])?;
        let all = records
            .iter()
            .filter_map(|r| Candidate::from_json(&r.json))
            .map(Arc::new)
            .collect();
        let built = Arc::new(SlugCandidates::new(all));
        let size = slug.len()
            + built
                .all
                .iter()
                .map(|c| c.body.len() + c.url.len() + c.id.len())
                .sum::<usize>();
        self.cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                slug.to_owned(),
                CachedSlug {
                    stamp,
                    candidates: Arc::clone(&built),
                },
                size,
            );
        Ok(built)
    }

    /// Picks an instance of `req.slug` from the store.
    pub fn pick(&self, store: &Store, req: &PickRequest<'_>) -> Result<Picked> {
        let candidates = self.candidates(store, req.slug)?;
        Ok(self.pick_among(&candidates, req, Instant::now()))
    }

    /// `pick_from`, using the precomputed routable set when the request has no filters.
    pub fn pick_among(&self, candidates: &SlugCandidates, req: &PickRequest<'_>, now: Instant) -> Picked {
        let unfiltered = req.tags.is_empty() && req.zone.is_none() && req.exclude.is_empty() && req.model.is_none();
        if unfiltered && !candidates.all.is_empty() {
            if candidates.default_routable.is_empty() {
                return Picked::NoneRoutable;
            }
            let routable: Vec<&Arc<Candidate>> = candidates.default_routable.iter().collect();
            return self.finish(req, self.without_ejected(routable, now));
        }
        self.pick_from(&candidates.all, req, now)
    }

    /// The selection itself, over a given candidate list (sorted by id).
    pub fn pick_from(&self, candidates: &[Arc<Candidate>], req: &PickRequest<'_>, now: Instant) -> Picked {
        if candidates.is_empty() {
            return Picked::UnknownSlug;
        }
        let serving: Vec<Arc<Candidate>>;
        let candidates = match req.model {
            None => candidates,
            Some(model) => {
                serving = candidates.iter().filter(|c| c.serves(model)).cloned().collect();
                if serving.is_empty() {
                    return Picked::NoModel;
                }
                &serving
            }
        };
        let mut routable = routable(candidates, req.tags, req.zone);
        if routable.is_empty() {
            return Picked::NoneRoutable;
        }
        if !req.exclude.is_empty() && routable.iter().any(|c| !req.exclude.contains(&c.id)) {
            routable.retain(|c| !req.exclude.contains(&c.id));
        }
        let usable = self.without_ejected(routable, now);
        self.finish(req, usable)
    }

    /// The instances of `candidates` a pick could choose right now (routable, outliers
    /// ejected within the panic threshold), in id order: what DNS answers list.
    pub fn usable(&self, candidates: &[Arc<Candidate>], now: Instant) -> Vec<Arc<Candidate>> {
        let routable = routable(candidates, &[], None);
        self.without_ejected(routable, now).into_iter().cloned().collect()
    }

    /// Applies the policy to the usable instances and records a tracked pick.
    fn finish(&self, req: &PickRequest<'_>, usable: Vec<&Arc<Candidate>>) -> Picked {
        let policy = req.policy.unwrap_or_else(|| self.policy_of(req.slug));
        let chosen = match policy {
            Policy::LeastLoad | Policy::Prefix => match self.choose_by_load(req, &usable, policy) {
                Some(chosen) => Arc::clone(chosen),
                None => return Picked::Saturated,
            },
            _ => Arc::clone(self.choose(req.slug, &usable, policy, req.key)),
        };
        if req.track {
            self.shared.begin(&chosen.id);
        }
        Picked::Instance(chosen)
    }

    fn without_ejected<'c>(&self, routable: Vec<&'c Arc<Candidate>>, now: Instant) -> Vec<&'c Arc<Candidate>> {
        // Most picks end here without reading the clock: nothing was ejected lately.
        if !self.shared.ever_ejected() {
            return routable;
        }
        let now = ms_at(now);
        if !self.shared.any_ejected(now) {
            self.shared.forget_ejections_over(now);
            return routable;
        }
        let kept: Vec<&Arc<Candidate>> = routable
            .iter()
            .copied()
            .filter(|c| !self.shared.is_ejected(&c.id, now))
            .collect();
        // Panic threshold: ejection may never remove more than half of the instances.
        if kept.is_empty() || kept.len() * 2 < routable.len() {
            routable
        } else {
            kept
        }
    }

    fn policy_state(&self, slug: &str) -> Arc<PolicyState> {
        if let Some(state) = self
            .policy_state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(slug)
        {
            return Arc::clone(state);
        }
        let mut states = self
            .policy_state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(states.entry(slug.to_owned()).or_default())
    }

    pub(crate) fn random(&self) -> u64 {
        // splitmix64 over an atomic counter: lock-free and good enough for balancing.
        let x = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        mix64(x)
    }

    fn choose<'c>(
        &self,
        slug: &str,
        usable: &[&'c Arc<Candidate>],
        policy: Policy,
        key: Option<&str>,
    ) -> &'c Arc<Candidate> {
        let n = usable.len();
        if n == 1 {
            return usable[0];
        }
        let state = || self.policy_state(slug);
        match policy {
            Policy::RoundRobin => usable[state().next.fetch_add(1, Ordering::Relaxed) % n],
            Policy::Random => usable[(self.random() % n as u64) as usize],
            Policy::Weighted => {
                let state = state();
                let mut current = state
                    .smooth_weights
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                smooth_weighted(&mut current, usable)
            }
            Policy::LeastRequest => {
                let a = (self.random() % n as u64) as usize;
                let mut b = (self.random() % (n as u64 - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let load = |c: &Candidate| self.shared.in_flight(&c.id);
                if load(usable[b]) < load(usable[a]) {
                    usable[b]
                } else {
                    usable[a]
                }
            }
            Policy::ConsistentHash => match key {
                Some(key) => rendezvous(usable, key),
                None => usable[(self.random() % n as u64) as usize],
            },
            // `finish` sends these to `choose_by_load`; a caller here gets a random one.
            Policy::LeastLoad | Policy::Prefix => usable[(self.random() % n as u64) as usize],
        }
    }

    /// Records how a tracked request went: ends its in-flight count and feeds outlier
    /// detection. `slug` bounds ejection to half of that slug's routable instances.
    /// Returns true when this outcome ejected the instance.
    pub fn release(&self, store: &Store, slug: &str, id: &str, outcome: Outcome) -> Result<bool> {
        self.shared.end(id);
        match outcome {
            Outcome::Abandoned => Ok(false),
            // A success needs no candidates (no store read on the proxy's common path).
            Outcome::Success => Ok(self.record_outcome(&[], id, outcome, Instant::now())),
            Outcome::Failure => {
                let candidates = self.candidates(store, slug)?;
                Ok(self.record_outcome(&candidates.all, id, outcome, Instant::now()))
            }
        }
    }

    /// Outlier bookkeeping for one result. Returns true when it ejected the instance.
    pub fn record_outcome(&self, candidates: &[Arc<Candidate>], id: &str, outcome: Outcome, now: Instant) -> bool {
        let threshold = self.ejection.consecutive_failures;
        if outcome == Outcome::Success {
            // After as many successes in a row as it takes failures to eject, past
            // ejections are forgotten (the next one is short again).
            self.shared.succeeded(id, threshold);
            return false;
        }
        let now = ms_at(now);
        let Some(ejections) = self.shared.failed(id, threshold, now) else {
            return false;
        };
        let routable = routable(candidates, &[], None);
        let ejected_now = routable
            .iter()
            .filter(|c| c.id != id && self.shared.is_ejected(&c.id, now))
            .count();
        if (ejected_now + 1) * 2 > routable.len() {
            return false; // panic threshold: keep it in rotation
        }
        let factor = 1u32.checked_shl(ejections.min(16)).unwrap_or(u32::MAX);
        let duration = self.ejection.base.saturating_mul(factor).min(self.ejection.max);
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.shared.eject(id, now.saturating_add(millis));
        true
    }

    /// Tracked requests in flight to an instance, over every process sharing the state.
    pub fn in_flight(&self, id: &str) -> u32 {
        self.shared.in_flight(id)
    }

    /// Forgets the in-flight requests of processes that died (`SharedState::reap_dead`).
    pub fn reap_dead_processes(&self) -> u64 {
        self.shared.reap_dead()
    }

    /// The shared table (in-flight counts, ejections, abandoned queries).
    pub fn shared(&self) -> &SharedState {
        &self.shared
    }

    /// Whether `id` is ejected at `now`.
    pub fn is_ejected(&self, id: &str, now: Instant) -> bool {
        self.shared.is_ejected(id, ms_at(now))
    }
}

fn routable<'c>(candidates: &'c [Arc<Candidate>], tags: &[String], zone: Option<&str>) -> Vec<&'c Arc<Candidate>> {
    let tagged = |c: &&Arc<Candidate>| tags.iter().all(|t| c.tags.contains(t));
    let mut chosen: Vec<&Arc<Candidate>> = candidates
        .iter()
        .filter(tagged)
        .filter(|c| c.health == Health::Healthy)
        .collect();
    if chosen.is_empty() {
        chosen = candidates
            .iter()
            .filter(tagged)
            .filter(|c| c.health == Health::Unknown)
            .collect();
    }
    if let Some(zone) = zone {
        let in_zone: Vec<&Arc<Candidate>> = chosen
            .iter()
            .copied()
            .filter(|c| c.zone.as_deref() == Some(zone))
            .collect();
        if !in_zone.is_empty() {
            return in_zone;
        }
    }
    chosen
}

#[path = "select_load.rs"]
mod by_load;
