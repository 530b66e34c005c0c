//! LOGIN (PROTOCOL.md "Session rules" 1 and "Tokens"): what a successful LoginResp carries, the
//! JWT refusals (code 2, then close), refusals that leave the connection open (code 1), and the
//! login deadline.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gate::client::{Client, ClientError, decode_body, log_id_for};
use gate::protocol::{MsgType, cmd, encode_frame, pb};
use gate::shard::{owner_shard, shard_of_session};
use support::{
    JWT_SECRET, TestGate, WAIT, assert_alive, assert_closed_silently, assert_kicked, jwt,
};

fn login_req(uid: u64, token: &str, device_id: &str) -> pb::LoginReq {
    pb::LoginReq {
        uid,
        token: token.into(),
        device_id: device_id.into(),
        platform: 4,
        client_version: "test".into(),
    }
}

/// Logs in with `token` on a JWT gate and expects LoginResp code 2, then a close with nothing
/// more sent.
fn assert_token_refused(uid: u64, token: &str) {
    let gate = TestGate::jwt();
    let mut client = gate.connect();
    let resp = client.login(uid, token, "d").expect("LOGIN answered");
    assert_eq!(
        resp.code, 2,
        "refused token must get UNAUTHENTICATED: {resp:?}"
    );
    assert_closed_silently(&mut client);
    gate.stop();
}

#[test]
fn test_signer_reproduces_the_protocol_vector() {
    let v = support::vectors();
    let j = &v["jwt"];
    let secret = j["secret"].as_str().expect("secret");
    let uid = j["uid"].as_u64().expect("uid");
    let exp = j["exp"].as_u64().expect("exp");
    assert_eq!(
        jwt::token(secret, uid, exp),
        j["token"].as_str().expect("token")
    );
}

