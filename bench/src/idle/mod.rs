//! `imgate-bench idle`: N logged-in connections that stay quiet but alive (they answer the gate's
//! PING and send their own PING every `heartbeat_secs`, PROTOCOL.md session rule 2), held for
//! `--duration` seconds; with `--gate-pid` the gate's *marginal* memory per connection.
//!
//! Owns the run's shape and coordination: [`IdleArgs`], [`Plan`], [`Shared`] (the phase, one
//! cache-padded counter slot per executor, the error log) and [`run`], which drives the phases
//! from the calling thread, with a progress line per second throughout:
//!
//! 1. **Before connecting**: the gate's RSS, RSS(0), and every token signed and LOGIN encoded.
//! 2. **Setup**: every executor connects and logs in its share (connection `i` on executor
//!    `i % executors`, from source address `i % sources`, uid `--uid-base + i`), at most
//!    [`SETUP_INFLIGHT`] logins in flight per executor (so the gate's listen backlog and SYN
//!    queue are not what is measured). It ends when every connection has logged in or failed,
//!    or fails the run (exit 2) at `--setup-timeout`.
//! 3. **Settle** (`--settle` s): nothing new happens; then the gate's RSS, RSS(N), with N the
//!    connections logged in at that moment. Marginal memory = (RSS(N) − RSS(0)) / N.
//! 4. **Held** (`--duration` s, the measured window): heartbeats go on; failures (KICK, close)
//!    are counted; the tool's and the gate's CPU shares are measured; the gate's RSS at the end
//!    is reported too.
//! 5. **Done**: executors close every socket (RST) and stop.

mod exec;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use report::{Summary, marginal_bytes};

use crate::harness::{
    ErrorLog, Phase, PhaseCell, RunError, check_fd_limit, check_loopback, join_all, parse_cpus,
    sleep_until, spawn_executors,
};
use crate::login::{AuthMode, FailureCounts, Failures, LoginFrames, Tokens};
use crate::procstat::{CpuMeter, Proc, cpu_share};
use crate::sources::Sources;

/// Most connections one process holds (the open-file limit is 20,000 and cannot be raised).
pub const MAX_CONNECTIONS: usize = 15_000;
/// Logins in flight per executor during the setup.
pub const SETUP_INFLIGHT: usize = 256;

/// `imgate-bench idle` options.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Gate address, loopback only.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Logged-in connections to hold; at most 15000.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Seconds the connections are held after they settled (the measured window).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds between the last login and the RSS(N) reading.
    #[arg(long, default_value_t = 2)]
    pub settle: u64,
    /// Longest the setup (connect and log in every connection) may take, seconds.
    #[arg(long, default_value_t = 60)]
    pub setup_timeout: u64,
    /// How the gate checks tokens: `jwt` (HS256 signed with --jwt-secret) or `dev` (any token).
    #[arg(long, value_enum, default_value_t = AuthMode::Jwt)]
    pub auth: AuthMode,
    /// The gate's `auth.secret` (required with --auth jwt).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// First uid; connection `i` logs in as `uid-base + i`.
    #[arg(long, default_value_t = 1_000_000)]
    pub uid_base: u64,
    /// Source addresses: a count (`8` = 127.0.0.1-127.0.0.8), a list or a range.
    #[arg(long, default_value = "8")]
    pub sources: String,
    /// Cores for the load executors, e.g. `1`, `1,3` or `2-3`; one executor per core.
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// The gate's pid: report its marginal memory per connection and its CPU share.
    #[arg(long)]
    pub gate_pid: Option<u32>,
    /// Print the summary as one JSON line (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// Settings every executor reads; fixed before they start.
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    pub sources: Sources,
    /// One LOGIN frame per connection, in connection order.
    pub frames: LoginFrames,
    pub executors: usize,
}

impl Plan {
    /// The connections executor `index` holds: `index`, `index + executors`, ...
    pub fn connections_of(&self, index: usize) -> impl Iterator<Item = usize> + use<> {
        (index..self.frames.len()).step_by(self.executors.max(1))
    }
}

/// One executor's counters, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Stats {
    /// Sockets open.
    pub open: AtomicU64,
    /// Connections logged in now.
    pub logged_in: AtomicU64,
    /// Logins so far (connections that have logged in, whatever happened to them since).
    pub logins: AtomicU64,
    /// Connections that failed (at login or after), by kind.
    pub failures: FailureCounts,
    /// PINGs the connections sent, and PINGs from the gate they answered.
    pub pings_sent: AtomicU64,
    pub pings_answered: AtomicU64,
}

/// Sums over every executor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub open: u64,
    pub logged_in: u64,
    pub logins: u64,
    pub failures: Failures,
    pub pings_sent: u64,
    pub pings_answered: u64,
}

/// What the executors and the coordinating thread share.
#[derive(Debug)]
pub struct Shared {
    pub phase: PhaseCell,
    pub stats: Box<[Stats]>,
    pub errors: ErrorLog,
}

