//! A connection task: owns one client socket, its read buffer and its [`ConnSession`], on the
//! shard that accepted or adopted it; its outbound queue and pending PUSHes live in its
//! `ConnShared`, where the shard queues answers and pushes.
//!
//! Loop: decode every complete frame buffered, apply what the session decides (message-path
//! requests go to the backend; ACKs and forward PULLs settle pending PUSHes), re-arm the
//! connection's one wheel timer at the earliest of the session's deadlines, the ack tracker's
//! and (while a request head arrives) the HTTP header deadline, then wait for the next event — bytes, end of stream, a kick, a due timer, a
//! backend login answer, or writability while output is queued. A due timer runs the session's
//! deadlines and the PUSH resends (given-up PUSHes are reported undelivered and the client
//! probed with a PING).
//!
//! Reads: an idle connection holds no read buffer. Waiting uses glommio's stream with a stack
//! buffer (glommio retries `recv` once, then arms an io_uring poll); what arrives is appended to
//! a buffer sized on demand, which then reads straight from the fd (`io::recv_into`) until
//! `EAGAIN`, and is released as soon as it is drained. It never holds more than one frame plus
//! one read chunk, so at most `HEADER_LEN + max_frame + READ_CHUNK` bytes (over WebSocket, plus
//! a frame header, and a fragmented message's reassembly buffer of at most
//! `HEADER_LEN + max_frame`; an HTTP request head, at most `gate.http_max_header_bytes` plus a
//! read chunk; over TLS, plus one record of plaintext, 16 KiB, and what rustls itself holds,
//! see `conn/tls.rs`).
//!
//! Transport: the first bytes decide — `GET ` is HTTP (an upgrade to WebSocket or a refusal),
//! anything else the binary TCP protocol. The HTTP and WebSocket layer is the child module
//! `websocket`; the TCP path only checks that the connection is TCP. A connection accepted on
//! `gate.tls_listen` has a TLS layer under all of this (child module `tls`): its reads go
//! through rustls into the same read buffer, its flushes through rustls onto the socket; the
//! plain path pays one `Option` check per read and per flush.
//!
//! Writes: frames are queued as `SharedFrame`s (a PUSH is one buffer for all its recipients on
//! the shard) and flushed with one `sendmsg` over up to 1,024 iovecs (IOV_MAX; runs of small
//! frames coalesced, see `io.rs`) at a time before the task waits. On `EAGAIN` the task hands
//! the first queued slice to glommio's `poll_write`, which retries once and otherwise waits for
//! writability; whatever it wrote is dropped from the queue and the vectored path resumes.
//! Queues are bounded per connection and per shard (`limits.*`, see `Shard::queue`): past them
//! the client is a slow consumer.
//!
//! Closing: queued frames (ERROR, KICK, LogoutResp) are flushed for at most
//! [`CLOSE_FLUSH_TIME`], then the write side is shut down and unread input drained for at most
//! [`LINGER_TIME`], so the client reads the last frames instead of a reset.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

mod tls;
mod websocket;

use super::handoff::Handoff;
use super::io::{Nb, OutQueue, recv_into};
use super::owner_shard;
use super::state::{AckScratch, ConnKey, ConnShared, Counter, HotCounters, Shard, TimerKey};
use super::uplink::{Asker, Uplink, refusal, translate};
use crate::delivery::ConvRef;
use crate::delivery::TimerId;
use crate::protocol::pb::{LoginReq, LoginResp};
use crate::protocol::{
    Code, Frame, FrameDecoder, KickReason, MsgType, cmd, decode_ack_ids, encode_frame,
};
use crate::session::{Action, CloseWhy, ConnSession, LoggedIn, TokenBucket, error_frame};
use router::backend::{Origin, Request, Unavailable};
pub(crate) use tls::Absorbed;
pub(crate) use tls::TlsConn;
use websocket::Transport;
pub(crate) use websocket::{WsConn, capacity_answer};

