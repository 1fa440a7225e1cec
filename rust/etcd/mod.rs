//! etcd, the cluster's source of truth: the one client of its JSON gateway for unary calls
//! (`client.rs` over `http.rs`), where a registry's keys live (`keys.rs`), and the cluster
//! backend of the write API (`writes.rs`), and the watch stream the replica follows
//! (`watch.rs`; `core/replica.rs` applies, `replica.py` runs the loop).

pub mod client;
pub mod http;
pub mod keys;
pub mod list;
pub mod watch;
pub mod writes;
