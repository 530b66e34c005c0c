//! Offline messages and history (PROTOCOL.md "Session rules" 7, 8 and 10): what a user who was
//! offline finds with SYNC, PULL forwards (`after_msg_id`, `limit` 0 = 50, capped at 200,
//! `has_more`) and backwards (the `before_msg_id` extension), seen from either party, and that
//! stored messages are not pushed again at login.

mod support;

use gate::client::Client;
use gate::protocol::{MsgType, cmd, pb};
use support::TestGate;
use support::im::{
    QUIET, SINGLE, Sent, assert_nothing_more, assert_push_of, conv, next_event, pull_before,
    pull_ok, pull_with, send_text, sync, uid_on,
};

/// `n` messages from `client` (uid `from`) to `to`, each answered before the next is sent.
fn send_many(client: &mut Client, to: u64, n: usize) -> Vec<Sent> {
    let sent: Vec<Sent> = (0..n)
        .map(|i| send_text(client, SINGLE, to, &format!("offline message {i}")))
        .collect();
    let ids: Vec<u64> = sent.iter().map(|s| s.msg_id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "msg_id only grows within a conversation: {ids:?}"
    );
    sent
}

fn ids(msgs: &[pb::PushMsg]) -> Vec<u64> {
    msgs.iter().map(|m| m.msg_id).collect()
}

/// Pages forwards from `after_msg_id` 0 with `limit` until `has_more` is false (at most
/// `max_pages` pages); every page but the last is full.
fn pull_all_forwards(
    client: &mut Client,
    conv_id: u64,
    limit: u32,
    max_pages: usize,
) -> Vec<pb::PushMsg> {
    let mut all: Vec<pb::PushMsg> = Vec::new();
    for _ in 0..max_pages {
        let after = all.last().map_or(0, |m| m.msg_id);
        let page = pull_ok(client, SINGLE, conv_id, after, limit);
        assert!(
            !page.msgs.is_empty() || !page.has_more,
            "an empty page cannot have more: {page:?}"
        );
        if page.has_more {
            assert_eq!(page.msgs.len(), limit as usize, "a page with more is full");
        }
        all.extend(page.msgs);
        if !page.has_more {
            return all;
        }
    }
    panic!("still has_more after {max_pages} pages of {limit}");
}

/// Pages backwards from `before_msg_id` = `start` with `limit` until `has_more` is false.
fn pull_all_backwards(
    client: &mut Client,
    conv_id: u64,
    start: u64,
    limit: u32,
    max_pages: usize,
) -> Vec<pb::PushMsg> {
    let mut all: Vec<pb::PushMsg> = Vec::new();
    for _ in 0..max_pages {
        let before = all.last().map_or(start, |m| m.msg_id);
        let page = pull_before(client, SINGLE, conv_id, before, limit);
        assert_eq!(page.code, 0, "backwards PULL refused: {page:?}");
        if page.has_more {
            assert_eq!(page.msgs.len(), limit as usize, "a page with more is full");
        }
        all.extend(page.msgs);
        if !page.has_more {
            return all;
        }
    }
    panic!("still has_more after {max_pages} backwards pages of {limit}");
}

/// Nothing but NOTIFY hints (PROTOCOL.md rule 10 allows them at login) is waiting for this
/// connection, and nothing follows for [`QUIET`].
fn assert_no_push_after_login(client: &mut Client) {
    let seq = client.request(cmd::PING, &()).expect("send PING");
    loop {
        let frame = next_event(client);
        if (frame.cmd, frame.msg_type, frame.seq) == (cmd::PING, MsgType::Response, seq) {
            break;
        }
        assert_eq!(
            (frame.cmd, frame.msg_type),
            (cmd::NOTIFY, MsgType::Notify),
            "messages stored while offline are not pushed at login; got {frame:?}"
        );
    }
    match client.recv_frame(QUIET) {
        Err(gate::client::ClientError::Timeout) => {}
        other => panic!("expected silence after login, got {other:?}"),
    }
}

const OFFLINE: usize = 120;

