//! Input that ends a connection (PROTOCOL.md "Frame", "Errors"): bad magic, bad msg_type,
//! unsupported version, a length above `max_frame`; before LOGIN the gate closes after only the
//! ERROR named for the case, after LOGIN it adds KICK 5. A misbehaving connection never harms
//! another one.

mod support;

use std::time::Duration;

use gate::client::Client;
use gate::protocol::{MAGIC, MsgType, VERSION, cmd, encode_frame, pb};
use support::{
    TestGate, WAIT, assert_alive, assert_closed_silently, assert_error_response, assert_kick,
    assert_kicked, garbage, header,
};

const TOO_LARGE: u32 = 6;
const UNSUPPORTED_VERSION: u32 = 7;
const PROTOCOL_ERROR: u32 = 5;

/// A logged-in connection that must outlive every misbehaving neighbour.
fn bystander(gate: &TestGate) -> Client {
    gate.login(999, "bystander").0
}

#[test]
fn bad_magic_before_login_is_closed_with_nothing_sent() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    client
        .send_raw(&header(0x494D_4758, VERSION, cmd::PING, 0, 1, 1, 0))
        .expect("send");
    assert_closed_silently(&mut client);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn garbage_before_login_is_closed_with_nothing_sent() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    client.send_raw(&garbage(64)).expect("send");
    assert_closed_silently(&mut client);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn http_request_is_never_answered_with_frames() {
    // "GET " starts the HTTP/WebSocket branch: whatever the gate answers there, it never
    // answers in frames, and it closes or keeps the connection without harming others.
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    client
        .send_raw(b"GET /no-such-path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    // The reply, if any, is HTTP: the frame decoder sees a bad magic or a close.
    match client.recv_frame(WAIT) {
        Err(gate::client::ClientError::Frame(_)) | Err(gate::client::ClientError::Closed) => {}
        other => panic!("expected HTTP (not a frame) or a close, got {other:?}"),
    }
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn garbage_after_login_gets_kick_5_then_close() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = gate.login(61, "d");
    client.send_raw(&garbage(64)).expect("send");
    assert_kicked(&mut client, PROTOCOL_ERROR);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn bad_magic_after_login_gets_kick_5_then_close() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = gate.login(62, "d");
    client
        .send_raw(&header(0x4A4D_4757, VERSION, cmd::PING, 0, 1, 1, 0))
        .expect("send");
    assert_kicked(&mut client, PROTOCOL_ERROR);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn bad_msg_type_before_login_is_closed_with_nothing_sent() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    client
        .send_raw(&header(MAGIC, VERSION, cmd::PING, 3, 1, 1, 0))
        .expect("send");
    assert_closed_silently(&mut client);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn bad_msg_type_after_login_gets_kick_5_then_close() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = gate.login(63, "d");
    client
        .send_raw(&header(MAGIC, VERSION, cmd::PING, 0xFF, 1, 1, 0))
        .expect("send");
    assert_kicked(&mut client, PROTOCOL_ERROR);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn unsupported_version_before_login_gets_error_7_echoing_seq_then_close() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    client
        .send_raw(&header(MAGIC, 2, cmd::PING, 0, 0x7777, 71, 0))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error] => assert_error_response(error, UNSUPPORTED_VERSION, 71, 0x7777),
        _ => panic!("expected exactly ERROR 7 then close, got {frames:?}"),
    }
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn unsupported_version_after_login_gets_error_7_then_kick_5_then_close() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = gate.login(64, "d");
    client
        .send_raw(&header(MAGIC, 0, cmd::PING, 0, 0x7878, 72, 0))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error, kick] => {
            assert_error_response(error, UNSUPPORTED_VERSION, 72, 0x7878);
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected ERROR 7, KICK 5, close; got {frames:?}"),
    }
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn header_announcing_more_than_max_frame_gets_error_6_before_the_body_then_close() {
    let gate = TestGate::start_with(|c| c.gate.max_frame = 4096);
    let mut other = bystander(&gate);
    let mut client = gate.connect();
    // Only the header: the refusal is decided from it, the body is never sent.
    client
        .send_raw(&header(MAGIC, VERSION, cmd::LOGIN, 0, 0x6666, 81, 4097))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error] => assert_error_response(error, TOO_LARGE, 81, 0x6666),
        _ => panic!("expected exactly ERROR 6 then close, got {frames:?}"),
    }
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn header_announcing_more_than_max_frame_after_login_gets_error_6_then_kick_5() {
    let gate = TestGate::start_with(|c| c.gate.max_frame = 4096);
    let mut other = bystander(&gate);
    let (mut client, resp) = gate.login(65, "d");
    assert_eq!(resp.max_frame, 4096);
    client
        .send_raw(&header(MAGIC, VERSION, cmd::SEND, 0, 0x6767, 82, u32::MAX))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error, kick] => {
            assert_error_response(error, TOO_LARGE, 82, 0x6767);
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected ERROR 6, KICK 5, close; got {frames:?}"),
    }
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn frame_of_exactly_max_frame_is_accepted() {
    let gate = TestGate::start_with(|c| c.gate.max_frame = 4096);
    let mut client = gate.connect();
    let req = (0..4096)
        .map(|n| pb::LoginReq {
            uid: 66,
            token: "x".repeat(n),
            device_id: "d".into(),
            platform: 5,
            client_version: String::new(),
        })
        .find(|r| prost::Message::encoded_len(r) == 4096)
        .expect("some token length makes a 4096-byte body");
    let resp = client.login_with(&req).expect("LOGIN answered");
    assert_eq!(resp.code, 0, "{resp:?}");
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn frames_split_across_writes_or_batched_in_one_write_are_read() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    let login = encode_frame(
        cmd::LOGIN,
        MsgType::Request,
        0,
        1,
        &pb::LoginReq {
            uid: 67,
            token: "dev".into(),
            device_id: "d".into(),
            platform: 5,
            client_version: String::new(),
        },
    );
    // The LOGIN one byte per write (each pushed out at once: TCP_NODELAY).
    for byte in login.iter() {
        client.send_raw(&[*byte]).expect("send a byte");
    }
    let frame = client.recv_response(1, WAIT).expect("LoginResp");
    let resp: pb::LoginResp = gate::client::decode_body(&frame).expect("decodes");
    assert_eq!(resp.code, 0, "{resp:?}");
    // Three PINGs in one write, the last one cut in two writes.
    let mut batch = Vec::new();
    for seq in 2..=4 {
        batch.extend_from_slice(&encode_frame(cmd::PING, MsgType::Request, 0, seq, &()));
    }
    let cut = batch.len() - 7;
    client.send_raw(&batch[..cut]).expect("send");
    for seq in 2..=3 {
        assert_eq!(
            client.recv_response(seq, WAIT).expect("PING response").cmd,
            cmd::PING
        );
    }
    client.send_raw(&batch[cut..]).expect("send");
    assert_eq!(
        client.recv_response(4, WAIT).expect("PING response").cmd,
        cmd::PING
    );
    gate.stop();
}

