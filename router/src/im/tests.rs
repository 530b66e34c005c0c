//! Cluster tests of the IM logic: a [`Cluster`] of partitions on virtual time, with the host's
//! job done by the harness (route requests, hand `ToPartition` inputs over in per-pair FIFO
//! order, collect replies and downlink). Never touches IO or the clock, except `durable`, whose
//! partitions journal into temp directories.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use prost::Message as _;

use super::*;
use crate::{code, conv, jwt};

mod durable;

const T0: u64 = 1_760_000_000_000;
const SECRET: &[u8] = b"backend-secret";
const PARTITIONS: u32 = 8;
const THRESHOLD: u32 = 3;

fn config(partitions: u32, push_threshold: u32) -> ImConfig {
    ImConfig {
        partitions,
        push_threshold,
        dedup_window_ms: DEDUP_WINDOW_MS,
        auth_secret: SECRET.to_vec(),
        filter: None,
    }
}

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The gate's lane into the partitions (a source id no partition has).
const GATE: u32 = u32::MAX;

/// Partitions plus a host: in-flight inputs per (source, destination) lane, FIFO within a lane.
struct Cluster {
    parts: Vec<Partition>,
    now: u64,
    lanes: BTreeMap<(u32, PartitionId), VecDeque<(u64, Input)>>,
    /// Sequence of the next enqueued input (FIFO mode picks the oldest head).
    enqueued: u64,
    /// `Some`: pick a random non-empty lane each step (per-pair FIFO still holds).
    shuffle: Option<Rng>,
    next_conn: u64,
    replies: Vec<(Origin, Reply)>,
    delivers: Vec<link::Deliver>,
    notifies: Vec<link::NotifyUsers>,
    receipts: Vec<link::ReadReceiptOut>,
    /// The data directory's lock when the partitions journal (see `durable`).
    data: Option<recovery::DataDirLock>,
}

impl Cluster {
    fn new(partitions: u32, push_threshold: u32) -> Self {
        Self::with_config(config(partitions, push_threshold))
    }

    fn with_config(config: ImConfig) -> Self {
        Self {
            parts: (0..config.partitions)
                .map(|id| Partition::new(id, config.clone()))
                .collect(),
            now: T0,
            lanes: BTreeMap::new(),
            enqueued: 0,
            shuffle: None,
            next_conn: 0,
            replies: Vec::new(),
            delivers: Vec::new(),
            notifies: Vec::new(),
            receipts: Vec::new(),
            data: None,
        }
    }

    fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    fn enqueue(&mut self, src: u32, dst: PartitionId, input: Input) {
        self.enqueued += 1;
        self.lanes
            .entry((src, dst))
            .or_default()
            .push_back((self.enqueued, input));
    }

    /// Enqueues a gate request where [`route`] sends it; its origin names it.
    fn submit(&mut self, request: Request) -> Origin {
        self.next_conn += 1;
        let origin = Origin {
            shard: 0,
            conn: self.next_conn,
            seq: self.next_conn as u32,
            log_id: 7,
        };
        let dst = route(&request, self.partitions());
        self.enqueue(GATE, dst, Input::Request { origin, request });
        origin
    }

    /// Hands one in-flight input to its partition; `false` when quiescent.
    fn step(&mut self) -> bool {
        let lane = match &mut self.shuffle {
            Some(rng) => {
                let lanes: Vec<_> = self
                    .lanes
                    .iter()
                    .filter(|(_, q)| !q.is_empty())
                    .map(|(k, _)| *k)
                    .collect();
                if lanes.is_empty() {
                    return false;
                }
                *rng.pick(&lanes)
            }
            None => match self
                .lanes
                .iter()
                .filter_map(|(k, q)| q.front().map(|(seq, _)| (*seq, *k)))
                .min()
            {
                Some((_, lane)) => lane,
                None => return false,
            },
        };
        let (_, input) = self
            .lanes
            .get_mut(&lane)
            .and_then(VecDeque::pop_front)
            .expect("picked a non-empty lane");
        let dst = lane.1;
        let mut out = Vec::new();
        self.parts[dst as usize].handle(input, self.now, &mut out);
        for output in out {
            match output {
                Output::ToPartition { partition, input } => {
                    assert!(partition < self.partitions());
                    self.enqueue(dst, partition, input);
                }
                Output::Reply { origin, reply } => self.replies.push((origin, reply)),
                Output::Deliver(d) => self.delivers.push(d),
                Output::Notify(n) => self.notifies.push(n),
                Output::ReadReceipt(r) => self.receipts.push(r),
                Output::Kick(k) => panic!("unexpected kick {k:?}"),
            }
        }
        true
    }

