//! The remote plug-in: a gate shard's [`Backend`] behind its own link connection to
//! `backend.addr` (the router binary, or any backend speaking `router/LINK.md`). No link is
//! shared across shards.
//!
//! Owns, per shard: the link (up or down), the requests in flight (request id → origin and
//! kind, at most `backend.max_inflight`), their deadlines (a FIFO: every request waits the same
//! `backend.timeout_ms`, so deadlines come in submit order and one runtime timer serves them
//! all), and the reconnect loop.
//!
//! Never silence: a request is refused at once (BACKEND_UNAVAILABLE) when the link is down, when
//! `max_inflight` requests are already waiting, or when the link's queue is full; once taken it
//! is answered by the backend, or with BACKEND_UNAVAILABLE at its deadline, or when the link
//! drops — whichever comes first; a late answer is dropped.
//!
//! Reconnect: exponential backoff from 100 ms to 5 s with full jitter over the upper half; after
//! every handshake the shard's online sessions are re-announced (presence resync) before
//! anything else, so clients stay connected through a backend restart.
//!
//! Presence and delivery reports made while the link is down are dropped (counted): the resync
//! restores presence, and the backend keeps every message for PULL.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::net::ToSocketAddrs;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpStream;

use super::{Backend, Downlink, GateSink, Origin, Reply, Request, Unavailable};
use crate::code;
use crate::link::frame::{FrameDecoder, LinkError, encode_batch};
use crate::link::handshake::{self, CAPABILITIES, VERSION};
use crate::link::io::{LinkQueue, Liveness, drive, read_frame, write_all};
use crate::link::link_msg::Body;
use crate::link::{self, Hello, LinkMsg};

/// First reconnect wait; doubled after each failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Events (presence, reports) the link queue holds beyond the requests in flight.
const EVENT_ROOM: usize = 65_536;

/// What one shard's link needs to know.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// `backend.addr`, resolved at every connect.
    pub addr: String,
    pub gate_id: String,
    pub shard: u32,
    pub shards: u32,
    /// Requests waiting for an answer, at most (`backend.max_inflight`).
    pub max_inflight: usize,
    /// How long a request waits for its answer (`backend.timeout_ms`).
    pub timeout: Duration,
    /// Largest frame body this side accepts.
    pub max_frame: usize,
    /// Heartbeat interval this side announces.
    pub heartbeat: Duration,
}

/// The kind of a request, to answer it BACKEND_UNAVAILABLE without keeping the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Login,
    Send,
    Pull,
    Read,
    Sync,
    Biz,
}

impl RequestKind {
    pub fn of(request: &Request) -> Self {
        match request {
            Request::Login(_) => Self::Login,
            Request::Send(_) => Self::Send,
            Request::Pull(_) => Self::Pull,
            Request::Read(_) => Self::Read,
            Request::Sync(_) => Self::Sync,
            Request::Biz(_) => Self::Biz,
        }
    }

    /// The answer of this kind that carries `code`.
    pub fn refusal(self, code: u32, message: &str) -> Reply {
        let message = message.to_string();
        match self {
            Self::Login => Reply::Login(link::LoginResult { code, message }),
            Self::Send => Reply::Send(link::SendResult {
                code,
                message,
                ..Default::default()
            }),
            Self::Pull => Reply::Pull(link::PullResult {
                code,
                message,
                ..Default::default()
            }),
            Self::Read => Reply::Read(link::ReadResult { code, message }),
            Self::Sync => Reply::Sync(link::SyncResult {
                code,
                ..Default::default()
            }),
            Self::Biz => Reply::Biz(link::BizResult {
                code,
                message,
                ..Default::default()
            }),
        }
    }
}

/// Counters of one shard's link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteStats {
    pub connects: u64,
    pub timeouts: u64,
    pub refused: u64,
    pub events_dropped: u64,
}

#[derive(Default)]
struct InFlight {
    next_id: u64,
    waiting: HashMap<u64, (Origin, RequestKind)>,
    /// (deadline, request id) in submit order; answered ids are skipped when they come due.
    deadlines: VecDeque<(Instant, u64)>,
}

