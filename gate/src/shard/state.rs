//! What one shard owns: its connections, its sessions registry, its timer wheel, its counters
//! and its end of the hand-off mesh. Single-threaded (`Rc`, `RefCell`, `Cell`); no borrow is
//! ever held across an `.await`.

use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use glommio::channels::channel_mesh::Senders;
use router::backend::Backend;

use super::ShardStats;
use super::delivery::{DeliveryObserver, ShardDelivery};
use super::handoff::Handoff;
use super::io::OutQueue;
use super::metrics::{LatencySampler, ShardMetrics};
use crate::auth::Authenticator;
use crate::config::Settings;
use crate::delivery::{AckTracker, OutFrame, SharedFrame, TimerId, TimerWheel};
use crate::protocol::KickReason;
use crate::session::Registry;

/// A connection's slot in its shard's table; the generation makes a stale key (a timer that
/// fires after the connection ended and its slot was reused) harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct ConnKey {
    index: u32,
    generation: u32,
}

impl ConnKey {
    /// As carried in a backend `Origin`.
    pub fn pack(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    pub fn unpack(packed: u64) -> Self {
        // Truncation intended: the two halves are the two fields.
        Self {
            index: packed as u32,
            generation: (packed >> 32) as u32,
        }
    }
}

/// What a wheel entry of the shard stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKey {
    /// A connection's one deadline (login, idle, probe, ack retry): the connection decides.
    Conn(ConnKey),
    /// The report batcher's flush deadline.
    Reports,
    /// The notify merger's next window end.
    Notify,
    /// The delayed flush of queued output (`delivery.flush_delay_us`).
    Flush,
}

/// The part of a connection that others on its shard reach: its outbound queue (answers from
/// the backend and pushes are queued here by the shard), who it is once logged in, and the
/// shared the timer task, a newer login of the same device or a stop raise. The connection
/// task owns everything else and is woken to act on these.
#[derive(Default)]
pub(crate) struct ConnShared {
    out: RefCell<OutQueue>,
    kick: Cell<Option<KickReason>>,
    timer_due: Cell<bool>,
    login_result: RefCell<Option<router::link::LoginResult>>,
    /// PUSHes awaiting their ACK.
    acks: RefCell<AckTracker>,
    /// The ack tracker's deadline may now be earlier than the connection's armed timer.
    rearm: Cell<bool>,
    waker: Cell<Option<Waker>>,
    /// Its key in the shard's table (for the delayed-flush list).
    key: Cell<ConnKey>,
    /// Queued output waits for the shard's flush tick (`delivery.flush_delay_us`).
    flush_scheduled: Cell<bool>,
    /// 0 until logged in.
    uid: Cell<u64>,
    session_id: Cell<u64>,
}

impl ConnShared {
    /// Queues a frame; returns the bytes queued (on a WebSocket connection its header
    /// included, see [`OutQueue`]). Limits and when to wake the connection are the shard's
    /// business: see [`Shard::queue`].
    fn push(&self, frame: SharedFrame) -> usize {
        self.out.borrow_mut().push(frame)
    }

    /// From now on frames go out as WebSocket binary messages.
    pub fn set_websocket(&self) {
        self.out.borrow_mut().set_websocket();
    }

