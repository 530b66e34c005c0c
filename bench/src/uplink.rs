//! `imgate-bench uplink`: C gate connections send single-chat SENDs at an open-loop aggregate
//! `--rate` (or, at `--rate 0`, with at most `--inflight` unanswered per connection) and time
//! each SendResp from the send's scheduled (or actual) time. Gate only.
//!
//! Each connection sends to its own uid that never logs in (`--sink-base + i`): the embedded
//! backend stores the message, updates the sink's inbox and answers OK, and pushes to nobody, so
//! what is measured is SEND → backend → SendResp, spread over the backend's partitions as real
//! traffic would be. Non-OK answers are counted: RATE_LIMITED apart (raise the gate's
//! `limits.msgs_per_sec` above the per-connection rate), any other code as an error.
//!
//! Owns the scenario's shape: [`UplinkArgs`], [`Plan`], [`run`] and [`Summary`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::coord::{
    self, MAX_CONNECTIONS, Outcome, Phases, RunError, SpawnConns, Totals, check_loopback,
    parse_cpus,
};
use crate::drive::{OpenLoop, Paced, Unanswered};
use crate::fanout::cmid_seed;
use crate::gate_conn::{self, GateConfig, GateHandler, Measure, SINGLE};
use crate::latency::{STAMP_LEN, Schedule};
use crate::report::{Common, Report, per_sec};

/// `imgate-bench uplink` options.
#[derive(Debug, Clone, clap::Args)]
pub struct UplinkArgs {
    /// Gate address, loopback only.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Sending connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// SENDs per second all connections send together, open loop (latency from each SEND's
    /// scheduled time); 0 = as fast as the window allows (latency from the actual send).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// At --rate 0: SENDs each connection keeps without a SendResp.
    #[arg(long, default_value_t = 16)]
    pub inflight: u64,
    /// Payload bytes per message (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of sending that are measured.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Cores for the load executors, e.g. `1`, `1,3` or `2-3`; one executor per core.
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// Print the summary as one JSON line (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Supervisor tick in milliseconds (nothing is pushed here, so no ACKs wait on it).
    #[arg(long, default_value_t = 5)]
    pub ack_flush_ms: u64,
    /// First sender uid: connection i logs in as `uid_base + i`.
    #[arg(long, default_value_t = 3_000_000)]
    pub uid_base: u64,
    /// First sink uid: connection i sends to `sink_base + i`, a uid nobody logs in as.
    #[arg(long, default_value_t = 4_000_000)]
    pub sink_base: u64,
    /// Longest wait after the measured window for SendResps still owed, seconds.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Longest the setup (connect, login) may take, seconds.
    #[arg(long, default_value_t = 30)]
    pub setup_timeout: u64,
}

/// Settings every executor reads; fixed before they start.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub rate: u64,
    pub inflight: u64,
    pub connections: u64,
    pub payload: Vec<u8>,
    pub duration: Duration,
    pub uid_base: u64,
    pub sink_base: u64,
    pub cmid_seed: u64,
}

fn validate(args: &UplinkArgs) -> Result<Vec<usize>, RunError> {
    check_loopback(args.addr)?;
    if args.connections == 0 || args.inflight == 0 || args.duration == 0 {
        return Err(RunError::Args(
            "--connections, --inflight and --duration must be at least 1".into(),
        ));
    }
    if args.connections > MAX_CONNECTIONS {
        return Err(RunError::Args(format!(
            "{} connections: at most {MAX_CONNECTIONS} per process",
            args.connections
        )));
    }
    let n = args.connections as u64;
    let senders = args.uid_base..args.uid_base.saturating_add(n);
    let sinks = args.sink_base..args.sink_base.saturating_add(n);
    if args.uid_base == 0
        || args.sink_base == 0
        || (senders.start < sinks.end && sinks.start < senders.end)
    {
        return Err(RunError::Args(
            "--uid-base and --sink-base: non-zero, and the two ranges must not overlap".into(),
        ));
    }
    if !(STAMP_LEN..=60_000).contains(&args.size) {
        return Err(RunError::Args(format!(
            "--size: {STAMP_LEN} to 60000 bytes (the first {STAMP_LEN} carry the send time)"
        )));
    }
    if args.ack_flush_ms == 0 {
        return Err(RunError::Args("--ack-flush-ms must be at least 1".into()));
    }
    parse_cpus(&args.cpus)
}

