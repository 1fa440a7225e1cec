//! The registry of one process: the store with where its writes go, this process's
//! instance selector and its cached list responses, composed in plain Rust so that the
//! Python binding and the API port's gate (`edge/`) share one of each.

use std::sync::Arc;

use crate::core::cache::ResponseCache;
use crate::core::record::Result;
use crate::core::select::Selector;
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
    /// Applies `write` through this process's backend (see `writes.rs`).
    pub fn write(&self, write: Write) -> Result<u64> {
        self.writes.write(&self.store, write)
    }
}
