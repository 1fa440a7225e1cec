//! registry-svc core: the LMDB store, its indexes and instance selection (with load state
//! shared across processes), the gates of the API and data ports with their hot reads and
//! proxy, in plain Rust tested by `cargo test`, with a thin PyO3 binding in `python.rs`.

/// Rust's allocations in the extension (not Python's, not LMDB's): see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod core;
pub mod dns;
pub mod edge;
pub mod epp;
pub mod etcd;
pub mod forward;
pub mod lanes;
pub mod load;
pub mod netguard;
pub mod query;
pub mod reads;
pub mod registry;
pub mod roles;
pub mod route;
pub mod rules;
pub mod tokens;
pub mod url;
pub mod writes;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_dns;
#[cfg(feature = "python")]
mod python_epp;
#[cfg(feature = "python")]
mod python_errors;
#[cfg(feature = "python")]
mod python_etcd;
#[cfg(feature = "python")]
mod python_front;
#[cfg(feature = "python")]
mod python_load;
#[cfg(feature = "python")]
mod python_picker;
#[cfg(feature = "python")]
mod python_rules;
#[cfg(feature = "python")]
mod python_signal;
