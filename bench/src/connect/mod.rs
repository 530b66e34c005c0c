//! `imgate-bench connect`: logins per second over rolling bursts. At most `--concurrency`
//! connection *slots* run at once; each slot connects, sends LOGIN, waits for LoginResp, closes,
//! and starts over at once, for `--duration` seconds (or until `--logins` attempts are done).
//!
//! Owns the run's shape and coordination: [`ConnectArgs`] (the command line), [`Plan`] (what
//! every executor reads, fixed before they start), [`Shared`] (the phase, the attempt counter,
//! one cache-padded counter slot per executor; the only state crossing threads), and [`run`],
//! which drives the phases from the calling thread: Setup (executors start their slots, which
//! wait), Running (the measured window, a progress line per second), Draining (attempts in flight
//! finish, bounded by `--timeout`), Done (the executors return their latency histograms).
//!
//! **Tokens are signed before the window.** With `--auth jwt` the tool signs `--uids` HS256
//! tokens (uids `--uid-base ..`) and encodes their LOGIN frames into one buffer before the
//! executors start (the time it took is reported as `signing_ms`); an attempt sends a slice of
//! it. Attempt `k` (a process-wide counter) uses uid `k % uids` and source address
//! `k % sources`, so a uid comes back only after `uids` more attempts (`uids >= concurrency`
//! keeps two live logins of one uid and device, which would KICK 1 the first, apart).
//!
//! **Who ends in TIME_WAIT.** The side that closes first keeps the 4-tuple in TIME_WAIT for 60 s.
//! If the tool closed normally, its own sockets would pile up in TIME_WAIT (at 50 k logins/s,
//! 3 M of them) and the ephemeral ports of each source address (28 k) would run out in under a
//! second. So by default (`--close reset`) every socket has `SO_LINGER` 0 and the tool's close
//! sends RST: no side keeps TIME_WAIT, the gate sees a reset, as with a client that vanishes.
//! `--close logout` sends LOGOUT instead and waits for the gate to close first (PROTOCOL.md:
//! the gate closes after answering); then the *gate's* kernel keeps TIME_WAIT (which costs the
//! gate process nothing and limits nothing here: the tool picks its ports at `connect` by 4-tuple
//! with `IP_BIND_ADDRESS_NO_PORT`, and `--sources` multiplies the port space anyway).
//!
//! Measured: logins/s = LoginResps with code 0 received in the window / its length; login
//! latency = connect start to LoginResp, for attempts ending in the window (hdrhistogram, µs);
//! with `--gate-pid` the gate's CPU time over the window / logins (µs per login) and its share of
//! a core.

mod exec;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

pub use report::{Latency, Summary};

use crate::harness::{
    ErrorLog, Phase, PhaseCell, RunError, check_fd_limit, check_loopback, join_all, parse_cpus,
    sleep_until, spawn_executors,
};
use crate::link::CloseMode;
use crate::login::{AuthMode, FailureCounts, Failures, LoginFrames, Tokens};
use crate::procstat::{CpuMeter, Proc, cpu_share};
use crate::sources::Sources;

/// Most connection slots one process runs (the open-file limit is 20,000 per process).
pub const MAX_CONCURRENCY: usize = 12_000;
/// Most pre-signed tokens (about 250 bytes each).
pub const MAX_UIDS: usize = 1_000_000;
/// Highest login latency recorded exactly, µs; longer ones count at this value.
const LATENCY_MAX_US: u64 = 60_000_000;

