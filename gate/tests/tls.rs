//! TLS on `gate.tls_listen` (PROTOCOL.md "Transport": TLS may wrap TCP or WebSocket): TLS
//! sessions beside plain ones, hand-off to the owner shard with the TLS state, WebSocket over
//! TLS, the start-up refusals of bad certificate files, and bad input (a garbage hello, a client
//! that never finishes its handshake), each closing that connection only.
//!
//! Certificates are made per run with rcgen and written to a temporary directory; no private key
//! is checked in.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gate::admin::promtext;
use gate::client::{Client, ClientError, decode_body};
use gate::config::{Config, ConfigError};
use gate::protocol::{MsgType, cmd, encode_frame, pb};
use gate::shard::{owner_shard, shard_of_session};
use support::im::{SHARDS, SINGLE, ack, expect_push, send_text, uid_on};
use support::{Delivered, TestGate, WAIT, assert_alive, garbage, http, total};

/// The name the test certificates are made for.
const SERVER_NAME: &str = "gate.test";

/// A self-signed certificate and its key in PEM files of their own directory, removed on drop.
struct CertFiles {
    dir: PathBuf,
    cert_pem: String,
}

impl CertFiles {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "imgate-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.into()]).expect("rcgen");
        let cert_pem = made.cert.pem();
        std::fs::write(dir.join("cert.pem"), &cert_pem).expect("write cert");
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).expect("write key");
        Self { dir, cert_pem }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn cert(&self) -> String {
        self.path("cert.pem")
    }

    fn key(&self) -> String {
        self.path("key.pem")
    }

    /// Writes `contents` to `name` in this directory; returns its path.
    fn write(&self, name: &str, contents: &str) -> String {
        std::fs::write(self.dir.join(name), contents).expect("write");
        self.path(name)
    }

    fn root(&self) -> &[u8] {
        self.cert_pem.as_bytes()
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sets the TLS keys of `config` to `files`, listening on a free loopback port.
fn with_tls(config: &mut Config, files: &CertFiles) {
    config.gate.tls_listen = "127.0.0.1:0".into();
    config.gate.tls_cert = files.cert();
    config.gate.tls_key = files.key();
}

fn tls_gate(files: &CertFiles) -> TestGate {
    TestGate::start_with(|c| with_tls(c, files))
}

fn tls_connect(gate: &TestGate, files: &CertFiles) -> Client {
    Client::connect_tls(gate.tls_addr(), SERVER_NAME, files.root()).expect("TLS handshake")
}

fn tls_login(
    gate: &TestGate,
    files: &CertFiles,
    uid: u64,
    device: &str,
) -> (Client, pb::LoginResp) {
    let mut client = tls_connect(gate, files);
    let resp = client.login(uid, "dev", device).expect("LOGIN answered");
    assert_eq!(resp.code, 0, "login of uid {uid} refused: {resp:?}");
    (client, resp)
}

/// `imgate_tls_handshakes_total{result}` summed over the shards, from the admin endpoint.
fn handshakes(gate: &TestGate, result: &str) -> f64 {
    let (status, head, body) = http(gate.admin(), "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    let samples = promtext::parse(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    samples
        .iter()
        .filter(|s| s.name == "imgate_tls_handshakes_total")
        .filter(|s| s.labels.get("result").map(String::as_str) == Some(result))
        .map(|s| s.value)
        .sum()
}

/// Reads a raw socket until the gate closes it (within [`WAIT`]); returns what came.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the gate did not close within {WAIT:?} ({e}); got {answer:?}"),
    }
    answer
}

