//! ConnSession on virtual time: no sockets, no clock.

use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;

use super::*;
use crate::protocol::pb::{Ack, Error as ErrorBody, LoginReq};
use crate::protocol::{FrameDecoder, Header, MsgType, cmd};

const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
const HEARTBEAT: Duration = Duration::from_secs(30);
const IDLE: Duration = Duration::from_secs(90);
const PROBE: Duration = Duration::from_secs(60);

fn session(t0: Instant) -> ConnSession {
    ConnSession::new(t0, t0 + LOGIN_TIMEOUT, HEARTBEAT)
}

fn frame(cmd: u8, msg_type: MsgType, seq: u32, body: impl Message) -> Frame {
    Frame {
        cmd,
        msg_type,
        log_id: 0xABCD,
        seq,
        body: body.encode_to_vec().into(),
    }
}

fn decode_one(bytes: &Bytes) -> Frame {
    let mut buf = bytes::BytesMut::from(&bytes[..]);
    let f = FrameDecoder::new(1 << 20)
        .decode(&mut buf)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    f
}

fn reply(action: Action) -> Frame {
    match action {
        Action::Reply(b) => decode_one(&b),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn log_in(s: &mut ConnSession, uid: u64, now: Instant) {
    let req = LoginReq {
        uid,
        token: "t".into(),
        device_id: "d".into(),
        ..Default::default()
    };
    match s.handle_frame(frame(cmd::LOGIN, MsgType::Request, 1, req), now) {
        Action::Login { req, log_id, seq } => {
            let who = LoggedIn {
                uid: req.uid,
                device_id: req.device_id.into(),
                session_id: 5,
            };
            let _ = s.login_accepted(who, LoginResp::default(), log_id, seq);
        }
        other => panic!("expected Login, got {other:?}"),
    }
}

#[test]
fn ping_is_answered_before_login_echoing_seq_and_log_id() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let r = reply(s.handle_frame(frame(cmd::PING, MsgType::Request, 9, ()), t0));
    assert_eq!(
        (r.cmd, r.msg_type, r.seq, r.log_id),
        (cmd::PING, MsgType::Response, 9, 0xABCD)
    );
    assert!(r.body.is_empty());
}

#[test]
fn commands_before_login_get_not_logged_in_and_keep_the_connection() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let r = reply(s.handle_frame(frame(cmd::SEND, MsgType::Request, 4, ()), t0));
    assert_eq!(
        (r.cmd, r.msg_type, r.seq),
        (cmd::ERROR, MsgType::Response, 4)
    );
    assert_eq!(
        ErrorBody::decode(r.body).unwrap().code,
        Code::NotLoggedIn.wire()
    );
    let r = reply(s.handle_frame(
        frame(cmd::ACK, MsgType::Notify, 0, Ack { msg_ids: vec![1] }),
        t0,
    ));
    assert_eq!((r.cmd, r.msg_type, r.seq), (cmd::ERROR, MsgType::Notify, 0));
    assert_eq!(
        ErrorBody::decode(r.body).unwrap().code,
        Code::NotLoggedIn.wire()
    );
    assert_eq!(s.phase(), &Phase::AwaitingLogin);
}

#[test]
fn undecodable_or_zero_uid_login_gets_code_1_and_stays_open() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let bad = Frame {
        cmd: cmd::LOGIN,
        msg_type: MsgType::Request,
        log_id: 1,
        seq: 2,
        body: Bytes::from_static(&[0xff, 0xff]),
    };
    let r = reply(s.handle_frame(bad, t0));
    assert_eq!(
        LoginResp::decode(r.body).unwrap().code,
        Code::BadRequest.wire()
    );
    let zero = LoginReq {
        uid: 0,
        ..Default::default()
    };
    let r = reply(s.handle_frame(frame(cmd::LOGIN, MsgType::Request, 3, zero), t0));
    assert_eq!(
        LoginResp::decode(r.body).unwrap().code,
        Code::BadRequest.wire()
    );
    assert_eq!(s.phase(), &Phase::AwaitingLogin);
}