    /// Steps until nothing is in flight.
    fn run(&mut self) {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(steps < 10_000_000, "no quiescence");
        }
    }

    /// Takes the one reply to `origin`.
    fn take_reply(&mut self, origin: Origin) -> Reply {
        let i = self
            .replies
            .iter()
            .position(|(o, _)| *o == origin)
            .expect("a reply");
        let (_, reply) = self.replies.remove(i);
        assert!(
            self.replies.iter().all(|(o, _)| *o != origin),
            "exactly one reply per request"
        );
        reply
    }

    fn call(&mut self, request: Request) -> Reply {
        let origin = self.submit(request);
        self.run();
        self.take_reply(origin)
    }

    fn send(&mut self, s: link::Send) -> link::SendResult {
        match self.call(Request::Send(s)) {
            Reply::Send(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn pull(&mut self, p: link::Pull) -> link::PullResult {
        match self.call(Request::Pull(p)) {
            Reply::Pull(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn read(&mut self, uid: u64, conv_type: u32, conv_id: u64, up_to: u64) -> link::ReadResult {
        match self.call(Request::Read(link::Read {
            uid,
            conv_type,
            conv_id,
            read_up_to: up_to,
            session_id: session(uid),
            log_id: 0,
        })) {
            Reply::Read(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn sync_with(&mut self, uid: u64, max_convs: u32, max_bytes: u32) -> link::SyncResult {
        match self.call(Request::Sync(link::Sync {
            uid,
            max_convs,
            max_bytes,
            log_id: 0,
        })) {
            Reply::Sync(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn sync(&mut self, uid: u64) -> link::SyncResult {
        self.sync_with(uid, 0, 0)
    }

    fn biz(&mut self, uid: u64, service: &str, method: &str, payload: &str) -> link::BizResult {
        match self.call(Request::Biz(link::Biz {
            uid,
            service: service.into(),
            method: method.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            log_id: 0,
        })) {
            Reply::Biz(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn create_group(&mut self, creator: u64, members: &[u64]) -> u64 {
        let payload = serde_json::json!({"name": "g", "members": members}).to_string();
        let r = self.biz(creator, "group", "create", &payload);
        assert_eq!(r.code, code::OK, "{}", r.message);
        let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("json");
        v["group_id"].as_u64().expect("group_id")
    }

    fn group_call(&mut self, uid: u64, method: &str, gid: u64) -> link::BizResult {
        self.biz(uid, "group", method, &format!(r#"{{"group_id":{gid}}}"#))
    }

    fn login(&mut self, uid: u64, token: &str) -> link::LoginResult {
        match self.call(Request::Login(link::Login {
            uid,
            token: token.into(),
            ..Default::default()
        })) {
            Reply::Login(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn take_delivers(&mut self) -> Vec<link::Deliver> {
        std::mem::take(&mut self.delivers)
    }

    fn take_notifies(&mut self) -> Vec<link::NotifyUsers> {
        std::mem::take(&mut self.notifies)
    }

    fn take_receipts(&mut self) -> Vec<link::ReadReceiptOut> {
        std::mem::take(&mut self.receipts)
    }
}

/// The session a test user sends from.
fn session(uid: u64) -> u64 {
    uid * 1000 + 1
}

fn single(from: u64, to: u64, client_msg_id: u64, body: &str) -> link::Send {
    link::Send {
        from,
        client_msg_id,
        conv_type: conv::SINGLE,
        to,
        content_type: 1,
        body: Bytes::copy_from_slice(body.as_bytes()),
        session_id: session(from),
        log_id: 0,
    }
}

fn group(from: u64, gid: u64, client_msg_id: u64, body: &str) -> link::Send {
    link::Send {
        conv_type: conv::GROUP,
        ..single(from, gid, client_msg_id, body)
    }
}

fn pull(uid: u64, conv_type: u32, conv_id: u64, after: u64, limit: u32) -> link::Pull {
    link::Pull {
        uid,
        conv_type,
        conv_id,
        after_msg_id: after,
        limit,
        ..Default::default()
    }
}

fn ids(msgs: &[link::Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.msg_id).collect()
}

fn state(conv_type: u32, conv_id: u64, latest: u64, unread: u32) -> link::ConvState {
    link::ConvState {
        conv_type,
        conv_id,
        latest_msg_id: latest,
        unread,
    }
}

// ---- SEND -------------------------------------------------------------------------------------

#[test]
fn single_send_is_answered_delivered_to_peer_and_other_devices_and_fills_both_inboxes() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let r = c.send(single(1, 2, 11, "hi"));
    assert_eq!(r.code, code::OK);
    assert_ne!(r.msg_id, 0);
    assert_eq!(r.server_time_ms, T0);

    let delivers = c.take_delivers();
    assert_eq!(delivers.len(), 1);
    let d = &delivers[0];
    assert_eq!(d.recipients, [2, 1]);
    assert_eq!(d.exclude_session, session(1));
    let m = d.msg.as_ref().expect("msg");
    assert_eq!(
        (m.msg_id, m.conv_type, m.from, m.to, m.client_msg_id),
        (r.msg_id, conv::SINGLE, 1, 2, 11)
    );
    assert_eq!(
        (m.content_type, &m.body[..], m.server_time_ms),
        (1, &b"hi"[..], T0)
    );

    // conv_id as each side sees it; only the recipient has it unread.
    let s2 = c.sync(2);
    assert_eq!(s2.convs, [state(conv::SINGLE, 1, r.msg_id, 1)]);
    assert_eq!(s2.total_unread, 1);
    let s1 = c.sync(1);
    assert_eq!(s1.convs, [state(conv::SINGLE, 2, r.msg_id, 0)]);
    assert_eq!(s1.total_unread, 0);
    assert!(c.take_notifies().is_empty());
}

#[test]
fn self_chat_is_delivered_once_to_own_devices_and_never_unread() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let r = c.send(single(5, 5, 1, "note"));
    assert_eq!(r.code, code::OK);
    let delivers = c.take_delivers();
    assert_eq!(delivers[0].recipients, [5]);
    let s = c.sync(5);
    assert_eq!(s.convs, [state(conv::SINGLE, 5, r.msg_id, 0)]);
    let p = c.pull(pull(5, conv::SINGLE, 5, 0, 0));
    assert_eq!(ids(&p.msgs), [r.msg_id]);
}

#[test]
fn resend_with_a_known_client_msg_id_gets_the_original_id_and_delivers_nothing() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let first = c.send(single(1, 2, 42, "hello"));
    assert_eq!(first.code, code::OK);
    c.take_delivers();
    c.now += 5_000;
    for resend in [
        single(1, 2, 42, "hello"),
        single(1, 2, 42, "other content"),
        single(1, 3, 42, "other peer"),
        group(1, 999, 42, "now a group"),
    ] {
        let again = c.send(resend);
        assert_eq!(again, first, "same msg_id and server_time_ms");
    }
    assert!(c.take_delivers().is_empty());
    assert_eq!(c.sync(2).total_unread, 1);
    assert!(c.sync(3).convs.is_empty());
    // The same client_msg_id from another uid is another message.
    let other = c.send(single(2, 1, 42, "hello"));
    assert_ne!(other.msg_id, first.msg_id);
}

#[test]
fn resend_while_the_first_is_being_stored_is_backend_unavailable() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let a = c.submit(Request::Send(single(1, 2, 9, "x")));
    assert!(c.step(), "user(1) forwards the Store");
    let b = c.submit(Request::Send(single(1, 2, 9, "x")));
    c.run();
    let Reply::Send(first) = c.take_reply(a) else {
        panic!()
    };
    let Reply::Send(second) = c.take_reply(b) else {
        panic!()
    };
    assert_eq!(first.code, code::OK);
    assert_eq!(second.code, code::BACKEND_UNAVAILABLE);
    assert!(second.message.contains("retry"));
    assert_eq!(c.take_delivers().len(), 1);
    // Once stored, the retry gets the original.
    assert_eq!(c.send(single(1, 2, 9, "x")), first);
}

#[test]
fn dedup_is_kept_for_the_window_then_forgotten() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let first = c.send(single(1, 2, 77, "a"));
    c.now = T0 + DEDUP_WINDOW_MS - 1;
    assert_eq!(c.send(single(1, 2, 77, "a")), first);
    c.now = T0 + DEDUP_WINDOW_MS;
    let later = c.send(single(1, 2, 77, "a"));
    assert_eq!(later.code, code::OK);
    assert!(later.msg_id > first.msg_id, "stored as a new message");
    assert_eq!(c.take_delivers().len(), 2);
    // Lazy pruning: later traffic through the same partition drops the old entries.
    c.now += 2 * DEDUP_WINDOW_MS;
    for i in 0..20 {
        c.send(single(1, 2, 1000 + i, "x"));
    }
    let held: usize = c.parts.iter().map(|p| p.stats().dedup_entries).sum();
    assert_eq!(held, 20, "only the fresh entries remain");
}

#[test]
fn invalid_send_is_bad_request() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let zero_cmid = single(1, 2, 0, "x");
    let bad_type = link::Send {
        conv_type: 3,
        ..single(1, 2, 5, "x")
    };
    let no_peer = single(1, 0, 6, "x");
    for bad in [zero_cmid, bad_type, no_peer] {
        let r = c.send(bad);
        assert_eq!(r.code, code::BAD_REQUEST);
        assert!(!r.message.is_empty());
        assert_eq!(r.msg_id, 0);
    }
    assert!(c.take_delivers().is_empty());
    // A refused send is not remembered: the same id with a valid request is stored.
    assert_eq!(c.send(single(1, 2, 5, "x")).code, code::OK);
}

#[test]
fn msg_ids_grow_within_a_conversation_even_when_the_clock_steps_back() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let mut last = 0;
    for i in 0..50u64 {
        c.now = if i % 3 == 0 { T0 - i } else { T0 + i };
        let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
        let r = c.send(single(from, to, 100 + i, "m"));
        assert!(r.msg_id > last);
        last = r.msg_id;
    }
    let p = c.pull(pull(1, conv::SINGLE, 2, 0, 200));
    assert_eq!(p.msgs.len(), 50);
    assert!(p.msgs.windows(2).all(|w| w[0].msg_id < w[1].msg_id));
}

// ---- groups -----------------------------------------------------------------------------------

#[test]
fn group_create_join_leave_and_members() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[3, 2, 3]);
    let home = partition_of_conv(ConvKey::Group(gid), PARTITIONS) as usize;
    assert_eq!(c.parts[home].group_name(gid), Some("g"));
    let r = c.group_call(9, "members", gid);
    assert_eq!(r.code, code::OK);
    assert_eq!(&r.payload[..], br#"{"members":[1,2,3]}"#);

    for _ in 0..2 {
        let r = c.group_call(4, "join", gid);
        assert_eq!((r.code, &r.payload[..]), (code::OK, &b"{}"[..]));
    }
    assert_eq!(
        &c.group_call(1, "members", gid).payload[..],
        br#"{"members":[1,2,3,4]}"#
    );
    for _ in 0..2 {
        let r = c.group_call(2, "leave", gid);
        assert_eq!((r.code, &r.payload[..]), (code::OK, &b"{}"[..]));
    }
    assert_eq!(
        &c.group_call(1, "members", gid).payload[..],
        br#"{"members":[1,3,4]}"#
    );
    for method in ["join", "leave", "members"] {
        assert_eq!(c.group_call(1, method, gid + 1).code, code::NOT_FOUND);
        assert_eq!(c.group_call(1, method, 0).code, code::NOT_FOUND);
    }
}

#[test]
fn group_ids_are_non_zero_js_safe_unique_and_live_in_the_creators_partition() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let mut seen = BTreeSet::new();
    for creator in 1..=40u64 {
        for _ in 0..5 {
            let gid = c.create_group(creator, &[]);
            assert!(gid != 0 && gid <= MAX_GROUP_ID);
            assert!(seen.insert(gid), "group id {gid} minted twice");
            assert_eq!(
                partition_of_conv(ConvKey::Group(gid), PARTITIONS),
                partition_of_user(creator, PARTITIONS)
            );
        }
    }
    let groups: usize = c.parts.iter().map(|p| p.stats().groups).sum();
    assert_eq!(groups, 200);
}

#[test]
fn send_to_a_group_by_a_non_member_is_forbidden_and_to_an_unknown_group_not_found() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[2]);
    let r = c.send(group(3, gid, 1, "let me in"));
    assert_eq!(r.code, code::FORBIDDEN);
    let r = c.send(group(1, gid + 1, 2, "anyone?"));
    assert_eq!(r.code, code::NOT_FOUND);
    assert!(c.take_delivers().is_empty() && c.take_notifies().is_empty());
    // Refusals are not remembered: after joining, the same client_msg_id is stored.
    c.group_call(3, "join", gid);
    assert_eq!(c.send(group(3, gid, 1, "let me in")).code, code::OK);
    // Pull and read follow the same rules.
    assert_eq!(
        c.pull(pull(4, conv::GROUP, gid, 0, 0)).code,
        code::FORBIDDEN
    );
    assert_eq!(
        c.pull(pull(4, conv::GROUP, gid + 1, 0, 0)).code,
        code::NOT_FOUND
    );
    assert_eq!(c.read(4, conv::GROUP, gid, 1).code, code::FORBIDDEN);
    assert_eq!(c.read(4, conv::GROUP, gid + 1, 1).code, code::NOT_FOUND);
}

#[test]
fn small_group_send_is_delivered_to_every_member_but_the_sending_session() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[2, 3]); // 3 members = the threshold
    let r = c.send(group(2, gid, 1, "hi all"));
    assert_eq!(r.code, code::OK);
    let d = c.take_delivers();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].recipients, [1, 2, 3]);
    assert_eq!(d[0].exclude_session, session(2));
    let m = d[0].msg.as_ref().expect("msg");
    assert_eq!((m.conv_type, m.to, m.from), (conv::GROUP, gid, 2));
    assert!(c.take_notifies().is_empty());
    assert_eq!(c.sync(1).convs, [state(conv::GROUP, gid, r.msg_id, 1)]);
    assert_eq!(c.sync(2).convs, [state(conv::GROUP, gid, r.msg_id, 0)]);
}

#[test]
fn large_group_send_notifies_every_member_with_its_own_unread() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[2, 3, 4]); // 4 members > threshold 3
    c.send(group(1, gid, 1, "a"));
    c.send(group(2, gid, 1, "b"));
    c.read(3, conv::GROUP, gid, u64::MAX);
    c.take_notifies();
    let r = c.send(group(1, gid, 2, "c"));
    assert!(c.take_delivers().is_empty());
    // One NOTIFY per user partition of the members, each with those members' own state.
    let mut updates: Vec<link::UserConv> = c
        .take_notifies()
        .into_iter()
        .flat_map(|n| {
            assert_eq!(n.exclude_session, session(1));
            n.updates
        })
        .collect();
    updates.sort_by_key(|u| u.uid);
    let unread: Vec<(u64, u32)> = updates
        .iter()
        .map(|u| {
            let s = u.conv.expect("state");
            assert_eq!(
                (s.conv_type, s.conv_id, s.latest_msg_id),
                (conv::GROUP, gid, r.msg_id)
            );
            (u.uid, s.unread)
        })
        .collect();
    assert_eq!(unread, [(1, 1), (2, 2), (3, 1), (4, 3)]);
    for (uid, n) in unread {
        assert_eq!(c.sync(uid).total_unread, n);
    }
}

#[test]
fn a_joining_member_starts_with_nothing_unread_and_a_leaving_one_loses_the_group_from_sync() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[]);
    assert!(c.sync(1).convs.is_empty(), "no messages: not listed");
    let r = c.send(group(1, gid, 1, "before"));
    c.group_call(2, "join", gid);
    assert_eq!(c.sync(2).convs, [state(conv::GROUP, gid, r.msg_id, 0)]);
    // The joiner may pull the history.
    assert_eq!(
        ids(&c.pull(pull(2, conv::GROUP, gid, 0, 0)).msgs),
        [r.msg_id]
    );
    let r2 = c.send(group(1, gid, 2, "after"));
    assert_eq!(c.sync(2).convs, [state(conv::GROUP, gid, r2.msg_id, 1)]);
    c.group_call(2, "leave", gid);
    let s = c.sync(2);
    assert!(s.convs.is_empty());
    assert_eq!(s.total_unread, 0);
    // Rejoining starts from the latest again.
    c.send(group(1, gid, 3, "while away"));
    c.group_call(2, "join", gid);
    assert_eq!(c.sync(2).total_unread, 0);
}

