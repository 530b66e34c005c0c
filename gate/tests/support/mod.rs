//! Harness shared by the black-box tests: a gate started in-process on 127.0.0.1 with two shards,
//! clients of it, raw frame builders for malformed input, an independent HS256 JWT signer, and
//! assertions that wait on an event with a deadline (never a sleep).
//!
//! Each test binary uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

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
