//! Groups through the reference backend's BIZ services (PROTOCOL.md "Reference backend services"
//! and "Session rules" 3 and 6): group.create / join / leave / members, a group SEND reaching
//! every member connection but the sending one, FORBIDDEN for non-members, NOT_FOUND and
//! BAD_REQUEST for unknown methods and bad payloads, and NOTIFY instead of PUSH above
//! `backend.push_threshold` (members then PULL).

mod support;

use std::collections::BTreeSet;

use gate::client::Client;
use serde_json::json;
use support::TestGate;
use support::im::{
    GROUP, Sent, assert_nothing_more, assert_push_of, biz, biz_ok, biz_raw, code, conv,
    create_group, expect_notify, group_members, login_many, pull_ok, send, send_req, send_text,
    sync, take_push, uid_on, uids_on,
};

#[test]
fn group_create_answers_an_id_and_members_lists_the_creator_and_the_members() {
    let a = uid_on(0, 100);
    let b = uid_on(1, 200);
    let c = uid_on(0, a + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let gid = create_group(&mut alice, "friends", &[b, c]);
    let other = create_group(&mut alice, "friends", &[b, c]);
    assert_ne!(gid, other, "every create makes a new group");
    assert_eq!(group_members(&mut alice, gid), BTreeSet::from([a, b, c]));
    // Any member may ask, whatever shard it lives on.
    assert_eq!(group_members(&mut bob, gid), BTreeSet::from([a, b, c]));
    gate.stop();
}

#[test]
fn joined_member_receives_group_messages_and_a_member_who_left_neither_receives_nor_sends() {
    let a = uid_on(0, 300);
    let b = uid_on(1, 400);
    let d = uid_on(1, b + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let (mut dave, _) = gate.login(d, "d");
    let gid = create_group(&mut alice, "club", &[b]);

    let joined = biz_ok(&mut dave, "group", "join", &json!({ "group_id": gid }));
    assert_eq!(joined, json!({}), "group.join answers {{}}");
    assert_eq!(group_members(&mut alice, gid), BTreeSet::from([a, b, d]));
    let hello = send_text(&mut alice, GROUP, gid, "welcome dave");
    assert_push_of(&take_push(&mut bob), &hello, a, gid);
    assert_push_of(&take_push(&mut dave), &hello, a, gid);

    let left = biz_ok(&mut bob, "group", "leave", &json!({ "group_id": gid }));
    assert_eq!(left, json!({}), "group.leave answers {{}}");
    assert_eq!(group_members(&mut alice, gid), BTreeSet::from([a, d]));
    let resp = send(
        &mut bob,
        &send_req(GROUP, gid, support::im::client_msg_id(), b"hi?"),
    );
    assert_eq!(
        resp.code,
        code::FORBIDDEN,
        "a former member may not send: {resp:?}"
    );
    let after = send_text(&mut alice, GROUP, gid, "bob has gone");
    assert_push_of(&take_push(&mut dave), &after, a, gid);
    assert_nothing_more(&mut bob);
    assert_nothing_more(&mut dave);
    gate.stop();
}

#[test]
fn group_send_reaches_every_member_connection_but_the_sending_one() {
    let a = uid_on(0, 500);
    let b = uid_on(1, 600);
    let c = uid_on(0, a + 1);
    let outsider = uid_on(1, b + 1);
    let gate = TestGate::start();
    let (mut a1, _) = gate.login(a, "phone");
    let (mut a2, _) = gate.login(a, "laptop");
    let (mut b1, _) = gate.login(b, "phone");
    let (mut b2, _) = gate.login(b, "laptop");
    let (mut carol, _) = gate.login(c, "d");
    let (mut out, _) = gate.login(outsider, "d");
    let gid = create_group(&mut a1, "team", &[b, c]);

    let sent = send_text(&mut a1, GROUP, gid, "hello team");
    for member in [&mut b1, &mut b2, &mut carol] {
        assert_push_of(&take_push(member), &sent, a, gid);
    }
    // The sender's other device gets it too, with client_msg_id set.
    assert_push_of(&take_push(&mut a2), &sent, a, gid);
    assert_nothing_more(&mut a1);
    assert_nothing_more(&mut out);

    // Replies from other members, other shards: msg_id only grows within the group.
    let mut ids = vec![sent.msg_id];
    for (i, from) in [b, c, a, b].into_iter().enumerate() {
        let text = format!("reply {i}");
        let (sender, others): (Sent, Vec<&mut Client>) = match from {
            u if u == a => (
                send_text(&mut a2, GROUP, gid, &text),
                vec![&mut a1, &mut b1, &mut b2, &mut carol],
            ),
            u if u == b => (
                send_text(&mut b1, GROUP, gid, &text),
                vec![&mut a1, &mut a2, &mut b2, &mut carol],
            ),
            _ => (
                send_text(&mut carol, GROUP, gid, &text),
                vec![&mut a1, &mut a2, &mut b1, &mut b2],
            ),
        };
        for member in others {
            assert_push_of(&take_push(member), &sender, from, gid);
        }
        ids.push(sender.msg_id);
    }
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "msg_id only grows within the group: {ids:?}"
    );
    for client in [&mut a1, &mut a2, &mut b1, &mut b2, &mut carol, &mut out] {
        assert_nothing_more(client);
    }
    gate.stop();
}

#[test]
fn send_to_a_group_by_a_non_member_is_forbidden_and_reaches_nobody() {
    let a = uid_on(1, 700);
    let b = uid_on(0, 800);
    let outsider = uid_on(0, b + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let (mut out, _) = gate.login(outsider, "d");
    let gid = create_group(&mut alice, "closed", &[b]);

    let resp = send(
        &mut out,
        &send_req(GROUP, gid, support::im::client_msg_id(), b"let me in"),
    );
    assert_eq!(resp.code, code::FORBIDDEN, "{resp:?}");
    assert_eq!(resp.msg_id, 0, "{resp:?}");
    assert!(!resp.message.is_empty(), "a refusal says why: {resp:?}");

    let marker = send_text(&mut alice, GROUP, gid, "marker");
    assert_push_of(&take_push(&mut bob), &marker, a, gid);
    assert_nothing_more(&mut bob);
    assert_nothing_more(&mut alice);
    assert_nothing_more(&mut out);
    gate.stop();
}

#[test]
fn unknown_biz_service_or_method_is_not_found() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(uid_on(0, 900), "d");
    let gid = create_group(&mut client, "g", &[]);
    for (service, method) in [("group", "frobnicate"), ("nosuchservice", "create")] {
        let resp = biz(&mut client, service, method, &json!({ "group_id": gid }));
        assert_eq!(resp.code, code::NOT_FOUND, "{service}.{method}: {resp:?}");
        assert!(!resp.message.is_empty(), "a refusal says why: {resp:?}");
    }
    gate.stop();
}

#[test]
fn biz_payload_that_is_not_the_expected_json_is_bad_request() {
    let gate = TestGate::start();
    let (mut client, _) = gate.login(uid_on(1, 1000), "d");
    let gid = create_group(&mut client, "g", &[]);
    let cases: [(&str, &[u8]); 6] = [
        ("create", b"not json at all"),
        ("create", b"{\"name\": \"g\", \"members\": "),
        ("create", b"{\"name\": \"g\", \"members\": \"everyone\"}"),
        ("create", b"[1, 2, 3]"),
        ("join", b"{\"group_id\": \"seven\"}"),
        ("members", b"\xff\xfe"),
    ];
    for (method, payload) in cases {
        let resp = biz_raw(&mut client, "group", method, payload);
        assert_eq!(
            resp.code,
            code::BAD_REQUEST,
            "group.{method} {:?}: {resp:?}",
            String::from_utf8_lossy(payload)
        );
        assert!(!resp.message.is_empty(), "a refusal says why: {resp:?}");
    }
    // The service still works on that connection.
    assert_eq!(group_members(&mut client, gid).len(), 1);
    gate.stop();
}

/// `n` distinct uids alternating between the two shards, from `from` on.
fn mixed_uids(from: u64, n: usize) -> Vec<u64> {
    let zero = uids_on(0, from, n);
    let one = uids_on(1, from, n);
    zero.into_iter()
        .zip(one)
        .flat_map(|(z, o)| [z, o])
        .take(n)
        .collect()
}

const SMALL_THRESHOLD: u32 = 5;

#[test]
fn group_at_the_push_threshold_still_gets_push() {
    let gate = TestGate::start_with(|c| c.backend.push_threshold = SMALL_THRESHOLD);
    let uids = mixed_uids(1100, SMALL_THRESHOLD as usize);
    let mut clients = login_many(gate.addr(), &uids, "d");
    let gid = create_group(&mut clients[0], "five", &uids[1..]);
    let sent = send_text(&mut clients[0], GROUP, gid, "five is not more than five");
    for member in &mut clients[1..] {
        assert_push_of(&take_push(member), &sent, uids[0], gid);
    }
    gate.stop();
}

#[test]
fn group_above_the_push_threshold_gets_notify_and_pull_returns_the_message() {
    let gate = TestGate::start_with(|c| c.backend.push_threshold = SMALL_THRESHOLD);
    let uids = mixed_uids(1200, SMALL_THRESHOLD as usize + 1);
    let a = uids[0];
    let mut clients = login_many(gate.addr(), &uids, "d");
    let (mut a2, _) = gate.login(a, "laptop");
    let gid = create_group(&mut clients[0], "six", &uids[1..]);
    assert_eq!(group_members(&mut clients[0], gid).len(), uids.len());

    let sent = send_text(&mut clients[0], GROUP, gid, "six is a crowd");
    for (uid, member) in uids.iter().zip(clients.iter_mut()).skip(1) {
        let notify = expect_notify(member);
        let Some(update) = conv(&notify.updates, GROUP, gid) else {
            panic!("uid {uid}: NOTIFY without the group: {notify:?}");
        };
        assert_eq!(update.latest_msg_id, sent.msg_id, "uid {uid}: {update:?}");
        assert!(
            update.unread >= 1,
            "uid {uid}: the message is unread: {update:?}"
        );
    }
    // The sender's other device is told too; its own message is not unread.
    let notify = expect_notify(&mut a2);
    let update = conv(&notify.updates, GROUP, gid).expect("NOTIFY names the group");
    assert_eq!((update.latest_msg_id, update.unread), (sent.msg_id, 0));

    let reader = &mut clients[3];
    let pulled = pull_ok(reader, GROUP, gid, 0, 0);
    assert_eq!(pulled.msgs.len(), 1, "{pulled:?}");
    assert!(!pulled.has_more, "{pulled:?}");
    assert_push_of(&pulled.msgs[0], &sent, a, gid);
    let synced = sync(reader);
    let update = conv(&synced.convs, GROUP, gid).expect("SYNC lists the group");
    assert_eq!(
        (update.latest_msg_id, update.unread),
        (sent.msg_id, 1),
        "pulling is not reading: {synced:?}"
    );
    // No PUSH follows the NOTIFY, for anyone.
    assert_nothing_more(&mut a2);
    for member in &mut clients {
        assert_nothing_more(member);
    }
    gate.stop();
}

#[test]
fn group_of_300_at_the_default_threshold_gets_notify_and_one_pull_returns_the_message() {
    const MEMBERS: usize = 300;
    support::raise_fd_limit(4 * MEMBERS as u64 + 256);
    let gate = TestGate::start();
    assert_eq!(gate.settings.backend.push_threshold, 200);
    let uids = mixed_uids(10_000, MEMBERS);
    let a = uids[0];
    let mut clients = login_many(gate.addr(), &uids, "d");
    let gid = create_group(&mut clients[0], "everyone", &uids[1..]);
    assert_eq!(group_members(&mut clients[0], gid).len(), MEMBERS);

    let sent = send_text(&mut clients[0], GROUP, gid, "announcement");
    for (uid, member) in uids.iter().zip(clients.iter_mut()).skip(1) {
        let notify = expect_notify(member);
        let Some(update) = conv(&notify.updates, GROUP, gid) else {
            panic!("uid {uid}: NOTIFY without the group: {notify:?}");
        };
        assert_eq!(update.latest_msg_id, sent.msg_id, "uid {uid}: {update:?}");
        assert!(update.unread >= 1, "uid {uid}: {update:?}");
    }
    let pulled = pull_ok(&mut clients[MEMBERS / 2], GROUP, gid, 0, 0);
    assert_eq!(pulled.msgs.len(), 1, "{pulled:?}");
    assert!(!pulled.has_more, "{pulled:?}");
    assert_push_of(&pulled.msgs[0], &sent, a, gid);
    assert_nothing_more(&mut clients[0]);
    gate.stop();
}
