//! The reference backend across restarts: partitions journal into a temp directory, the
//! cluster is dropped (a crash: whatever was in flight is lost) and opened again from the
//! directory alone; what clients were told must still hold.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::im::filter::{ContentFilter, FilterAction};
use crate::im::journal::JournalConfig;
use crate::im::recovery::{self, RecoveryError, Storage};
use crate::log::{Options, Retention, Sync};
use crate::testutil::TempDir;

fn storage(dir: &Path, segment_bytes: u64, retention: Retention) -> Storage {
    Storage {
        dir: dir.to_path_buf(),
        journal: JournalConfig {
            log: Options {
                segment_bytes,
                sync: Sync::Os,
                space_limit: None,
            },
            retention,
        },
    }
}

impl Cluster {
    /// A cluster whose partitions are opened from `storage` at `now`.
    fn open(storage: &Storage, config: ImConfig, now: u64) -> Result<Self, RecoveryError> {
        let opened = recovery::open(storage, &config, now)?;
        let mut cluster = Self::with_config(config);
        cluster.parts = opened.partitions;
        cluster.data = Some(opened.lock);
        cluster.now = now;
        Ok(cluster)
    }

    /// Drops everything in memory (in-flight inputs included, as a crash would) and opens the
    /// same directory again `later_ms` after.
    fn restart(self, storage: &Storage, later_ms: u64) -> Self {
        let (config, now) = (self.parts[0].config().clone(), self.now + later_ms);
        drop(self);
        Self::open(storage, config, now).expect("reopens")
    }
}

/// Every conversation state and total of each user, as SYNC answers.
fn syncs(
    c: &mut Cluster,
    uids: impl IntoIterator<Item = u64>,
) -> Vec<(u64, u32, Vec<link::ConvState>)> {
    uids.into_iter()
        .map(|uid| {
            let s = c.sync(uid);
            assert_eq!(s.code, code::OK);
            let sum: u32 = s.convs.iter().map(|c| c.unread).sum();
            assert_eq!(s.total_unread, sum, "total = sum for uid {uid}");
            let mut convs = s.convs;
            convs.sort_by_key(|c| (c.conv_type, c.conv_id));
            (uid, s.total_unread, convs)
        })
        .collect()
}

fn pull_all(c: &mut Cluster, uid: u64, conv_type: u32, conv_id: u64) -> Vec<link::Msg> {
    let mut out = Vec::new();
    loop {
        let after = out.last().map_or(0, |m: &link::Msg| m.msg_id);
        let page = c.pull(pull(uid, conv_type, conv_id, after, 200));
        assert_eq!(page.code, code::OK, "{}", page.message);
        out.extend(page.msgs);
        if !page.has_more {
            return out;
        }
    }
}

#[test]
fn messages_dedup_cursors_and_ids_survive_a_restart() {
    let tmp = TempDir::new("basic");
    let st = storage(tmp.path(), 1 << 16, Retention::default());
    let mut c = Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("opens");
    let mut sent = Vec::new();
    for i in 1..=60u64 {
        let (from, to) = if i % 3 == 0 { (2, 1) } else { (1, 2) };
        let r = c.send(single(from, to, i, &format!("m{i}")));
        assert_eq!(r.code, code::OK);
        sent.push(r.msg_id);
        c.now += 1;
    }
    assert_eq!(c.read(2, conv::SINGLE, 1, sent[29]).code, code::OK);
    let gid = c.create_group(5, &[6, 7]);
    let g1 = c.send(group(6, gid, 1, "hello group"));
    assert_eq!(c.group_call(8, "join", gid).code, code::OK);
    assert_eq!(c.group_call(7, "leave", gid).code, code::OK);
    let g2 = c.send(group(8, gid, 1, "joined"));
    let before_syncs = syncs(&mut c, [1, 2, 5, 6, 7, 8]);
    let before_single = pull_all(&mut c, 1, conv::SINGLE, 2);
    let before_group = pull_all(&mut c, 5, conv::GROUP, gid);
    assert_eq!(ids(&before_single), sent);
    assert_eq!(ids(&before_group), [g1.msg_id, g2.msg_id]);

    let mut c = c.restart(&st, 1000);
    assert_eq!(pull_all(&mut c, 2, conv::SINGLE, 1), before_single);
    assert_eq!(pull_all(&mut c, 5, conv::GROUP, gid), before_group);
    assert_eq!(syncs(&mut c, [1, 2, 5, 6, 7, 8]), before_syncs);
    let members = c.group_call(5, "members", gid);
    let v: serde_json::Value = serde_json::from_slice(&members.payload).expect("json");
    assert_eq!(v["members"], serde_json::json!([5, 6, 8]));
    assert_eq!(c.send(group(7, gid, 2, "left")).code, code::FORBIDDEN);
    // A resend of an answered SEND gets its original id, whatever its `to`.
    let again = c.send(single(1, 99, 4, "resent elsewhere"));
    assert_eq!((again.code, again.msg_id), (code::OK, sent[3]));
    // Ids keep growing; a new group gets a new id.
    let next = c.send(single(1, 2, 1000, "after"));
    assert!(next.msg_id > *sent.iter().max().unwrap());
    assert_ne!(c.create_group(5, &[6]), gid);
}