/// Which connections each executor opens: round-robin.
pub fn layout(connections: usize, executors: usize) -> Vec<Vec<usize>> {
    let mut per = vec![Vec::new(); executors.max(1)];
    for i in 0..connections {
        per[i % executors.max(1)].push(i);
    }
    per
}

fn pacer(plan: &Plan, index: usize) -> Paced<Unanswered> {
    if plan.rate > 0 {
        let end_ns = u64::try_from(plan.duration.as_nanos()).unwrap_or(u64::MAX);
        Paced::Open(OpenLoop::new(Schedule::new(
            index as u64,
            plan.connections,
            plan.rate,
            end_ns,
        )))
    } else {
        Paced::Closed(Unanswered::new(plan.inflight))
    }
}

fn spawner(plan: Arc<Plan>, conns: Vec<usize>) -> SpawnConns {
    Box::new(move |exec| {
        conns
            .into_iter()
            .map(|index| {
                let (exec, plan) = (Rc::clone(exec), Arc::clone(&plan));
                glommio::spawn_local(async move {
                    let uid = plan.uid_base + index as u64;
                    let config = GateConfig {
                        uid,
                        sends: Some((SINGLE, plan.sink_base + index as u64)),
                        pulls: None,
                        measure: Measure::SendResp,
                        inflight: plan.inflight,
                        cmid_seed: plan.cmid_seed,
                    };
                    let h = GateHandler::new(&config, &plan.payload);
                    let result =
                        gate_conn::conn(&exec, plan.addr, h, Some(pacer(&plan, index)), false)
                            .await;
                    if let Err(e) = result {
                        exec.shared.record_error(format!("uid {uid}: {e}"));
                    }
                })
            })
            .collect()
    })
}

/// Runs the scenario: setup, `duration` seconds of sending with a progress line per second on
/// stderr, drain, stop. Protocol errors are counted in the summary, not returned.
pub fn run(args: &UplinkArgs) -> Result<Summary, RunError> {
    let cpus = validate(args)?;
    let plan = Arc::new(Plan {
        addr: args.addr,
        rate: args.rate,
        inflight: args.inflight,
        connections: args.connections as u64,
        payload: vec![b'x'; args.size],
        duration: Duration::from_secs(args.duration),
        uid_base: args.uid_base,
        sink_base: args.sink_base,
        cmid_seed: cmid_seed(),
    });
    let phases = Phases {
        connections: args.connections,
        setup_timeout: Duration::from_secs(args.setup_timeout),
        duration: plan.duration,
        drain: Duration::from_secs(args.drain),
        ack_flush: Duration::from_millis(args.ack_flush_ms),
        cpus: cpus.clone(),
    };
    let mut per = layout(args.connections, cpus.len()).into_iter();
    let outcome = coord::run(
        &phases,
        |_| spawner(Arc::clone(&plan), per.next().unwrap_or_default()),
        |t| t.responses() >= t.sent,
    )?;
    Ok(Summary::new(args, &outcome))
}

/// The result of one uplink run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connections: usize,
    pub rate: u64,
    pub inflight: u64,
    pub size: usize,
    pub common: Common,
    pub measured: Totals,
    pub end: Totals,
}

impl Summary {
    pub fn new(args: &UplinkArgs, outcome: &Outcome) -> Self {
        Self {
            connections: args.connections,
            rate: args.rate,
            inflight: args.inflight,
            size: args.size,
            common: Common::new(outcome),
            measured: outcome.measured,
            end: outcome.end,
        }
    }

    /// SendResps of any code per second in the window.
    pub fn responses_per_sec(&self) -> f64 {
        per_sec(self.measured.responses(), self.common.seconds)
    }

    /// OK SendResps per second in the window.
    pub fn ok_per_sec(&self) -> f64 {
        per_sec(self.measured.answered, self.common.seconds)
    }

    /// SENDs never answered after the drain.
    pub fn missing(&self) -> i128 {
        i128::from(self.end.sent) - i128::from(self.end.responses())
    }

    /// Failed connections and non-OK SendResps other than RATE_LIMITED.
    pub fn errors(&self) -> u64 {
        self.common.conn_errors + self.end.refused
    }

