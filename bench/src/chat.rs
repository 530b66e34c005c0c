//! `imgate-bench chat`: N pairs of users, each user sending single-chat messages to the other
//! at an open-loop aggregate `--rate` spread evenly over the 2N senders (or, at `--rate 0`, as
//! fast as a closed window of `--inflight` undelivered messages per sender allows); every PUSH is
//! timed from its send timestamp and acknowledged. Against nats-server each user subscribes to
//! its own subject `<subject>.<uid>` and publishes to its partner's.
//!
//! Owns the scenario's shape: [`ChatArgs`], [`Plan`], the layout (both users of a pair on one
//! executor, so their closed-loop window is plain shared state, [`PairWindow`]), [`run`] (the
//! phases are `coord::run`'s) and [`Summary`].

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use crate::coord::{
    self, Counts, MAX_CONNECTIONS, Outcome, Phases, RunError, SpawnConns, Target, Totals,
    check_loopback, parse_cpus,
};
use crate::drive::{Handler, OpenLoop, Paced, Pacer, min_refill};
use crate::exec::Exec;
use crate::fanout::cmid_seed;
use crate::gate_conn::{self, GateConfig, GateHandler, Measure, SINGLE};
use crate::latency::{STAMP_LEN, Schedule};
use crate::nats::PubTemplate;
use crate::nats_conn;
use crate::report::{Common, Report, per_sec};

/// `imgate-bench chat` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatArgs {
    /// Server to measure.
    #[arg(long, value_enum, default_value_t = Target::Gate)]
    pub target: Target,
    /// Server address, loopback only [default: 127.0.0.1:7000 for gate, 127.0.0.1:4222 for nats].
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Pairs of users (two connections each).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// Messages per second all users send together, open loop (latency from each message's
    /// scheduled send time); 0 = as fast as the window allows (latency from the actual send).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// At --rate 0: messages each user keeps sent but not yet delivered to its partner.
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
    /// Longest a partial ACK batch waits, in milliseconds (full batches of 64 go at once).
    #[arg(long, default_value_t = 5)]
    pub ack_flush_ms: u64,
    /// First uid (gate): pair i is `uid_base + 2i` and `uid_base + 2i + 1`.
    #[arg(long, default_value_t = 2_000_000)]
    pub uid_base: u64,
    /// Subject prefix (nats): user u subscribes to `<subject>.<u>`.
    #[arg(long, default_value = "chat")]
    pub subject: String,
    /// Longest wait after the measured window for messages still in flight, seconds.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// Longest the setup (connect, login, subscribe) may take, seconds.
    #[arg(long, default_value_t = 30)]
    pub setup_timeout: u64,
}

/// Settings every executor reads; fixed before they start.
#[derive(Debug)]
pub struct Plan {
    pub target: Target,
    pub addr: SocketAddr,
    pub rate: u64,
    pub inflight: u64,
    pub senders: u64,
    pub payload: Vec<u8>,
    pub duration: Duration,
    pub uid_base: u64,
    pub cmid_seed: u64,
    pub subject: String,
}

impl Plan {
    /// The uid of `side` (0 or 1) of pair `pair`.
    pub fn uid(&self, pair: usize, side: usize) -> u64 {
        self.uid_base + (2 * pair + side) as u64
    }
}

/// Which pairs each executor hosts: round-robin, both users of a pair together.
pub fn layout(pairs: usize, executors: usize) -> Vec<Vec<usize>> {
    let mut per = vec![Vec::new(); executors.max(1)];
    for pair in 0..pairs {
        per[pair % executors.max(1)].push(pair);
    }
    per
}

/// The two users of a pair, as their closed-loop windows see each other (one executor: `Cell`).
#[derive(Default)]
pub struct PairState {
    sent: [Cell<u64>; 2],
    /// Unique deliveries to each side (messages from the other side).
    delivered: [Cell<u64>; 2],
    /// Each side's sends the server refused (they will never be delivered).
    refused: [Cell<u64>; 2],
    waiting: [Cell<Option<Waker>>; 2],
}

impl PairState {
    /// Messages `side` has sent that its partner has not received (refusals excluded).
    pub fn in_flight(&self, side: usize) -> u64 {
        self.sent[side]
            .get()
            .saturating_sub(self.delivered[1 - side].get())
            .saturating_sub(self.refused[side].get())
    }
}

