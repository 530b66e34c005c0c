//! A per-connection token bucket over requests (`limits.msgs_per_sec`, `limits.burst`).
//!
//! Sans-IO: `try_take(now)` refills by the time since the last call and spends one token.
//! Small on purpose (an idle connection keeps one): a token count in thousandths and the
//! instant of the last refill.

use std::time::{Duration, Instant};

/// Thousandths of a token, so refills at any rate stay exact in integers.
const MILLI: u64 = 1000;

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    milli_tokens: u64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens at `now`.
    pub fn new(burst: u32, now: Instant) -> Self {
        Self {
            milli_tokens: u64::from(burst) * MILLI,
            refilled_at: now,
        }
    }

    /// Spends one token if there is one (refilling `per_sec` tokens a second, up to `burst`).
    /// `false`: the request is over the rate and gets RATE_LIMITED.
    pub fn try_take(&mut self, now: Instant, per_sec: u32, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        let refill = refill_milli(elapsed, per_sec);
        if refill > 0 {
            self.milli_tokens = (self.milli_tokens + refill).min(u64::from(burst) * MILLI);
            self.refilled_at = now;
        }
        if self.milli_tokens < MILLI {
            return false;
        }
        self.milli_tokens -= MILLI;
        true
    }
}

/// Thousandths of a token earned over `elapsed` at `per_sec` tokens a second.
fn refill_milli(elapsed: Duration, per_sec: u32) -> u64 {
    // per_sec tokens/s = per_sec milli-tokens/ms; saturate rather than overflow on long idles.
    u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(per_sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_is_spent_then_requests_are_refused() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, t0);
        assert!((0..3).all(|_| b.try_take(t0, 10, 3)));
        assert!(!b.try_take(t0, 10, 3));
    }

    #[test]
    fn tokens_come_back_at_the_configured_rate_and_never_above_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, t0);
        assert!(b.try_take(t0, 10, 2) && b.try_take(t0, 10, 2));
        // 10 a second: one token per 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(99), 10, 2));
        assert!(b.try_take(t0 + Duration::from_millis(100), 10, 2));
        assert!(!b.try_take(t0 + Duration::from_millis(100), 10, 2));
        // A long idle refills to burst only.
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later, 10, 2) && b.try_take(later, 10, 2));
        assert!(!b.try_take(later, 10, 2));
    }

    #[test]
    fn partial_refills_accumulate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, t0);
        assert!(b.try_take(t0, 10, 1));
        // Refill happens only when at least a milli-token is earned; 40 ms + 60 ms = one token.
        assert!(!b.try_take(t0 + Duration::from_millis(40), 10, 1));
        assert!(b.try_take(t0 + Duration::from_millis(100), 10, 1));
    }
}