    /// The outbound queue, for the connection task to flush. Never held across an `.await`.
    pub fn out(&self) -> std::cell::RefMut<'_, OutQueue> {
        self.out.borrow_mut()
    }

    pub fn request_kick(&self, reason: KickReason) {
        if self.kick.get().is_none() {
            self.kick.set(Some(reason));
        }
        self.wake();
    }

    /// The session's pending PUSHes. Never held across an `.await`.
    pub fn acks(&self) -> std::cell::RefMut<'_, AckTracker> {
        self.acks.borrow_mut()
    }

    pub fn request_rearm(&self) {
        self.rearm.set(true);
        self.wake();
    }

    pub fn take_rearm(&self) -> bool {
        self.rearm.replace(false)
    }

    pub fn mark_timer_due(&self) {
        self.timer_due.set(true);
        self.wake();
    }

    pub fn take_kick(&self) -> Option<KickReason> {
        self.kick.take()
    }

    pub fn take_timer_due(&self) -> bool {
        self.timer_due.replace(false)
    }

    /// The backend's answer to this connection's LOGIN (`auth.mode = "backend"`).
    pub fn set_login_result(&self, result: router::link::LoginResult) {
        *self.login_result.borrow_mut() = Some(result);
        self.wake();
    }

    pub fn take_login_result(&self) -> Option<router::link::LoginResult> {
        self.login_result.borrow_mut().take()
    }

    pub fn set_identity(&self, uid: u64, session_id: u64) {
        self.uid.set(uid);
        self.session_id.set(session_id);
    }

    /// The logged-in uid (0 before LOGIN).
    pub fn uid(&self) -> u64 {
        self.uid.get()
    }

    pub fn session_id(&self) -> u64 {
        self.session_id.get()
    }

    pub fn set_waker(&self, waker: &Waker) {
        match self.waker.take() {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Slab of live connections with generation-checked keys.
#[derive(Default)]
struct ConnTable {
    slots: Vec<(u32, Option<Rc<ConnShared>>)>,
    free: Vec<u32>,
    live: usize,
}

impl ConnTable {
    fn insert(&mut self, shared: Rc<ConnShared>) -> ConnKey {
        self.live += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.1 = Some(shared);
            return ConnKey {
                index,
                generation: slot.0,
            };
        }
        // More than u32::MAX connections cannot exist (the open-file limit is far lower).
        let index = self.slots.len() as u32;
        self.slots.push((0, Some(shared)));
        ConnKey {
            index,
            generation: 0,
        }
    }

    fn get(&self, key: ConnKey) -> Option<&Rc<ConnShared>> {
        match self.slots.get(key.index as usize) {
            Some((generation, Some(s))) if *generation == key.generation => Some(s),
            _ => None,
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(slot) = self.slots.get_mut(key.index as usize)
            && slot.0 == key.generation
            && slot.1.take().is_some()
        {
            slot.0 = slot.0.wrapping_add(1);
            self.free.push(key.index);
            self.live -= 1;
        }
    }
}

/// Counters a shard publishes for `GateHandle::stats`. Written only by the owning shard's
/// thread (a relaxed load and store, no read-modify-write), read by anyone.
#[derive(Debug, Default)]
pub(crate) struct PublishedStats {
    connections: AtomicU64,
    sessions: AtomicU64,
    logins_ok: AtomicU64,
    logins_refused: AtomicU64,
    handoffs_out: AtomicU64,
    handoffs_in: AtomicU64,
    handoffs_dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    LoginsOk,
    LoginsRefused,
    HandoffsOut,
    HandoffsIn,
    HandoffsDropped,
}

impl PublishedStats {
    pub fn snapshot(&self) -> ShardStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ShardStats {
            connections: get(&self.connections),
            sessions: get(&self.sessions),
            logins_ok: get(&self.logins_ok),
            logins_refused: get(&self.logins_refused),
            handoffs_out: get(&self.handoffs_out),
            handoffs_in: get(&self.handoffs_in),
            handoffs_dropped: get(&self.handoffs_dropped),
        }
    }

    fn counter(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::LoginsOk => &self.logins_ok,
            Counter::LoginsRefused => &self.logins_refused,
            Counter::HandoffsOut => &self.handoffs_out,
            Counter::HandoffsIn => &self.handoffs_in,
            Counter::HandoffsDropped => &self.handoffs_dropped,
        }
    }
}

/// Per-frame counters (see `Shard::hot`).
#[derive(Default)]
pub(crate) struct HotCounters {
    pub frames_in: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub frames_out: Cell<u64>,
    pub bytes_out: Cell<u64>,
    pub pushes: Cell<u64>,
}

impl HotCounters {
    pub fn bump(counter: &Cell<u64>, n: u64) {
        counter.set(counter.get() + n);
    }
}

