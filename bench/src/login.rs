//! LOGIN for the login scenarios (`connect`, `idle`): tokens (HS256 JWTs signed by the tool with
//! `--jwt-secret`, or any text for a dev-mode gate), the LOGIN frames encoded once before the
//! measured window ([`LoginFrames`]), what a gate frame means to a login connection
//! ([`on_frame`]: LoginResp, PING, KICK, ERROR), and how an attempt failed ([`Failure`], counted
//! per [`FailureKind`]).
//!
//! Sans-IO: never touches a socket or the clock (the token expiry is passed in). Reading the
//! gate's answers allocates nothing (varint fields are read in place) except on failure, where
//! the refusal's message is decoded for the report.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use gate::protocol::{FrameError, MsgType, cmd, encode_frame, pb};
use prost::Message;

use crate::wire::{BodyParseError, RawFrame, put_header, varint_field};

/// `seq` of the LOGIN request (and of the LoginResp answering it).
pub const LOGIN_SEQ: u32 = 1;
/// `seq` of the LOGOUT request (`--close logout`).
pub const LOGOUT_SEQ: u32 = 2;
/// The `device_id` every bench connection logs in with.
pub const DEVICE: &str = "bench";
/// `LoginReq.platform` 5: other.
const PLATFORM_OTHER: u32 = 5;

/// How the gate checks tokens (its `auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Any token is accepted (dev-mode gate on loopback); the tool sends `dev`.
    Dev,
    /// HS256 JWTs signed with `--jwt-secret` (`sub` = the uid, `exp` = now + run + 1 h).
    Jwt,
}

impl AuthMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dev => "dev",
            Self::Jwt => "jwt",
        }
    }
}

/// Makes the token for a uid.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub mode: AuthMode,
    pub secret: Vec<u8>,
    /// `exp` claim, unix seconds.
    pub exp: u64,
}

impl Tokens {
    pub fn token(&self, uid: u64) -> String {
        match self.mode {
            AuthMode::Dev => "dev".into(),
            AuthMode::Jwt => router::jwt::sign_hs256(&self.secret, uid, self.exp),
        }
    }
}

/// LOGIN request frames for the uids `uid_base .. uid_base + len`, encoded (and their tokens
/// signed) once, back to back in one buffer: sending one is a slice, with no signing, encoding or
/// allocation in the measured window.
#[derive(Debug, Clone)]
pub struct LoginFrames {
    uid_base: u64,
    bytes: Vec<u8>,
    /// End offset of frame `i` in `bytes`; frame `i` starts where `i - 1` ends.
    ends: Vec<usize>,
}

