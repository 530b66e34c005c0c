//! Harness shared by the black-box tests: a gate started in-process on 127.0.0.1 with two shards,
//! clients of it, raw frame builders for malformed input, an independent HS256 JWT signer, and
//! assertions that wait on an event with a deadline (never a sleep).
//!
//! Each test binary uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod process;

use std::time::{Duration, Instant};

use gate::client::{Client, ClientError, decode_body};
use gate::config::{AuthMode, Config, Settings};
use gate::protocol::{Frame, MAGIC, MsgType, VERSION, cmd, pb};
use gate::shard::{GateHandle, ShardStats};

/// How long any single expected event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// `gate.id` of every test gate.
pub const GATE_ID: &str = "gate-under-test";

/// The JWT secret of `protocol-vectors.json`, used by [`TestGate::jwt`].
pub const JWT_SECRET: &str = "s3cret";

/// The configuration every test starts from; tests adjust it with [`TestGate::start_with`].
const BASE_CONFIG: &str = r#"
[gate]
id = "gate-under-test"
listen = "127.0.0.1:0"
shards = 2
io_memory_kib = 64

[backend]
data_dir = "" # memory only: tests that need the log set their own directory

[admin]
listen = "" # tests that use it pick their own port
"#;

/// A gate running in this process; `stop` it at the end of the test (dropping also stops it).
pub struct TestGate {
    handle: GateHandle,
    pub settings: Settings,
}

impl TestGate {
    /// Two shards, dev auth, every other key at its default.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// The base configuration adjusted by `tune`.
    pub fn start_with(tune: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::from_toml(BASE_CONFIG).expect("base test config parses");
        tune(&mut config);
        let settings = config.validate().expect("test config is valid");
        let handle = gate::shard::start(settings.clone()).expect("gate starts");
        Self { handle, settings }
    }

    /// The base configuration adjusted by `tune`, every delivery shown to `observer`.
    pub fn start_observed(
        tune: impl FnOnce(&mut Config),
        observer: std::sync::Arc<dyn gate::shard::DeliveryObserver>,
    ) -> Self {
        let mut config = Config::from_toml(BASE_CONFIG).expect("base test config parses");
        tune(&mut config);
        let settings = config.validate().expect("test config is valid");
        let handle =
            gate::shard::start_observed(settings.clone(), Some(observer)).expect("gate starts");
        Self { handle, settings }
    }

    /// JWT auth with [`JWT_SECRET`], adjusted by `tune`.
    pub fn jwt_with(tune: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(|c| {
            c.auth.mode = AuthMode::Jwt;
            c.auth.secret = JWT_SECRET.into();
            tune(c);
        })
    }

    pub fn jwt() -> Self {
        Self::jwt_with(|_| {})
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.handle.local_addr()
    }

    /// The TLS listener's address (the test set `gate.tls_listen`).
    pub fn tls_addr(&self) -> std::net::SocketAddr {
        self.handle.tls_addr().expect("gate.tls_listen is set")
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr()).expect("connect to the gate")
    }

    /// A connection logged in as `uid` on `device_id` (dev auth), with its LoginResp.
    pub fn login(&self, uid: u64, device_id: &str) -> (Client, pb::LoginResp) {
        let mut client = self.connect();
        let resp = client.login(uid, "dev", device_id).expect("LOGIN answered");
        assert_eq!(resp.code, 0, "login of uid {uid} refused: {resp:?}");
        (client, resp)
    }

    pub fn stats(&self) -> Vec<ShardStats> {
        self.handle.stats()
    }

    /// Polls the shards' counters until `done` holds or [`WAIT`] passes; returns the last ones.
    /// (Counters are published by the shards, so they may trail the events they count.)
    pub fn stats_when(&self, done: impl Fn(&[ShardStats]) -> bool) -> Vec<ShardStats> {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.stats();
            if done(&stats) || Instant::now() >= deadline {
                return stats;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stop(self) {
        self.handle.stop();
    }

    /// The admin endpoint (set `admin.listen`, e.g. to `127.0.0.1:0`).
    pub fn admin(&self) -> std::net::SocketAddr {
        self.handle.admin_addr().expect("admin.listen is set")
    }

    pub fn handle_mut(&mut self) -> &mut GateHandle {
        &mut self.handle
    }
}

/// One HTTP/1.1 request to `addr` (the admin endpoint): `(status, head, body)`.
pub fn http(addr: std::net::SocketAddr, method: &str, target: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the admin endpoint");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n"
    )
    .expect("write the request");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_owned(), body.to_owned())
}

