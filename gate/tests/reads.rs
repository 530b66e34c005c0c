//! READ, READ_RECEIPT and unread counts (PROTOCOL.md "Session rules" 8): who gets a receipt in a
//! single chat and in a group, clamping, READs that move nothing, and SYNC's unread figures
//! checked against a model of every message and read cursor.

mod support;

use std::collections::BTreeMap;

use gate::client::Client;
use gate::protocol::pb;
use support::TestGate;
use support::im::{
    GROUP, SINGLE, Sent, assert_nothing_more, assert_push_of, conv, create_group, expect_receipt,
    read, read_ok, send_text, sync, take_push, uid_on,
};

fn assert_receipt(
    got: &pb::ReadReceipt,
    conv_type: u32,
    conv_id: u64,
    reader: u64,
    read_up_to: u64,
) {
    assert_eq!(
        (got.conv_type, got.conv_id, got.reader, got.read_up_to),
        (conv_type, conv_id, reader, read_up_to),
        "READ_RECEIPT (conv_type, conv_id, reader, read_up_to): {got:?}"
    );
}

/// A on two devices has sent five messages to B on two devices; every copy is delivered.
struct SingleChat {
    gate: TestGate,
    a: u64,
    b: u64,
    a1: Client,
    a2: Client,
    b1: Client,
    b2: Client,
    ids: Vec<u64>,
}

fn single_chat(a: u64, b: u64) -> SingleChat {
    let gate = TestGate::start();
    let (mut a1, _) = gate.login(a, "phone");
    let (mut a2, _) = gate.login(a, "laptop");
    let (mut b1, _) = gate.login(b, "phone");
    let (mut b2, _) = gate.login(b, "laptop");
    let mut ids = Vec::new();
    for i in 0..5 {
        let sent = send_text(&mut a1, SINGLE, b, &format!("read me {i}"));
        assert_push_of(&take_push(&mut b1), &sent, a, a);
        assert_push_of(&take_push(&mut b2), &sent, a, a);
        assert_push_of(&take_push(&mut a2), &sent, a, b);
        ids.push(sent.msg_id);
    }
    SingleChat {
        gate,
        a,
        b,
        a1,
        a2,
        b1,
        b2,
        ids,
    }
}

impl SingleChat {
    /// Every receipt that B's READ up to `applied` causes, and no other frame anywhere.
    fn assert_receipts(&mut self, applied: u64) {
        for device in [&mut self.a1, &mut self.a2] {
            assert_receipt(&expect_receipt(device), SINGLE, self.b, self.b, applied);
        }
        assert_receipt(
            &expect_receipt(&mut self.b2),
            SINGLE,
            self.a,
            self.b,
            applied,
        );
        for client in [&mut self.a1, &mut self.a2, &mut self.b1, &mut self.b2] {
            assert_nothing_more(client);
        }
    }

    fn b_unread(&mut self) -> (u32, u32) {
        let synced = sync(&mut self.b1);
        let update = conv(&synced.convs, SINGLE, self.a).expect("B's SYNC lists A");
        assert_eq!(update.latest_msg_id, self.ids[4], "{synced:?}");
        (update.unread, synced.total_unread)
    }
}

#[test]
fn read_sends_receipts_to_every_device_of_the_sender_and_the_readers_other_devices() {
    let mut t = single_chat(uid_on(0, 100), uid_on(1, 200));
    assert_eq!(t.b_unread(), (5, 5));
    let k = t.ids[2];
    read_ok(&mut t.b1, SINGLE, t.a, k);
    t.assert_receipts(k);
    assert_eq!(
        t.b_unread(),
        (2, 2),
        "unread drops to the messages after {k}"
    );
    // The reader's other device sees the same count; the sender's own count never moved.
    let on_b2 = sync(&mut t.b2);
    assert_eq!(on_b2.total_unread, 2, "{on_b2:?}");
    let on_a = sync(&mut t.a1);
    assert_eq!(
        on_a.total_unread, 0,
        "own messages are never unread: {on_a:?}"
    );
    t.gate.stop();
}

#[test]
fn read_beyond_the_latest_message_is_clamped_to_it() {
    let mut t = single_chat(uid_on(1, 300), uid_on(1, 400));
    let latest = t.ids[4];
    read_ok(&mut t.b1, SINGLE, t.a, latest + 1_000_000);
    t.assert_receipts(latest);
    assert_eq!(t.b_unread(), (0, 0));
    // The cursor sits at the latest, so a message sent next is unread.
    let next = send_text(&mut t.a1, SINGLE, t.b, "one more");
    take_push(&mut t.b1);
    take_push(&mut t.b2);
    take_push(&mut t.a2);
    let synced = sync(&mut t.b1);
    let update = conv(&synced.convs, SINGLE, t.a).expect("B's SYNC lists A");
    assert_eq!((update.latest_msg_id, update.unread), (next.msg_id, 1));
    t.gate.stop();
}

