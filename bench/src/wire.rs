//! The load generator's lean view of the gate's client protocol (PROTOCOL.md "Frame", PUSH,
//! ACK): slicing frames out of a borrowed read buffer, reading a PUSH's `msg_id` without decoding
//! the whole `PushMsg`, and appending ACK frames with up to [`ACK_BATCH`] ids.
//!
//! Owns no connection state and never touches IO or allocates per message: frames are borrowed
//! views into the caller's buffer, and ACKs are appended to the caller's output buffer.

use gate::protocol::{FrameDecoder, FrameError, HEADER_LEN, MAGIC, MsgType, VERSION, cmd};

/// Most msg_ids in one ACK frame.
pub const ACK_BATCH: usize = 64;

/// One complete frame borrowed from the read buffer.
pub type RawFrame<'a> = gate::protocol::FrameRef<'a>;

/// The frame at the front of `buf` and its total length, `Ok(None)` while it is incomplete.
/// The gate's own validation (`FrameDecoder::peek`): refusals decided from the header alone.
pub fn split_frame(
    buf: &[u8],
    max_frame: u32,
) -> Result<Option<(RawFrame<'_>, usize)>, FrameError> {
    FrameDecoder::new(max_frame).peek(buf)
}

/// Why a PUSH body yielded no msg_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushParseError {
    /// A varint or a field runs past the end of the body.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintOverflow,
    /// Wire type 3, 4, 6 or 7 (groups or undefined), or field number 0.
    BadField { tag: u64 },
    /// `msg_id` is absent or zero (the gate never pushes id 0).
    NoMsgId,
}

impl std::fmt::Display for PushParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("PUSH body truncated"),
            Self::VarintOverflow => f.write_str("PUSH body has a varint over 10 bytes"),
            Self::BadField { tag } => write!(f, "PUSH body has an invalid field tag {tag}"),
            Self::NoMsgId => f.write_str("PUSH without msg_id"),
        }
    }
}

impl std::error::Error for PushParseError {}

/// Reads a varint at `*at`, advancing it.
fn varint(buf: &[u8], at: &mut usize) -> Result<u64, PushParseError> {
    let mut value = 0u64;
    for shift in 0..10 {
        let Some(&byte) = buf.get(*at) else {
            return Err(PushParseError::Truncated);
        };
        *at += 1;
        value |= u64::from(byte & 0x7F) << (7 * shift);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(PushParseError::VarintOverflow)
}

/// `PushMsg.msg_id` (field 1, varint) of a PUSH body: the fields before it are skipped by wire
/// type, nothing after it is read (prost writes field 1 first, so this is one varint).
pub fn push_msg_id(body: &[u8]) -> Result<u64, PushParseError> {
    let mut at = 0;
    while at < body.len() {
        let tag = varint(body, &mut at)?;
        let skip = match (tag >> 3, tag & 7) {
            (0, _) => return Err(PushParseError::BadField { tag }),
            (1, 0) => {
                return match varint(body, &mut at)? {
                    0 => Err(PushParseError::NoMsgId),
                    id => Ok(id),
                };
            }
            (_, 0) => {
                varint(body, &mut at)?;
                0
            }
            (_, 1) => 8,
            (_, 2) => usize::try_from(varint(body, &mut at)?).unwrap_or(usize::MAX),
            (_, 5) => 4,
            _ => return Err(PushParseError::BadField { tag }),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= body.len())
            .ok_or(PushParseError::Truncated)?;
    }
    Err(PushParseError::NoMsgId)
}

/// The first occurrence of varint field `field` in a protobuf body (`Ok(None)`: absent, i.e.
/// zero in proto3), skipping every other field by wire type, never allocating. How the load
/// generator reads `LoginResp.code`, `heartbeat_secs`, `max_frame` and `Kick.reason` without
/// decoding their strings. Same errors as [`push_msg_id`] (`NoMsgId` is never returned).
pub fn varint_field(body: &[u8], field: u64) -> Result<Option<u64>, PushParseError> {
    let mut at = 0;
    while at < body.len() {
        let tag = varint(body, &mut at)?;
        let skip = match (tag >> 3, tag & 7) {
            (0, _) => return Err(PushParseError::BadField { tag }),
            (f, 0) if f == field => return varint(body, &mut at).map(Some),
            (_, 0) => {
                varint(body, &mut at)?;
                0
            }
            (_, 1) => 8,
            (_, 2) => usize::try_from(varint(body, &mut at)?).unwrap_or(usize::MAX),
            (_, 5) => 4,
            _ => return Err(PushParseError::BadField { tag }),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= body.len())
            .ok_or(PushParseError::Truncated)?;
    }
    Ok(None)
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80); // low 7 bits, truncation intended
        v >>= 7;
    }
    out.push(v as u8); // < 0x80
}

