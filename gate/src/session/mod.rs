//! Sessions: the per-connection protocol state machine ([`ConnSession`]) and the per-shard map
//! uid → devices → connection ([`Registry`]).
//!
//! Sans-IO: [`ConnSession`] takes decoded frames and `now`, and answers with [`Action`]s (frames
//! to queue, a LOGIN to decide, a close); it never touches a socket, a clock or another shard.
//! The shard's connection task drives it and owns the IO; the shard owns the `Registry`.
//!
//! Call order: `handle_frame` / `handle_frame_error` for input, `handle_timeout` when
//! `poll_timeout` has passed, `login_accepted` / `login_refused` to answer an [`Action::Login`].
//! `now` must not go backwards between calls.

mod rate;
mod registry;

pub use rate::TokenBucket;
pub use registry::{DeviceSession, Registry};

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use crate::protocol::pb::{Error as ErrorBody, Kick, LoginReq, LoginResp};
use crate::protocol::{Code, Frame, FrameError, KickReason, MsgType, cmd, encode_frame};

/// Where a connection is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Connected, no successful LOGIN yet; closed at `login_deadline`.
    AwaitingLogin,
    /// A LOGIN is being decided by the shard (token check, owner shard).
    LoginPending,
    LoggedIn(LoggedIn),
    /// A close was decided; nothing more is read. Keeps who it was, if it had logged in, so
    /// the shell can unregister it and account for its pending PUSHes.
    Closing(Option<LoggedIn>),
}

/// Who a logged-in connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    pub uid: u64,
    pub device_id: Box<str>,
    pub session_id: u64,
}

/// What the shell must do after an input.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Action {
    /// Nothing (an ignored notify or response).
    None,
    /// Queue this frame to the client.
    Reply(Bytes),
    /// Decide this LOGIN (verify the token, find the owner shard), then call
    /// [`ConnSession::login_accepted`] or [`ConnSession::login_refused`].
    Login {
        req: LoginReq,
        log_id: u32,
        seq: u32,
    },
    /// A message-path frame (SEND, ACK, PULL, READ, SYNC, BIZ) from a logged-in client, for the
    /// delivery engine and the backend.
    Forward(Frame),
    /// The peer answered a PING the gate sent.
    PingAnswered { seq: u32 },
    /// Queue `frames` (may be empty), flush them, then close the connection.
    Close { frames: Vec<Bytes>, why: CloseWhy },
}

/// Why a connection is being closed, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseWhy {
    Logout,
    LoginTimeout,
    LoginRefused,
    Idle,
    /// PUSHes went unacknowledged and the PING probe was not answered.
    ProbeUnanswered,
    Protocol,
    Kicked(KickReason),
    /// The client closed its transport cleanly (a WebSocket close frame): no KICK.
    PeerClosed,
}

/// One connection's protocol state. Small on purpose: an idle logged-in connection keeps this,
/// and nothing else grows with time.
///
/// Liveness: a logged-in session silent for 2 x heartbeat gets one PING from the gate (a client
/// that forgot its heartbeat but is alive answers it, which counts as a frame); silent for
/// 3 x heartbeat it is closed with KICK 6.
#[derive(Debug)]
pub struct ConnSession {
    phase: Phase,
    login_deadline: Instant,
    last_rx: Instant,
    heartbeat: Duration,
    /// `last_rx` as it was when the gate last sent a PING: one probe per silence.
    probed_at_rx: Option<Instant>,
    next_ping_seq: u32,
    /// A delivery probe in flight (PUSHes were given up on): its deadline and PING seq.
    delivery_probe: Option<(Instant, u32)>,
}

impl ConnSession {
    /// A connection accepted at `accepted_at` that must log in by `login_deadline`, with the
    /// gate's heartbeat interval.
    pub fn new(accepted_at: Instant, login_deadline: Instant, heartbeat: Duration) -> Self {
        Self {
            phase: Phase::AwaitingLogin,
            login_deadline,
            last_rx: accepted_at,
            heartbeat,
            probed_at_rx: None,
            next_ping_seq: 1,
            delivery_probe: None,
        }
    }

