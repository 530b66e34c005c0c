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

    fn take_delivered(&mut self) -> u64 {
        std::mem::take(&mut self.delivered)
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
    exec.joined();
    let result = if spec.publisher {
        drive::publish(exec, &mut conn, &mut h).await
    } else {
        drive::subscribe(exec, &mut conn, &mut h).await
    };
    exec.left();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
