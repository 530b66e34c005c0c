//! What every scenario shares on the coordinating side: the target, the run's phases and the
//! state that crosses threads ([`Shared`]: the phase, the start instant, one cache-padded
//! counter slot per executor, the connection errors), and [`run`], which starts one glommio
//! executor per listed core and drives the phases from the calling thread:
//!
//! 1. **Setup**: every executor connects its share and logs in (gate) or subscribes (nats),
//!    within `setup_timeout`; any failure ends the run.
//! 2. **Running** for `duration`, from a start instant set a little ahead so every sender sees it
//!    before its first scheduled send; a progress line each second on stderr (connections, sent,
//!    delivered, errors, own CPU).
//! 3. **Draining**: the window's counts are the result; what is still in flight is read and
//!    acknowledged until the scenario's `drained` test passes or `drain` runs out, then a few ACK
//!    flush periods pass.
//! 4. **Done**: executors shut their sockets, stop, and hand back their latency histograms,
//!    which are merged.
//!
//! Scenarios plug in with a closure per executor that spawns its connection tasks.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::exec::{self, Exec};
use crate::latency::Latency;
use crate::procstat::{CpuTime, Proc, cpu_share};

/// Most connections one load process drives.
pub const MAX_CONNECTIONS: usize = 2000;
/// Error messages kept for the report (all are counted).
pub const KEPT_ERRORS: usize = 20;
/// glommio's io_memory per executor: the tool does no file IO, so glommio's floor (the machine's
/// memlock limit is small: this is pinned three times per executor).
pub const IO_MEMORY: usize = 64 << 10;
/// io_uring depth per ring. Not for queueing (the tool keeps few requests in flight): the
/// kernel sizes a ring's cancel hash table from it (cq entries / 32, at most 256 buckets), and
/// every executor wake-up cancels a timeout in the ring that also holds one readiness poll per
/// connection. At glommio's default of 128 that is 8 buckets, so each cancel walked chains of
/// ~250 polls with 2,000 connections (`io_poll_find` was >10% of the tool's CPU).
pub const RING_DEPTH: usize = 4096;
/// How far ahead of "now" the run's start is set, so every sender is waiting for it.
const START_AHEAD: Duration = Duration::from_millis(20);

/// Which server is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// imgate's binary client protocol.
    Gate,
    /// The same frames, each in one WebSocket binary message, on the same port (`/ws`).
    GateWs,
    /// nats-server's text protocol (SUB, PUB, MSG).
    Nats,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gate => "gate",
            Self::GateWs => "gate-ws",
            Self::Nats => "nats",
        }
    }

    /// `127.0.0.1:7000` for the gate, `127.0.0.1:4222` for nats-server.
    pub fn default_addr(self) -> SocketAddr {
        let port = match self {
            Self::Gate | Self::GateWs => 7000,
            Self::Nats => 4222,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

/// Why a run could not be carried out.
#[derive(Debug)]
pub enum RunError {
    /// The options are inconsistent.
    Args(String),
    /// Group creation, connecting or logging in failed.
    Setup(String),
    /// An executor could not start or ended abnormally.
    Executor(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Args(m) => write!(f, "bad options: {m}"),
            Self::Setup(m) => write!(f, "setup failed: {m}"),
            Self::Executor(m) => write!(f, "executor failed: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The load generator only targets loopback addresses.
pub fn check_loopback(addr: SocketAddr) -> Result<(), RunError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(RunError::Args(format!(
            "--addr {addr}: the load generator only targets loopback addresses"
        )))
    }
}

/// `1`, `1,3`, `2-3`, `0,2-3`: a list of core numbers.
pub fn parse_cpus(spec: &str) -> Result<Vec<usize>, RunError> {
    let bad = || RunError::Args(format!("--cpus {spec:?}: expected e.g. 1, 1,3 or 2-3"));
    let mut cpus = Vec::new();
    for part in spec.split(',').map(str::trim) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() || cpus.len() > 64 {
        return Err(bad());
    }
    Ok(cpus)
}

/// Where a run is; every executor reads it, the coordinating thread moves it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Connecting and logging in; nothing is measured.
    Setup = 0,
    /// The measured window.
    Running = 1,
    /// After the window: work in flight finishes, nothing new starts.
    Draining = 2,
    /// Executors close their sockets and stop.
    Done = 3,
}

/// What one connection counted since it last reported (plain numbers, no atomics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages received (PUSH, pulled, nats MSG), repeats included.
    pub delivered: u64,
    /// Deliveries that were resends of a PUSH already seen on that connection.
    pub repeats: u64,
    /// Of `delivered`, the messages that came by PULL after a NOTIFY.
    pub pulled: u64,
    /// NOTIFY frames received.
    pub notifies: u64,
    /// SendResp with code OK.
    pub answered: u64,
    /// SendResp with code RATE_LIMITED.
    pub rate_limited: u64,
    /// SendResp with any other non-OK code.
    pub refused: u64,
}

impl Counts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One executor's counters, on a cache line of its own; written once per read or write batch.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Stats {
    /// Connections logged in (gate) or subscribed (nats) and not ended.
    pub connections: AtomicU64,
    pub sent: AtomicU64,
    pub delivered: AtomicU64,
    pub repeats: AtomicU64,
    pub pulled: AtomicU64,
    pub notifies: AtomicU64,
    pub answered: AtomicU64,
    pub rate_limited: AtomicU64,
    pub refused: AtomicU64,
}

