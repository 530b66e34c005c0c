//! The two connection loops of the fan-out scenario, shared by both targets: a subscriber reads,
//! counts and acknowledges; a publisher keeps the window full and reads like a subscriber.
//!
//! A target plugs in through [`Handler`]: the sans-IO part of its protocol (parse what arrived,
//! append answers and ACKs to the output buffer, append one publish). The loops own the order of
//! things: read, count, ACK bookkeeping, write, wait.
//!
//! In-flight bound: all publishers share a window of `publishers x inflight` messages, a message
//! counting done once `recipients` more deliveries have arrived anywhere in the process
//! ([`window_room`]; deliveries are counted, not matched to messages; repeats do not count). A publisher also never
//! has more than `inflight` requests unanswered ([`Handler::can_send`]: the gate's SendResp; nats
//! has no answer). A publisher refills the window in batches of at least [`min_refill`] messages.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use super::Phase;
use super::exec::{Conn, ConnError, Event, Exec};

/// Most publishes appended per write.
const PUB_BATCH: u64 = 256;
/// How often a publisher re-reads the window when other executors deliver too (their wakes do
/// not reach it).
const REMOTE_POLL: Duration = Duration::from_micros(200);

/// The protocol side of one connection.
pub trait Handler {
    /// Parses complete operations at the front of `buf`, appending answers (PONG, full ACK
    /// batches) to `out`; returns the bytes consumed.
    fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, ConnError>;
    /// Deliveries parsed since the last call, and how many of them were repeats (a gate PUSH
    /// whose msg_id is not above the highest this connection has seen: a resend).
    fn take_delivered(&mut self) -> (u64, u64);
    /// Whether ids wait for an ACK.
    fn acks_pending(&self) -> bool;
    /// Appends the partial ACK batch.
    fn flush_acks(&mut self, out: &mut Vec<u8>);
    /// Publishes this connection may add now (its own bound on unanswered requests).
    fn can_send(&self) -> u64;
    /// Appends one publish.
    fn put_publish(&mut self, out: &mut Vec<u8>);
}

/// Messages the publishers may add: `window_msgs` less the messages not yet fully delivered,
/// where `published * recipients - delivered` deliveries are owed, rounded up to messages.
pub fn window_room(published: u64, delivered: u64, recipients: u64, window_msgs: u64) -> u64 {
    let owed = published
        .saturating_mul(recipients)
        .saturating_sub(delivered);
    window_msgs.saturating_sub(owed.div_ceil(recipients.max(1)))
}

/// Smallest refill a publisher waits for: 1/16 of its in-flight bound, 1 to 64.
pub fn min_refill(inflight: u64) -> u64 {
    (inflight / 16).clamp(1, 64)
}

/// Counts what one event brought and writes what it produced. `Ok(false)`: the run is over and
/// the connection ends quietly.
async fn settle<H: Handler>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    event: Result<Event, ConnError>,
) -> Result<bool, ConnError> {
    let done = || exec.shared.phase() == Phase::Done;
    match event {
        Ok(Event::Eof) if done() => return Ok(false),
        Ok(Event::Eof) => return Err(ConnError::Closed),
        Ok(Event::Flush) => h.flush_acks(&mut conn.out),
        Ok(Event::Input | Event::Ready) => {}
        Err(_) if done() => return Ok(false),
        Err(e) => return Err(e),
    }
    let (delivered, repeats) = h.take_delivered();
    exec.delivered(delivered, repeats);
    conn.set_acks_pending(h.acks_pending());
    match conn.flush_out().await {
        Ok(()) => Ok(true),
        Err(_) if done() => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection past its handshake: counted in while it publishes or subscribes, out after.
pub async fn run<H: Handler>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    publisher: bool,
) -> Result<(), ConnError> {
    exec.joined();
    let result = if publisher {
        publish(exec, conn, h).await
    } else {
        subscribe(exec, conn, h).await
    };
    exec.left();
    result
}

/// Reads until the run is over.
pub async fn subscribe<H: Handler>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
) -> Result<(), ConnError> {
    loop {
        let event = conn.next_event(exec, h, |_, _| false).await;
        if !settle(exec, conn, h, event).await? {
            return Ok(());
        }
    }
}

/// Waits for the start, publishes until `start + duration`, then reads until the run is over.
pub async fn publish<H: Handler>(exec: &Exec, conn: &mut Conn, h: &mut H) -> Result<(), ConnError> {
    let start = loop {
        match (exec.shared.phase(), exec.shared.start()) {
            (Phase::Running, Some(start)) => break start,
            (Phase::Setup, _) => glommio::timer::sleep(Duration::from_millis(1)).await,
            _ => return subscribe(exec, conn, h).await,
        }
    };
    let plan = &exec.plan;
    let end = start + plan.duration;
    let mut end_timer = Timer::new(end.saturating_duration_since(Instant::now()));
    let mut remote_poll = (plan.executors > 1).then(|| Timer::new(REMOTE_POLL));
    let refill = min_refill(plan.inflight);
    let room = |h: &H| exec.window_room().min(h.can_send()).min(PUB_BATCH);
    loop {
        let running = Instant::now() < end && exec.shared.phase() == Phase::Running;
        if !running {
            return subscribe(exec, conn, h).await;
        }
        let n = room(h);
        if n >= refill {
            for _ in 0..n {
                h.put_publish(&mut conn.out);
            }
            exec.stats().add_published(n);
            if let Err(e) = conn.flush_out().await {
                return if exec.shared.phase() == Phase::Done {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            // Let the subscribers of this executor read before the next batch.
            futures_lite::future::yield_now().await;
        }
        let event = conn
            .next_event(exec, h, |cx: &mut Context<'_>, h: &H| {
                if Pin::new(&mut end_timer).poll(cx).is_ready() {
                    return true;
                }
                if room(h) >= refill {
                    return true;
                }
                exec.wait_for_window(cx.waker());
                if let Some(timer) = remote_poll.as_mut()
                    && Pin::new(&mut *timer).poll(cx).is_ready()
                {
                    timer.reset(REMOTE_POLL);
                    return true;
                }
                false
            })
            .await;
        if !settle(exec, conn, h, event).await? {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn refill_is_a_sixteenth_of_inflight_within_bounds() {
        assert_eq!(min_refill(1), 1);
        assert_eq!(min_refill(32), 2);
        assert_eq!(min_refill(1000), 62);
        assert_eq!(min_refill(100_000), 64);
    }
}
