//! The admin endpoint: metrics that parse strictly and count what scripted clients did, health
//! and readiness (which flips with the backend), least-connections figures, kick, and drain.

mod support;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use gate::admin::promtext::{self, Sample};
use gate::client::expect_response;
use gate::protocol::{cmd, pb};
use support::im::{SINGLE, ack, client_msg_id, code, expect_push, send_req};
use support::{TestGate, WAIT, assert_kick, http};

/// The sum over shards of the samples of `name` whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn scrape(admin: SocketAddr) -> Vec<Sample> {
    let (status, head, body) = http(admin, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtext::parse(&body).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{body}"))
}

#[test]
fn metrics_parse_strictly_and_count_what_scripted_clients_did() {
    let gate = TestGate::start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.limits.msgs_per_sec = 1;
        c.limits.burst = 6;
    });
    let admin = gate.admin();
    let before = scrape(admin);
    assert_eq!(sum(&before, "imgate_logins_total", &[]), 0.0);
    assert_eq!(
        sum(&before, "imgate_backend_up", &[]),
        2.0,
        "both shards' backends up"
    );

    let (mut a, _) = gate.login(10, "a");
    let (mut b, _) = gate.login(20, "b");
    // A: LOGIN took one token of 6; 8 SENDs pipelined: 5 accepted, the rest RATE_LIMITED
    // (one token per second refills, so a slow machine may accept one more).
    let mut asked = Vec::new();
    for _ in 0..8 {
        let req = send_req(SINGLE, 20, client_msg_id(), b"hi");
        asked.push(a.request(cmd::SEND, &req).expect("SEND"));
    }
    let (mut accepted, mut limited) = (0u64, 0u64);
    for seq in asked {
        let frame = a.recv_response(seq, WAIT).expect("an answer");
        let resp: pb::SendResp = expect_response(&frame, cmd::SEND).expect("SendResp");
        match resp.code {
            code::OK => accepted += 1,
            code::RATE_LIMITED => limited += 1,
            other => panic!("unexpected code {other}"),
        }
    }
    assert!(
        limited > 0 && accepted >= 5,
        "accepted {accepted}, limited {limited}"
    );
    let pushed: Vec<u64> = (0..accepted).map(|_| expect_push(&mut b).msg_id).collect();
    ack(&mut b, &pushed);
    b.ping().expect("PING after the ACK: the gate has read it");
    a.ping().expect("PING");

    let m = scrape(admin);
    assert_eq!(sum(&m, "imgate_logins_total", &[("code", "0")]), 2.0);
    assert_eq!(sum(&m, "imgate_sessions", &[]), 2.0);
    assert_eq!(sum(&m, "imgate_pushes_total", &[]), accepted as f64);
    assert_eq!(sum(&m, "imgate_acks_total", &[]), accepted as f64);
    assert_eq!(sum(&m, "imgate_rate_limited_total", &[]), limited as f64);
    // A: LOGIN, 8 SENDs, PING; B: LOGIN, one ACK, PING.
    assert_eq!(sum(&m, "imgate_frames_in_total", &[]), 13.0);
    assert!(sum(&m, "imgate_bytes_out_total", &[]) > 0.0);
    let timed = sum(&m, "imgate_backend_latency_seconds_count", &[]);
    assert!(timed >= accepted as f64, "every SEND was timed: {timed}");
    assert_eq!(sum(&m, "imgate_kicks_total", &[]), 0.0);

    // POST /kick: KICK 7 to B, counted by reason.
    let (status, _, body) = http(admin, "POST", "/kick?uid=20");
    assert_eq!((status, body.trim()), (200, r#"{"kicked":1}"#));
    let frames = b.wait_closed(WAIT).expect("kicked and closed");
    assert_kick(frames.last().expect("a KICK"), 7);
    let m = scrape(admin);
    assert_eq!(sum(&m, "imgate_kicks_total", &[("reason", "admin")]), 1.0);
    assert_eq!(sum(&m, "imgate_kicks_total", &[]), 1.0);

    // /lsb: connections fall to A alone once B's socket is gone.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _, body) = http(admin, "GET", "/lsb");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["shards"], 2);
        assert!(v["capacity"].as_u64().unwrap() > 0);
        if v["connections"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections never fell to 1: {body}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(http(admin, "GET", "/healthz").0, 200);
    assert_eq!(http(admin, "GET", "/readyz").0, 200);
    assert_eq!(http(admin, "GET", "/nope").0, 404);
    let (status, head, _) = http(admin, "GET", "/drain");
    assert_eq!(status, 405);
    assert!(head.contains("allow: POST"), "{head}");
    assert_eq!(http(admin, "POST", "/kick?uid=abc").0, 400);
    gate.stop();
}

#[test]
fn readyz_flips_with_the_backend_link() {
    let router_addr = support::process::free_addr();
    let gate = TestGate::start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.backend.kind = gate::config::BackendKind::Remote;
        c.backend.addr = router_addr.to_string();
    });
    let admin = gate.admin();
    let (status, _, body) = http(admin, "GET", "/readyz");
    assert_eq!(status, 503, "no router yet: {body}");
    assert!(body.contains("backend unreachable"), "{body}");
    assert_eq!(http(admin, "GET", "/healthz").0, 200, "alive all the same");

    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.router.listen = router_addr.to_string();
    config.router.http_listen = String::new();
    let router = router::server::start(config.validate().expect("valid")).expect("router starts");
    let deadline = Instant::now() + WAIT * 2;
    while http(admin, "GET", "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready with the router up");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(router);
    let deadline = Instant::now() + WAIT * 2;
    while http(admin, "GET", "/readyz").0 != 503 {
        assert!(
            Instant::now() < deadline,
            "still ready with the router gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gate.stop();
}

#[test]
fn drain_sends_everyone_away_with_peers_and_spread_retries_and_the_shards_exit() {
    const CLIENTS: u64 = 40;
    let mut gate = TestGate::start_with(|c| {
        c.admin.listen = "127.0.0.1:0".into();
        c.gate.peers = vec!["127.0.0.1:7999".into()];
        c.gate.drain_secs = 2;
    });
    let admin = gate.admin();
    let client_addr = gate.addr();
    let mut clients: Vec<_> = (1..=CLIENTS)
        .map(|uid| gate.login(100 + uid, "d").0)
        .collect();
    let (status, _, _) = http(admin, "POST", "/drain");
    assert_eq!(status, 202);
    let mut retries = BTreeSet::new();
    for client in &mut clients {
        let frames = client.wait_closed(WAIT).expect("kicked and closed");
        let kick = assert_kick(frames.last().expect("a KICK"), 2);
        assert_eq!(kick.reconnect_to, ["127.0.0.1:7999"]);
        assert!(kick.retry_after_ms < 2000, "{}", kick.retry_after_ms);
        retries.insert(kick.retry_after_ms);
    }
    assert!(retries.len() > CLIENTS as usize / 2, "spread: {retries:?}");
    let (status, _, body) = http(admin, "GET", "/readyz");
    assert_eq!((status, body.trim()), (503, "draining"));
    assert!(
        gate.handle_mut().wait(Duration::from_secs(2 + 5)),
        "shards exit in time"
    );
    assert!(TcpStream::connect(client_addr).is_err(), "listeners closed");
}