#[test]
fn tls_and_plain_clients_chat_with_push_and_ack() {
    let files = CertFiles::new();
    let delivered = Arc::new(Delivered::default());
    let gate = TestGate::start_observed(|c| with_tls(c, &files), delivered.clone());
    assert_ne!(gate.tls_addr().port(), gate.addr().port());
    let (mut secure, secure_resp) = tls_login(&gate, &files, 7001, "tls");
    let (mut plain, plain_resp) = gate.login(7002, "tcp");

    let sent = send_text(&mut secure, SINGLE, 7002, "from TLS");
    let push = expect_push(&mut plain);
    assert_eq!(
        (push.msg_id, push.from, push.conv_id),
        (sent.msg_id, 7001, 7001)
    );
    assert_eq!(&push.body[..], b"from TLS");
    ack(&mut plain, &[push.msg_id]);
    delivered.wait_for(plain_resp.session_id, push.msg_id);

    let sent = send_text(&mut plain, SINGLE, 7001, "to TLS");
    let push = expect_push(&mut secure);
    assert_eq!(
        (push.msg_id, push.from, push.conv_id),
        (sent.msg_id, 7002, 7002)
    );
    ack(&mut secure, &[push.msg_id]);
    delivered.wait_for(secure_resp.session_id, push.msg_id);

    // A larger message than one TLS record (16 KiB) in each direction.
    let big = "x".repeat(40_000);
    let sent = send_text(&mut secure, SINGLE, 7002, &big);
    let push = expect_push(&mut plain);
    assert_eq!((push.msg_id, push.body.len()), (sent.msg_id, big.len()));
    let sent = send_text(&mut plain, SINGLE, 7001, &big);
    let push = expect_push(&mut secure);
    assert_eq!((push.msg_id, push.body.len()), (sent.msg_id, big.len()));

    secure.logout().expect("LOGOUT answered");
    secure.wait_closed(WAIT).expect("closed after LOGOUT");
    gate.stop();
}

#[test]
fn tls_sessions_accepted_by_any_shard_are_handed_to_the_owner_and_work() {
    let files = CertFiles::new();
    let delivered = Arc::new(Delivered::default());
    let gate = TestGate::start_observed(|c| with_tls(c, &files), delivered.clone());
    // Enough connections that the kernel's SO_REUSEPORT spread lands some on a non-owner
    // shard (all 24 on their owner: probability 2^-24).
    let uids: Vec<u64> = (0..12)
        .flat_map(|i| [uid_on(0, 8000 + i * 100), uid_on(1, 8000 + i * 100)])
        .collect();
    let mut clients = Vec::new();
    for &uid in &uids {
        let mut client = tls_connect(&gate, &files);
        // The LOGIN and a PING in one write: the PING is buffered plaintext when the
        // connection crosses shards, and must be answered by the owner.
        let login = pb::LoginReq {
            uid,
            token: "dev".into(),
            device_id: "tls".into(),
            platform: 4,
            client_version: "test".into(),
        };
        let login_seq = client.next_seq();
        let ping_seq = client.next_seq();
        let mut wire = encode_frame(cmd::LOGIN, MsgType::Request, 1, login_seq, &login).to_vec();
        wire.extend_from_slice(&encode_frame(cmd::PING, MsgType::Request, 7, ping_seq, &()));
        client.send_raw(&wire).expect("send");
        let resp = client.recv_response(login_seq, WAIT).expect("LoginResp");
        let resp: pb::LoginResp = decode_body(&resp).expect("decodes");
        assert_eq!(resp.code, 0, "{resp:?}");
        assert_eq!(
            shard_of_session(resp.session_id),
            owner_shard(uid, SHARDS),
            "uid {uid} lives on its owner shard"
        );
        let pong = client.recv_response(ping_seq, WAIT).expect("PING answered");
        assert_eq!(pong.cmd, cmd::PING);
        clients.push((uid, resp.session_id, client));
    }
    let stats = gate.stats_when(|s| total(s, |x| x.handoffs_in) > 0);
    assert!(
        total(&stats, |x| x.handoffs_in) > 0,
        "no TLS connection was handed off: {stats:?}"
    );
    for pair in clients.chunks_mut(2) {
        let [(from_uid, _, from), (to_uid, to_session, to)] = pair else {
            unreachable!("chunks of two");
        };
        let sent = send_text(from, SINGLE, *to_uid, "over TLS");
        let push = expect_push(to);
        assert_eq!((push.msg_id, push.from), (sent.msg_id, *from_uid));
        ack(to, &[push.msg_id]);
        delivered.wait_for(*to_session, push.msg_id);
    }
    gate.stop();
}

