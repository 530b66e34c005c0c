//! Single chat through the gate and its embedded backend (PROTOCOL.md "Commands", "Session
//! rules" 3-5 and 9): SEND is answered with the backend's `msg_id`, the recipient's devices get a
//! PUSH seen from their side (`conv_id` = the sender), the sender's other devices get a copy
//! (`conv_id` = the recipient), the sending connection gets only its SendResp, resends are
//! deduplicated by (uid, `client_msg_id`), and invalid SENDs get their codes.
//!
//! Every test runs on two shards with uids chosen by `owner_shard`, so a pair lives either on
//! different shards or on the same one, as the test's name says.

mod support;

use gate::client::Client;
use support::TestGate;
use support::im::{
    SINGLE, Sent, ack, assert_nothing_more, assert_push_of, client_msg_id, code, expect_push,
    push_with_id, send, send_req, send_text, take_push, take_pushes, uid_on,
};

/// A sends one message to B; B gets the PUSH as A's conversation and acknowledges it.
fn assert_message_reaches_the_recipient(a: u64, b: u64) {
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "phone");
    let (mut bob, _) = gate.login(b, "phone");

    let sent = send_text(&mut alice, SINGLE, b, "hello bob");
    let push = expect_push(&mut bob);
    assert_push_of(&push, &sent, a, a);
    ack(&mut bob, &[push.msg_id]);

    // And the other way round: B's message reaches A with conv_id = B.
    let reply = send_text(&mut bob, SINGLE, a, "hello alice");
    assert_ne!(reply.msg_id, sent.msg_id, "msg_id is unique");
    let push = take_push(&mut alice);
    assert_push_of(&push, &reply, b, b);

    assert_nothing_more(&mut bob);
    assert_nothing_more(&mut alice);
    gate.stop();
}

#[test]
fn push_reaches_a_recipient_on_another_shard_with_conv_id_of_the_sender() {
    let a = uid_on(0, 100);
    let b = uid_on(1, 200);
    assert_message_reaches_the_recipient(a, b);
}

#[test]
fn push_reaches_a_recipient_on_the_same_shard_with_conv_id_of_the_sender() {
    let a = uid_on(1, 100);
    let b = uid_on(1, a + 1);
    assert_message_reaches_the_recipient(a, b);
}

/// A on two devices, B on two devices; A's first device sends one message.
struct TwoByTwo {
    gate: TestGate,
    a: u64,
    b: u64,
    a1: Client,
    a2: Client,
    b1: Client,
    b2: Client,
    sent: Sent,
}

fn two_by_two(a: u64, b: u64) -> TwoByTwo {
    let gate = TestGate::start();
    let (mut a1, _) = gate.login(a, "phone");
    let (a2, _) = gate.login(a, "laptop");
    let (b1, _) = gate.login(b, "phone");
    let (b2, _) = gate.login(b, "laptop");
    let sent = send_text(&mut a1, SINGLE, b, "to both of your devices");
    TwoByTwo {
        gate,
        a,
        b,
        a1,
        a2,
        b1,
        b2,
        sent,
    }
}

#[test]
fn push_reaches_both_devices_of_the_recipient() {
    let a = uid_on(0, 300);
    let b = uid_on(1, 400);
    let mut t = two_by_two(a, b);
    for device in [&mut t.b1, &mut t.b2] {
        let push = take_push(device);
        assert_push_of(&push, &t.sent, t.a, t.a);
        assert_nothing_more(device);
    }
    t.gate.stop();
}

#[test]
fn senders_other_device_gets_a_copy_with_conv_id_of_the_recipient() {
    let a = uid_on(1, 300);
    let b = uid_on(0, 400);
    let mut t = two_by_two(a, b);
    let copy = take_push(&mut t.a2);
    assert_push_of(&copy, &t.sent, t.a, t.b);
    assert_eq!(
        copy.from, t.a,
        "the copy is recognised as one's own by from"
    );
    assert_nothing_more(&mut t.a2);
    t.gate.stop();
}

#[test]
fn sending_connection_gets_only_its_send_resp() {
    let a = uid_on(0, 500);
    let b = uid_on(0, a + 1);
    let mut t = two_by_two(a, b);
    // Every other copy has been delivered, so the sender's own would have been too.
    take_push(&mut t.b1);
    take_push(&mut t.b2);
    take_push(&mut t.a2);
    assert_nothing_more(&mut t.a1);
    t.gate.stop();
}

