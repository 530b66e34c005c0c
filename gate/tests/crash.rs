//! The embedded backend across a SIGKILL: a gate binary with a data directory is killed while
//! clients send; restarted (with another shard count), it returns by PULL every message whose
//! SendResp a client received, exactly once and in order, and answers resends of the SENDs
//! left unanswered with the original msg_id when the message had been stored.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gate::client::{Client, expect_response};
use gate::protocol::{cmd, pb};
use support::WAIT;
use support::im::{SINGLE, code, send_req};
use support::process::GateProcess;

const SENDERS: u64 = 4;
/// SENDs each sender keeps in flight.
const WINDOW: usize = 16;

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the gate binary on `dir`'s data with `shards` shards and waits until it listens.
fn spawn_gate(dir: &std::path::Path, shards: u32) -> GateProcess {
    let data = dir.join("data");
    GateProcess::spawn(&format!("crash-{shards}"), |addr| {
        format!(
            "[gate]\nlisten = \"{addr}\"\nshards = {shards}\nio_memory_kib = 64\n\
             [admin]\nlisten = \"\"\n[limits]\nmsgs_per_sec = 100000\nburst = 100000\n\
             [backend]\ndata_dir = \"{}\"\nsync = \"interval\"\npartitions = 16\n",
            data.display()
        )
    })
}

fn login(addr: SocketAddr, uid: u64) -> Client {
    let mut client = Client::connect(addr).expect("connect");
    let resp = client.login(uid, "dev", "crash-test").expect("login");
    assert_eq!(resp.code, code::OK, "{resp:?}");
    client
}

fn peer(uid: u64) -> u64 {
    1000 + uid
}

/// What one sender saw before the gate died: every client_msg_id it sent, and the msg_id of
/// each one that was answered OK.
#[derive(Default)]
struct Outcome {
    sent: Vec<u64>,
    acked: BTreeMap<u64, u64>,
}

