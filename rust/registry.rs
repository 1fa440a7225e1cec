//! The registry of one process: the store with where its writes go, this process's
//! instance selector and its cached list responses, composed in plain Rust so that the
//! Python binding and the API port's gate (`edge/`) share one of each.

use std::sync::Arc;

use crate::core::cache::ResponseCache;
use crate::core::record::Result;
use crate::core::select::{PickRequest, Picked, Policy, Selector};
use crate::core::store::Store;
use crate::route::RouteCache;
use crate::tokens::Tokens;
use crate::writes::{Write, WriteBackend};

pub struct Registry {
    pub store: Arc<Store>,
    /// Where this process's writes go (`writes.rs`): the local writer, or etcd.
    pub writes: Arc<dyn WriteBackend>,
    pub selector: Selector,
    pub responses: ResponseCache,
    /// Resolved tokens (`tokens.rs`): one cache per process, for its gates and its workers.
    pub tokens: Tokens,
    /// The slugs' proxy settings (`route.rs`), as the proxy reads them per request.
    pub routes: RouteCache,
}

impl Registry {
    /// Picks for `request` (every door's pick: the gates, the proxy, the workers), with the
    /// slug's `least_load` weights (`route.rs`) when its policy scores load.
    pub fn pick(&self, request: &PickRequest<'_>) -> Result<Picked> {
        let policy = request.policy.unwrap_or_else(|| self.selector.policy_of(request.slug));
        if matches!(policy, Policy::LeastLoad | Policy::Prefix) && request.weights.is_none() {
            let weighted = PickRequest {
                weights: Some(self.routes.get(&self.store, request.slug).load_weights),
                ..request.clone()
            };
            return self.selector.pick(&self.store, &weighted);
        }
        self.selector.pick(&self.store, request)
    }

    /// Applies `write` through this process's backend (see `writes.rs`).
    pub fn write(&self, write: Write) -> Result<u64> {
        self.writes.write(&self.store, write)
    }
}
