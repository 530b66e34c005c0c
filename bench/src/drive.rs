//! The connection loops every scenario shares, for both targets: a receiver reads, counts and
//! acknowledges; a sender sends what its [`Pacer`] allows and reads like a receiver.
//!
//! A target plugs in through [`Handler`]: the sans-IO part of its protocol (parse what arrived,
//! record latencies, append answers and ACKs to the output buffer, append one send). A scenario
//! plugs in through [`Pacer`]: how many messages a sender may send now, with which timestamps,
//! and what wakes it. The loops own the order of things: read, count, ACK bookkeeping, write,
//! wait.
//!
//! Pacers here: [`OpenLoop`] (a fixed schedule, stamped with the scheduled times) and
//! [`Unanswered`] (closed loop: at most `inflight` requests without an answer, stamped when
//! sent). The fan-out and chat scenarios add their own closed-loop windows.
//!
//! A sender owns no timer: it parks in its executor's [`Pace`](crate::pace::Pace) until its
//! pacer's next due time or the end of the window, whichever is first (one entry per sender,
//! re-set on each poll without a syscall). When it wakes it writes everything it owes, and any
//! partial ACK batch, in one write.

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::coord::{Counts, Phase};
use crate::exec::{Conn, ConnError, Event, Exec};
use crate::latency::{Latency, Schedule};
use crate::pace::PaceSlot;

/// Most sends appended per write.
const SEND_BATCH: u64 = 4096;
/// Bytes after which a write goes out even if more sends are owed (the rest follow at once).
const WRITE_MAX: usize = 256 * 1024;

/// What a handler gets with the bytes of one read.
pub struct Received<'a> {
    /// When the read returned, ns since the run's start.
    pub now_ns: u64,
    /// The executor's histogram.
    pub latency: &'a mut Latency,
}

/// The protocol side of one connection.
pub trait Handler {
    /// Parses complete operations at the front of `buf`, recording latencies in `rx` and
    /// appending answers (PONG, full ACK batches, PULLs) to `out`; returns the bytes consumed.
    fn feed(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<usize, ConnError>;
    /// What was counted since the last call.
    fn take_counts(&mut self) -> Counts;
    /// Whether ids wait for an ACK.
    fn acks_pending(&self) -> bool;
    /// Appends the partial ACK batch.
    fn flush_acks(&mut self, out: &mut Vec<u8>);
    /// Sends this connection may add now (its own bound on unanswered requests).
    fn can_send(&self) -> u64;
    /// Appends one send whose body carries `stamp_ns`.
    fn put_send(&mut self, out: &mut Vec<u8>, stamp_ns: u64);
}

/// How a sender paces itself.
pub trait Pacer<H: Handler> {
    /// Messages that may be sent at `now_ns` (ns since the start).
    fn room(&mut self, exec: &Exec, h: &H, now_ns: u64) -> u64;
    /// Fewest messages worth a write (a closed window refills in batches).
    fn min_batch(&self) -> u64 {
        1
    }
    /// The timestamp of the next message (its scheduled time, or `now_ns`).
    fn stamp(&mut self, now_ns: u64) -> u64;
    /// Registers a wake-up for when `room` may grow (other than by the clock: see
    /// [`Pacer::next_due`]); true if it may have grown already.
    fn poll_room(&mut self, cx: &mut Context<'_>, exec: &Exec, h: &H, now_ns: u64) -> bool;
    /// When `room` grows by the clock alone (the executor's pacing service wakes the sender
    /// then); `None` if it never does.
    fn next_due(&self) -> Option<u64> {
        None
    }
    /// `n` messages were just appended (and are about to be written).
    fn sent(&mut self, _n: u64) {}
    /// What this connection just read: deliveries to it, answers to its sends.
    fn counted(&mut self, _counts: &Counts) {}
    /// Nothing more will ever be sent.
    fn finished(&self) -> bool {
        false
    }
    /// Messages still owed once the window has closed (an open loop's schedule runs to the end
    /// of the window, so a sender woken just after it still sends what was due before it).
    fn backlog(&mut self, _now_ns: u64) -> u64 {
        0
    }
}

/// Open loop: sends at the [`Schedule`]'s times, a late sender catching up at once; each message
/// stamped with its scheduled time.
pub struct OpenLoop {
    schedule: Schedule,
}

impl OpenLoop {
    pub fn new(schedule: Schedule) -> Self {
        Self { schedule }
    }
}

impl<H: Handler> Pacer<H> for OpenLoop {
    fn room(&mut self, _exec: &Exec, _h: &H, now_ns: u64) -> u64 {
        self.schedule.due(now_ns)
    }

    fn stamp(&mut self, _now_ns: u64) -> u64 {
        self.schedule.take()
    }