/// Closed loop per sender: at most `inflight` messages sent and not yet delivered to the
/// partner; the partner's connection reads the deliveries and wakes this one.
pub struct PairWindow {
    pair: Rc<PairState>,
    side: usize,
    inflight: u64,
    min_batch: u64,
}

impl PairWindow {
    pub fn new(pair: Rc<PairState>, side: usize, inflight: u64) -> Self {
        Self {
            pair,
            side,
            inflight,
            min_batch: min_refill(inflight),
        }
    }
}

impl<H: Handler> Pacer<H> for PairWindow {
    fn room(&mut self, _exec: &Exec, h: &H, _now_ns: u64) -> u64 {
        let room = self.inflight.saturating_sub(self.pair.in_flight(self.side));
        room.min(h.can_send())
    }

    fn min_batch(&self) -> u64 {
        self.min_batch
    }

    fn stamp(&mut self, now_ns: u64) -> u64 {
        now_ns
    }

    fn poll_room(&mut self, cx: &mut Context<'_>, exec: &Exec, h: &H, now_ns: u64) -> bool {
        if self.room(exec, h, now_ns) >= self.min_batch {
            return true;
        }
        self.pair.waiting[self.side].set(Some(cx.waker().clone()));
        false
    }

    fn sent(&mut self, n: u64) {
        let sent = &self.pair.sent[self.side];
        sent.set(sent.get() + n);
    }

    fn counted(&mut self, counts: &Counts) {
        let unique = counts.delivered.saturating_sub(counts.repeats);
        let refused = counts.rate_limited + counts.refused;
        if refused > 0 {
            let r = &self.pair.refused[self.side];
            r.set(r.get() + refused);
        }
        if unique > 0 {
            let d = &self.pair.delivered[self.side];
            d.set(d.get() + unique);
            if let Some(waker) = self.pair.waiting[1 - self.side].take() {
                waker.wake();
            }
        }
    }
}

fn validate(args: &ChatArgs) -> Result<(SocketAddr, Vec<usize>), RunError> {
    let addr = args.addr.unwrap_or_else(|| args.target.default_addr());
    check_loopback(addr)?;
    if args.pairs == 0 || args.inflight == 0 || args.duration == 0 {
        return Err(RunError::Args(
            "--pairs, --inflight and --duration must be at least 1".into(),
        ));
    }
    if args.pairs * 2 > MAX_CONNECTIONS {
        return Err(RunError::Args(format!(
            "{} connections: at most {MAX_CONNECTIONS} per process",
            args.pairs * 2
        )));
    }
    if !(STAMP_LEN..=60_000).contains(&args.size) {
        return Err(RunError::Args(format!(
            "--size: {STAMP_LEN} to 60000 bytes (the first {STAMP_LEN} carry the send time)"
        )));
    }
    if args.ack_flush_ms == 0 {
        return Err(RunError::Args("--ack-flush-ms must be at least 1".into()));
    }
    if args.subject.is_empty() || args.subject.contains(char::is_whitespace) {
        return Err(RunError::Args("--subject: one token, no spaces".into()));
    }
    Ok((addr, parse_cpus(&args.cpus)?))
}

fn pacer(plan: &Plan, pair: &Rc<PairState>, index: usize, side: usize) -> Paced<PairWindow> {
    if plan.rate > 0 {
        let end_ns = u64::try_from(plan.duration.as_nanos()).unwrap_or(u64::MAX);
        let sender = (2 * index + side) as u64;
        Paced::Open(OpenLoop::new(Schedule::new(
            sender,
            plan.senders,
            plan.rate,
            end_ns,
        )))
    } else {
        Paced::Closed(PairWindow::new(Rc::clone(pair), side, plan.inflight))
    }
}