// ---- PULL -------------------------------------------------------------------------------------

/// Users 1 and 2 exchange `n` messages; their ids ascending.
fn chat(c: &mut Cluster, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let (from, to) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
            c.send(single(from, to, 1 + i, "m")).msg_id
        })
        .collect()
}

#[test]
fn pull_forward_pages_oldest_first_with_has_more() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let all = chat(&mut c, 7);
    let p = c.pull(pull(2, conv::SINGLE, 1, 0, 3));
    assert_eq!((ids(&p.msgs), p.has_more), (all[0..3].to_vec(), true));
    let p = c.pull(pull(1, conv::SINGLE, 2, all[2], 3));
    assert_eq!((ids(&p.msgs), p.has_more), (all[3..6].to_vec(), true));
    let p = c.pull(pull(2, conv::SINGLE, 1, all[5], 3));
    assert_eq!((ids(&p.msgs), p.has_more), (all[6..].to_vec(), false));
    let p = c.pull(pull(2, conv::SINGLE, 1, all[6], 3));
    assert!(p.msgs.is_empty() && !p.has_more);
    // conv fields of a pulled message are as stored.
    assert_eq!(
        (p.code, c.pull(pull(2, 1, 1, 0, 1)).msgs[0].to),
        (code::OK, 2)
    );
}

