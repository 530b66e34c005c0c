//! What a fan-out run prints: the summary (text or one JSON line). Pure formatting; owns nothing.

use super::{FanoutArgs, Target};
use crate::coord::{Outcome, Totals};
use crate::report::{Common, Report, per_sec};

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub target: Target,
    pub members: usize,
    pub publishers: usize,
    /// Messages/s asked for (0: max, closed loop).
    pub rate: u64,
    pub inflight: u64,
    pub size: usize,
    /// Deliveries one message makes.
    pub recipients: u64,
    pub common: Common,
    /// Counts at the end of the measured window.
    pub measured: Totals,
    /// Counts after the drain.
    pub end: Totals,
}

impl Summary {
    pub fn new(args: &FanoutArgs, recipients: u64, outcome: &Outcome) -> Self {
        Self {
            target: args.target,
            members: args.members,
            publishers: args.publishers,
            rate: args.rate,
            inflight: args.inflight,
            size: args.size,
            recipients,
            common: Common::new(outcome),
            measured: outcome.measured,
            end: outcome.end,
        }
    }

    pub fn deliveries_per_sec(&self) -> f64 {
        per_sec(self.measured.delivered, self.common.seconds)
    }

    pub fn published_per_sec(&self) -> f64 {
        per_sec(self.measured.sent, self.common.seconds)
    }

    /// Deliveries owed after the drain, repeats not counting (negative: more deliveries than
    /// recipients without being seen as repeats). Refused SENDs owe nothing.
    pub fn missing(&self) -> i128 {
        i128::from(self.end.accepted()) * i128::from(self.recipients)
            - i128::from(self.end.unique())
    }

    /// Failed connections and refused SENDs (RATE_LIMITED apart).
    pub fn errors(&self) -> u64 {
        self.common.conn_errors + self.end.refused
    }

    /// How the deliveries came: `push`, `notify_pull` (the group is above the gate's
    /// `backend.push_threshold`), `mixed`, or `none`.
    pub fn path(&self) -> &'static str {
        let (unique, pulled) = (self.end.unique(), self.end.pulled);
        match (unique, pulled) {
            (0, _) => "none",
            (_, 0) => "push",
            (u, p) if p >= u => "notify_pull",
            _ => "mixed",
        }
    }

    fn mode(&self) -> String {
        if self.rate > 0 {
            format!("{} msg/s open loop", self.rate)
        } else {
            format!("max, inflight {}", self.inflight)
        }
    }
}