/// Sums one counter over the shards.
pub fn total(stats: &[ShardStats], field: impl Fn(&ShardStats) -> u64) -> u64 {
    stats.iter().map(field).sum()
}

/// A 22-byte header with every field chosen, for malformed frames.
pub fn header(
    magic: u32,
    version: u32,
    cmd: u8,
    msg_type: u8,
    log_id: u32,
    seq: u32,
    len: u32,
) -> Vec<u8> {
    let mut h = Vec::with_capacity(22);
    h.extend_from_slice(&magic.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.push(cmd);
    h.push(msg_type);
    h.extend_from_slice(&log_id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// A well-formed frame around a raw (possibly undecodable) body.
pub fn raw_frame(cmd: u8, msg_type: MsgType, log_id: u32, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("test body fits a u32");
    let mut f = header(MAGIC, VERSION, cmd, msg_type as u8, log_id, seq, len);
    f.extend_from_slice(body);
    f
}

/// `n` bytes of deterministic noise (xorshift64), never starting with `I`.
pub fn garbage(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut out: Vec<u8> = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_be_bytes()[0]
        })
        .collect();
    if let Some(first) = out.first_mut().filter(|b| **b == b'I') {
        *first = 0;
    }
    out
}

/// The connection answers a PING.
pub fn assert_alive(client: &mut Client) {
    if let Err(e) = client.ping() {
        panic!("connection should be open and answer PING: {e}");
    }
}

/// Nothing arrives for `period`: the connection neither sends a frame nor closes.
pub fn assert_silent_for(client: &mut Client, period: Duration) {
    match client.recv_frame(period) {
        Err(ClientError::Timeout) => {}
        Ok(frame) => panic!("expected silence, got {frame:?}"),
        Err(e) => panic!("expected silence, got {e}"),
    }
}

/// The gate closes the connection within [`WAIT`] without sending anything more.
pub fn assert_closed_silently(client: &mut Client) {
    let frames = client
        .wait_closed(WAIT)
        .expect("the gate closes the connection");
    assert!(
        frames.is_empty(),
        "expected a close with nothing sent, got {frames:?}"
    );
}

/// The next frame is a KICK notify with `reason`, and the gate then closes with nothing more.
pub fn assert_kicked(client: &mut Client, reason: u32) -> pb::Kick {
    let frames = client
        .wait_closed(WAIT)
        .expect("the gate closes the connection");
    match frames.as_slice() {
        [kick] => assert_kick(kick, reason),
        _ => panic!("expected exactly KICK {reason} then close, got {frames:?}"),
    }
}

/// `frame` is a KICK notify (seq 0) with `reason`.
pub fn assert_kick(frame: &Frame, reason: u32) -> pb::Kick {
    assert_eq!(frame.cmd, cmd::KICK, "expected KICK, got {frame:?}");
    assert_eq!(
        frame.msg_type,
        MsgType::Notify,
        "KICK is a notify: {frame:?}"
    );
    assert_eq!(frame.seq, 0, "notify frames carry seq 0: {frame:?}");
    let kick: pb::Kick = decode_body(frame).expect("KICK body decodes");
    assert_eq!(kick.reason, reason, "KICK reason: {kick:?}");
    kick
}

/// `frame` is an ERROR response echoing `seq` and `log_id`, with `code`.
pub fn assert_error_response(frame: &Frame, code: u32, seq: u32, log_id: u32) {
    assert_eq!(frame.cmd, cmd::ERROR, "expected ERROR, got {frame:?}");
    assert_eq!(
        frame.msg_type,
        MsgType::Response,
        "ERROR as a response: {frame:?}"
    );
    assert_eq!(
        (frame.seq, frame.log_id),
        (seq, log_id),
        "echoes seq and log_id: {frame:?}"
    );
    let error: pb::Error = decode_body(frame).expect("ERROR body decodes");
    assert_eq!(error.code, code, "ERROR code: {error:?}");
}

/// Raises the soft open-files limit to at least `want` (capped by the hard limit), for tests
/// that hold many sockets on both ends in one process.
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let target = want.min(lim.rlim_max);
        if lim.rlim_cur < target {
            lim.rlim_cur = target;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The byte-exact examples beside PROTOCOL.md.
pub fn vectors() -> serde_json::Value {
    serde_json::from_str(include_str!("../data/protocol-vectors.json"))
        .expect("protocol-vectors.json parses")
}

/// An HS256 JWT signer written from RFC 7515/7519, independent of the gate's verifier.
pub mod jwt {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    /// The standard HS256 header.
    pub const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
    /// An `exp` far in the future (2096).
    pub const FAR_FUTURE: u64 = 4_000_000_000;
    /// An `exp` long past (2001), well beyond any clock leeway.
    pub const LONG_AGO: u64 = 1_000_000_000;

    /// `b64url(header) . b64url(claims) . b64url(HMAC-SHA256(secret, first two parts))`.
    pub fn sign(secret: &[u8], header_json: &str, claims_json: &str) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header_json),
            URL_SAFE_NO_PAD.encode(claims_json)
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// An HS256 token with `sub` = `uid` as a string and the given `exp`.
    pub fn token(secret: &str, uid: u64, exp: u64) -> String {
        sign(
            secret.as_bytes(),
            HS256,
            &format!(r#"{{"sub":"{uid}","exp":{exp}}}"#),
        )
    }

    /// An unsigned token (`alg` none, empty signature).
    pub fn unsigned(claims_json: &str) -> String {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims_json)
        )
    }
}

