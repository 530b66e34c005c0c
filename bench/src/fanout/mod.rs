//! `imgate-bench fanout`: M subscriber connections and P publisher connections on one group (gate)
//! or one subject (nats-server); publishers keep a bounded window of messages in flight, every
//! delivery is counted, and every gate PUSH acknowledged.
//!
//! Owns the run's shape and its coordination: [`FanoutArgs`] (the command line), [`Plan`] (the
//! validated, immutable settings every executor gets), [`Shared`] (the phase, the start instant
//! and one cache-padded counter slot per executor; the only state crossing threads), and [`run`],
//! which drives the phases from the calling thread:
//!
//! 1. **Setup**: for the gate, the first member creates the group over the blocking client; then
//!    every executor connects its share and logs in (gate) or subscribes (nats).
//! 2. **Running** for `--duration`: publishers fill the window; a progress line each second.
//! 3. **Draining**: the window's counts are the result; deliveries still in flight are read and
//!    acknowledged for at most `--drain` seconds, then a few ACK flush periods pass.
//! 4. **Done**: executors shut their sockets and stop; the summary is returned.
//!
//! Layout: publishers live on the first executor, subscribers are spread over all of them
//! round-robin. Gate publishers are group members too: their own messages are not pushed back to
//! them, the other publishers' are (and are counted and acknowledged like any PUSH), so a message
//! has `members + publishers - 1` recipients on the gate and `members` on nats (nats publishers
//! do not subscribe). With one publisher the two are the same.

mod drive;
mod exec;
mod gate_side;
mod nats_side;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use drive::{min_refill, window_room};
pub use report::Summary;

use crate::harness::{ErrorLog, PhaseCell, check_loopback, join_all, sleep_until, spawn_executors};
pub use crate::harness::{Phase, RunError, parse_cpus};

/// Most connections one load process drives.
pub const MAX_CONNECTIONS: usize = 1200;

/// Which server is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// imgate's binary client protocol (LOGIN, group SEND, PUSH, ACK).
    Gate,
    /// nats-server's text protocol (SUB, PUB, MSG).
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gate => "gate",
            Self::Nats => "nats",
        }
    }

    fn default_addr(self) -> SocketAddr {
        let port = match self {
            Self::Gate => 7000,
            Self::Nats => 4222,
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }
}

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
    /// Messages each publisher keeps in flight (a message is done once every recipient has it,
    /// counted in aggregate; on the gate also at most this many SENDs unanswered).
    #[arg(long, default_value_t = 1000)]
    pub inflight: u64,
    /// Payload bytes per message.
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
    pub payload: Vec<u8>,
    pub duration: Duration,
    pub ack_flush: Duration,
    /// Deliveries one message makes.
    pub recipients: u64,
    /// Messages all publishers together may have in flight.
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
    pub publisher: bool,
}

/// One executor's counters, on a cache line of its own; written once per read or write batch.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Stats {
    /// Connections logged in (gate) or subscribed (nats) and not ended.
    pub connections: AtomicU64,
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    /// Deliveries that were resends (counted in `delivered` too).
    pub repeats: AtomicU64,
}

impl Stats {
    pub fn add_delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_published(&self, n: u64) {
        self.published.fetch_add(n, Ordering::Relaxed);
    }
}

/// Sums over every executor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub published: u64,
    pub delivered: u64,
    pub repeats: u64,
}

impl Totals {
    /// Deliveries that were not repeats.
    pub fn unique(&self) -> u64 {
        self.delivered.saturating_sub(self.repeats)
    }
}

/// What the executors and the coordinating thread share.
#[derive(Debug)]
pub struct Shared {
    phase: PhaseCell,
    start: OnceLock<Instant>,
    ready: AtomicUsize,
    pub stats: Box<[Stats]>,
    errors: ErrorLog,
}