impl Report for Summary {
    fn to_text(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "fanout {target}: {members} members, {publishers} publisher(s), {mode}, {size} B payload, path {path}\n\
             measured {seconds:.2} s: {dps:.0} deliveries/s ({dm:.3} M/s), {pps:.0} published/s\n\
             {latency}\n\
             in window: published {published}, delivered {delivered} ({repeats} repeats, {pulled} pulled), connections {connections}\n\
             after drain: published {pt}, delivered {dt} ({rt} repeats) of {expected} expected ({missing} missing), rate-limited {limited}, errors {errors}",
            target = self.target.name(),
            members = self.members,
            publishers = self.publishers,
            mode = self.mode(),
            size = self.size,
            path = self.path(),
            seconds = self.common.seconds,
            dps = self.deliveries_per_sec(),
            dm = self.deliveries_per_sec() / 1e6,
            pps = self.published_per_sec(),
            latency = self.common.latency_line("send → delivery"),
            published = m.sent,
            delivered = m.delivered,
            repeats = m.repeats,
            pulled = m.pulled,
            connections = self.common.connections,
            pt = e.sent,
            dt = e.delivered,
            rt = e.repeats,
            expected = e.accepted().saturating_mul(self.recipients),
            missing = self.missing(),
            limited = e.rate_limited,
            errors = self.errors(),
        )
    }

    /// One JSON object on one line (numbers and fixed names: nothing to escape).
    fn to_json(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "{{\"scenario\":\"fanout\",\"target\":\"{}\",\"path\":\"{}\",\"members\":{},\"publishers\":{},\"rate\":{},\"inflight\":{},\"size\":{},\"recipients\":{},{},\"published\":{},\"delivered\":{},\"deliveries_per_sec\":{:.0},\"published_per_sec\":{:.0},\"published_total\":{},\"delivered_total\":{},\"pulled_total\":{},\"notifies_total\":{},\"repeats\":{},\"repeats_total\":{},\"rate_limited\":{},\"missing\":{},\"errors\":{}}}",
            self.target.name(),
            self.path(),
            self.members,
            self.publishers,
            self.rate,
            self.inflight,
            self.size,
            self.recipients,
            self.common.json_fields(),
            m.sent,
            m.delivered,
            self.deliveries_per_sec(),
            self.published_per_sec(),
            e.sent,
            e.delivered,
            e.pulled,
            e.notifies,
            m.repeats,
            e.repeats,
            e.rate_limited,
            self.missing(),
            self.errors(),
        )
    }

    fn failed(&self) -> bool {
        self.errors() > 0 || self.missing() != 0
    }

    fn error_messages(&self) -> &[String] {
        &self.common.error_messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::LatencySummary;

    fn summary() -> Summary {
        let measured = Totals {
            connections: 1001,
            sent: 40_000,
            delivered: 39_999_000,
            ..Totals::default()
        };
        Summary {
            target: Target::Gate,
            members: 1000,
            publishers: 1,
            rate: 0,
            inflight: 1000,
            size: 64,
            recipients: 1000,
            common: Common {
                seconds: 10.0,
                executors: 1,
                connections: 1001,
                latency: LatencySummary {
                    count: 39_999_000,
                    p50_us: 900.0,
                    p90_us: 1200.0,
                    p99_us: 2000.0,
                    p999_us: 3000.0,
                    max_us: 4000.0,
                    mean_us: 950.0,
                },
                cpu: 0.27,
                conn_errors: 0,
                error_messages: Vec::new(),
            },
            measured,
            end: Totals {
                sent: 40_500,
                delivered: 40_500_000,
                ..measured
            },
        }
    }

    #[test]
    fn rates_are_window_counts_over_measured_seconds() {
        let s = summary();
        assert_eq!(s.deliveries_per_sec(), 3_999_900.0);
        assert_eq!(s.published_per_sec(), 4_000.0);
        assert_eq!(s.missing(), 0);
        assert!(!s.failed());
        assert_eq!(s.path(), "push");
    }

    #[test]
    fn refused_sends_owe_nothing_and_losses_fail_the_run() {
        let mut s = summary();
        s.end.rate_limited = 500;
        assert_eq!(s.missing(), -500_000, "more delivered than accepted");
        s.end.delivered = 40_000_000 - 1;
        assert_eq!(s.missing(), 1);
        assert!(s.failed());
        s.end.delivered = 40_000_000;
        assert!(!s.failed());
        s.end.refused = 1;
        assert!(s.failed(), "a refused SEND is an error");
    }

    #[test]
    fn path_says_whether_deliveries_were_pushed_or_pulled() {
        let mut s = summary();
        s.end.pulled = s.end.delivered;
        assert_eq!(s.path(), "notify_pull");
        s.end.pulled = 5;
        assert_eq!(s.path(), "mixed");
        s.end = Totals::default();
        assert_eq!(s.path(), "none");
    }

    #[test]
    fn json_summary_is_one_line_with_the_rates_latency_and_path() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"scenario\":\"fanout\",\"target\":\"gate\",\"path\":\"push\""));
        assert!(json.contains("\"deliveries_per_sec\":3999900"));
        assert!(json.contains("\"published_per_sec\":4000,"));
        assert!(json.contains("\"latency_us\":{\"count\":39999000,\"p50\":900.0,"));
        assert!(json.contains("\"cpu\":0.270,"));
        assert!(json.ends_with("\"missing\":0,\"errors\":0}"));
    }
}