/// The message path (SEND, PUSH, ACK, NOTIFY, PULL, READ, READ_RECEIPT, SYNC, BIZ): requests
/// that return their decoded response whatever its `code`, `*_ok` variants that also assert
/// code 0, and waits for server-initiated frames, each bounded by [`WAIT`].
///
/// BIZ_PUSH notifies are skipped wherever a test waits for the next frame: PROTOCOL.md does not
/// say when the reference backend sends them (e.g. on group changes), and a client ignores
/// topics it does not know.
pub mod im {
    use std::collections::BTreeSet;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use gate::client::{Client, ClientError, decode_body, expect_response};
    use gate::protocol::{Frame, MsgType, cmd, pb};
    use gate::shard::owner_shard;

    use super::WAIT;

    /// Shards of every test gate (`gate.shards` in the base config).
    pub const SHARDS: usize = 2;
    /// `conv_type` of a single chat.
    pub const SINGLE: u32 = 1;
    /// `conv_type` of a group chat.
    pub const GROUP: u32 = 2;
    /// `content_type` the tests send (PROTOCOL.md leaves its values to the application).
    pub const TEXT: u32 = 1;

    /// Response codes (PROTOCOL.md "Codes").
    pub mod code {
        pub const OK: u32 = 0;
        pub const BAD_REQUEST: u32 = 1;
        pub const UNAUTHENTICATED: u32 = 2;
        pub const FORBIDDEN: u32 = 3;
        pub const RATE_LIMITED: u32 = 4;
        pub const TOO_LARGE: u32 = 6;
        pub const NOT_FOUND: u32 = 11;
    }

    /// How long a connection must stay silent, after a PING answered in order, before the tests
    /// conclude that nothing more is coming.
    pub const QUIET: Duration = Duration::from_millis(200);

    /// The first `n` uids at or after `from` that live on `shard`.
    pub fn uids_on(shard: usize, from: u64, n: usize) -> Vec<u64> {
        (from..)
            .filter(|uid| owner_shard(*uid, SHARDS) == shard)
            .take(n)
            .collect()
    }

    /// The first uid at or after `from` that lives on `shard`.
    pub fn uid_on(shard: usize, from: u64) -> u64 {
        uids_on(shard, from, 1)[0]
    }

    /// A deterministic source of `client_msg_id`s: splitmix64 of a process-wide counter, so
    /// every id is distinct (splitmix64 is a bijection), looks like the 64 random bits the
    /// protocol asks for, and is never 0.
    pub fn client_msg_id() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        loop {
            let mut z = NEXT
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }

    /// A SEND of `body` with content type [`TEXT`].
    pub fn send_req(conv_type: u32, to: u64, client_msg_id: u64, body: &[u8]) -> pb::SendReq {
        pb::SendReq {
            client_msg_id,
            conv_type,
            to,
            content_type: TEXT,
            body: Bytes::copy_from_slice(body),
        }
    }

    /// SEND; the SendResp whatever its code.
    pub fn send(client: &mut Client, req: &pb::SendReq) -> pb::SendResp {
        match client.call(cmd::SEND, req) {
            Ok(resp) => resp,
            Err(e) => panic!("SEND {req:?} not answered with a SendResp: {e}"),
        }
    }

