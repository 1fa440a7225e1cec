//! Small, fast, stable hashes (never for security): rendezvous hashing in the selector
//! and the slot keys of the shared balancer state. A module of its own so that neither of
//! those two depends on the other for it.

/// FNV-1a, 64 bits: rendezvous hashing here, the shared state's slot keys (`shared.rs`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// splitmix64's finalizer: spreads the bits of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}
