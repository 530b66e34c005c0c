//! Nothing lost: every PUSH queued to a session ends acknowledged (reported delivered) or
//! reported undelivered, exactly once — checked against a ledger of what the gate pushed and
//! reported (a `DeliveryObserver`), with clients that drop ACKs, die mid-stream, never read, or
//! answer PINGs but never ACK. A later PULL still returns every message.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gate::client::{Client, ClientError};
use gate::config::Config;
use gate::protocol::{MsgType, cmd, pb};
use gate::shard::DeliveryObserver;
use router::link;
use support::im::{
    SINGLE, ack, client_msg_id, create_group, login_many, send_req, send_text, uids_on,
};
use support::{TestGate, WAIT, assert_alive};

/// (session_id, msg_id)
type Key = (u64, u64);

/// Every PUSH the gate queued and every report it sent, counted.
#[derive(Default)]
struct Ledger {
    inner: Mutex<Books>,
}

#[derive(Default, Clone)]
struct Books {
    pushed: HashMap<Key, u32>,
    delivered: HashMap<Key, u32>,
    undelivered: HashMap<Key, u32>,
}

impl DeliveryObserver for Ledger {
    fn pushed(&self, _uid: u64, session_id: u64, msg_id: u64) {
        *self
            .inner
            .lock()
            .unwrap()
            .pushed
            .entry((session_id, msg_id))
            .or_default() += 1;
    }

    fn reported(&self, batch: &link::DeliveryReportBatch) {
        let mut books = self.inner.lock().unwrap();
        for r in &batch.reports {
            for &id in &r.delivered {
                *books.delivered.entry((r.session_id, id)).or_default() += 1;
            }
            for &id in &r.undelivered {
                *books.undelivered.entry((r.session_id, id)).or_default() += 1;
            }
        }
    }
}

impl Ledger {
    fn books(&self) -> Books {
        self.inner.lock().unwrap().clone()
    }

    /// Whether every push of `session` has been reported (delivered or undelivered).
    fn settled(&self, session: u64) -> bool {
        let books = self.books();
        let reported = |id: &u64| {
            books.delivered.contains_key(&(session, *id))
                || books.undelivered.contains_key(&(session, *id))
        };
        let mut pushed = books
            .pushed
            .keys()
            .filter(|(s, _)| *s == session)
            .map(|(_, id)| id)
            .peekable();
        pushed.peek().is_some() && pushed.all(reported)
    }

