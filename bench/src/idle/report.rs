//! What an idle run prints: the per-second progress line and the summary (text or one JSON
//! line), and the marginal-memory arithmetic. Pure; owns nothing.

use super::Totals;
use crate::login::{AuthMode, FailureKind, Failures};
use crate::procstat::percent;

const MIB: f64 = 1024.0 * 1024.0;

/// Marginal bytes per connection: (RSS(N) − RSS(0)) / N, negative if the gate shrank meanwhile;
/// `None` for N = 0.
pub fn marginal_bytes(rss0: u64, rss_n: u64, n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    Some((i128::from(rss_n) - i128::from(rss0)) as f64 / n as f64)
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub auth: AuthMode,
    /// Connections asked for.
    pub connections: usize,
    pub sources: usize,
    pub executors: usize,
    /// The gate's heartbeat (LoginResp), seconds.
    pub heartbeat_secs: u32,
    /// From the first connect to the last login (or failure).
    pub setup_seconds: f64,
    pub settle_seconds: u64,
    /// Length of the held window.
    pub seconds: f64,
    /// Connections logged in when RSS(N) was read: the N of the marginal figure.
    pub logged_in: u64,
    /// Connections still logged in at the end of the held window.
    pub logged_in_end: u64,
    /// Connections that failed, at login or after (KICKs are `kicked`).
    pub failures: Failures,
    /// PINGs sent by the connections, and gate PINGs they answered, in the held window.
    pub pings_sent: u64,
    pub pings_answered: u64,
    /// The tool's CPU share of one core over the held window, and its RSS at RSS(N) time.
    pub tool_cpu: f64,
    pub tool_rss: u64,
    pub gate_pid: Option<u32>,
    /// The gate's RSS before connecting, after the settle, and at the end of the window.
    pub gate_rss0: Option<u64>,
    pub gate_rss_n: Option<u64>,
    pub gate_rss_end: Option<u64>,
    /// The gate's CPU share of one core over the held window.
    pub gate_cpu: Option<f64>,
    pub error_messages: Vec<String>,
}

fn json_u64(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

fn json_f64(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "null".into(), |v| format!("{v:.decimals$}"))
}

impl Summary {
    /// Marginal gate memory per logged-in connection, bytes.
    pub fn gate_bytes_per_conn(&self) -> Option<f64> {
        marginal_bytes(self.gate_rss0?, self.gate_rss_n?, self.logged_in)
    }

    pub fn to_text(&self) -> String {
        let mut text = format!(
            "idle {auth}: {n} connections, {s} source address(es), {e} executor(s), heartbeat {hb} s\n\
             setup {setup:.2} s ({li} logged in), settled {settle} s, held {secs:.2} s ({end} still logged in)\n\
             failures {failures} ({kinds})\n\
             pings in the held window: {sent} sent, {answered} gate PINGs answered\n\
             tool: {cpu:.1}% of a core while held, RSS {rss:.1} MiB",
            auth = self.auth.name(),
            n = self.connections,
            s = self.sources,
            e = self.executors,
            hb = self.heartbeat_secs,
            setup = self.setup_seconds,
            li = self.logged_in,
            settle = self.settle_seconds,
            secs = self.seconds,
            end = self.logged_in_end,
            failures = self.failures.total(),
            kinds = self.failures.to_text(),
            sent = self.pings_sent,
            answered = self.pings_answered,
            cpu = self.tool_cpu * 100.0,
            rss = self.tool_rss as f64 / MIB,
        );
        if let (Some(pid), Some(rss0), Some(rss_n)) =
            (self.gate_pid, self.gate_rss0, self.gate_rss_n)
        {
            let per = self.gate_bytes_per_conn().unwrap_or(0.0);
            text.push_str(&format!(
                "\ngate (pid {pid}): RSS(0) {:.1} MiB, RSS(N) {:.1} MiB at N = {}: {per:.0} bytes ({:.2} KiB) per connection",
                rss0 as f64 / MIB,
                rss_n as f64 / MIB,
                self.logged_in,
                per / 1024.0,
            ));
            if let Some(end) = self.gate_rss_end {
                text.push_str(&format!("; RSS at the end {:.1} MiB", end as f64 / MIB));
            }
            if let Some(cpu) = self.gate_cpu {
                text.push_str(&format!("; {:.1}% of a core while held", cpu * 100.0));
            }
        }
        text
    }