/// The sessions to re-announce after a reconnect (the shard's registry, read on its thread).
pub type Resync = Box<dyn Fn() -> Vec<link::Presence>>;

/// One gate shard's remote backend.
pub struct RemoteShard {
    config: RemoteConfig,
    sink: Weak<dyn GateSink>,
    resync: Resync,
    /// The link's queue while the link is up (after the Welcome).
    queue: RefCell<Option<Rc<LinkQueue>>>,
    inflight: RefCell<InFlight>,
    timer_waker: Cell<Option<Waker>>,
    stats: Cell<RemoteStats>,
    rng: Cell<u64>,
}

impl RemoteShard {
    /// Starts the link's tasks (connect loop, deadline timer). Must run on the shard's executor.
    /// Returns at once: until the first handshake, requests are refused.
    pub fn start(config: RemoteConfig, sink: Weak<dyn GateSink>, resync: Resync) -> Rc<Self> {
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(config.shard) << 32) ^ nanos_now();
        let this = Rc::new(Self {
            config,
            sink,
            resync,
            queue: RefCell::new(None),
            inflight: RefCell::default(),
            timer_waker: Cell::new(None),
            stats: Cell::new(RemoteStats::default()),
            rng: Cell::new(seed | 1),
        });
        glommio::spawn_local(connect_loop(Rc::downgrade(&this))).detach();
        glommio::spawn_local(deadline_loop(Rc::downgrade(&this))).detach();
        this
    }

    pub fn stats(&self) -> RemoteStats {
        self.stats.get()
    }

    /// Whether the link is up.
    pub fn is_up(&self) -> bool {
        self.queue.borrow().is_some()
    }

    fn count(&self, f: impl FnOnce(&mut RemoteStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn reply(&self, origin: Origin, reply: Reply) {
        if let Some(sink) = self.sink.upgrade() {
            sink.reply(origin, reply);
        }
    }

    /// An event (no answer): queued if the link is up and has room, else dropped and counted.
    fn event(&self, body: Body) {
        let queued = match &*self.queue.borrow() {
            Some(queue) => queue.push(LinkMsg::event(body)).is_ok(),
            None => false,
        };
        if !queued {
            self.count(|s| s.events_dropped += 1);
        }
    }

    /// A message arrived on the link.
    fn receive(&self, msg: LinkMsg) -> Result<(), LinkError> {
        let Some(body) = msg.body else {
            return Err(LinkError::Unexpected("a message without a body"));
        };
        let body = match Reply::from_body(body) {
            Ok(reply) => {
                let waiting = self.inflight.borrow_mut().waiting.remove(&msg.request_id);
                // None: answered after its deadline (already refused) or never asked: dropped.
                if let Some((origin, _)) = waiting {
                    self.reply(origin, reply);
                }
                return Ok(());
            }
            Err(body) => body,
        };
        let downlink = match body {
            Body::Heartbeat(_) => return Ok(()),
            Body::Deliver(d) => Downlink::Deliver(d),
            Body::Notify(n) => Downlink::Notify(n),
            Body::ReadReceipt(r) => Downlink::ReadReceipt(r),
            Body::Kick(k) => Downlink::Kick(k),
            Body::BizPush(b) => Downlink::BizPush(b),
            Body::Welcome(_) | Body::Refused(_) | Body::Hello(_) => {
                return Err(LinkError::Unexpected(
                    "a handshake message after the handshake",
                ));
            }
            _ => return Err(LinkError::Unexpected("a gate-to-backend message")),
        };
        if let Some(sink) = self.sink.upgrade() {
            sink.downlink(downlink);
        }
        Ok(())
    }

    /// The link dropped: every request in flight is answered BACKEND_UNAVAILABLE now.
    fn fail_all(&self, why: &str) {
        let failed: Vec<(Origin, RequestKind)> = {
            let mut inflight = self.inflight.borrow_mut();
            inflight.deadlines.clear();
            inflight.waiting.drain().map(|(_, v)| v).collect()
        };
        for (origin, kind) in failed {
            self.reply(origin, kind.refusal(code::BACKEND_UNAVAILABLE, why));
        }
    }

    /// Answers BACKEND_UNAVAILABLE to the requests whose deadline passed; returns the next one.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let next = {
            let mut inflight = self.inflight.borrow_mut();
            while let Some(&(deadline, id)) = inflight.deadlines.front() {
                if deadline > now {
                    break;
                }
                inflight.deadlines.pop_front();
                if let Some(v) = inflight.waiting.remove(&id) {
                    expired.push(v);
                }
            }
            inflight.deadlines.front().map(|&(d, _)| d)
        };
        if !expired.is_empty() {
            let n = expired.len() as u64;
            self.count(|s| s.timeouts += n);
            tracing::warn!(
                shard = self.config.shard,
                requests = n,
                "backend requests timed out (backend.timeout_ms)"
            );
        }
        for (origin, kind) in expired {
            self.reply(
                origin,
                kind.refusal(code::BACKEND_UNAVAILABLE, "backend timeout; retry"),
            );
        }
        next
    }

    /// A reconnect wait: `backoff` jittered over its upper half.
    fn jittered(&self, backoff: Duration) -> Duration {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        let half = backoff.as_millis() as u64 / 2;
        Duration::from_millis(half + x % (half + 1))
    }

    fn hello(&self) -> Hello {
        Hello {
            version: VERSION,
            gate_id: self.config.gate_id.clone(),
            shard: self.config.shard,
            shards: self.config.shards,
            capabilities: CAPABILITIES,
            heartbeat_ms: self.config.heartbeat.as_millis() as u32,
            max_frame: self.config.max_frame as u32,
        }
    }
}