impl LoginFrames {
    pub fn build(tokens: &Tokens, uid_base: u64, count: usize) -> Self {
        let mut bytes = Vec::new();
        let mut ends = Vec::with_capacity(count);
        for uid in (uid_base..).take(count) {
            let req = pb::LoginReq {
                uid,
                token: tokens.token(uid),
                device_id: DEVICE.into(),
                platform: PLATFORM_OTHER,
                client_version: env!("CARGO_PKG_VERSION").into(),
            };
            bytes.extend_from_slice(&encode_frame(
                cmd::LOGIN,
                MsgType::Request,
                LOGIN_SEQ,
                LOGIN_SEQ,
                &req,
            ));
            ends.push(bytes.len());
        }
        Self {
            uid_base,
            bytes,
            ends,
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The uid of frame `index`.
    pub fn uid(&self, index: usize) -> u64 {
        self.uid_base + index as u64
    }

    /// Frame `index` (taken modulo [`LoginFrames::len`], so any counter can pick one).
    pub fn frame(&self, index: u64) -> (u64, &[u8]) {
        let len = self.ends.len().max(1) as u64;
        // Below `len`, a usize.
        let i = (index % len) as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        (self.uid(i), &self.bytes[start..self.ends[i]])
    }

    /// Bytes held (for the report of the tool's memory).
    pub fn bytes(&self) -> usize {
        self.bytes.len() + self.ends.len() * std::mem::size_of::<usize>()
    }
}

/// Appends the LOGOUT request.
pub fn put_logout(out: &mut Vec<u8>) {
    put_header(
        out,
        cmd::LOGOUT,
        MsgType::Request,
        LOGOUT_SEQ,
        LOGOUT_SEQ,
        0,
    );
}

/// What a successful LoginResp said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedIn {
    /// The gate's heartbeat interval (PROTOCOL.md: the client PINGs at this period).
    pub heartbeat_secs: u32,
    /// Largest frame body the gate sends from now on.
    pub max_frame: u32,
}

/// Handles one gate frame on a login connection: a PING request is answered into `out`, the
/// LoginResp to our LOGIN gives `Some(LoggedIn)` (code 0) or [`Failure::Refused`], a KICK is
/// [`Failure::Kicked`], an ERROR is [`Failure::Error`]; anything else (PING answers, LOGOUT's
/// answer, notifies) is ignored.
pub fn on_frame(frame: RawFrame<'_>, out: &mut Vec<u8>) -> Result<Option<LoggedIn>, Failure> {
    match (frame.cmd, frame.msg_type) {
        (cmd::PING, MsgType::Request) => {
            put_header(
                out,
                cmd::PING,
                MsgType::Response,
                frame.log_id,
                frame.seq,
                0,
            );
        }
        (cmd::LOGIN, MsgType::Response) if frame.seq == LOGIN_SEQ => {
            let field = |n| varint_field(frame.body, n).map_err(Failure::Body);
            let code = field(1)?.unwrap_or(0);
            if code != 0 {
                // The failure path only: decode the message for the report.
                let message = pb::LoginResp::decode(frame.body)
                    .map(|r| r.message)
                    .unwrap_or_default();
                return Err(Failure::Refused {
                    code: clamp_u32(code),
                    message,
                });
            }
            return Ok(Some(LoggedIn {
                heartbeat_secs: clamp_u32(field(3)?.unwrap_or(0)),
                max_frame: match field(7)? {
                    Some(n) if n > 0 => clamp_u32(n),
                    _ => gate::protocol::DEFAULT_MAX_FRAME,
                },
            }));
        }
        (cmd::KICK, _) => {
            let reason = varint_field(frame.body, 1).map_err(Failure::Body)?;
            return Err(Failure::Kicked {
                reason: clamp_u32(reason.unwrap_or(0)),
            });
        }
        (cmd::ERROR, _) => {
            let code = varint_field(frame.body, 1).map_err(Failure::Body)?;
            return Err(Failure::Error {
                code: clamp_u32(code.unwrap_or(0)),
            });
        }
        _ => {}
    }
    Ok(None)
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// How a login connection failed.
#[derive(Debug)]
pub enum Failure {
    /// The socket could not be opened, bound or connected, or the LOGIN not written (the
    /// connection was never established).
    Connect(io::Error),
    /// No LoginResp within `--timeout` (connect included).
    Timeout,
    /// LoginResp with a code other than 0.
    Refused { code: u32, message: String },
    /// KICK (e.g. 1 duplicate login, 2 gate at capacity, 6 idle).
    Kicked { reason: u32 },
    /// The gate closed the connection (end of stream) while an answer was awaited or while the
    /// run held it.
    Closed,
    /// A read or write error after the connection was established (e.g. reset).
    Io(io::Error),
    /// A frame the gate should not send.
    Frame(FrameError),
    /// A LoginResp, KICK or ERROR body that does not parse.
    Body(BodyParseError),
    /// An ERROR frame.
    Error { code: u32 },
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Timeout => f.write_str("timed out"),
            Self::Refused { code, message } => {
                write!(f, "LOGIN refused with code {code}: {message}")
            }
            Self::Kicked { reason } => write!(f, "KICK with reason {reason}"),
            Self::Closed => f.write_str("the gate closed the connection"),
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Body(e) => write!(f, "bad body: {e}"),
            Self::Error { code } => write!(f, "ERROR frame with code {code}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Connect(_) => FailureKind::Connect,
            Self::Timeout => FailureKind::Timeout,
            Self::Refused { .. } => FailureKind::Refused,
            Self::Kicked { .. } => FailureKind::Kicked,
            Self::Closed | Self::Io(_) => FailureKind::Closed,
            Self::Frame(_) | Self::Body(_) | Self::Error { .. } => FailureKind::Protocol,
        }
    }
}

/// The failure classes a summary reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Connect = 0,
    Timeout = 1,
    Refused = 2,
    Kicked = 3,
    Closed = 4,
    Protocol = 5,
}

