//! `auth.mode = "backend"` (PROTOCOL.md "Tokens"): the embedded reference backend verifies LOGIN
//! tokens, HS256 JWTs signed with `backend.auth_secret`; a token it refuses gets LoginResp code
//! 2 and a close, one it accepts opens a session that can use the message path.

mod support;

use support::im::{SINGLE, assert_push_of, code, send_text, take_push, uid_on};
use support::{TestGate, assert_closed_silently, jwt};

const BACKEND_SECRET: &str = "k";

fn backend_auth_gate() -> TestGate {
    TestGate::start_with(|c| {
        c.auth.mode = gate::config::AuthMode::Backend;
        c.backend.auth_secret = BACKEND_SECRET.into();
    })
}

/// LOGIN with `token` as `uid` is refused with code 2, then the gate closes.
fn assert_refused(uid: u64, token: &str) {
    let gate = backend_auth_gate();
    let mut client = gate.connect();
    let resp = client.login(uid, token, "d").expect("LOGIN answered");
    assert_eq!(resp.code, code::UNAUTHENTICATED, "{resp:?}");
    assert_closed_silently(&mut client);
    gate.stop();
}

#[test]
fn token_signed_with_the_backend_secret_logs_in_on_either_shard() {
    let gate = backend_auth_gate();
    for uid in [uid_on(0, 100), uid_on(1, 100)] {
        let mut client = gate.connect();
        let token = jwt::token(BACKEND_SECRET, uid, jwt::FAR_FUTURE);
        let resp = client.login(uid, &token, "d").expect("LOGIN answered");
        assert_eq!(resp.code, 0, "uid {uid}: {resp:?}");
        assert_ne!(resp.session_id, 0, "{resp:?}");
        support::assert_alive(&mut client);
    }
    gate.stop();
}

#[test]
fn sessions_opened_with_backend_tokens_exchange_messages() {
    let gate = backend_auth_gate();
    let a = uid_on(0, 200);
    let b = uid_on(1, 300);
    let login = |uid: u64| {
        let mut client = gate.connect();
        let token = jwt::token(BACKEND_SECRET, uid, jwt::FAR_FUTURE);
        let resp = client.login(uid, &token, "d").expect("LOGIN answered");
        assert_eq!(resp.code, 0, "uid {uid}: {resp:?}");
        client
    };
    let (mut alice, mut bob) = (login(a), login(b));
    let sent = send_text(&mut alice, SINGLE, b, "authenticated hello");
    assert_push_of(&take_push(&mut bob), &sent, a, a);
    gate.stop();
}

#[test]
fn token_signed_with_another_key_is_refused_with_code_2_then_close() {
    let uid = uid_on(1, 400);
    assert_refused(uid, &jwt::token("not-k", uid, jwt::FAR_FUTURE));
}

#[test]
fn token_for_another_uid_is_refused_with_code_2_then_close() {
    let uid = uid_on(0, 500);
    assert_refused(uid, &jwt::token(BACKEND_SECRET, uid + 1, jwt::FAR_FUTURE));
}

#[test]
fn expired_token_is_refused_with_code_2_then_close() {
    let uid = uid_on(1, 600);
    assert_refused(uid, &jwt::token(BACKEND_SECRET, uid, jwt::LONG_AGO));
}

#[test]
fn unsigned_or_malformed_token_is_refused_with_code_2_then_close() {
    let uid = uid_on(0, 700);
    let claims = format!(r#"{{"sub":"{uid}","exp":{}}}"#, jwt::FAR_FUTURE);
    assert_refused(uid, &jwt::unsigned(&claims));
    assert_refused(uid, "not a token");
}
