//! The registry's core: records in LMDB with their indexes (`store`), the one apply path
//! of writes (`apply`), the cluster replica (`replica`), the cached responses (`cache`),
//! and selection (`select`, with its policies, hashing and the state every process shares,
//! `shared`). Every door (the gates, the proxy, DNS, the Python binding) reads and writes
//! through these; none of them imports a door.
//!
//! The vocabulary the store, the apply path and the replica share lives apart from each
//! (`record`, `keys`, `error`), so that none of them needs another for it: the imports go
//! one way (store -> apply, replica; replica -> apply).

pub(crate) mod apply;
pub mod cache;
pub mod candidate;
pub(crate) mod error;
pub mod hash;
pub(crate) mod keys;
pub mod least_load;
pub mod load;
pub mod load_json;
pub mod model;
pub mod policy;
pub mod prefix;
pub(crate) mod record;
pub mod replica;
pub mod select;
pub mod shared;
pub mod store;
pub(crate) mod wait;
pub mod write_counts;

#[cfg(test)]
mod select_load_tests;
#[cfg(test)]
mod select_tests;
#[cfg(test)]
mod store_tests;
