//! The gate side of every scenario: a group set up over the blocking client, and the
//! per-connection protocol handler (LOGIN; PUSH counted, timed and acknowledged; NOTIFY answered
//! with PULLs whose messages count as deliveries; SEND and its SendResp counted by code).
//!
//! [`GateHandler`] is sans-IO: it turns bytes into counts and latencies and appends PING answers,
//! ACK frames, PULL and SEND frames to the caller's output buffer. It reads a PUSH only as far as
//! its `msg_id`, `from` and the body's timestamp; no body is decoded in full.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use gate::client::Client;
use gate::protocol::{MsgType, cmd, encode_frame, pb};
use prost::Message;

use crate::coord::{Counts, RunError};
use crate::drive::{self, Handler, Pacer, Received};
use crate::exec::{Conn, ConnError, Event, Exec};
use crate::wire::{
    AckBatch, SendTemplate, notify_latest, pull_resp, push_view, put_header, put_pull, send_resp,
    split_frame,
};
use crate::ws::{self, WsHandler};

/// `conv_type` of a single chat.
pub const SINGLE: u32 = 1;
/// `conv_type` of a group chat.
pub const GROUP: u32 = 2;
/// `SendResp.code` RATE_LIMITED.
const RATE_LIMITED: u32 = 4;
/// Messages asked for per PULL (the gate's cap).
const PULL_LIMIT: u32 = 200;

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

/// What a connection's latency samples measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Send timestamp → the PUSH (or the PullResp carrying the message) arriving.
    Delivery,
    /// Send timestamp → the SendResp arriving.
    SendResp,
}

/// How one gate connection behaves.
#[derive(Debug, Clone)]
pub struct GateConfig {
    pub uid: u64,
    /// `(conv_type, to)` of what it sends, if it sends.
    pub sends: Option<(u32, u64)>,
    /// The group whose NOTIFYs it answers with PULLs (any other NOTIFY is an error).
    pub pulls: Option<u64>,
    pub measure: Measure,
    /// Most SENDs without a SendResp (closed loop on answers).
    pub inflight: u64,
    /// First `client_msg_id`.
    pub cmid_seed: u64,
}

/// The PULL side: what the connection holds of the group and what it was told exists.
#[derive(Debug, Default)]
struct PullState {
    group: u64,
    /// Highest msg_id held (pushed or pulled).
    held: u64,
    /// Highest msg_id a NOTIFY announced.
    announced: u64,
    /// The seq of the PULL in flight.
    in_flight: Option<u32>,
    has_more: bool,
}

/// One gate connection's protocol state.
pub struct GateHandler {
    uid: u64,
    max_frame: u32,
    logged_in: bool,
    acks: AckBatch,
    counts: Counts,
    measure: Measure,
    /// Highest msg_id pushed to this connection (one conversation: ids only grow).
    max_id: u64,
    /// Senders only: the SEND frame template and what is in flight.
    template: Option<SendTemplate>,
    next_seq: u32,
    next_cmid: u64,
    unanswered: u64,
    inflight: u64,
    /// `Measure::SendResp` only: (seq, stamp) of each unanswered SEND, oldest first (answers
    /// come in order in practice; out of order is searched). Grows to the most in flight, then
    /// stays: no allocation per message once warm.
    stamps: VecDeque<(u32, u64)>,
    pull: Option<PullState>,
    /// A refused SEND was already reported for this connection.
    refusal_noted: Option<u32>,
}

impl GateHandler {
    pub fn new(config: &GateConfig, payload: &[u8]) -> Self {
        Self {
            uid: config.uid,
            max_frame: gate::protocol::DEFAULT_MAX_FRAME,
            logged_in: false,
            acks: AckBatch::default(),
            counts: Counts::default(),
            measure: config.measure,
            max_id: 0,
            template: config
                .sends
                .map(|(conv_type, to)| SendTemplate::new(conv_type, to, payload)),
            next_seq: LOGIN_SEQ + 1,
            next_cmid: config.cmid_seed,
            unanswered: 0,
            inflight: config.inflight,
            stamps: VecDeque::new(),
            pull: config.pulls.map(|group| PullState {
                group,
                ..PullState::default()
            }),
            refusal_noted: None,
        }
    }