    /// One JSON object on one line (numbers and fixed names: nothing to escape).
    pub fn to_json(&self) -> String {
        let per = self.gate_bytes_per_conn();
        format!(
            "{{\"scenario\":\"idle\",\"auth\":\"{}\",\"connections\":{},\"sources\":{},\"executors\":{},\"heartbeat_secs\":{},\"setup_seconds\":{:.3},\"settle_seconds\":{},\"seconds\":{:.3},\"logged_in\":{},\"logged_in_end\":{},{},\"kicks\":{},\"pings_sent\":{},\"pings_answered\":{},\"tool_cpu\":{:.4},\"tool_rss_bytes\":{},\"gate_pid\":{},\"gate_rss0_bytes\":{},\"gate_rssn_bytes\":{},\"gate_rss_end_bytes\":{},\"gate_bytes_per_conn\":{},\"gate_kib_per_conn\":{},\"gate_cpu\":{}}}",
            self.auth.name(),
            self.connections,
            self.sources,
            self.executors,
            self.heartbeat_secs,
            self.setup_seconds,
            self.settle_seconds,
            self.seconds,
            self.logged_in,
            self.logged_in_end,
            self.failures.to_json_fields(),
            self.failures.get(FailureKind::Kicked),
            self.pings_sent,
            self.pings_answered,
            self.tool_cpu,
            self.tool_rss,
            json_u64(self.gate_pid.map(u64::from)),
            json_u64(self.gate_rss0),
            json_u64(self.gate_rss_n),
            json_u64(self.gate_rss_end),
            json_f64(per, 0),
            json_f64(per.map(|b| b / 1024.0), 3),
            json_f64(self.gate_cpu, 4),
        )
    }
}

/// `[  3s] setup  open 15000  logged in 14800  failures 0 (kicked 0)  pings +12  cpu   3%  gate  40%  gate rss 52.1 MiB`.
pub fn progress_line(
    second: u64,
    stage: &str,
    now: Totals,
    last: Totals,
    own: Option<f64>,
    gate: Option<f64>,
    gate_rss: Option<u64>,
) -> String {
    let mut line = format!(
        "[{second:>3}s] {stage:<6} open {}  logged in {}  failures {} (kicked {})  pings +{}  cpu {}  gate {}",
        now.open,
        now.logged_in,
        now.failures.total(),
        now.failures.get(FailureKind::Kicked),
        now.pings_sent.saturating_sub(last.pings_sent),
        percent(own),
        percent(gate),
    );
    if let Some(rss) = gate_rss {
        line.push_str(&format!("  gate rss {:.1} MiB", rss as f64 / MIB));
    }
    line
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

    fn summary() -> Summary {
        Summary {
            auth: AuthMode::Jwt,
            connections: 15_000,
            sources: 8,
            executors: 1,
            heartbeat_secs: 30,
            setup_seconds: 1.5,
            settle_seconds: 2,
            seconds: 10.0,
            logged_in: 15_000,
            logged_in_end: 15_000,
            failures: Failures::default(),
            pings_sent: 5_000,
            pings_answered: 0,
            tool_cpu: 0.01,
            tool_rss: 40 << 20,
            gate_pid: Some(4242),
            gate_rss0: Some(10 << 20),
            gate_rss_n: Some((10 << 20) + 15_000 * 2048),
            gate_rss_end: Some((10 << 20) + 15_000 * 2048),
            gate_cpu: Some(0.004),
            error_messages: Vec::new(),
        }
    }

    #[test]
    fn marginal_memory_is_the_rss_growth_over_the_connections() {
        assert_eq!(marginal_bytes(10_000, 10_000 + 3 * 1500, 3), Some(1500.0));
        assert_eq!(
            marginal_bytes(10_000, 9_000, 4),
            Some(-250.0),
            "the gate shrank"
        );
        assert_eq!(marginal_bytes(0, 1 << 20, 0), None);
        assert_eq!(summary().gate_bytes_per_conn(), Some(2048.0));
        let s = Summary {
            gate_rss0: None,
            ..summary()
        };
        assert_eq!(s.gate_bytes_per_conn(), None);
    }

    #[test]
    fn json_summary_is_one_line_with_every_key() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["scenario"], "idle");
        assert_eq!(v["gate_bytes_per_conn"], 2048);
        assert_eq!(v["gate_kib_per_conn"], 2.0);
        assert_eq!(v["logged_in"], 15_000);
        for key in [
            "auth",
            "connections",
            "heartbeat_secs",
            "setup_seconds",
            "seconds",
            "failures",
            "failures_kicked",
            "kicks",
            "pings_sent",
            "pings_answered",
            "tool_cpu",
            "tool_rss_bytes",
            "gate_pid",
            "gate_rss0_bytes",
            "gate_rssn_bytes",
            "gate_rss_end_bytes",
            "gate_cpu",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {json}");
        }
        assert!(
            summary()
                .to_text()
                .contains("2048 bytes (2.00 KiB) per connection")
        );
        let no_gate = Summary {
            gate_pid: None,
            gate_rss0: None,
            gate_rss_n: None,
            gate_rss_end: None,
            gate_cpu: None,
            ..summary()
        };
        let v: serde_json::Value = serde_json::from_str(&no_gate.to_json()).expect("valid JSON");
        assert!(v["gate_bytes_per_conn"].is_null() && v["gate_pid"].is_null());
    }

    #[test]
    fn progress_line_shows_state_and_the_pings_of_the_last_second() {
        let last = Totals {
            open: 100,
            logged_in: 100,
            logins: 100,
            pings_sent: 10,
            ..Totals::default()
        };
        let now = Totals {
            pings_sent: 14,
            ..last
        };
        assert_eq!(
            progress_line(4, "held", now, last, Some(0.01), Some(0.0), Some(3 << 20)),
            "[  4s] held   open 100  logged in 100  failures 0 (kicked 0)  pings +4  cpu   1%  gate   0%  gate rss 3.0 MiB"
        );
    }
}