#[test]
fn pull_backward_pages_newest_first_with_has_more() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let all = chat(&mut c, 5);
    let back = |before| link::Pull {
        before_msg_id: before,
        after_msg_id: 12345, // ignored
        ..pull(1, conv::SINGLE, 2, 0, 2)
    };
    let p = c.pull(back(u64::MAX));
    assert_eq!((ids(&p.msgs), p.has_more), (vec![all[4], all[3]], true));
    let p = c.pull(back(all[3]));
    assert_eq!((ids(&p.msgs), p.has_more), (vec![all[2], all[1]], true));
    let p = c.pull(back(all[1]));
    assert_eq!((ids(&p.msgs), p.has_more), (vec![all[0]], false));
}

#[test]
fn pull_limit_defaults_to_50_and_is_capped_at_200() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let all = chat(&mut c, 230);
    let p = c.pull(pull(1, conv::SINGLE, 2, 0, 0));
    assert_eq!((p.msgs.len(), p.has_more), (50, true));
    let p = c.pull(pull(1, conv::SINGLE, 2, 0, 1000));
    assert_eq!((p.msgs.len(), p.has_more), (200, true));
    assert_eq!(ids(&p.msgs), all[..200]);
}

#[test]
fn pull_stops_before_max_bytes_but_returns_at_least_one_message() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let all = chat(&mut c, 10);
    let p = c.pull(pull(1, conv::SINGLE, 2, 0, 0));
    let size = |m: &link::Msg| m.encoded_len() + 16;
    let four: usize = p.msgs[..4].iter().map(size).sum();
    let capped = |max_bytes| link::Pull {
        max_bytes,
        ..pull(1, conv::SINGLE, 2, 0, 0)
    };
    let r = c.pull(capped(four as u32));
    assert_eq!((ids(&r.msgs), r.has_more), (all[..4].to_vec(), true));
    let r = c.pull(capped(four as u32 - 1));
    assert_eq!(r.msgs.len(), 3);
    let r = c.pull(capped(1));
    assert_eq!((ids(&r.msgs), r.has_more), (all[..1].to_vec(), true));
}