#[test]
fn dev_login_answers_with_the_configured_parameters() {
    let gate = TestGate::start_with(|c| {
        c.gate.heartbeat_secs = 7;
        c.gate.max_frame = 32_768;
    });
    let mut client = gate.connect();
    let uid = 150;
    let seq = client
        .request(cmd::LOGIN, &login_req(uid, "anything", "phone-1"))
        .expect("send LOGIN");
    let frame = client.recv_response(seq, WAIT).expect("LoginResp");
    assert_eq!((frame.cmd, frame.msg_type), (cmd::LOGIN, MsgType::Response));
    assert_eq!(frame.log_id, log_id_for(seq), "LoginResp echoes log_id");
    let resp: pb::LoginResp = decode_body(&frame).expect("LoginResp decodes");

    assert_eq!(resp.code, 0, "{resp:?}");
    assert_eq!(resp.heartbeat_secs, 7);
    assert_eq!(resp.max_frame, 32_768);
    assert_eq!(resp.gate_id, support::GATE_ID);
    assert_ne!(resp.session_id, 0);
    assert_eq!(shard_of_session(resp.session_id), owner_shard(uid, 2));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let now_ms = u64::try_from(now.as_millis()).expect("ms since 1970 fit a u64");
    assert!(
        resp.server_time_ms.abs_diff(now_ms) < 60_000,
        "server_time_ms {} is not near now ({now_ms})",
        resp.server_time_ms
    );
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn jwt_login_with_the_vector_token_succeeds() {
    let gate = TestGate::jwt();
    let v = support::vectors();
    let token = v["jwt"]["token"].as_str().expect("token");
    let mut client = gate.connect();
    let resp = client.login(42, token, "phone").expect("LOGIN answered");
    assert_eq!(resp.code, 0, "{resp:?}");
    assert_eq!(shard_of_session(resp.session_id), owner_shard(42, 2));
    assert_alive(&mut client);

    let mut other = gate.connect();
    let token = jwt::token(JWT_SECRET, 77, jwt::FAR_FUTURE);
    let resp = other.login(77, &token, "phone").expect("LOGIN answered");
    assert_eq!(resp.code, 0, "{resp:?}");
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn token_with_a_bad_signature_is_refused_with_code_2_and_closed() {
    let token = jwt::token("not-the-secret", 42, jwt::FAR_FUTURE);
    assert_token_refused(42, &token);
}

#[test]
fn expired_token_is_refused_with_code_2_and_closed() {
    let token = jwt::token(JWT_SECRET, 42, jwt::LONG_AGO);
    assert_token_refused(42, &token);
}

#[test]
fn token_for_another_uid_is_refused_with_code_2_and_closed() {
    let token = jwt::token(JWT_SECRET, 43, jwt::FAR_FUTURE);
    assert_token_refused(42, &token);
}

#[test]
fn token_with_sub_as_a_json_number_is_refused_with_code_2_and_closed() {
    let claims = format!(r#"{{"sub":42,"exp":{}}}"#, jwt::FAR_FUTURE);
    let token = jwt::sign(JWT_SECRET.as_bytes(), jwt::HS256, &claims);
    assert_token_refused(42, &token);
}

#[test]
fn token_without_exp_is_refused_with_code_2_and_closed() {
    let token = jwt::sign(JWT_SECRET.as_bytes(), jwt::HS256, r#"{"sub":"42"}"#);
    assert_token_refused(42, &token);
}

#[test]
fn token_with_alg_none_is_refused_with_code_2_and_closed() {
    let claims = format!(r#"{{"sub":"42","exp":{}}}"#, jwt::FAR_FUTURE);
    assert_token_refused(42, &jwt::unsigned(&claims));
}

#[test]
fn token_with_another_alg_is_refused_even_if_the_mac_is_hs256() {
    let claims = format!(r#"{{"sub":"42","exp":{}}}"#, jwt::FAR_FUTURE);
    let header = r#"{"alg":"HS384","typ":"JWT"}"#;
    assert_token_refused(42, &jwt::sign(JWT_SECRET.as_bytes(), header, &claims));
}

#[test]
fn token_that_is_not_a_jwt_is_refused_with_code_2_and_closed() {
    assert_token_refused(42, "not.a-jwt");
}

#[test]
fn uid_0_is_refused_with_code_1_and_the_connection_stays_open() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    let resp = client.login(0, "dev", "d").expect("LOGIN answered");
    assert_eq!(resp.code, 1, "{resp:?}");
    assert_alive(&mut client);
    // Still before LOGIN: a valid one is accepted.
    let resp = client.login(5, "dev", "d").expect("LOGIN answered");
    assert_eq!(resp.code, 0, "{resp:?}");
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn login_on_a_logged_in_connection_gets_code_1_and_changes_nothing() {
    let gate = TestGate::start();
    let (mut first, resp) = gate.login(1001, "phone");
    let again = first.login(2002, "dev", "phone").expect("LOGIN answered");
    assert_eq!(again.code, 1, "{again:?}");
    assert_alive(&mut first);
    // Still uid 1001 on "phone": a new login of that pair kicks this connection.
    let (mut second, resp2) = gate.login(1001, "phone");
    assert_ne!(resp.session_id, resp2.session_id);
    assert_kicked(&mut first, 1);
    assert_alive(&mut second);
    gate.stop();
}

#[test]
fn silent_connection_is_closed_at_the_login_deadline_with_nothing_sent() {
    let gate = TestGate::start_with(|c| c.gate.login_timeout_secs = 1);
    let (mut logged_in, _) = gate.login(5, "d");
    let mut client = gate.connect();
    let start = Instant::now();
    assert_closed_silently(&mut client);
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}, login_timeout is 1 s"
    );
    // The login deadline does not apply once logged in.
    assert_alive(&mut logged_in);
    gate.stop();
}

#[test]
fn login_trickled_a_byte_at_a_time_is_closed_at_the_login_deadline() {
    let gate = TestGate::start_with(|c| c.gate.login_timeout_secs = 1);
    let mut client = gate.connect();
    let frame = encode_frame(
        cmd::LOGIN,
        MsgType::Request,
        1,
        1,
        &login_req(5, "dev", "slow-device-with-a-long-name"),
    );
    let start = Instant::now();
    for byte in frame.iter() {
        if client.send_raw(&[*byte]).is_err() {
            break; // the gate has closed already
        }
        match client.recv_frame(Duration::from_millis(200)) {
            Err(ClientError::Timeout) => {}
            Err(ClientError::Closed) => break,
            Ok(f) => panic!("nothing is sent before the login completes, got {f:?}"),
            Err(e) => panic!("unexpected error while trickling: {e}"),
        }
    }
    assert_closed_silently(&mut client);
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(3),
        "a trickle must not extend the 1 s login deadline: closed after {elapsed:?}"
    );
    gate.stop();
}

#[test]
fn pings_before_login_do_not_extend_the_login_deadline() {
    let gate = TestGate::start_with(|c| c.gate.login_timeout_secs = 1);
    let mut client = gate.connect();
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still open after 3 s of PINGs"
        );
        match client.ping() {
            Ok(()) => {}
            Err(ClientError::Closed) => break,
            Err(e) => panic!("PING before LOGIN: {e}"),
        }
        match client.recv_frame(Duration::from_millis(200)) {
            Err(ClientError::Timeout) => {}
            Err(ClientError::Closed) => break,
            Ok(f) => panic!("nothing but PING responses expected, got {f:?}"),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(start.elapsed() >= Duration::from_millis(900));
    gate.stop();
}

#[test]
fn refused_login_does_not_disturb_another_connection() {
    let gate = TestGate::jwt();
    let token = jwt::token(JWT_SECRET, 9, jwt::FAR_FUTURE);
    let mut good = Client::connect(gate.addr()).expect("connect");
    assert_eq!(good.login(9, &token, "d").expect("LOGIN answered").code, 0);
    let mut bad = gate.connect();
    let resp = bad
        .login(9, &jwt::token(JWT_SECRET, 9, jwt::LONG_AGO), "d")
        .expect("LOGIN answered");
    assert_eq!(resp.code, 2);
    assert_closed_silently(&mut bad);
    assert_alive(&mut good);
    gate.stop();
}
