//! The shard as its backend's [`GateSink`]: answers to requests become response frames on the
//! asking connection; downlink (deliver, notify, read receipts, kicks, BIZ_PUSH) becomes frames
//! on every session of the named users that live on this shard.
//!
//! Encode once, share everywhere: a PUSH is encoded once per point of view (a single chat has
//! two: the recipient sees `conv_id = from`, the sender's other devices `conv_id = to`; a group
//! has one) with `seq = 0`, and the same frame is queued to every connection.
//!
//! Session-major fan-out: delivers are held while the task that produced them runs, and fanned
//! out when it is done: a connection task whose SENDs the embedded backend handled does it
//! itself before it waits again; for any other producer (the link reader, the backend's
//! cross-shard receivers) the shard's fan-out task does, right after it (a trip through the
//! run queue: at 200 messages/s to 1,000 members, with the shard saturated by sends, that trip
//! added 15 ms to the p99 when it was the only way). Either way before the woken connections
//! flush. Then every run of consecutive group delivers with the same recipients is fanned out
//! session by session: each session's registry entry, tracker and queue are reached once for
//! the whole run instead of once per message, and its tracker and queue tails stay in cache
//! while the run's PUSHes are appended.
//! With a thousand members and hundreds of messages per loop turn, those per-session cache
//! misses were most of the gate's own time per delivery. Other downlink first fans out what is
//! held, so downlink keeps its order; replies are not held (PROTOCOL.md: clients order by
//! msg_id, and a reply goes to the asking connection). At most [`MAX_HELD_DELIVERS`] are held:
//! one more fans out the batch at once.

use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use router::backend::{Downlink, GateSink, Origin, Reply};
use router::link;

use super::state::{ConnKey, ConnShared, Shard};
use crate::delivery::{ConvRef, JoinedRun, OutFrame, SharedFrame};
use crate::protocol::pb::{
    BizPush, BizResp, ConvUpdate, PullResp, PushMsg, ReadReceipt, Result as ResultBody, SendResp,
    SyncResp,
};
use crate::protocol::{Code, KickReason, MsgType, cmd, encode_frame};

impl GateSink for Shard {
    fn reply(&self, origin: Origin, reply: Reply) {
        if let Some(latency) =
            self.latency
                .borrow_mut()
                .finish(origin.conn, origin.seq, Instant::now())
        {
            self.metric(|m| m.backend_latency.record(latency));
        }
        let Some(conn) = self.conn(ConnKey::unpack(origin.conn)) else {
            return; // The connection ended while its request was in flight.
        };
        let (log_id, seq) = (origin.log_id, origin.seq);
        let rsp = MsgType::Response;
        let frame = match reply {
            Reply::Login(result) => {
                conn.set_login_result(result);
                return;
            }
            Reply::Send(r) => encode_frame(
                cmd::SEND,
                rsp,
                log_id,
                seq,
                &SendResp {
                    code: r.code,
                    msg_id: r.msg_id,
                    server_time_ms: r.server_time_ms,
                    message: r.message,
                },
            ),
            Reply::Pull(r) => {
                let viewer = conn.uid();
                let msgs = r.msgs.into_iter().map(|m| push_msg(m, viewer)).collect();
                encode_frame(
                    cmd::PULL,
                    rsp,
                    log_id,
                    seq,
                    &PullResp {
                        code: r.code,
                        msgs,
                        has_more: r.has_more,
                    },
                )
            }
            Reply::Read(r) => encode_frame(
                cmd::READ,
                rsp,
                log_id,
                seq,
                &ResultBody {
                    code: r.code,
                    message: r.message,
                },
            ),
            Reply::Sync(r) => {
                let convs = r.convs.into_iter().map(conv_update).collect();
                let body = SyncResp {
                    code: r.code,
                    convs,
                    total_unread: r.total_unread,
                    has_more: r.has_more,
                };
                encode_frame(cmd::SYNC, rsp, log_id, seq, &body)
            }
            Reply::Biz(r) => {
                let mut body = BizResp {
                    code: r.code,
                    payload: r.payload,
                    message: r.message,
                };
                if body.encoded_len() > self.settings.max_frame as usize {
                    body = BizResp {
                        code: Code::TooLarge.wire(),
                        payload: Bytes::new(),
                        message: "answer above max_frame".into(),
                    };
                }
                encode_frame(cmd::BIZ, rsp, log_id, seq, &body)
            }
        };
        self.queue(&conn, frame);
    }