/// One shard's state.
pub(crate) struct Shard {
    pub index: usize,
    pub shards: usize,
    pub settings: Settings,
    /// Local token check; `None` with `auth.mode = "backend"`, where the backend decides.
    pub auth: Option<Authenticator>,
    /// This shard's share of the gate's connection limit (`limits.max_connections`).
    pub max_connections: usize,
    conns: RefCell<ConnTable>,
    pub registry: RefCell<Registry<ConnKey>>,
    wheel: RefCell<TimerWheel<TimerKey>>,
    /// Ack trackers' settings, report batcher, notify merger (`delivery.rs`).
    pub delivery: ShardDelivery,
    /// The timer task's waker and the instant it sleeps until, so an earlier deadline wakes it.
    timer_waker: Cell<Option<Waker>>,
    timer_armed_at: Cell<Option<Instant>>,
    pub handoff: OnceCell<Senders<Handoff>>,
    /// This shard's handle on the backend (set once at start, before accepting).
    pub backend: OnceCell<Rc<dyn Backend>>,
    next_session: Cell<u64>,
    pub stopping: Cell<bool>,
    /// Unsent bytes queued on all of this shard's connections.
    outbound: Cell<usize>,
    /// Connections waiting for the flush tick, and when it fires.
    flush_due: RefCell<Vec<ConnKey>>,
    flush_armed: Cell<Option<Instant>>,
    stats: Arc<PublishedStats>,
    /// Counters for `/metrics`: plain integers, copied out on scrape (`control`).
    metrics: RefCell<ShardMetrics>,
    /// The counters bumped per frame or per delivery, as bare cells (no borrow flag on the
    /// fan-out path); folded into the snapshot.
    pub hot: HotCounters,
    /// Backend requests being timed for the latency histogram.
    pub latency: RefCell<LatencySampler>,
    /// `gate.drain_secs` in ms while draining (0 otherwise): KICK 2's `retry_after_ms` is spread
    /// over it.
    pub drain_window_ms: Cell<u32>,
    /// Delivers waiting for the fan-out task (`downlink.rs`).
    pub held: RefCell<super::downlink::HeldDelivers>,
    /// Decoding room for ACK frames, reused by every connection of the shard.
    pub ack_scratch: RefCell<AckScratch>,
    rng: Cell<u64>,
}

/// Reused buffers for one ACK: its decoded msg_ids and the ones found pending. Borrowed only
/// while one ACK is handled (never across an `.await`).
#[derive(Default)]
pub(crate) struct AckScratch {
    pub ids: Vec<u64>,
    pub delivered: Vec<u64>,
}

impl AckScratch {
    /// Ids kept room for between ACKs; a larger ACK's room is given back.
    const KEEP: usize = 4096;

    /// Gives back the room an unusually large ACK took.
    pub fn trim(&mut self) {
        if self.ids.capacity() > Self::KEEP {
            self.ids = Vec::new();
        }
        if self.delivered.capacity() > Self::KEEP {
            self.delivered = Vec::new();
        }
    }
}