    /// Waits until every push of `session` is reported, then checks conservation for it:
    /// pushed = delivered ∪ undelivered, disjoint, each reported once, nothing reported that
    /// was not pushed. Returns (delivered, undelivered) ids.
    fn settle(&self, session: u64, within: Duration) -> (HashSet<u64>, HashSet<u64>) {
        let deadline = Instant::now() + within;
        loop {
            let books = self.books();
            let of = |m: &HashMap<Key, u32>| -> HashMap<u64, u32> {
                m.iter()
                    .filter(|((s, _), _)| *s == session)
                    .map(|((_, id), n)| (*id, *n))
                    .collect()
            };
            let (pushed, delivered, undelivered) = (
                of(&books.pushed),
                of(&books.delivered),
                of(&books.undelivered),
            );
            let settled = pushed
                .keys()
                .all(|id| delivered.contains_key(id) || undelivered.contains_key(id));
            if settled || Instant::now() >= deadline {
                assert!(!pushed.is_empty(), "session {session} was pushed nothing");
                for (id, n) in &pushed {
                    assert_eq!(*n, 1, "msg {id} tracked {n} times for session {session}");
                    let d = delivered.get(id).copied().unwrap_or(0);
                    let u = undelivered.get(id).copied().unwrap_or(0);
                    assert_eq!(
                        d + u,
                        1,
                        "msg {id} of session {session}: delivered {d}, undelivered {u}"
                    );
                }
                for id in delivered.keys().chain(undelivered.keys()) {
                    assert!(
                        pushed.contains_key(id),
                        "msg {id} reported but never pushed to {session}"
                    );
                }
                return (
                    delivered.into_keys().collect(),
                    undelivered.into_keys().collect(),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Quick retries, so the whole give-up path runs in well under a second.
fn fast_retries(c: &mut Config) {
    c.delivery.ack_timeout_ms = 100;
    c.delivery.max_backoff_ms = 200;
    c.delivery.max_retries = 2;
    c.delivery.probe_timeout_ms = 400;
    c.delivery.report_flush_ms = 5;
    c.limits.msgs_per_sec = 100_000;
    c.limits.burst = 100_000;
}

fn gate_with_ledger(tune: impl FnOnce(&mut Config)) -> (TestGate, Arc<Ledger>) {
    let ledger = Arc::new(Ledger::default());
    let observer: Arc<dyn DeliveryObserver> = ledger.clone();
    (TestGate::start_observed(tune, observer), ledger)
}

/// Sends `n` messages from `from` to `to`; their msg_ids in order.
fn send_many(from: &mut Client, to: u64, n: usize) -> Vec<u64> {
    let seqs: Vec<u32> = (0..n)
        .map(|i| {
            let req = send_req(SINGLE, to, client_msg_id(), format!("m{i}").as_bytes());
            from.request(cmd::SEND, &req).expect("send SEND")
        })
        .collect();
    seqs.into_iter()
        .map(|seq| {
            let frame = from.recv_response(seq, WAIT).expect("SendResp");
            let resp: pb::SendResp = gate::client::decode_body(&frame).expect("SendResp decodes");
            assert_eq!(resp.code, 0, "{resp:?}");
            resp.msg_id
        })
        .collect()
}

/// Every message of the conversation, by paging PULL forward from the start.
fn pull_all(client: &mut Client, peer: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let resp = support::im::pull_ok(client, SINGLE, peer, after, 200);
        ids.extend(resp.msgs.iter().map(|m| m.msg_id));
        match resp.msgs.last() {
            Some(last) if resp.has_more => after = last.msg_id,
            _ => return ids,
        }
    }
}

/// Reads frames until `quiet` passes with none, answering the gate's PINGs (the client library
/// does) and handing each PUSH to `on_push`.
fn read_pushes(
    client: &mut Client,
    quiet: Duration,
    mut on_push: impl FnMut(&mut Client, pb::PushMsg),
) {
    loop {
        match client.recv_frame(quiet) {
            Ok(f) if f.cmd == cmd::PUSH && f.msg_type == MsgType::Notify => {
                let push: pb::PushMsg = gate::client::decode_body(&f).expect("PushMsg");
                on_push(client, push);
            }
            Ok(_) => {}
            Err(ClientError::Timeout) => return,
            Err(e) => panic!("connection lost: {e}"),
        }
    }
}

/// Reads PUSHes (the client answers the gate's PINGs on the way) until `done()` holds after a
/// quiet spell of 100 ms, or `within` has passed: the session keeps answering its delivery
/// probe for as long as the gate may still send one, however slow the machine is.
fn read_pushes_until(
    client: &mut Client,
    within: Duration,
    mut on_push: impl FnMut(&mut Client, pb::PushMsg),
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        read_pushes(client, Duration::from_millis(100), &mut on_push);
        if done() {
            return;
        }
    }
}

#[test]
fn with_30_percent_of_acks_dropped_every_push_ends_delivered_or_undelivered() {
    let (gate, ledger) = gate_with_ledger(fast_retries);
    let (a, b) = (uids_on(0, 100, 1)[0], uids_on(1, 100, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, bob_login) = gate.login(b, "d");
    let sent = send_many(&mut alice, b, 200);
    // Bob ACKs 70 % of the messages the first time he sees them, never the rest, nor resends.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut seen = HashSet::new();
    let mut acked = HashSet::new();
    let session = bob_login.session_id;
    read_pushes_until(
        &mut bob,
        WAIT,
        |client, push| {
            if seen.insert(push.msg_id) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x % 10 < 7 {
                    acked.insert(push.msg_id);
                    ack(client, &[push.msg_id]);
                }
            }
        },
        || ledger.settled(session),
    );
    assert_eq!(
        seen.len(),
        sent.len(),
        "every message was pushed at least once"
    );
    let (delivered, undelivered) = ledger.settle(bob_login.session_id, WAIT);
    assert_eq!(
        delivered, acked,
        "exactly the acknowledged ones are delivered"
    );
    assert_eq!(undelivered.len(), sent.len() - acked.len());
    // Bob answered the probe PING, so he is still connected; and PULL has everything.
    assert_alive(&mut bob);
    assert_eq!(pull_all(&mut bob, a), sent);
    gate.stop();
}

#[test]
fn a_client_that_answers_pings_but_never_acks_gets_everything_reported_undelivered() {
    let (gate, ledger) = gate_with_ledger(fast_retries);
    let (a, b) = (uids_on(0, 200, 1)[0], uids_on(0, 300, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, bob_login) = gate.login(b, "d");
    let sent = send_many(&mut alice, b, 50);
    let mut copies = HashMap::<u64, u32>::new();
    let session = bob_login.session_id;
    read_pushes_until(
        &mut bob,
        WAIT,
        |_, push| *copies.entry(push.msg_id).or_default() += 1,
        || ledger.settled(session),
    );
    // First send plus max_retries resends, for every message.
    assert!(
        sent.iter().all(|id| copies.get(id) == Some(&3)),
        "{copies:?}"
    );
    let (delivered, undelivered) = ledger.settle(bob_login.session_id, WAIT);
    assert!(delivered.is_empty());
    assert_eq!(undelivered, sent.iter().copied().collect());
    assert_alive(&mut bob);
    assert_eq!(pull_all(&mut bob, a), sent);
    gate.stop();
}

#[test]
fn a_client_killed_mid_stream_has_its_pending_pushes_reported_undelivered() {
    let (gate, ledger) = gate_with_ledger(fast_retries);
    let (a, b) = (uids_on(1, 400, 1)[0], uids_on(0, 400, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, bob_login) = gate.login(b, "d");
    let first = send_many(&mut alice, b, 20);
    // Bob ACKs the first ten he sees, then dies.
    let mut acked = HashSet::new();
    while acked.len() < 10 {
        let f = bob.recv_frame(WAIT).expect("a PUSH");
        if f.cmd == cmd::PUSH {
            let push: pb::PushMsg = gate::client::decode_body(&f).expect("PushMsg");
            if acked.insert(push.msg_id) {
                ack(&mut bob, &[push.msg_id]);
            }
        }
    }
    // Make sure the gate has the ACKs before the connection goes.
    assert_alive(&mut bob);
    drop(bob);
    let more = send_many(&mut alice, b, 20);
    let (delivered, undelivered) = ledger.settle(bob_login.session_id, WAIT);
    assert_eq!(delivered, acked);
    assert_eq!(
        delivered.len() + undelivered.len(),
        first.len(),
        "only the first 20 reached that session"
    );
    let (mut bob2, _) = gate.login(b, "d2");
    let all: Vec<u64> = first.iter().chain(&more).copied().collect();
    assert_eq!(pull_all(&mut bob2, a), all);
    gate.stop();
}

#[test]
fn a_client_that_never_reads_is_kicked_as_slow_consumer_and_nothing_is_lost() {
    let (gate, ledger) = gate_with_ledger(|c| {
        fast_retries(c);
        c.delivery.ack_timeout_ms = 60_000; // no resend: the queue limit is what ends it
        c.delivery.max_backoff_ms = 60_000;
        c.limits.outbound_bytes = 64 * 1024;
    });
    let (a, b) = (uids_on(0, 500, 1)[0], uids_on(1, 500, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (_bob, bob_login) = gate.login(b, "d"); // never reads again
    let body = vec![b'x'; 2000];
    let mut sent = Vec::new();
    // Enough to fill the kernel's buffers and then the 64 KiB queue.
    for _ in 0..40 {
        let seqs: Vec<u32> = (0..100)
            .map(|_| {
                let req = send_req(SINGLE, b, client_msg_id(), &body);
                alice.request(cmd::SEND, &req).expect("send SEND")
            })
            .collect();
        for seq in seqs {
            let frame = alice.recv_response(seq, WAIT).expect("SendResp");
            let resp: pb::SendResp = gate::client::decode_body(&frame).expect("SendResp");
            assert_eq!(resp.code, 0);
            sent.push(resp.msg_id);
        }
    }
    let (_, undelivered) = ledger.settle(bob_login.session_id, WAIT);
    assert!(
        !undelivered.is_empty(),
        "the slow consumer's backlog is reported undelivered"
    );
    let (mut bob2, _) = gate.login(b, "d2");
    assert_eq!(pull_all(&mut bob2, a), sent);
    gate.stop();
}

#[test]
fn fan_out_to_1000_members_across_two_shards_is_delivered_exactly_once() {
    // An ack timeout of a minute: no resend can fire while the test runs, so any second copy
    // would be a real duplicate.
    let (gate, ledger) = gate_with_ledger(|c| {
        c.backend.push_threshold = 1000;
        c.delivery.ack_timeout_ms = 60_000;
        c.delivery.max_backoff_ms = 60_000;
        c.delivery.report_flush_ms = 5;
    });
    let uids: Vec<u64> = (1..=1000).map(|i| 10_000 + i).collect();
    let mut clients = login_many(gate.addr(), &uids, "d");
    let gid = create_group(&mut clients[0], "thousand", &uids[1..]);
    let sent = send_text(&mut clients[0], support::im::GROUP, gid, "to everyone");
    for client in clients.iter_mut().skip(1) {
        let push = support::im::take_push(client);
        assert_eq!(push.msg_id, sent.msg_id);
    }
    // Exactly one copy each: the next frame after a PING round trip is the PING answer.
    for client in clients.iter_mut().skip(1).step_by(97) {
        support::im::assert_nothing_more(client);
    }
    let books = ledger.books();
    let pushed: Vec<_> = books
        .pushed
        .iter()
        .filter(|((_, id), _)| *id == sent.msg_id)
        .collect();
    assert_eq!(
        pushed.len(),
        999,
        "one PUSH per member session but the sender's"
    );
    assert!(pushed.iter().all(|(_, n)| **n == 1));
    let deadline = Instant::now() + WAIT;
    loop {
        let books = ledger.books();
        let delivered = books
            .delivered
            .iter()
            .filter(|((_, id), _)| *id == sent.msg_id)
            .count();
        if delivered == 999 || Instant::now() >= deadline {
            assert_eq!(delivered, 999, "every member's ACK reported delivered");
            assert!(books.undelivered.is_empty());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    gate.stop();
}

#[test]
fn pipelined_group_messages_reach_every_member_once_and_in_order() {
    // Pipelined SENDs are handled in few loop turns, so the shards fan them out in runs,
    // session by session; single-chat messages in between break the runs. No resend can fire.
    let (gate, ledger) = gate_with_ledger(|c| {
        c.delivery.ack_timeout_ms = 60_000;
        c.delivery.max_backoff_ms = 60_000;
    });
    let uids: Vec<u64> = (1..=60).map(|i| 20_000 + i).collect();
    let mut clients = login_many(gate.addr(), &uids, "d");
    let gid = create_group(&mut clients[0], "runs", &uids[1..]);
    let bob = uids[1];
    let seqs: Vec<(u32, bool)> = (0..300)
        .map(|i| {
            let single = i % 10 == 9;
            let (conv_type, to) = if single {
                (SINGLE, bob)
            } else {
                (support::im::GROUP, gid)
            };
            let req = send_req(conv_type, to, client_msg_id(), format!("m{i}").as_bytes());
            let seq = clients[0].request(cmd::SEND, &req).expect("send SEND");
            (seq, single)
        })
        .collect();
    let (mut group_ids, mut bob_ids) = (Vec::new(), Vec::new());
    for (seq, single) in seqs {
        let frame = clients[0].recv_response(seq, WAIT).expect("SendResp");
        let resp: pb::SendResp = gate::client::decode_body(&frame).expect("SendResp decodes");
        assert_eq!(resp.code, 0, "{resp:?}");
        if single {
            bob_ids.push(resp.msg_id);
        } else {
            group_ids.push(resp.msg_id);
        }
    }
    for (i, client) in clients.iter_mut().enumerate().skip(1) {
        let expected = group_ids.len() + if i == 1 { bob_ids.len() } else { 0 };
        let pushes = support::im::take_pushes(client, expected);
        let in_group: Vec<u64> = pushes
            .iter()
            .filter(|p| p.conv_type == support::im::GROUP)
            .map(|p| p.msg_id)
            .collect();
        assert_eq!(
            in_group, group_ids,
            "member {i}: every group message once, in order"
        );
        if i == 1 {
            let single: Vec<u64> = pushes
                .iter()
                .filter(|p| p.conv_type == SINGLE)
                .map(|p| p.msg_id)
                .collect();
            assert_eq!(single, bob_ids, "the single chat in order too");
        }
        if i % 13 == 1 {
            support::im::assert_nothing_more(client);
        }
    }
    let books = ledger.books();
    let member_sessions = clients.len() - 1;
    let group_pushes: usize = books
        .pushed
        .iter()
        .filter(|((_, id), _)| group_ids.contains(id))
        .map(|(_, n)| *n as usize)
        .sum();
    assert_eq!(group_pushes, group_ids.len() * member_sessions);
    gate.stop();
}

#[test]
fn with_a_flush_delay_pushes_wait_for_the_shards_flush_tick() {
    // 300 ms: the PUSH cannot arrive sooner (a slow machine only makes it later).
    let (gate, _ledger) = gate_with_ledger(|c| c.delivery.flush_delay_us = 300_000);
    let (a, b) = (uids_on(0, 600, 1)[0], uids_on(0, 700, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let started = Instant::now();
    let sent = send_text(&mut alice, SINGLE, b, "later");
    let push = support::im::take_push(&mut bob);
    assert_eq!(push.msg_id, sent.msg_id);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "pushed after {:?}, before the flush tick",
        started.elapsed()
    );
    gate.stop();
}