/// The connection tasks of one executor: both users of each of its pairs.
fn spawner(plan: Arc<Plan>, pairs: Vec<usize>) -> SpawnConns {
    Box::new(move |exec| {
        let mut tasks = Vec::with_capacity(pairs.len() * 2);
        for index in pairs {
            let pair = Rc::new(PairState::default());
            for side in 0..2 {
                let (exec, plan, pair) = (Rc::clone(exec), Arc::clone(&plan), Rc::clone(&pair));
                tasks.push(glommio::spawn_local(async move {
                    let (me, partner) = (plan.uid(index, side), plan.uid(index, 1 - side));
                    let pacer = Some(pacer(&plan, &pair, index, side));
                    let result = match plan.target {
                        Target::Gate | Target::GateWs => {
                            let config = GateConfig {
                                uid: me,
                                sends: Some((SINGLE, partner)),
                                pulls: None,
                                measure: Measure::Delivery,
                                inflight: plan.inflight,
                                cmid_seed: plan.cmid_seed,
                            };
                            let h = GateHandler::new(&config, &plan.payload);
                            gate_conn::conn(
                                &exec,
                                plan.addr,
                                h,
                                pacer,
                                plan.target == Target::GateWs,
                            )
                            .await
                        }
                        Target::Nats => {
                            let mine = format!("{}.{me}", plan.subject);
                            let theirs = format!("{}.{partner}", plan.subject);
                            let publish = PubTemplate::new(&theirs, &plan.payload);
                            nats_conn::conn(&exec, plan.addr, Some(&mine), Some(publish), pacer)
                                .await
                        }
                    };
                    if let Err(e) = result {
                        exec.shared.record_error(format!("uid {me}: {e}"));
                    }
                }));
            }
        }
        tasks
    })
}

/// Runs the scenario: setup, `duration` seconds of sending with a progress line per second on
/// stderr, drain, stop. Protocol errors are counted in the summary, not returned.
pub fn run(args: &ChatArgs) -> Result<Summary, RunError> {
    let (addr, cpus) = validate(args)?;
    let plan = Arc::new(Plan {
        target: args.target,
        addr,
        rate: args.rate,
        inflight: args.inflight,
        senders: 2 * args.pairs as u64,
        payload: vec![b'x'; args.size],
        duration: Duration::from_secs(args.duration),
        uid_base: args.uid_base,
        cmid_seed: cmid_seed(),
        subject: args.subject.clone(),
    });
    let phases = Phases {
        connections: 2 * args.pairs,
        setup_timeout: Duration::from_secs(args.setup_timeout),
        duration: plan.duration,
        drain: Duration::from_secs(args.drain),
        ack_flush: Duration::from_millis(args.ack_flush_ms),
        cpus: cpus.clone(),
    };
    let mut per = layout(args.pairs, cpus.len()).into_iter();
    let outcome = coord::run(
        &phases,
        |_| spawner(Arc::clone(&plan), per.next().unwrap_or_default()),
        |t| t.unique() >= t.accepted(),
    )?;
    Ok(Summary::new(args, &outcome))
}

/// The result of one chat run.
#[derive(Debug, Clone)]
pub struct Summary {
    pub target: Target,
    pub pairs: usize,
    pub rate: u64,
    pub inflight: u64,
    pub size: usize,
    pub common: Common,
    pub measured: Totals,
    pub end: Totals,
}

impl Summary {
    pub fn new(args: &ChatArgs, outcome: &Outcome) -> Self {
        Self {
            target: args.target,
            pairs: args.pairs,
            rate: args.rate,
            inflight: args.inflight,
            size: args.size,
            common: Common::new(outcome),
            measured: outcome.measured,
            end: outcome.end,
        }
    }

    pub fn delivered_per_sec(&self) -> f64 {
        per_sec(self.measured.delivered, self.common.seconds)
    }

    pub fn sent_per_sec(&self) -> f64 {
        per_sec(self.measured.sent, self.common.seconds)
    }

    /// Messages accepted (not refused) but never delivered after the drain.
    pub fn missing(&self) -> i128 {
        i128::from(self.end.accepted()) - i128::from(self.end.unique())
    }

    /// Failed connections and refused SENDs (RATE_LIMITED apart).
    pub fn errors(&self) -> u64 {
        self.common.conn_errors + self.end.refused
    }

    fn mode(&self) -> String {
        if self.rate > 0 {
            format!("{} msg/s open loop", self.rate)
        } else {
            format!("max, inflight {} per user", self.inflight)
        }
    }
}

