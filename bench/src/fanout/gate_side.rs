//! The gate side of the fan-out scenario: the group set up over the blocking client, and the
//! per-connection protocol handler (LOGIN, PUSH counted and acknowledged, SEND and its SendResp).
//!
//! [`GateHandler`] is sans-IO: it turns bytes into counts and appends PING answers, ACK frames and
//! SEND frames to the caller's output buffer. It reads a PUSH only as far as its `msg_id`.

use std::net::SocketAddr;
use std::time::Duration;

use gate::client::Client;
use gate::protocol::{MsgType, cmd, encode_frame, pb};
use prost::Message;

use super::drive::{self, Handler};
use super::exec::{Conn, ConnError, Event, Exec};
use super::{ConnSpec, Plan, RunError};
use crate::wire::{AckBatch, SendTemplate, push_msg_id, put_header, split_frame};

/// `LoginReq.platform` 5: other.
const PLATFORM_OTHER: u32 = 5;
/// The device every bench connection logs in as (setup uses another one).
const DEVICE: &str = "bench";
const LOGIN_SEQ: u32 = 1;

/// Logs `creator` in on a setup device, creates the group of `members` with BIZ group.create
/// (the creator is added by the backend), logs out; returns the group id.
pub fn create_group(addr: SocketAddr, creator: u64, members: &[u64]) -> Result<u64, RunError> {
    let setup = |what: &str, e: &dyn std::fmt::Display| RunError::Setup(format!("{what}: {e}"));
    let mut client = Client::connect(addr).map_err(|e| setup("connect to the gate", &e))?;
    client.set_call_timeout(Duration::from_secs(10));
    let resp = client
        .login(creator, "bench", "bench-setup")
        .map_err(|e| setup("setup LOGIN", &e))?;
    if resp.code != 0 {
        return Err(RunError::Setup(format!(
            "setup LOGIN refused with code {}: {}",
            resp.code, resp.message
        )));
    }
    let list: Vec<String> = members.iter().map(u64::to_string).collect();
    let payload = format!("{{\"name\":\"bench\",\"members\":[{}]}}", list.join(","));
    let req = pb::BizReq {
        service: "group".into(),
        method: "create".into(),
        payload: payload.into_bytes().into(),
    };
    let resp: pb::BizResp = client
        .call(cmd::BIZ, &req)
        .map_err(|e| setup("BIZ group.create", &e))?;
    if resp.code != 0 {
        return Err(RunError::Setup(format!(
            "group.create refused with code {}: {}",
            resp.code, resp.message
        )));
    }
    let group_id = json_u64(&resp.payload, "group_id").ok_or_else(|| {
        RunError::Setup(format!(
            "group.create answered {:?}",
            String::from_utf8_lossy(&resp.payload)
        ))
    })?;
    client.logout().map_err(|e| setup("setup LOGOUT", &e))?;
    Ok(group_id)
}

