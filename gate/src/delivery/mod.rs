//! Delivery engine cores: the sans-IO state that decides *when* things happen on a shard.
//!
//! Owns no sockets and reads no clock; time enters only as a `now` argument and every core says
//! when it wants to be called back through `poll_timeout`. The shard shell owns one of each per
//! shard (or per session), drives them, and re-arms its single runtime timer from the earliest
//! `poll_timeout`:
//!
//! - [`wheel`]: the shard's one timer store (login deadlines, idle timeouts, ack retries, flush
//!   ticks, merge windows all live in it). The cores below keep *no* timer of their own: the shell
//!   keeps one wheel entry per core instance, at its `poll_timeout`.
//! - [`ack`]: [`AckTracker`], one per session: the PUSHes sent and not yet acknowledged, their
//!   resend deadlines with capped exponential backoff, and the give-up after `max_retries`
//!   (PROTOCOL.md "Session rules" 4; a PULL acknowledges up to its `after_msg_id`, rule 6).
//! - [`report`]: [`ReportBatcher`], one per shard: delivered / undelivered msg ids gathered into
//!   one `DeliveryReportBatch` toward the backend per `report_batch` ids or `report_flush_ms`.
//! - [`notify`]: [`NotifyMerger`], one per shard: NOTIFY updates of one session merged per
//!   conversation within `notify_merge_ms` into one NOTIFY frame.

pub mod ack;
pub mod notify;
pub mod report;
pub mod wheel;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

pub use ack::{AckConfig, AckTracker, ConvRef, Full};
pub use notify::{MAX_UPDATE_LEN, NotifyConfig, NotifyMerger};
pub use report::{BatchConfig, ReportBatcher};
pub use wheel::{TimerId, TimerWheel};

/// A `HashMap` keyed by integers the gate or its backend chose (msg ids, uids, session ids,
/// connection keys), with [`IdHasher`] instead of SipHash: these maps are on the per-message path.
type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A fast, non-cryptographic hasher for integer keys: each word is folded in with a 64x64->128
/// multiply whose halves are xored, so high and low bits of the result both depend on every bit
/// of the key (hashbrown picks buckets from the low bits and tags from the high ones).
///
/// Not DoS-resistant. The keys are chosen by the gate or the backend; a client only *looks up*
/// ids (ACK), and a lookup cannot create collisions among the stored keys.
#[derive(Clone, Copy)]
struct IdHasher(u64);

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

/// `now + d`, for deadlines computed from configured durations. A sum beyond what `Instant` can
/// hold becomes ~136 years from `now` (or `now` itself on a platform that cannot hold even that),
/// never a panic.
fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(1 << 32);
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
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

    #[test]
    fn later_saturates_instead_of_panicking() {
        let t0 = Instant::now();
        assert_eq!(
            later(t0, Duration::from_millis(5)),
            t0 + Duration::from_millis(5)
        );
        assert!(later(t0, Duration::MAX) > t0);
    }
}

/// Small deterministic PRNG (xorshift64*) for the model tests of this module's cores, so they
/// need no dependency.
#[cfg(test)]
pub(crate) mod test_rng {
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            if n == 0 { 0 } else { self.next() % n }
        }
    }
}