impl Stats {
    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add(&self, c: &Counts) {
        for (slot, n) in [
            (&self.delivered, c.delivered),
            (&self.repeats, c.repeats),
            (&self.pulled, c.pulled),
            (&self.notifies, c.notifies),
            (&self.answered, c.answered),
            (&self.rate_limited, c.rate_limited),
            (&self.refused, c.refused),
        ] {
            if n > 0 {
                slot.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

/// Sums over every executor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub sent: u64,
    pub delivered: u64,
    pub repeats: u64,
    pub pulled: u64,
    pub notifies: u64,
    pub answered: u64,
    pub rate_limited: u64,
    pub refused: u64,
}

impl Totals {
    /// Deliveries that were not repeats.
    pub fn unique(&self) -> u64 {
        self.delivered.saturating_sub(self.repeats)
    }

    /// Sends the server accepted or has not answered yet: all but the refused ones.
    pub fn accepted(&self) -> u64 {
        self.sent
            .saturating_sub(self.rate_limited)
            .saturating_sub(self.refused)
    }

    /// SendResps of any code.
    pub fn responses(&self) -> u64 {
        self.answered + self.rate_limited + self.refused
    }
}

/// What the executors and the coordinating thread share.
#[derive(Debug)]
pub struct Shared {
    phase: AtomicU8,
    start: OnceLock<Instant>,
    ready: AtomicUsize,
    pub stats: Box<[Stats]>,
    error_count: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn new(executors: usize) -> Self {
        Self {
            phase: AtomicU8::new(Phase::Setup as u8),
            start: OnceLock::new(),
            ready: AtomicUsize::new(0),
            stats: (0..executors).map(|_| Stats::default()).collect(),
            error_count: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Setup,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// When sending starts: the origin of every timestamp (set before the phase is Running).
    pub fn start(&self) -> Option<Instant> {
        self.start.get().copied()
    }

    /// A connection is logged in (gate) or subscribed (nats).
    pub fn joined(&self) {
        self.ready.fetch_add(1, Ordering::Release);
    }

    pub fn totals(&self) -> Totals {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.stats.iter().fold(Totals::default(), |t, s| Totals {
            connections: t.connections + get(&s.connections),
            sent: t.sent + get(&s.sent),
            delivered: t.delivered + get(&s.delivered),
            repeats: t.repeats + get(&s.repeats),
            pulled: t.pulled + get(&s.pulled),
            notifies: t.notifies + get(&s.notifies),
            answered: t.answered + get(&s.answered),
            rate_limited: t.rate_limited + get(&s.rate_limited),
            refused: t.refused + get(&s.refused),
        })
    }

    /// Counts a failed connection (ignored once the run is Done: sockets are being shut).
    pub fn record_error(&self, message: String) {
        if self.phase() == Phase::Done {
            return;
        }
        self.error_count.fetch_add(1, Ordering::Relaxed);
        self.note(message);
    }

    /// Keeps a message for the report without counting a failed connection (e.g. the first
    /// refused SEND of a connection; refusals are counted in [`Stats`]).
    pub fn note(&self, message: String) {
        let mut kept = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_ERRORS {
            kept.push(message);
        }
    }

    fn errors(&self) -> (u64, Vec<String>) {
        let kept = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.error_count.load(Ordering::Relaxed), kept)
    }
}

/// The shape of a run, the same for every scenario.
#[derive(Debug, Clone)]
pub struct Phases {
    pub cpus: Vec<usize>,
    /// Connections that must be ready before the run starts.
    pub connections: usize,
    pub setup_timeout: Duration,
    pub duration: Duration,
    pub drain: Duration,
    /// Longest a partial ACK batch waits (the executors' supervisor tick).
    pub ack_flush: Duration,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Counts at the end of the measured window.
    pub measured: Totals,
    /// Counts after the drain.
    pub end: Totals,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// Every executor's latencies, merged.
    pub latency: Latency,
    /// Failed connections (protocol errors, KICKs, unexpected closes).
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// This process's CPU over the measured window, in cores (1.0 = one core busy).
    pub cpu: f64,
    pub executors: usize,
}

/// A closure that spawns one executor's connection tasks (run on that executor's thread).
pub type SpawnConns = Box<dyn FnOnce(&Rc<Exec>) -> Vec<glommio::Task<()>> + Send>;

fn own_cpu() -> CpuTime {
    // A missing /proc reads as zero CPU: the figure is informational.
    Proc::SelfProcess.cpu().unwrap_or_default()
}

/// Runs the phases (module doc). `spawn(i)` gives executor `i`'s connection spawner; the drain
/// ends early once `drained(totals)` holds. Protocol errors are counted, not returned.
pub fn run(
    phases: &Phases,
    mut spawn: impl FnMut(usize) -> SpawnConns,
    drained: impl Fn(&Totals) -> bool,
) -> Result<Outcome, RunError> {
    let shared = Arc::new(Shared::new(phases.cpus.len()));
    let mut handles = Vec::with_capacity(phases.cpus.len());
    for (index, cpu) in phases.cpus.iter().enumerate() {
        let theirs = Arc::clone(&shared);
        let conns = spawn(index);
        let (ack_flush, duration) = (phases.ack_flush, phases.duration);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(*cpu))
            .name(&format!("bench-{index}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || exec::run(index, theirs, ack_flush, duration, conns));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                shared.set_phase(Phase::Done);
                join_all(handles);
                return Err(RunError::Executor(format!("on cpu {cpu}: {e}")));
            }
        }
    }

    // 1. Setup.
    let total = phases.connections;
    let setup_deadline = Instant::now() + phases.setup_timeout;
    loop {
        let (errors, kept) = shared.errors();
        let ready = shared.ready.load(Ordering::Acquire);
        if ready == total && errors == 0 {
            break;
        }
        if errors > 0 || Instant::now() > setup_deadline {
            shared.set_phase(Phase::Done);
            join_all(handles);
            let why = if errors > 0 {
                format!("{errors} connection(s) failed: {}", kept.join("; "))
            } else {
                format!(
                    "only {ready} of {total} connections ready after {} s",
                    phases.setup_timeout.as_secs()
                )
            };
            return Err(RunError::Setup(why));
        }
        std::thread::sleep(Duration::from_millis(5));
    }

    // 2. Running.
    let start = Instant::now() + START_AHEAD;
    let _ = shared.start.set(start);
    shared.set_phase(Phase::Running);
    sleep_until(start);
    let cpu_start = own_cpu();
    let (mut last, mut last_cpu) = (Totals::default(), cpu_start);
    let whole_seconds = phases.duration.as_secs();
    for second in 1..=whole_seconds {
        sleep_until(start + Duration::from_secs(second));
        let (now, cpu) = (shared.totals(), own_cpu());
        let (errors, _) = shared.errors();
        let share = cpu_share(cpu.since(last_cpu), Duration::from_secs(1));
        eprintln!("{}", progress_line(second, now, last, errors, share));
        (last, last_cpu) = (now, cpu);
    }
    sleep_until(start + phases.duration);
    let measured = shared.totals();
    let wall = start.elapsed();
    let cpu = cpu_share(own_cpu().since(cpu_start), wall);

    // 3. Draining.
    shared.set_phase(Phase::Draining);
    let drain_deadline = Instant::now() + phases.drain;
    while Instant::now() < drain_deadline && !drained(&shared.totals()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(phases.ack_flush * 3 + Duration::from_millis(20));
    let end = shared.totals();

    // 4. Done.
    shared.set_phase(Phase::Done);
    let (latency, failed) = join_all(handles);
    let (errors, error_messages) = shared.errors();
    if let Some(why) = failed {
        return Err(RunError::Executor(why));
    }
    Ok(Outcome {
        measured,
        end,
        seconds: wall.as_secs_f64(),
        latency,
        errors,
        error_messages,
        cpu,
        executors: phases.cpus.len(),
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Joins every executor thread: their latencies merged, and the first failure, if any.
fn join_all(handles: Vec<glommio::ExecutorJoinHandle<Latency>>) -> (Latency, Option<String>) {
    let mut merged = Latency::new();
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(latency) => merged.merge(&latency),
            Err(e) => {
                failed.get_or_insert(e.to_string());
            }
        }
    }
    (merged, failed)
}

/// `[  3s] conns 2000  sent 60000 (+20000/s)  delivered 60000 (+0.02 M/s)  errors 0  cpu 12%`.
pub fn progress_line(second: u64, now: Totals, last: Totals, errors: u64, cpu: f64) -> String {
    let sent = now.sent.saturating_sub(last.sent);
    let delivered = now.delivered.saturating_sub(last.delivered);
    let refused = now.refused + now.rate_limited;
    let refused = if refused > 0 {
        format!(
            "  refused {} ({} rate-limited)",
            now.refused + now.rate_limited,
            now.rate_limited
        )
    } else {
        String::new()
    };
    format!(
        "[{second:>3}s] conns {}  sent {} (+{sent}/s)  delivered {} (+{:.2} M/s){refused}  errors {errors}  cpu {:.0}%",
        now.connections,
        now.sent,
        now.delivered,
        delivered as f64 / 1e6,
        cpu * 100.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_ranges_parse() {
        assert_eq!(parse_cpus("1").expect("one"), [1]);
        assert_eq!(parse_cpus("3,1").expect("list"), [1, 3]);
        assert_eq!(parse_cpus("0,2-3").expect("range"), [0, 2, 3]);
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("a").is_err());
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(check_loopback("127.0.0.1:7000".parse().expect("addr")).is_ok());
        assert!(check_loopback("[::1]:7000".parse().expect("addr")).is_ok());
        assert!(check_loopback("10.0.0.1:7000".parse().expect("addr")).is_err());
    }

    #[test]
    fn progress_line_shows_per_second_deltas_and_own_cpu() {
        let last = Totals {
            connections: 1001,
            sent: 1000,
            delivered: 1_000_000,
            ..Totals::default()
        };
        let now = Totals {
            sent: 5000,
            delivered: 5_000_000,
            ..last
        };
        assert_eq!(
            progress_line(2, now, last, 0, 0.274),
            "[  2s] conns 1001  sent 5000 (+4000/s)  delivered 5000000 (+4.00 M/s)  errors 0  cpu 27%"
        );
        let limited = Totals {
            rate_limited: 3,
            refused: 1,
            ..now
        };
        assert!(
            progress_line(2, limited, last, 1, 0.0)
                .contains("  refused 4 (3 rate-limited)  errors 1  cpu 0%")
        );
    }

    #[test]
    fn totals_separate_accepted_sends_and_responses() {
        let t = Totals {
            sent: 100,
            answered: 90,
            rate_limited: 6,
            refused: 1,
            delivered: 95,
            repeats: 2,
            ..Totals::default()
        };
        assert_eq!(t.accepted(), 93);
        assert_eq!(t.responses(), 97);
        assert_eq!(t.unique(), 93);
    }
}