    /// A message that the gate accepted.
    #[derive(Debug, Clone)]
    pub struct Sent {
        pub client_msg_id: u64,
        pub msg_id: u64,
        pub conv_type: u32,
        pub to: u64,
        pub body: Bytes,
        pub resp: pb::SendResp,
    }

    /// SEND of `text` with a fresh `client_msg_id`; asserts code 0 and a non-zero `msg_id`.
    pub fn send_text(client: &mut Client, conv_type: u32, to: u64, text: &str) -> Sent {
        let req = send_req(conv_type, to, client_msg_id(), text.as_bytes());
        let resp = send(client, &req);
        assert_eq!(
            resp.code,
            code::OK,
            "SEND {text:?} to {to} refused: {resp:?}"
        );
        assert_ne!(
            resp.msg_id, 0,
            "an accepted SEND carries its msg_id: {resp:?}"
        );
        Sent {
            client_msg_id: req.client_msg_id,
            msg_id: resp.msg_id,
            conv_type,
            to,
            body: req.body,
            resp,
        }
    }

    /// The next frame from the gate within [`WAIT`], BIZ_PUSH notifies skipped.
    pub fn next_event(client: &mut Client) -> Frame {
        loop {
            match client.recv_frame(WAIT) {
                Ok(f) if f.cmd == cmd::BIZ_PUSH && f.msg_type == MsgType::Notify => {}
                Ok(f) => return f,
                Err(e) => panic!("expected a frame from the gate within {WAIT:?}: {e}"),
            }
        }
    }

    /// Asserts that `frame` is a notify (seq 0) of command `command` and decodes it.
    pub fn decode_notify<M: prost::Message + Default>(frame: &Frame, command: u8) -> M {
        assert_eq!(
            (frame.cmd, frame.msg_type, frame.seq),
            (command, MsgType::Notify, 0),
            "expected a notify of cmd {command:#04x} with seq 0, got {frame:?}"
        );
        match decode_body(frame) {
            Ok(m) => m,
            Err(e) => panic!("body of {frame:?} does not decode: {e}"),
        }
    }

    /// The next frame is a PUSH (notify, seq 0); not acknowledged.
    pub fn expect_push(client: &mut Client) -> pb::PushMsg {
        decode_notify(&next_event(client), cmd::PUSH)
    }

    /// ACK of `msg_ids`.
    pub fn ack(client: &mut Client, msg_ids: &[u64]) {
        client
            .notify(
                cmd::ACK,
                &pb::Ack {
                    msg_ids: msg_ids.to_vec(),
                },
            )
            .expect("send ACK");
    }

    /// The next frame is a PUSH; it is acknowledged at once.
    pub fn take_push(client: &mut Client) -> pb::PushMsg {
        let push = expect_push(client);
        ack(client, &[push.msg_id]);
        push
    }

    /// The next `n` frames are PUSHes, each acknowledged at once; in arrival order (which the
    /// protocol fixes only within one conversation, rule 5).
    pub fn take_pushes(client: &mut Client, n: usize) -> Vec<pb::PushMsg> {
        (0..n).map(|_| take_push(client)).collect()
    }

    /// The PUSH of `msg_id` among `pushes`.
    pub fn push_with_id(pushes: &[pb::PushMsg], msg_id: u64) -> &pb::PushMsg {
        match pushes.iter().find(|p| p.msg_id == msg_id) {
            Some(p) => p,
            None => panic!("no PUSH of msg_id {msg_id} among {pushes:?}"),
        }
    }

    /// The next frame is a NOTIFY.
    pub fn expect_notify(client: &mut Client) -> pb::Notify {
        decode_notify(&next_event(client), cmd::NOTIFY)
    }

    /// The next frame is a READ_RECEIPT.
    pub fn expect_receipt(client: &mut Client) -> pb::ReadReceipt {
        decode_notify(&next_event(client), cmd::READ_RECEIPT)
    }

    /// Nothing is waiting for this connection: a PING's answer is the next frame, and nothing
    /// follows it for [`QUIET`].
    pub fn assert_nothing_more(client: &mut Client) {
        let seq = client.request(cmd::PING, &()).expect("send PING");
        let frame = next_event(client);
        assert_eq!(
            (frame.cmd, frame.msg_type, frame.seq),
            (cmd::PING, MsgType::Response, seq),
            "expected nothing but the PING answer, got {frame:?}"
        );
        match client.recv_frame(QUIET) {
            Err(ClientError::Timeout) => {}
            Ok(f) if f.cmd == cmd::BIZ_PUSH => {}
            Ok(f) => panic!("expected silence, got {f:?}"),
            Err(e) => panic!("expected silence, got {e}"),
        }
    }