impl Shared {
    fn new(executors: usize) -> Self {
        Self {
            phase: PhaseCell::default(),
            stats: (0..executors).map(|_| Stats::default()).collect(),
            errors: ErrorLog::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.stats.iter().fold(Totals::default(), |t, s| Totals {
            open: t.open + load(&s.open),
            logged_in: t.logged_in + load(&s.logged_in),
            logins: t.logins + load(&s.logins),
            failures: t.failures.plus(s.failures.snapshot()),
            pings_sent: t.pings_sent + load(&s.pings_sent),
            pings_answered: t.pings_answered + load(&s.pings_answered),
        })
    }
}

#[derive(Debug)]
struct Checked {
    addr: SocketAddr,
    cpus: Vec<usize>,
    sources: Sources,
    secret: Vec<u8>,
}

fn validate(args: &IdleArgs) -> Result<Checked, RunError> {
    let addr = check_loopback(args.addr)?;
    if !addr.is_ipv4() {
        return Err(RunError::Args(
            "--addr: an IPv4 loopback address (sources are 127.0.0.0/8)".into(),
        ));
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(RunError::Args(format!(
            "--connections: 1 to {MAX_CONNECTIONS} per process"
        )));
    }
    if args.duration == 0 || args.setup_timeout == 0 {
        return Err(RunError::Args(
            "--duration and --setup-timeout must be at least 1".into(),
        ));
    }
    if args.uid_base == 0 || args.uid_base.checked_add(args.connections as u64).is_none() {
        return Err(RunError::Args(
            "--uid-base: uid 0 is invalid, and the range must fit".into(),
        ));
    }
    let secret = match (args.auth, &args.jwt_secret) {
        (AuthMode::Jwt, Some(s)) if !s.is_empty() => s.as_bytes().to_vec(),
        (AuthMode::Jwt, _) => {
            return Err(RunError::Args(
                "--auth jwt needs --jwt-secret (the gate's auth.secret)".into(),
            ));
        }
        (AuthMode::Dev, _) => Vec::new(),
    };
    check_fd_limit(args.connections)?;
    let cpus = parse_cpus(&args.cpus)?;
    Ok(Checked {
        addr,
        cpus,
        sources: Sources::parse(&args.sources).map_err(RunError::Args)?,
        secret,
    })
}

/// Reads the gate's RSS, or explains why it could not.
fn gate_rss(gate: Option<Proc>) -> Result<Option<u64>, RunError> {
    gate.map(|g| {
        g.rss()
            .map_err(|e| RunError::Setup(format!("--gate-pid: {e}")))
    })
    .transpose()
}

/// Prints progress lines, one per second since `origin`, between calls.
struct Progress {
    origin: Instant,
    second: u64,
    last: Totals,
    own: Option<CpuMeter>,
    gate: Option<CpuMeter>,
    gate_proc: Option<Proc>,
}

impl Progress {
    /// Prints the lines due by now; returns when the next one is due.
    fn tick(&mut self, stage: &str, t: Totals) -> Instant {
        while Instant::now() >= self.origin + Duration::from_secs(self.second) {
            let own = self.own.as_mut().and_then(CpuMeter::share_since_last);
            let gate = self.gate.as_mut().and_then(CpuMeter::share_since_last);
            let rss = self.gate_proc.and_then(|g| g.rss().ok());
            eprintln!(
                "{}",
                report::progress_line(self.second, stage, t, self.last, own, gate, rss)
            );
            self.last = t;
            self.second += 1;
        }
        self.origin + Duration::from_secs(self.second)
    }

