//! Latency measurement, sans-IO: the send timestamp a message carries, the open-loop send
//! schedule, and the histogram each executor records into and the run merges at the end.
//!
//! - **Timestamps**: the tool is one process, so a timestamp is nanoseconds since the run's start
//!   `Instant` (shared by every executor), written as a `u64` little-endian in the first
//!   [`STAMP_LEN`] bytes of a message's body ([`put_stamp`], [`read_stamp`]).
//! - **Open loop** ([`Schedule`]): sends are scheduled at a fixed aggregate rate from the run
//!   start, spread evenly over the senders, and a message is stamped with its *scheduled* time,
//!   not the time it actually left. A sender that falls behind sends its backlog at once, still
//!   stamped with the scheduled times, so a stall shows in the latency instead of being hidden by
//!   the sender slowing down (no coordinated omission).
//! - **Histogram** ([`Latency`]): an HdrHistogram of nanoseconds (3 significant figures, 1 ns to
//!   one hour, larger values clamped), one per executor, merged by [`Latency::merge`];
//!   [`LatencySummary`] renders p50/p90/p99/p99.9/max in µs as text and as a JSON object.
//!
//! Never reads a clock: every instant is a number of nanoseconds passed in by the caller.

use hdrhistogram::Histogram;

/// Bytes of the timestamp at the front of a message body.
pub const STAMP_LEN: usize = 8;

/// Smallest latency the histogram tells apart from zero, ns (it also sets the resolution: with
/// 3 significant figures, values are kept to 0.1 % of themselves down to this unit).
const LOWEST_NS: u64 = 1;
/// Largest latency recorded as it is (one hour); larger values are clamped to it.
const HIGHEST_NS: u64 = 3_600 * 1_000_000_000;
const SIGNIFICANT_FIGURES: u8 = 3;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Writes `stamp_ns` over the first [`STAMP_LEN`] bytes of `body` (which must be that long: the
/// scenarios refuse a `--size` below it).
pub fn put_stamp(body: &mut [u8], stamp_ns: u64) {
    if let Some(head) = body.get_mut(..STAMP_LEN) {
        head.copy_from_slice(&stamp_ns.to_le_bytes());
    }
}

/// The timestamp at the front of a body, if it is long enough to hold one.
pub fn read_stamp(body: &[u8]) -> Option<u64> {
    let head: [u8; STAMP_LEN] = body.get(..STAMP_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(head))
}

/// One executor's (or, merged, the run's) latencies.
#[derive(Debug, Clone)]
pub struct Latency {
    hist: Histogram<u64>,
    /// The latest value recorded and how many times in a row (not yet in `hist`): the PUSHes of
    /// one read carry the same receive time, and those of one send batch the same stamp, so
    /// runs are long and one `record_n` per run spares a histogram update per message.
    run: (u64, u64),
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low,
        // sigfig <= 5): this cannot fail.
        let hist = Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
            .expect("constant histogram bounds are valid");
        Self { hist, run: (0, 0) }
    }

    /// Records one message sent at `sent_ns` and received (or answered) at `now_ns`; a receive
    /// time before the send time (clock reads on two cores) counts as zero.
    #[inline]
    pub fn record(&mut self, sent_ns: u64, now_ns: u64) {
        let value = now_ns.saturating_sub(sent_ns);
        match &mut self.run {
            (run_value, count) if *run_value == value && *count > 0 => *count += 1,
            run => {
                let (run_value, count) = std::mem::replace(run, (value, 1));
                Self::record_run(&mut self.hist, run_value, count);
            }
        }
    }

    fn record_run(hist: &mut Histogram<u64>, value: u64, count: u64) {
        if count > 0 {
            hist.saturating_record_n(value, count);
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len() + self.run.1
    }

    /// Adds another executor's latencies (same bounds, so nothing is refused).
    pub fn merge(&mut self, other: &Latency) {
        // Both histograms have the same fixed bounds and no auto-resize; values were clamped on
        // record, so adding never goes out of range.
        let _ = self.hist.add(&other.hist);
        Self::record_run(&mut self.hist, other.run.0, other.run.1);
    }

    /// Every value recorded, the current run included.
    fn settled(&self) -> std::borrow::Cow<'_, Histogram<u64>> {
        if self.run.1 == 0 {
            return std::borrow::Cow::Borrowed(&self.hist);
        }
        let mut hist = self.hist.clone();
        Self::record_run(&mut hist, self.run.0, self.run.1);
        std::borrow::Cow::Owned(hist)
    }

    pub fn summary(&self) -> LatencySummary {
        let hist = self.settled();
        let us = |ns: u64| ns as f64 / 1_000.0;
        let at = |q: f64| us(hist.value_at_quantile(q));
        if hist.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: hist.len(),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: us(hist.max()),
            mean_us: hist.mean() / 1_000.0,
        }
    }
}