#[test]
fn pull_of_an_empty_single_chat_is_ok_and_a_bad_conv_type_is_bad_request() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let p = c.pull(pull(1, conv::SINGLE, 2, 0, 0));
    assert_eq!((p.code, p.msgs.len(), p.has_more), (code::OK, 0, false));
    for bad in [0, 3, u32::MAX] {
        assert_eq!(c.pull(pull(1, bad, 2, 0, 0)).code, code::BAD_REQUEST);
        assert_eq!(c.read(1, bad, 2, 5).code, code::BAD_REQUEST);
    }
}

// ---- READ -------------------------------------------------------------------------------------

#[test]
fn read_is_clamped_to_the_latest_and_receipted_to_peer_and_reader() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let a = c.send(single(1, 2, 1, "a")).msg_id;
    let b = c.send(single(1, 2, 2, "b")).msg_id;
    assert_eq!(c.sync(2).total_unread, 2);
    assert_eq!(c.read(2, conv::SINGLE, 1, a).code, code::OK);
    assert_eq!(c.sync(2).convs, [state(conv::SINGLE, 1, b, 1)]);
    let r = c.take_receipts();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r[0],
        link::ReadReceiptOut {
            conv_type: conv::SINGLE,
            reader: 2,
            peer: 1,
            read_up_to: a,
            recipients: vec![1, 2],
            exclude_session: session(2),
        }
    );
    assert_eq!(c.read(2, conv::SINGLE, 1, u64::MAX).code, code::OK);
    assert_eq!(c.take_receipts()[0].read_up_to, b, "clamped to the latest");
    assert_eq!(c.sync(2).total_unread, 0);
    // The sender's view was never unread and stays so.
    assert_eq!(c.sync(1).convs, [state(conv::SINGLE, 2, b, 0)]);
}

#[test]
fn read_that_moves_nothing_is_ok_and_sends_nothing() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let a = c.send(single(1, 2, 1, "a")).msg_id;
    c.read(2, conv::SINGLE, 1, a);
    c.take_receipts();
    for up_to in [0, a - 1, a, u64::MAX] {
        assert_eq!(c.read(2, conv::SINGLE, 1, up_to).code, code::OK);
    }
    // Nothing to read at all: an unknown conversation.
    assert_eq!(c.read(3, conv::SINGLE, 4, 99).code, code::OK);
    assert!(c.take_receipts().is_empty());
    assert_eq!(c.sync(2).total_unread, 0);
    assert!(c.sync(3).convs.is_empty());
}

#[test]
fn group_read_receipt_goes_to_the_readers_own_sessions_only() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let gid = c.create_group(1, &[2]);
    let m = c.send(group(1, gid, 1, "a")).msg_id;
    c.read(2, conv::GROUP, gid, m);
    assert_eq!(
        c.take_receipts(),
        [link::ReadReceiptOut {
            conv_type: conv::GROUP,
            reader: 2,
            peer: gid,
            read_up_to: m,
            recipients: vec![2],
            exclude_session: session(2),
        }]
    );
    assert_eq!(c.sync(2).convs, [state(conv::GROUP, gid, m, 0)]);
}

// ---- SYNC -------------------------------------------------------------------------------------

#[test]
fn sync_lists_newest_first_within_caps_and_totals_every_conversation() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    // User 1 receives 1, 2, 3 messages from users 10, 11, 12; 12 is the newest conversation.
    // (Ids of different partitions order by time, then node: one ms apart keeps send order.)
    for (peer, n) in [(10u64, 1u64), (11, 2), (12, 3)] {
        for i in 0..n {
            c.now += 1;
            c.send(single(peer, 1, 1 + i, "x"));
        }
    }
    let s = c.sync(1);
    let order: Vec<(u64, u32)> = s.convs.iter().map(|c| (c.conv_id, c.unread)).collect();
    assert_eq!(order, [(12, 3), (11, 2), (10, 1)]);
    assert_eq!(s.total_unread, 6);
    assert!(!s.has_more);
    assert!(
        s.convs
            .windows(2)
            .all(|w| w[0].latest_msg_id > w[1].latest_msg_id)
    );

    let s = c.sync_with(1, 2, 0);
    assert_eq!(s.convs.len(), 2);
    assert_eq!(s.convs[0].conv_id, 12);
    assert_eq!((s.total_unread, s.has_more), (6, true));

    let one = s.convs[0].encoded_len() as u32 + 3;
    let s = c.sync_with(1, 0, one);
    assert_eq!((s.convs.len(), s.total_unread, s.has_more), (1, 6, true));
    let s = c.sync_with(1, 0, one - 1);
    assert_eq!((s.convs.len(), s.total_unread, s.has_more), (0, 6, true));

    // A new message moves its conversation to the front.
    c.now += 1;
    c.send(single(10, 1, 99, "x"));
    assert_eq!(c.sync(1).convs[0].conv_id, 10);
    // An unknown user has nothing.
    let s = c.sync(77);
    assert_eq!((s.code, s.convs.len(), s.total_unread), (code::OK, 0, 0));
}

// ---- BIZ, LOGIN, events -----------------------------------------------------------------------