    fn take_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        // seq 0 is for notifies; LOGIN_SEQ is never reused after a wrap either.
        self.next_seq = self.next_seq.wrapping_add(1).max(LOGIN_SEQ + 1);
        seq
    }

    /// The first non-OK, non-rate-limited SendResp code, once (for the report).
    pub fn take_refusal(&mut self) -> Option<u32> {
        self.refusal_noted.take().filter(|&code| code != 0)
    }

    /// Sends a PULL when messages were announced beyond what is held and none is in flight.
    fn maybe_pull(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pull.as_ref() else { return };
        if p.in_flight.is_some() || !(p.has_more || p.announced > p.held) {
            return;
        }
        let (group, after) = (p.group, p.held);
        let seq = self.take_seq();
        put_pull(out, seq, GROUP, group, after, PULL_LIMIT);
        if let Some(p) = self.pull.as_mut() {
            p.in_flight = Some(seq);
        }
    }

    fn on_push(
        &mut self,
        body: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<(), ConnError> {
        let view = push_view(body).map_err(ConnError::Body)?;
        self.acks.push(view.msg_id, out);
        self.counts.delivered += 1;
        if view.msg_id <= self.max_id {
            // A resend: counted apart, and its latency is not the message's.
            self.counts.repeats += 1;
            return Ok(());
        }
        self.max_id = view.msg_id;
        if let Some(p) = self.pull.as_mut() {
            p.held = p.held.max(view.msg_id);
        }
        if let (Measure::Delivery, Some(stamp)) = (self.measure, view.stamp) {
            rx.latency.record(stamp, rx.now_ns);
        }
        Ok(())
    }

    fn on_send_resp(
        &mut self,
        seq: u32,
        body: &[u8],
        rx: &mut Received<'_>,
    ) -> Result<(), ConnError> {
        let (code, _msg_id) = send_resp(body).map_err(ConnError::Body)?;
        self.unanswered = self.unanswered.saturating_sub(1);
        match code {
            0 => self.counts.answered += 1,
            RATE_LIMITED => self.counts.rate_limited += 1,
            other => {
                self.counts.refused += 1;
                self.refusal_noted.get_or_insert(other);
            }
        }
        if self.measure == Measure::SendResp {
            let at = match self.stamps.front() {
                Some(&(s, _)) if s == seq => Some(0),
                _ => self.stamps.iter().position(|&(s, _)| s == seq),
            };
            if let Some((_, stamp)) = at.and_then(|i| self.stamps.remove(i)) {
                // Refusals are timed too: the answer is what this scenario measures.
                rx.latency.record(stamp, rx.now_ns);
            }
        }
        Ok(())
    }

    fn on_pull_resp(
        &mut self,
        seq: u32,
        body: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<(), ConnError> {
        let (uid, measure) = (self.uid, self.measure);
        let Some(p) = self.pull.as_mut().filter(|p| p.in_flight == Some(seq)) else {
            return Ok(()); // not ours: ignore
        };
        p.in_flight = None;
        let (mut held, mut fresh) = (p.held, 0u64);
        let latency = &mut *rx.latency;
        let now_ns = rx.now_ns;
        let summary = pull_resp(body, |view| {
            if view.msg_id <= held {
                return;
            }
            held = view.msg_id;
            // PULL returns the group's whole history, the puller's own messages included.
            if view.from == uid {
                return;
            }
            fresh += 1;
            if let (Measure::Delivery, Some(stamp)) = (measure, view.stamp) {
                latency.record(stamp, now_ns);
            }
        })
        .map_err(ConnError::Body)?;
        if summary.code != 0 {
            return Err(ConnError::PullFailed { code: summary.code });
        }
        p.held = held;
        p.has_more = summary.has_more;
        self.max_id = self.max_id.max(held);
        self.counts.delivered += fresh;
        self.counts.pulled += fresh;
        self.maybe_pull(out);
        Ok(())
    }

    fn on_notify(&mut self, body: &[u8], out: &mut Vec<u8>) -> Result<(), ConnError> {
        self.counts.notifies += 1;
        let Some(group) = self.pull.as_ref().map(|p| p.group) else {
            return Err(ConnError::UnexpectedNotify);
        };
        let latest = notify_latest(body, GROUP, group).map_err(ConnError::Body)?;
        if let (Some(latest), Some(p)) = (latest, self.pull.as_mut()) {
            p.announced = p.announced.max(latest);
        }
        self.maybe_pull(out);
        Ok(())
    }

    fn handle(
        &mut self,
        f: crate::wire::RawFrame<'_>,
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<(), ConnError> {
        match (f.cmd, f.msg_type) {
            (cmd::PUSH, MsgType::Notify) => self.on_push(f.body, out, rx)?,
            (cmd::SEND, MsgType::Response) => self.on_send_resp(f.seq, f.body, rx)?,
            (cmd::PULL, MsgType::Response) => self.on_pull_resp(f.seq, f.body, out, rx)?,
            (cmd::NOTIFY, MsgType::Notify) => self.on_notify(f.body, out)?,
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
            // PING answers, READ_RECEIPT, BIZ_PUSH, unknown notifies: nothing to do.
            _ => {}
        }
        Ok(())
    }
}

impl Handler for GateHandler {
    fn feed(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<usize, ConnError> {
        let mut at = 0;
        while let Some((frame, n)) =
            split_frame(&buf[at..], self.max_frame).map_err(ConnError::Frame)?
        {
            self.handle(frame, out, rx)?;
            at += n;
        }
        Ok(at)
    }

    fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
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

    fn put_send(&mut self, out: &mut Vec<u8>, stamp_ns: u64) {
        if self.template.is_none() {
            return;
        }
        let seq = self.take_seq();
        let cmid = self.next_cmid;
        self.next_cmid = self.next_cmid.wrapping_add(1).max(1);
        if let Some(template) = &self.template {
            template.put(out, seq, cmid, stamp_ns);
        }
        self.unanswered += 1;
        if self.measure == Measure::SendResp {
            self.stamps.push_back((seq, stamp_ns));
        }
    }
}

/// One gate connection: LOGIN, then send (with `pacer`) or receive until the run is over;
/// over WebSocket (`/ws` on the same port) when `ws`.
pub async fn conn<P>(
    exec: &Exec,
    addr: SocketAddr,
    mut h: GateHandler,
    pacer: Option<P>,
    ws: bool,
) -> Result<(), ConnError>
where
    P: Pacer<GateHandler> + Pacer<WsHandler<GateHandler>>,
{
    let mut conn = Conn::connect(exec, addr).await?;
    let uid = h.uid;
    let login = pb::LoginReq {
        uid,
        token: "bench".into(),
        device_id: DEVICE.into(),
        platform: PLATFORM_OTHER,
        client_version: env!("CARGO_PKG_VERSION").into(),
    };
    let frame = encode_frame(cmd::LOGIN, MsgType::Request, LOGIN_SEQ, LOGIN_SEQ, &login);
    let result = if ws {
        conn.out
            .extend_from_slice(&ws::upgrade_request(&addr.to_string()));
        conn.flush_out().await?;
        let mut upgrade = ws::Upgrade::default();
        while !upgrade.done {
            if conn.next_event(exec, &mut upgrade, |_, _| false).await? == Event::Eof {
                return Err(ConnError::Closed);
            }
        }
        let mut wh = WsHandler::new(h);
        ws::wrap(&frame, &mut conn.out);
        log_in(exec, &mut conn, &mut wh, |w| w.inner.logged_in).await?;
        let result = drive::run(exec, &mut conn, &mut wh, pacer).await;
        h = wh.inner;
        result
    } else {
        conn.out.extend_from_slice(&frame);
        log_in(exec, &mut conn, &mut h, |h| h.logged_in).await?;
        drive::run(exec, &mut conn, &mut h, pacer).await
    };
    if let Some(code) = h.take_refusal() {
        exec.shared.note(format!(
            "uid {uid}: SEND answered with code {code} (counted in refused)"
        ));
    }
    result
}

/// Sends the queued LOGIN and reads until `logged_in` says the answer came.
async fn log_in<H: Handler>(
    exec: &Exec,
    conn: &mut Conn,
    h: &mut H,
    logged_in: impl Fn(&H) -> bool,
) -> Result<(), ConnError> {
    conn.flush_out().await?;
    while !logged_in(h) {
        if conn.next_event(exec, h, |_, _| false).await? == Event::Eof {
            return Err(ConnError::Closed);
        }
        conn.flush_out().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::latency::Latency;
    use crate::wire::ACK_BATCH;

    fn config(sends: bool, measure: Measure) -> GateConfig {
        GateConfig {
            uid: 1_000_000,
            sends: sends.then_some((GROUP, 9)),
            pulls: Some(9),
            measure,
            inflight: 4,
            cmid_seed: 100,
        }
    }

    fn msg(msg_id: u64, from: u64, stamp: u64) -> pb::PushMsg {
        let mut body = vec![b'x'; 16];
        body[..8].copy_from_slice(&stamp.to_le_bytes());
        pb::PushMsg {
            msg_id,
            conv_type: 2,
            conv_id: 9,
            from,
            to: 9,
            content_type: 1,
            body: Bytes::from(body),
            server_time_ms: 1,
            client_msg_id: 7,
        }
    }

    fn push_frame(msg_id: u64) -> Vec<u8> {
        encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &msg(msg_id, 1, 0)).to_vec()
    }

    /// Feeds `input` at `now_ns`, recording into `latency`.
    fn feed(
        h: &mut GateHandler,
        input: &[u8],
        out: &mut Vec<u8>,
        latency: &mut Latency,
        now_ns: u64,
    ) -> Result<usize, ConnError> {
        h.feed(input, out, &mut Received { now_ns, latency })
    }

    /// Every frame of `out` as (cmd, seq, body).
    fn frames(out: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
        let mut all = Vec::new();
        let mut at = 0;
        while let Some((f, n)) = split_frame(&out[at..], 65_536).expect("frame") {
            all.push((f.cmd, f.seq, f.body.to_vec()));
            at += n;
        }
        assert_eq!(at, out.len());
        all
    }

    /// Every msg_id in the ACK frames of `out`, in order.
    fn acked(out: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        for (c, _, body) in frames(out) {
            assert_eq!(c, cmd::ACK);
            let ack = pb::Ack::decode(&body[..]).expect("Ack");
            assert!(ack.msg_ids.len() <= ACK_BATCH);
            ids.extend(ack.msg_ids);
        }
        ids
    }

    #[test]
    fn every_push_is_acknowledged_in_batches_and_resends_count_as_repeats() {
        let mut h = GateHandler::new(&config(false, Measure::Delivery), b"");
        let mut latency = Latency::new();
        let mut ids: Vec<u64> = (1..=130).collect();
        ids.extend([64, 130]); // resends of ids already seen
        let stream: Vec<u8> = ids.iter().flat_map(|&id| push_frame(id)).collect();
        let mut out = Vec::new();
        // Fed in two reads cut inside a frame: the tail is left for the next read.
        let cut = stream.len() / 2 + 3;
        let used = feed(&mut h, &stream[..cut], &mut out, &mut latency, 0).expect("valid");
        let mut rest = stream[used..cut].to_vec();
        rest.extend_from_slice(&stream[cut..]);
        assert_eq!(
            feed(&mut h, &rest, &mut out, &mut latency, 0).expect("valid"),
            rest.len()
        );
        assert_eq!(acked(&out), ids[..128], "two full batches sent at once");
        assert!(h.acks_pending());
        h.flush_acks(&mut out);
        assert!(!h.acks_pending());
        assert_eq!(acked(&out), ids, "the partial batch on flush");
        let counts = h.take_counts();
        assert_eq!((counts.delivered, counts.repeats), (132, 2));
        assert_eq!(latency.count(), 130, "repeats are not timed");
        assert!(h.take_counts().is_empty());
    }

    #[test]
    fn push_latency_runs_from_the_body_stamp_to_the_read() {
        let mut h = GateHandler::new(&config(false, Measure::Delivery), b"");
        let mut latency = Latency::new();
        let mut out = Vec::new();
        let push = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &msg(5, 1, 2_000_000));
        feed(&mut h, &push, &mut out, &mut latency, 2_250_000).expect("valid");
        let s = latency.summary();
        assert_eq!(s.count, 1);
        assert!((s.max_us - 250.0).abs() < 0.5, "{s:?}");
    }

    #[test]
    fn sender_stops_at_inflight_and_counts_answers_by_code() {
        let mut h = GateHandler::new(&config(true, Measure::SendResp), &[b'x'; 16]);
        let mut latency = Latency::new();
        let mut out = Vec::new();
        let mut stamp = 1_000;
        while h.can_send() > 0 {
            h.put_send(&mut out, stamp);
            stamp += 1_000;
        }
        let sent: Vec<(u32, u64, u64)> = frames(&out)
            .into_iter()
            .map(|(c, seq, body)| {
                assert_eq!(c, cmd::SEND);
                let req = pb::SendReq::decode(&body[..]).expect("SendReq");
                assert_eq!((req.conv_type, req.to), (2, 9));
                let stamp = crate::latency::read_stamp(&req.body).expect("stamped");
                (seq, req.client_msg_id, stamp)
            })
            .collect();
        assert_eq!(
            sent,
            [
                (2, 100, 1_000),
                (3, 101, 2_000),
                (4, 102, 3_000),
                (5, 103, 4_000)
            ]
        );
        let answer = |seq: u32, code: u32| {
            let resp = pb::SendResp {
                code,
                msg_id: 1,
                server_time_ms: 1,
                message: String::new(),
            };
            encode_frame(cmd::SEND, MsgType::Response, seq, seq, &resp).to_vec()
        };
        let mut answers = Vec::new();
        // Answers out of order: OK for seq 3 at 10 µs, RATE_LIMITED for 2, BAD_REQUEST for 5.
        feed(&mut h, &answer(3, 0), &mut answers, &mut latency, 12_000).expect("valid");
        assert_eq!(h.can_send(), 1);
        let mut more = answer(2, 4);
        more.extend(answer(5, 1));
        feed(&mut h, &more, &mut answers, &mut latency, 12_000).expect("valid");
        assert!(answers.is_empty(), "nothing to answer");
        let counts = h.take_counts();
        assert_eq!(
            (counts.answered, counts.rate_limited, counts.refused),
            (1, 1, 1)
        );
        assert_eq!(h.can_send(), 3);
        assert_eq!(latency.count(), 3);
        assert!((latency.summary().max_us - 11.0).abs() < 0.1);
        assert_eq!(h.take_refusal(), Some(1));
        assert_eq!(h.take_refusal(), None);
    }

    #[test]
    fn notify_is_answered_with_pulls_until_the_announced_id_is_held() {
        let mut h = GateHandler::new(&config(false, Measure::Delivery), b"");
        let mut latency = Latency::new();
        let mut out = Vec::new();
        let notify = |latest| {
            let n = pb::Notify {
                updates: vec![pb::ConvUpdate {
                    conv_type: 2,
                    conv_id: 9,
                    latest_msg_id: latest,
                    unread: 1,
                }],
            };
            encode_frame(cmd::NOTIFY, MsgType::Notify, 0, 0, &n).to_vec()
        };
        feed(&mut h, &notify(30), &mut out, &mut latency, 0).expect("valid");
        let pulls = frames(&out);
        assert_eq!(pulls.len(), 1);
        let (c, seq, body) = &pulls[0];
        assert_eq!(*c, cmd::PULL);
        let req = pb::PullReq::decode(&body[..]).expect("PullReq");
        assert_eq!(
            (req.conv_type, req.conv_id, req.after_msg_id, req.limit),
            (2, 9, 0, 200)
        );
        // A second NOTIFY while the PULL is in flight sends nothing more.
        out.clear();
        feed(&mut h, &notify(40), &mut out, &mut latency, 0).expect("valid");
        assert!(out.is_empty());
        // The answer: 10, 20 (our own: held, not counted), 30; has_more is false but 40 was
        // announced, so the next PULL goes after 30.
        let resp = pb::PullResp {
            code: 0,
            msgs: vec![
                msg(10, 7, 1_000),
                msg(20, 1_000_000, 1_000),
                msg(30, 7, 2_000),
            ],
            has_more: false,
        };
        let resp = encode_frame(cmd::PULL, MsgType::Response, *seq, *seq, &resp);
        feed(&mut h, &resp, &mut out, &mut latency, 101_000).expect("valid");
        let counts = h.take_counts();
        assert_eq!(
            (counts.delivered, counts.pulled, counts.notifies),
            (2, 2, 2)
        );
        assert_eq!(latency.count(), 2);
        assert!((latency.summary().max_us - 100.0).abs() < 0.1);
        let next = frames(&out);
        assert_eq!(next.len(), 1);
        let req = pb::PullReq::decode(&next[0].2[..]).expect("PullReq");
        assert_eq!(req.after_msg_id, 30);
        assert!(
            !h.acks_pending(),
            "pulled messages are not ACKed: the PULL acknowledges"
        );
        // A refused PULL ends the connection.
        let refused = pb::PullResp {
            code: 9,
            ..Default::default()
        };
        let refused = encode_frame(cmd::PULL, MsgType::Response, next[0].1, next[0].1, &refused);
        assert!(matches!(
            feed(&mut h, &refused, &mut out, &mut latency, 0),
            Err(ConnError::PullFailed { code: 9 })
        ));
    }

    #[test]
    fn gate_ping_is_answered_and_kick_or_a_stray_notify_end_the_connection() {
        let mut cfg = config(false, Measure::Delivery);
        cfg.pulls = None;
        let mut h = GateHandler::new(&cfg, b"");
        let mut latency = Latency::new();
        let mut out = Vec::new();
        let ping = encode_frame(cmd::PING, MsgType::Request, 77, 5, &());
        feed(&mut h, &ping, &mut out, &mut latency, 0).expect("valid");
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
            feed(&mut h, &kick, &mut out, &mut latency, 0),
            Err(ConnError::Kicked { reason: 4 })
        ));
        let notify = encode_frame(cmd::NOTIFY, MsgType::Notify, 0, 0, &pb::Notify::default());
        assert!(matches!(
            feed(&mut h, &notify, &mut out, &mut latency, 0),
            Err(ConnError::UnexpectedNotify)
        ));
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