/// The unsigned number of `"key"` in a flat JSON object (enough for `{"group_id": N}`).
fn json_u64(json: &[u8], key: &str) -> Option<u64> {
    let text = std::str::from_utf8(json).ok()?;
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// One gate connection's protocol state.
pub struct GateHandler {
    max_frame: u32,
    logged_in: bool,
    acks: AckBatch,
    delivered: u64,
    repeats: u64,
    /// Highest msg_id pushed to this connection (one group: ids only grow).
    max_id: u64,
    /// Publishers only: the SEND frame template and what is in flight.
    template: Option<SendTemplate>,
    next_seq: u32,
    next_cmid: u64,
    unanswered: u64,
    inflight: u64,
}

impl GateHandler {
    pub fn new(plan: &Plan, publisher: bool) -> Self {
        Self {
            max_frame: gate::protocol::DEFAULT_MAX_FRAME,
            logged_in: false,
            acks: AckBatch::default(),
            delivered: 0,
            repeats: 0,
            max_id: 0,
            template: publisher.then(|| SendTemplate::new(plan.group_id, &plan.payload)),
            next_seq: LOGIN_SEQ + 1,
            next_cmid: plan.cmid_seed,
            unanswered: 0,
            inflight: plan.inflight,
        }
    }

    fn handle(&mut self, f: crate::wire::RawFrame<'_>, out: &mut Vec<u8>) -> Result<(), ConnError> {
        match (f.cmd, f.msg_type) {
            (cmd::PUSH, MsgType::Notify) => {
                let id = push_msg_id(f.body).map_err(ConnError::Push)?;
                self.acks.push(id, out);
                self.delivered += 1;
                if id <= self.max_id {
                    self.repeats += 1;
                }
                self.max_id = self.max_id.max(id);
            }
            (cmd::SEND, MsgType::Response) => {
                let resp = pb::SendResp::decode(f.body).map_err(ConnError::Decode)?;
                if resp.code != 0 {
                    return Err(ConnError::SendFailed {
                        code: resp.code,
                        message: resp.message,
                    });
                }
                self.unanswered = self.unanswered.saturating_sub(1);
            }
            (cmd::PING, MsgType::Request) => {
                put_header(out, cmd::PING, MsgType::Response, f.log_id, f.seq, 0);
            }
            (cmd::LOGIN, MsgType::Response) if f.seq == LOGIN_SEQ => {
                let resp = pb::LoginResp::decode(f.body).map_err(ConnError::Decode)?;
                if resp.code != 0 {
                    return Err(ConnError::LoginRefused {
                        code: resp.code,
                        message: resp.message,
                    });
                }
                if resp.max_frame != 0 {
                    self.max_frame = resp.max_frame;
                }
                self.logged_in = true;
            }
            (cmd::KICK, _) => {
                let kick = pb::Kick::decode(f.body).map_err(ConnError::Decode)?;
                return Err(ConnError::Kicked {
                    reason: kick.reason,
                });
            }
            (cmd::ERROR, _) => {
                let err = pb::Error::decode(f.body).map_err(ConnError::Decode)?;
                return Err(ConnError::Refused { code: err.code });
            }
            (cmd::NOTIFY, _) => return Err(ConnError::Notify),
            // PING answers, READ_RECEIPT, BIZ_PUSH, unknown notifies: nothing to do.
            _ => {}
        }
        Ok(())
    }
}

impl Handler for GateHandler {
    fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, ConnError> {
        let mut at = 0;
        while let Some((frame, n)) =
            split_frame(&buf[at..], self.max_frame).map_err(ConnError::Frame)?
        {
            self.handle(frame, out)?;
            at += n;
        }
        Ok(at)
    }

    fn take_delivered(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.delivered),
            std::mem::take(&mut self.repeats),
        )
    }

    fn acks_pending(&self) -> bool {
        !self.acks.is_empty()
    }

    fn flush_acks(&mut self, out: &mut Vec<u8>) {
        self.acks.flush(out);
    }

    fn can_send(&self) -> u64 {
        match self.template {
            Some(_) => self.inflight.saturating_sub(self.unanswered),
            None => 0,
        }
    }

    fn put_publish(&mut self, out: &mut Vec<u8>) {
        if let Some(template) = &self.template {
            template.put(out, self.next_seq, self.next_cmid);
            // seq 0 is for notifies; LOGIN_SEQ is never reused by a SEND after a wrap either.
            self.next_seq = self.next_seq.wrapping_add(1).max(LOGIN_SEQ + 1);
            self.next_cmid = self.next_cmid.wrapping_add(1).max(1);
            self.unanswered += 1;
        }
    }
}