impl Shared {
    fn new(executors: usize) -> Self {
        Self {
            phase: PhaseCell::default(),
            start: OnceLock::new(),
            ready: AtomicUsize::new(0),
            stats: (0..executors).map(|_| Stats::default()).collect(),
            errors: ErrorLog::default(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.set(phase);
    }

    /// When publishing started (set before the phase becomes Running).
    pub fn start(&self) -> Option<Instant> {
        self.start.get().copied()
    }

    pub fn totals(&self) -> Totals {
        self.stats.iter().fold(Totals::default(), |t, s| Totals {
            connections: t.connections + s.connections.load(Ordering::Relaxed),
            published: t.published + s.published.load(Ordering::Relaxed),
            delivered: t.delivered + s.delivered.load(Ordering::Relaxed),
            repeats: t.repeats + s.repeats.load(Ordering::Relaxed),
        })
    }

    /// Counts a failed connection (ignored once the run is Done: sockets are being shut).
    pub fn record_error(&self, message: String) {
        if self.phase() == Phase::Done {
            return;
        }
        self.errors.record(message);
    }

    fn errors(&self) -> (u64, Vec<String>) {
        self.errors.snapshot()
    }
}

/// Which connections each executor opens: publishers on the first, members round-robin.
pub fn layout(args: &FanoutArgs, executors: usize) -> Vec<Vec<ConnSpec>> {
    let mut per = vec![Vec::new(); executors];
    for p in 0..args.publishers {
        per[0].push(ConnSpec {
            uid: args.uid_base + (args.members + p) as u64,
            publisher: true,
        });
    }
    for m in 0..args.members {
        per[m % executors].push(ConnSpec {
            uid: args.uid_base + m as u64,
            publisher: false,
        });
    }
    per
}

fn validate(args: &FanoutArgs) -> Result<(SocketAddr, Vec<usize>), RunError> {
    let addr = check_loopback(args.addr.unwrap_or_else(|| args.target.default_addr()))?;
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
    if args.size > 60_000 {
        return Err(RunError::Args("--size: at most 60000 bytes".into()));
    }
    if args.ack_flush_ms == 0 {
        return Err(RunError::Args("--ack-flush-ms must be at least 1".into()));
    }
    if args.subject.is_empty() || args.subject.contains(char::is_whitespace) {
        return Err(RunError::Args("--subject: one token, no spaces".into()));
    }
    Ok((addr, parse_cpus(&args.cpus)?))
}

/// Runs the scenario: setup, `duration` seconds of publishing with a progress line per second on
/// stderr, drain, stop. Protocol errors are counted in the summary, not returned.
pub fn run(args: &FanoutArgs) -> Result<Summary, RunError> {
    let (addr, cpus) = validate(args)?;
    let member_uids: Vec<u64> = (0..args.members + args.publishers)
        .map(|i| args.uid_base + i as u64)
        .collect();
    let (group_id, recipients) = match args.target {
        Target::Gate => (
            gate_side::create_group(addr, member_uids[0], &member_uids[1..])?,
            (args.members + args.publishers - 1) as u64,
        ),
        Target::Nats => (0, args.members as u64),
    };
    let cmid_seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64) // truncation is fine: any distinct seed will do
        .max(1);
    let plan = Arc::new(Plan {
        target: args.target,
        addr,
        inflight: args.inflight,
        payload: vec![b'x'; args.size],
        duration: Duration::from_secs(args.duration),
        ack_flush: Duration::from_millis(args.ack_flush_ms),
        recipients,
        window_msgs: args.inflight.saturating_mul(args.publishers as u64),
        group_id,
        cmid_seed,
        subject: args.subject.clone(),
        executors: cpus.len(),
    });
    let shared = Arc::new(Shared::new(cpus.len()));
    let mut layouts = layout(args, cpus.len()).into_iter();
    let handles = spawn_executors(
        &cpus,
        |index| {
            let (theirs, plan) = (Arc::clone(&shared), Arc::clone(&plan));
            let specs = layouts.next().unwrap_or_default();
            move || exec::run(index, theirs, plan, specs)
        },
        || shared.set_phase(Phase::Done),
    )?;

    // 1. Setup.
    let total = args.members + args.publishers;
    let setup_deadline = Instant::now() + Duration::from_secs(args.setup_timeout);
    loop {
        let (errors, kept) = shared.errors();
        let ready = shared.ready.load(Ordering::Acquire);
        if ready == total && errors == 0 {
            break;
        }
        if errors > 0 || Instant::now() > setup_deadline {
            shared.set_phase(Phase::Done);
            let _ = join_all(handles);
            let why = if errors > 0 {
                format!("{errors} connection(s) failed: {}", kept.join("; "))
            } else {
                format!(
                    "only {ready} of {total} connections ready after {} s",
                    args.setup_timeout
                )
            };
            return Err(RunError::Setup(why));
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // 2. Running.
    let start = Instant::now();
    let _ = shared.start.set(start);
    shared.set_phase(Phase::Running);
    let mut last = Totals::default();
    for second in 1..=args.duration {
        sleep_until(start + Duration::from_secs(second));
        let now = shared.totals();
        let (errors, _) = shared.errors();
        eprintln!("{}", report::progress_line(second, now, last, errors));
        last = now;
    }
    let measured = shared.totals();
    let seconds = start.elapsed().as_secs_f64();

    // 3. Draining.
    shared.set_phase(Phase::Draining);
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain);
    while Instant::now() < drain_deadline {
        let t = shared.totals();
        if t.unique() >= t.published.saturating_mul(recipients) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(plan.ack_flush * 3 + Duration::from_millis(20));
    let end = shared.totals();

    // 4. Done.
    shared.set_phase(Phase::Done);
    let joined = join_all(handles);
    let (errors, error_messages) = shared.errors();
    joined.map_err(RunError::Executor)?;
    Ok(Summary {
        target: args.target,
        members: args.members,
        publishers: args.publishers,
        inflight: args.inflight,
        size: args.size,
        executors: cpus.len(),
        recipients,
        seconds,
        connections: measured.connections,
        published: measured.published,
        delivered: measured.delivered,
        published_total: end.published,
        delivered_total: end.delivered,
        repeats: measured.repeats,
        repeats_total: end.repeats,
        errors,
        error_messages,
    })
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
                .map(|s| (s.uid, s.publisher))
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
        let a = args(1200, 1);
        assert!(matches!(validate(&a), Err(RunError::Args(_))));
    }
}