/// Percentiles of a run's latencies, in microseconds (all zero when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl LatencySummary {
    /// `p50 41.2 µs  p90 ...  max ... (n samples)`.
    pub fn to_text(&self) -> String {
        format!(
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs  mean {:.1} µs ({} samples)",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us,
            self.count
        )
    }

    /// `{"count":N,"p50":..,"p90":..,"p99":..,"p999":..,"max":..,"mean":..}`, values in µs.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"count\":{},\"p50\":{:.1},\"p90\":{:.1},\"p99\":{:.1},\"p999\":{:.1},\"max\":{:.1},\"mean\":{:.1}}}",
            self.count,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.mean_us
        )
    }
}

/// The open-loop send times of one of `senders` senders sharing an aggregate `rate` (msg/s):
/// the run's messages are numbered `g = 0, 1, 2, ...` at `g / rate` seconds from the start, and
/// sender `s` owns the numbers `s, s + senders, s + 2 * senders, ...`, so the aggregate is evenly
/// spaced. Times are integers computed from the index (no accumulated rounding drift).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    sender: u64,
    senders: u64,
    rate: u64,
    /// This sender's next message, counted from 0.
    next: u64,
    /// No message is scheduled at or after this, ns since the start.
    end_ns: u64,
}

impl Schedule {
    /// `rate` and `senders` are at least 1 (callers validate); `sender < senders`.
    pub fn new(sender: u64, senders: u64, rate: u64, end_ns: u64) -> Self {
        Self {
            sender,
            senders: senders.max(1),
            rate: rate.max(1),
            next: 0,
            end_ns,
        }
    }

    /// When this sender's `k`-th message is due, ns since the start (saturating).
    fn at(&self, k: u64) -> u64 {
        let g = u128::from(k) * u128::from(self.senders) + u128::from(self.sender);
        u64::try_from(g * NANOS_PER_SEC / u128::from(self.rate)).unwrap_or(u64::MAX)
    }

    /// When the next message is due, or `None` once the schedule has passed its end.
    pub fn next_at(&self) -> Option<u64> {
        let t = self.at(self.next);
        (t < self.end_ns).then_some(t)
    }

    /// Messages due at `now_ns` and not yet taken (the backlog, when the sender is late).
    pub fn due(&self, now_ns: u64) -> u64 {
        let horizon = now_ns.min(self.end_ns.saturating_sub(1));
        // The last global number due by `horizon`: floor(horizon * rate / 1e9).
        let g_last = u128::from(horizon) * u128::from(self.rate) / NANOS_PER_SEC;
        let Some(mine) = g_last.checked_sub(u128::from(self.sender)) else {
            return 0;
        };
        let k_last = mine / u128::from(self.senders);
        let due = (k_last + 1).saturating_sub(u128::from(self.next));
        // `next_at` agrees: the end bound applies to the scheduled time, not to `horizon`.
        u64::try_from(due).unwrap_or(u64::MAX)
    }

    /// Takes the next message; returns its scheduled time (the stamp it carries).
    pub fn take(&mut self) -> u64 {
        let t = self.at(self.next);
        self.next += 1;
        t
    }

    /// Messages taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn stamps_round_trip_in_the_first_eight_bytes() {
        let mut body = [b'x'; 16];
        put_stamp(&mut body, 0x0102_0304_0506_0708);
        assert_eq!(&body[..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&body[8..], &[b'x'; 8]);
        assert_eq!(read_stamp(&body), Some(0x0102_0304_0506_0708));
        assert_eq!(read_stamp(&body[..7]), None);
        let mut short = [0u8; 4];
        put_stamp(&mut short, 7);
        assert_eq!(short, [0; 4], "too short to hold a stamp: left alone");
    }

    #[test]
    fn open_loop_spreads_the_aggregate_rate_evenly_over_senders() {
        // 1,000 msg/s over 4 senders: global message g at g ms; sender 1 owns 1, 5, 9, ...
        let mut s = Schedule::new(1, 4, 1000, 1_000 * MS);
        assert_eq!(s.next_at(), Some(MS));
        assert_eq!(s.due(0), 0);
        assert_eq!(s.due(MS - 1), 0);
        assert_eq!(s.due(MS), 1);
        assert_eq!(s.take(), MS);
        assert_eq!(s.next_at(), Some(5 * MS));
        assert_eq!(s.due(4 * MS), 0);
        assert_eq!(s.due(5 * MS), 1);
    }

