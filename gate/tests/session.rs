//! Session life (PROTOCOL.md "Session rules" 1-2, "Errors"): PING, LOGOUT, duplicate login,
//! the idle deadline, and the gate's own shutdown.

mod support;

use std::time::{Duration, Instant};

use gate::protocol::{MsgType, cmd};
use support::{
    TestGate, WAIT, assert_alive, assert_closed_silently, assert_kicked, assert_silent_for,
};

/// Sends a PING with chosen `log_id` and `seq` and checks the answer echoes both, empty.
fn assert_ping_echoed(client: &mut gate::client::Client, log_id: u32, seq: u32) {
    client
        .send_frame(cmd::PING, MsgType::Request, log_id, seq, &())
        .expect("send PING");
    let frame = client.recv_frame(WAIT).expect("PING response");
    assert_eq!(frame.cmd, cmd::PING, "{frame:?}");
    assert_eq!(frame.msg_type, MsgType::Response, "{frame:?}");
    assert_eq!((frame.seq, frame.log_id), (seq, log_id), "{frame:?}");
    assert!(
        frame.body.is_empty(),
        "PING response body is empty: {frame:?}"
    );
}

#[test]
fn ping_before_and_after_login_is_answered_echoing_seq_and_log_id() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    assert_ping_echoed(&mut client, 0x0102_0304, 7);
    // seq 0 and extreme values are echoed as they are.
    assert_ping_echoed(&mut client, 0, 0);
    assert_ping_echoed(&mut client, u32::MAX, u32::MAX);
    let resp = client.login(11, "dev", "d").expect("LOGIN answered");
    assert_eq!(resp.code, 0);
    assert_ping_echoed(&mut client, 0xDEAD_BEEF, 8);
    gate.stop();
}

#[test]
fn pipelined_pings_are_all_answered() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(12, "d");
    let mut batch = Vec::new();
    for seq in 1..=50u32 {
        batch.extend_from_slice(&gate::protocol::encode_frame(
            cmd::PING,
            MsgType::Request,
            seq.wrapping_mul(3),
            seq,
            &(),
        ));
    }
    client.send_raw(&batch).expect("send 50 PINGs in one write");
    let mut seen: Vec<u32> = (1..=50)
        .map(|_| {
            let f = client.recv_frame(WAIT).expect("PING response");
            assert_eq!(
                (f.cmd, f.msg_type, f.log_id),
                (cmd::PING, MsgType::Response, f.seq.wrapping_mul(3))
            );
            f.seq
        })
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    gate.stop();
}

#[test]
fn logout_is_answered_empty_then_the_gate_closes_without_kick() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(21, "d");
    client
        .send_frame(cmd::LOGOUT, MsgType::Request, 0xABCD, 5, &())
        .expect("send LOGOUT");
    let frame = client.recv_frame(WAIT).expect("LOGOUT response");
    assert_eq!(
        (frame.cmd, frame.msg_type),
        (cmd::LOGOUT, MsgType::Response),
        "{frame:?}"
    );
    assert_eq!((frame.seq, frame.log_id), (5, 0xABCD), "{frame:?}");
    assert!(frame.body.is_empty(), "{frame:?}");
    assert_closed_silently(&mut client);
    gate.stop();
}

#[test]
fn logout_frees_the_device_for_a_new_login_that_kicks_nobody() {
    let gate = TestGate::start();
    let (mut first, _) = gate.login(22, "d");
    first.logout().expect("LOGOUT answered");
    assert_closed_silently(&mut first);
    let (mut second, _) = gate.login(22, "d");
    assert_alive(&mut second);
    gate.stop();
}

#[test]
fn duplicate_login_kicks_the_older_connection_with_reason_1() {
    let gate = TestGate::start();
    let (mut first, first_resp) = gate.login(1001, "phone");
    let (mut second, second_resp) = gate.login(1001, "phone");
    assert_ne!(first_resp.session_id, second_resp.session_id);
    assert_kicked(&mut first, 1);
    assert_alive(&mut second);
    gate.stop();
}

#[test]
fn login_from_another_device_kicks_nobody() {
    let gate = TestGate::start();
    let (mut phone, _) = gate.login(1002, "phone");
    let (mut tablet, _) = gate.login(1002, "tablet");
    // An empty device_id is one more device.
    let (mut unnamed, _) = gate.login(1002, "");
    assert_alive(&mut phone);
    assert_silent_for(&mut phone, Duration::from_millis(300));
    assert_alive(&mut tablet);
    assert_alive(&mut unnamed);
    // Same device_id, another uid: no relation either.
    let (mut other_user, _) = gate.login(1003, "phone");
    assert_silent_for(&mut phone, Duration::from_millis(300));
    assert_alive(&mut phone);
    assert_alive(&mut other_user);
    gate.stop();
}

