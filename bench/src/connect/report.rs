//! What a connect run prints: the per-second progress line and the summary (text or one JSON
//! line). Pure formatting and arithmetic; owns nothing.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::Totals;
use crate::link::CloseMode;
use crate::login::{AuthMode, Failures};
use crate::procstat::percent;

/// Login latency percentiles, µs (0 when nothing was recorded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

/// Gate CPU time per login, µs (0 logins: 0).
pub fn per_login_us(gate_cpu: Duration, logins: u64) -> f64 {
    if logins == 0 {
        return 0.0;
    }
    gate_cpu.as_secs_f64() * 1e6 / logins as f64
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub auth: AuthMode,
    pub concurrency: usize,
    /// Source addresses rotated over.
    pub sources: usize,
    pub close: CloseMode,
    pub executors: usize,
    /// Distinct uids (tokens signed before the window).
    pub uids: usize,
    /// Time spent signing the tokens and encoding the LOGIN frames, before the window.
    pub signing_ms: f64,
    /// Length of the measured window.
    pub seconds: f64,
    /// Attempts that ended in the window (logged in or failed).
    pub attempts: u64,
    /// LoginResps with code 0 in the window.
    pub logins: u64,
    /// Connect start to LoginResp, attempts ending in the window.
    pub latency: Latency,
    /// Failures over the whole run (window and drain), by kind.
    pub failures: Failures,
    /// The tool's CPU share of one core over the window, and its RSS at the end of the window.
    pub tool_cpu: f64,
    pub tool_rss: u64,
    pub gate_pid: Option<u32>,
    /// The gate's CPU share of one core over the window.
    pub gate_cpu: Option<f64>,
    /// The gate's CPU time over the window / logins in it, µs.
    pub gate_us_per_login: Option<f64>,
    pub error_messages: Vec<String>,
}

fn json_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "null".into(),
    }
}

impl Summary {
    pub fn logins_per_sec(&self) -> f64 {
        if self.seconds <= 0.0 {
            return 0.0;
        }
        self.logins as f64 / self.seconds
    }

    pub fn to_text(&self) -> String {
        let l = &self.latency;
        let mut text = format!(
            "connect {auth}: concurrency {c}, {s} source address(es), close {close}, {e} executor(s), {u} uids (tokens signed in {sign:.0} ms, before the window)\n\
             measured {secs:.2} s: {lps:.0} logins/s ({logins} logins, {attempts} attempts ended)\n\
             login latency (connect to LoginResp) µs: p50 {p50}  p90 {p90}  p99 {p99}  p99.9 {p999}  max {max}\n\
             failures {failures} ({kinds})\n\
             tool: {tool_cpu:.0}% of a core, RSS {rss:.1} MiB",
            auth = self.auth.name(),
            c = self.concurrency,
            s = self.sources,
            close = self.close.name(),
            e = self.executors,
            u = self.uids,
            sign = self.signing_ms,
            secs = self.seconds,
            lps = self.logins_per_sec(),
            logins = self.logins,
            attempts = self.attempts,
            p50 = l.p50,
            p90 = l.p90,
            p99 = l.p99,
            p999 = l.p999,
            max = l.max,
            failures = self.failures.total(),
            kinds = self.failures.to_text(),
            tool_cpu = self.tool_cpu * 100.0,
            rss = self.tool_rss as f64 / (1024.0 * 1024.0),
        );
        if let (Some(pid), Some(cpu), Some(us)) =
            (self.gate_pid, self.gate_cpu, self.gate_us_per_login)
        {
            text.push_str(&format!(
                "\ngate (pid {pid}): {:.0}% of a core, {us:.1} µs CPU per login",
                cpu * 100.0
            ));
        }
        text
    }

    /// One JSON object on one line (numbers and fixed names: nothing to escape).
    pub fn to_json(&self) -> String {
        let l = &self.latency;
        format!(
            "{{\"scenario\":\"connect\",\"auth\":\"{}\",\"concurrency\":{},\"sources\":{},\"close\":\"{}\",\"executors\":{},\"uids\":{},\"signing_ms\":{:.1},\"seconds\":{:.3},\"attempts\":{},\"logins\":{},\"logins_per_sec\":{:.0},\"latency_us\":{{\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}},{},\"tool_cpu\":{:.3},\"tool_rss_bytes\":{},\"gate_pid\":{},\"gate_cpu\":{},\"gate_cpu_us_per_login\":{}}}",
            self.auth.name(),
            self.concurrency,
            self.sources,
            self.close.name(),
            self.executors,
            self.uids,
            self.signing_ms,
            self.seconds,
            self.attempts,
            self.logins,
            self.logins_per_sec(),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            self.failures.to_json_fields(),
            self.tool_cpu,
            self.tool_rss,
            self.gate_pid
                .map_or_else(|| "null".to_string(), |p| p.to_string()),
            json_opt(self.gate_cpu, 3),
            json_opt(self.gate_us_per_login, 2),
        )
    }
}