#[test]
fn a_message_stored_before_the_crash_but_never_answered_is_deduplicated() {
    let tmp = TempDir::new("crash-window");
    let st = storage(tmp.path(), 1 << 16, Retention::default());
    let mut c = Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("opens");
    c.submit(Request::Send(single(1, 2, 77, "in flight")));
    // Step until the conversation's partition has stored it: the answer (Stored back at the
    // sender's partition, which journals the dedup entry) is still in flight.
    let conv_partition = partition_of_conv(ConvKey::single(1, 2), PARTITIONS);
    let mut steps = 0;
    while pull_stored(&c, conv_partition) == 0 {
        assert!(c.step(), "the Store was never handled");
        steps += 1;
        assert!(steps < 10);
    }
    assert!(
        c.replies.is_empty(),
        "the client got no answer before the crash"
    );
    let mut c = c.restart(&st, 10);
    let r = c.send(single(1, 2, 77, "in flight"));
    assert_eq!(r.code, code::OK);
    let stored = pull_all(&mut c, 2, conv::SINGLE, 1);
    assert_eq!(stored.len(), 1, "stored once");
    assert_eq!(stored[0].msg_id, r.msg_id, "the resend got the original id");
}

fn pull_stored(c: &Cluster, partition: PartitionId) -> usize {
    c.parts[partition as usize].stats().messages
}

#[test]
fn a_1000_member_group_keeps_unread_counts_and_notify_state_across_a_restart() {
    let tmp = TempDir::new("group");
    let st = storage(tmp.path(), 1 << 20, Retention::default());
    let mut c = Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("opens");
    let members: Vec<u64> = (1001..2000).collect();
    let gid = c.create_group(1000, &members);
    let mut ids_sent = Vec::new();
    for i in 0..25u64 {
        let from = 1000 + (i * 37) % 1000;
        let r = c.send(group(from, gid, i + 1, &format!("g{i}")));
        assert_eq!(r.code, code::OK);
        ids_sent.push(r.msg_id);
    }
    assert!(!c.take_notifies().is_empty(), "a big group is notified");
    for (k, uid) in (1000..2000u64).step_by(7).enumerate() {
        let up_to = ids_sent[k % ids_sent.len()];
        assert_eq!(c.read(uid, conv::GROUP, gid, up_to).code, code::OK);
    }
    let before = syncs(&mut c, 1000..2000);
    let total: u64 = before.iter().map(|(_, t, _)| u64::from(*t)).sum();
    assert!(
        total > 20_000,
        "most members have most messages unread: {total}"
    );

    let mut c = c.restart(&st, 5000);
    assert_eq!(
        syncs(&mut c, 1000..2000),
        before,
        "unread counts equal after a restart"
    );
    assert_eq!(ids(&pull_all(&mut c, 1500, conv::GROUP, gid)), ids_sent);
    // Notify after the restart carries the counts on from where they were.
    let r = c.send(group(1000, gid, 999, "after restart"));
    assert_eq!(r.code, code::OK);
    let n = c.take_notifies();
    let state = n
        .iter()
        .flat_map(|n| &n.updates)
        .find(|u| u.uid == 1001)
        .and_then(|u| u.conv)
        .expect("member 1001 notified");
    let was = before.iter().find(|(u, _, _)| *u == 1001).unwrap().2[0].unread;
    assert_eq!(state.unread, was + 1);
}

#[test]
fn another_partition_count_is_refused_and_a_second_opener_is_locked_out() {
    let tmp = TempDir::new("meta");
    let st = storage(tmp.path(), 1 << 16, Retention::default());
    let c = Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("opens");
    match Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0) {
        Err(RecoveryError::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    drop(c);
    match Cluster::open(&st, config(PARTITIONS * 2, THRESHOLD), T0) {
        Err(e @ RecoveryError::Partitions { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("= {PARTITIONS}")), "{text}");
        }
        other => panic!("expected Partitions, got {:?}", other.err()),
    }
    Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("the right count opens");
}

