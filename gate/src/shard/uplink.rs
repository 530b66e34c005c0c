//! Client requests on the message path, turned into link requests for the backend (the gate's
//! half of the boundary, uplink direction). Pure: decodes a frame, checks what the gate itself
//! checks (body decodes, a SEND body fits a PUSH), and names the request or the refusal.

use bytes::Bytes;
use prost::Message;
use router::backend::Request;
use router::link;

use crate::protocol::pb::{
    BizReq, BizResp, LoginResp, PullReq, PullResp, ReadReq, Result as ResultBody, SendReq,
    SendResp, SyncResp,
};
use crate::protocol::{Code, Frame, MsgType, cmd, encode_frame};
use crate::session::error_frame;

/// Room left in a frame for what the backend's items do not count (field tags, lengths, the
/// response's own fields).
pub(crate) const FRAME_HEADROOM: u32 = 64;
/// A SEND body longer than `max_frame - SEND_HEADROOM` is refused, so its PUSH always fits.
pub(crate) const SEND_HEADROOM: u32 = 128;
/// SYNC returns at most this many conversations (PROTOCOL.md).
const MAX_SYNC_CONVS: u32 = 1000;

/// What to do with a message-path frame.
pub(crate) enum Uplink {
    Submit(Request),
    /// PUSHes the client acknowledged: the ACK frame, whose body the connection decodes into
    /// the shard's reused scratch (`Shard::ack_scratch`), so an ACK allocates nothing.
    Ack(Frame),
    /// Answer now with this frame.
    Refuse(Bytes),
}

/// Who is asking, for the link request.
pub(crate) struct Asker {
    pub uid: u64,
    pub session_id: u64,
    pub max_frame: u32,
}

pub(crate) fn translate(frame: Frame, who: &Asker) -> Uplink {
    let (log_id, seq) = (frame.log_id, frame.seq);
    let bad = |what: &str| Uplink::Refuse(refusal(frame.cmd, log_id, seq, Code::BadRequest, what));
    let max_bytes = who.max_frame.saturating_sub(FRAME_HEADROOM);
    match frame.cmd {
        cmd::SEND => {
            let Ok(req) = SendReq::decode(frame.body) else {
                return bad("SendReq does not decode");
            };
            if req.body.len() as u64 > u64::from(who.max_frame.saturating_sub(SEND_HEADROOM)) {
                let why = format!("body above max_frame - {SEND_HEADROOM} bytes");
                return Uplink::Refuse(refusal(cmd::SEND, log_id, seq, Code::TooLarge, &why));
            }
            Uplink::Submit(Request::Send(link::Send {
                from: who.uid,
                client_msg_id: req.client_msg_id,
                conv_type: req.conv_type,
                to: req.to,
                content_type: req.content_type,
                body: req.body,
                session_id: who.session_id,
                log_id,
            }))
        }
        cmd::PULL => {
            let Ok(req) = PullReq::decode(frame.body) else {
                return bad("PullReq does not decode");
            };
            Uplink::Submit(Request::Pull(link::Pull {
                uid: who.uid,
                conv_type: req.conv_type,
                conv_id: req.conv_id,
                after_msg_id: req.after_msg_id,
                before_msg_id: req.before_msg_id,
                limit: req.limit,
                max_bytes,
                log_id,
            }))
        }
        cmd::READ => {
            let Ok(req) = ReadReq::decode(frame.body) else {
                return bad("ReadReq does not decode");
            };
            Uplink::Submit(Request::Read(link::Read {
                uid: who.uid,
                conv_type: req.conv_type,
                conv_id: req.conv_id,
                read_up_to: req.read_up_to,
                session_id: who.session_id,
                log_id,
            }))
        }
        // SYNC's request body is empty; whatever is there is an unknown field.
        cmd::SYNC => Uplink::Submit(Request::Sync(link::Sync {
            uid: who.uid,
            max_convs: MAX_SYNC_CONVS,
            max_bytes,
            log_id,
        })),
        cmd::BIZ => {
            let Ok(req) = BizReq::decode(frame.body) else {
                return bad("BizReq does not decode");
            };
            Uplink::Submit(Request::Biz(link::Biz {
                uid: who.uid,
                service: req.service,
                method: req.method,
                payload: req.payload,
                log_id,
            }))
        }
        cmd::ACK => Uplink::Ack(frame),
        _ => Uplink::Refuse(error_frame(&frame, Code::BadRequest, "unknown command")),
    }
}

/// A refusal of a message-path request in its own response type (PROTOCOL.md "Errors").
pub(crate) fn refusal(command: u8, log_id: u32, seq: u32, code: Code, message: &str) -> Bytes {
    let (rsp, code, message) = (MsgType::Response, code.wire(), message.to_string());
    match command {
        cmd::LOGIN => encode_frame(
            command,
            rsp,
            log_id,
            seq,
            &LoginResp {
                code,
                message,
                ..Default::default()
            },
        ),
        cmd::SEND => encode_frame(
            command,
            rsp,
            log_id,
            seq,
            &SendResp {
                code,
                message,
                ..Default::default()
            },
        ),
        cmd::PULL => encode_frame(
            command,
            rsp,
            log_id,
            seq,
            &PullResp {
                code,
                ..Default::default()
            },
        ),
        cmd::READ => encode_frame(command, rsp, log_id, seq, &ResultBody { code, message }),
        cmd::SYNC => encode_frame(
            command,
            rsp,
            log_id,
            seq,
            &SyncResp {
                code,
                ..Default::default()
            },
        ),
        cmd::BIZ => encode_frame(
            command,
            rsp,
            log_id,
            seq,
            &BizResp {
                code,
                message,
                ..Default::default()
            },
        ),
        _ => {
            let body = crate::protocol::pb::Error { code, message };
            encode_frame(cmd::ERROR, rsp, log_id, seq, &body)
        }
    }
}