#[test]
fn read_that_moves_nothing_answers_ok_and_sends_no_receipt() {
    let mut t = single_chat(uid_on(0, 500), uid_on(0, 600));
    read_ok(&mut t.b1, SINGLE, t.a, t.ids[3]);
    t.assert_receipts(t.ids[3]);
    // Behind the cursor, at it, and from the other device: nothing moves.
    for (device, up_to) in [(1, t.ids[1]), (1, t.ids[3]), (2, t.ids[0])] {
        let client = if device == 1 { &mut t.b1 } else { &mut t.b2 };
        let result = read(client, SINGLE, t.a, up_to);
        assert_eq!(
            result.code, 0,
            "a READ that moves nothing is OK: {result:?}"
        );
    }
    assert_eq!(t.b_unread(), (1, 1), "the cursor never moves back");
    // The next receipt anyone sees is the marker's.
    read_ok(&mut t.b2, SINGLE, t.a, t.ids[4]);
    for device in [&mut t.a1, &mut t.a2] {
        assert_receipt(&expect_receipt(device), SINGLE, t.b, t.b, t.ids[4]);
    }
    assert_receipt(&expect_receipt(&mut t.b1), SINGLE, t.a, t.b, t.ids[4]);
    for client in [&mut t.a1, &mut t.a2, &mut t.b1, &mut t.b2] {
        assert_nothing_more(client);
    }
    t.gate.stop();
}

#[test]
fn group_read_sends_a_receipt_only_to_the_readers_other_devices() {
    let a = uid_on(0, 700);
    let b = uid_on(1, 800);
    let c = uid_on(1, b + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut b1, _) = gate.login(b, "phone");
    let (mut b2, _) = gate.login(b, "laptop");
    let (mut carol, _) = gate.login(c, "d");
    let gid = create_group(&mut alice, "readers", &[b, c]);
    let mut ids = Vec::new();
    for i in 0..3 {
        let sent = send_text(&mut alice, GROUP, gid, &format!("group {i}"));
        for member in [&mut b1, &mut b2, &mut carol] {
            assert_push_of(&take_push(member), &sent, a, gid);
        }
        ids.push(sent.msg_id);
    }
    read_ok(&mut b1, GROUP, gid, ids[1]);
    assert_receipt(&expect_receipt(&mut b2), GROUP, gid, b, ids[1]);
    for client in [&mut alice, &mut b1, &mut b2, &mut carol] {
        assert_nothing_more(client);
    }
    let synced = sync(&mut b1);
    let update = conv(&synced.convs, GROUP, gid).expect("B's SYNC lists the group");
    assert_eq!((update.latest_msg_id, update.unread), (ids[2], 1));
    let synced = sync(&mut carol);
    let update = conv(&synced.convs, GROUP, gid).expect("C's SYNC lists the group");
    assert_eq!(update.unread, 3, "B's READ is B's alone: {synced:?}");
    gate.stop();
}

#[test]
fn sync_lists_conversations_newest_first() {
    let a = uid_on(0, 900);
    let peers = [uid_on(1, 1000), uid_on(0, a + 1), uid_on(1, 1100)];
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let mut others: Vec<Client> = peers.iter().map(|&p| gate.login(p, "d").0).collect();
    let order =
        |alice: &mut Client| -> Vec<u64> { sync(alice).convs.iter().map(|c| c.conv_id).collect() };
    for (i, peer) in others.iter_mut().enumerate() {
        send_text(peer, SINGLE, a, &format!("hi from {i}"));
        take_push(&mut alice);
    }
    assert_eq!(order(&mut alice), [peers[2], peers[1], peers[0]]);
    send_text(&mut others[0], SINGLE, a, "me again");
    take_push(&mut alice);
    assert_eq!(order(&mut alice), [peers[0], peers[2], peers[1]]);
    // One's own message makes a conversation newest too.
    send_text(&mut alice, SINGLE, peers[1], "answering");
    take_push(&mut others[1]);
    assert_eq!(order(&mut alice), [peers[1], peers[0], peers[2]]);
    gate.stop();
}

/// A conversation as the model keys it: a single chat by its two user indexes (ordered), or
/// the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Single(usize, usize),
    Group,
}

/// Three users (one connection each) in two single chats and one group, with every message
/// and read cursor recorded, so each user's SYNC can be predicted.
struct World {
    gate: TestGate,
    uids: [u64; 3],
    clients: Vec<Client>,
    gid: u64,
    /// (conversation, sender index, msg_id), in send order.
    msgs: Vec<(Key, usize, u64)>,
    cursors: BTreeMap<(usize, Key), u64>,
}

impl World {
    fn members(&self, key: Key) -> Vec<usize> {
        match key {
            Key::Single(x, y) => vec![x, y],
            Key::Group => vec![0, 1, 2],
        }
    }

    /// `(conv_type, conv_id)` of `key` as user `user` sees it.
    fn seen_by(&self, user: usize, key: Key) -> (u32, u64) {
        match key {
            Key::Single(x, y) => (SINGLE, self.uids[if user == x { y } else { x }]),
            Key::Group => (GROUP, self.gid),
        }
    }

    fn single(x: usize, y: usize) -> Key {
        Key::Single(x.min(y), x.max(y))
    }

