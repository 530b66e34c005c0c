//! Two gate processes and one router on loopback (issue 8's "Done when"): chat both ways across
//! gates, a user's two devices (one per gate) both receive, the same (uid, device) on the second
//! gate kicks the first, and the router is stopped and restarted mid-test: every SEND meanwhile
//! gets BACKEND_UNAVAILABLE within `backend.timeout_ms`, no client is dropped, and delivery
//! resumes without client reconnects.
//!
//! The gates are the real `gate` binary in child processes (each its own process, ports and
//! shards, as deployed). The router runs in this process on its own glommio executor and its
//! own ports, so the test can stop it (every link socket closes, as when the process dies) and
//! start it again on the same port, and read its state.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gate::client::Client;
use gate::protocol::pb;
use support::im::{self, SINGLE, take_push};
use support::process::{GateProcess, free_addr};
use support::{assert_alive, assert_kicked};

/// `backend.timeout_ms` of the test gates.
const TIMEOUT_MS: u64 = 1000;
/// How long a gate may take to (re)connect: its backoff tops out at 5 s.
const RECONNECT: Duration = Duration::from_secs(15);

fn spawn_gate(id: &str, router: SocketAddr) -> GateProcess {
    GateProcess::spawn(id, |addr| {
        format!(
            "[gate]\nid = \"{id}\"\nlisten = \"{addr}\"\nshards = 2\nio_memory_kib = 64\n\
             [admin]\nlisten = \"\"\n[backend]\nkind = \"remote\"\naddr = \"{router}\"\ntimeout_ms = {TIMEOUT_MS}\n"
        )
    })
}

fn start_router(listen: SocketAddr) -> router::server::RouterHandle {
    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.router.listen = listen.to_string();
    config.router.http_listen = String::new();
    config.router.id = "test-router".into();
    config.backend.partitions = 8;
    match router::server::start(config.validate().expect("valid router config")) {
        Ok(router) => router,
        Err(err) => panic!("router does not start on {listen}: {err}"),
    }
}

/// Waits until the router's counters satisfy `done`.
fn router_when(
    router: &router::server::RouterHandle,
    what: &str,
    done: impl Fn(router::server::RouterStats) -> bool,
) {
    let deadline = Instant::now() + RECONNECT;
    while !done(router.stats()) {
        assert!(
            Instant::now() < deadline,
            "router never had {what}: {:?}",
            router.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn login(gate: &GateProcess, uid: u64, device: &str) -> Client {
    let mut client = Client::connect(gate.addr).expect("connect");
    let resp = client.login(uid, "dev", device).expect("LOGIN answered");
    assert_eq!(resp.code, 0, "login refused: {resp:?}");
    client
}

/// SEND with one `client_msg_id`, retried while the answer is BACKEND_UNAVAILABLE (the link is
/// not up yet); a retry is safe, the backend deduplicates. Returns the accepted answer.
fn send_until_ok(client: &mut Client, to: u64, text: &str, within: Duration) -> pb::SendResp {
    let req = im::send_req(SINGLE, to, im::client_msg_id(), text.as_bytes());
    let deadline = Instant::now() + within;
    loop {
        let resp = im::send(client, &req);
        if resp.code == 0 {
            return resp;
        }
        assert_eq!(
            resp.code, 5,
            "only BACKEND_UNAVAILABLE may be retried: {resp:?}"
        );
        assert!(
            Instant::now() < deadline,
            "SEND still refused after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_gates_chat_through_one_router_that_restarts() {
    if let Ok(filter) = std::env::var("IMGATE_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    }
    let router_addr: SocketAddr = free_addr();
    let router = start_router(router_addr);
    let g1 = spawn_gate("g1", router_addr);
    let g2 = spawn_gate("g2", router_addr);

    // Both gates' shards are linked (2 links each) before anyone logs in.
    router_when(&router, "4 links", |s| s.links == 4);
    let (a, b) = (1001u64, 2002u64);
    let mut a1 = login(&g1, a, "pc");
    let mut b1 = login(&g1, b, "pc");
    let mut b2 = login(&g2, b, "phone");
    // Presence travels on each gate's own link: wait until the router routes all three.
    router_when(&router, "3 sessions", |s| s.sessions == 3);

    // A (gate 1) → B: both of B's devices, one per gate, receive it.
    let sent = send_until_ok(&mut a1, b, "hello b", RECONNECT);
    for client in [&mut b1, &mut b2] {
        let push = take_push(client);
        assert_eq!((push.msg_id, push.from), (sent.msg_id, a));
        assert_eq!(&push.body[..], b"hello b");
    }
    // B (gate 2) → A (gate 1).
    let back = send_until_ok(&mut b2, a, "hello a", RECONNECT);
    let push = take_push(&mut a1);
    assert_eq!((push.msg_id, push.from), (back.msg_id, b));
    // B's other device (gate 1) sees its own message too (the sender's other devices).
    let own = take_push(&mut b1);
    assert_eq!(own.msg_id, back.msg_id);

    // The same (uid, device) logging in on gate 1 kicks the older session on gate 2.
    let mut b2_again = login(&g1, b, "phone");
    assert_kicked(&mut b2, 1);
    router_when(&router, "the kicked session gone", |s| s.sessions == 3);
    assert_alive(&mut b2_again);

    // The router goes away: every SEND is answered BACKEND_UNAVAILABLE within the timeout.
    router.stop();
    for i in 0..5 {
        let req = im::send_req(
            SINGLE,
            b,
            im::client_msg_id(),
            format!("lost {i}").as_bytes(),
        );
        let asked = Instant::now();
        let resp = im::send(&mut a1, &req);
        let took = asked.elapsed();
        assert_eq!(resp.code, 5, "SEND {i} while the router is down: {resp:?}");
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS) + Duration::from_millis(500),
            "SEND {i} answered after {took:?}"
        );
    }
    // No client was dropped.
    for client in [&mut a1, &mut b1, &mut b2_again] {
        assert_alive(client);
    }

    // The router returns on the same address; the gates reconnect and re-announce their
    // sessions, and delivery resumes on the same connections.
    let router = start_router(router_addr);
    // The gates re-announce their sessions (resync) on their new links.
    router_when(&router, "the 3 sessions resynced", |s| {
        s.links == 4 && s.sessions == 3
    });
    let again = send_until_ok(&mut a1, b, "after restart", RECONNECT);
    for client in [&mut b1, &mut b2_again] {
        let push = take_push(client);
        assert_eq!((push.msg_id, push.from), (again.msg_id, a));
        assert_eq!(&push.body[..], b"after restart");
    }
    let reply = send_until_ok(&mut b2_again, a, "welcome back", RECONNECT);
    assert_eq!(take_push(&mut a1).msg_id, reply.msg_id);
    router.stop();
}
