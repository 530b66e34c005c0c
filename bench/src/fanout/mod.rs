//! `imgate-bench fanout`: M subscriber connections and P publisher connections on one group (gate)
//! or one subject (nats-server); publishers send at an open-loop `--rate` or, at `--rate 0`, keep
//! a bounded window of messages in flight; every delivery is counted and timed, and every gate
//! PUSH acknowledged. When the group is larger than the gate's `backend.push_threshold` the gate
//! sends NOTIFY instead of PUSH: members then PULL, and pulled messages are the deliveries
//! (`path` says which of the two was measured).
//!
//! Owns the scenario's shape: [`FanoutArgs`] (the command line), [`Plan`] (the validated,
//! immutable settings every executor gets), the layout of connections over executors, the
//! closed-loop window ([`Window`]), and [`run`] (the phases are `coord::run`'s).
//!
//! Layout: publishers live on the first executor, subscribers are spread over all of them
//! round-robin. Gate publishers are group members too: their own messages are not pushed back to
//! them, the other publishers' are (and are counted and acknowledged like any PUSH), so a message
//! has `members + publishers - 1` recipients on the gate and `members` on nats (nats publishers
//! do not subscribe). With one publisher the two are the same.

mod report;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::timer::Timer;

use crate::coord::{self, MAX_CONNECTIONS, Phases, SpawnConns, check_loopback, parse_cpus};
pub use crate::coord::{RunError, Target};
use crate::drive::{Handler, OpenLoop, Paced, Pacer, min_refill};
use crate::exec::Exec;
use crate::gate_conn::{self, GROUP, GateConfig, GateHandler, Measure};
use crate::latency::{STAMP_LEN, Schedule};
use crate::nats::PubTemplate;
use crate::nats_conn;
pub use report::Summary;

/// How often a publisher re-reads the window when other executors deliver too (their wakes do
/// not reach it).
const REMOTE_POLL: Duration = Duration::from_micros(200);

/// `imgate-bench fanout` options.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Server to measure.
    #[arg(long, value_enum, default_value_t = Target::Gate)]
    pub target: Target,
    /// Server address, loopback only [default: 127.0.0.1:7000 for gate, 127.0.0.1:4222 for nats].
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// Subscriber connections (group members besides the publishers).
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second all publishers send together, open loop (latency from each
    /// message's scheduled send time); 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// At --rate 0: messages each publisher keeps in flight (a message is done once every
    /// recipient has it, counted in aggregate; on the gate also at most this many SENDs
    /// unanswered).
    #[arg(long, default_value_t = 1000)]
    pub inflight: u64,
    /// Payload bytes per message (at least 8: the send timestamp).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds of publishing that are measured.
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
    /// First uid (gate): members take the next `members`, then publishers.
    #[arg(long, default_value_t = 1_000_000)]
    pub uid_base: u64,
    /// Subject (nats).
    #[arg(long, default_value = "bench")]
    pub subject: String,
    /// Longest wait after the measured window for deliveries still in flight, seconds.
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
    pub inflight: u64,
    pub rate: u64,
    pub publishers: u64,
    pub payload: Vec<u8>,
    pub duration: Duration,
    /// Deliveries one message makes.
    pub recipients: u64,
    /// Messages all publishers together may have in flight (closed loop).
    pub window_msgs: u64,
    pub group_id: u64,
    /// First `client_msg_id`: the clock, so a gate that lives across runs never deduplicates.
    pub cmid_seed: u64,
    pub subject: String,
    pub executors: usize,
}

/// One connection to open.
#[derive(Debug, Clone, Copy)]
pub struct ConnSpec {
    pub uid: u64,
    /// The publisher's number, `0..publishers`; `None` for a subscriber.
    pub publisher: Option<u64>,
}

/// Which connections each executor opens: publishers on the first, members round-robin.
pub fn layout(args: &FanoutArgs, executors: usize) -> Vec<Vec<ConnSpec>> {
    let mut per = vec![Vec::new(); executors];
    for p in 0..args.publishers {
        per[0].push(ConnSpec {
            uid: args.uid_base + (args.members + p) as u64,
            publisher: Some(p as u64),
        });
    }
    for m in 0..args.members {
        per[m % executors].push(ConnSpec {
            uid: args.uid_base + m as u64,
            publisher: None,
        });
    }
    per
}