/// Largest single read from the fd beyond what the current frame needs.
const READ_CHUNK: usize = 4096;
/// Bytes read per wait through glommio's stream (on the stack).
const WAIT_READ: usize = 2048;
/// Bytes of ciphertext read per wait on a TLS connection (on the stack): one whole record.
const TLS_WAIT_READ: usize = 16 * 1024 + 256;
/// How long a closing connection may take to take its last frames.
const CLOSE_FLUSH_TIME: Duration = Duration::from_secs(2);
/// How long a closed connection's unread input is drained before the fd is closed.
const LINGER_TIME: Duration = Duration::from_millis(500);
/// Most input drained while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// Why the connection loop ended.
enum Exit {
    /// The session decided to close; its last frames are queued.
    Close(CloseWhy),
    /// End of stream or a socket error: nothing more can be sent.
    Gone,
    /// The LOGIN names a uid of another shard: move the fd there with these bytes (TCP: the
    /// LOGIN frame and everything after it; WebSocket: the raw bytes after the LOGIN's message,
    /// the LOGIN frame itself riding in the WebSocket state).
    HandOff { owner: usize, buffered: Bytes },
}

/// What woke the connection.
enum Wake {
    Input,
    Gone,
    Kick(KickReason),
    Timer,
    /// The ack tracker's deadline moved earlier: re-arm the connection's timer.
    Rearm,
    LoginResult(router::link::LoginResult),
    /// The TLS layer failed (bad hello, bad record): close after rustls' alert.
    TlsFailed,
}

/// When a connection must log in by, and the bytes it arrived with.
pub(crate) struct Arrival {
    pub accepted_at: Instant,
    pub login_deadline: Instant,
    pub buffered: BytesMut,
    /// A WebSocket connection handed over by another shard; `None`: the first bytes decide.
    pub websocket: Option<Box<WsConn>>,
    /// The TLS layer of a connection on `gate.tls_listen` (new, or handed over mid-session).
    pub tls: Option<Box<TlsConn>>,
}

/// Runs one connection to its end and removes every trace of it from the shard.
///
/// Not an `async fn`: the connection is built before the future exists, so the task holds only
/// the `Conn` and its loop state (an idle connection's whole footprint, kept small on purpose).
pub(crate) fn serve(
    shard: Rc<Shard>,
    stream: TcpStream,
    arrival: Arrival,
) -> impl Future<Output = ()> {
    let (key, shared) = shard.add_conn();
    let shard_burst = shard.settings.limits.burst;
    let session = ConnSession::new(
        arrival.accepted_at,
        arrival.login_deadline,
        shard.settings.heartbeat,
    );
    let transport = match arrival.websocket {
        Some(ws) => {
            shared.set_websocket();
            Transport::WebSocket(ws)
        }
        None => Transport::Undecided {
            opened: arrival.accepted_at,
        },
    };
    let conn = Conn {
        tls: arrival.tls,
        transport,
        decoder: FrameDecoder::new(shard.settings.max_frame),
        fd: stream.as_raw_fd(),
        shard,
        stream,
        key,
        shared,
        rbuf: arrival.buffered,
        session,
        timer: None,
        pending_login: None,
        bucket: TokenBucket::new(shard_burst, arrival.accepted_at),
    };
    let mut conn = conn;
    // `conn` is used in place until the end: an `async fn serve(self)` would move it into a
    // second slot of the future (rust-lang/rust#62958), doubling every connection's task.
    async move {
        let exit = conn.run().await;
        // Boxed: the closing path (flush, hand-off, linger with its drain buffer) is rare and
        // large; inline, it would make every idle connection's task that much bigger.
        Box::pin(conn.finish(exit)).await;
    }
}

struct Conn {
    shard: Rc<Shard>,
    stream: TcpStream,
    fd: RawFd,
    key: ConnKey,
    shared: Rc<ConnShared>,
    rbuf: BytesMut,
    /// What carries the frames: decided by the first bytes (TCP, or HTTP then WebSocket).
    transport: Transport,
    /// `Some` on the TLS port: ciphertext on the socket, plaintext in `rbuf` and the out queue.
    tls: Option<Box<TlsConn>>,
    decoder: FrameDecoder,
    session: ConnSession,
    /// The connection's one wheel entry and the instant it fires.
    timer: Option<(TimerId, Instant)>,
    /// A LOGIN the backend is checking (`auth.mode = "backend"`); boxed, as it is rare.
    pending_login: Option<Box<(LoginReq, u32, u32)>>,
    /// Requests per second (`limits.msgs_per_sec`, `limits.burst`).
    bucket: TokenBucket,
}

