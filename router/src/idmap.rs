//! [`IdMap`]: the `HashMap` of the per-message path in the gate and the backend, keyed by
//! integer ids (msg ids, uids, session ids, connection keys, group ids) with [`IdHasher`]
//! instead of SipHash, which was a tenth of a fan-out profile.
//!
//! Not for keys a client picks freely and can multiply (the dedup index's `client_msg_id`): an
//! unkeyed hash lets a client aim many keys at one bucket. Those maps keep std's `RandomState`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by integers the gate or its backend chose (msg ids, uids, session ids,
/// connection keys), with [`IdHasher`] instead of SipHash: these maps are on the per-message path.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A fast, non-cryptographic hasher for integer keys: each word is folded in with a 64x64->128
/// multiply whose halves are xored, so high and low bits of the result both depend on every bit
/// of the key (hashbrown picks buckets from the low bits and tags from the high ones).
///
/// Not DoS-resistant. The keys are chosen by the gate, the backend or the token issuer (uids); a
/// client only *looks up* ids (ACK), and a lookup cannot create collisions among the stored keys.
#[derive(Clone, Copy)]
pub struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        Self(0x243F_6A88_85A3_08D3)
    }
}

const FOLD_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.0 ^ n) * u128::from(FOLD_MUL);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash};

    use super::*;

    fn hash<T: Hash>(t: T) -> u64 {
        BuildHasherDefault::<IdHasher>::default().hash_one(t)
    }

    #[test]
    fn id_hasher_spreads_sequential_and_strided_ids_over_low_bits() {
        // Sequential ids, and ids that differ only in high bits (a timestamp above a partition
        // and sequence), must both land in many distinct low-bit buckets.
        for stride in [1u64, 1 << 22, 1 << 40] {
            let buckets: std::collections::HashSet<u64> =
                (0..1024u64).map(|i| hash(i * stride) & 1023).collect();
            assert!(buckets.len() > 600, "stride {stride}: {}", buckets.len());
        }
        assert_ne!(hash((1u64, 2u64)), hash((2u64, 1u64)));
    }
}