impl Shard {
    pub fn new(
        index: usize,
        settings: Settings,
        stats: Arc<PublishedStats>,
        observer: Option<Arc<dyn DeliveryObserver>>,
        now: Instant,
    ) -> Self {
        let shards = settings.shards.get();
        let auth = match settings.auth_mode {
            crate::config::AuthMode::Jwt => Some(Authenticator::jwt(&settings.auth_secret)),
            crate::config::AuthMode::Dev => Some(Authenticator::dev()),
            crate::config::AuthMode::Backend => None,
        };
        let delivery = ShardDelivery::new(&settings, observer);
        Self {
            index,
            shards,
            max_connections: settings.max_connections.div_ceil(shards),
            settings,
            auth,
            conns: RefCell::default(),
            registry: RefCell::default(),
            wheel: RefCell::new(TimerWheel::new(now)),
            delivery,
            timer_waker: Cell::new(None),
            timer_armed_at: Cell::new(None),
            handoff: OnceCell::new(),
            backend: OnceCell::new(),
            next_session: Cell::new(1),
            stopping: Cell::new(false),
            outbound: Cell::new(0),
            flush_due: RefCell::default(),
            flush_armed: Cell::new(None),
            stats,
            metrics: RefCell::new(ShardMetrics {
                shard: index,
                ..ShardMetrics::default()
            }),
            latency: RefCell::default(),
            hot: HotCounters::default(),
            drain_window_ms: Cell::new(0),
            held: RefCell::default(),
            ack_scratch: RefCell::default(),
            rng: Cell::new(
                0x2545_F491_4F6C_DD1D ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
        }
    }

    pub fn add_conn(&self) -> (ConnKey, Rc<ConnShared>) {
        let shared = Rc::new(ConnShared::default());
        let key = self.conns.borrow_mut().insert(shared.clone());
        shared.key.set(key);
        self.publish_gauges();
        (key, shared)
    }

    pub fn remove_conn(&self, key: ConnKey) {
        self.conns.borrow_mut().remove(key);
        self.publish_gauges();
    }

    pub fn connections(&self) -> usize {
        self.conns.borrow().live
    }

    pub fn at_capacity(&self) -> bool {
        self.connections() >= self.max_connections
    }

    /// Queues `frame` on `conn` within the limits: a connection whose unsent output would pass
    /// `limits.outbound_bytes`, or that would take the shard past `limits.shard_outbound_bytes`,
    /// is a slow consumer: its backlog is dropped (its PUSHes are reported undelivered when it
    /// closes) and it is kicked (KICK 4).
    pub fn queue(&self, conn: &ConnShared, frame: Bytes) {
        self.queue_shared(conn, OutFrame::frame(frame));
    }

    /// [`Shard::queue`] for bytes sent as they are, outside the frame stream (a WebSocket pong).
    pub fn queue_raw(&self, conn: &ConnShared, bytes: Bytes) {
        self.queue_shared(conn, OutFrame::raw(bytes));
    }

    /// [`Shard::queue`] for a frame shared with other connections (a PUSH, a read receipt).
    pub fn queue_shared(&self, conn: &ConnShared, frame: SharedFrame) {
        self.queue_frames(conn, std::iter::once(frame));
    }

    /// [`Shard::queue_shared`] for several frames in order (a fan-out run), with one borrow
    /// of the queue and one wake-up. Past a limit the rest is not queued.
    pub fn queue_frames(&self, conn: &ConnShared, frames: impl IntoIterator<Item = SharedFrame>) {
        self.queue_counted(conn, frames.into_iter().map(|frame| (frame, 1)));
    }

    /// [`Shard::queue_frames`] for buffers that may hold several frames each (a joined run):
    /// each comes with the number of protocol frames it carries, for the frame counter.
    pub fn queue_counted(
        &self,
        conn: &ConnShared,
        frames: impl IntoIterator<Item = (SharedFrame, u64)>,
    ) {
        let limits = &self.settings.limits;
        let mut out = conn.out();
        // Bytes and frames queued by this call, added to the shard's figures at the end.
        let (mut queued, mut count) = (0, 0);
        for (frame, carried) in frames {
            let len = out.wire_len(&frame);
            let backlog = out.bytes();
            if backlog + len > limits.outbound_bytes
                || self.outbound.get() + queued + len > limits.shard_outbound_bytes
            {
                out.clear();
                drop(out);
                // The shard counted the backlog but what this call queued.
                self.unqueued(backlog - queued);
                HotCounters::bump(&self.hot.frames_out, count);
                conn.request_kick(KickReason::SlowConsumer);
                return;
            }
            queued += out.push(frame);
            count += carried;
        }
        drop(out);
        if count == 0 {
            return;
        }
        self.outbound.set(self.outbound.get() + queued);
        HotCounters::bump(&self.hot.frames_out, count);
        self.schedule_flush(conn);
    }

    /// Queues a connection's last frames (ERROR, KICK, LOGOUT's answer) whatever the limits.
    pub fn queue_last(&self, conn: &ConnShared, frame: Bytes) {
        let queued = conn.push(OutFrame::frame(frame));
        self.outbound.set(self.outbound.get() + queued);
        HotCounters::bump(&self.hot.frames_out, 1);
        conn.wake();
    }

    /// [`Shard::queue_last`] for bytes sent as they are: the HTTP answer to an upgrade (before
    /// any frame), a refusal, a WebSocket close frame.
    pub fn queue_raw_last(&self, conn: &ConnShared, bytes: Bytes) {
        let queued = conn.push(OutFrame::raw(bytes));
        self.outbound.set(self.outbound.get() + queued);
        conn.wake();
    }

    /// Wakes `conn` to flush: at once (its task runs after the current one, so everything queued
    /// in this turn goes out in one write), or at the shard's next flush tick when
    /// `delivery.flush_delay_us` > 0, trading that much latency for fewer, larger writes.
    fn schedule_flush(&self, conn: &ConnShared) {
        let delay = self.settings.delivery.flush_delay();
        if delay.is_zero() {
            conn.wake();
            return;
        }
        if conn.flush_scheduled.replace(true) {
            return;
        }
        self.flush_due.borrow_mut().push(conn.key.get());
        if self.flush_armed.get().is_none() {
            let at = Instant::now() + delay;
            let _ = self.arm_timer(TimerKey::Flush, at);
            self.flush_armed.set(Some(at));
        }
    }

    /// The flush tick: wakes every connection with delayed output.
    fn flush_tick(&self) {
        self.flush_armed.set(None);
        let due = std::mem::take(&mut *self.flush_due.borrow_mut());
        for key in due {
            if let Some(conn) = self.conn(key) {
                conn.flush_scheduled.set(false);
                conn.wake();
            }
        }
    }

    /// `n` queued bytes left the shard (written, or dropped with their connection).
    pub fn unqueued(&self, n: usize) {
        self.outbound.set(self.outbound.get().saturating_sub(n));
    }

    /// The shared part of a live connection.
    pub fn conn(&self, key: ConnKey) -> Option<Rc<ConnShared>> {
        self.conns.borrow().get(key).cloned()
    }

    pub fn kick(&self, key: ConnKey, reason: KickReason) {
        if let Some(shared) = self.conns.borrow().get(key) {
            shared.request_kick(reason);
        }
    }

    pub fn kick_all(&self, reason: KickReason) {
        for (_, shared) in &self.conns.borrow().slots {
            if let Some(s) = shared {
                s.request_kick(reason);
            }
        }
    }

    /// A fresh session id: a per-shard counter above, the shard index in the low 10 bits.
    pub fn next_session_id(&self) -> u64 {
        let n = self.next_session.get();
        self.next_session.set(n + 1);
        (n << 10) | self.index as u64
    }

    pub fn count(&self, c: Counter) {
        let counter = self.stats.counter(c);
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let mut m = self.metrics.borrow_mut();
        match c {
            Counter::LoginsOk => m.login(0),
            Counter::HandoffsOut => m.handoffs_out += 1,
            Counter::HandoffsIn => m.handoffs_in += 1,
            Counter::LoginsRefused | Counter::HandoffsDropped => {}
        }
    }

    /// A LOGIN refused with `code`.
    pub fn login_refused(&self, code: u32) {
        self.count(Counter::LoginsRefused);
        self.metric(|m| m.login(code));
    }

    /// Updates this shard's metrics.
    pub fn metric(&self, f: impl FnOnce(&mut ShardMetrics)) {
        f(&mut self.metrics.borrow_mut());
    }

    /// The metrics with the gauges filled in, for a scrape.
    pub fn metrics_snapshot(&self) -> ShardMetrics {
        let mut m = self.metrics.borrow().clone();
        let hot = &self.hot;
        m.frames_in += hot.frames_in.get();
        m.bytes_in += hot.bytes_in.get();
        m.frames_out += hot.frames_out.get();
        m.bytes_out += hot.bytes_out.get();
        m.pushes += hot.pushes.get();
        m.connections = self.connections() as u64;
        m.sessions = self.registry.borrow().len() as u64;
        m.outbound_bytes = self.outbound.get() as u64;
        m.backend_up = self.backend.get().is_some_and(|b| b.is_up());
        m
    }

    /// The KICK body for `reason`: a drain's carries `gate.peers` and a `retry_after_ms` spread
    /// at random over the drain window, so clients do not all come back at once.
    pub fn kick_body(&self, reason: KickReason, message: &str) -> crate::protocol::pb::Kick {
        let mut kick = crate::protocol::pb::Kick {
            reason: reason.wire(),
            message: message.into(),
            ..Default::default()
        };
        if reason == KickReason::Draining {
            kick.reconnect_to = self.settings.peers.clone();
            let window = u64::from(self.drain_window_ms.get().max(1000));
            kick.retry_after_ms = (self.random() % window) as u32;
        }
        kick
    }

    pub fn publish_gauges(&self) {
        self.stats
            .connections
            .store(self.connections() as u64, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.registry.borrow().len() as u64, Ordering::Relaxed);
    }

    /// A pseudo-random number (xorshift64*), for jitter only.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Arms a deadline for `key`; the timer task acts on it when it passes.
    pub fn arm_timer(&self, key: TimerKey, at: Instant) -> TimerId {
        let id = self.wheel.borrow_mut().insert(at, key);
        if self.timer_armed_at.get().is_none_or(|armed| at < armed)
            && let Some(w) = self.timer_waker.take()
        {
            w.wake();
        }
        id
    }

    pub fn cancel_timer(&self, id: TimerId) {
        let _ = self.wheel.borrow_mut().cancel(id);
    }

    /// For the timer task: marks every connection whose deadline passed at `now`, and returns
    /// the next instant to wake at.
    pub fn expire_timers(&self, now: Instant) -> Option<Instant> {
        loop {
            let expired = self.wheel.borrow_mut().poll_expired(now);
            match expired {
                None => break,
                Some((_, TimerKey::Conn(key))) => {
                    if let Some(shared) = self.conns.borrow().get(key) {
                        shared.mark_timer_due();
                    }
                }
                Some((_, TimerKey::Flush)) => self.flush_tick(),
                Some((_, key)) => self.shard_timer_fired(key, now),
            }
        }
        let next = self.wheel.borrow().poll_timeout();
        self.timer_armed_at.set(next);
        next
    }

    pub fn set_timer_waker(&self, waker: &Waker) {
        self.timer_waker.set(Some(waker.clone()));
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::ConnShared;
    use crate::delivery::OutFrame;
    use crate::protocol::ws::{Role, WsDecoder, WsEvent};

    /// The queued buffers, concatenated as `sendmsg` would write them.
    fn wire(shared: &ConnShared) -> BytesMut {
        let mut out = shared.out();
        let mut wire = BytesMut::new();
        while let Some(front) = out.front() {
            let front = front.to_vec();
            wire.extend_from_slice(&front);
            out.advance(front.len());
        }
        wire
    }

    #[test]
    fn websocket_frames_get_a_header_of_their_own_and_stay_shared() {
        let shared = ConnShared::default();
        let http = bytes::Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(shared.push(OutFrame::raw(http.clone())), http.len());
        shared.set_websocket();
        let small = bytes::Bytes::from(vec![1u8; 30]);
        let large = bytes::Bytes::from(vec![2u8; 300]);
        let shared_small = OutFrame::frame(small.clone());
        assert_eq!(shared.push(shared_small.clone()), 32);
        assert_eq!(shared.push(OutFrame::frame(large.clone())), 304);
        assert_eq!(
            std::rc::Rc::strong_count(&shared_small),
            2,
            "queued by reference"
        );
        assert_eq!(shared.out().bytes(), http.len() + 32 + 304);
        let mut wire = wire(&shared);
        assert_eq!(&wire.split_to(http.len())[..], &http[..]);
        let mut client = WsDecoder::new(Role::Client, 1024);
        for want in [&small, &large] {
            match client.decode(&mut wire).expect("valid") {
                Some(WsEvent::Message(m)) => assert_eq!(&m[..], &want[..]),
                other => panic!("{other:?}"),
            }
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn tcp_frames_go_out_as_they_are() {
        let shared = ConnShared::default();
        let frame = bytes::Bytes::from(vec![3u8; 40]);
        assert_eq!(shared.push(OutFrame::frame(frame.clone())), 40);
        assert_eq!(&wire(&shared)[..], &frame[..]);
    }
}