#[test]
fn msg_id_only_grows_within_a_conversation() {
    let a = uid_on(0, 600);
    let b = uid_on(1, 700);
    let c = uid_on(1, b + 1);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let (mut carol, _) = gate.login(c, "d");

    // Both directions of A-B interleaved, with A-C traffic in between.
    let mut ab = Vec::new();
    let mut all = std::collections::HashSet::new();
    for i in 0..12 {
        let sent = match i % 4 {
            0 | 3 => {
                let s = send_text(&mut alice, SINGLE, b, &format!("a->b {i}"));
                take_push(&mut bob);
                s
            }
            1 => {
                let s = send_text(&mut bob, SINGLE, a, &format!("b->a {i}"));
                take_push(&mut alice);
                s
            }
            _ => {
                let s = send_text(&mut alice, SINGLE, c, &format!("a->c {i}"));
                take_push(&mut carol);
                assert!(all.insert(s.msg_id), "msg_id {} given twice", s.msg_id);
                continue;
            }
        };
        assert!(
            all.insert(sent.msg_id),
            "msg_id {} given twice",
            sent.msg_id
        );
        ab.push(sent.msg_id);
    }
    assert!(
        ab.windows(2).all(|w| w[0] < w[1]),
        "msg_ids of one conversation in send order must grow: {ab:?}"
    );
    gate.stop();
}

#[test]
fn resend_with_a_known_client_msg_id_gets_the_original_msg_id_and_pushes_nothing() {
    let a = uid_on(0, 800);
    let b = uid_on(1, 900);
    let c = uid_on(0, a + 1);
    let gate = TestGate::start();
    let (mut a1, _) = gate.login(a, "phone");
    let (mut a2, _) = gate.login(a, "laptop");
    let (mut bob, _) = gate.login(b, "d");
    let (mut carol, _) = gate.login(c, "d");

    let id = client_msg_id();
    let first = send(&mut a1, &send_req(SINGLE, b, id, b"original"));
    assert_eq!(first.code, code::OK, "{first:?}");
    assert_ne!(first.msg_id, 0, "{first:?}");
    let push = take_push(&mut bob);
    assert_eq!(push.msg_id, first.msg_id);
    let copy = take_push(&mut a2);
    assert_eq!(copy.msg_id, first.msg_id);
    // The ACKs are processed before the resends (frames of a connection are handled in order),
    // so a PUSH of the same msg_id from here on would be a new push, not a retransmission.
    assert_nothing_more(&mut bob);
    assert_nothing_more(&mut a2);

    let resends = [
        ("same content", false, send_req(SINGLE, b, id, b"original")),
        ("other content", false, send_req(SINGLE, b, id, b"changed")),
        (
            "other recipient",
            false,
            send_req(SINGLE, c, id, b"original"),
        ),
        (
            "the other device",
            true,
            send_req(SINGLE, b, id, b"original"),
        ),
    ];
    for (what, from_other_device, req) in resends {
        let client = if from_other_device { &mut a2 } else { &mut a1 };
        let resp = send(client, &req);
        assert_eq!(
            (resp.code, resp.msg_id),
            (code::OK, first.msg_id),
            "resend with {what} gets the original msg_id: {resp:?}"
        );
    }
    // From a connection opened after the message was stored, too (a client that never got
    // its SendResp resends on a new connection). It may get a NOTIFY hint at login, so it
    // leaves before the markers.
    let (mut a3, _) = gate.login(a, "tablet");
    let resp = send(&mut a3, &send_req(SINGLE, b, id, b"original"));
    assert_eq!(
        (resp.code, resp.msg_id),
        (code::OK, first.msg_id),
        "{resp:?}"
    );
    a3.logout().expect("LOGOUT answered");

    // Markers: the next thing each receiver sees is the marker, not a pushed resend.
    let to_bob = send_text(&mut a1, SINGLE, b, "marker for bob");
    let to_carol = send_text(&mut a1, SINGLE, c, "marker for carol");
    assert_ne!(to_bob.msg_id, first.msg_id);
    let push = take_push(&mut bob);
    assert_push_of(&push, &to_bob, a, a);
    let push = take_push(&mut carol);
    assert_push_of(&push, &to_carol, a, a);
    // Two conversations: their copies may arrive in either order.
    let copies = take_pushes(&mut a2, 2);
    assert_push_of(push_with_id(&copies, to_bob.msg_id), &to_bob, a, b);
    assert_push_of(push_with_id(&copies, to_carol.msg_id), &to_carol, a, c);
    for client in [&mut a1, &mut a2, &mut bob, &mut carol] {
        assert_nothing_more(client);
    }
    gate.stop();
}