/// One gate connection: LOGIN, then subscribe or publish until the run is over.
pub async fn conn(exec: &Exec, spec: ConnSpec) -> Result<(), ConnError> {
    let mut conn = Conn::connect(exec, exec.plan.addr).await?;
    let mut h = GateHandler::new(&exec.plan, spec.publisher);
    let login = pb::LoginReq {
        uid: spec.uid,
        token: "bench".into(),
        device_id: DEVICE.into(),
        platform: PLATFORM_OTHER,
        client_version: env!("CARGO_PKG_VERSION").into(),
    };
    let frame = encode_frame(cmd::LOGIN, MsgType::Request, LOGIN_SEQ, LOGIN_SEQ, &login);
    conn.out.extend_from_slice(&frame);
    conn.flush_out().await?;
    while !h.logged_in {
        if conn.next_event(exec, &mut h, |_, _| false).await? == Event::Eof {
            return Err(ConnError::Closed);
        }
        conn.flush_out().await?;
    }
    drive::run(exec, &mut conn, &mut h, spec.publisher).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::fanout::Target;
    use crate::wire::ACK_BATCH;

    fn plan() -> Plan {
        Plan {
            target: Target::Gate,
            addr: "127.0.0.1:7000".parse().expect("addr"),
            inflight: 4,
            payload: vec![b'x'; 8],
            duration: Duration::from_secs(1),
            ack_flush: Duration::from_millis(5),
            recipients: 3,
            window_msgs: 4,
            group_id: 9,
            cmid_seed: 100,
            subject: "bench".into(),
            executors: 1,
        }
    }

    fn push_frame(msg_id: u64) -> Vec<u8> {
        let push = pb::PushMsg {
            msg_id,
            conv_type: 2,
            conv_id: 9,
            from: 1,
            to: 9,
            content_type: 1,
            body: Bytes::from_static(b"xxxxxxxx"),
            server_time_ms: 1,
            client_msg_id: 7,
        };
        encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push).to_vec()
    }

    /// Every msg_id in the ACK frames of `out`, in order.
    fn acked(out: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut at = 0;
        while let Some((f, n)) = split_frame(&out[at..], 65_536).expect("frame") {
            assert_eq!((f.cmd, f.msg_type), (cmd::ACK, MsgType::Notify));
            let ack = pb::Ack::decode(f.body).expect("Ack");
            assert!(ack.msg_ids.len() <= ACK_BATCH);
            ids.extend(ack.msg_ids);
            at += n;
        }
        assert_eq!(at, out.len());
        ids
    }

    #[test]
    fn every_push_is_acknowledged_in_batches_and_resends_count_as_repeats() {
        let mut h = GateHandler::new(&plan(), false);
        let mut ids: Vec<u64> = (1..=130).collect();
        ids.extend([64, 130]); // resends of ids already seen
        let stream: Vec<u8> = ids.iter().flat_map(|&id| push_frame(id)).collect();
        let mut out = Vec::new();
        // Fed in two reads cut inside a frame: the tail is left for the next read.
        let cut = stream.len() / 2 + 3;
        let used = h.feed(&stream[..cut], &mut out).expect("valid");
        let mut rest = stream[used..cut].to_vec();
        rest.extend_from_slice(&stream[cut..]);
        assert_eq!(h.feed(&rest, &mut out).expect("valid"), rest.len());
        assert_eq!(acked(&out), ids[..128], "two full batches sent at once");
        assert!(h.acks_pending());
        h.flush_acks(&mut out);
        assert!(!h.acks_pending());
        assert_eq!(acked(&out), ids, "the partial batch on flush");
        assert_eq!(h.take_delivered(), (132, 2));
        assert_eq!(h.take_delivered(), (0, 0));
    }

    #[test]
    fn publisher_stops_at_inflight_until_send_responses_arrive() {
        let mut h = GateHandler::new(&plan(), true);
        let mut out = Vec::new();
        while h.can_send() > 0 {
            h.put_publish(&mut out);
        }
        let mut seqs = Vec::new();
        let mut at = 0;
        while let Some((f, n)) = split_frame(&out[at..], 65_536).expect("frame") {
            let req = pb::SendReq::decode(f.body).expect("SendReq");
            assert_eq!((req.conv_type, req.to), (2, 9));
            seqs.push((f.seq, req.client_msg_id));
            at += n;
        }
        assert_eq!(seqs, [(2, 100), (3, 101), (4, 102), (5, 103)]);
        let ok = pb::SendResp {
            code: 0,
            msg_id: 1,
            server_time_ms: 1,
            message: String::new(),
        };
        let resp = encode_frame(cmd::SEND, MsgType::Response, 2, 2, &ok);
        let mut answers = Vec::new();
        h.feed(&resp, &mut answers).expect("valid");
        assert_eq!(h.can_send(), 1);
        let refused = pb::SendResp { code: 4, ..ok };
        let resp = encode_frame(cmd::SEND, MsgType::Response, 3, 3, &refused);
        assert!(matches!(
            h.feed(&resp, &mut answers),
            Err(ConnError::SendFailed { code: 4, .. })
        ));
    }

    #[test]
    fn gate_ping_is_answered_and_kick_or_notify_end_the_connection() {
        let mut h = GateHandler::new(&plan(), false);
        let mut out = Vec::new();
        let ping = encode_frame(cmd::PING, MsgType::Request, 77, 5, &());
        h.feed(&ping, &mut out).expect("valid");
        assert_eq!(
            out,
            encode_frame(cmd::PING, MsgType::Response, 77, 5, &()).to_vec()
        );
        let kick = pb::Kick {
            reason: 4,
            ..Default::default()
        };
        let kick = encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &kick);
        assert!(matches!(
            h.feed(&kick, &mut out),
            Err(ConnError::Kicked { reason: 4 })
        ));
        let notify = encode_frame(cmd::NOTIFY, MsgType::Notify, 0, 0, &pb::Notify::default());
        assert!(matches!(h.feed(&notify, &mut out), Err(ConnError::Notify)));
    }

    #[test]
    fn group_id_is_read_from_the_biz_answer() {
        assert_eq!(
            json_u64(br#"{"group_id": 9000001}"#, "group_id"),
            Some(9_000_001)
        );
        assert_eq!(json_u64(br#"{"group_id":7,"x":1}"#, "group_id"), Some(7));
        assert_eq!(json_u64(br#"{"other": 1}"#, "group_id"), None);
    }
}