impl Conn {
    /// The connection's loop, written as one `poll_fn` so the task's state is the `Conn` alone:
    /// as an `async` loop the generator kept ~400 bytes more per connection, idle or not.
    fn run(&mut self) -> impl Future<Output = Exit> + '_ {
        poll_fn(move |cx| {
            loop {
                if let Some(exit) = self.process_input(Instant::now()) {
                    return Poll::Ready(exit);
                }
                self.rearm_timer();
                let Poll::Ready(wake) = self.poll_wait(cx) else {
                    // Everything this task read is handled: fan out what it caused now, rather
                    // than one trip through the run queue later in the fan-out task.
                    self.shard.fan_out_held();
                    return Poll::Pending;
                };
                if let Some(exit) = self.on_wake(wake) {
                    return Poll::Ready(exit);
                }
            }
        })
    }

    /// Acts on what woke the connection; `Some` ends the loop.
    fn on_wake(&mut self, wake: Wake) -> Option<Exit> {
        let action = match wake {
            Wake::Input | Wake::Rearm => return None,
            Wake::Gone => return Some(Exit::Gone),
            Wake::TlsFailed => return Some(Exit::Close(CloseWhy::Protocol)),
            Wake::Kick(reason) => {
                let body = self.shard.kick_body(reason, kick_message(reason));
                self.session.kick_with(reason, body)
            }
            Wake::Timer => {
                self.timer = None;
                let now = Instant::now();
                if let Some(exit) = self.tls_timeout(now) {
                    return Some(exit);
                }
                if let Some(exit) = self.transport_timeout(now) {
                    return Some(exit);
                }
                let action = self.session.handle_timeout(now);
                if let Some(exit) = self.apply(action) {
                    return Some(exit);
                }
                self.retry_pushes(now)
            }
            Wake::LoginResult(result) => {
                let (req, log_id, seq) = *self.pending_login.take()?;
                return self.login_checked(req, log_id, seq, result.code, &result.message);
            }
        };
        self.apply(action)
    }

    /// Decodes and applies every complete frame in the read buffer (the transport's first,
    /// unless the connection speaks TCP).
    fn process_input(&mut self, now: Instant) -> Option<Exit> {
        if !matches!(self.transport, Transport::Tcp) {
            return self.process_transport(now);
        }
        self.process_frames(now)
    }

    /// Decodes and applies every complete TCP frame in the read buffer.
    fn process_frames(&mut self, now: Instant) -> Option<Exit> {
        loop {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    if let Some(exit) = self.process_frame(frame, now) {
                        return Some(exit);
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!(shard = self.shard.index, %err, "protocol error");
                    let action = self.session.handle_frame_error(&err);
                    return self.apply(action);
                }
            }
        }
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            // An idle connection keeps no read buffer.
            self.rbuf = BytesMut::new();
        }
        None
    }

    /// One complete frame from the client, whatever carried it.
    #[inline]
    fn process_frame(&mut self, frame: Frame, now: Instant) -> Option<Exit> {
        HotCounters::bump(&self.shard.hot.frames_in, 1);
        if frame.msg_type == MsgType::Request && frame.cmd != cmd::PING && !self.take_token(now) {
            self.shard.metric(|m| m.rate_limited += 1);
            let why = "too many requests; retry later";
            let refused = refusal(frame.cmd, frame.log_id, frame.seq, Code::RateLimited, why);
            self.queue(refused);
            return None;
        }
        let action = self.session.handle_frame(frame, now);
        self.apply(action)
    }

    fn apply(&mut self, action: Action) -> Option<Exit> {
        match action {
            Action::None | Action::PingAnswered { .. } => None,
            Action::Reply(frame) => {
                self.queue(frame);
                None
            }
            Action::Forward(frame) => {
                self.forward(frame);
                None
            }
            Action::Login { req, log_id, seq } => self.login(req, log_id, seq),
            Action::Close { frames, why } => {
                let kicked = match why {
                    CloseWhy::Kicked(reason) => Some(reason),
                    CloseWhy::Idle | CloseWhy::ProbeUnanswered => Some(KickReason::IdleTimeout),
                    CloseWhy::Protocol if self.session.logged_in().is_some() => {
                        Some(KickReason::ProtocolError)
                    }
                    _ => None,
                };
                if let Some(reason) = kicked {
                    self.shard.metric(|m| m.kick(reason.wire()));
                }
                for frame in frames {
                    self.shard.queue_last(&self.shared, frame);
                }
                Some(Exit::Close(why))
            }
        }
    }

    /// Resends PUSHes whose ACK is overdue; those out of retries are reported undelivered and
    /// the client is probed with a PING (no answer within `delivery.probe_timeout_ms`: KICK 6).
    fn retry_pushes(&mut self, now: Instant) -> Action {
        let (mut resend, mut undelivered) = (Vec::new(), Vec::new());
        let gave_up = self.shared.acks().handle_timeout(
            now,
            &self.shard.delivery.ack,
            &mut resend,
            &mut undelivered,
        );
        // Quiet with nothing pending: give the tracker's and the queue's memory back.
        self.shared.acks().release();
        self.shared.out().release();
        self.shard.metric(|m| m.retries += resend.len() as u64);
        for frame in resend {
            self.shard.queue_shared(&self.shared, frame);
        }
        if let Some(who) = self.session.logged_in() {
            self.shard
                .report(who.uid, who.session_id, &[], &undelivered, now);
        }
        if gave_up {
            return self
                .session
                .probe_delivery(now, self.shard.settings.delivery.probe_timeout());
        }
        Action::None
    }

    /// One request's worth of the connection's rate (PING and notifies never count).
    fn take_token(&mut self, now: Instant) -> bool {
        let limits = &self.shard.settings.limits;
        self.bucket.try_take(now, limits.msgs_per_sec, limits.burst)
    }

    /// Queues a frame; a client that lets its output pile up is kicked (see `ConnShared::push`).
    fn queue(&self, frame: Bytes) {
        self.shard.queue(&self.shared, frame);
    }

    /// A message-path request goes to the backend; its answer is queued by the shard when it
    /// comes back (`downlink.rs`), so requests pipeline.
    fn forward(&mut self, frame: Frame) {
        let who = Asker {
            uid: self.shared.uid(),
            session_id: self.shared.session_id(),
            max_frame: self.shard.settings.max_frame,
        };
        let (command, log_id, seq) = (frame.cmd, frame.log_id, frame.seq);
        match translate(frame, &who) {
            Uplink::Submit(request) => {
                if let Request::Pull(pull) = &request
                    && pull.before_msg_id == 0
                {
                    // A forward PULL acknowledges everything up to its after_msg_id.
                    let conv = ConvRef {
                        conv_type: pull.conv_type,
                        conv_id: pull.conv_id,
                    };
                    let mut delivered = Vec::new();
                    self.shared
                        .acks()
                        .clear_through(conv, pull.after_msg_id, &mut delivered);
                    self.shard
                        .report(who.uid, who.session_id, &delivered, &[], Instant::now());
                }
                let origin = Origin {
                    shard: self.shard.index as u32,
                    conn: self.key.pack(),
                    seq,
                    log_id,
                };
                self.shard
                    .latency
                    .borrow_mut()
                    .start(origin.conn, seq, Instant::now());
                let submitted = match self.shard.backend.get() {
                    Some(backend) => backend.submit(origin, request),
                    None => Err(Unavailable),
                };
                if submitted.is_err() {
                    let why = "backend unavailable; retry";
                    self.queue(refusal(command, log_id, seq, Code::BackendUnavailable, why));
                }
            }
            // Acknowledged PUSHes are reported delivered (batched by the shard's reporter).
            Uplink::Ack(frame) => {
                let mut scratch = self.shard.ack_scratch.borrow_mut();
                let AckScratch { ids, delivered } = &mut *scratch;
                ids.clear();
                if decode_ack_ids(&frame.body, ids).is_err() {
                    drop(scratch);
                    self.queue(error_frame(&frame, Code::BadRequest, "Ack does not decode"));
                    return;
                }
                delivered.clear();
                self.shared.acks().ack(ids, delivered);
                self.shard
                    .report(who.uid, who.session_id, delivered, &[], Instant::now());
                scratch.trim();
            }
            Uplink::Refuse(frame) => self.queue(frame),
        }
    }

    fn login(&mut self, req: LoginReq, log_id: u32, seq: u32) -> Option<Exit> {
        let shard = Rc::clone(&self.shard);
        let owner = owner_shard(req.uid, shard.shards);
        if owner != shard.index {
            // Re-frame the LOGIN so the owner decodes it as if it had read it itself.
            let login = encode_frame(cmd::LOGIN, MsgType::Request, log_id, seq, &req);
            let mut buffered = BytesMut::with_capacity(login.len() + self.rbuf.len());
            if let Transport::WebSocket(ws) = &mut self.transport {
                // The bytes after it are WebSocket frames: the LOGIN travels beside them.
                ws.carry_login(login);
            } else {
                buffered.extend_from_slice(&login);
            }
            buffered.extend_from_slice(&self.rbuf);
            self.rbuf = BytesMut::new();
            return Some(Exit::HandOff {
                owner,
                buffered: buffered.freeze(),
            });
        }
        let Some(auth) = &shard.auth else {
            // auth.mode = "backend": ask, and finish when the answer wakes us.
            let check = router::link::Login {
                uid: req.uid,
                token: req.token.clone(),
                device_id: req.device_id.clone(),
                platform: req.platform,
                log_id,
            };
            let origin = Origin {
                shard: shard.index as u32,
                conn: self.key.pack(),
                seq,
                log_id,
            };
            let submitted = match shard.backend.get() {
                Some(backend) => backend.submit(origin, Request::Login(check)),
                None => Err(Unavailable),
            };
            if submitted.is_err() {
                let action = self.session.login_refused(
                    Code::BackendUnavailable,
                    "backend unavailable; retry",
                    log_id,
                    seq,
                );
                return self.apply(action);
            }
            self.pending_login = Some(Box::new((req, log_id, seq)));
            return None;
        };
        let (code, message) = match auth.verify(req.uid, &req.token, unix_now().as_secs()) {
            Ok(()) => (Code::Ok.wire(), String::new()),
            Err(err) => (err.code(), err.to_string()),
        };
        self.login_checked(req, log_id, seq, code, &message)
    }

    /// Finishes a LOGIN whose token check answered `code`.
    fn login_checked(
        &mut self,
        req: LoginReq,
        log_id: u32,
        seq: u32,
        code: u32,
        message: &str,
    ) -> Option<Exit> {
        let shard = Rc::clone(&self.shard);
        if code != Code::Ok.wire() {
            shard.login_refused(code);
            tracing::debug!(shard = shard.index, uid = req.uid, message, "login refused");
            let code = if code == Code::Unauthenticated.wire() {
                Code::Unauthenticated
            } else {
                Code::BackendUnavailable
            };
            let action = self.session.login_refused(code, message, log_id, seq);
            return self.apply(action);
        }
        let (devices, known_device) = {
            let registry = shard.registry.borrow();
            let devices = registry.devices(req.uid);
            (
                devices.len(),
                devices.iter().any(|d| *d.device_id == *req.device_id),
            )
        };
        if !known_device && devices >= shard.settings.limits.devices_per_uid as usize {
            shard.login_refused(Code::RateLimited.wire());
            let why = "too many devices logged in for this uid";
            let action = self
                .session
                .login_refused(Code::RateLimited, why, log_id, seq);
            return self.apply(action);
        }
        let session_id = shard.next_session_id();
        let displaced =
            shard
                .registry
                .borrow_mut()
                .register(req.uid, &req.device_id, session_id, self.key);
        if let Some(old) = displaced {
            shard.kick(old.conn, KickReason::DuplicateLogin);
        }
        self.shared.set_identity(req.uid, session_id);
        shard.count(Counter::LoginsOk);
        shard.publish_gauges();
        if let Some(backend) = shard.backend.get() {
            backend.presence(router::link::Presence {
                uid: req.uid,
                device_id: req.device_id.clone(),
                session_id,
                online: true,
                platform: req.platform,
                since_ms: u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX),
            });
        }
        let settings = &shard.settings;
        let resp = LoginResp {
            code: Code::Ok.wire(),
            message: String::new(),
            heartbeat_secs: settings.heartbeat_secs,
            server_time_ms: u64::try_from(unix_now().as_millis()).unwrap_or(u64::MAX),
            session_id,
            gate_id: settings.gate_id.clone(),
            max_frame: settings.max_frame,
        };
        let who = LoggedIn {
            uid: req.uid,
            device_id: req.device_id.into(),
            session_id,
        };
        let reply = self.session.login_accepted(who, resp, log_id, seq);
        self.queue(reply);
        None
    }

    /// Keeps exactly one wheel entry armed no later than the session's next deadline. A later
    /// deadline (the usual case: activity pushed the idle deadline out) is left to the armed
    /// entry, which fires, finds nothing due and re-arms: no wheel work per frame.
    fn rearm_timer(&mut self) {
        let session_due = self.session.poll_timeout();
        let acks_due = self.shared.acks().poll_timeout();
        let http_due = self.transport.deadline();
        let tls_due = self.tls.as_ref().and_then(|tls| tls.deadline());
        let Some(due) = session_due
            .into_iter()
            .chain(acks_due)
            .chain(http_due)
            .chain(tls_due)
            .min()
        else {
            return;
        };
        match self.timer {
            Some((_, armed)) if armed <= due => {}
            Some((id, _)) => {
                self.shard.cancel_timer(id);
                self.timer = Some((self.shard.arm_timer(TimerKey::Conn(self.key), due), due));
            }
            None => self.timer = Some((self.shard.arm_timer(TimerKey::Conn(self.key), due), due)),
        }
    }

    /// What woke the connection (kick, login answer, timer, re-arm, a failed flush, input), or
    /// `Pending` with the waker left with the shared state and the socket.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        self.shared.set_waker(cx.waker());
        if let Some(reason) = self.shared.take_kick() {
            return Poll::Ready(Wake::Kick(reason));
        }
        if let Some(result) = self.shared.take_login_result() {
            return Poll::Ready(Wake::LoginResult(result));
        }
        if self.shared.take_timer_due() {
            return Poll::Ready(Wake::Timer);
        }
        if self.shared.take_rearm() {
            return Poll::Ready(Wake::Rearm);
        }
        if self.has_output()
            && let Poll::Ready(Err(err)) = self.poll_flush(cx)
        {
            tracing::debug!(shard = self.shard.index, %err, "write failed");
            return Poll::Ready(Wake::Gone);
        }
        self.poll_input(cx)
    }

    /// Writes the queue; `Pending` means glommio will wake us when the socket is writable.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = Rc::clone(&self.shared);
        let mut out = shared.out();
        let before = out.bytes();
        let result = match self.tls.as_deref_mut() {
            None => flush_queue(&mut out, self.fd, &mut self.stream, cx),
            Some(tls) => tls.poll_flush(&mut out, self.fd, &mut self.stream, cx),
        };
        let written = before - out.bytes();
        self.shard.unqueued(written);
        HotCounters::bump(&self.shard.hot.bytes_out, written as u64);
        result
    }

    /// Output waits: queued frames, or (TLS) records rustls has to send.
    fn has_output(&self) -> bool {
        !self.shared.out().is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// The handshake deadline passed: close (nothing can be said to a client that has not
    /// finished its handshake).
    fn tls_timeout(&mut self, now: Instant) -> Option<Exit> {
        let deadline = self.tls.as_ref()?.deadline()?;
        if now < deadline {
            return None;
        }
        tracing::debug!(shard = self.shard.index, "TLS handshake timed out");
        self.shard.metric(|m| m.tls_handshakes_timed_out += 1);
        Some(Exit::Close(CloseWhy::LoginTimeout))
    }

    /// TLS: one read of ciphertext through glommio's stream (which waits for readability),
    /// turned into plaintext in the read buffer.
    fn poll_tls_input(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let mut chunk = [0u8; TLS_WAIT_READ];
        let n = match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wake::Gone),
            Poll::Ready(Ok(n)) => n,
            Poll::Pending => return Poll::Pending,
        };
        HotCounters::bump(&self.shard.hot.bytes_in, n as u64);
        let Some(tls) = self.tls.as_deref_mut() else {
            return Poll::Ready(Wake::Gone);
        };
        let handshaking = tls.deadline().is_some();
        let absorbed = tls.absorb(&chunk[..n], &mut self.rbuf);
        if handshaking && tls.deadline().is_none() {
            self.shard.metric(|m| m.tls_handshakes_ok += 1);
        }
        match absorbed {
            Ok(Absorbed::Open) => Poll::Ready(Wake::Input),
            Ok(Absorbed::PeerClosed) => Poll::Ready(Wake::Gone),
            Err(err) => {
                tracing::debug!(shard = self.shard.index, %err, "TLS failed");
                if handshaking {
                    self.shard.metric(|m| m.tls_handshakes_failed += 1);
                }
                Poll::Ready(Wake::TlsFailed)
            }
        }
    }

    fn poll_input(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.tls.is_some() {
            return self.poll_tls_input(cx);
        }
        if !self.rbuf.is_empty() {
            // Mid-frame or busy: read straight into the buffer, sized to the frame.
            let hint = match &self.transport {
                Transport::WebSocket(ws) => ws.frame_len_hint(&self.rbuf),
                Transport::Http { .. } => 0,
                _ => self.decoder.frame_len_hint(&self.rbuf),
            };
            let need = hint.saturating_sub(self.rbuf.len());
            match recv_into(self.fd, &mut self.rbuf, need.max(READ_CHUNK)) {
                Ok(Nb::Done(0)) | Err(_) => return Poll::Ready(Wake::Gone),
                Ok(Nb::Done(n)) => {
                    HotCounters::bump(&self.shard.hot.bytes_in, n as u64);
                    return Poll::Ready(Wake::Input);
                }
                Ok(Nb::WouldBlock) => {}
            }
        }
        let mut chunk = [0u8; WAIT_READ];
        match Pin::new(&mut self.stream).poll_read(cx, &mut chunk) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(Wake::Gone),
            Poll::Ready(Ok(n)) => {
                self.rbuf.extend_from_slice(&chunk[..n]);
                HotCounters::bump(&self.shard.hot.bytes_in, n as u64);
                Poll::Ready(Wake::Input)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    async fn finish(mut self, exit: Exit) {
        if let Some((id, _)) = self.timer.take() {
            self.shard.cancel_timer(id);
        }
        if let Some(who) = self.session.identity() {
            let removed =
                self.shard
                    .registry
                    .borrow_mut()
                    .unregister(who.uid, &who.device_id, self.key);
            if removed && let Some(backend) = self.shard.backend.get() {
                backend.presence(router::link::Presence {
                    uid: who.uid,
                    device_id: who.device_id.to_string(),
                    session_id: who.session_id,
                    online: false,
                    platform: 0,
                    since_ms: 0,
                });
            }
        }
        self.shard.forget_notifies(self.key);
        if let Some(who) = self.session.identity() {
            // Whatever is still pending will not be acknowledged on this connection.
            let mut undelivered = Vec::new();
            self.shared.acks().drain(&mut undelivered);
            self.shard
                .report(who.uid, who.session_id, &[], &undelivered, Instant::now());
        }
        self.shard.remove_conn(self.key);
        match exit {
            Exit::Gone => self.drop_output(),
            Exit::Close(why) => {
                tracing::debug!(shard = self.shard.index, ?why, "closing");
                if let Transport::WebSocket(ws) = &self.transport
                    && let Some(close) = ws.final_close(why)
                {
                    self.shard.queue_raw_last(&self.shared, close);
                }
                let flushed = self.flush_for(CLOSE_FLUSH_TIME).await;
                if flushed && let Some(tls) = self.tls.as_deref_mut() {
                    // After the last frames, which the out queue still held until now.
                    tls.close_notify();
                    self.flush_for(CLOSE_FLUSH_TIME).await;
                }
                self.drop_output();
                linger(&mut self.stream, &mut self.rbuf).await;
            }
            Exit::HandOff { owner, buffered } => {
                // The LOGIN travels with the connection and is decoded, and counted, again by
                // its owner.
                let frames_in = &self.shard.hot.frames_in;
                frames_in.set(frames_in.get().saturating_sub(1));
                // Answers to what came before the LOGIN go out on this shard first.
                if !self.flush_for(CLOSE_FLUSH_TIME).await {
                    self.drop_output();
                    return;
                }
                // SAFETY: dup of an fd we own; the copy is owned by the OwnedFd alone.
                let dup = unsafe { libc::dup(self.fd) };
                if dup < 0 {
                    self.shard.count(Counter::HandoffsDropped);
                    return;
                }
                let fd = unsafe { OwnedFd::from_raw_fd(dup) };
                let websocket = match self.transport {
                    Transport::WebSocket(ws) => Some(ws),
                    _ => None,
                };
                let handoff = Handoff {
                    fd,
                    buffered,
                    login_deadline: self.session.login_deadline(),
                    websocket,
                    tls: self.tls,
                };
                drop(self.stream);
                super::handoff::send(&self.shard, owner, handoff);
            }
        }
    }

    /// Forgets what could not be sent, and takes it off the shard's outbound total.
    fn drop_output(&self) {
        let mut out = self.shared.out();
        self.shard.unqueued(out.bytes());
        out.clear();
    }

    /// Flushes the queue within `limit`; whether everything went out.
    async fn flush_for(&mut self, limit: Duration) -> bool {
        if !self.has_output() {
            return true;
        }
        let flush = poll_fn(|cx| self.poll_flush(cx));
        matches!(
            glommio::timer::timeout(limit, async { Ok(flush.await) }).await,
            Ok(Ok(()))
        )
    }
}

/// Writes `out` with vectored sends on `fd`; on `EAGAIN` hands the first slice to glommio's
/// write, which waits for writability. `Pending`: woken when the socket can take more.
fn flush_queue(
    out: &mut OutQueue,
    fd: RawFd,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        match out.write_to(fd)? {
            Nb::Done(()) => return Poll::Ready(Ok(())),
            Nb::WouldBlock => {}
        }
        let Some(front) = out.front() else {
            return Poll::Ready(Ok(()));
        };
        match Pin::new(&mut *stream).poll_write(cx, front) {
            Poll::Ready(Ok(n)) => out.advance(n),
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Shuts the write side and drains unread input for a bounded time, so the peer sees our last
/// frames and a FIN rather than a reset, then the caller drops (closes) the socket.
pub(crate) async fn linger(stream: &mut TcpStream, rbuf: &mut BytesMut) {
    *rbuf = BytesMut::new();
    // SAFETY: shutdown on an fd we own.
    unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    let drain = async {
        let mut chunk = [0u8; WAIT_READ];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match futures_lite::AsyncReadExt::read(stream, &mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok(())
    };
    let _ = glommio::timer::timeout(LINGER_TIME, drain).await;
}

fn kick_message(reason: KickReason) -> &'static str {
    match reason {
        KickReason::DuplicateLogin => "logged in elsewhere with the same device_id",
        KickReason::Draining => "gate shutting down",
        KickReason::AuthExpired => "authentication expired",
        KickReason::SlowConsumer => "output queue full",
        KickReason::ProtocolError => "protocol error",
        KickReason::IdleTimeout => "idle timeout",
        KickReason::Admin => "kicked by an operator",
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}