#[test]
fn same_client_msg_id_from_another_user_is_a_new_message() {
    let a = uid_on(0, 1000);
    let b = uid_on(1, 1100);
    let gate = TestGate::start();
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let id = client_msg_id();
    let from_a = send(&mut alice, &send_req(SINGLE, b, id, b"from a"));
    assert_eq!(from_a.code, code::OK, "{from_a:?}");
    take_push(&mut bob);
    let from_b = send(&mut bob, &send_req(SINGLE, a, id, b"from b"));
    assert_eq!(from_b.code, code::OK, "{from_b:?}");
    assert_ne!(
        from_b.msg_id, from_a.msg_id,
        "dedup is per (uid, client_msg_id)"
    );
    let push = take_push(&mut alice);
    assert_eq!(
        (push.msg_id, push.from, push.client_msg_id),
        (from_b.msg_id, b, id)
    );
    gate.stop();
}

/// `req` is refused with `code` and a message, the recipient gets nothing (the next thing it
/// sees is a later marker), and the sender's connection stays usable.
fn assert_send_refused(
    config: impl FnOnce(&mut gate::config::Config),
    req_for: impl Fn(u64) -> gate::protocol::pb::SendReq,
    expected: u32,
) {
    let a = uid_on(1, 1200);
    let b = uid_on(0, 1300);
    let gate = TestGate::start_with(config);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let req = req_for(b);
    let resp = send(&mut alice, &req);
    assert_eq!(resp.code, expected, "{resp:?}");
    assert_eq!(resp.msg_id, 0, "a refused SEND has no msg_id: {resp:?}");
    assert!(!resp.message.is_empty(), "a refusal says why: {resp:?}");
    let marker = send_text(&mut alice, SINGLE, b, "marker");
    assert_push_of(&take_push(&mut bob), &marker, a, a);
    assert_nothing_more(&mut bob);
    assert_nothing_more(&mut alice);
    gate.stop();
}

#[test]
fn client_msg_id_zero_is_bad_request() {
    assert_send_refused(
        |_| {},
        |b| send_req(SINGLE, b, 0, b"no id"),
        code::BAD_REQUEST,
    );
}

#[test]
fn conv_type_other_than_single_or_group_is_bad_request() {
    for conv_type in [3, 0] {
        assert_send_refused(
            |_| {},
            |b| send_req(conv_type, b, client_msg_id(), b"what conversation?"),
            code::BAD_REQUEST,
        );
    }
}

const SMALL_FRAME: u32 = 4096;

#[test]
fn body_longer_than_max_frame_minus_128_is_too_large() {
    let too_long = vec![b'x'; (SMALL_FRAME - 128 + 1) as usize];
    assert_send_refused(
        |c| c.gate.max_frame = SMALL_FRAME,
        |b| send_req(SINGLE, b, client_msg_id(), &too_long),
        code::TOO_LARGE,
    );
}

#[test]
fn body_of_exactly_max_frame_minus_128_is_delivered() {
    let a = uid_on(0, 1400);
    let b = uid_on(1, 1500);
    let gate = TestGate::start_with(|c| c.gate.max_frame = SMALL_FRAME);
    let (mut alice, resp) = gate.login(a, "d");
    assert_eq!(resp.max_frame, SMALL_FRAME);
    let (mut bob, _) = gate.login(b, "d");
    let body = vec![b'y'; (SMALL_FRAME - 128) as usize];
    let id = client_msg_id();
    let resp = send(&mut alice, &send_req(SINGLE, b, id, &body));
    assert_eq!(resp.code, code::OK, "{resp:?}");
    let push = take_push(&mut bob);
    assert_eq!((push.msg_id, push.client_msg_id), (resp.msg_id, id));
    assert_eq!(push.body.as_ref(), body.as_slice());
    gate.stop();
}
