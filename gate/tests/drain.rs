//! A drain with two gates sharing one router: 200 clients on gate 1 get KICK 2 naming gate 2
//! with retry_after_ms spread over the drain window, their pending PUSHes are reported
//! undelivered, gate 1 exits 0 in time, and on gate 2 every client PULLs what was pending.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gate::client::Client;
use gate::protocol::{cmd, pb};
use router::im::{Origin, Output, Request};
use router::server::{ReferenceIm, Service};
use support::im::{SINGLE, code, expect_push, send_text};
use support::process::{GateProcess, free_addr};
use support::{WAIT, assert_kick};

const CLIENTS: u64 = 200;
const DRAIN_SECS: u64 = 5;

/// The reference IM service, counting the PUSHes gates report undelivered.
struct Counting {
    inner: ReferenceIm,
    undelivered: Arc<AtomicU64>,
}

impl Service for Counting {
    fn request(&mut self, origin: Origin, request: Request, now_ms: u64, out: &mut Vec<Output>) {
        self.inner.request(origin, request, now_ms, out);
    }
    fn presence(&mut self, p: router::link::Presence, now_ms: u64, out: &mut Vec<Output>) {
        self.inner.presence(p, now_ms, out);
    }
    fn report(&mut self, r: router::link::DeliveryReport, now_ms: u64, out: &mut Vec<Output>) {
        self.undelivered
            .fetch_add(r.undelivered.len() as u64, Ordering::SeqCst);
        self.inner.report(r, now_ms, out);
    }
}

fn spawn_gate(id: &str, router: SocketAddr, peers: &[SocketAddr]) -> GateProcess {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    GateProcess::spawn(id, |addr| {
        format!(
            "[gate]\nid = \"{id}\"\nlisten = \"{addr}\"\nshards = 2\nio_memory_kib = 64\n\
             drain_secs = {DRAIN_SECS}\npeers = [{}]\n[admin]\nlisten = \"\"\n\
             [limits]\nmsgs_per_sec = 100000\nburst = 100000\n\
             [backend]\nkind = \"remote\"\naddr = \"{router}\"\n",
            peers.join(", ")
        )
    })
}

fn login(addr: SocketAddr, uid: u64) -> Client {
    let deadline = Instant::now() + WAIT * 2;
    loop {
        // A gate answers BACKEND_UNAVAILABLE until its links to the router are up.
        let mut client = Client::connect(addr).expect("connect");
        let resp = client.login(uid, "dev", "d").expect("LoginResp");
        if resp.code == code::OK {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "login of {uid} refused: {resp:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_drained_gate_sends_its_clients_to_its_peer_and_nothing_pending_is_lost() {
    let router_addr = free_addr();
    let undelivered = Arc::new(AtomicU64::new(0));
    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.backend.partitions = 8;
    config.router.listen = router_addr.to_string();
    config.router.http_listen = String::new();
    let counter = Arc::clone(&undelivered);
    let _router =
        router::server::start_with(config.validate().expect("valid"), move |s| Counting {
            inner: ReferenceIm::new(s.im.clone()),
            undelivered: counter,
        })
        .expect("router starts");

    let gate2 = spawn_gate("gate-2", router_addr, &[]);
    let mut gate1 = spawn_gate("gate-1", router_addr, &[gate2.addr]);
    let uids: Vec<u64> = (1..=CLIENTS).collect();
    let mut clients: Vec<Client> = uids.iter().map(|&uid| login(gate1.addr, uid)).collect();
    let mut sender = login(gate2.addr, 10_000);
    let mut sent = Vec::new();
    for (&uid, client) in uids.iter().zip(&mut clients) {
        let s = send_text(&mut sender, SINGLE, uid, &format!("for {uid}"));
        // Received and left unacknowledged: pending on gate 1.
        assert_eq!(expect_push(client).msg_id, s.msg_id);
        sent.push(s.msg_id);
    }

    let started = Instant::now();
    // SAFETY: kill(2) on our own child.
    assert_eq!(
        unsafe { libc::kill(gate1.child.id() as i32, libc::SIGTERM) },
        0
    );
    let mut retries = BTreeSet::new();
    for client in &mut clients {
        let frames = client.wait_closed(WAIT * 2).expect("kicked and closed");
        let kick = assert_kick(frames.last().expect("a KICK"), 2);
        assert_eq!(kick.reconnect_to, [gate2.addr.to_string()]);
        assert!(
            kick.retry_after_ms < DRAIN_SECS as u32 * 1000,
            "{}",
            kick.retry_after_ms
        );
        retries.insert(kick.retry_after_ms);
    }
    assert!(
        retries.len() > CLIENTS as usize / 2,
        "retry_after_ms spread: {} distinct",
        retries.len()
    );
    let deadline = started + Duration::from_secs(DRAIN_SECS + 5);
    let status = loop {
        if let Some(status) = gate1.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "gate 1 did not exit within drain_secs + 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "gate 1 exited with {status}");
    let deadline = Instant::now() + WAIT;
    while undelivered.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            Instant::now() < deadline,
            "pending PUSHes not reported undelivered: {}",
            undelivered.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // Every client comes back on gate 2 and pulls what was pending.
    for (&uid, &msg_id) in uids.iter().zip(&sent) {
        let mut client = login(gate2.addr, uid);
        let req = pb::PullReq {
            conv_type: SINGLE,
            conv_id: 10_000,
            limit: 10,
            ..Default::default()
        };
        let resp: pb::PullResp = client.call(cmd::PULL, &req).expect("PULL");
        assert_eq!(resp.code, code::OK);
        assert!(
            resp.msgs.iter().any(|m| m.msg_id == msg_id),
            "uid {uid} lost {msg_id}"
        );
    }
}
