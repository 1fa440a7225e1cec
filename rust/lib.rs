//! registry-svc core: the LMDB store, its indexes and instance selection (with load state
//! shared across processes), the gates of the API and data ports with their hot reads and
//! proxy, in plain Rust tested by `cargo test`, with a thin PyO3 binding in `python.rs`.

/// Rust's allocations in the extension (not Python's, not LMDB's): see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod apply;
pub mod cache;
pub mod candidate;
pub mod dns;
pub mod edge;
mod error;
pub mod etcd_http;
pub mod forward;
pub mod hash;
mod keys;
pub mod model;
pub mod netguard;
pub mod policy;
pub mod reads;
mod record;
pub mod registry;
pub mod replica;
pub mod route;
pub mod rules;
pub mod select;
pub mod shared;
pub mod store;
pub mod tokens;
pub mod url;
mod wait;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_dns;
#[cfg(feature = "python")]
mod python_errors;
#[cfg(feature = "python")]
mod python_front;
#[cfg(feature = "python")]
mod python_rules;

#[cfg(test)]
mod select_tests;
#[cfg(test)]
mod store_tests;
