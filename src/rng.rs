//! Named, seeded random streams.
//!
//! Each consumer of randomness (arrivals, stage counts, lengths, routing, outcomes) draws
//! from its own stream, seeded from (master seed, stream name). Adding a stream never shifts
//! another one, so two policies run on the same seed see exactly the same workload (common
//! random numbers). The generator is PCG-64 from `rand_pcg`, pinned to an exact version.

use rand::SeedableRng;
use rand_pcg::Pcg64;

pub type StreamRng = Pcg64;

/// 64-bit FNV-1a: a stable hash of bytes (stream names, input files).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_more(FNV_OFFSET, bytes)
}

/// FNV-1a's starting state.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Continue an FNV-1a hash `h` over more bytes (a file read in pieces).
pub fn fnv1a64_more(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A hasher for integer ids (requests, workflows): one multiplication by the golden ratio, no
/// per-process random seed (so maps of ids cost little and behave the same on every run).
#[derive(Default, Clone, Copy)]
pub struct IdKeyHasher(u64);

impl std::hash::Hasher for IdKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A hash map keyed by integer ids.
pub type IdMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdKeyHasher>>;

/// Combine two 64-bit values into one well-mixed value (content ids, block hashes, salted
/// seeds): the one seed mixer of the crate.
#[inline]
pub fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// SplitMix64: one step of the generator whose state advances by the golden gamma; a
/// sequence of draws is `splitmix64(s), splitmix64(s + gamma), ...`.
#[inline]
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stream called `name` under `master_seed`.
pub fn stream(master_seed: u64, name: &str) -> StreamRng {
    let mut seed = [0u8; 32];
    let mut s = splitmix64(master_seed ^ fnv1a64(name.as_bytes()));
    for chunk in seed.chunks_mut(8) {
        s = splitmix64(s);
        chunk.copy_from_slice(&s.to_le_bytes());
    }
    Pcg64::from_seed(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn streams_are_reproducible_and_independent() {
        let a1: Vec<u64> = (0..4)
            .map({
                let mut r = stream(7, "arrivals");
                move |_| r.random()
            })
            .collect();
        let a2: Vec<u64> = (0..4)
            .map({
                let mut r = stream(7, "arrivals");
                move |_| r.random()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = stream(7, "lengths");
                move |_| r.random()
            })
            .collect();
        let c: Vec<u64> = (0..4)
            .map({
                let mut r = stream(8, "arrivals");
                move |_| r.random()
            })
            .collect();
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        assert_ne!(a1, c);
    }

    const GOLDEN_FIRST_DRAW: u64 = 7_665_263_154_312_373_240;

    #[test]
    fn first_draw_is_pinned() {
        // Golden value: if this changes, every seed in every scenario changes meaning.
        let mut r = stream(42, "arrivals");
        let x: u64 = r.random();
        assert_eq!(x, GOLDEN_FIRST_DRAW, "stream(42, \"arrivals\") changed: got {x}");
    }
}