    /// Sleeps until `until`, printing the lines due meanwhile.
    fn wait(&mut self, stage: &str, shared: &Shared, until: Instant) {
        while Instant::now() < until {
            let next = self.tick(stage, shared.totals());
            sleep_until(next.min(until));
        }
    }
}

/// Runs the scenario (see the module doc). Failed connections are counted in the summary, not
/// returned; a setup that does not finish in time is an error.
pub fn run(args: &IdleArgs) -> Result<Summary, RunError> {
    let checked = validate(args)?;
    let gate = args.gate_pid.map(Proc::Pid);
    let gate_rss0 = gate_rss(gate)?;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + args.setup_timeout
        + args.settle
        + args.duration
        + 3600;
    let tokens = Tokens {
        mode: args.auth,
        secret: checked.secret.clone(),
        exp,
    };
    let executors = checked.cpus.len();
    let plan = Arc::new(Plan {
        addr: checked.addr,
        sources: checked.sources.clone(),
        frames: LoginFrames::build(&tokens, args.uid_base, args.connections),
        executors,
    });
    let shared = Arc::new(Shared::new(executors));
    let mut progress = Progress {
        origin: Instant::now(),
        second: 1,
        last: Totals::default(),
        own: CpuMeter::start(Proc::SelfProcess).ok(),
        gate: gate.and_then(|g| CpuMeter::start(g).ok()),
        gate_proc: gate,
    };
    let handles = spawn_executors(
        &checked.cpus,
        |index| {
            let (theirs, plan) = (Arc::clone(&shared), Arc::clone(&plan));
            move || exec::run(index, theirs, plan)
        },
        || shared.phase.set(Phase::Done),
    )?;

    // Setup: every connection logged in or failed.
    let setup_start = Instant::now();
    let setup_deadline = setup_start + Duration::from_secs(args.setup_timeout);
    loop {
        let t = shared.totals();
        if t.logins + t.failures.total() >= args.connections as u64 {
            break;
        }
        if Instant::now() >= setup_deadline {
            shared.phase.set(Phase::Done);
            let _ = join_all(handles);
            return Err(RunError::Setup(format!(
                "{} of {} connections logged in ({} failed) after {} s",
                t.logins,
                args.connections,
                t.failures.total(),
                args.setup_timeout
            )));
        }
        let next = progress.tick("setup", t);
        sleep_until(next.min(Instant::now() + Duration::from_millis(10)));
    }
    let setup_seconds = setup_start.elapsed().as_secs_f64();

    // Settle, then RSS(N).
    let settle_end = Instant::now() + Duration::from_secs(args.settle);
    progress.wait("settle", &shared, settle_end);
    let settled = shared.totals();
    let gate_rss_n = gate_rss(gate)?;
    let own_rss = Proc::SelfProcess.rss().unwrap_or(0);

    // Held: the measured window.
    shared.phase.set(Phase::Running);
    let own_start = Proc::SelfProcess.cpu().unwrap_or_default();
    let gate_start = gate.and_then(|g| g.cpu().ok());
    let start = Instant::now();
    progress.wait("held", &shared, start + Duration::from_secs(args.duration));
    let held = start.elapsed();
    let end = shared.totals();
    let own_cpu = Proc::SelfProcess
        .cpu()
        .map(|c| cpu_share(c.since(own_start), held))
        .unwrap_or(0.0);
    let gate_cpu = match (gate, gate_start) {
        (Some(g), Some(before)) => g.cpu().ok().map(|c| cpu_share(c.since(before), held)),
        _ => None,
    };
    let gate_rss_end = gate.and_then(|g| g.rss().ok());

    // Done.
    shared.phase.set(Phase::Done);
    let heartbeats = join_all(handles).map_err(RunError::Executor)?;
    let (_, error_messages) = shared.errors.snapshot();
    Ok(Summary {
        auth: args.auth,
        connections: args.connections,
        sources: checked.sources.len(),
        executors,
        heartbeat_secs: heartbeats.into_iter().max().unwrap_or(0),
        setup_seconds,
        settle_seconds: args.settle,
        seconds: held.as_secs_f64(),
        logged_in: settled.logged_in,
        logged_in_end: end.logged_in,
        failures: end.failures,
        pings_sent: end.pings_sent.saturating_sub(settled.pings_sent),
        pings_answered: end.pings_answered.saturating_sub(settled.pings_answered),
        tool_cpu: own_cpu,
        tool_rss: own_rss,
        gate_pid: args.gate_pid,
        gate_rss0,
        gate_rss_n,
        gate_rss_end,
        gate_cpu,
        error_messages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> IdleArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            idle: IdleArgs,
        }
        let mut argv = vec!["x"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).idle
    }

    #[test]
    fn connections_are_dealt_round_robin_over_executors() {
        let tokens = Tokens {
            mode: AuthMode::Dev,
            secret: Vec::new(),
            exp: 0,
        };
        let plan = Plan {
            addr: "127.0.0.1:7000".parse().expect("addr"),
            sources: Sources::parse("2").expect("sources"),
            frames: LoginFrames::build(&tokens, 1, 7),
            executors: 3,
        };
        let of = |i| plan.connections_of(i).collect::<Vec<_>>();
        assert_eq!(of(0), [0, 3, 6]);
        assert_eq!(of(1), [1, 4]);
        assert_eq!(of(2), [2, 5]);
    }

    #[test]
    fn options_outside_the_rules_are_refused() {
        let refused = |extra: &[&str]| matches!(validate(&args(extra)), Err(RunError::Args(_)));
        assert!(validate(&args(&["--jwt-secret", "s"])).is_ok());
        assert!(validate(&args(&["--auth", "dev"])).is_ok());
        assert!(refused(&[]), "jwt without a secret");
        assert!(refused(&["--auth", "dev", "--connections", "15001"]));
        assert!(refused(&["--auth", "dev", "--connections", "0"]));
        assert!(refused(&["--auth", "dev", "--addr", "192.168.1.1:7000"]));
        assert!(refused(&["--auth", "dev", "--uid-base", "0"]));
        assert!(refused(&["--auth", "dev", "--duration", "0"]));
        assert!(refused(&["--auth", "dev", "--sources", "300"]));
    }
}
