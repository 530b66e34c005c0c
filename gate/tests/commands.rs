//! Frame-level refusals that keep the connection open (PROTOCOL.md "Frame", "Errors"):
//! NOT_LOGGED_IN before LOGIN, BAD_REQUEST for unknown request commands, unknown notify
//! commands ignored.

mod support;

use gate::client::decode_body;
use gate::protocol::{MsgType, cmd, pb};
use support::{TestGate, WAIT, assert_alive, assert_error_response};

const NOT_LOGGED_IN: u32 = 8;
const BAD_REQUEST: u32 = 1;

fn send_req() -> pb::SendReq {
    pb::SendReq {
        client_msg_id: 0x1234_5678_9ABC_DEF0,
        conv_type: 1,
        to: 2,
        content_type: 1,
        body: bytes::Bytes::from_static(b"hello"),
    }
}

/// Sends a PING and expects its response to be the very next frame: nothing was sent in
/// between (an ignored frame got no answer).
fn assert_next_frame_is_the_ping_response(client: &mut gate::client::Client) {
    let seq = client.request(cmd::PING, &()).expect("send PING");
    let frame = client.recv_frame(WAIT).expect("a frame");
    assert_eq!(
        (frame.cmd, frame.msg_type, frame.seq),
        (cmd::PING, MsgType::Response, seq),
        "expected only the PING response, got {frame:?}"
    );
}

#[test]
fn send_before_login_gets_error_not_logged_in_and_the_connection_stays() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    client
        .send_frame(cmd::SEND, MsgType::Request, 0x5EED, 41, &send_req())
        .expect("send SEND");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_error_response(&frame, NOT_LOGGED_IN, 41, 0x5EED);
    assert_alive(&mut client);
    // And it may still log in.
    assert_eq!(client.login(3, "dev", "d").expect("LOGIN answered").code, 0);
    gate.stop();
}

#[test]
fn every_request_but_login_and_ping_before_login_gets_not_logged_in() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    for (i, command) in [cmd::LOGOUT, cmd::PULL, cmd::READ, cmd::SYNC, cmd::BIZ]
        .into_iter()
        .enumerate()
    {
        let seq = 100 + u32::try_from(i).expect("small");
        client
            .send_frame(command, MsgType::Request, seq ^ 0xFFFF, seq, &())
            .expect("send request");
        let frame = client.recv_frame(WAIT).expect("ERROR");
        assert_error_response(&frame, NOT_LOGGED_IN, seq, seq ^ 0xFFFF);
    }
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn ack_before_login_gets_error_not_logged_in_as_a_notify() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    client
        .notify(
            cmd::ACK,
            &pb::Ack {
                msg_ids: vec![1, 2, 3],
            },
        )
        .expect("send ACK");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_eq!(frame.cmd, cmd::ERROR, "{frame:?}");
    assert_eq!(
        frame.msg_type,
        MsgType::Notify,
        "a refused notify gets a notify: {frame:?}"
    );
    assert_eq!(frame.seq, 0, "{frame:?}");
    let error: pb::Error = decode_body(&frame).expect("ERROR decodes");
    assert_eq!(error.code, NOT_LOGGED_IN, "{error:?}");
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn unknown_request_before_login_gets_not_logged_in() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    client
        .send_frame(0x55, MsgType::Request, 9, 90, &())
        .expect("send unknown request");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_error_response(&frame, NOT_LOGGED_IN, 90, 9);
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn unknown_request_after_login_gets_bad_request_and_the_connection_stays() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(51, "d");
    client
        .send_frame(0x55, MsgType::Request, 0xC0FFEE, 77, &())
        .expect("send unknown request");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_error_response(&frame, BAD_REQUEST, 77, 0xC0FFEE);
    // With a body the gate cannot know the meaning of: same answer.
    client
        .send_frame(0x6E, MsgType::Request, 1, 78, &send_req())
        .expect("send unknown request");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_error_response(&frame, BAD_REQUEST, 78, 1);
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn unknown_notify_after_login_is_ignored() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(52, "d");
    client
        .notify(0x56, &send_req())
        .expect("send unknown notify");
    assert_next_frame_is_the_ping_response(&mut client);
    gate.stop();
}

#[test]
fn known_command_with_an_unlisted_msg_type_is_an_unknown_command() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(53, "d");
    // KICK is G->C notify only: as a request it is an unknown request.
    client
        .send_frame(cmd::KICK, MsgType::Request, 4, 44, &())
        .expect("send KICK request");
    let frame = client.recv_frame(WAIT).expect("ERROR");
    assert_error_response(&frame, BAD_REQUEST, 44, 4);
    // SEND is a request only: as a notify it is an unknown notify, ignored.
    client
        .notify(cmd::SEND, &send_req())
        .expect("send SEND notify");
    assert_next_frame_is_the_ping_response(&mut client);
    gate.stop();
}

#[test]
fn login_with_an_undecodable_body_gets_code_1_and_the_connection_stays() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    // Field 1 (varint) with its value cut off.
    let frame = support::raw_frame(cmd::LOGIN, MsgType::Request, 3, 33, &[0x08]);
    client.send_raw(&frame).expect("send LOGIN");
    let resp = client.recv_frame(WAIT).expect("LoginResp");
    assert_eq!(
        (resp.cmd, resp.msg_type),
        (cmd::LOGIN, MsgType::Response),
        "{resp:?}"
    );
    assert_eq!((resp.seq, resp.log_id), (33, 3), "{resp:?}");
    let login: pb::LoginResp = decode_body(&resp).expect("LoginResp decodes");
    assert_eq!(login.code, BAD_REQUEST, "{login:?}");
    assert_alive(&mut client);
    assert_eq!(
        client.login(54, "dev", "d").expect("LOGIN answered").code,
        0
    );
    gate.stop();
}

#[test]
fn login_body_with_invalid_utf8_token_gets_code_1() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    // uid = 5, token = [0xFF, 0xFE] (not UTF-8; proto3 strings must be).
    let body = [0x08, 0x05, 0x12, 0x02, 0xFF, 0xFE];
    client
        .send_raw(&support::raw_frame(
            cmd::LOGIN,
            MsgType::Request,
            0,
            34,
            &body,
        ))
        .expect("send LOGIN");
    let frame = client.recv_response(34, WAIT).expect("LoginResp");
    let login: pb::LoginResp = decode_body(&frame).expect("LoginResp decodes");
    assert_eq!(login.code, BAD_REQUEST, "{login:?}");
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn login_with_unknown_fields_is_accepted() {
    let gate = TestGate::start();
    let mut client = gate.connect();
    let mut body = prost::Message::encode_to_vec(&pb::LoginReq {
        uid: 55,
        token: "dev".into(),
        device_id: "d".into(),
        platform: 5,
        client_version: "x".into(),
    });
    // Field 99 (varint 1) and field 100 (bytes "zz"): extensions this gate does not know.
    body.extend_from_slice(&[0x98, 0x06, 0x01, 0xA2, 0x06, 0x02, b'z', b'z']);
    client
        .send_raw(&support::raw_frame(
            cmd::LOGIN,
            MsgType::Request,
            0,
            35,
            &body,
        ))
        .expect("send LOGIN");
    let frame = client.recv_response(35, WAIT).expect("LoginResp");
    let login: pb::LoginResp = decode_body(&frame).expect("LoginResp decodes");
    assert_eq!(login.code, 0, "{login:?}");
    assert_alive(&mut client);
    gate.stop();
}