impl Backend for RemoteShard {
    fn submit(&self, origin: Origin, request: Request) -> Result<(), Unavailable> {
        let queue = self.queue.borrow();
        let Some(queue) = queue.as_ref() else {
            return Err(Unavailable);
        };
        let mut inflight = self.inflight.borrow_mut();
        if inflight.waiting.len() >= self.config.max_inflight {
            drop(inflight);
            self.count(|s| s.refused += 1);
            return Err(Unavailable);
        }
        inflight.next_id = inflight.next_id.wrapping_add(1).max(1);
        let id = inflight.next_id;
        let kind = RequestKind::of(&request);
        if queue
            .push(LinkMsg::request(id, request.into_body()))
            .is_err()
        {
            drop(inflight);
            self.count(|s| s.refused += 1);
            return Err(Unavailable);
        }
        inflight.waiting.insert(id, (origin, kind));
        let was_idle = inflight.deadlines.is_empty();
        inflight
            .deadlines
            .push_back((Instant::now() + self.config.timeout, id));
        // Answered requests leave their deadline behind until it comes due; keep that bounded.
        if inflight.deadlines.len() > 4 * self.config.max_inflight.max(16) {
            let InFlight {
                waiting, deadlines, ..
            } = &mut *inflight;
            deadlines.retain(|(_, id)| waiting.contains_key(id));
        }
        if was_idle && let Some(waker) = self.timer_waker.take() {
            waker.wake();
        }
        Ok(())
    }

    fn presence(&self, presence: link::Presence) {
        self.event(Body::Presence(presence));
    }

    fn report(&self, batch: link::DeliveryReportBatch) {
        self.event(Body::Reports(batch));
    }

    fn is_up(&self) -> bool {
        RemoteShard::is_up(self)
    }

    fn flushed(&self) -> bool {
        self.queue.borrow().as_ref().is_none_or(|q| q.is_empty())
    }
}

/// The one timer of a shard's link: sleeps until the oldest request's deadline.
async fn deadline_loop(this: Weak<RemoteShard>) {
    loop {
        let next = match this.upgrade() {
            Some(me) => me.expire(Instant::now()),
            None => return,
        };
        match next {
            Some(at) => glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await,
            None => {
                // Nothing in flight: sleep until a submit arms us.
                let mut armed = false;
                poll_fn(|cx| {
                    if armed {
                        return Poll::Ready(());
                    }
                    armed = true;
                    match this.upgrade() {
                        Some(me) => {
                            me.timer_waker.set(Some(cx.waker().clone()));
                            Poll::Pending
                        }
                        None => Poll::Ready(()),
                    }
                })
                .await;
            }
        }
    }
}