    fn mode(&self) -> String {
        if self.rate > 0 {
            format!("{} SEND/s open loop", self.rate)
        } else {
            format!("max, inflight {} per connection", self.inflight)
        }
    }
}

impl Report for Summary {
    fn to_text(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "uplink gate: {conns} connections, {mode}, {size} B payload\n\
             measured {seconds:.2} s: {rps:.0} SendResp/s ({ok:.0} OK/s), {sps:.0} sent/s\n\
             {latency}\n\
             in window: sent {sent}, answered OK {answered}, rate-limited {limited}, refused {refused}, connections {connections}\n\
             after drain: sent {st}, answered OK {at}, rate-limited {lt}, {missing} unanswered, errors {errors}",
            conns = self.connections,
            mode = self.mode(),
            size = self.size,
            seconds = self.common.seconds,
            rps = self.responses_per_sec(),
            ok = self.ok_per_sec(),
            sps = per_sec(m.sent, self.common.seconds),
            latency = self.common.latency_line("send → SendResp"),
            sent = m.sent,
            answered = m.answered,
            limited = m.rate_limited,
            refused = m.refused,
            connections = self.common.connections,
            st = e.sent,
            at = e.answered,
            lt = e.rate_limited,
            missing = self.missing(),
            errors = self.errors(),
        )
    }

    fn to_json(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "{{\"scenario\":\"uplink\",\"target\":\"gate\",\"conns\":{},\"rate\":{},\"inflight\":{},\"size\":{},{},\"sent\":{},\"responses\":{},\"answered\":{},\"responses_per_sec\":{:.0},\"ok_per_sec\":{:.0},\"sent_total\":{},\"answered_total\":{},\"rate_limited\":{},\"refused\":{},\"missing\":{},\"errors\":{}}}",
            self.connections,
            self.rate,
            self.inflight,
            self.size,
            self.common.json_fields(),
            m.sent,
            m.responses(),
            m.answered,
            self.responses_per_sec(),
            self.ok_per_sec(),
            e.sent,
            e.answered,
            e.rate_limited,
            e.refused,
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

    fn args() -> UplinkArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            uplink: UplinkArgs,
        }
        Cli::parse_from(["x"]).uplink
    }

    #[test]
    fn sink_uids_may_not_overlap_senders_and_addr_is_loopback() {
        let mut a = args();
        assert!(validate(&a).is_ok());
        a.sink_base = a.uid_base + 999;
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
        a.sink_base = a.uid_base + 1000;
        assert!(validate(&a).is_ok());
        a.addr = "192.168.1.1:7000".parse().expect("addr");
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
    }

    fn summary() -> Summary {
        let measured = Totals {
            connections: 1000,
            sent: 100_000,
            answered: 99_000,
            rate_limited: 900,
            ..Totals::default()
        };
        Summary {
            connections: 1000,
            rate: 10_000,
            inflight: 16,
            size: 64,
            common: Common {
                seconds: 10.0,
                executors: 1,
                connections: 1000,
                latency: LatencySummary::default(),
                cpu: 0.2,
                conn_errors: 0,
                error_messages: Vec::new(),
            },
            measured,
            end: Totals {
                answered: 99_100,
                ..measured
            },
        }
    }

    #[test]
    fn rate_limited_answers_are_counted_apart_from_errors() {
        let mut s = summary();
        assert_eq!(s.responses_per_sec(), 9_990.0);
        assert_eq!(s.ok_per_sec(), 9_900.0);
        assert_eq!(s.missing(), 0);
        assert!(!s.failed());
        s.end.refused = 2;
        s.end.answered -= 2;
        assert_eq!(s.errors(), 2);
        assert!(s.failed());
        s.end.refused = 0;
        assert_eq!(s.missing(), 2, "two SENDs never answered");
        assert!(s.failed());
    }

    #[test]
    fn json_summary_is_one_uplink_line() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"scenario\":\"uplink\",\"target\":\"gate\",\"conns\":1000,"));
        assert!(json.contains("\"responses_per_sec\":9990,"));
        assert!(json.contains("\"rate_limited\":900,"));
        assert!(json.ends_with("\"missing\":0,\"errors\":0}"));
    }
}