    fn idle_deadline(&self) -> Instant {
        self.last_rx + self.heartbeat * 3
    }

    fn probe_due(&self) -> Option<Instant> {
        (self.probed_at_rx != Some(self.last_rx)).then(|| self.last_rx + self.heartbeat * 2)
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn logged_in(&self) -> Option<&LoggedIn> {
        match &self.phase {
            Phase::LoggedIn(s) => Some(s),
            _ => None,
        }
    }

    /// Who this connection is or was: logged in, or closing after having logged in.
    pub fn identity(&self) -> Option<&LoggedIn> {
        match &self.phase {
            Phase::LoggedIn(s) | Phase::Closing(Some(s)) => Some(s),
            _ => None,
        }
    }

    pub fn login_deadline(&self) -> Instant {
        self.login_deadline
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` once closing.
    /// The idle deadline moves with every frame, so a caller that armed an earlier instant
    /// simply calls again and re-arms.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingLogin | Phase::LoginPending => Some(self.login_deadline),
            Phase::LoggedIn(_) => {
                let liveness = self.probe_due().unwrap_or_else(|| self.idle_deadline());
                Some(match self.delivery_probe {
                    Some((deadline, _)) => liveness.min(deadline),
                    None => liveness,
                })
            }
            Phase::Closing(_) => None,
        }
    }

    /// Closes the connection if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Action {
        match self.poll_timeout() {
            Some(at) if now >= at => {}
            _ => return Action::None,
        }
        match self.phase {
            Phase::LoggedIn(_) if self.delivery_probe.is_some_and(|(at, _)| now >= at) => {
                self.close_with_kick(None, KickReason::IdleTimeout, CloseWhy::ProbeUnanswered)
            }
            Phase::LoggedIn(_) if now >= self.idle_deadline() => {
                self.close_with_kick(None, KickReason::IdleTimeout, CloseWhy::Idle)
            }
            Phase::LoggedIn(_) if self.probe_due().is_some_and(|at| now >= at) => {
                self.probed_at_rx = Some(self.last_rx);
                Action::Reply(self.ping().1)
            }
            Phase::LoggedIn(_) => Action::None,
            _ => self.close(Vec::new(), CloseWhy::LoginTimeout),
        }
    }

    /// PUSHes were given up on: PING the client, and close it (KICK 6) if no answer comes
    /// within `timeout`. One probe at a time.
    pub fn probe_delivery(&mut self, now: Instant, timeout: Duration) -> Action {
        if !matches!(self.phase, Phase::LoggedIn(_)) || self.delivery_probe.is_some() {
            return Action::None;
        }
        let (seq, ping) = self.ping();
        self.delivery_probe = Some((now + timeout, seq));
        Action::Reply(ping)
    }

    /// A PING request from the gate, with a fresh non-zero seq.
    fn ping(&mut self) -> (u32, Bytes) {
        let seq = self.next_ping_seq;
        self.next_ping_seq = seq.wrapping_add(1).max(1);
        (seq, encode_frame(cmd::PING, MsgType::Request, 0, seq, &()))
    }

    /// One complete frame from the client.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Action {
        if matches!(self.phase, Phase::Closing(_)) {
            return Action::None;
        }
        self.last_rx = now;
        let logged_in = matches!(self.phase, Phase::LoggedIn(_));
        match (frame.cmd, frame.msg_type) {
            (cmd::PING, MsgType::Request) => Action::Reply(encode_frame(
                cmd::PING,
                MsgType::Response,
                frame.log_id,
                frame.seq,
                &(),
            )),
            (cmd::PING, MsgType::Response) => {
                if self.delivery_probe.is_some_and(|(_, seq)| seq == frame.seq) {
                    self.delivery_probe = None;
                }
                Action::PingAnswered { seq: frame.seq }
            }
            (cmd::LOGIN, MsgType::Request) => self.handle_login(frame),
            (cmd::LOGOUT, MsgType::Request) if logged_in => {
                let reply =
                    encode_frame(cmd::LOGOUT, MsgType::Response, frame.log_id, frame.seq, &());
                self.close(vec![reply], CloseWhy::Logout)
            }
            (cmd::SEND | cmd::PULL | cmd::READ | cmd::SYNC | cmd::BIZ, MsgType::Request)
            | (cmd::ACK, MsgType::Notify)
                if logged_in =>
            {
                Action::Forward(frame)
            }
            (_, MsgType::Request) if !logged_in => {
                Action::Reply(error_frame(&frame, Code::NotLoggedIn, "log in first"))
            }
            (_, MsgType::Request) => {
                Action::Reply(error_frame(&frame, Code::BadRequest, "unknown command"))
            }
            // A notify the gate knows is refused before LOGIN (e.g. an ACK); unknown notifies
            // are ignored, as they are how the protocol is extended.
            (cmd::ACK, MsgType::Notify) => {
                Action::Reply(error_frame(&frame, Code::NotLoggedIn, "log in first"))
            }
            (_, MsgType::Notify | MsgType::Response) => Action::None,
        }
    }

    /// Input the decoder refused: answer as PROTOCOL.md names, then close.
    pub fn handle_frame_error(&mut self, err: &FrameError) -> Action {
        let error = match (err.code(), err.header()) {
            (Some(code), Some(h)) => {
                let (msg_type, seq) = match MsgType::from_wire(h.msg_type) {
                    Some(MsgType::Request) => (MsgType::Response, h.seq),
                    _ => (MsgType::Notify, 0),
                };
                let body = ErrorBody {
                    code: code.wire(),
                    message: err.to_string(),
                };
                Some(encode_frame(cmd::ERROR, msg_type, h.log_id, seq, &body))
            }
            _ => None,
        };
        self.close_with_kick(error, KickReason::ProtocolError, CloseWhy::Protocol)
    }

    /// The transport under the frames failed (over WebSocket: a message that is not exactly one
    /// frame, a text message, an oversize message whose frame header is unknown, a framing
    /// violation): the ERROR named, if any, as a notify (there is no request to echo), then
    /// KICK 5 if logged in, then close.
    pub fn handle_transport_error(&mut self, error: Option<(Code, &str)>) -> Action {
        if matches!(self.phase, Phase::Closing(_)) {
            return Action::None;
        }
        let error = error.map(|(code, message)| {
            let body = ErrorBody {
                code: code.wire(),
                message: message.into(),
            };
            encode_frame(cmd::ERROR, MsgType::Notify, 0, 0, &body)
        });
        self.close_with_kick(error, KickReason::ProtocolError, CloseWhy::Protocol)
    }

    /// The shell kicks this session (duplicate login, drain, admin...): KICK if logged in, then
    /// close.
    pub fn kick(&mut self, reason: KickReason, message: &str) -> Action {
        if matches!(self.phase, Phase::Closing(_)) {
            return Action::None;
        }
        let frames = match self.phase {
            Phase::LoggedIn(_) => vec![kick_frame(reason, message)],
            _ => Vec::new(),
        };
        self.close(frames, CloseWhy::Kicked(reason))
    }

    /// [`ConnSession::kick`] with a KICK body built by the shell (a drain's carries
    /// `reconnect_to` and `retry_after_ms`).
    pub fn kick_with(&mut self, reason: KickReason, body: Kick) -> Action {
        if matches!(self.phase, Phase::Closing(_)) {
            return Action::None;
        }
        let frames = match self.phase {
            Phase::LoggedIn(_) => vec![encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &body)],
            _ => Vec::new(),
        };
        self.close(frames, CloseWhy::Kicked(reason))
    }

    /// The LOGIN passed: the connection is now `session`. Returns the LoginResp to queue.
    pub fn login_accepted(
        &mut self,
        session: LoggedIn,
        resp: LoginResp,
        log_id: u32,
        seq: u32,
    ) -> Bytes {
        debug_assert_eq!(self.phase, Phase::LoginPending);
        self.phase = Phase::LoggedIn(session);
        encode_frame(cmd::LOGIN, MsgType::Response, log_id, seq, &resp)
    }

    /// The LOGIN was refused with `code`. UNAUTHENTICATED closes the connection; any other code
    /// leaves it open until the login deadline.
    pub fn login_refused(&mut self, code: Code, message: &str, log_id: u32, seq: u32) -> Action {
        let body = LoginResp {
            code: code.wire(),
            message: message.into(),
            ..Default::default()
        };
        let reply = encode_frame(cmd::LOGIN, MsgType::Response, log_id, seq, &body);
        if code == Code::Unauthenticated {
            return self.close(vec![reply], CloseWhy::LoginRefused);
        }
        self.phase = Phase::AwaitingLogin;
        Action::Reply(reply)
    }

    fn handle_login(&mut self, frame: Frame) -> Action {
        let refuse = |code: Code, message: &str| {
            let body = LoginResp {
                code: code.wire(),
                message: message.into(),
                ..Default::default()
            };
            Action::Reply(encode_frame(
                cmd::LOGIN,
                MsgType::Response,
                frame.log_id,
                frame.seq,
                &body,
            ))
        };
        match self.phase {
            Phase::AwaitingLogin => {}
            Phase::LoginPending => {
                return refuse(Code::BadRequest, "a LOGIN is already in progress");
            }
            _ => return refuse(Code::BadRequest, "already logged in"),
        }
        let req = match LoginReq::decode(frame.body) {
            Ok(req) => req,
            Err(_) => return refuse(Code::BadRequest, "LoginReq does not decode"),
        };
        if req.uid == 0 {
            return refuse(Code::BadRequest, "uid 0 is invalid");
        }
        self.phase = Phase::LoginPending;
        Action::Login {
            req,
            log_id: frame.log_id,
            seq: frame.seq,
        }
    }

    fn close_with_kick(
        &mut self,
        first: Option<Bytes>,
        reason: KickReason,
        why: CloseWhy,
    ) -> Action {
        let mut frames: Vec<Bytes> = first.into_iter().collect();
        if matches!(self.phase, Phase::LoggedIn(_)) {
            frames.push(kick_frame(reason, ""));
        }
        self.close(frames, why)
    }

    fn close(&mut self, frames: Vec<Bytes>, why: CloseWhy) -> Action {
        let who = match std::mem::replace(&mut self.phase, Phase::Closing(None)) {
            Phase::LoggedIn(who) | Phase::Closing(Some(who)) => Some(who),
            _ => None,
        };
        self.phase = Phase::Closing(who);
        Action::Close { frames, why }
    }
}

/// An ERROR answering `frame`: a response echoing its seq for a request, a notify otherwise.
pub fn error_frame(frame: &Frame, code: Code, message: &str) -> Bytes {
    let body = ErrorBody {
        code: code.wire(),
        message: message.into(),
    };
    match frame.msg_type {
        MsgType::Request => encode_frame(
            cmd::ERROR,
            MsgType::Response,
            frame.log_id,
            frame.seq,
            &body,
        ),
        _ => encode_frame(cmd::ERROR, MsgType::Notify, frame.log_id, 0, &body),
    }
}

/// A KICK notify.
pub fn kick_frame(reason: KickReason, message: &str) -> Bytes {
    let body = Kick {
        reason: reason.wire(),
        message: message.into(),
        ..Default::default()
    };
    encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &body)
}

#[cfg(test)]
mod tests;
