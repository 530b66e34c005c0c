//! WebSocket on the client port (PROTOCOL.md "Transport"): the upgrade and its refusals over raw
//! HTTP, sessions over WebSocket beside TCP ones (same PUSH, hand-off to the owner shard with the
//! WebSocket state), an independent client (tungstenite) for interop, and every bad input, each
//! closing that connection only.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gate::client::{Client, decode_body};
use gate::config::WebDemo;
use gate::protocol::ws::{Opcode, accept_key, client_request, write_frame};
use gate::protocol::{MsgType, cmd, encode_frame, pb};
use gate::shard::{owner_shard, shard_of_session};
use support::im::{SHARDS, SINGLE, ack, expect_push, send_text, uid_on};
use support::{Delivered, TestGate, WAIT, assert_alive, assert_error_response, assert_kick, total};

const PROTOCOL_ERROR: u32 = 5;
const BAD_REQUEST: u32 = 1;
const TOO_LARGE: u32 = 6;
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const MASK: [u8; 4] = [1, 2, 3, 4];

fn ws_connect(gate: &TestGate) -> Client {
    Client::connect_ws(gate.addr(), "/ws").expect("WebSocket upgrade")
}

fn ws_login(gate: &TestGate, uid: u64, device: &str) -> (Client, pb::LoginResp) {
    let mut client = ws_connect(gate);
    let resp = client.login(uid, "dev", device).expect("LOGIN answered");
    assert_eq!(resp.code, 0, "login of uid {uid} refused: {resp:?}");
    (client, resp)
}

/// A logged-in TCP connection that must outlive every misbehaving neighbour.
fn bystander(gate: &TestGate) -> Client {
    gate.login(999, "bystander").0
}

/// Sends `request` on a raw socket and reads until the gate closes (within [`WAIT`]).
fn http_exchange(gate: &TestGate, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gate.addr()).expect("connect");
    stream.write_all(request).expect("send");
    read_until_closed(&mut stream)
}

fn read_until_closed(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the gate did not close within {WAIT:?} ({e}); got {answer:?}"),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The gate's answer head to `request` (read up to its blank line, within [`WAIT`]); the
/// connection stays open.
fn http_head(gate: &TestGate, request: &[u8]) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(gate.addr()).expect("connect");
    stream.write_all(request).expect("send");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("an answer within WAIT"),
            1,
            "{head:?}"
        );
        head.push(byte[0]);
    }
    (String::from_utf8(head).expect("ASCII"), stream)
}

fn upgrade_request(path: &str, extra: &str) -> String {
    client_request("gate", path, KEY, None).replace("\r\n\r\n", &format!("\r\n{extra}\r\n"))
}

/// A whole client frame with every field chosen.
fn ws_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = BytesMut::new();
    write_frame(&mut out, fin, opcode, payload, mask);
    out.to_vec()
}