#[test]
fn repeated_duplicate_logins_leave_only_the_newest_connection() {
    let gate = TestGate::start();
    let (mut a, _) = gate.login(1004, "d");
    let (mut b, _) = gate.login(1004, "d");
    assert_kicked(&mut a, 1);
    let (mut c, _) = gate.login(1004, "d");
    assert_kicked(&mut b, 1);
    assert_alive(&mut c);
    gate.stop();
}

#[test]
fn idle_session_is_kicked_with_reason_6_after_three_heartbeats() {
    let gate = TestGate::start_with(|c| c.gate.heartbeat_secs = 1);
    let (mut idle, resp) = gate.login(31, "d");
    assert_eq!(resp.heartbeat_secs, 1);
    // This client ignores the gate's probe, so the probe is what it sees first.
    idle.set_auto_pong(false);
    let start = Instant::now();
    let probe = idle
        .recv_frame(Duration::from_secs(2) + WAIT)
        .expect("the gate probes a silent session with PING");
    assert_eq!(
        (probe.cmd, probe.msg_type),
        (gate::protocol::cmd::PING, MsgType::Request)
    );
    assert_ne!(probe.seq, 0, "a PING request carries a seq");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "probe comes after 2 x heartbeat of silence, came after {:?}",
        start.elapsed()
    );
    let frame = idle
        .recv_frame(Duration::from_secs(3) + WAIT)
        .expect("KICK at the idle deadline");
    let elapsed = start.elapsed();
    support::assert_kick(&frame, 6);
    assert!(
        elapsed >= Duration::from_millis(2500) && elapsed < Duration::from_secs(5),
        "idle deadline is 3 x 1 s, kicked after {elapsed:?}"
    );
    assert_closed_silently(&mut idle);
    gate.stop();
}

#[test]
fn session_that_pings_every_half_heartbeat_stays_open() {
    let gate = TestGate::start_with(|c| {
        c.gate.heartbeat_secs = 1;
        c.gate.login_timeout_secs = 1;
    });
    let (mut client, _) = gate.login(32, "d");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(4500) {
        assert_alive(&mut client);
        assert_silent_for(&mut client, Duration::from_millis(500));
    }
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn silent_client_that_answers_the_gates_pings_stays_open() {
    let gate = TestGate::start_with(|c| c.gate.heartbeat_secs = 1);
    let (mut client, _) = gate.login(35, "d");
    // Sends nothing of its own; the client library answers the gate's PING probes.
    assert_silent_for(&mut client, Duration::from_millis(4500));
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn idle_kick_of_one_session_leaves_an_active_one_open() {
    let gate = TestGate::start_with(|c| c.gate.heartbeat_secs = 1);
    let (mut idle, _) = gate.login(33, "d");
    idle.set_auto_pong(false);
    let (mut active, _) = gate.login(34, "d");
    let start = Instant::now();
    let mut kicked = false;
    while !kicked {
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "idle session never kicked"
        );
        assert_alive(&mut active);
        match idle.recv_frame(Duration::from_millis(500)) {
            // The gate's probe; this client does not answer it.
            Ok(frame) if frame.cmd == cmd::PING && frame.msg_type == MsgType::Request => {}
            Ok(frame) => {
                support::assert_kick(&frame, 6);
                kicked = true;
            }
            Err(gate::client::ClientError::Timeout) => {}
            Err(e) => panic!("expected KICK 6 or silence, got {e}"),
        }
    }
    assert_closed_silently(&mut idle);
    assert_alive(&mut active);
    gate.stop();
}

#[test]
fn stopping_the_gate_kicks_sessions_with_reason_2_and_closes() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(41, "d");
    let mut not_logged_in = gate.connect();
    assert_alive(&mut not_logged_in);
    gate.stop();
    assert_kicked(&mut client, 2);
    // PROTOCOL.md names no frame for closing a connection that never logged in on shutdown:
    // nothing, or the same KICK 2.
    let frames = not_logged_in.wait_closed(WAIT).expect("closed on stop");
    match frames.as_slice() {
        [] => {}
        [kick] => {
            support::assert_kick(kick, 2);
        }
        _ => panic!("expected a close, at most after KICK 2: {frames:?}"),
    }
}

#[test]
fn a_kicked_session_leaves_the_registry() {
    let gate = TestGate::start_with(|c| c.gate.heartbeat_secs = 1);
    let (mut idle, _) = gate.login(36, "d");
    idle.set_auto_pong(false);
    let frames = idle
        .wait_closed(Duration::from_secs(4) + WAIT)
        .expect("closed at the idle deadline");
    assert!(frames.iter().any(|f| f.cmd == cmd::KICK), "{frames:?}");
    let stats = gate.stats_when(|s| s.iter().all(|s| s.sessions == 0 && s.connections == 0));
    assert!(stats.iter().all(|s| s.sessions == 0), "{stats:?}");
    gate.stop();
}
