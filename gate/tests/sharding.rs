//! Sharding: every shard accepts, and a LOGIN that arrives on a shard not owning its uid is
//! handed to the owner, so every session lives on `owner_shard(uid)` (read back from the low 10
//! bits of `session_id`).

mod support;

use std::collections::HashSet;
use std::thread;

use gate::client::Client;
use gate::protocol::{cmd, pb};
use gate::shard::{ShardStats, owner_shard, shard_of_session};
use support::{TestGate, WAIT, assert_alive, total};

const CLIENTS: u64 = 500;
const THREADS: u64 = 10;
const SHARDS: usize = 2;

/// Connects `uids.len()` clients, sends every LOGIN, then collects every LoginResp: all the
/// logins of one thread are in flight together.
fn login_all(addr: std::net::SocketAddr, uids: Vec<u64>) -> Vec<(u64, Client, pb::LoginResp)> {
    let mut pending: Vec<(u64, Client, u32)> = uids
        .into_iter()
        .map(|uid| {
            let mut client = Client::connect(addr).expect("connect");
            let req = pb::LoginReq {
                uid,
                token: "dev".into(),
                device_id: "d".into(),
                platform: 5,
                client_version: String::new(),
            };
            let seq = client.request(cmd::LOGIN, &req).expect("send LOGIN");
            (uid, client, seq)
        })
        .collect();
    pending
        .drain(..)
        .map(|(uid, mut client, seq)| {
            let frame = client.recv_response(seq, WAIT).expect("LoginResp");
            let resp = gate::client::expect_response::<pb::LoginResp>(&frame, cmd::LOGIN)
                .expect("LoginResp decodes");
            (uid, client, resp)
        })
        .collect()
}

#[test]
fn concurrent_logins_land_on_the_owner_shard_via_handoff() {
    support::raise_fd_limit(4 * CLIENTS + 256);
    let gate = TestGate::start();
    let addr = gate.addr();
    let per_thread = CLIENTS / THREADS;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let uids: Vec<u64> = (0..per_thread)
                .map(|i| 10_000 + t * per_thread + i)
                .collect();
            thread::spawn(move || login_all(addr, uids))
        })
        .collect();
    let mut sessions = Vec::new();
    for w in workers {
        sessions.extend(w.join().expect("login thread"));
    }
    assert_eq!(sessions.len() as u64, CLIENTS);

    let mut ids = HashSet::new();
    for (uid, _, resp) in &sessions {
        assert_eq!(resp.code, 0, "uid {uid}: {resp:?}");
        assert_ne!(resp.session_id, 0, "uid {uid}");
        assert_eq!(
            shard_of_session(resp.session_id),
            owner_shard(*uid, SHARDS),
            "uid {uid} has session {:#x} on the wrong shard",
            resp.session_id
        );
        assert!(
            ids.insert(resp.session_id),
            "session_id {:#x} given twice",
            resp.session_id
        );
    }

    let settled = |s: &[ShardStats]| {
        total(s, |x| x.sessions) == CLIENTS
            && total(s, |x| x.logins_ok) == CLIENTS
            && total(s, |x| x.handoffs_out) == total(s, |x| x.handoffs_in)
    };
    let stats = gate.stats_when(settled);
    assert_eq!(stats.len(), SHARDS, "{stats:?}");
    assert_eq!(total(&stats, |x| x.sessions), CLIENTS, "{stats:?}");
    assert_eq!(total(&stats, |x| x.logins_ok), CLIENTS, "{stats:?}");
    let out = total(&stats, |x| x.handoffs_out);
    assert!(out > 0, "no login arrived on a non-owner shard: {stats:?}");
    assert_eq!(out, total(&stats, |x| x.handoffs_in), "{stats:?}");
    assert_eq!(total(&stats, |x| x.handoffs_dropped), 0, "{stats:?}");
    // Each shard holds exactly the sessions of the uids it owns.
    for (shard, s) in stats.iter().enumerate() {
        let owned = sessions
            .iter()
            .filter(|(uid, _, _)| owner_shard(*uid, SHARDS) == shard);
        assert_eq!(s.sessions, owned.count() as u64, "shard {shard}: {stats:?}");
    }

    // Handed-off sessions work like any other.
    for (_, client, _) in sessions.iter_mut().step_by(25) {
        assert_alive(client);
    }

    // When the clients leave, the shards forget them.
    drop(sessions);
    let stats =
        gate.stats_when(|s| total(s, |x| x.connections) == 0 && total(s, |x| x.sessions) == 0);
    assert_eq!(total(&stats, |x| x.connections), 0, "{stats:?}");
    assert_eq!(total(&stats, |x| x.sessions), 0, "{stats:?}");
    gate.stop();
}

#[test]
fn duplicate_login_is_detected_whichever_shard_accepts_the_connections() {
    // Many connections for one uid and device: whichever shard each lands on, all but the last
    // are kicked with reason 1.
    let gate = TestGate::start();
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, resp) = gate.login(777, "d");
        assert_eq!(shard_of_session(resp.session_id), owner_shard(777, SHARDS));
        clients.push(client);
    }
    let mut last = clients.pop().expect("eight clients");
    for mut older in clients {
        support::assert_kicked(&mut older, 1);
    }
    assert_alive(&mut last);
    let stats = gate.stats_when(|s| total(s, |x| x.sessions) == 1);
    assert_eq!(total(&stats, |x| x.sessions), 1, "{stats:?}");
    gate.stop();
}

#[test]
fn owner_shard_is_stable_and_spreads_uids() {
    // The routing function the tests rely on: pure, in range, and not degenerate.
    let mut per_shard = [0u32; SHARDS];
    for uid in 1..=1000u64 {
        let s = owner_shard(uid, SHARDS);
        assert_eq!(s, owner_shard(uid, SHARDS));
        per_shard[s] += 1;
    }
    assert!(per_shard.iter().all(|&n| n > 300), "{per_shard:?}");
    assert_eq!(shard_of_session(0x1234_5400 | 0x3FF), 0x3FF);
}

#[test]
fn a_second_gate_on_a_port_already_listened_on_is_refused_not_shared() {
    let first = TestGate::start();
    let taken = first.addr();
    let mut config = gate::config::Config::from_toml("").expect("empty config parses");
    config.gate.listen = taken.to_string();
    config.admin.listen = String::new();
    config.backend.data_dir = String::new();
    config.gate.shards = 1;
    let settings = config.validate().expect("valid");
    let err = match gate::shard::start(settings) {
        Ok(_) => panic!("a second gate bound {taken} alongside the first (SO_REUSEPORT)"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("already in use"), "{err}");
    // The first gate still serves.
    let (_client, resp) = first.login(7_000_001, "d");
    assert_eq!(resp.code, 0);
    first.stop();
}
