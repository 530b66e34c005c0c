//! The router's HTTP API reaching a client through a gate (issue 8): a gate in this process
//! with `backend.kind = "remote"` linked to a router in this process, a client logged in on the
//! gate, and HTTP requests on the router's `http_listen`: `GET /online` lists the session;
//! `POST /push` stores a message (the returned `msg_id` is PUSHed, ACKed, then PULL returns
//! it) or sends a BIZ_PUSH; an oversized push is 413 and reaches nobody; bad requests are 4xx
//! on a connection that keeps working; `POST /kick` closes the session with KICK 7, or KICK 3
//! with `reason = "revoked"`. Every wait has a deadline; loopback only.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine;
use gate::client::{Client, decode_body};
use gate::config::BackendKind;
use gate::protocol::{MsgType, cmd, pb};
use support::im::{SINGLE, assert_nothing_more, pull, take_push};
use support::{GATE_ID, TestGate, WAIT, assert_kicked};

/// One HTTP/1.1 exchange on `conn`: the status and the JSON body.
fn exchange(conn: &mut TcpStream, raw: &[u8]) -> (u16, serde_json::Value) {
    conn.write_all(raw).expect("write the request");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).expect("an ASCII head");
            let status: u16 = head[9..12].parse().expect("a status code");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .expect("a number");
            if buf.len() >= end + 4 + len {
                let body =
                    serde_json::from_slice(&buf[end + 4..end + 4 + len]).expect("a JSON body");
                return (status, body);
            }
        }
        // The read timeout (WAIT) bounds every read.
        let n = conn
            .read(&mut chunk)
            .expect("the router answers within WAIT");
        assert!(n > 0, "the router closed before answering: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).expect("connect to the HTTP API");
    conn.set_read_timeout(Some(WAIT)).expect("read timeout");
    conn
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    exchange(&mut connect(addr), &request(method, path, body))
}

fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT * 3;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn login(gate: &TestGate, uid: u64, device: &str) -> Client {
    let mut client = gate.connect();
    let resp = client.login(uid, "dev", device).expect("LOGIN answered");
    assert_eq!(resp.code, 0, "login refused: {resp:?}");
    client
}