    fn downlink(&self, downlink: Downlink) {
        if let Downlink::Deliver(d) = downlink {
            self.hold_deliver(d);
            return;
        }
        // Other downlink keeps its order behind the delivers held so far.
        self.fan_out_held();
        match downlink {
            // Held above; not reached.
            Downlink::Deliver(d) => self.deliver(&d, Instant::now()),
            Downlink::Notify(n) => {
                let now = Instant::now();
                for update in n.updates {
                    let Some(conv) = update.conv else { continue };
                    for key in self.session_keys(update.uid, n.exclude_session) {
                        self.notify(key, conv_update(conv), now);
                    }
                }
            }
            Downlink::ReadReceipt(r) => {
                // At most two points of view: the reader's own devices and the other party.
                let mut frames: [Option<SharedFrame>; 2] = [None, None];
                for &uid in &r.recipients {
                    let conv_id = match (r.conv_type, uid == r.reader) {
                        (router::conv::SINGLE, false) => r.reader,
                        _ => r.peer,
                    };
                    let slot = usize::from(uid != r.reader);
                    let frame = frames[slot]
                        .get_or_insert_with(|| {
                            let body = ReadReceipt {
                                conv_type: r.conv_type,
                                conv_id,
                                reader: r.reader,
                                read_up_to: r.read_up_to,
                            };
                            OutFrame::frame(encode_frame(
                                cmd::READ_RECEIPT,
                                MsgType::Notify,
                                0,
                                0,
                                &body,
                            ))
                        })
                        .clone();
                    self.each_session(uid, r.exclude_session, |conn| {
                        self.queue_shared(conn, frame.clone())
                    });
                }
            }
            Downlink::Kick(k) => {
                let reason = kick_reason(k.reason);
                let registry = self.registry.borrow();
                let keys: Vec<ConnKey> = registry
                    .devices(k.uid)
                    .iter()
                    .filter(|d| k.device_id.is_empty() || *d.device_id == *k.device_id)
                    .filter(|d| k.session_id == 0 || d.session_id == k.session_id)
                    .map(|d| d.conn)
                    .collect();
                drop(registry);
                for key in keys {
                    self.kick(key, reason);
                }
            }
            Downlink::BizPush(b) => self.biz_push(b),
        }
    }
}

/// Delivers held for the fan-out task: beyond this many the batch is fanned out at once.
pub(crate) const MAX_HELD_DELIVERS: usize = 4096;

/// Delivers waiting for the shard's fan-out task, and its waker.
#[derive(Default)]
pub(crate) struct HeldDelivers {
    delivers: Vec<link::Deliver>,
    waker: Option<Waker>,
}

/// The shard's fan-out task: fans out the delivers held since it last ran (module doc).
pub(crate) async fn run_fan_out(shard: Rc<Shard>) {
    poll_fn(|cx| {
        shard.fan_out_held();
        let mut held = shard.held.borrow_mut();
        if !held.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            held.waker = Some(cx.waker().clone());
        }
        Poll::<()>::Pending
    })
    .await
}

/// Whether `next` joins the run that `first` starts: group messages (one point of view) to
/// the same recipients with the same excluded session.
fn same_audience(first: &link::Deliver, next: &link::Deliver) -> bool {
    let group = |d: &link::Deliver| {
        d.msg
            .as_ref()
            .is_some_and(|m| m.conv_type != router::conv::SINGLE)
    };
    group(first)
        && group(next)
        && first.exclude_session == next.exclude_session
        && first.recipients == next.recipients
}