/// Messages the publishers may add: `window_msgs` less the messages not yet fully delivered,
/// where `published * recipients - delivered` deliveries are owed, rounded up to messages.
pub fn window_room(published: u64, delivered: u64, recipients: u64, window_msgs: u64) -> u64 {
    let owed = published
        .saturating_mul(recipients)
        .saturating_sub(delivered);
    window_msgs.saturating_sub(owed.div_ceil(recipients.max(1)))
}

/// The closed-loop window all publishers share (module doc of `drive`): room is counted over
/// every executor's deliveries; this executor's deliveries wake it, other executors' are seen by
/// polling every [`REMOTE_POLL`].
pub struct Window {
    plan: Arc<Plan>,
    min_batch: u64,
    remote_poll: Option<Timer>,
}

impl Window {
    fn new(plan: Arc<Plan>) -> Self {
        Self {
            min_batch: min_refill(plan.inflight),
            remote_poll: (plan.executors > 1).then(|| Timer::new(REMOTE_POLL)),
            plan,
        }
    }

    fn shared_room(&self, exec: &Exec) -> u64 {
        let totals = exec.shared.totals();
        window_room(
            totals.accepted(),
            totals.unique(),
            self.plan.recipients,
            self.plan.window_msgs,
        )
    }
}

impl<H: Handler> Pacer<H> for Window {
    fn room(&mut self, exec: &Exec, h: &H, _now_ns: u64) -> u64 {
        self.shared_room(exec).min(h.can_send())
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
        exec.wait_for_window(cx.waker());
        if let Some(timer) = self.remote_poll.as_mut()
            && Pin::new(&mut *timer).poll(cx).is_ready()
        {
            timer.reset(REMOTE_POLL);
            return true;
        }
        false
    }
}

