//! What a fan-out run prints: the per-second progress line and the summary (text or one JSON
//! line). Pure formatting; owns nothing.

use super::{Target, Totals};

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub target: Target,
    pub members: usize,
    pub publishers: usize,
    pub inflight: u64,
    pub size: usize,
    pub executors: usize,
    /// Deliveries one message makes.
    pub recipients: u64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Live connections at the end of the window.
    pub connections: u64,
    /// Messages published in the window.
    pub published: u64,
    /// Deliveries read in the window (repeats included).
    pub delivered: u64,
    /// Deliveries in the window that were resends of a PUSH already seen on that connection.
    pub repeats: u64,
    /// After the drain: every message published, every delivery read.
    pub published_total: u64,
    pub delivered_total: u64,
    pub repeats_total: u64,
    /// Failed connections (protocol errors, KICKs, refusals, unexpected closes).
    pub errors: u64,
    pub error_messages: Vec<String>,
}

impl Summary {
    pub fn deliveries_per_sec(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }

    pub fn published_per_sec(&self) -> f64 {
        self.published as f64 / self.seconds
    }

    /// Deliveries owed after the drain, repeats not counting (negative: more deliveries than
    /// recipients without being seen as repeats).
    pub fn missing(&self) -> i128 {
        i128::from(self.published_total) * i128::from(self.recipients)
            - i128::from(self.delivered_total)
            + i128::from(self.repeats_total)
    }

    pub fn to_text(&self) -> String {
        format!(
            "fanout {target}: {members} members, {publishers} publisher(s), inflight {inflight}, {size} B payload, {executors} executor(s)\n\
             measured {seconds:.2} s: {dps:.0} deliveries/s ({dm:.3} M/s), {pps:.0} published/s\n\
             in window: published {published}, delivered {delivered} ({repeats} repeats), connections {connections}\n\
             after drain: published {pt}, delivered {dt} ({rt} repeats) of {expected} expected ({missing} missing), errors {errors}",
            target = self.target.name(),
            members = self.members,
            publishers = self.publishers,
            inflight = self.inflight,
            size = self.size,
            executors = self.executors,
            seconds = self.seconds,
            dps = self.deliveries_per_sec(),
            dm = self.deliveries_per_sec() / 1e6,
            pps = self.published_per_sec(),
            published = self.published,
            delivered = self.delivered,
            repeats = self.repeats,
            rt = self.repeats_total,
            connections = self.connections,
            pt = self.published_total,
            dt = self.delivered_total,
            expected = self.published_total.saturating_mul(self.recipients),
            missing = self.missing(),
            errors = self.errors,
        )
    }

    /// One JSON object on one line (numbers and a fixed target name: nothing to escape).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"scenario\":\"fanout\",\"target\":\"{}\",\"members\":{},\"publishers\":{},\"inflight\":{},\"size\":{},\"executors\":{},\"recipients\":{},\"seconds\":{:.3},\"connections\":{},\"published\":{},\"delivered\":{},\"deliveries_per_sec\":{:.0},\"published_per_sec\":{:.0},\"published_total\":{},\"delivered_total\":{},\"repeats\":{},\"repeats_total\":{},\"missing\":{},\"errors\":{}}}",
            self.target.name(),
            self.members,
            self.publishers,
            self.inflight,
            self.size,
            self.executors,
            self.recipients,
            self.seconds,
            self.connections,
            self.published,
            self.delivered,
            self.deliveries_per_sec(),
            self.published_per_sec(),
            self.published_total,
            self.delivered_total,
            self.repeats,
            self.repeats_total,
            self.missing(),
            self.errors,
        )
    }
}

/// `[  3s] conns 1001  published 12345 (+4100/s)  delivered 12345000 (+4.10 M/s)  errors 0`.
pub fn progress_line(second: u64, now: Totals, last: Totals, errors: u64) -> String {
    let published = now.published.saturating_sub(last.published);
    let delivered = now.delivered.saturating_sub(last.delivered);
    format!(
        "[{second:>3}s] conns {}  published {} (+{published}/s)  delivered {} (+{:.2} M/s)  errors {errors}",
        now.connections,
        now.published,
        now.delivered,
        delivered as f64 / 1e6,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            target: Target::Gate,
            members: 1000,
            publishers: 1,
            inflight: 1000,
            size: 64,
            executors: 1,
            recipients: 1000,
            seconds: 10.0,
            connections: 1001,
            published: 40_000,
            delivered: 39_999_000,
            published_total: 40_500,
            delivered_total: 40_500_000,
            repeats: 0,
            repeats_total: 0,
            errors: 0,
            error_messages: Vec::new(),
        }
    }

    #[test]
    fn rates_are_window_counts_over_measured_seconds() {
        let s = summary();
        assert_eq!(s.deliveries_per_sec(), 3_999_900.0);
        assert_eq!(s.published_per_sec(), 4_000.0);
        assert_eq!(s.missing(), 0);
    }

    #[test]
    fn json_summary_is_one_line_with_the_rates() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"scenario\":\"fanout\",\"target\":\"gate\""));
        assert!(json.contains("\"deliveries_per_sec\":3999900"));
        assert!(json.contains("\"published_per_sec\":4000,"));
        assert!(json.ends_with("\"errors\":0}"));
    }

    #[test]
    fn progress_line_shows_per_second_deltas() {
        let last = Totals {
            connections: 1001,
            published: 1000,
            delivered: 1_000_000,
            repeats: 0,
        };
        let now = Totals {
            published: 5000,
            delivered: 5_000_000,
            ..last
        };
        assert_eq!(
            progress_line(2, now, last, 0),
            "[  2s] conns 1001  published 5000 (+4000/s)  delivered 5000000 (+4.00 M/s)  errors 0"
        );
    }
}
