//! One executor of the idle scenario (a glommio `LocalExecutor` pinned to one core): its
//! connections and their supervisor.
//!
//! Owns, per executor: the read buffer every connection reads into (an idle connection holds no
//! buffer of its own, only a 64-byte output buffer for PINGs), the setup semaphore (at most
//! [`SETUP_INFLIGHT`] logins in flight), and each connection's control block (when its next PING
//! is due, and a [`Signal`] to poke it).
//!
//! The supervisor is the executor's one periodic timer (every [`TICK`]): it pokes the connections
//! whose PING is due (each one's period is the `heartbeat_secs` of its LoginResp, counted from
//! its login, so PINGs are spread as the logins were) and, at [`Phase::Done`], every connection,
//! which then closes. No timer is armed per connection.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;
use gate::protocol::{MsgType, cmd};
use glommio::sync::Semaphore;

use super::{Plan, SETUP_INFLIGHT, Shared, Stats};
use crate::harness::Phase;
use crate::link::{CloseMode, Input, Link, Signal};
use crate::login::{Failure, LOGOUT_SEQ, on_frame};
use crate::wire::put_header;

/// How often the supervisor looks for PINGs due.
const TICK: Duration = Duration::from_millis(200);
/// Bytes of the executor's read buffer.
const READ_BUF: usize = 64 * 1024;
/// `heartbeat_secs` assumed when a LoginResp carries none.
const DEFAULT_HEARTBEAT_SECS: u32 = 30;

/// What a connection shares with its executor's supervisor.
#[derive(Default)]
struct ConnCtl {
    /// When the next PING is due (`None` until logged in).
    ping_at: Cell<Option<Instant>>,
    period: Cell<Duration>,
    /// Set with a poke: a PING is due.
    ping_due: Cell<bool>,
    poke: Signal,
}

struct Exec {
    index: usize,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    buf: RefCell<Vec<u8>>,
    setup: Semaphore,
    /// Largest `heartbeat_secs` a LoginResp gave.
    heartbeat_secs: Cell<u32>,
}

impl Exec {
    fn stats(&self) -> &Stats {
        &self.shared.stats[self.index]
    }

    fn done(&self) -> bool {
        self.shared.phase.get() == Phase::Done
    }
}

/// A counter held up while a value lives.
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs one executor until [`Phase::Done`]; returns the largest heartbeat its LoginResps gave.
pub async fn run(index: usize, shared: Arc<Shared>, plan: Arc<Plan>) -> u32 {
    let exec = Rc::new(Exec {
        index,
        shared,
        plan,
        buf: RefCell::new(vec![0; READ_BUF]),
        setup: Semaphore::new(SETUP_INFLIGHT as u64),
        heartbeat_secs: Cell::new(0),
    });
    let mut ctls = Vec::new();
    let mut tasks = Vec::new();
    for i in exec.plan.connections_of(index) {
        let ctl = Rc::new(ConnCtl::default());
        ctls.push(Rc::clone(&ctl));
        let exec = Rc::clone(&exec);
        tasks.push(glommio::spawn_local(async move {
            let result = conn(&exec, &ctl, i).await;
            if let Err(failure) = result
                && !exec.done()
            {
                let uid = exec.plan.frames.uid(i);
                exec.stats().failures.add(failure.kind());
                exec.shared
                    .errors
                    .record_with(|| format!("uid {uid}: {failure}"));
            }
        }));
    }
    while !exec.done() {
        glommio::timer::sleep(TICK).await;
        let now = Instant::now();
        for ctl in &ctls {
            if let Some(at) = ctl.ping_at.get()
                && now >= at
            {
                ctl.ping_at.set(Some(now + ctl.period.get()));
                ctl.ping_due.set(true);
                ctl.poke.raise();
            }
        }
    }
    for ctl in &ctls {
        ctl.poke.raise();
    }
    let joined = glommio::timer::timeout(Duration::from_secs(3), async {
        for task in tasks {
            task.await;
        }
        Ok(())
    })
    .await;
    if joined.is_err() {
        eprintln!("imgate-bench: executor {index}: connections did not end within 3 s");
    }
    exec.heartbeat_secs.get()
}

/// What woke a logged-in connection.
enum Wake {
    Input(Input),
    PingDue,
    Stop,
}

/// One connection: log in (one of [`SETUP_INFLIGHT`]), then answer and send PINGs until the run
/// is over. `Ok` when the run ended it.
async fn conn(exec: &Exec, ctl: &ConnCtl, i: usize) -> Result<(), Failure> {
    let plan = &exec.plan;
    let permit = exec.setup.acquire_permit(1).await;
    let stopped = async {
        ctl.poke.wait().await;
        Err(Failure::Closed)
    };
    let login = async {
        // Every connection index is below the frame count (`connections_of`).
        let (_, frame) = plan.frames.frame(i as u64);
        let link = Link::open(
            plan.sources.for_index(i as u64),
            plan.addr,
            CloseMode::Reset,
        )
        .map_err(Failure::Connect)?;
        let open = Held::new(&exec.stats().open);
        let mut link = link;
        let logged_in = link.login(&exec.buf, frame).await?;
        Ok((link, open, logged_in))
    };
    let (mut link, _open, logged_in) = future::or(login, stopped).await?;
    drop(permit);
    let stats = exec.stats();
    stats.logins.fetch_add(1, Ordering::Relaxed);
    let _logged_in_now = Held::new(&stats.logged_in);
    let heartbeat_secs = match logged_in.heartbeat_secs {
        0 => DEFAULT_HEARTBEAT_SECS,
        secs => secs,
    };
    exec.heartbeat_secs
        .set(exec.heartbeat_secs.get().max(heartbeat_secs));
    let period = Duration::from_secs(u64::from(heartbeat_secs));
    ctl.period.set(period);
    ctl.ping_at.set(Some(Instant::now() + period));

    let mut out = Vec::with_capacity(64);
    let mut next_seq = LOGOUT_SEQ + 1;
    loop {
        let mut answered = 0u64;
        let wake = poll_fn(|cx| {
            if ctl.poke.poll_take(cx) {
                if exec.done() {
                    return Poll::Ready(Ok(Wake::Stop));
                }
                if ctl.ping_due.take() {
                    return Poll::Ready(Ok(Wake::PingDue));
                }
            }
            let mut buf = exec.buf.borrow_mut();
            link.poll_frames(cx, &mut buf, logged_in.max_frame, |f| {
                if (f.cmd, f.msg_type) == (cmd::PING, MsgType::Request) {
                    answered += 1;
                }
                on_frame(f, &mut out).map(drop)
            })
            .map_ok(Wake::Input)
        })
        .await;
        if answered > 0 {
            stats.pings_answered.fetch_add(answered, Ordering::Relaxed);
        }
        match wake {
            Ok(Wake::Stop) => return Ok(()),
            Ok(Wake::PingDue) => {
                put_header(&mut out, cmd::PING, MsgType::Request, next_seq, next_seq, 0);
                // seq 0 is for notifies and 1, 2 belong to LOGIN and LOGOUT.
                next_seq = next_seq.wrapping_add(1).max(LOGOUT_SEQ + 1);
                stats.pings_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Wake::Input(Input::Parsed)) => {}
            Ok(Wake::Input(Input::Eof)) => {
                return if exec.done() {
                    Ok(())
                } else {
                    Err(Failure::Closed)
                };
            }
            Err(_) if exec.done() => return Ok(()),
            Err(e) => return Err(e),
        }
        if !out.is_empty() {
            link.send(&out).await?;
            out.clear();
        }
    }
}