#[test]
fn truncated_frame_then_client_close_harms_nothing() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut before_login = gate.connect();
    let ping = encode_frame(cmd::PING, MsgType::Request, 0, 1, &());
    before_login
        .send_raw(&ping[..10])
        .expect("send half a header");
    let (mut after_login, _) = gate.login(68, "d");
    let send = encode_frame(
        cmd::SEND,
        MsgType::Request,
        0,
        2,
        &pb::SendReq {
            client_msg_id: 1,
            conv_type: 1,
            to: 999,
            content_type: 1,
            body: bytes::Bytes::from_static(&[7; 100]),
        },
    );
    after_login
        .send_raw(&send[..40])
        .expect("send a header and part of the body");
    assert_alive(&mut other);
    drop(before_login);
    drop(after_login);
    assert_alive(&mut other);
    // The uid whose connection vanished logs in again on the same device without trouble.
    let (mut again, _) = gate.login(68, "d");
    assert_alive(&mut again);
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn connection_reset_by_the_client_mid_frame_harms_nothing() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = gate.login(69, "d");
    socket2::SockRef::from(client.stream())
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0: close sends RST");
    client
        .send_raw(&header(MAGIC, VERSION, cmd::PING, 0, 0, 1, 100))
        .expect("send");
    drop(client);
    assert_alive(&mut other);
    let (mut again, _) = gate.login(69, "d");
    assert_alive(&mut again);
    gate.stop();
}

#[test]
fn many_misbehaving_connections_at_once_leave_a_logged_in_one_working() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut bad: Vec<Client> = (0..20).map(|_| gate.connect()).collect();
    for (i, c) in bad.iter_mut().enumerate() {
        let bytes = match i % 4 {
            0 => garbage(32),
            1 => header(MAGIC, VERSION, cmd::PING, 9, 0, 1, 0),
            2 => header(MAGIC, 3, cmd::PING, 0, 0, 1, 0),
            _ => header(MAGIC, VERSION, cmd::PING, 0, 0, 1, u32::MAX),
        };
        c.send_raw(&bytes).expect("send");
    }
    for c in &mut bad {
        c.wait_closed(WAIT).expect("each bad connection is closed");
    }
    assert_alive(&mut other);
    gate.stop();
}