#[test]
fn websocket_over_tls_logs_in_and_receives_pushes_on_any_shard() {
    let files = CertFiles::new();
    let delivered = Arc::new(Delivered::default());
    let gate = TestGate::start_observed(|c| with_tls(c, &files), delivered.clone());
    let (mut sender, _) = gate.login(9000, "tcp");
    let uids: Vec<u64> = (0..8)
        .flat_map(|i| [uid_on(0, 9100 + i * 100), uid_on(1, 9100 + i * 100)])
        .collect();
    let mut clients = Vec::new();
    for &uid in &uids {
        let mut client = Client::connect_wss(gate.tls_addr(), SERVER_NAME, files.root(), "/ws")
            .expect("wss upgrade");
        let resp = client.login(uid, "dev", "wss").expect("LOGIN answered");
        assert_eq!(resp.code, 0, "{resp:?}");
        assert_eq!(shard_of_session(resp.session_id), owner_shard(uid, SHARDS));
        clients.push((uid, resp.session_id, client));
    }
    let stats = gate.stats_when(|s| total(s, |x| x.handoffs_in) > 0);
    assert!(
        total(&stats, |x| x.handoffs_in) > 0,
        "no WSS connection was handed off: {stats:?}"
    );
    for (uid, session, client) in &mut clients {
        let sent = send_text(&mut sender, SINGLE, *uid, "to wss");
        let push = expect_push(client);
        assert_eq!((push.msg_id, push.from), (sent.msg_id, 9000));
        ack(client, &[push.msg_id]);
        delivered.wait_for(*session, push.msg_id);
        assert_alive(client);
    }
    gate.stop();
}

/// The configuration error of the base test config with TLS on `cert` and `key`.
fn tls_config_error(cert: &str, key: &str) -> ConfigError {
    let mut config = Config::from_toml(
        "[gate]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n[backend]\ndata_dir = \"\"\n",
    )
    .expect("parses");
    config.gate.tls_cert = cert.into();
    config.gate.tls_key = key.into();
    config.validate().expect_err("refused")
}

#[test]
fn bad_certificate_files_are_start_up_errors_naming_their_key() {
    let files = CertFiles::new();
    let other = CertFiles::new();
    let missing = files.path("missing.pem");
    let err = tls_config_error(&missing, &files.key()).to_string();
    assert!(err.starts_with("gate.tls_cert:"), "{err}");
    assert!(err.contains("missing.pem"), "{err}");

    let err = tls_config_error(&files.cert(), &missing).to_string();
    assert!(err.starts_with("gate.tls_key:"), "{err}");

    // Two certificates, each with its own key: the key of the other does not match.
    let err = tls_config_error(&files.cert(), &other.key()).to_string();
    assert!(err.starts_with("gate.tls_key:"), "{err}");

    let not_pem = files.write("not.pem", "this is no certificate\n");
    let err = tls_config_error(&not_pem, &files.key()).to_string();
    assert!(err.starts_with("gate.tls_cert:"), "{err}");
    let err = tls_config_error(&files.cert(), &not_pem).to_string();
    assert!(err.starts_with("gate.tls_key:"), "{err}");

    // The certificate file given as the key and the other way round.
    let err = tls_config_error(&files.key(), &files.key()).to_string();
    assert!(err.starts_with("gate.tls_cert:"), "{err}");
    let err = tls_config_error(&files.cert(), &files.cert()).to_string();
    assert!(err.starts_with("gate.tls_key:"), "{err}");

    // And a good pair is accepted.
    let mut config = Config::from_toml("[gate]\ntls_listen = \"127.0.0.1:0\"\n").expect("parses");
    with_tls(&mut config, &files);
    config.validate().expect("a matching pair is valid");
}

#[test]
fn a_client_that_does_not_trust_the_certificate_fails_its_handshake() {
    let files = CertFiles::new();
    let stranger = CertFiles::new();
    let gate = tls_gate(&files);
    match Client::connect_tls(gate.tls_addr(), SERVER_NAME, stranger.root()) {
        Err(ClientError::Tls(_)) => {}
        Err(other) => panic!("expected a TLS error, got {other}"),
        Ok(_) => panic!("a certificate from another root was accepted"),
    }
    // The gate serves the next one.
    let (mut client, _) = tls_login(&gate, &files, 7101, "after");
    assert_alive(&mut client);
    gate.stop();
}