#[test]
fn retention_drops_old_messages_but_keeps_groups_cursors_and_young_dedup_entries() {
    const HOUR: u64 = 3_600_000;
    let tmp = TempDir::new("retention");
    let retention = Retention {
        max_age_ms: Some(HOUR),
        max_bytes: None,
    };
    let st = storage(tmp.path(), 4096, retention);
    let mut c = Cluster::open(&st, config(1, THRESHOLD), T0).expect("opens");
    let gid = c.create_group(1, &[2, 3]);
    let old = c.send(single(1, 2, 1, "old single"));
    let old_group: Vec<u64> = (0..40)
        .map(|i| {
            c.send(group(2, gid, 100 + i, "old group message padding"))
                .msg_id
        })
        .collect();
    assert_eq!(c.read(3, conv::GROUP, gid, old_group[9]).code, code::OK);
    assert_eq!(c.read(2, conv::SINGLE, 1, old.msg_id).code, code::OK);
    // Two hours later: enough new messages to seal the old segments.
    c.now += 2 * HOUR;
    let new: Vec<u64> = (0..40)
        .map(|i| {
            c.send(group(3, gid, 500 + i, "new group message padding"))
                .msg_id
        })
        .collect();
    // The next input runs the retention check (one per minute at most).
    c.now += 61_000;
    let _ = c.sync(1);
    let stats = c.parts[0].stats();
    assert!(stats.messages < 81, "old messages went: {}", stats.messages);
    // What is left of the group: a suffix of the old messages (those sharing a segment with
    // new ones), then every new one.
    let left = ids(&pull_all(&mut c, 1, conv::GROUP, gid));
    let old_left = left.len() - new.len();
    assert!(old_left < old_group.len(), "some old group messages went");
    let mut expected = old_group[old_group.len() - old_left..].to_vec();
    expected.extend(&new);
    assert_eq!(left, expected);
    let members = c.group_call(1, "members", gid);
    let v: serde_json::Value = serde_json::from_slice(&members.payload).expect("json");
    assert_eq!(
        v["members"],
        serde_json::json!([1, 2, 3]),
        "membership kept"
    );
    // Dedup entries younger than 24 h outlive their messages.
    let again = c.send(single(1, 2, 1, "old single"));
    assert_eq!((again.code, again.msg_id), (code::OK, old.msg_id));
    let before = syncs(&mut c, [1, 2, 3]);
    let kept = pull_all(&mut c, 1, conv::GROUP, gid);

    let mut c = c.restart(&st, 10);
    assert_eq!(
        syncs(&mut c, [1, 2, 3]),
        before,
        "memory matched the retained log"
    );
    assert_eq!(pull_all(&mut c, 1, conv::GROUP, gid), kept);
    let v: serde_json::Value =
        serde_json::from_slice(&c.group_call(1, "members", gid).payload).expect("json");
    assert_eq!(
        v["members"],
        serde_json::json!([1, 2, 3]),
        "membership survived its segment"
    );
    let again = c.send(single(1, 2, 1, "old single"));
    assert_eq!(again.msg_id, old.msg_id, "dedup survived its segment");
}