    fn send(&mut self, from: usize, key: Key) -> u64 {
        let (conv_type, to) = match key {
            Key::Single(..) => self.seen_by(from, key),
            Key::Group => (GROUP, self.gid),
        };
        let n = self.msgs.len();
        let sent: Sent = send_text(&mut self.clients[from], conv_type, to, &format!("m{n}"));
        for member in self.members(key) {
            if member != from {
                let (_, conv_id) = self.seen_by(member, key);
                let push = take_push(&mut self.clients[member]);
                assert_push_of(&push, &sent, self.uids[from], conv_id);
            }
        }
        self.msgs.push((key, from, sent.msg_id));
        sent.msg_id
    }

    fn latest(&self, key: Key) -> u64 {
        self.msgs
            .iter()
            .filter(|m| m.0 == key)
            .map(|m| m.2)
            .max()
            .unwrap_or(0)
    }

    fn read(&mut self, reader: usize, key: Key, up_to: u64) {
        let (conv_type, conv_id) = self.seen_by(reader, key);
        read_ok(&mut self.clients[reader], conv_type, conv_id, up_to);
        let applied = up_to.min(self.latest(key));
        let cursor = self.cursors.entry((reader, key)).or_insert(0);
        assert!(applied > *cursor, "the script only moves cursors forward");
        *cursor = applied;
        if let Key::Single(..) = key {
            let other = self.members(key).into_iter().find(|m| *m != reader);
            let other = other.expect("a single chat has two parties");
            let (_, seen) = self.seen_by(other, key);
            let got = expect_receipt(&mut self.clients[other]);
            assert_receipt(&got, SINGLE, seen, self.uids[reader], applied);
        }
    }

    /// Every user's SYNC matches the model: one entry per conversation that holds messages,
    /// its latest msg_id, unread = others' messages above the user's cursor, and total_unread
    /// = the sum.
    fn check_sync(&mut self) {
        let keys = [Self::single(0, 1), Self::single(0, 2), Key::Group];
        for user in 0..3 {
            let synced = sync(&mut self.clients[user]);
            let mut sum = 0;
            let mut expected_convs = 0;
            for key in keys {
                if !self.members(key).contains(&user) || self.latest(key) == 0 {
                    continue;
                }
                expected_convs += 1;
                let cursor = self.cursors.get(&(user, key)).copied().unwrap_or(0);
                let unread = self
                    .msgs
                    .iter()
                    .filter(|(k, from, id)| *k == key && *from != user && *id > cursor)
                    .count();
                let unread = u32::try_from(unread).expect("few messages");
                let (conv_type, conv_id) = self.seen_by(user, key);
                let Some(update) = conv(&synced.convs, conv_type, conv_id) else {
                    panic!("user {user}: SYNC lacks {key:?}: {synced:?}");
                };
                assert_eq!(
                    (update.latest_msg_id, update.unread),
                    (self.latest(key), unread),
                    "user {user}, {key:?} (latest, unread): {synced:?}"
                );
                sum += update.unread;
            }
            assert_eq!(
                synced.convs.len(),
                expected_convs,
                "user {user}: {synced:?}"
            );
            assert_eq!(
                synced.total_unread, sum,
                "user {user}: total_unread is the sum: {synced:?}"
            );
        }
    }
}

#[test]
fn total_unread_is_the_sum_of_conversation_unreads_and_own_messages_are_never_unread() {
    let uids = [uid_on(0, 1200), uid_on(1, 1300), uid_on(0, 1400)];
    let gate = TestGate::start();
    let mut clients: Vec<Client> = uids.iter().map(|&u| gate.login(u, "d").0).collect();
    let gid = create_group(&mut clients[0], "three", &uids[1..]);
    let mut w = World {
        gate,
        uids,
        clients,
        gid,
        msgs: Vec::new(),
        cursors: BTreeMap::new(),
    };
    let (ab, ac, g) = (World::single(0, 1), World::single(0, 2), Key::Group);
    let (a, b, c) = (0, 1, 2);

    let ab_a2 = {
        w.send(a, ab);
        w.send(a, ab)
    };
    w.send(a, ab);
    w.send(b, ab);
    w.send(b, ab);
    let ac_c1 = w.send(c, ac);
    w.send(c, ac);
    w.send(a, ac);
    w.send(a, g);
    w.send(b, g);
    let g_b2 = w.send(b, g);
    w.send(c, g);
    w.send(a, g);
    w.check_sync();

    w.read(b, ab, ab_a2);
    w.read(a, ac, ac_c1);
    w.read(c, g, g_b2);
    w.check_sync();

    w.send(b, ab);
    let g_last = w.send(c, g);
    w.send(a, ab);
    w.read(a, g, g_last);
    // A's cursor in A-B passes B's messages; A's own later message is still not unread.
    let ab_latest_b = w.send(b, ab);
    w.send(a, ab);
    w.read(a, ab, ab_latest_b);
    w.check_sync();

    for client in &mut w.clients {
        assert_nothing_more(client);
    }
    w.gate.stop();
}