#[test]
fn garbage_hello_closes_that_connection_only() {
    let files = CertFiles::new();
    let gate = TestGate::start_with(|c| {
        with_tls(c, &files);
        c.admin.listen = "127.0.0.1:0".into();
    });
    let (mut bystander, _) = tls_login(&gate, &files, 7201, "bystander");
    let (mut plain, _) = gate.login(7202, "plain");
    for hello in [
        b"GET /ws HTTP/1.1\r\nHost: gate.test\r\n\r\n".to_vec(),
        garbage(600),
        // A binary-protocol LOGIN sent in the clear to the TLS port.
        encode_frame(cmd::PING, MsgType::Request, 1, 1, &()).to_vec(),
    ] {
        let mut stream = TcpStream::connect(gate.tls_addr()).expect("connect");
        stream.write_all(&hello).expect("send");
        let answer = read_until_closed(&mut stream);
        // At most a TLS alert record (content type 21), never plaintext.
        if let Some(&first) = answer.first() {
            assert_eq!(first, 21, "expected a TLS alert, got {answer:?}");
        }
        assert_alive(&mut bystander);
        assert_alive(&mut plain);
    }
    assert_eq!(handshakes(&gate, "failed"), 3.0);
    assert_eq!(handshakes(&gate, "ok"), 1.0);
    gate.stop();
}

#[test]
fn handshake_not_finished_in_time_is_closed() {
    let files = CertFiles::new();
    let gate = TestGate::start_with(|c| {
        with_tls(c, &files);
        c.gate.tls_handshake_timeout_ms = 300;
        c.admin.listen = "127.0.0.1:0".into();
    });
    let (mut bystander, _) = tls_login(&gate, &files, 7301, "bystander");
    let opened = Instant::now();
    let mut silent = TcpStream::connect(gate.tls_addr()).expect("connect");
    // Half a ClientHello's record header: the handshake has started and stalls.
    let mut stalled = TcpStream::connect(gate.tls_addr()).expect("connect");
    stalled.write_all(&[22, 3, 1]).expect("send");
    for stream in [&mut silent, &mut stalled] {
        let answer = read_until_closed(stream);
        assert!(answer.is_empty() || answer[0] == 21, "{answer:?}");
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the 300 ms deadline"
    );
    // A finished handshake is not bound by it: the bystander connected before the others, so
    // its own handshake deadline has passed by now, and its session goes on.
    assert_alive(&mut bystander);
    assert_eq!(handshakes(&gate, "timeout"), 2.0);
    assert_eq!(handshakes(&gate, "ok"), 1.0);
    gate.stop();
}

#[test]
fn a_full_gate_answers_tls_and_wss_clients_with_kick_2_after_the_handshake() {
    let files = CertFiles::new();
    let gate = TestGate::start_with(|c| {
        with_tls(c, &files);
        c.gate.shards = 1;
        c.limits.max_connections = 1;
        c.gate.peers = vec!["127.0.0.1:7998".into()];
    });
    let (_held, _) = tls_login(&gate, &files, 4900, "held");
    let mut refused = tls_connect(&gate, &files);
    // The first bytes (LOGIN) are what a full gate answers; the answer is the KICK, not a
    // LoginResp.
    assert!(refused.login(4901, "dev", "second").is_err());
    let frames = refused.wait_closed(WAIT).expect("KICK 2, then closed");
    let kick = support::assert_kick(frames.last().expect("a KICK"), 2);
    assert_eq!(kick.reconnect_to, ["127.0.0.1:7998"]);
    assert!(kick.retry_after_ms > 0);
    match Client::connect_wss(gate.tls_addr(), SERVER_NAME, files.root(), "/ws") {
        Ok(mut wss) => {
            let frames = wss.wait_closed(WAIT).expect("KICK 2, then closed");
            support::assert_kick(frames.last().expect("a KICK"), 2);
            assert_eq!(wss.ws_close_code(), Some(1013));
        }
        Err(e) => panic!("a full gate still upgrades a wss client: {e}"),
    }
    gate.stop();
}
