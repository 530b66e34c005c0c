//! What every scenario's summary has in common: the [`Report`] the binary prints and judges the
//! exit code by, and the text and JSON pieces several scenarios share. Pure formatting; owns
//! nothing.

use crate::coord::Outcome;
use crate::latency::LatencySummary;

/// A scenario's result as the binary sees it.
pub trait Report {
    /// A few lines of text.
    fn to_text(&self) -> String;
    /// One JSON object on one line, starting with `"scenario"`.
    fn to_json(&self) -> String;
    /// Protocol errors, refusals or losses: the run exits non-zero.
    fn failed(&self) -> bool;
    /// The connection errors kept for the report.
    fn error_messages(&self) -> &[String];
}

/// The figures every scenario reports the same way, taken from the run's [`Outcome`].
#[derive(Debug, Clone)]
pub struct Common {
    pub seconds: f64,
    pub executors: usize,
    /// Live connections at the end of the window.
    pub connections: u64,
    pub latency: LatencySummary,
    /// Own CPU over the window, in cores.
    pub cpu: f64,
    /// Failed connections.
    pub conn_errors: u64,
    pub error_messages: Vec<String>,
}

impl Common {
    pub fn new(outcome: &Outcome) -> Self {
        Self {
            seconds: outcome.seconds,
            executors: outcome.executors,
            connections: outcome.measured.connections,
            latency: outcome.latency.summary(),
            cpu: outcome.cpu,
            conn_errors: outcome.errors,
            error_messages: outcome.error_messages.clone(),
        }
    }

    /// `latency p50 ... (n samples); own CPU 27% of a core`.
    pub fn latency_line(&self, measured: &str) -> String {
        format!(
            "latency ({measured}): {}\nown CPU {:.0}% of a core over {} executor(s)",
            self.latency.to_text(),
            self.cpu * 100.0,
            self.executors
        )
    }

    /// `"seconds":..,"executors":..,"connections":..,"cpu":..,"latency_us":{..}` (no braces).
    pub fn json_fields(&self) -> String {
        format!(
            "\"seconds\":{:.3},\"executors\":{},\"connections\":{},\"cpu\":{:.3},\"latency_us\":{}",
            self.seconds,
            self.executors,
            self.connections,
            self.cpu,
            self.latency.to_json()
        )
    }
}

/// `n / seconds`, 0 for an empty window.
pub fn per_sec(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}
