//! One executor of the connect scenario (a glommio `LocalExecutor` pinned to one core): its slots
//! and their supervisor.
//!
//! Owns, per executor: the read buffer every attempt reads into, the latency histogram (µs,
//! returned to the coordinator at the end), and each slot's control block (its attempt deadline
//! and a [`Signal`] to cancel it). A slot task loops: take the next attempt number, connect from
//! its source address, LOGIN, wait for the LoginResp, close (RST, or LOGOUT), count.
//!
//! The supervisor is the executor's one periodic timer (every [`TICK`]): it cancels attempts past
//! their deadline (counted as timeouts) and, at [`Phase::Done`], every attempt, so no timer is
//! armed per attempt. Counters go to the executor's slot in [`Shared`].

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future;
use hdrhistogram::Histogram;

use super::{Plan, Shared, Stats, new_histogram};
use crate::harness::Phase;
use crate::link::{CloseMode, Link, Signal};
use crate::login::{Failure, FailureKind};

/// How often the supervisor looks for attempts past their deadline.
const TICK: Duration = Duration::from_millis(20);
/// Pause of a slot after a failed connect (port or fd exhaustion, gate down), so it does not spin.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Bytes of the executor's read buffer.
const READ_BUF: usize = 64 * 1024;

/// What a slot shares with its executor's supervisor.
#[derive(Default)]
struct SlotCtl {
    /// When the attempt in progress times out.
    deadline: Cell<Option<Instant>>,
    cancel: Signal,
}

struct Exec {
    index: usize,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    buf: RefCell<Vec<u8>>,
    latency: RefCell<Histogram<u64>>,
}

impl Exec {
    fn stats(&self) -> &Stats {
        &self.shared.stats[self.index]
    }

    fn phase(&self) -> Phase {
        self.shared.phase.get()
    }
}

/// An open socket, counted in [`Stats::open`] until dropped.
struct Counted<'a> {
    link: Link,
    open: &'a AtomicU64,
}

impl<'a> Counted<'a> {
    fn new(link: Link, open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self { link, open }
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one executor until [`Phase::Done`]; returns its latency histogram.
pub async fn run(index: usize, shared: Arc<Shared>, plan: Arc<Plan>) -> Histogram<u64> {
    let slots: Vec<Rc<SlotCtl>> = (0..plan.slots[index])
        .map(|_| Rc::new(SlotCtl::default()))
        .collect();
    let exec = Rc::new(Exec {
        index,
        shared,
        plan,
        buf: RefCell::new(vec![0; READ_BUF]),
        latency: RefCell::new(new_histogram()),
    });
    let tasks: Vec<_> = slots
        .iter()
        .map(|ctl| glommio::spawn_local(slot(Rc::clone(&exec), Rc::clone(ctl))))
        .collect();
    while exec.phase() != Phase::Done {
        glommio::timer::sleep(TICK).await;
        let now = Instant::now();
        for ctl in &slots {
            if ctl.deadline.get().is_some_and(|d| now >= d) {
                ctl.deadline.set(None);
                ctl.cancel.raise();
            }
        }
    }
    for ctl in &slots {
        ctl.cancel.raise();
    }
    let joined = glommio::timer::timeout(Duration::from_secs(3), async {
        for task in tasks {
            task.await;
        }
        Ok(())
    })
    .await;
    if joined.is_err() {
        eprintln!("imgate-bench: executor {index}: slots did not end within 3 s");
    }
    exec.latency.replace(new_histogram())
}

/// One slot: attempts back to back while the window is open.
async fn slot(exec: Rc<Exec>, ctl: Rc<SlotCtl>) {
    loop {
        match exec.phase() {
            Phase::Setup => glommio::timer::sleep(Duration::from_millis(1)).await,
            Phase::Running => break,
            Phase::Draining | Phase::Done => return,
        }
    }
    let plan = &exec.plan;
    while exec.phase() == Phase::Running {
        let attempt = exec.shared.attempts.fetch_add(1, Ordering::Relaxed);
        if plan.max_attempts.is_some_and(|n| attempt >= n) {
            return;
        }
        let (uid, frame) = plan.frames.frame(attempt);
        let started = Instant::now();
        ctl.cancel.clear();
        ctl.deadline.set(Some(started + plan.timeout));
        let timed_out = async {
            ctl.cancel.wait().await;
            Err(Failure::Timeout)
        };
        let login = async {
            let link = Link::open(plan.sources.for_index(attempt), plan.addr, plan.close)
                .map_err(Failure::Connect)?;
            let mut link = Counted::new(link, &exec.stats().open);
            link.link.login(&exec.buf, frame).await?;
            Ok(link)
        };
        let outcome = future::or(login, timed_out).await;
        if exec.phase() == Phase::Done {
            return; // cancelled by the end of the run: not an outcome
        }
        let stats = exec.stats();
        let in_window = exec.phase() == Phase::Running;
        stats.ended.fetch_add(1, Ordering::Relaxed);
        if in_window {
            stats.window_ended.fetch_add(1, Ordering::Relaxed);
        }
        let link = match outcome {
            Ok(link) => {
                if in_window {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    exec.latency.borrow_mut().saturating_record(us.max(1));
                    stats.window_logins.fetch_add(1, Ordering::Relaxed);
                }
                stats.logins.fetch_add(1, Ordering::Relaxed);
                link
            }
            Err(failure) => {
                let kind = failure.kind();
                fail(&exec, uid, failure);
                ctl.deadline.set(None);
                if kind == FailureKind::Connect {
                    glommio::timer::sleep(CONNECT_BACKOFF).await;
                }
                continue;
            }
        };
        if plan.close == CloseMode::Logout {
            let mut link = link;
            let logout = async {
                link.link
                    .logout(&exec.buf, gate::protocol::DEFAULT_MAX_FRAME)
                    .await
            };
            let timed_out = async {
                ctl.cancel.wait().await;
                Err(Failure::Timeout)
            };
            let closed = future::or(logout, timed_out).await;
            if exec.phase() == Phase::Done {
                return;
            }
            if let Err(failure) = closed {
                fail(&exec, uid, failure);
            }
        }
        // `--close reset`: dropping the socket sends RST (SO_LINGER 0).
        ctl.deadline.set(None);
    }
}

fn fail(exec: &Exec, uid: u64, failure: Failure) {
    exec.stats().failures.add(failure.kind());
    exec.shared
        .errors
        .record_with(|| format!("uid {uid}: {failure}"));
}