impl Shard {
    /// Holds a deliver for the fan-out task (module doc).
    fn hold_deliver(&self, d: link::Deliver) {
        let mut held = self.held.borrow_mut();
        held.delivers.push(d);
        if held.delivers.len() == 1
            && let Some(waker) = held.waker.take()
        {
            waker.wake();
        }
        let full = held.delivers.len() >= MAX_HELD_DELIVERS;
        drop(held);
        if full {
            self.fan_out_held();
        }
    }

    /// Fans out every held deliver, in order, runs to the same audience session by session.
    pub(crate) fn fan_out_held(&self) {
        let mut batch = {
            let mut held = self.held.borrow_mut();
            if held.delivers.is_empty() {
                return;
            }
            std::mem::take(&mut held.delivers)
        };
        // Not borrowed while fanning out: a report flushed meanwhile may bring more downlink.
        let now = Instant::now();
        let mut rest = &batch[..];
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|d| same_audience(first, d)).count();
            if run > 1 {
                self.deliver_run(&rest[..run], now);
            } else {
                self.deliver(first, now);
            }
            rest = &rest[run.max(1)..];
        }
        batch.clear();
        let mut held = self.held.borrow_mut();
        if held.delivers.is_empty() {
            // Keep the room for the next turn.
            held.delivers = batch;
        }
    }

    /// Group messages to one audience: every session takes the whole run at once.
    fn deliver_run(&self, run: &[link::Deliver], now: Instant) {
        let frames: Vec<SharedFrame> = run
            .iter()
            .filter_map(|d| d.msg.as_ref())
            // A group has one point of view: any viewer.
            .map(|msg| push_frame(msg, 0))
            .collect();
        // Joined once per transport, queued whole by every session that takes the run.
        let joined = JoinedRun::new(&frames);
        let audience = &run[0];
        for &uid in &audience.recipients {
            self.each_session(uid, audience.exclude_session, |conn| {
                self.push_tracked_run(conn, &joined, now)
            });
        }
    }

    fn deliver(&self, d: &link::Deliver, now: Instant) {
        let Some(msg) = &d.msg else { return };
        // Encoded lazily, once per point of view.
        let mut for_recipient: Option<SharedFrame> = None;
        let mut for_sender: Option<SharedFrame> = None;
        for &uid in &d.recipients {
            let single = msg.conv_type == router::conv::SINGLE;
            let slot = if single && uid == msg.from && msg.from != msg.to {
                &mut for_sender
            } else {
                &mut for_recipient
            };
            let frame = slot.get_or_insert_with(|| push_frame(msg, uid));
            // Borrowed: each session's tracker and queue take their own reference.
            let frame = &*frame;
            self.each_session(uid, d.exclude_session, |conn| {
                self.push_tracked(conn, frame, now)
            });
        }
    }

    /// BIZ_PUSH: encoded once, queued to every session of the recipients on this shard. Not
    /// tracked (no ACK, no resend): it is not stored, like PROTOCOL.md's other notifies.
    fn biz_push(&self, b: link::BizPushUsers) {
        let body = BizPush {
            topic: b.topic,
            payload: b.payload,
        };
        if body.encoded_len() > self.settings.max_frame as usize {
            tracing::warn!(
                topic = %body.topic,
                len = body.encoded_len(),
                "BIZ_PUSH above gate.max_frame dropped"
            );
            return;
        }
        let frame = OutFrame::frame(encode_frame(cmd::BIZ_PUSH, MsgType::Notify, 0, 0, &body));
        for &uid in &b.recipients {
            self.each_session(uid, 0, |conn| self.queue_shared(conn, frame.clone()));
        }
    }

    /// The connections of `uid` on this shard, but the session `exclude`.
    fn session_keys(&self, uid: u64, exclude: u64) -> Vec<ConnKey> {
        self.registry
            .borrow()
            .devices(uid)
            .iter()
            .filter(|d| exclude == 0 || d.session_id != exclude)
            .map(|d| d.conn)
            .collect()
    }

    /// Runs `f` on every connection of `uid` on this shard but the session `exclude`.
    ///
    /// Iterates under a shared borrow of the registry (no allocation per recipient): `f` only
    /// queues frames, tracks PUSHes and reports, none of which changes the registry; only
    /// connection tasks register and unregister, and none runs inside `f`.
    fn each_session(&self, uid: u64, exclude: u64, mut f: impl FnMut(&ConnShared)) {
        let registry = self.registry.borrow();
        for device in registry.devices(uid) {
            if exclude != 0 && device.session_id == exclude {
                continue;
            }
            if let Some(conn) = self.conn(device.conn) {
                f(&conn);
            }
        }
    }
}

