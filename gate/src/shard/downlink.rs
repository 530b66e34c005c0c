//! The shard as its backend's [`GateSink`]: answers to requests become response frames on the
//! asking connection; downlink (deliver, notify, read receipts, kicks, BIZ_PUSH) becomes frames
//! on every session of the named users that live on this shard.
//!
//! Encode once, share everywhere: a PUSH is encoded once per point of view (a single chat has
//! two: the recipient sees `conv_id = from`, the sender's other devices `conv_id = to`; a group
//! has one) with `seq = 0`, and the same `Bytes` is queued to every connection.

use std::time::Instant;

use bytes::Bytes;
use prost::Message;
use router::backend::{Downlink, GateSink, Origin, Reply};
use router::link;

use super::state::{ConnKey, ConnShared, Shard};
use crate::delivery::ConvRef;
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
        match downlink {
            Downlink::Deliver(d) => self.deliver(d),
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
                let mut frames: [Option<(u64, Bytes)>; 2] = [None, None];
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
                            (
                                conv_id,
                                encode_frame(cmd::READ_RECEIPT, MsgType::Notify, 0, 0, &body),
                            )
                        })
                        .1
                        .clone();
                    self.each_session(uid, r.exclude_session, |conn| {
                        self.queue(conn, frame.clone())
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

impl Shard {
    fn deliver(&self, d: link::Deliver) {
        let Some(msg) = d.msg else { return };
        let now = Instant::now();
        // Encoded lazily, once per point of view.
        let mut for_recipient: Option<(ConvRef, Bytes)> = None;
        let mut for_sender: Option<(ConvRef, Bytes)> = None;
        for &uid in &d.recipients {
            let single = msg.conv_type == router::conv::SINGLE;
            let slot = if single && uid == msg.from && msg.from != msg.to {
                &mut for_sender
            } else {
                &mut for_recipient
            };
            let (conv, frame) = slot.get_or_insert_with(|| {
                let push = push_msg(msg.clone(), uid);
                let conv = ConvRef {
                    conv_type: push.conv_type,
                    conv_id: push.conv_id,
                };
                (conv, encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push))
            });
            // Borrowed: each session's tracker and queue take their own reference.
            let (conv, frame) = (*conv, &*frame);
            self.each_session(uid, d.exclude_session, |conn| {
                self.push_tracked(conn, msg.msg_id, conv, frame, now)
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
        let frame = encode_frame(cmd::BIZ_PUSH, MsgType::Notify, 0, 0, &body);
        for &uid in &b.recipients {
            self.each_session(uid, 0, |conn| self.queue(conn, frame.clone()));
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