/// `imgate-bench connect` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Gate address, loopback only.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: SocketAddr,
    /// Connections in progress at once (each connects, logs in, closes, repeats); at most 12000.
    #[arg(long, default_value_t = MAX_CONCURRENCY)]
    pub concurrency: usize,
    /// Seconds measured [default: 10, or until --logins attempts are done].
    #[arg(long)]
    pub duration: Option<u64>,
    /// Stop after this many login attempts (and at --duration, if given, whichever is first).
    #[arg(long)]
    pub logins: Option<u64>,
    /// How the gate checks tokens: `jwt` (HS256 signed with --jwt-secret) or `dev` (any token).
    #[arg(long, value_enum, default_value_t = AuthMode::Jwt)]
    pub auth: AuthMode,
    /// The gate's `auth.secret` (required with --auth jwt).
    #[arg(long)]
    pub jwt_secret: Option<String>,
    /// First uid.
    #[arg(long, default_value_t = 1_000_000)]
    pub uid_base: u64,
    /// Distinct uids (tokens signed before the run); attempts rotate over them. At least
    /// --concurrency.
    #[arg(long, default_value_t = 50_000)]
    pub uids: usize,
    /// Source addresses: a count (`8` = 127.0.0.1-127.0.0.8), a list or a range.
    #[arg(long, default_value = "8")]
    pub sources: String,
    /// How the tool ends a logged-in connection: `reset` (SO_LINGER 0, no TIME_WAIT) or
    /// `logout` (LOGOUT, the gate closes first).
    #[arg(long, value_enum, default_value_t = CloseMode::Reset)]
    pub close: CloseMode,
    /// Longest one attempt (connect to LoginResp, and the LOGOUT if any) may take, seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Cores for the load executors, e.g. `1`, `1,3` or `2-3`; one executor per core.
    #[arg(long, default_value = "1")]
    pub cpus: String,
    /// The gate's pid: report its CPU per login and its CPU share.
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
    pub frames: LoginFrames,
    pub close: CloseMode,
    pub timeout: Duration,
    /// Attempts to make in all (`--logins`), if bounded.
    pub max_attempts: Option<u64>,
    /// Slots per executor.
    pub slots: Vec<usize>,
}

/// One executor's counters, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Stats {
    /// Sockets open.
    pub open: AtomicU64,
    /// Attempts that ended (logged in or failed).
    pub ended: AtomicU64,
    /// LoginResps with code 0.
    pub logins: AtomicU64,
    /// Attempts that ended, and LoginResps, while the phase was Running (the same test that
    /// decides whether a latency is recorded, so the window's counts and histogram agree).
    pub window_ended: AtomicU64,
    pub window_logins: AtomicU64,
    pub failures: FailureCounts,
}

/// Sums over every executor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub open: u64,
    pub ended: u64,
    pub logins: u64,
    pub window_ended: u64,
    pub window_logins: u64,
    pub failures: Failures,
}

/// What the executors and the coordinating thread share.
#[derive(Debug)]
pub struct Shared {
    pub phase: PhaseCell,
    /// Attempts started; attempt `k` takes uid `k % uids` and source `k % sources`.
    pub attempts: AtomicU64,
    pub stats: Box<[Stats]>,
    pub errors: ErrorLog,
}

impl Shared {
    fn new(executors: usize) -> Self {
        Self {
            phase: PhaseCell::default(),
            attempts: AtomicU64::new(0),
            stats: (0..executors).map(|_| Stats::default()).collect(),
            errors: ErrorLog::default(),
        }
    }

    pub fn totals(&self) -> Totals {
        self.stats.iter().fold(Totals::default(), |t, s| Totals {
            open: t.open + s.open.load(Ordering::Relaxed),
            ended: t.ended + s.ended.load(Ordering::Relaxed),
            logins: t.logins + s.logins.load(Ordering::Relaxed),
            window_ended: t.window_ended + s.window_ended.load(Ordering::Relaxed),
            window_logins: t.window_logins + s.window_logins.load(Ordering::Relaxed),
            failures: t.failures.plus(s.failures.snapshot()),
        })
    }
}

/// The validated options.
#[derive(Debug)]
struct Checked {
    addr: SocketAddr,
    cpus: Vec<usize>,
    sources: Sources,
    secret: Vec<u8>,
    duration: Option<Duration>,
}