    /// `push` is the copy of `sent` (sent by `from`) that its receiver sees as conversation
    /// `conv_id`.
    pub fn assert_push_of(push: &pb::PushMsg, sent: &Sent, from: u64, conv_id: u64) {
        assert_eq!(push.msg_id, sent.msg_id, "msg_id: {push:?}");
        assert_eq!(push.conv_type, sent.conv_type, "conv_type: {push:?}");
        assert_eq!(push.conv_id, conv_id, "conv_id (receiver's view): {push:?}");
        assert_eq!(push.from, from, "from: {push:?}");
        assert_eq!(push.to, sent.to, "to: {push:?}");
        assert_eq!(push.content_type, TEXT, "content_type: {push:?}");
        assert_eq!(push.body, sent.body, "body: {push:?}");
        assert_eq!(
            push.client_msg_id, sent.client_msg_id,
            "client_msg_id is set in every copy: {push:?}"
        );
    }

    /// PULL forwards (`after_msg_id`); the PullResp whatever its code.
    pub fn pull(
        client: &mut Client,
        conv_type: u32,
        conv_id: u64,
        after_msg_id: u64,
        limit: u32,
    ) -> pb::PullResp {
        pull_with(
            client,
            &pb::PullReq {
                conv_type,
                conv_id,
                after_msg_id,
                limit,
                before_msg_id: 0,
            },
        )
    }

    /// PULL backwards (the `before_msg_id` extension); the PullResp whatever its code.
    pub fn pull_before(
        client: &mut Client,
        conv_type: u32,
        conv_id: u64,
        before_msg_id: u64,
        limit: u32,
    ) -> pb::PullResp {
        pull_with(
            client,
            &pb::PullReq {
                conv_type,
                conv_id,
                after_msg_id: 0,
                limit,
                before_msg_id,
            },
        )
    }

    pub fn pull_with(client: &mut Client, req: &pb::PullReq) -> pb::PullResp {
        match client.call(cmd::PULL, req) {
            Ok(resp) => resp,
            Err(e) => panic!("PULL {req:?} not answered with a PullResp: {e}"),
        }
    }

    /// PULL forwards; asserts code 0.
    pub fn pull_ok(
        client: &mut Client,
        conv_type: u32,
        conv_id: u64,
        after_msg_id: u64,
        limit: u32,
    ) -> pb::PullResp {
        let resp = pull(client, conv_type, conv_id, after_msg_id, limit);
        assert_eq!(resp.code, code::OK, "PULL refused: {resp:?}");
        resp
    }

    /// READ; the Result whatever its code.
    pub fn read(client: &mut Client, conv_type: u32, conv_id: u64, read_up_to: u64) -> pb::Result {
        let req = pb::ReadReq {
            conv_type,
            conv_id,
            read_up_to,
        };
        match client.call(cmd::READ, &req) {
            Ok(resp) => resp,
            Err(e) => panic!("READ {req:?} not answered with a Result: {e}"),
        }
    }

    /// READ; asserts code 0.
    pub fn read_ok(client: &mut Client, conv_type: u32, conv_id: u64, read_up_to: u64) {
        let result = read(client, conv_type, conv_id, read_up_to);
        assert_eq!(result.code, code::OK, "READ refused: {result:?}");
    }

    /// SYNC; asserts code 0.
    pub fn sync(client: &mut Client) -> pb::SyncResp {
        let resp: pb::SyncResp = match client.call(cmd::SYNC, &()) {
            Ok(resp) => resp,
            Err(e) => panic!("SYNC not answered with a SyncResp: {e}"),
        };
        assert_eq!(resp.code, code::OK, "SYNC refused: {resp:?}");
        resp
    }

    /// The update for one conversation in a SYNC or NOTIFY list.
    pub fn conv(convs: &[pb::ConvUpdate], conv_type: u32, conv_id: u64) -> Option<&pb::ConvUpdate> {
        convs
            .iter()
            .find(|c| c.conv_type == conv_type && c.conv_id == conv_id)
    }

    /// BIZ with a raw payload; the BizResp whatever its code.
    pub fn biz_raw(
        client: &mut Client,
        service: &str,
        method: &str,
        payload: &[u8],
    ) -> pb::BizResp {
        let req = pb::BizReq {
            service: service.into(),
            method: method.into(),
            payload: Bytes::copy_from_slice(payload),
        };
        match client.call(cmd::BIZ, &req) {
            Ok(resp) => resp,
            Err(e) => panic!("BIZ {service}.{method} not answered with a BizResp: {e}"),
        }
    }