#[test]
fn http_push_biz_push_kick_and_online_reach_a_client_through_a_gate() {
    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.router.listen = "127.0.0.1:0".into();
    config.router.http_listen = "127.0.0.1:0".into();
    config.backend.partitions = 8;
    let router = router::server::start(config.validate().expect("valid router config"))
        .expect("router starts");
    let http = router.http_addr().expect("the HTTP API is on");
    let link = router.link_addr();
    let gate = TestGate::start_with(|c| {
        c.backend.kind = BackendKind::Remote;
        c.backend.addr = link.to_string();
    });
    until("both shards linked", || router.stats().links == 2);

    let (a, b) = (1001u64, 2002u64);
    let mut b1 = login(&gate, b, "pc");
    until("B routed", || router.stats().sessions == 1);

    // GET /online lists the session.
    let (status, online) = call(http, "GET", &format!("/online?uid={b}"), "");
    assert_eq!(status, 200, "{online}");
    let sessions = online["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 1, "{online}");
    assert_eq!(sessions[0]["device"], "pc");
    assert_eq!(sessions[0]["gate"], GATE_ID);
    assert!(
        sessions[0]["session"].as_u64().is_some_and(|s| s != 0),
        "{online}"
    );
    assert!(
        sessions[0]["shard"].as_u64().is_some_and(|s| s < 2),
        "{online}"
    );

    // POST /push of a message: stored, PUSHed with the returned msg_id, ACKed, then pulled.
    let body = base64::engine::general_purpose::STANDARD.encode("hello from http");
    let push = format!(
        r#"{{"recipients":[{b}],"conv_type":{SINGLE},"conv_id":{b},"from":{a},"content_type":1,"body":"{body}"}}"#
    );
    let (status, stored) = call(http, "POST", "/push", &push);
    assert_eq!(status, 200, "{stored}");
    let msg_id = stored["msg_id"].as_u64().expect("a msg_id");
    assert_ne!(msg_id, 0);
    let pushed = take_push(&mut b1);
    assert_eq!((pushed.msg_id, pushed.from, pushed.conv_id), (msg_id, a, a));
    assert_eq!(&pushed.body[..], b"hello from http");
    let history = pull(&mut b1, SINGLE, a, 0, 10);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(
        history
            .msgs
            .iter()
            .any(|m| m.msg_id == msg_id && m.from == a),
        "PULL returns the pushed message: {history:?}"
    );

    // POST /push with a topic: a BIZ_PUSH, not stored.
    let (status, sent) = call(
        http,
        "POST",
        "/push",
        &format!(r#"{{"recipients":[{b}],"topic":"news","payload":"{{\"x\":1}}"}}"#),
    );
    assert_eq!(
        (status, &sent["links"]),
        (200, &serde_json::json!(1)),
        "{sent}"
    );
    let frame = b1.recv_frame(WAIT).expect("a BIZ_PUSH within WAIT");
    assert_eq!(
        (frame.cmd, frame.msg_type),
        (cmd::BIZ_PUSH, MsgType::Notify)
    );
    let biz: pb::BizPush = decode_body(&frame).expect("a BizPush body");
    assert_eq!(
        (biz.topic.as_str(), &biz.payload[..]),
        ("news", &b"{\"x\":1}"[..])
    );

    // A push whose PUSH frame would exceed the gates' max_frame is 413 and reaches nobody;
    // bad requests are 4xx and the same keep-alive connection keeps serving.
    let big = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 70_000]);
    let mut conn = connect(http);
    let oversized = format!(
        r#"{{"recipients":[{b}],"conv_type":1,"conv_id":{b},"from":{a},"content_type":1,"body":"{big}"}}"#
    );
    let (status, err) = exchange(&mut conn, &request("POST", "/push", &oversized));
    assert_eq!(status, 413, "{err}");
    let (status, err) = exchange(&mut conn, &request("POST", "/push", "{not json"));
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].is_string(), "{err}");
    let (status, _) = exchange(&mut conn, &request("GET", "/nope", ""));
    assert_eq!(status, 404);
    let (status, _) = exchange(&mut conn, &request("GET", "/push", ""));
    assert_eq!(status, 405);
    let (status, _) = exchange(&mut conn, &request("GET", &format!("/online?uid={b}"), ""));
    assert_eq!(status, 200, "the connection still serves after 4xx answers");
    // Malformed HTTP: answered and closed, nothing else harmed.
    let (status, _) = exchange(&mut connect(http), b"BROKEN\r\n\r\n");
    assert_eq!(status, 400);
    assert_nothing_more(&mut b1);

    // POST /kick: KICK 7 by default.
    let (status, kicked) = call(http, "POST", "/kick", &format!(r#"{{"uid":{b}}}"#));
    assert_eq!(
        (status, &kicked["kicked"]),
        (200, &serde_json::json!(1)),
        "{kicked}"
    );
    assert_kicked(&mut b1, 7);
    until("B offline", || router.stats().sessions == 0);

    // ... and KICK 3 with reason "revoked", only the named device.
    let mut b_phone = login(&gate, b, "phone");
    let mut b_pc = login(&gate, b, "pc");
    until("B's two devices routed", || router.stats().sessions == 2);
    let (status, kicked) = call(
        http,
        "POST",
        "/kick",
        &format!(r#"{{"uid":{b},"device":"phone","reason":"revoked"}}"#),
    );
    assert_eq!(
        (status, &kicked["kicked"]),
        (200, &serde_json::json!(1)),
        "{kicked}"
    );
    assert_kicked(&mut b_phone, 3);
    assert_nothing_more(&mut b_pc);

    gate.stop();
    router.stop();
}

#[test]
fn slow_oversized_and_excess_http_connections_are_cut_off() {
    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.router.listen = "127.0.0.1:0".into();
    config.router.http_listen = "127.0.0.1:0".into();
    config.router.http_timeout_ms = 300;
    config.router.http_max_conns = 2;
    let router = router::server::start(config.validate().expect("valid router config"))
        .expect("router starts");
    let http = router.http_addr().expect("the HTTP API is on");

    // Two idle connections fill router.http_max_conns: a third is answered 503 and closed.
    let mut idle = [connect(http), connect(http)];
    let (status, err) = call(http, "GET", "/online?uid=1", "");
    assert_eq!(status, 503, "{err}");
    // Idle connections are closed after the timeout, without an answer.
    for conn in &mut idle {
        let mut byte = [0u8; 1];
        let asked = Instant::now();
        assert_eq!(conn.read(&mut byte).expect("closed, not timed out"), 0);
        assert!(asked.elapsed() < WAIT);
    }
    // A head that trickles in (slowloris) is answered 408 at the deadline.
    until("the idle slots are free", || {
        let (status, _) = call(http, "GET", "/online?uid=1", "");
        status == 200
    });
    let mut slow = connect(http);
    let asked = Instant::now();
    let (status, err) = exchange(&mut slow, b"GET /online?uid=1 HTTP/1.1\r\nhost: a\r\n");
    assert_eq!(status, 408, "{err}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    // A head above 8 KiB is 431; a declared body above router.http_max_body is 413.
    let mut long = b"GET /online?uid=1 HTTP/1.1\r\nx: ".to_vec();
    long.resize(9000, b'a');
    let (status, _) = exchange(&mut connect(http), &long);
    assert_eq!(status, 431);
    let (status, _) = exchange(
        &mut connect(http),
        b"POST /push HTTP/1.1\r\ncontent-length: 99999999\r\n\r\n",
    );
    assert_eq!(status, 413);
    router.stop();
}