/// The PUSH frame of a stored message as `viewer` sees it.
fn push_frame(msg: &link::Msg, viewer: u64) -> SharedFrame {
    let push = push_msg(msg.clone(), viewer);
    let conv = ConvRef {
        conv_type: push.conv_type,
        conv_id: push.conv_id,
    };
    let bytes = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push);
    OutFrame::push(bytes, msg.msg_id, conv)
}

/// A stored message as `viewer` sees it (PROTOCOL.md: `conv_id` is the other party in a single
/// chat, the group in a group).
fn push_msg(m: link::Msg, viewer: u64) -> PushMsg {
    let conv_id = match m.conv_type {
        router::conv::SINGLE if viewer == m.to => m.from,
        _ => m.to,
    };
    PushMsg {
        msg_id: m.msg_id,
        conv_type: m.conv_type,
        conv_id,
        from: m.from,
        to: m.to,
        content_type: m.content_type,
        body: m.body,
        server_time_ms: m.server_time_ms,
        client_msg_id: m.client_msg_id,
    }
}

fn conv_update(c: link::ConvState) -> ConvUpdate {
    ConvUpdate {
        conv_type: c.conv_type,
        conv_id: c.conv_id,
        latest_msg_id: c.latest_msg_id,
        unread: c.unread,
    }
}

fn kick_reason(wire: u32) -> KickReason {
    match wire {
        1 => KickReason::DuplicateLogin,
        2 => KickReason::Draining,
        3 => KickReason::AuthExpired,
        4 => KickReason::SlowConsumer,
        5 => KickReason::ProtocolError,
        6 => KickReason::IdleTimeout,
        _ => KickReason::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(conv_type: u32, msg_id: u64, recipients: &[u64], exclude: u64) -> link::Deliver {
        link::Deliver {
            msg: Some(link::Msg {
                msg_id,
                conv_type,
                to: 500,
                from: 1,
                ..Default::default()
            }),
            recipients: recipients.to_vec(),
            exclude_session: exclude,
        }
    }

    #[test]
    fn only_group_messages_to_the_same_audience_share_a_run() {
        let group = router::conv::GROUP;
        let single = router::conv::SINGLE;
        let first = deliver(group, 1, &[1, 2, 3], 9);
        assert!(same_audience(&first, &deliver(group, 2, &[1, 2, 3], 9)));
        // Another excluded session, other recipients, or a single chat (two points of view)
        // start a new run.
        assert!(!same_audience(&first, &deliver(group, 2, &[1, 2, 3], 8)));
        assert!(!same_audience(&first, &deliver(group, 2, &[1, 2], 9)));
        assert!(!same_audience(&first, &deliver(group, 2, &[1, 3, 2], 9)));
        assert!(!same_audience(&first, &deliver(single, 2, &[1, 2, 3], 9)));
        let chat = deliver(single, 1, &[1, 2], 0);
        assert!(!same_audience(&chat, &deliver(single, 2, &[1, 2], 0)));
        let empty = link::Deliver {
            msg: None,
            ..deliver(group, 1, &[1, 2, 3], 9)
        };
        assert!(!same_audience(&empty, &first));
    }

    #[test]
    fn a_group_frame_names_the_group_for_every_viewer() {
        let d = deliver(router::conv::GROUP, 7, &[1, 2], 0);
        let msg = d.msg.as_ref().expect("has a message");
        for viewer in [0, 1, 2] {
            let frame = push_frame(msg, viewer);
            assert_eq!(frame.msg_id(), 7);
            assert_eq!(frame.conv().conv_id, 500);
        }
    }
}