/// Sends `WINDOW` SENDs at a time until the connection fails (the kill), counting answers.
fn send_until_killed(addr: SocketAddr, uid: u64, acked_total: Arc<AtomicU64>) -> Outcome {
    let mut client = login(addr, uid);
    client.set_call_timeout(WAIT);
    let mut out = Outcome::default();
    let mut next_cmid = uid << 32;
    loop {
        let mut asked = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW {
            next_cmid += 1;
            let body = format!("message {next_cmid}");
            let req = send_req(SINGLE, peer(uid), next_cmid, body.as_bytes());
            let Ok(seq) = client.request(cmd::SEND, &req) else {
                return out;
            };
            out.sent.push(next_cmid);
            asked.push((seq, next_cmid));
        }
        for (seq, cmid) in asked {
            let Ok(frame) = client.recv_response(seq, WAIT) else {
                return out;
            };
            let resp: pb::SendResp = expect_response(&frame, cmd::SEND).expect("a SendResp");
            if resp.code == code::OK {
                out.acked.insert(cmid, resp.msg_id);
                acked_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every message of `uid`'s chat with its peer, oldest first.
fn pull_all(client: &mut Client, uid: u64) -> Vec<pb::PushMsg> {
    let mut msgs: Vec<pb::PushMsg> = Vec::new();
    loop {
        let req = pb::PullReq {
            conv_type: SINGLE,
            conv_id: peer(uid),
            after_msg_id: msgs.last().map_or(0, |m| m.msg_id),
            limit: 200,
            ..Default::default()
        };
        let resp: pb::PullResp = client.call(cmd::PULL, &req).expect("PULL");
        assert_eq!(resp.code, code::OK);
        msgs.extend(resp.msgs);
        if !resp.has_more {
            return msgs;
        }
    }
}

#[test]
fn every_acknowledged_message_survives_a_sigkill_exactly_once_and_resends_are_deduplicated() {
    let dir = std::env::temp_dir().join(format!("imgate-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let _cleanup = TempDir(dir.clone());

    let mut gate = spawn_gate(&dir, 2);
    let acked_total = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (1..=SENDERS)
        .map(|uid| {
            let (addr, acked) = (gate.addr, Arc::clone(&acked_total));
            std::thread::spawn(move || send_until_killed(addr, uid, acked))
        })
        .collect();
    // Kill mid-stream: once a good number of SENDs were answered, while more are in flight.
    let deadline = Instant::now() + WAIT * 4;
    while acked_total.load(Ordering::Relaxed) < 2_000 {
        assert!(Instant::now() < deadline, "the senders made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(gate.child.id() as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "SIGKILL delivered");
    let _ = gate.child.wait();
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| t.join().expect("sender thread"))
        .collect();
    drop(gate);

    // Restart on the same data with one shard instead of two.
    let gate = spawn_gate(&dir, 1);
    for (uid, outcome) in (1..=SENDERS).zip(&outcomes) {
        let mut client = login(gate.addr, uid);
        let stored = pull_all(&mut client, uid);
        let ids: Vec<u64> = stored.iter().map(|m| m.msg_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
        let by_cmid: BTreeMap<u64, u64> =
            stored.iter().map(|m| (m.client_msg_id, m.msg_id)).collect();
        assert_eq!(
            by_cmid.len(),
            stored.len(),
            "each client_msg_id stored once"
        );
        for (cmid, msg_id) in &outcome.acked {
            assert_eq!(
                by_cmid.get(cmid),
                Some(msg_id),
                "sender {uid}: acknowledged message {cmid} (msg_id {msg_id}) missing after the restart"
            );
        }
        // Resend everything that got no answer: stored ones keep their id, the rest are new.
        let acked: BTreeSet<u64> = outcome.acked.keys().copied().collect();
        let unanswered: Vec<u64> = outcome
            .sent
            .iter()
            .copied()
            .filter(|c| !acked.contains(c))
            .collect();
        for &cmid in &unanswered {
            let body = format!("message {cmid}");
            let req = send_req(SINGLE, peer(uid), cmid, body.as_bytes());
            let resp: pb::SendResp = client.call(cmd::SEND, &req).expect("resend");
            assert_eq!(resp.code, code::OK, "{resp:?}");
            if let Some(&original) = by_cmid.get(&cmid) {
                assert_eq!(
                    resp.msg_id, original,
                    "a stored message resent keeps its id"
                );
            }
        }
        let after = pull_all(&mut client, uid);
        let cmids: BTreeSet<u64> = after.iter().map(|m| m.client_msg_id).collect();
        assert_eq!(cmids.len(), after.len(), "no duplicate after the resends");
        assert_eq!(
            cmids,
            outcome.sent.iter().copied().collect::<BTreeSet<u64>>(),
            "every SEND stored exactly once"
        );
    }
}

#[test]
fn with_sync_always_pipelined_sends_are_answered_after_their_group_commit_and_kept() {
    let dir = std::env::temp_dir().join(format!("imgate-always-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = TempDir(dir.clone());
    let tune = |c: &mut gate::config::Config| {
        c.backend.data_dir = dir.join("data").display().to_string();
        c.backend.sync = router::config::SyncPolicy::Always;
        c.backend.partitions = 8;
        c.limits.msgs_per_sec = 100_000;
        c.limits.burst = 100_000;
    };
    let gate = support::TestGate::start_with(tune);
    let mut acked: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
    for uid in 1..=2u64 {
        let mut client = gate.login(uid, "always").0;
        let asked: Vec<(u32, u64)> = (1..=100u64)
            .map(|cmid| {
                let req = send_req(SINGLE, peer(uid), cmid, b"durable");
                (client.request(cmd::SEND, &req).expect("SEND"), cmid)
            })
            .collect();
        for (seq, cmid) in asked {
            let frame = client.recv_response(seq, WAIT).expect("answered");
            let resp: pb::SendResp = expect_response(&frame, cmd::SEND).expect("SendResp");
            assert_eq!(resp.code, code::OK, "{resp:?}");
            acked.entry(uid).or_default().insert(cmid, resp.msg_id);
        }
    }
    gate.stop();
    let gate = support::TestGate::start_with(tune);
    for (uid, sent) in acked {
        let mut client = gate.login(uid, "always").0;
        let stored: BTreeMap<u64, u64> = pull_all(&mut client, uid)
            .into_iter()
            .map(|m| (m.client_msg_id, m.msg_id))
            .collect();
        assert_eq!(stored, sent);
    }
    gate.stop();
}