    fn poll_room(&mut self, _cx: &mut Context<'_>, _exec: &Exec, _h: &H, now_ns: u64) -> bool {
        self.schedule.next_at().is_some_and(|next| next <= now_ns)
    }

    fn next_due(&self) -> Option<u64> {
        self.schedule.next_at()
    }

    fn finished(&self) -> bool {
        self.schedule.next_at().is_none()
    }

    fn backlog(&mut self, now_ns: u64) -> u64 {
        self.schedule.due(now_ns)
    }
}

/// Closed loop on answers: at most the handler's `inflight` requests unanswered, refilled in
/// batches of [`min_refill`]; each message stamped when sent. Answers arrive on the same
/// connection, so reading them is what wakes it.
pub struct Unanswered {
    min_batch: u64,
}

impl Unanswered {
    pub fn new(inflight: u64) -> Self {
        Self {
            min_batch: min_refill(inflight),
        }
    }
}

impl<H: Handler> Pacer<H> for Unanswered {
    fn room(&mut self, _exec: &Exec, h: &H, _now_ns: u64) -> u64 {
        h.can_send()
    }

    fn min_batch(&self) -> u64 {
        self.min_batch
    }

    fn stamp(&mut self, now_ns: u64) -> u64 {
        now_ns
    }

    fn poll_room(&mut self, _cx: &mut Context<'_>, _exec: &Exec, h: &H, _now_ns: u64) -> bool {
        h.can_send() >= self.min_batch
    }
}

/// A scenario's two ways of sending: open loop at `--rate`, or a closed-loop window `W` at
/// `--rate 0` (max).
pub enum Paced<W> {
    Open(OpenLoop),
    Closed(W),
}

impl<H: Handler, W: Pacer<H>> Pacer<H> for Paced<W> {
    fn room(&mut self, exec: &Exec, h: &H, now_ns: u64) -> u64 {
        match self {
            Self::Open(p) => Pacer::<H>::room(p, exec, h, now_ns),
            Self::Closed(p) => p.room(exec, h, now_ns),
        }
    }

    fn min_batch(&self) -> u64 {
        match self {
            Self::Open(p) => Pacer::<H>::min_batch(p),
            Self::Closed(p) => p.min_batch(),
        }
    }

    fn stamp(&mut self, now_ns: u64) -> u64 {
        match self {
            Self::Open(p) => Pacer::<H>::stamp(p, now_ns),
            Self::Closed(p) => p.stamp(now_ns),
        }
    }

    fn poll_room(&mut self, cx: &mut Context<'_>, exec: &Exec, h: &H, now_ns: u64) -> bool {
        match self {
            Self::Open(p) => p.poll_room(cx, exec, h, now_ns),
            Self::Closed(p) => p.poll_room(cx, exec, h, now_ns),
        }
    }

    fn next_due(&self) -> Option<u64> {
        match self {
            Self::Open(p) => Pacer::<H>::next_due(p),
            Self::Closed(p) => p.next_due(),
        }
    }

    fn sent(&mut self, n: u64) {
        match self {
            Self::Open(p) => Pacer::<H>::sent(p, n),
            Self::Closed(p) => p.sent(n),
        }
    }

    fn counted(&mut self, counts: &Counts) {
        match self {
            Self::Open(p) => Pacer::<H>::counted(p, counts),
            Self::Closed(p) => p.counted(counts),
        }
    }

    fn finished(&self) -> bool {
        match self {
            Self::Open(p) => Pacer::<H>::finished(p),
            Self::Closed(p) => p.finished(),
        }
    }

    fn backlog(&mut self, now_ns: u64) -> u64 {
        match self {
            Self::Open(p) => Pacer::<H>::backlog(p, now_ns),
            Self::Closed(p) => p.backlog(now_ns),
        }
    }
}

/// Smallest refill a closed-loop sender waits for: 1/16 of its in-flight bound, 1 to 64.
pub fn min_refill(inflight: u64) -> u64 {
    (inflight / 16).clamp(1, 64)
}

/// Counts what one event brought and writes what it produced: `Ok(Some(counts))`, or `Ok(None)`
/// when the run is over and the connection ends quietly.
async fn settle<H: Handler>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    event: Result<Event, ConnError>,
) -> Result<Option<Counts>, ConnError> {
    let done = || exec.shared.phase() == Phase::Done;
    match event {
        Ok(Event::Eof) if done() => return Ok(None),
        Ok(Event::Eof) => return Err(ConnError::Closed),
        Ok(Event::Flush) => h.flush_acks(&mut conn.out),
        Ok(Event::Input | Event::Ready) => {}
        Err(_) if done() => return Ok(None),
        Err(e) => return Err(e),
    }
    let counts = h.take_counts();
    exec.count(&counts);
    conn.set_acks_pending(h.acks_pending());
    match conn.flush_out().await {
        Ok(()) => Ok(Some(counts)),
        Err(_) if done() => Ok(None),
        Err(e) => Err(e),
    }
}

/// A connection past its handshake: counted in while it sends or receives, out after.
pub async fn run<H: Handler, P: Pacer<H>>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    pacer: Option<P>,
) -> Result<(), ConnError> {
    exec.joined();
    let result = match pacer {
        Some(mut pacer) => send(exec, conn, h, &mut pacer).await,
        None => receive(exec, conn, h).await,
    };
    exec.left();
    result
}

