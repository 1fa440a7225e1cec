//! The registry of one process: the store, this process's instance selector and its
//! cached list responses, composed in plain Rust so that the Python binding and the API
//! port's gate (`edge/`) share one of each.

use crate::core::cache::ResponseCache;
use crate::core::select::Selector;
use crate::core::store::Store;
use crate::route::RouteCache;
use crate::tokens::Tokens;

pub struct Registry {
    pub store: Store,
    pub selector: Selector,
    pub responses: ResponseCache,
    /// Resolved tokens (`tokens.rs`): one cache per process, for its gates and its workers.
    pub tokens: Tokens,
    /// The slugs' proxy settings (`route.rs`), as the proxy reads them per request.
    pub routes: RouteCache,
}