#[test]
fn a_full_disk_answers_backend_unavailable_and_sends_resume_when_space_returns() {
    let tmp = TempDir::new("full");
    let st = Storage {
        journal: JournalConfig {
            log: Options {
                segment_bytes: 4096,
                sync: Sync::Always,
                space_limit: Some(8192),
            },
            retention: Retention::default(),
        },
        ..storage(tmp.path(), 4096, Retention::default())
    };
    let mut c = Cluster::open(&st, config(1, THRESHOLD), T0).expect("opens");
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 1..=200u64 {
        let r = c.send(single(1, 2, i, "fill the disk with this body"));
        match r.code {
            code::OK => acked.push(r.msg_id),
            code::BACKEND_UNAVAILABLE => {
                refused = Some(i);
                break;
            }
            other => panic!("unexpected code {other}: {}", r.message),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(
        ids(&pull_all(&mut c, 1, conv::SINGLE, 2)),
        acked,
        "nothing half-stored"
    );
    c.parts[0].set_space_limit(None);
    let r = c.send(single(1, 2, refused, "fill the disk with this body"));
    assert_eq!(r.code, code::OK, "{}", r.message);
    acked.push(r.msg_id);
    let mut c = c.restart(&st, 10);
    assert_eq!(ids(&pull_all(&mut c, 1, conv::SINGLE, 2)), acked);
}

#[test]
fn the_content_filter_rejects_or_masks_what_is_stored_and_pushed() {
    let reject = ContentFilter::from_list("forbidden\n", FilterAction::Reject).unwrap();
    let mut c = Cluster::with_config(ImConfig {
        filter: Some(Arc::new(reject)),
        ..config(PARTITIONS, THRESHOLD)
    });
    let r = c.send(single(1, 2, 1, "this is FORBIDDEN"));
    assert_eq!(r.code, code::CONTENT_REJECTED);
    assert!(pull_all(&mut c, 1, conv::SINGLE, 2).is_empty());
    assert_eq!(
        c.send(single(1, 2, 1, "fine")).code,
        code::OK,
        "a rejected id is not kept"
    );

    let mask = ContentFilter::from_list("darn\n", FilterAction::Mask).unwrap();
    let mut c = Cluster::with_config(ImConfig {
        filter: Some(Arc::new(mask)),
        ..config(PARTITIONS, THRESHOLD)
    });
    assert_eq!(c.send(single(1, 2, 1, "oh darn it")).code, code::OK);
    let pushed = c.take_delivers();
    assert_eq!(&pushed[0].msg.as_ref().unwrap().body[..], b"oh **** it");
    assert_eq!(
        &pull_all(&mut c, 2, conv::SINGLE, 1)[0].body[..],
        b"oh **** it"
    );
}

#[test]
fn randomized_operations_with_restarts_match_a_cluster_that_never_restarted() {
    let tmp = TempDir::new("model");
    let st = storage(tmp.path(), 8192, Retention::default());
    let mut durable = Cluster::open(&st, config(PARTITIONS, THRESHOLD), T0).expect("opens");
    let mut model = Cluster::new(PARTITIONS, THRESHOLD);
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let users: Vec<u64> = (1..=12).collect();
    let mut groups: Vec<u64> = Vec::new();
    let mut cmid = 0u64;
    for step in 0..1500u32 {
        let now = T0 + u64::from(step) * 37;
        durable.now = durable.now.max(now);
        model.now = durable.now;
        let uid = *rng.pick(&users);
        match rng.below(100) {
            0..=44 => {
                // A SEND, sometimes a resend of an earlier client_msg_id.
                let id = if cmid > 0 && rng.chance(10) {
                    1 + rng.below(cmid)
                } else {
                    cmid += 1;
                    cmid
                };
                let s = if !groups.is_empty() && rng.chance(40) {
                    group(uid, *rng.pick(&groups), id, "g")
                } else {
                    single(uid, *rng.pick(&users), id, "s")
                };
                assert_eq!(durable.send(s.clone()), model.send(s), "step {step}: SEND");
            }
            45..=59 => {
                let peer = *rng.pick(&users);
                let up_to = rng.next() >> 1;
                let (t, id) = if !groups.is_empty() && rng.chance(50) {
                    (conv::GROUP, *rng.pick(&groups))
                } else {
                    (conv::SINGLE, peer)
                };
                assert_eq!(
                    durable.read(uid, t, id, up_to),
                    model.read(uid, t, id, up_to),
                    "step {step}: READ"
                );
            }
            60..=64 => {
                let members: Vec<u64> = users.iter().copied().filter(|_| rng.chance(40)).collect();
                let (a, b) = (
                    durable.create_group(uid, &members),
                    model.create_group(uid, &members),
                );
                assert_eq!(a, b, "step {step}: group ids");
                groups.push(a);
            }
            65..=74 if !groups.is_empty() => {
                let gid = *rng.pick(&groups);
                let method = if rng.chance(50) { "join" } else { "leave" };
                assert_eq!(
                    durable.group_call(uid, method, gid),
                    model.group_call(uid, method, gid),
                    "step {step}: {method}"
                );
            }
            75..=77 => {
                // A crash at a quiet moment: nothing in flight is lost, memory is.
                durable = durable.restart(&st, 0);
            }
            _ => {
                let (mut a, mut b) = (durable.sync(uid), model.sync(uid));
                a.convs.sort_by_key(|c| (c.conv_type, c.conv_id));
                b.convs.sort_by_key(|c| (c.conv_type, c.conv_id));
                assert_eq!(a, b, "step {step}: SYNC of {uid}");
            }
        }
        durable.take_delivers();
        model.take_delivers();
    }
    let mut durable = durable.restart(&st, 0);
    for &uid in &users {
        let (mut a, mut b) = (durable.sync(uid), model.sync(uid));
        a.convs.sort_by_key(|c| (c.conv_type, c.conv_id));
        b.convs.sort_by_key(|c| (c.conv_type, c.conv_id));
        assert_eq!(a, b, "final SYNC of {uid}");
        for &peer in &users {
            assert_eq!(
                pull_all(&mut durable, uid, conv::SINGLE, peer),
                pull_all(&mut model, uid, conv::SINGLE, peer)
            );
        }
    }
    for &gid in &groups {
        let members = model.group_call(1, "members", gid);
        assert_eq!(durable.group_call(1, "members", gid), members);
    }
}