    /// BIZ with a JSON payload; the BizResp whatever its code.
    pub fn biz(
        client: &mut Client,
        service: &str,
        method: &str,
        payload: &serde_json::Value,
    ) -> pb::BizResp {
        biz_raw(client, service, method, payload.to_string().as_bytes())
    }

    /// BIZ with a JSON payload; asserts code 0 and returns the answer payload as JSON.
    pub fn biz_ok(
        client: &mut Client,
        service: &str,
        method: &str,
        payload: &serde_json::Value,
    ) -> serde_json::Value {
        let resp = biz(client, service, method, payload);
        assert_eq!(
            resp.code,
            code::OK,
            "BIZ {service}.{method} {payload} refused: {resp:?}"
        );
        match serde_json::from_slice(&resp.payload) {
            Ok(v) => v,
            Err(e) => panic!("BIZ {service}.{method} answer is not JSON ({e}): {resp:?}"),
        }
    }

    /// group.create; the new group's id.
    pub fn create_group(client: &mut Client, name: &str, members: &[u64]) -> u64 {
        let answer = biz_ok(
            client,
            "group",
            "create",
            &serde_json::json!({ "name": name, "members": members }),
        );
        let gid = answer["group_id"].as_u64();
        match gid {
            Some(gid) if gid != 0 => gid,
            _ => panic!("group.create answers {{\"group_id\": N}}, got {answer}"),
        }
    }

    /// group.members, as a set.
    pub fn group_members(client: &mut Client, group_id: u64) -> BTreeSet<u64> {
        let answer = biz_ok(
            client,
            "group",
            "members",
            &serde_json::json!({ "group_id": group_id }),
        );
        let Some(list) = answer["members"].as_array() else {
            panic!("group.members answers {{\"members\": [..]}}, got {answer}");
        };
        list.iter()
            .map(|m| match m.as_u64() {
                Some(uid) => uid,
                None => panic!("member {m} is not a uid number in {answer}"),
            })
            .collect()
    }

    /// Logs in every uid (dev auth, one `device_id` for all) with all the LOGINs in flight
    /// together, then collects the answers; asserts each is code 0.
    pub fn login_many(addr: SocketAddr, uids: &[u64], device_id: &str) -> Vec<Client> {
        let pending: Vec<(u64, Client, u32)> = uids
            .iter()
            .map(|&uid| {
                let mut client = Client::connect(addr).expect("connect to the gate");
                let req = pb::LoginReq {
                    uid,
                    token: "dev".into(),
                    device_id: device_id.into(),
                    platform: 5,
                    client_version: "test".into(),
                };
                let seq = client.request(cmd::LOGIN, &req).expect("send LOGIN");
                (uid, client, seq)
            })
            .collect();
        pending
            .into_iter()
            .map(|(uid, mut client, seq)| {
                let frame = client.recv_response(seq, WAIT).expect("LoginResp");
                let resp: pb::LoginResp =
                    expect_response(&frame, cmd::LOGIN).expect("LoginResp decodes");
                assert_eq!(resp.code, 0, "login of uid {uid} refused: {resp:?}");
                client
            })
            .collect()
    }
}

/// Delivered reports per (session, msg_id), as the backend would see them (a
/// [`gate::shard::DeliveryObserver`] for `TestGate::start_observed`).
#[derive(Default)]
pub struct Delivered(std::sync::Mutex<std::collections::HashSet<(u64, u64)>>);

impl gate::shard::DeliveryObserver for Delivered {
    fn pushed(&self, _uid: u64, _session_id: u64, _msg_id: u64) {}
    fn reported(&self, batch: &router::link::DeliveryReportBatch) {
        let mut seen = self.0.lock().expect("ledger");
        for report in &batch.reports {
            for &id in &report.delivered {
                seen.insert((report.session_id, id));
            }
        }
    }
}

impl Delivered {
    /// Waits until `msg_id` is reported delivered for `session_id`, at most [`WAIT`].
    pub fn wait_for(&self, session_id: u64, msg_id: u64) {
        let deadline = Instant::now() + WAIT;
        while !self
            .0
            .lock()
            .expect("ledger")
            .contains(&(session_id, msg_id))
        {
            assert!(
                Instant::now() < deadline,
                "msg {msg_id} never reported delivered for session {session_id:#x}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