fn validate(args: &ConnectArgs) -> Result<Checked, RunError> {
    let addr = check_loopback(args.addr)?;
    if !addr.is_ipv4() {
        return Err(RunError::Args(
            "--addr: an IPv4 loopback address (sources are 127.0.0.0/8)".into(),
        ));
    }
    if args.concurrency == 0 || args.concurrency > MAX_CONCURRENCY {
        return Err(RunError::Args(format!(
            "--concurrency: 1 to {MAX_CONCURRENCY}"
        )));
    }
    if args.uids < args.concurrency || args.uids > MAX_UIDS {
        return Err(RunError::Args(format!(
            "--uids: at least --concurrency ({}) and at most {MAX_UIDS}",
            args.concurrency
        )));
    }
    if args.uid_base == 0 || args.uid_base.checked_add(args.uids as u64).is_none() {
        return Err(RunError::Args(
            "--uid-base: uid 0 is invalid, and the range must fit".into(),
        ));
    }
    if args.timeout == 0 {
        return Err(RunError::Args("--timeout must be at least 1".into()));
    }
    let duration = match (args.duration, args.logins) {
        (Some(0), _) | (_, Some(0)) => {
            return Err(RunError::Args(
                "--duration and --logins must be at least 1".into(),
            ));
        }
        (Some(d), _) => Some(Duration::from_secs(d)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let secret = match (args.auth, &args.jwt_secret) {
        (AuthMode::Jwt, Some(s)) if !s.is_empty() => s.as_bytes().to_vec(),
        (AuthMode::Jwt, _) => {
            return Err(RunError::Args(
                "--auth jwt needs --jwt-secret (the gate's auth.secret)".into(),
            ));
        }
        (AuthMode::Dev, _) => Vec::new(),
    };
    check_fd_limit(args.concurrency)?;
    let cpus = parse_cpus(&args.cpus)?;
    if cpus.len() > args.concurrency {
        return Err(RunError::Args(
            "--cpus: more executors than --concurrency".into(),
        ));
    }
    Ok(Checked {
        addr,
        cpus,
        sources: Sources::parse(&args.sources).map_err(RunError::Args)?,
        secret,
        duration,
    })
}

/// `total` split over `parts` as evenly as possible, the first ones taking the remainder.
pub fn split_evenly(total: usize, parts: usize) -> Vec<usize> {
    let parts = parts.max(1);
    (0..parts)
        .map(|i| total / parts + usize::from(i < total % parts))
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the scenario: signs the tokens, starts the executors, measures the window with a
/// progress line per second on stderr, drains, stops. Failed attempts are counted in the
/// summary, not returned.
pub fn run(args: &ConnectArgs) -> Result<Summary, RunError> {
    let checked = validate(args)?;
    let gate = args.gate_pid.map(Proc::Pid);
    if let Some(gate) = gate {
        gate.cpu()
            .map_err(|e| RunError::Setup(format!("--gate-pid: {e}")))?;
    }
    let run_secs = checked.duration.map_or(3600, |d| d.as_secs());

    // Setup: every token signed and every LOGIN frame encoded before anything is measured.
    let signing_started = Instant::now();
    let tokens = Tokens {
        mode: args.auth,
        secret: checked.secret.clone(),
        exp: unix_now() + run_secs + 3600,
    };
    let frames = LoginFrames::build(&tokens, args.uid_base, args.uids);
    let signing = signing_started.elapsed();

    let executors = checked.cpus.len();
    let plan = Arc::new(Plan {
        addr: checked.addr,
        sources: checked.sources.clone(),
        frames,
        close: args.close,
        timeout: Duration::from_secs(args.timeout),
        max_attempts: args.logins,
        slots: split_evenly(args.concurrency, executors),
    });
    let shared = Arc::new(Shared::new(executors));
    let handles = spawn_executors(
        &checked.cpus,
        |index| {
            let (theirs, plan) = (Arc::clone(&shared), Arc::clone(&plan));
            move || exec::run(index, theirs, plan)
        },
        || shared.phase.set(Phase::Done),
    )?;

    // Running.
    let own_start = Proc::SelfProcess.cpu().unwrap_or_default();
    let gate_start = gate.and_then(|g| g.cpu().ok());
    let mut own_meter = CpuMeter::start(Proc::SelfProcess).ok();
    let mut gate_meter = gate.and_then(|g| CpuMeter::start(g).ok());
    let start = Instant::now();
    shared.phase.set(Phase::Running);
    let end = checked.duration.map(|d| start + d);
    let mut last = Totals::default();
    let mut second = 1;
    loop {
        let now = Instant::now();
        let t = shared.totals();
        let all_done = args.logins.is_some_and(|n| t.ended >= n);
        if all_done || end.is_some_and(|end| now >= end) {
            break;
        }
        if now >= start + Duration::from_secs(second) {
            let own = own_meter.as_mut().and_then(CpuMeter::share_since_last);
            let gate = gate_meter.as_mut().and_then(CpuMeter::share_since_last);
            eprintln!("{}", report::progress_line(second, t, last, own, gate));
            last = t;
            second += 1;
        }
        let next_second = start + Duration::from_secs(second);
        let wake = end.map_or(next_second, |e| e.min(next_second));
        sleep_until(wake.min(now + Duration::from_millis(10)));
    }
    // Draining: attempts in flight end (each is bounded by the timeout) and are not counted in
    // the window.
    shared.phase.set(Phase::Draining);
    let seconds = start.elapsed().as_secs_f64();
    let own_cpu = Proc::SelfProcess
        .cpu()
        .map(|c| cpu_share(c.since(own_start), start.elapsed()))
        .unwrap_or(0.0);
    let gate_used = match (gate, gate_start) {
        (Some(g), Some(before)) => g.cpu().ok().map(|c| c.since(before)),
        _ => None,
    };
    let own_rss = Proc::SelfProcess.rss().unwrap_or(0);
    // An executor that saw Running just before the switch counts its attempt at once (no await
    // in between); a moment later the window's counters are final.
    std::thread::sleep(Duration::from_millis(2));
    let measured = shared.totals();
    let drain_deadline = Instant::now() + plan.timeout + Duration::from_secs(1);
    while shared.totals().open > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let after_drain = shared.totals();

    // Done.
    shared.phase.set(Phase::Done);
    let histograms = join_all(handles).map_err(RunError::Executor)?;
    let mut latency = new_histogram();
    for h in &histograms {
        latency
            .add(h)
            .map_err(|e| RunError::Executor(e.to_string()))?;
    }
    let (_, error_messages) = shared.errors.snapshot();
    Ok(Summary {
        auth: args.auth,
        concurrency: args.concurrency,
        sources: checked.sources.len(),
        close: args.close,
        executors,
        uids: args.uids,
        signing_ms: signing.as_secs_f64() * 1e3,
        seconds,
        attempts: measured.window_ended,
        logins: measured.window_logins,
        latency: Latency::of(&latency),
        failures: after_drain.failures,
        tool_cpu: own_cpu,
        tool_rss: own_rss,
        gate_pid: args.gate_pid,
        gate_cpu: gate_used.map(|used| cpu_share(used, Duration::from_secs_f64(seconds))),
        gate_us_per_login: gate_used.map(|used| report::per_login_us(used, measured.window_logins)),
        error_messages,
    })
}

/// An empty latency histogram, µs, 3 significant figures up to [`LATENCY_MAX_US`].
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ConnectArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            connect: ConnectArgs,
        }
        let mut argv = vec!["x", "--jwt-secret", "s3cret"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).connect
    }

    #[test]
    fn slots_are_split_evenly_over_executors() {
        assert_eq!(split_evenly(12_000, 1), [12_000]);
        assert_eq!(split_evenly(7, 3), [3, 2, 2]);
        assert_eq!(split_evenly(2, 3), [1, 1, 0]);
    }

    #[test]
    fn defaults_are_valid_and_duration_defaults_unless_logins_bound_the_run() {
        let a = args(&[]);
        assert_eq!(a.concurrency, MAX_CONCURRENCY);
        let c = validate(&a).expect("defaults are valid");
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.sources.len(), 8);
        assert_eq!(c.secret, b"s3cret");
        let c = validate(&args(&["--logins", "100"])).expect("valid");
        assert_eq!(c.duration, None);
        let c = validate(&args(&["--logins", "100", "--duration", "2"])).expect("valid");
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
    }

    #[test]
    fn options_outside_the_rules_are_refused() {
        let refused = |extra: &[&str]| matches!(validate(&args(extra)), Err(RunError::Args(_)));
        assert!(refused(&["--addr", "10.0.0.1:7000"]));
        assert!(refused(&["--addr", "[::1]:7000"]));
        assert!(refused(&["--concurrency", "12001"]));
        assert!(refused(&["--concurrency", "0"]));
        assert!(refused(&["--uids", "100"]), "fewer uids than slots");
        assert!(refused(&["--sources", "10.0.0.1"]));
        assert!(refused(&["--duration", "0"]));
        assert!(refused(&["--timeout", "0"]));
        let mut dev = args(&["--auth", "dev"]);
        dev.jwt_secret = None;
        assert!(validate(&dev).is_ok(), "dev auth needs no secret");
        let mut jwt = args(&[]);
        jwt.jwt_secret = None;
        assert!(matches!(validate(&jwt), Err(RunError::Args(_))));
        jwt.jwt_secret = Some(String::new());
        assert!(matches!(validate(&jwt), Err(RunError::Args(_))));
    }
}