/// Reads until the run is over.
pub async fn receive<H: Handler>(exec: &Exec, conn: &mut Conn, h: &mut H) -> Result<(), ConnError> {
    loop {
        let event = conn.next_event(exec, h, |_, _| false).await;
        if settle(exec, conn, h, event).await?.is_none() {
            return Ok(());
        }
    }
}

/// Appends up to `n` sends (fewer once [`WRITE_MAX`] bytes are buffered) and any partial ACK
/// batch, and writes them in one go: `Ok(Some(sent))`, or `Ok(None)` when the run is over (the
/// socket was shut).
async fn send_batch<H: Handler, P: Pacer<H>>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    pacer: &mut P,
    n: u64,
    now_ns: u64,
) -> Result<Option<u64>, ConnError> {
    let mut sent = 0;
    while sent < n && (sent == 0 || conn.out.len() < WRITE_MAX) {
        let stamp = pacer.stamp(now_ns);
        h.put_send(&mut conn.out, stamp);
        sent += 1;
    }
    exec.stats().add_sent(sent);
    pacer.sent(sent);
    // The write goes anyway: the partial ACK batch rides along instead of waiting for the tick.
    if h.acks_pending() {
        h.flush_acks(&mut conn.out);
        conn.set_acks_pending(false);
    }
    match conn.flush_out().await {
        Ok(()) => Ok(Some(sent)),
        Err(_) if exec.shared.phase() == Phase::Done => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits in the executor's pacing service for the run's start: `false` if the run ended first.
async fn wait_for_start(exec: &Exec, slot: &PaceSlot<'_>) -> bool {
    poll_fn(|cx| match (exec.shared.phase(), exec.shared.start()) {
        (Phase::Running, Some(start)) if Instant::now() >= start => Poll::Ready(true),
        (Phase::Setup | Phase::Running, _) => {
            // Time 0 is the start: the pacing service wakes everyone then.
            slot.wait(0, cx.waker());
            Poll::Pending
        }
        _ => Poll::Ready(false),
    })
    .await
}

/// Waits for the start, sends as `pacer` allows until `start + duration`, then reads until the
/// run is over.
pub async fn send<H: Handler, P: Pacer<H>>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    pacer: &mut P,
) -> Result<(), ConnError> {
    let slot = exec.pace.slot();
    if !wait_for_start(exec, &slot).await {
        drop(slot);
        return receive(exec, conn, h).await;
    }
    let end_ns = u64::try_from(exec.duration.as_nanos()).unwrap_or(u64::MAX);
    loop {
        let now_ns = exec.ns_since_start(Instant::now());
        if now_ns >= end_ns || exec.shared.phase() != Phase::Running || pacer.finished() {
            drop(slot);
            // What was scheduled before the end still goes, then the connection only reads.
            loop {
                let n = pacer.backlog(now_ns).min(SEND_BATCH);
                if n == 0 {
                    break;
                }
                if send_batch(exec, conn, h, pacer, n, now_ns).await?.is_none() {
                    return Ok(());
                }
            }
            return receive(exec, conn, h).await;
        }
        let room = pacer.room(exec, h, now_ns);
        if room >= pacer.min_batch() {
            let Some(sent) = send_batch(exec, conn, h, pacer, room.min(SEND_BATCH), now_ns).await?
            else {
                return Ok(());
            };
            if sent < room {
                // A big backlog: let the executor's other connections run between writes.
                futures_lite::future::yield_now().await;
            }
        }
        let event = conn
            .next_event(exec, h, |cx: &mut Context<'_>, h: &H| {
                let now_ns = exec.ns_since_start(Instant::now());
                if now_ns >= end_ns || pacer.poll_room(cx, exec, h, now_ns) {
                    return true;
                }
                // One entry per sender: its next due time, or the end of the window.
                let due = pacer.next_due().map_or(end_ns, |due| due.min(end_ns));
                slot.wait(due, cx.waker());
                false
            })
            .await;
        match settle(exec, conn, h, event).await? {
            Some(counts) => pacer.counted(&counts),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_is_a_sixteenth_of_inflight_within_bounds() {
        assert_eq!(min_refill(1), 1);
        assert_eq!(min_refill(32), 2);
        assert_eq!(min_refill(1000), 62);
        assert_eq!(min_refill(100_000), 64);
    }
}