    #[test]
    fn a_late_sender_gets_its_backlog_with_the_scheduled_stamps() {
        let mut s = Schedule::new(0, 2, 10_000, u64::MAX); // every 200 µs for this sender
        // The sender wakes 1 ms late: messages at 0, 200, ..., 1000 µs are due, six of them.
        let now = MS;
        assert_eq!(s.due(now), 6);
        let stamps: Vec<u64> = (0..6).map(|_| s.take()).collect();
        assert_eq!(stamps, [0, 200_000, 400_000, 600_000, 800_000, 1_000_000]);
        assert_eq!(s.due(now), 0);
        assert_eq!(s.next_at(), Some(1_200_000));
        assert_eq!(s.taken(), 6);
    }

    #[test]
    fn non_integer_intervals_do_not_drift() {
        // 3 msg/s, one sender: 0, 333_333_333, 666_666_666, 1 s, ... exactly, after many.
        let mut s = Schedule::new(0, 1, 3, u64::MAX);
        for _ in 0..3_000 {
            s.take();
        }
        assert_eq!(s.next_at(), Some(1_000 * 1_000_000_000));
        assert_eq!(s.due(1_000 * 1_000_000_000), 1);
    }

    #[test]
    fn nothing_is_scheduled_at_or_after_the_end() {
        // 10 msg/s for 1 s: exactly 10 messages, the last at 900 ms.
        let mut s = Schedule::new(0, 1, 10, 1_000 * MS);
        assert_eq!(s.due(5_000 * MS), 10);
        for _ in 0..10 {
            s.take();
        }
        assert_eq!(s.next_at(), None);
        assert_eq!(s.due(u64::MAX), 0);
        // Every sender of a split rate together sends the same 10.
        let total: u64 = (0..3)
            .map(|i| Schedule::new(i, 3, 10, 1_000 * MS).due(u64::MAX))
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn merged_histograms_give_percentiles_over_all_samples() {
        let mut a = Latency::new();
        let mut b = Latency::new();
        // a: 1..=900 µs, b: 901..=1000 µs, each once: the merged p50 is ~500 µs, p99 ~990 µs.
        for us in 1..=900u64 {
            a.record(0, us * 1_000);
        }
        for us in 901..=1000u64 {
            b.record(10, 10 + us * 1_000);
        }
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.002;
        assert!(close(s.p50_us, 500.0), "{s:?}");
        assert!(close(s.p90_us, 900.0), "{s:?}");
        assert!(close(s.p99_us, 990.0), "{s:?}");
        assert!(close(s.p999_us, 999.0), "{s:?}");
        assert!(close(s.max_us, 1000.0), "{s:?}");
        assert!(close(s.mean_us, 500.5), "{s:?}");
    }

    #[test]
    fn runs_of_equal_values_count_as_each_one_recorded_alone() {
        // Runs of equal latencies (and a run still open at summary and merge time) give the
        // same histogram as recording every value straight into hdrhistogram.
        let mut plain =
            Histogram::<u64>::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_FIGURES)
                .expect("constant bounds");
        let (mut a, mut b) = (Latency::new(), Latency::new());
        let mut x = 7u64;
        for i in 0..5_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let value = (x >> 60) * 1_000; // 16 distinct values, often repeated
            let into = if i % 3 == 0 { &mut a } else { &mut b };
            into.record(10, 10 + value);
            plain.record(value).expect("in range");
        }
        assert_eq!(a.count() + b.count(), 5_000);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, plain.len());
        assert_eq!(s.p50_us, plain.value_at_quantile(0.5) as f64 / 1_000.0);
        assert_eq!(s.p99_us, plain.value_at_quantile(0.99) as f64 / 1_000.0);
        assert_eq!(s.max_us, plain.max() as f64 / 1_000.0);
        assert!((s.mean_us - plain.mean() / 1_000.0).abs() < 1e-9);
    }

    #[test]
    fn receive_before_send_counts_as_zero_and_huge_values_are_clamped() {
        let mut l = Latency::new();
        l.record(5_000, 1_000);
        l.record(0, u64::MAX);
        let s = l.summary();
        assert_eq!(s.count, 2);
        assert!(s.max_us >= 3_599_000_000.0 && s.max_us <= 3_700_000_000.0);
        assert_eq!(s.p50_us, 0.0);
    }

    #[test]
    fn summary_renders_as_text_and_a_json_object() {
        let s = LatencySummary {
            count: 3,
            p50_us: 41.24,
            p90_us: 50.0,
            p99_us: 99.0,
            p999_us: 120.0,
            max_us: 130.5,
            mean_us: 45.0,
        };
        assert_eq!(
            s.to_json(),
            "{\"count\":3,\"p50\":41.2,\"p90\":50.0,\"p99\":99.0,\"p999\":120.0,\"max\":130.5,\"mean\":45.0}"
        );
        assert!(
            s.to_text()
                .starts_with("p50 41.2 µs  p90 50.0 µs  p99 99.0 µs")
        );
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