#[test]
fn offline_user_finds_every_message_with_sync_and_pull_in_order() {
    let a = uid_on(0, 100);
    let b = uid_on(1, 200);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let sent = send_many(&mut alice, b, OFFLINE);
    let want: Vec<u64> = sent.iter().map(|s| s.msg_id).collect();
    let last = want[OFFLINE - 1];
    assert_nothing_more(&mut alice);

    let (mut bob, _) = gate.login(b, "phone");
    let synced = sync(&mut bob);
    assert_eq!(synced.convs.len(), 1, "B has one conversation: {synced:?}");
    let update = conv(&synced.convs, SINGLE, a).expect("B's conversation is A");
    assert_eq!(
        (update.latest_msg_id, update.unread),
        (last, OFFLINE as u32),
        "{update:?}"
    );
    assert_eq!(synced.total_unread, OFFLINE as u32, "{synced:?}");
    assert!(!synced.has_more, "{synced:?}");

    // The first page: the 50 oldest, ascending, seen from B (conv_id = A).
    let first = pull_ok(&mut bob, SINGLE, a, 0, 50);
    assert_eq!(ids(&first.msgs), want[..50], "{first:?}");
    assert!(first.has_more, "{first:?}");
    for (msg, sent) in first.msgs.iter().zip(&sent) {
        assert_push_of(msg, sent, a, a);
    }

    // Paging forwards collects exactly the 120, in order.
    let all = pull_all_forwards(&mut bob, a, 50, 10);
    assert_eq!(ids(&all), want);
    for (msg, sent) in all.iter().zip(&sent) {
        assert_push_of(msg, sent, a, a);
    }

    // limit 0 means 50; a limit above what is left returns the rest without has_more.
    let zero = pull_ok(&mut bob, SINGLE, a, 0, 0);
    assert_eq!(ids(&zero.msgs), want[..50], "limit 0 means 50");
    assert!(zero.has_more);
    let big = pull_ok(&mut bob, SINGLE, a, 0, 500);
    assert!(
        big.msgs.len() <= 200,
        "limit is capped at 200: {}",
        big.msgs.len()
    );
    assert_eq!(ids(&big.msgs), want, "120 messages are below the cap");
    assert!(!big.has_more);
    let tail = pull_ok(&mut bob, SINGLE, a, want[99], 50);
    assert_eq!(ids(&tail.msgs), want[100..]);
    assert!(!tail.has_more);
    let past_end = pull_ok(&mut bob, SINGLE, a, last, 50);
    assert!(
        past_end.msgs.is_empty() && !past_end.has_more,
        "{past_end:?}"
    );

    // Backwards from the end: newest first, paging back to the start.
    let newest = pull_before(&mut bob, SINGLE, a, last + 1, 50);
    assert_eq!(newest.code, 0, "{newest:?}");
    let newest_first: Vec<u64> = want.iter().rev().copied().collect();
    assert_eq!(ids(&newest.msgs), newest_first[..50], "{newest:?}");
    assert!(newest.has_more);
    let back = pull_all_backwards(&mut bob, a, last + 1, 50, 10);
    assert_eq!(ids(&back), newest_first);
    for msg in &back {
        assert_eq!((msg.conv_id, msg.from, msg.to), (a, a, b), "{msg:?}");
    }
    // With before_msg_id set, after_msg_id is ignored.
    let both = pull_with(
        &mut bob,
        &pb::PullReq {
            conv_type: SINGLE,
            conv_id: a,
            after_msg_id: want[100],
            limit: 50,
            before_msg_id: want[10],
        },
    );
    assert_eq!(both.code, 0, "{both:?}");
    let ten_oldest_newest_first: Vec<u64> = want[..10].iter().rev().copied().collect();
    assert_eq!(ids(&both.msgs), ten_oldest_newest_first);
    assert!(!both.has_more);

    // Pulling is not reading.
    let again = sync(&mut bob);
    assert_eq!(again.total_unread, OFFLINE as u32, "{again:?}");

    // The sender sees the same conversation as B's, its own messages never unread.
    let from_a = pull_ok(&mut alice, SINGLE, b, 0, 200);
    assert_eq!(ids(&from_a.msgs), want);
    assert!(!from_a.has_more);
    for (msg, sent) in from_a.msgs.iter().zip(&sent) {
        assert_push_of(msg, sent, a, b);
    }
    let a_sync = sync(&mut alice);
    let update = conv(&a_sync.convs, SINGLE, b).expect("A's conversation is B");
    assert_eq!(
        (update.latest_msg_id, update.unread),
        (last, 0),
        "{a_sync:?}"
    );
    assert_eq!(a_sync.total_unread, 0, "{a_sync:?}");

    assert_no_push_after_login(&mut bob);
    gate.stop();
}

#[test]
fn pull_limit_above_200_is_capped_at_200() {
    const N: usize = 230;
    let a = uid_on(1, 300);
    let b = uid_on(1, a + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let want: Vec<u64> = send_many(&mut alice, b, N)
        .iter()
        .map(|s| s.msg_id)
        .collect();
    let (mut bob, _) = gate.login(b, "d");

    let page = pull_ok(&mut bob, SINGLE, a, 0, 500);
    assert_eq!(ids(&page.msgs), want[..200], "at most 200 per PULL");
    assert!(page.has_more);
    let rest = pull_ok(&mut bob, SINGLE, a, want[199], 500);
    assert_eq!(ids(&rest.msgs), want[200..]);
    assert!(!rest.has_more);

    let back = pull_before(&mut bob, SINGLE, a, want[N - 1] + 1, 1000);
    assert_eq!(back.code, 0, "{back:?}");
    let newest: Vec<u64> = want.iter().rev().take(200).copied().collect();
    assert_eq!(ids(&back.msgs), newest, "backwards is capped too");
    assert!(back.has_more);
    gate.stop();
}

#[test]
fn messages_from_while_offline_are_found_by_any_new_device_of_the_recipient() {
    let a = uid_on(0, 400);
    let b = uid_on(0, a + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "phone");
    // Delivered online to B's phone, acknowledged there ...
    let sent: Vec<Sent> = (0..3)
        .map(|i| send_text(&mut alice, SINGLE, b, &format!("roaming {i}")))
        .collect();
    for s in &sent {
        assert_push_of(&support::im::take_push(&mut bob), s, a, a);
    }
    // ... and still pulled, in full, by a device that logs in later (roaming).
    let (mut tablet, _) = gate.login(b, "tablet");
    let pulled = pull_ok(&mut tablet, SINGLE, a, 0, 0);
    assert_eq!(
        ids(&pulled.msgs),
        sent.iter().map(|s| s.msg_id).collect::<Vec<_>>()
    );
    assert!(!pulled.has_more);
    let synced = sync(&mut tablet);
    assert_eq!(
        conv(&synced.convs, SINGLE, a).map(|c| c.unread),
        Some(3),
        "ACK is not reading: {synced:?}"
    );
    gate.stop();
}
