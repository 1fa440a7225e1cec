//! The registry of one process: the store, this process's instance selector and its
//! cached list responses, composed in plain Rust so that the Python binding and the API
//! port's gate (`edge/`) share one of each.

use crate::cache::ResponseCache;
use crate::select::Selector;
use crate::store::Store;
use crate::tokens::Tokens;

pub struct Registry {
    pub store: Store,
    pub selector: Selector,
    pub responses: ResponseCache,
    /// The workers' resolved tokens (`tokens.rs`; the gates keep a cache of their own).
    pub tokens: Tokens,
}