impl Report for Summary {
    fn to_text(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "chat {target}: {pairs} pairs, {mode}, {size} B payload\n\
             measured {seconds:.2} s: {dps:.0} delivered/s, {sps:.0} sent/s\n\
             {latency}\n\
             in window: sent {sent}, delivered {delivered} ({repeats} repeats), connections {connections}\n\
             after drain: sent {st}, delivered {dt} ({rt} repeats), {missing} missing, rate-limited {limited}, errors {errors}",
            target = self.target.name(),
            pairs = self.pairs,
            mode = self.mode(),
            size = self.size,
            seconds = self.common.seconds,
            dps = self.delivered_per_sec(),
            sps = self.sent_per_sec(),
            latency = self.common.latency_line("send → delivery"),
            sent = m.sent,
            delivered = m.delivered,
            repeats = m.repeats,
            connections = self.common.connections,
            st = e.sent,
            dt = e.delivered,
            rt = e.repeats,
            missing = self.missing(),
            limited = e.rate_limited,
            errors = self.errors(),
        )
    }

    fn to_json(&self) -> String {
        let (m, e) = (&self.measured, &self.end);
        format!(
            "{{\"scenario\":\"chat\",\"target\":\"{}\",\"pairs\":{},\"rate\":{},\"inflight\":{},\"size\":{},{},\"sent\":{},\"delivered\":{},\"delivered_per_sec\":{:.0},\"sent_per_sec\":{:.0},\"sent_total\":{},\"delivered_total\":{},\"repeats_total\":{},\"rate_limited\":{},\"missing\":{},\"errors\":{}}}",
            self.target.name(),
            self.pairs,
            self.rate,
            self.inflight,
            self.size,
            self.common.json_fields(),
            m.sent,
            m.delivered,
            self.delivered_per_sec(),
            self.sent_per_sec(),
            e.sent,
            e.delivered,
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

    #[test]
    fn pairs_stay_on_one_executor_round_robin() {
        assert_eq!(layout(5, 2), [vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(layout(2, 1), [vec![0, 1]]);
    }

    #[test]
    fn pair_window_counts_what_the_partner_has_not_received() {
        let pair = Rc::new(PairState::default());
        let mut a = PairWindow::new(Rc::clone(&pair), 0, 16);
        let mut b = PairWindow::new(Rc::clone(&pair), 1, 16);
        Pacer::<crate::nats_conn::NatsHandler>::sent(&mut a, 10);
        assert_eq!(pair.in_flight(0), 10);
        // B reads 4 of A's messages (and one repeat, which makes no room).
        let read = Counts {
            delivered: 5,
            repeats: 1,
            ..Counts::default()
        };
        Pacer::<crate::nats_conn::NatsHandler>::counted(&mut b, &read);
        assert_eq!(pair.in_flight(0), 6);
        // Two of A's sends were refused: they will never arrive.
        let refused = Counts {
            rate_limited: 1,
            refused: 1,
            ..Counts::default()
        };
        Pacer::<crate::nats_conn::NatsHandler>::counted(&mut a, &refused);
        assert_eq!(pair.in_flight(0), 4);
        assert_eq!(pair.in_flight(1), 0);
    }

    fn summary() -> Summary {
        let measured = Totals {
            connections: 2000,
            sent: 200_000,
            delivered: 199_990,
            ..Totals::default()
        };
        Summary {
            target: Target::Gate,
            pairs: 1000,
            rate: 20_000,
            inflight: 16,
            size: 64,
            common: Common {
                seconds: 10.0,
                executors: 1,
                connections: 2000,
                latency: LatencySummary::default(),
                cpu: 0.1,
                conn_errors: 0,
                error_messages: Vec::new(),
            },
            measured,
            end: Totals {
                delivered: 200_000,
                ..measured
            },
        }
    }

    #[test]
    fn missing_is_accepted_sends_not_delivered() {
        let mut s = summary();
        assert_eq!(s.missing(), 0);
        assert!(!s.failed());
        s.end.delivered -= 3;
        assert_eq!(s.missing(), 3);
        assert!(s.failed());
        s.end.rate_limited = 3;
        assert_eq!(s.missing(), 0, "rate-limited sends are never delivered");
        assert!(!s.failed());
    }

    #[test]
    fn json_summary_is_one_chat_line() {
        let json = summary().to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"scenario\":\"chat\",\"target\":\"gate\",\"pairs\":1000,"));
        assert!(json.contains("\"delivered_per_sec\":19999,"));
        assert!(json.contains("\"latency_us\":{\"count\":0,"));
        assert!(json.ends_with("\"missing\":0,\"errors\":0}"));
    }
}
