//! What every scenario's coordinator shares: the error a run ends with ([`RunError`]), `--cpus`
//! parsing, the loopback-only rule for `--addr`, the bounded log of connection errors
//! ([`ErrorLog`]), and starting and joining the glommio executors (one per listed core, each with
//! [`IO_MEMORY`]).
//!
//! Owns no scenario state; the scenarios (`fanout`, `connect`, `idle`) own theirs.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

pub use crate::coord::{IO_MEMORY, KEPT_ERRORS};

pub use crate::coord::Phase;

/// A [`Phase`] shared across threads.
#[derive(Debug, Default)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Setup,
            1 => Phase::Running,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }
}

/// The error a run ends with, and `--cpus`, shared with the other scenarios' coordinator.
pub use crate::coord::{RunError, parse_cpus};

/// The load generator only ever targets this host (the rule of [`crate::coord::check_loopback`]).
pub fn check_loopback(addr: SocketAddr) -> Result<SocketAddr, RunError> {
    crate::coord::check_loopback(addr).map(|()| addr)
}

/// File descriptors a run needs besides its sockets (executors, io_uring, stdio, /proc reads).
pub const FD_RESERVE: u64 = 100;

/// Refuses a run that would open more sockets than the open-file limit allows (it cannot be
/// raised here; better to say so than to count EMFILE as connect failures).
pub fn check_fd_limit(sockets: usize) -> Result<(), RunError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(()); // unknown: let the run find out
    }
    let needed = sockets as u64 + FD_RESERVE;
    if limit.rlim_cur < needed {
        return Err(RunError::Args(format!(
            "{sockets} connections need {needed} open files; the limit (ulimit -n) is {}",
            limit.rlim_cur
        )));
    }
    Ok(())
}

/// Every connection error counted, the first [`KEPT_ERRORS`] kept with their message.
#[derive(Debug, Default)]
pub struct ErrorLog {
    count: AtomicU64,
    kept: Mutex<Vec<String>>,
}

impl ErrorLog {
    pub fn record(&self, message: String) {
        self.record_with(|| message);
    }

    /// Counts one error; `message` is made (and the lock taken) only while messages are kept,
    /// so a run failing at a high rate does not format or contend for every failure.
    pub fn record_with(&self, message: impl FnOnce() -> String) {
        let before = self.count.fetch_add(1, Ordering::Relaxed);
        if before < KEPT_ERRORS as u64 {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.len() < KEPT_ERRORS {
                kept.push(message());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The count and the kept messages.
    pub fn snapshot(&self) -> (u64, Vec<String>) {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (self.count(), kept)
    }
}

/// Starts one executor per core in `cpus`, named `bench-INDEX`, running `task(index)`. On a
/// failure the ones already started are handed to `abort` (which must make them end) and joined.
pub fn spawn_executors<T, F, Fut>(
    cpus: &[usize],
    mut task: impl FnMut(usize) -> F,
    abort: impl FnOnce(),
) -> Result<Vec<ExecutorJoinHandle<T>>, RunError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let mut handles = Vec::with_capacity(cpus.len());
    for (index, cpu) in cpus.iter().enumerate() {
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(*cpu))
            .name(&format!("bench-{index}"))
            .io_memory(IO_MEMORY)
            .ring_depth(crate::coord::RING_DEPTH)
            .spawn(task(index));
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                abort();
                // The start failure is what the caller reports; a failed join adds nothing.
                let _ = join_all(handles);
                return Err(RunError::Executor(format!("on cpu {cpu}: {e}")));
            }
        }
    }
    Ok(handles)
}

/// Joins every executor thread: their results, or the first failure.
pub fn join_all<T: Send + 'static>(handles: Vec<ExecutorJoinHandle<T>>) -> Result<Vec<T>, String> {
    let mut results = Vec::with_capacity(handles.len());
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(t) => results.push(t),
            Err(e) => {
                failed.get_or_insert(e.to_string());
            }
        }
    }
    match failed {
        Some(why) => Err(why),
        None => Ok(results),
    }
}

pub fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert!(check_loopback("127.0.0.1:7000".parse().expect("addr")).is_ok());
        assert!(check_loopback("[::1]:7000".parse().expect("addr")).is_ok());
        assert!(matches!(
            check_loopback("10.0.0.1:7000".parse().expect("addr")),
            Err(RunError::Args(_))
        ));
    }

    #[test]
    fn error_log_counts_all_and_keeps_the_first() {
        let log = ErrorLog::default();
        for i in 0..KEPT_ERRORS + 5 {
            log.record(format!("e{i}"));
        }
        let (count, kept) = log.snapshot();
        assert_eq!(count, (KEPT_ERRORS + 5) as u64);
        assert_eq!(kept.len(), KEPT_ERRORS);
        assert_eq!(kept[0], "e0");
    }
}