/// Connect, handshake, resync, run; on any failure wait (backoff with jitter) and start over.
async fn connect_loop(this: Weak<RemoteShard>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u64;
    loop {
        let Some(me) = this.upgrade() else { return };
        let attempt = futures_lite::future::or(connect(&me), async {
            glommio::timer::sleep(CONNECT_TIMEOUT).await;
            Err(LinkError::Silent {
                ms: CONNECT_TIMEOUT.as_millis() as u64,
            })
        })
        .await;
        match attempt {
            Ok((mut stream, rbuf, welcome)) => {
                backoff = MIN_BACKOFF;
                failures = 0;
                me.count(|s| s.connects += 1);
                let sessions = (me.resync)();
                let queue = Rc::new(LinkQueue::new(
                    me.config.max_inflight + sessions.len() + EVENT_ROOM,
                ));
                let resynced = sessions.len();
                for presence in sessions {
                    // Room was made for every session above.
                    let _ = queue.push(LinkMsg::event(Body::Presence(presence)));
                }
                tracing::info!(
                    shard = me.config.shard,
                    backend = %welcome.backend_id,
                    resynced,
                    "backend link up"
                );
                *me.queue.borrow_mut() = Some(Rc::clone(&queue));
                let liveness = Liveness {
                    heartbeat: me.config.heartbeat,
                    silence: Duration::from_millis(u64::from(welcome.heartbeat_ms) * 3),
                };
                let decoder = FrameDecoder::new(me.config.max_frame);
                let weak = Rc::downgrade(&me);
                drop(me);
                let ended = drive(
                    &mut stream,
                    &queue,
                    rbuf,
                    decoder,
                    welcome.max_frame as usize,
                    liveness,
                    |batch| {
                        let Some(me) = weak.upgrade() else {
                            return Err(LinkError::Closed);
                        };
                        batch.msgs.into_iter().try_for_each(|m| me.receive(m))
                    },
                )
                .await;
                let _ = stream.shutdown(std::net::Shutdown::Both).await;
                let Some(me) = this.upgrade() else { return };
                *me.queue.borrow_mut() = None;
                tracing::warn!(shard = me.config.shard, err = %ended, "backend link down; reconnecting");
                me.fail_all("backend link lost; retry");
            }
            Err(err) => {
                failures += 1;
                // The first failure in a row is news; the rest are the same outage.
                if failures == 1 {
                    tracing::warn!(shard = me.config.shard, addr = %me.config.addr, %err, "cannot reach the backend; retrying with backoff");
                } else {
                    tracing::debug!(shard = me.config.shard, %err, "backend still unreachable");
                }
            }
        }
        let Some(me) = this.upgrade() else { return };
        let wait = me.jittered(backoff);
        drop(me);
        glommio::timer::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn connect(me: &RemoteShard) -> Result<(TcpStream, BytesMut, link::Welcome), LinkError> {
    let addr = me
        .config
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or(LinkError::Handshake("backend.addr resolves to nothing"))?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| LinkError::Io(std::io::Error::other(e.to_string())))?;
    let _ = stream.set_nodelay(true);
    let hello = encode_batch(
        &[LinkMsg::event(Body::Hello(me.hello()))],
        crate::link::frame::MIN_MAX_FRAME,
    )?;
    write_all(&mut stream, &hello).await?;
    let mut rbuf = BytesMut::new();
    let first = read_frame(
        &mut stream,
        &mut rbuf,
        FrameDecoder::new(me.config.max_frame),
    )
    .await?;
    let (welcome, rest) = handshake::expect_welcome(first)?;
    for msg in rest {
        me.receive(msg)?;
    }
    Ok((stream, rbuf, welcome))
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0)
}