/// Appends a frame header (big-endian fields, PROTOCOL.md "Frame").
pub fn put_header(out: &mut Vec<u8>, cmd: u8, msg_type: MsgType, log_id: u32, seq: u32, len: u32) {
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.push(cmd);
    out.push(msg_type as u8);
    out.extend_from_slice(&log_id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
}

/// A group SEND with everything but `client_msg_id` encoded once, appended per message without
/// allocating (`SendReq { client_msg_id, conv_type = 2, to = group, content_type = 1, body }`).
#[derive(Debug, Clone)]
pub struct SendTemplate {
    /// Fields 2..=5 as prost encodes them.
    rest: Vec<u8>,
}

impl SendTemplate {
    pub fn new(group_id: u64, payload: &[u8]) -> Self {
        use prost::Message;
        let req = gate::protocol::pb::SendReq {
            client_msg_id: 0, // omitted by proto3; written first by `put`
            conv_type: 2,
            to: group_id,
            content_type: 1,
            body: bytes::Bytes::copy_from_slice(payload),
        };
        Self {
            rest: req.encode_to_vec(),
        }
    }

    /// Appends one SEND request frame (`log_id` = `seq`).
    pub fn put(&self, out: &mut Vec<u8>, seq: u32, client_msg_id: u64) {
        let body = 1 + varint_len(client_msg_id) + self.rest.len();
        out.reserve(HEADER_LEN + body);
        // The payload is bounded by the caller (far below 4 GiB).
        put_header(out, cmd::SEND, MsgType::Request, seq, seq, body as u32);
        out.push(0x08);
        put_varint(out, client_msg_id);
        out.extend_from_slice(&self.rest);
    }
}

/// msg_ids waiting to be acknowledged; at most [`ACK_BATCH`], on the stack of the connection.
#[derive(Debug, Clone)]
pub struct AckBatch {
    ids: [u64; ACK_BATCH],
    len: usize,
}

impl Default for AckBatch {
    fn default() -> Self {
        Self {
            ids: [0; ACK_BATCH],
            len: 0,
        }
    }
}

impl AckBatch {
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds one id; when that fills the batch, appends the ACK frame to `out` and empties it.
    pub fn push(&mut self, id: u64, out: &mut Vec<u8>) {
        self.ids[self.len] = id;
        self.len += 1;
        if self.len == ACK_BATCH {
            self.flush(out);
        }
    }

    /// Appends one ACK notify (`Ack { msg_ids }`, packed) with every waiting id, if any.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.len == 0 {
            return;
        }
        let ids = &self.ids[..self.len];
        let packed: usize = ids.iter().map(|&id| varint_len(id)).sum();
        // tag 0x0A (field 1, length-delimited) + length varint + packed varints; at most
        // 1 + 2 + 640 bytes.
        let body = 1 + varint_len(packed as u64) + packed;
        out.reserve(HEADER_LEN + body);
        put_header(out, cmd::ACK, MsgType::Notify, 0, 0, body as u32);
        out.push(0x0A);
        put_varint(out, packed as u64);
        for &id in ids {
            put_varint(out, id);
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use gate::protocol::{encode_frame, pb};
    use prost::Message;

    use super::*;

    fn push(msg_id: u64, body_len: usize) -> pb::PushMsg {
        pb::PushMsg {
            msg_id,
            conv_type: 2,
            conv_id: 9_000_001,
            from: 1_000_000,
            to: 9_000_001,
            content_type: 1,
            body: Bytes::from(vec![b'x'; body_len]),
            server_time_ms: 1_764_201_600_123,
            client_msg_id: u64::MAX - 3,
        }
    }

    #[test]
    fn push_msg_id_is_read_from_prost_encoded_bodies() {
        for msg_id in [1, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            for body_len in [0, 1, 64, 300, 65_000] {
                let bytes = push(msg_id, body_len).encode_to_vec();
                assert_eq!(
                    push_msg_id(&bytes),
                    Ok(msg_id),
                    "id {msg_id}, body {body_len}"
                );
            }
        }
        // Only msg_id set; everything else at its default (omitted by proto3).
        let only = pb::PushMsg {
            msg_id: 77,
            ..Default::default()
        };
        assert_eq!(push_msg_id(&only.encode_to_vec()), Ok(77));
    }

    #[test]
    fn push_msg_id_skips_fields_written_before_it() {
        // The same PushMsg written in reverse field order (legal protobuf), with unknown fields
        // of every wire type in front.
        let full = push(4242, 64);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&[(10 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8]); // fixed64
        bytes.extend_from_slice(&[(11 << 3) | 5, 1, 2, 3, 4]); // fixed32
        bytes.extend_from_slice(&[(12 << 3) | 2, 3, b'a', b'b', b'c']); // bytes
        bytes.extend_from_slice(&[(13 << 3), 0xFF, 0xFF, 0x03]); // varint
        let rest = pb::PushMsg {
            msg_id: 0,
            ..full.clone()
        };
        // prost writes fields in number order; field 1 is omitted because it is zero.
        bytes.extend_from_slice(&rest.encode_to_vec());
        bytes.push(0x08);
        put_varint(&mut bytes, 4242);
        assert_eq!(push_msg_id(&bytes), Ok(4242));
        // And prost agrees it is the same message.
        assert_eq!(pb::PushMsg::decode(&bytes[..]).expect("valid"), full);
    }

    #[test]
    fn push_msg_id_refuses_truncated_and_bad_bodies() {
        let bytes = push(1 << 40, 64).encode_to_vec();
        // Cutting inside the msg_id varint (bytes 1..=6) is truncation.
        for cut in 0..7 {
            let want = if cut == 0 {
                Err(PushParseError::NoMsgId)
            } else {
                Err(PushParseError::Truncated)
            };
            assert_eq!(push_msg_id(&bytes[..cut]), want, "cut at {cut}");
        }
        assert_eq!(push_msg_id(&[]), Err(PushParseError::NoMsgId));
        let no_id = pb::PushMsg {
            msg_id: 0,
            ..push(0, 8)
        };
        assert_eq!(
            push_msg_id(&no_id.encode_to_vec()),
            Err(PushParseError::NoMsgId)
        );
        assert_eq!(
            push_msg_id(&[(3 << 3) | 3]),
            Err(PushParseError::BadField { tag: (3 << 3) | 3 })
        );
        assert_eq!(
            push_msg_id(&[(7 << 3) | 2, 10, 1]),
            Err(PushParseError::Truncated)
        );
        assert_eq!(push_msg_id(&[0x08; 12]), Ok(8)); // tag, then varint 8
        assert_eq!(
            push_msg_id(&[
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1
            ]),
            Err(PushParseError::VarintOverflow)
        );
    }

    #[test]
    fn varint_fields_are_read_past_strings_without_decoding() {
        let resp = pb::LoginResp {
            code: 2,
            message: "bad token signature".into(),
            heartbeat_secs: 30,
            server_time_ms: 1_764_201_600_123,
            session_id: 1 << 40,
            gate_id: "gate-under-test".into(),
            max_frame: 65_536,
        };
        let body = resp.encode_to_vec();
        assert_eq!(varint_field(&body, 1), Ok(Some(2)));
        assert_eq!(varint_field(&body, 3), Ok(Some(30)));
        assert_eq!(varint_field(&body, 5), Ok(Some(1 << 40)));
        assert_eq!(varint_field(&body, 7), Ok(Some(65_536)));
        assert_eq!(varint_field(&body, 2), Ok(None), "a string is not a varint");
        let ok = pb::LoginResp {
            code: 0,
            ..resp.clone()
        };
        assert_eq!(
            varint_field(&ok.encode_to_vec(), 1),
            Ok(None),
            "zero is omitted"
        );
        assert_eq!(varint_field(&[], 1), Ok(None));
        for cut in 1..body.len() {
            // Cut anywhere: an error or a field found before the cut, never a panic.
            let _ = varint_field(&body[..cut], 7);
        }
        assert_eq!(
            varint_field(&body[..body.len() - 1], 7),
            Err(PushParseError::Truncated)
        );
    }

    #[test]
    fn ack_frames_match_prost_and_fill_at_the_batch_size() {
        let mut out = Vec::new();
        let mut batch = AckBatch::default();
        let ids: Vec<u64> = (0..ACK_BATCH as u64 + 3)
            .map(|i| i * 0x0123_4567_89AB + 1)
            .collect();
        for &id in &ids[..ACK_BATCH - 1] {
            batch.push(id, &mut out);
        }
        assert!(out.is_empty(), "no frame before the batch is full");
        batch.push(ids[ACK_BATCH - 1], &mut out);
        assert!(batch.is_empty());
        let first = encode_frame(
            cmd::ACK,
            MsgType::Notify,
            0,
            0,
            &pb::Ack {
                msg_ids: ids[..ACK_BATCH].to_vec(),
            },
        );
        assert_eq!(out, first.to_vec());
        for &id in &ids[ACK_BATCH..] {
            batch.push(id, &mut out);
        }
        batch.flush(&mut out);
        let second = encode_frame(
            cmd::ACK,
            MsgType::Notify,
            0,
            0,
            &pb::Ack {
                msg_ids: ids[ACK_BATCH..].to_vec(),
            },
        );
        assert_eq!(&out[first.len()..], &second[..]);
        batch.flush(&mut out);
        assert_eq!(
            out.len(),
            first.len() + second.len(),
            "empty flush adds nothing"
        );
    }

    #[test]
    fn send_template_matches_prost() {
        let template = SendTemplate::new(9_000_001, &[b'p'; 64]);
        let mut out = Vec::new();
        for (seq, cmid) in [(1u32, 1u64), (2, 300), (u32::MAX, u64::MAX)] {
            out.clear();
            template.put(&mut out, seq, cmid);
            let req = pb::SendReq {
                client_msg_id: cmid,
                conv_type: 2,
                to: 9_000_001,
                content_type: 1,
                body: Bytes::from(vec![b'p'; 64]),
            };
            let want = encode_frame(cmd::SEND, MsgType::Request, seq, seq, &req);
            assert_eq!(out, want.to_vec(), "cmid {cmid}");
        }
    }

    #[test]
    fn frames_are_split_from_a_stream_cut_at_every_offset() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&encode_frame(
            cmd::PUSH,
            MsgType::Notify,
            0,
            0,
            &push(5, 64),
        ));
        stream.extend_from_slice(&encode_frame(cmd::PING, MsgType::Request, 9, 3, &()));
        stream.extend_from_slice(&encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push(6, 0)));
        for cut in 0..=stream.len() {
            let mut carry = Vec::new();
            let mut seen = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                carry.extend_from_slice(piece);
                let mut at = 0;
                while let Some((f, n)) = split_frame(&carry[at..], 65_536).expect("valid") {
                    let id = (f.cmd == cmd::PUSH).then(|| push_msg_id(f.body).expect("id"));
                    seen.push((f.cmd, f.seq, id));
                    at += n;
                }
                carry.drain(..at);
            }
            assert!(carry.is_empty(), "cut {cut}");
            assert_eq!(
                seen,
                [
                    (cmd::PUSH, 0, Some(5)),
                    (cmd::PING, 3, None),
                    (cmd::PUSH, 0, Some(6))
                ],
                "cut {cut}"
            );
        }
    }

    #[test]
    fn bad_magic_and_oversized_frames_are_refused_from_the_header() {
        assert_eq!(split_frame(b"IMX", 100), Err(FrameError::BadMagic));
        let mut big = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push(1, 200)).to_vec();
        big.truncate(HEADER_LEN);
        assert!(matches!(
            split_frame(&big, 100),
            Err(FrameError::TooLarge { max: 100, .. })
        ));
    }
}