fn validate(args: &FanoutArgs) -> Result<(SocketAddr, Vec<usize>), RunError> {
    let addr = args.addr.unwrap_or_else(|| args.target.default_addr());
    check_loopback(addr)?;
    if args.members == 0 || args.publishers == 0 || args.inflight == 0 || args.duration == 0 {
        return Err(RunError::Args(
            "--members, --publishers, --inflight and --duration must be at least 1".into(),
        ));
    }
    let conns = args.members + args.publishers;
    if conns > MAX_CONNECTIONS {
        return Err(RunError::Args(format!(
            "{conns} connections: at most {MAX_CONNECTIONS} per process"
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

/// A `client_msg_id` seed from the clock, so a gate that lives across runs never deduplicates.
pub fn cmid_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64) // truncation is fine: any distinct seed will do
        .max(1)
}

fn pacer(plan: &Arc<Plan>, publisher: u64) -> Paced<Window> {
    if plan.rate > 0 {
        let end_ns = u64::try_from(plan.duration.as_nanos()).unwrap_or(u64::MAX);
        Paced::Open(OpenLoop::new(Schedule::new(
            publisher,
            plan.publishers,
            plan.rate,
            end_ns,
        )))
    } else {
        Paced::Closed(Window::new(Arc::clone(plan)))
    }
}

/// The connection tasks of one executor.
fn spawner(plan: Arc<Plan>, specs: Vec<ConnSpec>) -> SpawnConns {
    Box::new(move |exec| {
        specs
            .into_iter()
            .map(|spec| {
                let (exec, plan) = (std::rc::Rc::clone(exec), Arc::clone(&plan));
                glommio::spawn_local(async move {
                    let pacer = spec.publisher.map(|p| pacer(&plan, p));
                    let result = match plan.target {
                        Target::Gate | Target::GateWs => {
                            let config = GateConfig {
                                uid: spec.uid,
                                sends: spec.publisher.map(|_| (GROUP, plan.group_id)),
                                pulls: Some(plan.group_id),
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
                            let (subscribe, publish) = match spec.publisher {
                                Some(_) => {
                                    (None, Some(PubTemplate::new(&plan.subject, &plan.payload)))
                                }
                                None => (Some(plan.subject.as_str()), None),
                            };
                            nats_conn::conn(&exec, plan.addr, subscribe, publish, pacer).await
                        }
                    };
                    if let Err(e) = result {
                        exec.shared.record_error(format!("uid {}: {e}", spec.uid));
                    }
                })
            })
            .collect()
    })
}

/// Runs the scenario: setup, `duration` seconds of publishing with a progress line per second on
/// stderr, drain, stop. Protocol errors are counted in the summary, not returned.
pub fn run(args: &FanoutArgs) -> Result<Summary, RunError> {
    let (addr, cpus) = validate(args)?;
    let member_uids: Vec<u64> = (0..args.members + args.publishers)
        .map(|i| args.uid_base + i as u64)
        .collect();
    let (group_id, recipients) = match args.target {
        Target::Gate | Target::GateWs => (
            gate_conn::create_group(addr, member_uids[0], &member_uids[1..])?,
            (args.members + args.publishers - 1) as u64,
        ),
        Target::Nats => (0, args.members as u64),
    };
    let plan = Arc::new(Plan {
        target: args.target,
        addr,
        inflight: args.inflight,
        rate: args.rate,
        publishers: args.publishers as u64,
        payload: vec![b'x'; args.size],
        duration: Duration::from_secs(args.duration),
        recipients,
        window_msgs: args.inflight.saturating_mul(args.publishers as u64),
        group_id,
        cmid_seed: cmid_seed(),
        subject: args.subject.clone(),
        executors: cpus.len(),
    });
    let phases = Phases {
        connections: args.members + args.publishers,
        setup_timeout: Duration::from_secs(args.setup_timeout),
        duration: plan.duration,
        drain: Duration::from_secs(args.drain),
        ack_flush: Duration::from_millis(args.ack_flush_ms),
        cpus: cpus.clone(),
    };
    let mut per = layout(args, cpus.len()).into_iter();
    let outcome = coord::run(
        &phases,
        |_| spawner(Arc::clone(&plan), per.next().unwrap_or_default()),
        |t| t.unique() >= t.accepted().saturating_mul(recipients),
    )?;
    Ok(Summary::new(args, recipients, &outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(members: usize, publishers: usize) -> FanoutArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            fanout: FanoutArgs,
        }
        let mut a = Cli::parse_from(["x"]).fanout;
        a.members = members;
        a.publishers = publishers;
        a
    }

    #[test]
    fn publishers_go_to_the_first_executor_and_members_round_robin() {
        let per = layout(&args(5, 2), 2);
        let uids = |i: usize| {
            per[i]
                .iter()
                .map(|s| (s.uid, s.publisher.is_some()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            uids(0),
            [
                (1_000_005, true),
                (1_000_006, true),
                (1_000_000, false),
                (1_000_002, false),
                (1_000_004, false)
            ]
        );
        assert_eq!(uids(1), [(1_000_001, false), (1_000_003, false)]);
    }

    #[test]
    fn options_outside_the_rules_are_refused() {
        let mut a = args(1000, 1);
        assert!(validate(&a).is_ok());
        a.addr = Some("10.0.0.1:7000".parse().expect("addr"));
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
        let a = args(MAX_CONNECTIONS, 1);
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
        let mut a = args(10, 1);
        a.size = STAMP_LEN - 1;
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
    }

    #[test]
    fn window_room_counts_messages_owed_by_deliveries() {
        // Nothing published: the whole window.
        assert_eq!(window_room(0, 0, 1000, 1000), 1000);
        // 1000 published, none delivered: full.
        assert_eq!(window_room(1000, 0, 1000, 1000), 0);
        // One delivery short of 10 whole messages: 991 still owed in part, so 9 free.
        assert_eq!(window_room(1000, 9 * 1000 + 999, 1000, 1000), 9);
        assert_eq!(window_room(1000, 10 * 1000, 1000, 1000), 10);
        // Duplicates (resends) never make room beyond the window.
        assert_eq!(window_room(5, 10_000, 1000, 1000), 1000);
    }
}
