//! `prefix`: prompt-prefix affinity. A prompt is cut into blocks of `BLOCK` bytes and hashed
//! as a chain, `h(i) = H(block_i, h(i-1))` (seeded with the slug), so a block's hash names
//! the whole prefix up to it. An index remembers, per block hash, the instances recent
//! prompts with that prefix were sent to; the next prompt goes to the instance holding its
//! longest prefix (the one most likely to have it in its KV cache), unless that instance
//! is over a bound on its load (consistent hashing with bounded loads: at most 1.25 times
//! the mean, plus one), and then by `least_load`.
//!
//! A prompt no instance holds any block of is placed by rendezvous hashing of its first
//! block (within the same bound), so every process of a server, each with its own index,
//! sends the first request of a shared system prompt to the same instance.
//!
//! The index is an approximate LRU in two generations: lookups and inserts go to the young
//! map; when it is full, it becomes the old one (the previous old is dropped), and a hit in
//! the old map moves the entry back. Memory stays bounded; what was used lately stays.

use std::collections::HashMap;

use crate::core::hash::{fnv1a64, mix64};

/// Bytes per block (about 16 tokens, vLLM's block).
pub const BLOCK: usize = 64;
/// Block hashes one generation of the index holds.
const GENERATION: usize = 1 << 17;
/// Instances remembered per block (the most recent first).
const OWNERS: usize = 4;
/// A prompt's blocks looked at, at most (a 256 KiB prefix; the rest shares its fate).
pub const MAX_BLOCKS: usize = 4096;

/// The chained hashes of `text`'s blocks (a text shorter than a block is one block; a
/// last partial block is not hashed: it is not cached by a model server either).
pub fn chain(slug: &str, text: &[u8]) -> Vec<u64> {
    let mut previous = fnv1a64(slug.as_bytes());
    let blocks: Vec<&[u8]> = if text.len() < BLOCK {
        vec![text]
    } else {
        text.chunks_exact(BLOCK).take(MAX_BLOCKS).collect()
    };
    blocks
        .into_iter()
        .map(|block| {
            previous = mix64(fnv_from(previous, block));
            previous
        })
        .collect()
}

/// FNV-1a over `bytes`, started from `state` (`H(block, h(i-1))`).
fn fnv_from(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state ^ 0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// An instance's key in the index.
pub fn owner_key(id: &str) -> u64 {
    mix64(fnv1a64(id.as_bytes())) | 1
}

type Owners = [u64; OWNERS];

/// Block hash -> the instances it was sent to.
#[derive(Default)]
pub struct PrefixIndex {
    young: HashMap<u64, Owners>,
    old: HashMap<u64, Owners>,
}

impl PrefixIndex {
    fn owners(&mut self, hash: u64) -> Option<Owners> {
        if let Some(owners) = self.young.get(&hash) {
            return Some(*owners);
        }
        let owners = self.old.remove(&hash)?;
        self.insert(hash, owners);
        Some(owners)
    }

    fn insert(&mut self, hash: u64, owners: Owners) {
        if self.young.len() >= GENERATION && !self.young.contains_key(&hash) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, owners);
    }

    /// How many leading blocks of `chain` each of `keys` holds.
    pub fn matches(&mut self, chain: &[u64], keys: &[u64]) -> Vec<usize> {
        let mut matched = vec![0; keys.len()];
        for (i, hash) in chain.iter().enumerate() {
            let Some(owners) = self.owners(*hash) else {
                break;
            };
            let mut any = false;
            for (k, key) in keys.iter().enumerate() {
                if matched[k] == i && owners.contains(key) {
                    matched[k] = i + 1;
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        matched
    }

    /// Remembers that the prompt of `chain` went to the instance of `key`.
    pub fn record(&mut self, chain: &[u64], key: u64) {
        for hash in chain {
            let mut owners = self.owners(*hash).unwrap_or([0; OWNERS]);
            if owners[0] != key {
                let at = owners.iter().position(|o| *o == key).unwrap_or(OWNERS - 1);
                owners.copy_within(0..at, 1);
                owners[0] = key;
            }
            self.insert(*hash, owners);
        }
    }

    /// Block hashes held (both generations).
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The most requests an instance may hold and still be preferred for its prefix, given
/// the requests of all `n` instances (`total`): 1.25 times the mean, rounded up, plus one.
pub fn bound(total: f64, n: usize) -> f64 {
    (1.25 * total / n.max(1) as f64).ceil() + 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_names_the_whole_prefix() {
        let a = chain("s", &[b'x'; 200]);
        assert_eq!(a.len(), 3); // the last 8 bytes are a partial block
        let mut other = vec![b'x'; 200];
        other[100] = b'y';
        let b = chain("s", &other);
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1], b[1]);
        assert_ne!(a[2], b[2]);
        assert_ne!(chain("t", &[b'x'; 200])[0], a[0], "the slug seeds the chain");
        assert_eq!(chain("s", b"hi").len(), 1);
        assert_eq!(chain("s", &vec![0; BLOCK * (MAX_BLOCKS + 5)]).len(), MAX_BLOCKS);
    }

    #[test]
    fn the_longest_holder_of_a_prefix_is_found() {
        let mut index = PrefixIndex::default();
        let system: Vec<u8> = (0..640).map(|i| b'a' + (i % 26) as u8).collect();
        let mut long = system.clone();
        long.extend_from_slice(&[b'q'; 320]);
        let (x, y) = (owner_key("x"), owner_key("y"));
        index.record(&chain("s", &system), x);
        index.record(&chain("s", &long), y);
        let mut asked = system.clone();
        asked.extend_from_slice(&[b'q'; 200]);
        let matched = index.matches(&chain("s", &asked), &[x, y, owner_key("z")]);
        assert_eq!(matched, vec![10, 13, 0]);
    }

    #[test]
    fn the_index_stays_bounded_and_keeps_what_is_used() {
        let mut index = PrefixIndex::default();
        let kept = chain("s", b"kept");
        index.record(&kept, 5);
        for i in 0..(GENERATION as u64 * 3) {
            index.record(&[i << 8], 3);
            if i % 1000 == 0 {
                assert_eq!(index.matches(&kept, &[5]), vec![1]);
            }
        }
        assert!(index.len() <= 2 * GENERATION);
        assert_eq!(index.matches(&kept, &[5]), vec![1]);
    }

    #[test]
    fn the_bound_is_a_quarter_over_the_mean() {
        assert_eq!(bound(0.0, 4), 1.0);
        assert_eq!(bound(8.0, 4), 4.0);
        assert_eq!(bound(10.0, 4), 5.0);
    }
}
