//! registry-svc core: the LMDB store, its indexes and (later) instance selection, in plain
//! Rust tested by `cargo test`, with a thin PyO3 binding in `python.rs`.

pub mod model;
pub mod store;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod store_tests;