/// `[  3s] open 11998  logins 152034 (+50321/s)  failures 0  cpu  87%  gate  99%`.
pub fn progress_line(
    second: u64,
    now: Totals,
    last: Totals,
    own: Option<f64>,
    gate: Option<f64>,
) -> String {
    format!(
        "[{second:>3}s] open {}  logins {} (+{}/s)  failures {}  cpu {}  gate {}",
        now.open,
        now.logins,
        now.logins.saturating_sub(last.logins),
        now.failures.total(),
        percent(own),
        percent(gate),
    )
}

impl crate::report::Report for Summary {
    fn to_text(&self) -> String {
        Summary::to_text(self)
    }
    fn to_json(&self) -> String {
        Summary::to_json(self)
    }
    fn failed(&self) -> bool {
        self.failures.total() > 0
    }
    fn error_messages(&self) -> &[String] {
        &self.error_messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::{FailureKind, Failures};

    fn summary() -> Summary {
        Summary {
            auth: AuthMode::Jwt,
            concurrency: 12_000,
            sources: 8,
            close: CloseMode::Reset,
            executors: 1,
            uids: 50_000,
            signing_ms: 120.0,
            seconds: 5.0,
            attempts: 250_001,
            logins: 250_000,
            latency: Latency {
                p50: 180_000,
                p90: 230_000,
                p99: 260_000,
                p999: 300_000,
                max: 400_000,
                count: 250_000,
            },
            failures: Failures([0, 1, 0, 0, 0, 0]),
            tool_cpu: 0.85,
            tool_rss: 64 << 20,
            gate_pid: Some(4242),
            gate_cpu: Some(0.99),
            gate_us_per_login: Some(per_login_us(Duration::from_millis(4950), 250_000)),
            error_messages: Vec::new(),
        }
    }

    #[test]
    fn gate_cpu_per_login_is_cpu_time_over_logins() {
        assert!((per_login_us(Duration::from_secs(1), 50_000) - 20.0).abs() < 1e-9);
        assert_eq!(per_login_us(Duration::from_secs(1), 0), 0.0);
        assert!((summary().gate_us_per_login.expect("set") - 19.8).abs() < 1e-9);
    }

    #[test]
    fn rate_is_window_logins_over_seconds() {
        assert_eq!(summary().logins_per_sec(), 50_000.0);
        let s = Summary {
            seconds: 0.0,
            ..summary()
        };
        assert_eq!(s.logins_per_sec(), 0.0);
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let mut h = super::super::new_histogram();
        for us in 1..=1000 {
            h.record(us).expect("in range");
        }
        let l = Latency::of(&h);
        assert_eq!((l.p50, l.p99, l.max, l.count), (500, 990, 1000, 1000));
        assert_eq!(
            Latency::of(&super::super::new_histogram()),
            Latency::default()
        );
    }

    #[test]
    fn json_summary_is_one_line_with_every_key() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["scenario"], "connect");
        assert_eq!(v["logins_per_sec"], 50_000);
        assert_eq!(v["latency_us"]["p99"], 260_000);
        assert_eq!(v["failures"], 1);
        assert_eq!(v["failures_timeout"], 1);
        assert_eq!(v["gate_cpu_us_per_login"], 19.8);
        for key in [
            "auth",
            "concurrency",
            "sources",
            "close",
            "executors",
            "uids",
            "signing_ms",
            "seconds",
            "attempts",
            "logins",
            "tool_cpu",
            "tool_rss_bytes",
            "gate_pid",
            "gate_cpu",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {json}");
        }
        for kind in FailureKind::ALL {
            assert!(v.get(format!("failures_{}", kind.name())).is_some());
        }
        let no_gate = Summary {
            gate_pid: None,
            gate_cpu: None,
            gate_us_per_login: None,
            ..summary()
        };
        let v: serde_json::Value = serde_json::from_str(&no_gate.to_json()).expect("valid JSON");
        assert!(v["gate_pid"].is_null() && v["gate_cpu_us_per_login"].is_null());
        assert!(!no_gate.to_text().contains("gate (pid"));
    }

    #[test]
    fn progress_line_shows_the_logins_of_the_last_second() {
        let last = Totals {
            open: 12_000,
            ended: 100_000,
            logins: 100_000,
            window_ended: 100_000,
            window_logins: 100_000,
            failures: Failures::default(),
        };
        let now = Totals {
            logins: 150_000,
            ..last
        };
        assert_eq!(
            progress_line(3, now, last, Some(0.87), None),
            "[  3s] open 12000  logins 150000 (+50000/s)  failures 0  cpu  87%  gate   - "
        );
    }
}