impl FailureKind {
    pub const ALL: [FailureKind; 6] = [
        Self::Connect,
        Self::Timeout,
        Self::Refused,
        Self::Kicked,
        Self::Closed,
        Self::Protocol,
    ];

    /// The name in the summary and the JSON (`failures_<name>`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
            Self::Kicked => "kicked",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
        }
    }
}

/// Failures of one executor by kind (relaxed atomics; read by the coordinating thread).
#[derive(Debug, Default)]
pub struct FailureCounts([AtomicU64; 6]);

impl FailureCounts {
    pub fn add(&self, kind: FailureKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Failures {
        Failures(self.0.each_ref().map(|c| c.load(Ordering::Relaxed)))
    }
}

/// Failures by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures(pub [u64; 6]);

impl Failures {
    pub fn get(&self, kind: FailureKind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn plus(self, other: Failures) -> Failures {
        let mut sum = self;
        for (a, b) in sum.0.iter_mut().zip(other.0) {
            *a += b;
        }
        sum
    }

    /// `connect 0, timeout 0, refused 0, kicked 0, closed 0, protocol 0`.
    pub fn to_text(&self) -> String {
        FailureKind::ALL
            .iter()
            .map(|k| format!("{} {}", k.name(), self.get(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `"failures":N,"failures_connect":N,...` (a fragment of a JSON object).
    pub fn to_json_fields(&self) -> String {
        let mut json = format!("\"failures\":{}", self.total());
        for k in FailureKind::ALL {
            json.push_str(&format!(",\"failures_{}\":{}", k.name(), self.get(k)));
        }
        json
    }
}

#[cfg(test)]
mod tests {
    use router::jwt::JwtVerifier;

    use super::*;
    use crate::wire::split_frame;

    const SECRET: &[u8] = b"s3cret";

    fn jwt_tokens() -> Tokens {
        Tokens {
            mode: AuthMode::Jwt,
            secret: SECRET.to_vec(),
            exp: 2_000_000_000,
        }
    }

    fn decode_login(frame: &[u8]) -> pb::LoginReq {
        let (f, n) = split_frame(frame, 65_536)
            .expect("valid")
            .expect("complete");
        assert_eq!(n, frame.len(), "exactly one frame");
        assert_eq!(
            (f.cmd, f.msg_type, f.seq),
            (cmd::LOGIN, MsgType::Request, LOGIN_SEQ)
        );
        pb::LoginReq::decode(f.body).expect("LoginReq")
    }

    #[test]
    fn jwt_tokens_verify_as_the_gate_checks_them() {
        let tokens = jwt_tokens();
        let verifier = JwtVerifier::new(SECRET);
        for uid in [1, 1_000_000, u64::MAX] {
            let token = tokens.token(uid);
            assert_eq!(verifier.verify(uid, &token, 1_999_999_999), Ok(()));
            assert!(verifier.verify(uid.wrapping_add(1), &token, 0).is_err());
        }
        let dev = Tokens {
            mode: AuthMode::Dev,
            ..jwt_tokens()
        };
        assert_eq!(dev.token(7), "dev");
    }

    #[test]
    fn login_frames_are_pre_encoded_per_uid_and_picked_modulo_the_count() {
        let frames = LoginFrames::build(&jwt_tokens(), 1_000_000, 3);
        assert_eq!(frames.len(), 3);
        let verifier = JwtVerifier::new(SECRET);
        for i in 0..7u64 {
            let (uid, frame) = frames.frame(i);
            assert_eq!(uid, 1_000_000 + i % 3);
            let req = decode_login(frame);
            assert_eq!(req.uid, uid);
            assert_eq!(req.device_id, DEVICE);
            assert_eq!(verifier.verify(uid, &req.token, 0), Ok(()));
        }
    }

    fn frame(cmd: u8, msg_type: MsgType, seq: u32, body: &impl Message) -> Vec<u8> {
        encode_frame(cmd, msg_type, seq, seq, body).to_vec()
    }

    fn handle(bytes: &[u8], out: &mut Vec<u8>) -> Result<Option<LoggedIn>, Failure> {
        let (f, _) = split_frame(bytes, 65_536)
            .expect("valid")
            .expect("complete");
        on_frame(f, out)
    }

    #[test]
    fn login_response_is_read_without_decoding_strings() {
        let mut out = Vec::new();
        let ok = pb::LoginResp {
            code: 0,
            heartbeat_secs: 30,
            session_id: 5,
            gate_id: "g".into(),
            max_frame: 131_072,
            ..Default::default()
        };
        let got = handle(
            &frame(cmd::LOGIN, MsgType::Response, LOGIN_SEQ, &ok),
            &mut out,
        );
        assert_eq!(
            got.expect("ok"),
            Some(LoggedIn {
                heartbeat_secs: 30,
                max_frame: 131_072
            })
        );
        let refused = pb::LoginResp {
            code: 2,
            message: "bad token signature".into(),
            ..Default::default()
        };
        let got = handle(
            &frame(cmd::LOGIN, MsgType::Response, LOGIN_SEQ, &refused),
            &mut out,
        );
        match got {
            Err(e @ Failure::Refused { code: 2, .. }) => {
                assert_eq!(e.kind(), FailureKind::Refused);
                assert!(e.to_string().contains("bad token signature"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another seq is not the answer to our LOGIN.
        let got = handle(&frame(cmd::LOGIN, MsgType::Response, 9, &refused), &mut out);
        assert!(matches!(got, Ok(None)));
        assert!(out.is_empty());
    }

    #[test]
    fn ping_is_answered_and_kick_or_error_fail_the_connection() {
        let mut out = Vec::new();
        let ping = encode_frame(cmd::PING, MsgType::Request, 77, 5, &());
        assert!(matches!(handle(&ping, &mut out), Ok(None)));
        assert_eq!(
            out,
            encode_frame(cmd::PING, MsgType::Response, 77, 5, &()).to_vec()
        );
        let kick = pb::Kick {
            reason: 2,
            message: "at capacity".into(),
            reconnect_to: vec!["127.0.0.1:7001".into()],
            retry_after_ms: 1500,
        };
        let got = handle(&frame(cmd::KICK, MsgType::Notify, 0, &kick), &mut out);
        match got {
            Err(e @ Failure::Kicked { reason: 2 }) => assert_eq!(e.kind(), FailureKind::Kicked),
            other => panic!("expected a KICK, got {other:?}"),
        }
        let err = pb::Error {
            code: 8,
            message: "not logged in".into(),
        };
        let got = handle(&frame(cmd::ERROR, MsgType::Response, 3, &err), &mut out);
        match got {
            Err(e @ Failure::Error { code: 8 }) => assert_eq!(e.kind(), FailureKind::Protocol),
            other => panic!("expected an ERROR, got {other:?}"),
        }
        let pong = encode_frame(cmd::PING, MsgType::Response, 1, 1, &());
        assert!(matches!(handle(&pong, &mut vec![]), Ok(None)));
    }

    #[test]
    fn failures_are_summed_by_kind() {
        let counts = FailureCounts::default();
        counts.add(FailureKind::Timeout);
        counts.add(FailureKind::Timeout);
        counts.add(FailureKind::Kicked);
        let a = counts.snapshot();
        assert_eq!(a.get(FailureKind::Timeout), 2);
        assert_eq!(a.total(), 3);
        let sum = a.plus(a);
        assert_eq!(sum.get(FailureKind::Kicked), 2);
        assert_eq!(
            sum.to_text(),
            "connect 0, timeout 4, refused 0, kicked 2, closed 0, protocol 0"
        );
        assert_eq!(
            sum.to_json_fields(),
            "\"failures\":6,\"failures_connect\":0,\"failures_timeout\":4,\"failures_refused\":0,\"failures_kicked\":2,\"failures_closed\":0,\"failures_protocol\":0"
        );
    }
}