#[test]
fn the_upgrade_answers_101_with_the_rfc_accept() {
    let gate = TestGate::start();
    let (head, _stream) = http_head(&gate, upgrade_request("/ws", "").as_bytes());
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert!(
        head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    gate.stop();
}

#[test]
fn a_tcp_and_a_websocket_client_of_one_user_get_the_same_push() {
    let gate = TestGate::start();
    let receiver = 4001;
    let (mut on_tcp, _) = gate.login(receiver, "phone");
    let (mut on_ws, _) = ws_login(&gate, receiver, "browser");
    let (mut sender, _) = ws_login(&gate, 4002, "browser");
    let sent = send_text(&mut sender, SINGLE, receiver, "to both devices");
    for client in [&mut on_tcp, &mut on_ws] {
        let push = expect_push(client);
        assert_eq!(push.msg_id, sent.msg_id);
        assert_eq!(push.body, sent.body);
        assert_eq!(push.conv_id, 4002);
        ack(client, &[push.msg_id]);
        assert_alive(client);
    }
    gate.stop();
}

#[test]
fn pipelined_group_messages_reach_websocket_members_one_frame_per_message() {
    // Pipelined SENDs fan out in runs, each queued to a session as one joined buffer; over
    // WebSocket every PUSH must still be its own binary message (the client refuses a message
    // that is not exactly one frame), in order, beside TCP members of the same group.
    let gate = TestGate::start();
    let sender_uid = 4101;
    let (mut sender, _) = gate.login(sender_uid, "phone");
    let ws_uids: Vec<u64> = (4102..4106).collect();
    let tcp_uids: Vec<u64> = (4106..4110).collect();
    let mut ws_members: Vec<Client> = ws_uids
        .iter()
        .map(|&uid| ws_login(&gate, uid, "browser").0)
        .collect();
    let mut tcp_members: Vec<Client> = tcp_uids
        .iter()
        .map(|&uid| gate.login(uid, "phone").0)
        .collect();
    let members: Vec<u64> = ws_uids.iter().chain(&tcp_uids).copied().collect();
    let gid = support::im::create_group(&mut sender, "joined runs", &members);
    let seqs: Vec<u32> = (0..200)
        .map(|i| {
            let req = support::im::send_req(
                support::im::GROUP,
                gid,
                support::im::client_msg_id(),
                format!("run message {i}").as_bytes(),
            );
            sender.request(cmd::SEND, &req).expect("send SEND")
        })
        .collect();
    let sent: Vec<u64> = seqs
        .into_iter()
        .map(|seq| {
            let frame = sender.recv_response(seq, WAIT).expect("SendResp");
            let resp: pb::SendResp = decode_body(&frame).expect("SendResp decodes");
            assert_eq!(resp.code, 0, "{resp:?}");
            resp.msg_id
        })
        .collect();
    for (i, member) in ws_members.iter_mut().chain(&mut tcp_members).enumerate() {
        let got: Vec<u64> = support::im::take_pushes(member, sent.len())
            .iter()
            .map(|p| p.msg_id)
            .collect();
        assert_eq!(got, sent, "member {i}: every message once, in order");
        assert_alive(member);
    }
    gate.stop();
}

#[test]
fn websocket_sessions_accepted_by_any_shard_are_handed_to_the_owner_and_work() {
    let delivered = Arc::new(Delivered::default());
    let gate = TestGate::start_observed(|_| {}, delivered.clone());
    // Enough connections that the kernel's SO_REUSEPORT spread lands some on a non-owner
    // shard (all 24 on their owner: probability 2^-24).
    let uids: Vec<u64> = (0..12)
        .flat_map(|i| [uid_on(0, 5000 + i * 100), uid_on(1, 5000 + i * 100)])
        .collect();
    let mut clients = Vec::new();
    for &uid in &uids {
        let mut client = ws_connect(&gate);
        // The LOGIN and, in the same write, the first fragment of a PING: the fragment is
        // still being reassembled when the connection crosses shards.
        let login = pb::LoginReq {
            uid,
            token: "dev".into(),
            device_id: "ws".into(),
            platform: 3,
            client_version: "test".into(),
        };
        let login_seq = client.next_seq();
        let ping_seq = client.next_seq();
        let ping = encode_frame(cmd::PING, MsgType::Request, 7, ping_seq, &());
        let mut wire = ws_frame(
            true,
            Opcode::Binary as u8,
            &encode_frame(cmd::LOGIN, MsgType::Request, 1, login_seq, &login),
            Some(MASK),
        );
        wire.extend(ws_frame(
            false,
            Opcode::Binary as u8,
            &ping[..10],
            Some(MASK),
        ));
        client.send_raw(&wire).expect("send");
        let resp = client.recv_response(login_seq, WAIT).expect("LoginResp");
        let resp: pb::LoginResp = decode_body(&resp).expect("decodes");
        assert_eq!(resp.code, 0, "{resp:?}");
        assert_eq!(
            shard_of_session(resp.session_id),
            owner_shard(uid, SHARDS),
            "uid {uid} lives on its owner shard"
        );
        client
            .send_raw(&ws_frame(true, 0, &ping[10..], Some(MASK)))
            .expect("send");
        let pong = client.recv_response(ping_seq, WAIT).expect("PING answered");
        assert_eq!(pong.cmd, cmd::PING);
        clients.push((uid, resp.session_id, client));
    }
    let stats = gate.stats_when(|s| total(s, |x| x.handoffs_in) > 0);
    assert!(
        total(&stats, |x| x.handoffs_in) > 0,
        "no WebSocket connection was handed off: {stats:?}"
    );
    // SEND, PUSH, ACK between pairs of them, across shards.
    for pair in clients.chunks_mut(2) {
        let [(from_uid, _, from), (to_uid, to_session, to)] = pair else {
            unreachable!("chunks of two");
        };
        let sent = send_text(from, SINGLE, *to_uid, "over websocket");
        let push = expect_push(to);
        assert_eq!((push.msg_id, push.from), (sent.msg_id, *from_uid));
        ack(to, &[push.msg_id]);
        delivered.wait_for(*to_session, push.msg_id);
    }
    gate.stop();
}

#[test]
fn a_standard_client_logs_in_pings_and_closes_cleanly() {
    use tungstenite::Message;
    let gate = TestGate::start();
    let stream = TcpStream::connect(gate.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let url = format!("ws://{}/ws", gate.addr());
    let (mut ws, response) = tungstenite::client(url.as_str(), stream).expect("upgrade");
    assert_eq!(response.status().as_u16(), 101);
    let login = pb::LoginReq {
        uid: 4100,
        token: "dev".into(),
        device_id: "tungstenite".into(),
        platform: 3,
        client_version: "test".into(),
    };
    let frame = encode_frame(cmd::LOGIN, MsgType::Request, 9, 1, &login);
    ws.send(Message::Binary(frame)).expect("send LOGIN");
    let answer = loop {
        match ws.read().expect("LoginResp") {
            Message::Binary(bytes) => break bytes,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a binary LoginResp, got {other:?}"),
        }
    };
    let mut buf = BytesMut::from(&answer[..]);
    let resp = gate::protocol::FrameDecoder::new(65_536)
        .decode(&mut buf)
        .expect("a frame")
        .expect("whole");
    assert!(buf.is_empty(), "one frame per message");
    assert_eq!((resp.cmd, resp.seq), (cmd::LOGIN, 1));
    let resp: pb::LoginResp = decode_body(&resp).expect("decodes");
    assert_eq!(resp.code, 0);
    ws.send(Message::Ping(b"hi"[..].into())).expect("send ping");
    match ws.read().expect("pong") {
        Message::Pong(payload) => assert_eq!(&payload[..], b"hi"),
        other => panic!("expected the pong, got {other:?}"),
    }
    ws.close(None).expect("close");
    match ws.read() {
        Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => {}
        Ok(other) => panic!("expected the close answer, got {other:?}"),
        Err(e) => panic!("close handshake failed: {e}"),
    }
    gate.stop();
}

#[test]
fn malformed_http_gets_400_and_other_paths_404() {
    let gate = TestGate::start_with(|c| c.gate.ws_path = "/chat".into());
    let mut other = bystander(&gate);
    let answer = http_exchange(&gate, b"GET /ws HTTP/1.1\r\nthis is not a header\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let answer = http_exchange(
        &gate,
        upgrade_request("/ws", "")
            .replace(KEY, "c2hvcnQ=")
            .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 400 "), "bad key: {answer}");
    let answer = http_exchange(&gate, b"GET /index.html HTTP/1.1\r\nHost: gate\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    // The alias is served like /ws.
    let mut alias = Client::connect_ws(gate.addr(), "/chat").expect("upgrade on the alias");
    assert_alive(&mut alias);
    assert_alive(&mut other);
    gate.stop();
}

/// Splits an HTTP answer into its head and body; the body's length must be `Content-Length`.
fn page_of(answer: &str) -> (&str, &str) {
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse::<usize>().ok())
        .expect("a Content-Length");
    assert_eq!(body.len(), length, "{head}");
    (head, body)
}

#[test]
fn the_demo_page_is_served_when_on_and_404_when_off() {
    let gate = TestGate::start_with(|c| c.gate.web_demo = WebDemo::On);
    let mut other = bystander(&gate);
    let answer = http_exchange(&gate, b"GET / HTTP/1.1\r\nHost: gate\r\n\r\n");
    let (head, body) = page_of(&answer);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(head.contains("Cache-Control: no-store\r\n"), "{head}");
    assert!(body.contains("<title>imgate"), "{body}");
    let answer = http_exchange(&gate, b"GET /imgate.js?v=1 HTTP/1.1\r\nHost: gate\r\n\r\n");
    let (head, body) = page_of(&answer);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(
        body.contains("export class ImgateClient"),
        "first bytes: {:?}",
        &body[..80]
    );
    // Other paths and methods stay 404; /ws still upgrades.
    let answer = http_exchange(&gate, b"GET /secret HTTP/1.1\r\nHost: gate\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    let mut ws = ws_connect(&gate);
    assert_alive(&mut ws);
    assert_alive(&mut other);
    gate.stop();

    let gate = TestGate::start_with(|c| c.gate.web_demo = WebDemo::Off);
    for path in ["/", "/imgate.js"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gate\r\n\r\n");
        let answer = http_exchange(&gate, request.as_bytes());
        assert!(answer.starts_with("HTTP/1.1 404 "), "{path}: {answer}");
    }
    assert_alive(&mut ws_connect(&gate));
    gate.stop();
}

#[test]
fn a_refused_origin_gets_403() {
    let gate = TestGate::start_with(|c| {
        c.gate.ws_allowed_origins = vec!["https://chat.example".into()];
    });
    let answer = http_exchange(
        &gate,
        upgrade_request("/ws", "Origin: https://evil.example\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    let (answer, _stream) = http_head(
        &gate,
        upgrade_request("/ws", "Origin: https://chat.example\r\n").as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    gate.stop();
}

#[test]
fn oversize_headers_get_431() {
    let gate = TestGate::start_with(|c| c.gate.http_max_header_bytes = 1024);
    let mut other = bystander(&gate);
    let padding = format!("X-Pad: {}\r\n", "a".repeat(2000));
    let answer = http_exchange(&gate, upgrade_request("/ws", &padding).as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn a_slow_request_head_is_closed_after_the_header_deadline() {
    let gate = TestGate::start_with(|c| c.gate.http_header_timeout_ms = 300);
    let mut other = bystander(&gate);
    let started = Instant::now();
    let mut stream = TcpStream::connect(gate.addr()).expect("connect");
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: gate\r\n")
        .expect("send");
    let answer = read_until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the deadline"
    );
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn an_unmasked_frame_is_closed_with_1002() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let mut client = ws_connect(&gate);
    let ping = encode_frame(cmd::PING, MsgType::Request, 1, 1, &());
    client
        .send_raw(&ws_frame(true, Opcode::Binary as u8, &ping, None))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    assert!(frames.is_empty(), "nothing but the close: {frames:?}");
    assert_eq!(client.ws_close_code(), Some(1002));
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn a_reserved_opcode_after_login_gets_kick_5_and_1002() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = ws_login(&gate, 4200, "ws");
    client
        .send_raw(&ws_frame(true, 0x3, b"x", Some(MASK)))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [kick] => {
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected KICK 5 then close, got {frames:?}"),
    }
    assert_eq!(client.ws_close_code(), Some(1002));
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn a_text_message_gets_error_1_kick_5_and_1003() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = ws_login(&gate, 4300, "ws");
    client
        .send_raw(&ws_frame(true, Opcode::Text as u8, b"hello", Some(MASK)))
        .expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error, kick] => {
            assert_eq!((error.cmd, error.msg_type), (cmd::ERROR, MsgType::Notify));
            let body: pb::Error = decode_body(error).expect("ERROR decodes");
            assert_eq!(body.code, BAD_REQUEST);
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected ERROR 1, KICK 5, close; got {frames:?}"),
    }
    assert_eq!(client.ws_close_code(), Some(1003));
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn an_oversize_fragmented_message_gets_too_large_kick_5_and_1009() {
    let gate = TestGate::start_with(|c| c.gate.max_frame = 1024);
    let mut other = bystander(&gate);
    let (mut client, _) = ws_login(&gate, 4400, "ws");
    // A SEND whose header claims a body within max_frame, sent in fragments that pass
    // 22 + max_frame together.
    let mut header = encode_frame(cmd::SEND, MsgType::Request, 0x55, 0x66, &()).to_vec();
    header[18..22].copy_from_slice(&1000u32.to_be_bytes());
    let mut first = header;
    first.resize(600, 0);
    let mut wire = ws_frame(false, Opcode::Binary as u8, &first, Some(MASK));
    wire.extend(ws_frame(false, 0, &[0u8; 400], Some(MASK)));
    wire.extend(ws_frame(true, 0, &[0u8; 100], Some(MASK)));
    client.send_raw(&wire).expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [error, kick] => {
            assert_error_response(error, TOO_LARGE, 0x66, 0x55);
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected ERROR 6, KICK 5, close; got {frames:?}"),
    }
    assert_eq!(client.ws_close_code(), Some(1009));
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn a_message_that_is_not_exactly_one_frame_is_a_protocol_error() {
    let gate = TestGate::start();
    let mut other = bystander(&gate);
    let (mut client, _) = ws_login(&gate, 4500, "ws");
    let mut two = encode_frame(cmd::PING, MsgType::Request, 1, 50, &()).to_vec();
    two.extend_from_slice(&encode_frame(cmd::PING, MsgType::Request, 1, 51, &()));
    client.send_ws_message(&two).expect("send");
    let frames = client.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [kick] => {
            assert_kick(kick, PROTOCOL_ERROR);
        }
        _ => panic!("expected KICK 5 then close, got {frames:?}"),
    }
    assert_eq!(client.ws_close_code(), Some(1002));
    // Half a frame in a message, before LOGIN: closed with nothing sent.
    let mut half = ws_connect(&gate);
    let ping = encode_frame(cmd::PING, MsgType::Request, 1, 1, &());
    half.send_ws_message(&ping[..10]).expect("send");
    assert!(half.wait_closed(WAIT).expect("closed").is_empty());
    assert_eq!(half.ws_close_code(), Some(1002));
    assert_alive(&mut other);
    gate.stop();
}

#[test]
fn a_kicked_websocket_session_gets_its_kick_then_a_close_frame() {
    let gate = TestGate::start();
    let (mut first, _) = ws_login(&gate, 4600, "same");
    let (mut second, _) = ws_login(&gate, 4600, "same");
    let frames = first.wait_closed(WAIT).expect("closed");
    match frames.as_slice() {
        [kick] => {
            assert_kick(kick, 1);
        }
        _ => panic!("expected KICK 1 then close, got {frames:?}"),
    }
    assert_eq!(first.ws_close_code(), Some(1000));
    assert_alive(&mut second);
    gate.stop();
}

#[test]
fn logout_over_websocket_answers_then_closes() {
    let gate = TestGate::start();
    let (mut client, _) = ws_login(&gate, 4700, "ws");
    client.logout().expect("LOGOUT answered");
    assert!(client.wait_closed(WAIT).expect("closed").is_empty());
    assert_eq!(client.ws_close_code(), Some(1000));
    gate.stop();
}

#[test]
fn a_full_gate_upgrades_a_websocket_client_before_its_kick_2() {
    let gate = TestGate::start_with(|c| {
        c.gate.shards = 1;
        c.limits.max_connections = 1;
    });
    let (_held, _) = gate.login(4800, "d");
    match Client::connect_ws(gate.addr(), "/ws") {
        Ok(mut refused) => {
            let frames = refused.wait_closed(WAIT).expect("closed");
            match frames.as_slice() {
                [kick] => {
                    let kick = assert_kick(kick, 2);
                    assert!(kick.retry_after_ms > 0);
                }
                _ => panic!("expected KICK 2 then close, got {frames:?}"),
            }
            assert_eq!(refused.ws_close_code(), Some(1013));
        }
        Err(e) => panic!("a full gate still upgrades: {e}"),
    }
    gate.stop();
}