#[test]
fn biz_unknown_service_or_method_is_not_found_and_bad_json_is_bad_request() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    assert_eq!(c.biz(1, "chat", "create", "{}").code, code::NOT_FOUND);
    assert_eq!(c.biz(1, "group", "destroy", "{}").code, code::NOT_FOUND);
    assert_eq!(
        c.biz(1, "group", "destroy", "garbage").code,
        code::NOT_FOUND
    );
    for (method, payload) in [
        ("create", "garbage"),
        ("create", "[1,2]"),
        ("create", r#"{"members":"all"}"#),
        ("create", r#"{"members":[1.5]}"#),
        ("create", r#"{"members":[0]}"#),
        ("join", "{}"),
        ("leave", r#"{"group_id":-3}"#),
        ("members", r#"{"group_id":"7"}"#),
        ("members", ""),
    ] {
        let r = c.biz(1, "group", method, payload);
        assert_eq!(r.code, code::BAD_REQUEST, "{method} {payload}");
        assert!(!r.message.is_empty());
    }
    let groups: usize = c.parts.iter().map(|p| p.stats().groups).sum();
    assert_eq!(groups, 0);
}

#[test]
fn login_accepts_a_valid_token_and_refuses_a_bad_one_or_a_missing_secret() {
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let now_s = T0 / 1000;
    let good = jwt::sign_hs256(SECRET, 42, now_s + 60);
    assert_eq!(c.login(42, &good).code, code::OK);
    let r = c.login(43, &good);
    assert_eq!(r.code, code::UNAUTHENTICATED);
    assert_eq!(r.message, "token sub does not match uid");
    let expired = jwt::sign_hs256(SECRET, 42, now_s - 60);
    assert_eq!(c.login(42, &expired).message, "token expired");
    let forged = jwt::sign_hs256(b"other", 42, now_s + 60);
    assert_eq!(c.login(42, &forged).code, code::UNAUTHENTICATED);
    assert_eq!(c.login(42, "").code, code::UNAUTHENTICATED);
    assert_eq!(c.login(0, &good).code, code::BAD_REQUEST);

    let mut open = Cluster::with_config(ImConfig {
        auth_secret: Vec::new(),
        ..config(PARTITIONS, THRESHOLD)
    });
    let r = open.login(42, &good);
    assert_eq!(r.code, code::UNAUTHENTICATED);
    assert_eq!(r.message, "backend auth secret not configured");
}

#[test]
fn presence_tracks_online_sessions_and_reports_are_counted() {
    let mut p = Partition::new(0, config(1, THRESHOLD));
    let mut out = Vec::new();
    let presence = |session_id, online| {
        Input::Presence(link::Presence {
            uid: 1,
            session_id,
            online,
            ..Default::default()
        })
    };
    p.handle(presence(10, true), T0, &mut out);
    p.handle(presence(11, true), T0, &mut out);
    p.handle(presence(10, false), T0, &mut out);
    p.handle(presence(12, false), T0, &mut out);
    assert_eq!(p.online_sessions(1).collect::<Vec<_>>(), [11]);
    p.handle(presence(11, false), T0, &mut out);
    assert_eq!(p.stats().online_users, 0);
    p.handle(
        Input::Report(link::DeliveryReport {
            uid: 1,
            session_id: 11,
            delivered: vec![1, 2, 3],
            undelivered: vec![4],
        }),
        T0,
        &mut out,
    );
    assert!(out.is_empty());
    assert_eq!((p.stats().delivered, p.stats().undelivered), (3, 1));
}

#[test]
fn inputs_at_the_wrong_partition_or_with_odd_values_do_not_panic() {
    let mut p = Partition::new(3, config(PARTITIONS, THRESHOLD));
    let mut out = Vec::new();
    let odd_send = link::Send {
        from: u64::MAX,
        to: u64::MAX,
        client_msg_id: u64::MAX,
        conv_type: u32::MAX,
        ..Default::default()
    };
    let origin = Origin::default();
    for input in [
        Input::Store {
            origin,
            send: odd_send.clone(),
        },
        Input::Store {
            origin,
            send: link::Send::default(),
        },
        Input::Stored {
            origin,
            from: 0,
            client_msg_id: 0,
            result: link::SendResult::default(),
        },
        Input::InboxSet {
            entries: vec![link::UserConv { uid: 5, conv: None }],
        },
        Input::Request {
            origin,
            request: Request::Send(odd_send),
        },
        Input::Request {
            origin,
            request: Request::Sync(link::Sync {
                uid: 0,
                max_convs: u32::MAX,
                max_bytes: u32::MAX,
                log_id: 0,
            }),
        },
        Input::Request {
            origin,
            request: Request::Pull(link::Pull {
                conv_type: 2,
                limit: u32::MAX,
                ..Default::default()
            }),
        },
        Input::Request {
            origin,
            request: Request::Biz(link::Biz::default()),
        },
    ] {
        p.handle(input, 0, &mut out);
        p.handle(
            Input::Presence(link::Presence::default()),
            u64::MAX,
            &mut out,
        );
    }
}

// ---- randomized interleavings ----------------------------------------------------------------

/// What a test request was, to check its answer against the model.
enum Op {
    Send {
        from: u64,
        client_msg_id: u64,
        conv: ConvKey,
    },
    Read {
        uid: u64,
        conv: ConvKey,
        member: bool,
    },
}

/// An independent model: messages learned from SEND answers, cursors from READ_RECEIPTs,
/// membership from the test's own calls.
#[derive(Default)]
struct Model {
    msgs: BTreeMap<ConvKey, Vec<(u64, u64)>>,
    sent: HashMap<(u64, u64), u64>,
    cursors: HashMap<(u64, ConvKey), u64>,
    members: BTreeMap<u64, BTreeSet<u64>>,
}

impl Model {
    fn latest(&self, conv: ConvKey) -> u64 {
        self.msgs
            .get(&conv)
            .and_then(|m| m.iter().map(|&(id, _)| id).max())
            .unwrap_or(0)
    }

    fn unread(&self, uid: u64, conv: ConvKey) -> u32 {
        let cursor = self.cursors.get(&(uid, conv)).copied().unwrap_or(0);
        self.msgs.get(&conv).map_or(0, |m| {
            m.iter()
                .filter(|&&(id, from)| id > cursor && from != uid)
                .count() as u32
        })
    }

    /// `uid`'s conversations with messages, as (conv_type, conv_id) → (latest, unread).
    fn inbox(&self, uid: u64) -> BTreeMap<(u32, u64), (u64, u32)> {
        let mut inbox = BTreeMap::new();
        for (&conv, msgs) in &self.msgs {
            let seen = match conv {
                ConvKey::Single { low, high } if low == uid => (conv::SINGLE, high),
                ConvKey::Single { low, high } if high == uid => (conv::SINGLE, low),
                ConvKey::Group(gid) if self.members[&gid].contains(&uid) => (conv::GROUP, gid),
                _ => continue,
            };
            if !msgs.is_empty() {
                inbox.insert(seen, (self.latest(conv), self.unread(uid, conv)));
            }
        }
        inbox
    }
}

#[test]
fn randomized_interleavings_keep_sync_totals_exact() {
    for seed in 1..=6u64 {
        randomized_run(seed);
    }
}

fn randomized_run(seed: u64) {
    const USERS: u64 = 12;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1234_5678_9ABC_DEF1));
    let mut c = Cluster::new(PARTITIONS, THRESHOLD);
    let mut model = Model::default();
    let users: Vec<u64> = (1..=USERS).collect();

    // Groups of 2..=7 members: some pushed (<= 3), some notified.
    let mut gids = Vec::new();
    for size in 2..=7u64 {
        let creator = *rng.pick(&users);
        let mut members: BTreeSet<u64> = BTreeSet::from([creator]);
        while (members.len() as u64) < size {
            members.insert(*rng.pick(&users));
        }
        let list: Vec<u64> = members.iter().copied().collect();
        let gid = c.create_group(creator, &list);
        model.members.insert(gid, members);
        gids.push(gid);
    }
    c.shuffle = Some(Rng(seed.wrapping_mul(0xA24B_AED4_963E_E407) | 1));

    let mut next_cmid = 1u64;
    let mut used: Vec<link::Send> = Vec::new();
    for round in 0..25 {
        c.now += rng.below(50);
        let mut ops: HashMap<u64, Op> = HashMap::new();
        let mut requested: HashMap<(u64, ConvKey), Vec<u64>> = HashMap::new();
        for _ in 0..30 {
            let from = *rng.pick(&users);
            let (request, op) = if rng.chance(55) {
                let send = if !used.is_empty() && rng.chance(15) {
                    // A resend: same key, maybe other content or another peer.
                    let mut s = rng.pick(&used).clone();
                    if rng.chance(50) {
                        s.body = Bytes::from_static(b"changed");
                    }
                    if rng.chance(30) {
                        s.conv_type = conv::SINGLE;
                        s.to = *rng.pick(&users);
                    }
                    s
                } else {
                    next_cmid += 1;
                    let body = format!("m{next_cmid}");
                    if rng.chance(50) {
                        single(from, *rng.pick(&users), next_cmid, &body)
                    } else {
                        group(from, *rng.pick(&gids), next_cmid, &body)
                    }
                };
                used.push(send.clone());
                let conv = ConvKey::seen_by(send.from, send.conv_type, send.to).expect("valid");
                let op = Op::Send {
                    from: send.from,
                    client_msg_id: send.client_msg_id,
                    conv,
                };
                (Request::Send(send), op)
            } else {
                let (conv_type, conv_id, conv) = if rng.chance(50) {
                    let peer = *rng.pick(&users);
                    (conv::SINGLE, peer, ConvKey::single(from, peer))
                } else {
                    let gid = *rng.pick(&gids);
                    (conv::GROUP, gid, ConvKey::Group(gid))
                };
                let known: Vec<u64> = model
                    .msgs
                    .get(&conv)
                    .map(|m| m.iter().map(|&(id, _)| id).collect())
                    .unwrap_or_default();
                let up_to = match rng.below(4) {
                    0 => 0,
                    1 => u64::MAX,
                    _ if known.is_empty() => 1,
                    _ => *rng.pick(&known),
                };
                let member = match conv {
                    ConvKey::Group(gid) => model.members[&gid].contains(&from),
                    ConvKey::Single { .. } => true,
                };
                requested.entry((from, conv)).or_default().push(up_to);
                let request = Request::Read(link::Read {
                    uid: from,
                    conv_type,
                    conv_id,
                    read_up_to: up_to,
                    session_id: session(from),
                    log_id: 0,
                });
                (
                    request,
                    Op::Read {
                        uid: from,
                        conv,
                        member,
                    },
                )
            };
            let origin = c.submit(request);
            ops.insert(origin.conn, op);
        }
        c.run();

        // Answers, in the order they were produced: the first OK of a key is the one stored.
        for (origin, reply) in std::mem::take(&mut c.replies) {
            match (
                ops.remove(&origin.conn).expect("one answer per request"),
                reply,
            ) {
                (
                    Op::Send {
                        from,
                        client_msg_id,
                        conv,
                    },
                    Reply::Send(r),
                ) => match r.code {
                    code::OK => match model.sent.get(&(from, client_msg_id)) {
                        Some(&id) => assert_eq!(id, r.msg_id, "dedup gives the original id"),
                        None => {
                            model.sent.insert((from, client_msg_id), r.msg_id);
                            model.msgs.entry(conv).or_default().push((r.msg_id, from));
                        }
                    },
                    code::BACKEND_UNAVAILABLE | code::FORBIDDEN => {}
                    other => panic!("send answered {other}: {}", r.message),
                },
                (Op::Read { uid, conv, member }, Reply::Read(r)) => {
                    let expected = if member { code::OK } else { code::FORBIDDEN };
                    assert_eq!(r.code, expected, "read by {uid} of {conv:?}");
                }
                (_, reply) => panic!("mismatched answer {reply:?}"),
            }
        }
        assert!(ops.is_empty(), "every request answered");
        for receipt in c.take_receipts() {
            let conv = ConvKey::seen_by(receipt.reader, receipt.conv_type, receipt.peer)
                .expect("valid receipt");
            // Applied = requested, or clamped to the latest, which is a stored id.
            let up_to = receipt.read_up_to;
            assert!(up_to <= model.latest(conv), "clamped to the latest");
            assert!(
                requested[&(receipt.reader, conv)].contains(&up_to)
                    || model.msgs[&conv].iter().any(|&(id, _)| id == up_to),
                "applied {up_to} was neither asked for nor a message"
            );
            let cursor = model.cursors.entry((receipt.reader, conv)).or_default();
            assert!(receipt.read_up_to > *cursor, "a receipt moves the cursor");
            *cursor = receipt.read_up_to;
        }

        // Membership changes at quiescence, so the model knows the latest a joiner starts at.
        if round % 3 == 2 {
            let gid = *rng.pick(&gids);
            let uid = *rng.pick(&users);
            let joining = !model.members[&gid].contains(&uid);
            let method = if joining { "join" } else { "leave" };
            assert_eq!(c.group_call(uid, method, gid).code, code::OK);
            let members = model.members.get_mut(&gid).expect("group");
            if joining {
                members.insert(uid);
                let latest = model.latest(ConvKey::Group(gid));
                model.cursors.insert((uid, ConvKey::Group(gid)), latest);
            } else {
                members.remove(&uid);
            }
        }

        check_against_model(&mut c, &model, &users);
    }

    // Every stored message went down exactly once (PUSH or NOTIFY), resends added nothing.
    let mut down: Vec<u64> = c
        .take_delivers()
        .iter()
        .map(|d| d.msg.as_ref().expect("msg").msg_id)
        .collect();
    // A NOTIFY leaves each member's user partition: one message's members may span several.
    let mut notified: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for n in c.take_notifies() {
        let ids: BTreeSet<u64> = n
            .updates
            .iter()
            .map(|u| u.conv.expect("state").latest_msg_id)
            .collect();
        assert_eq!(ids.len(), 1, "one message per NOTIFY");
        let id = ids.into_iter().next().expect("one id");
        notified
            .entry(id)
            .or_default()
            .extend(n.updates.iter().map(|u| u.uid));
    }
    for (id, uids) in notified {
        let distinct: BTreeSet<u64> = uids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            uids.len(),
            "msg {id}: a member notified twice"
        );
        down.push(id);
    }
    down.sort_unstable();
    let mut stored: Vec<u64> = model.sent.values().copied().collect();
    stored.sort_unstable();
    assert_eq!(down, stored, "seed {seed}");
}

fn check_against_model(c: &mut Cluster, model: &Model, users: &[u64]) {
    for &uid in users {
        let sync = c.sync(uid);
        assert_eq!(sync.code, code::OK);
        assert!(!sync.has_more);
        let sum: u32 = sync.convs.iter().map(|s| s.unread).sum();
        assert_eq!(sync.total_unread, sum, "total = sum of per-conv unread");
        let got: BTreeMap<(u32, u64), (u64, u32)> = sync
            .convs
            .iter()
            .map(|s| ((s.conv_type, s.conv_id), (s.latest_msg_id, s.unread)))
            .collect();
        let want = model.inbox(uid);
        assert_eq!(got, want, "inbox of {uid}");
        assert_eq!(
            sync.total_unread,
            want.values().map(|&(_, n)| n).sum::<u32>()
        );
        // Order is by arrival of the latest message at the inbox (see `Inbox`), which random
        // delivery interleavings do not tie to msg_id order; `user::tests` checks the order.
    }
    // History matches, oldest first.
    for (&conv, msgs) in &model.msgs {
        let (uid, conv_type, conv_id) = match conv {
            ConvKey::Single { low, high } => (low, conv::SINGLE, high),
            ConvKey::Group(gid) => match model.members[&gid].first() {
                Some(&member) => (member, conv::GROUP, gid),
                None => continue,
            },
        };
        let p = c.pull(pull(uid, conv_type, conv_id, 0, 200));
        let mut want: Vec<u64> = msgs.iter().map(|&(id, _)| id).collect();
        want.sort_unstable();
        assert_eq!(ids(&p.msgs), want);
    }
}

/// SYNC of `uid` on partition `p` (a user partition), answered directly.
fn sync_on(p: &mut Partition, uid: u64) -> link::SyncResult {
    let mut out = Vec::new();
    let origin = Origin {
        shard: 0,
        conn: 1,
        seq: 1,
        log_id: 0,
    };
    let request = Request::Sync(link::Sync {
        uid,
        max_convs: 0,
        max_bytes: 0,
        log_id: 0,
    });
    p.handle(Input::Request { origin, request }, 0, &mut out);
    match out.pop() {
        Some(Output::Reply {
            reply: Reply::Sync(r),
            ..
        }) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_run_of_group_bumps_leaves_inboxes_as_the_messages_one_by_one() {
    // Two groups sharing members, messages from several senders (members among them),
    // interleaved; runs are what a host merges: consecutive messages of one group.
    let mut rng = Rng(0x5EED);
    let members_a: std::sync::Arc<[u64]> = (1..=40).collect::<Vec<u64>>().into();
    let members_b: std::sync::Arc<[u64]> = (30..=60).collect::<Vec<u64>>().into();
    let mut one_by_one = Partition::new(0, config(1, 1000));
    let mut in_runs = Partition::new(0, config(1, 1000));
    let mut msg_id = 1000;
    for _ in 0..50 {
        let (gid, members) = if rng.chance(50) {
            (7, &members_a)
        } else {
            (8, &members_b)
        };
        let run: Vec<(u64, u64)> = (0..1 + rng.below(6))
            .map(|_| {
                msg_id += 1 + rng.below(3);
                // Senders: a few members, or someone outside the group's partition.
                (msg_id, *rng.pick(&[1, 2, 35, 99]))
            })
            .collect();
        for &(id, from) in &run {
            let input = Input::GroupMsg {
                group_id: gid,
                msg_id: id,
                from,
                members: std::sync::Arc::clone(members),
                notify: false,
                exclude_session: 0,
            };
            let mut out = Vec::new();
            one_by_one.handle(input, 0, &mut out);
            assert!(out.is_empty(), "no NOTIFY below the threshold");
        }
        in_runs.bump_group_run(gid, members, &run);
    }
    for uid in 1..=60 {
        let (a, b) = (sync_on(&mut one_by_one, uid), sync_on(&mut in_runs, uid));
        assert_eq!(a, b, "uid {uid}");
        assert!(
            !a.convs.is_empty(),
            "uid {uid} is in a group that got messages"
        );
    }
}