#[test]
fn refused_token_closes_with_login_resp_code_2() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let req = LoginReq {
        uid: 3,
        ..Default::default()
    };
    assert!(matches!(
        s.handle_frame(frame(cmd::LOGIN, MsgType::Request, 1, req), t0),
        Action::Login { .. }
    ));
    match s.login_refused(Code::Unauthenticated, "token expired", 1, 1) {
        Action::Close {
            frames,
            why: CloseWhy::LoginRefused,
        } => {
            let r = decode_one(&frames[0]);
            assert_eq!(LoginResp::decode(r.body).unwrap().code, 2);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn login_on_a_logged_in_connection_gets_code_1_and_changes_nothing() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    let again = LoginReq {
        uid: 43,
        ..Default::default()
    };
    let r = reply(s.handle_frame(frame(cmd::LOGIN, MsgType::Request, 2, again), t0));
    assert_eq!(LoginResp::decode(r.body).unwrap().code, 1);
    assert_eq!(s.logged_in().unwrap().uid, 42);
}

#[test]
fn connection_that_never_logs_in_closes_at_the_login_deadline_without_a_frame() {
    let t0 = Instant::now();
    let mut s = session(t0);
    assert_eq!(s.poll_timeout(), Some(t0 + LOGIN_TIMEOUT));
    // Frames before LOGIN do not move the login deadline.
    let _ = s.handle_frame(
        frame(cmd::PING, MsgType::Request, 1, ()),
        t0 + Duration::from_secs(9),
    );
    assert_eq!(
        s.handle_timeout(t0 + LOGIN_TIMEOUT - Duration::from_millis(1)),
        Action::None
    );
    assert_eq!(
        s.handle_timeout(t0 + LOGIN_TIMEOUT),
        Action::Close {
            frames: vec![],
            why: CloseWhy::LoginTimeout
        }
    );
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn silent_session_is_probed_with_one_ping_after_two_heartbeats() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    assert_eq!(s.poll_timeout(), Some(t0 + PROBE));
    assert_eq!(
        s.handle_timeout(t0 + PROBE - Duration::from_millis(1)),
        Action::None
    );
    let ping = reply(s.handle_timeout(t0 + PROBE));
    assert_eq!((ping.cmd, ping.msg_type), (cmd::PING, MsgType::Request));
    assert_ne!(ping.seq, 0, "a request carries a seq");
    // One probe per silence: next comes the idle deadline.
    assert_eq!(s.poll_timeout(), Some(t0 + IDLE));
    assert_eq!(
        s.handle_timeout(t0 + PROBE + Duration::from_secs(1)),
        Action::None
    );
    // The client's answer is a frame: the session lives on, and the next silence is probed again.
    let t1 = t0 + PROBE + Duration::from_secs(2);
    let answer = s.handle_frame(frame(cmd::PING, MsgType::Response, ping.seq, ()), t1);
    assert_eq!(answer, Action::PingAnswered { seq: ping.seq });
    assert_eq!(s.poll_timeout(), Some(t1 + PROBE));
}

#[test]
fn idle_session_closes_with_kick_6_three_heartbeats_after_its_last_frame() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    let t1 = t0 + Duration::from_secs(60);
    let _ = s.handle_frame(frame(cmd::PING, MsgType::Request, 2, ()), t1);
    assert_eq!(s.poll_timeout(), Some(t1 + PROBE));
    assert_eq!(
        s.handle_timeout(t0 + IDLE),
        Action::None,
        "activity moved the deadline"
    );
    assert!(
        matches!(s.handle_timeout(t1 + PROBE), Action::Reply(_)),
        "the probe"
    );
    match s.handle_timeout(t1 + IDLE) {
        Action::Close {
            frames,
            why: CloseWhy::Idle,
        } => {
            let k = decode_one(&frames[0]);
            assert_eq!((k.cmd, k.msg_type, k.seq), (cmd::KICK, MsgType::Notify, 0));
            assert_eq!(Kick::decode(k.body).unwrap().reason, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn logout_answers_then_closes_without_kick() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    match s.handle_frame(frame(cmd::LOGOUT, MsgType::Request, 8, ()), t0) {
        Action::Close {
            frames,
            why: CloseWhy::Logout,
        } => {
            assert_eq!(frames.len(), 1);
            let r = decode_one(&frames[0]);
            assert_eq!(
                (r.cmd, r.msg_type, r.seq),
                (cmd::LOGOUT, MsgType::Response, 8)
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_request_gets_bad_request_and_unknown_notify_is_ignored() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    let r = reply(s.handle_frame(frame(0x55, MsgType::Request, 3, ()), t0));
    assert_eq!((r.cmd, r.seq), (cmd::ERROR, 3));
    assert_eq!(
        ErrorBody::decode(r.body).unwrap().code,
        Code::BadRequest.wire()
    );
    assert_eq!(
        s.handle_frame(frame(0x55, MsgType::Notify, 0, ()), t0),
        Action::None
    );
    // A known command with a msg_type its row does not list is an unknown command.
    let r = reply(s.handle_frame(frame(cmd::PUSH, MsgType::Request, 4, ()), t0));
    assert_eq!(
        ErrorBody::decode(r.body).unwrap().code,
        Code::BadRequest.wire()
    );
    assert!(s.logged_in().is_some());
}

#[test]
fn message_path_frames_are_forwarded_once_logged_in() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    for (c, t) in [
        (cmd::SEND, MsgType::Request),
        (cmd::ACK, MsgType::Notify),
        (cmd::SYNC, MsgType::Request),
    ] {
        assert!(matches!(s.handle_frame(frame(c, t, 1, ()), t0), Action::Forward(f) if f.cmd == c));
    }
}

fn header(msg_type: u8, seq: u32) -> Header {
    Header {
        version: 2,
        cmd: cmd::PING,
        msg_type,
        log_id: 77,
        seq,
        len: 0,
    }
}

#[test]
fn frame_errors_send_the_named_error_then_kick_5_when_logged_in() {
    let t0 = Instant::now();
    let mut fresh = session(t0);
    let err = FrameError::UnsupportedVersion {
        header: header(0, 12),
    };
    match fresh.handle_frame_error(&err) {
        Action::Close {
            frames,
            why: CloseWhy::Protocol,
        } => {
            assert_eq!(frames.len(), 1, "no KICK before login");
            let e = decode_one(&frames[0]);
            assert_eq!(
                (e.cmd, e.msg_type, e.seq, e.log_id),
                (cmd::ERROR, MsgType::Response, 12, 77)
            );
            assert_eq!(
                ErrorBody::decode(e.body).unwrap().code,
                Code::UnsupportedVersion.wire()
            );
        }
        other => panic!("{other:?}"),
    }
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    match s.handle_frame_error(&FrameError::BadMagic) {
        Action::Close { frames, .. } => {
            assert_eq!(frames.len(), 1, "bad magic names no ERROR, only the KICK");
            assert_eq!(Kick::decode(decode_one(&frames[0]).body).unwrap().reason, 5);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn transport_errors_send_the_named_error_as_a_notify_then_kick_5_when_logged_in() {
    let t0 = Instant::now();
    let mut fresh = session(t0);
    match fresh.handle_transport_error(None) {
        Action::Close {
            frames,
            why: CloseWhy::Protocol,
        } => assert!(
            frames.is_empty(),
            "nothing named, nothing sent before login"
        ),
        other => panic!("{other:?}"),
    }
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    match s.handle_transport_error(Some((Code::BadRequest, "text"))) {
        Action::Close { frames, .. } => {
            assert_eq!(frames.len(), 2, "ERROR then KICK");
            let e = decode_one(&frames[0]);
            assert_eq!((e.cmd, e.msg_type, e.seq), (cmd::ERROR, MsgType::Notify, 0));
            assert_eq!(
                ErrorBody::decode(e.body).unwrap().code,
                Code::BadRequest.wire()
            );
            assert_eq!(Kick::decode(decode_one(&frames[1]).body).unwrap().reason, 5);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.handle_transport_error(None),
        Action::None,
        "already closing"
    );
}

#[test]
fn kick_of_a_logged_in_session_sends_its_reason_and_nothing_after_closing() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    match s.kick(KickReason::DuplicateLogin, "logged in elsewhere") {
        Action::Close {
            frames,
            why: CloseWhy::Kicked(KickReason::DuplicateLogin),
        } => {
            assert_eq!(Kick::decode(decode_one(&frames[0]).body).unwrap().reason, 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.kick(KickReason::Admin, ""), Action::None);
    assert_eq!(
        s.handle_frame(frame(cmd::PING, MsgType::Request, 1, ()), t0),
        Action::None
    );
}

#[test]
fn unanswered_delivery_probe_closes_with_kick_6_and_an_answer_clears_it() {
    let t0 = Instant::now();
    let probe_timeout = Duration::from_secs(5);
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    let ping = reply(s.probe_delivery(t0, probe_timeout));
    assert_eq!((ping.cmd, ping.msg_type), (cmd::PING, MsgType::Request));
    assert_eq!(
        s.probe_delivery(t0, probe_timeout),
        Action::None,
        "one probe at a time"
    );
    assert_eq!(s.poll_timeout(), Some(t0 + probe_timeout));
    // Another frame is not an answer; the PING response with its seq is.
    let _ = s.handle_frame(
        frame(cmd::PING, MsgType::Request, 9, ()),
        t0 + Duration::from_secs(1),
    );
    assert_eq!(s.poll_timeout(), Some(t0 + probe_timeout));
    let answer = frame(cmd::PING, MsgType::Response, ping.seq, ());
    assert_eq!(
        s.handle_frame(answer, t0 + Duration::from_secs(2)),
        Action::PingAnswered { seq: ping.seq }
    );
    assert_eq!(s.handle_timeout(t0 + probe_timeout), Action::None);

    let t1 = t0 + Duration::from_secs(10);
    let _ = reply(s.probe_delivery(t1, probe_timeout));
    match s.handle_timeout(t1 + probe_timeout) {
        Action::Close {
            frames,
            why: CloseWhy::ProbeUnanswered,
        } => {
            assert_eq!(Kick::decode(decode_one(&frames[0]).body).unwrap().reason, 6);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_closing_session_still_knows_who_it_was() {
    let t0 = Instant::now();
    let mut s = session(t0);
    log_in(&mut s, 42, t0);
    let _ = s.kick(KickReason::SlowConsumer, "");
    assert!(s.logged_in().is_none());
    assert_eq!(s.identity().map(|w| w.uid), Some(42));
    let mut fresh = session(t0);
    let _ = fresh.handle_timeout(t0 + LOGIN_TIMEOUT);
    assert!(fresh.identity().is_none());
}
