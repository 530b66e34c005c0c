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
pub mod frame;
pub mod notify;
pub mod report;
pub mod wheel;

use std::time::{Duration, Instant};

pub use ack::{AckConfig, AckTracker, ConvRef, Full};
pub use frame::{JoinedRun, OutFrame, SharedFrame};
pub use notify::{MAX_UPDATE_LEN, NotifyConfig, NotifyMerger};
pub use report::{BatchConfig, ReportBatcher};
pub use wheel::{TimerId, TimerWheel};

/// Maps on the per-message path: keys are ids the gate or its backend chose.
use router::idmap::IdMap;

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
    use super::*;

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
