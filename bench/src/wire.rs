//! The load generator's lean view of the gate's client protocol (PROTOCOL.md "Frame", PUSH,
//! ACK, SEND, NOTIFY, PULL): slicing frames out of a borrowed read buffer, reading the few fields
//! it needs out of protobuf bodies by skipping the rest ([`push_msg_id`], [`push_view`],
//! [`send_resp`], [`notify_latest`], [`pull_resp`]), and appending ACK frames with up to
//! [`ACK_BATCH`] ids, SEND frames from a [`SendTemplate`] and PULL requests ([`put_pull`]).
//!
//! Owns no connection state and never touches IO or allocates per message: frames and fields
//! are borrowed views into the caller's buffer, and requests are appended to the caller's output
//! buffer.

use gate::protocol::{FrameDecoder, FrameError, HEADER_LEN, MAGIC, MsgType, VERSION, cmd};

use crate::latency::{put_stamp, read_stamp};

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

/// Why a protobuf body yielded no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyParseError {
    /// A varint or a field runs past the end of the body.
    Truncated,
    /// A varint longer than 10 bytes.
    VarintOverflow,
    /// Wire type 3, 4, 6 or 7 (groups or undefined), or field number 0.
    BadField { tag: u64 },
    /// `msg_id` is absent or zero (the gate never pushes id 0).
    NoMsgId,
}

impl std::fmt::Display for BodyParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated => f.write_str("body truncated"),
            Self::VarintOverflow => f.write_str("body has a varint over 10 bytes"),
            Self::BadField { tag } => write!(f, "body has an invalid field tag {tag}"),
            Self::NoMsgId => f.write_str("PUSH without msg_id"),
        }
    }
}

impl std::error::Error for BodyParseError {}

/// Reads a varint at `*at`, advancing it. Always inlined: a call per field was a tenth of the
/// load tool's PUSH parsing.
#[inline(always)]
fn varint(buf: &[u8], at: &mut usize) -> Result<u64, BodyParseError> {
    // One byte: most tags, lengths and small values.
    if let Some(&byte) = buf.get(*at)
        && byte < 0x80
    {
        *at += 1;
        return Ok(u64::from(byte));
    }
    let mut value = 0u64;
    for shift in 0..10 {
        let Some(&byte) = buf.get(*at) else {
            return Err(BodyParseError::Truncated);
        };
        *at += 1;
        value |= u64::from(byte & 0x7F) << (7 * shift);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(BodyParseError::VarintOverflow)
}

/// One protobuf field's value, borrowed from the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    /// Length-delimited: bytes, strings, embedded messages, packed repeated fields.
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// `n` bytes at `*at`, advancing it.
fn take<'a>(body: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], BodyParseError> {
    let end = at
        .checked_add(n)
        .filter(|&end| end <= body.len())
        .ok_or(BodyParseError::Truncated)?;
    let bytes = &body[*at..end];
    *at = end;
    Ok(bytes)
}

/// The field at `*at` (its number and value), advancing `*at` past it; `Ok(None)` at the end of
/// the body. Groups (wire types 3 and 4, unused by proto3) and field number 0 are refused.
pub fn next_field<'a>(
    body: &'a [u8],
    at: &mut usize,
) -> Result<Option<(u64, FieldValue<'a>)>, BodyParseError> {
    if *at >= body.len() {
        return Ok(None);
    }
    let tag = varint(body, at)?;
    let value = match (tag >> 3, tag & 7) {
        (0, _) => return Err(BodyParseError::BadField { tag }),
        (_, 0) => FieldValue::Varint(varint(body, at)?),
        (_, 1) => {
            let bytes: [u8; 8] = take(body, at, 8)?
                .try_into()
                .map_err(|_| BodyParseError::Truncated)?;
            FieldValue::Fixed64(u64::from_le_bytes(bytes))
        }
        (_, 2) => {
            let len = usize::try_from(varint(body, at)?).unwrap_or(usize::MAX);
            FieldValue::Bytes(take(body, at, len)?)
        }
        (_, 5) => {
            let bytes: [u8; 4] = take(body, at, 4)?
                .try_into()
                .map_err(|_| BodyParseError::Truncated)?;
            FieldValue::Fixed32(u32::from_le_bytes(bytes))
        }
        _ => return Err(BodyParseError::BadField { tag }),
    };
    Ok(Some((tag >> 3, value)))
}

/// `PushMsg.msg_id` (field 1, varint) of a PUSH body: the fields before it are skipped by wire
/// type, nothing after it is read (prost writes field 1 first, so this is one varint).
pub fn push_msg_id(body: &[u8]) -> Result<u64, BodyParseError> {
    let mut at = 0;
    while let Some((number, value)) = next_field(body, &mut at)? {
        if let (1, FieldValue::Varint(id)) = (number, value) {
            return if id == 0 {
                Err(BodyParseError::NoMsgId)
            } else {
                Ok(id)
            };
        }
    }
    Err(BodyParseError::NoMsgId)
}

/// What the load generator reads of a `PushMsg` when it measures latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushView {
    pub msg_id: u64,
    /// The sender's uid (0 when absent).
    pub from: u64,
    /// The send timestamp in the first 8 bytes of `body`, when the body is that long.
    pub stamp: Option<u64>,
}

/// `msg_id` (field 1), `from` (4) and the body's timestamp (7) of a `PushMsg`; stops once it
/// has the id and the body (prost writes them in field order, so the fields after `body` —
/// `server_time_ms`, `client_msg_id` — are not read).
pub fn push_view(body: &[u8]) -> Result<PushView, BodyParseError> {
    if let Some(view) = push_view_in_field_order(body) {
        return Ok(view);
    }
    let mut view = PushView {
        msg_id: 0,
        from: 0,
        stamp: None,
    };
    let mut seen_body = false;
    let mut at = 0;
    while let Some((number, value)) = next_field(body, &mut at)? {
        match (number, value) {
            (1, FieldValue::Varint(id)) => view.msg_id = id,
            (4, FieldValue::Varint(from)) => view.from = from,
            (7, FieldValue::Bytes(bytes)) => {
                view.stamp = read_stamp(bytes);
                seen_body = true;
            }
            _ => {}
        }
        if seen_body && view.msg_id != 0 {
            break;
        }
    }
    if view.msg_id == 0 {
        return Err(BodyParseError::NoMsgId);
    }
    Ok(view)
}

/// [`push_view`]'s fast path, for the layout prost writes (fields in number order, one-byte
/// tags, zero fields left out): reads fields 1 and 4, skips 2, 3, 5 and 6, and stops at the
/// body (field 7). One test per field in a fixed order (a `match` on each tag in a loop was an
/// indirect jump per field, about a third of this function's time). The load tool reads every
/// PUSH, so this is on its hottest path. `None` for anything else (the general path then
/// decides).
#[inline]
fn push_view_in_field_order(body: &[u8]) -> Option<PushView> {
    if body.first() != Some(&0x08) {
        return None;
    }
    let mut at = 1;
    let msg_id = varint(body, &mut at).ok()?;
    let mut from = 0;
    if body.get(at) == Some(&0x10) {
        skip_varint(body, &mut at)?; // conv_type
    }
    if body.get(at) == Some(&0x18) {
        skip_varint(body, &mut at)?; // conv_id
    }
    if body.get(at) == Some(&0x20) {
        at += 1;
        from = varint(body, &mut at).ok()?;
    }
    if body.get(at) == Some(&0x28) {
        skip_varint(body, &mut at)?; // to
    }
    if body.get(at) == Some(&0x30) {
        skip_varint(body, &mut at)?; // content_type
    }
    if body.get(at) != Some(&0x3A) || msg_id == 0 {
        return None;
    }
    at += 1;
    let len = usize::try_from(varint(body, &mut at).ok()?).ok()?;
    let bytes = body.get(at..at.checked_add(len)?)?;
    Some(PushView {
        msg_id,
        from,
        stamp: read_stamp(bytes),
    })
}

/// Steps over the one-byte tag at `*at` and the varint after it.
#[inline]
fn skip_varint(body: &[u8], at: &mut usize) -> Option<()> {
    let value = body.get(*at + 1..)?;
    *at += 2 + value.iter().position(|&b| b < 0x80)?;
    Some(())
}

/// `SendResp.code` (field 1) and `msg_id` (field 2); the message text is skipped.
pub fn send_resp(body: &[u8]) -> Result<(u32, u64), BodyParseError> {
    let (mut code, mut msg_id) = (0u64, 0u64);
    let mut at = 0;
    while let Some((number, value)) = next_field(body, &mut at)? {
        match (number, value) {
            (1, FieldValue::Varint(v)) => code = v,
            (2, FieldValue::Varint(v)) => msg_id = v,
            _ => {}
        }
    }
    // An enum on the wire is a u32; a larger value is not one the gate sends: keep it visible.
    Ok((u32::try_from(code).unwrap_or(u32::MAX), msg_id))
}

/// The highest `latest_msg_id` a `Notify` body announces for conversation
/// (`conv_type`, `conv_id`), if any of its updates is about it.
pub fn notify_latest(
    body: &[u8],
    conv_type: u32,
    conv_id: u64,
) -> Result<Option<u64>, BodyParseError> {
    let mut latest = None;
    let mut at = 0;
    while let Some((number, value)) = next_field(body, &mut at)? {
        let (1, FieldValue::Bytes(update)) = (number, value) else {
            continue;
        };
        let (mut ty, mut id, mut msg) = (0u64, 0u64, 0u64);
        let mut inner = 0;
        while let Some((number, value)) = next_field(update, &mut inner)? {
            match (number, value) {
                (1, FieldValue::Varint(v)) => ty = v,
                (2, FieldValue::Varint(v)) => id = v,
                (3, FieldValue::Varint(v)) => msg = v,
                _ => {}
            }
        }
        if ty == u64::from(conv_type) && id == conv_id {
            latest = Some(latest.map_or(msg, |l: u64| l.max(msg)));
        }
    }
    Ok(latest)
}

/// What a `PullResp` says besides its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullSummary {
    pub code: u32,
    pub has_more: bool,
    pub msgs: u64,
}

/// Walks a `PullResp` body: every message in `msgs` (field 2) goes to `each` as a
/// [`PushView`], in order; returns `code` and `has_more`.
pub fn pull_resp(
    body: &[u8],
    mut each: impl FnMut(PushView),
) -> Result<PullSummary, BodyParseError> {
    let mut summary = PullSummary::default();
    let mut at = 0;
    while let Some((number, value)) = next_field(body, &mut at)? {
        match (number, value) {
            (1, FieldValue::Varint(v)) => summary.code = u32::try_from(v).unwrap_or(u32::MAX),
            (2, FieldValue::Bytes(msg)) => {
                each(push_view(msg)?);
                summary.msgs += 1;
            }
            (3, FieldValue::Varint(v)) => summary.has_more = v != 0,
            _ => {}
        }
    }
    Ok(summary)
}

/// The first occurrence of varint field `field` in a protobuf body (`Ok(None)`: absent, i.e.
/// zero in proto3), skipping every other field by wire type, never allocating. How the load
/// generator reads `LoginResp.code`, `heartbeat_secs`, `max_frame` and `Kick.reason` without
/// decoding their strings. Same errors as [`push_msg_id`] (`NoMsgId` is never returned).
pub fn varint_field(body: &[u8], field: u64) -> Result<Option<u64>, BodyParseError> {
    let mut at = 0;
    while at < body.len() {
        let tag = varint(body, &mut at)?;
        let skip = match (tag >> 3, tag & 7) {
            (0, _) => return Err(BodyParseError::BadField { tag }),
            (f, 0) if f == field => return varint(body, &mut at).map(Some),
            (_, 0) => {
                varint(body, &mut at)?;
                0
            }
            (_, 1) => 8,
            (_, 2) => usize::try_from(varint(body, &mut at)?).unwrap_or(usize::MAX),
            (_, 5) => 4,
            _ => return Err(BodyParseError::BadField { tag }),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= body.len())
            .ok_or(BodyParseError::Truncated)?;
    }
    Ok(None)
}

fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; 0 takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes `v` as a varint at the start of `out` (at least 10 bytes); returns its length.
#[inline]
fn write_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut n = 0;
    while v >= 0x80 {
        out[n] = (v as u8) | 0x80; // low 7 bits, truncation intended
        v >>= 7;
        n += 1;
    }
    out[n] = v as u8; // < 0x80
    n + 1
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

/// A SEND with everything but `client_msg_id` and the body's timestamp encoded once, appended
/// per message without allocating (`SendReq { client_msg_id, conv_type, to, content_type = 1,
/// body }`, the body's first 8 bytes overwritten with the send timestamp).
#[derive(Debug, Clone)]
pub struct SendTemplate {
    /// Fields 2..=5 as prost encodes them; `body` (field 5) is last.
    rest: Vec<u8>,
    payload_len: usize,
}

impl SendTemplate {
    /// `conv_type` 1 (single chat: `to` is the peer's uid) or 2 (group: `to` is the group id).
    pub fn new(conv_type: u32, to: u64, payload: &[u8]) -> Self {
        use prost::Message;
        let req = gate::protocol::pb::SendReq {
            client_msg_id: 0, // omitted by proto3; written first by `put`
            conv_type,
            to,
            content_type: 1,
            body: bytes::Bytes::copy_from_slice(payload),
        };
        Self {
            rest: req.encode_to_vec(),
            payload_len: payload.len(),
        }
    }

    /// Appends one SEND request frame (`log_id` = `seq`) whose body starts with `stamp_ns`
    /// (when the payload holds 8 bytes).
    pub fn put(&self, out: &mut Vec<u8>, seq: u32, client_msg_id: u64, stamp_ns: u64) {
        let body = 1 + varint_len(client_msg_id) + self.rest.len();
        out.reserve(HEADER_LEN + body);
        // The payload is bounded by the caller (far below 4 GiB).
        put_header(out, cmd::SEND, MsgType::Request, seq, seq, body as u32);
        out.push(0x08);
        put_varint(out, client_msg_id);
        out.extend_from_slice(&self.rest);
        let payload_at = out.len() - self.payload_len;
        put_stamp(&mut out[payload_at..], stamp_ns);
    }
}

/// Appends a PULL request (`PullReq { conv_type, conv_id, after_msg_id, limit }`, `log_id` =
/// `seq`), encoded as prost would (zero fields omitted).
pub fn put_pull(out: &mut Vec<u8>, seq: u32, conv_type: u32, conv_id: u64, after: u64, limit: u32) {
    let field = |v: u64| if v == 0 { 0 } else { 1 + varint_len(v) };
    let body = field(conv_type.into()) + field(conv_id) + field(after) + field(limit.into());
    put_header(out, cmd::PULL, MsgType::Request, seq, seq, body as u32); // at most 44 bytes
    for (tag, v) in [
        (0x08, u64::from(conv_type)),
        (0x10, conv_id),
        (0x18, after),
        (0x20, u64::from(limit)),
    ] {
        if v != 0 {
            out.push(tag);
            put_varint(out, v);
        }
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
        // Encoded on the stack and appended once (a push per byte checked capacity each time).
        let mut encoded = [0u8; 3 + 10 * ACK_BATCH];
        encoded[0] = 0x0A;
        let mut at = 1 + write_varint(&mut encoded[1..], packed as u64);
        for &id in ids {
            at += write_varint(&mut encoded[at..], id);
        }
        out.extend_from_slice(&encoded[..at]);
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
                Err(BodyParseError::NoMsgId)
            } else {
                Err(BodyParseError::Truncated)
            };
            assert_eq!(push_msg_id(&bytes[..cut]), want, "cut at {cut}");
        }
        assert_eq!(push_msg_id(&[]), Err(BodyParseError::NoMsgId));
        let no_id = pb::PushMsg {
            msg_id: 0,
            ..push(0, 8)
        };
        assert_eq!(
            push_msg_id(&no_id.encode_to_vec()),
            Err(BodyParseError::NoMsgId)
        );
        assert_eq!(
            push_msg_id(&[(3 << 3) | 3]),
            Err(BodyParseError::BadField { tag: (3 << 3) | 3 })
        );
        assert_eq!(
            push_msg_id(&[(7 << 3) | 2, 10, 1]),
            Err(BodyParseError::Truncated)
        );
        assert_eq!(push_msg_id(&[0x08; 12]), Ok(8)); // tag, then varint 8
        assert_eq!(
            push_msg_id(&[
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1
            ]),
            Err(BodyParseError::VarintOverflow)
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
            Err(BodyParseError::Truncated)
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
    fn send_template_matches_prost_with_the_stamp_at_the_front_of_the_body() {
        for (conv_type, to) in [(2u32, 9_000_001u64), (1, 1_000_001)] {
            let template = SendTemplate::new(conv_type, to, &[b'p'; 64]);
            let mut out = Vec::new();
            for (seq, cmid, stamp) in [
                (1u32, 1u64, 0u64),
                (2, 300, 12_345),
                (u32::MAX, u64::MAX, u64::MAX),
            ] {
                out.clear();
                template.put(&mut out, seq, cmid, stamp);
                let mut body = vec![b'p'; 64];
                body[..8].copy_from_slice(&stamp.to_le_bytes());
                let req = pb::SendReq {
                    client_msg_id: cmid,
                    conv_type,
                    to,
                    content_type: 1,
                    body: Bytes::from(body),
                };
                let want = encode_frame(cmd::SEND, MsgType::Request, seq, seq, &req);
                assert_eq!(out, want.to_vec(), "cmid {cmid}");
            }
        }
    }

    #[test]
    fn push_view_reads_fields_in_any_order_and_skips_unknown_ones() {
        let stamp = 42u64.to_le_bytes();
        // Body (7) first, then an unknown fixed32 field 20, from (4) and msg_id (1): the fast
        // path gives up, the general one reads it.
        let mut body = vec![0x3A, 8];
        body.extend_from_slice(&stamp);
        body.extend_from_slice(&[0xA5, 0x01, 1, 2, 3, 4]);
        body.extend_from_slice(&[0x20, 7, 0x08, 0x96, 0x01]);
        assert_eq!(push_view_in_field_order(&body), None);
        assert_eq!(
            push_view(&body),
            Ok(PushView {
                msg_id: 150,
                from: 7,
                stamp: Some(42)
            })
        );
        // In field order, the fast path reads the same.
        let mut ordered = vec![
            0x08, 0x96, 0x01, 0x10, 2, 0x18, 0xE8, 0x07, 0x20, 7, 0x3A, 8,
        ];
        ordered.extend_from_slice(&stamp);
        assert_eq!(push_view_in_field_order(&ordered), push_view(&body).ok());
    }

    #[test]
    fn push_view_reads_id_sender_and_the_body_stamp() {
        let mut msg = push(1 << 40, 64);
        let mut body = vec![b'x'; 64];
        body[..8].copy_from_slice(&987_654_321u64.to_le_bytes());
        msg.body = Bytes::from(body);
        let bytes = msg.encode_to_vec();
        assert_eq!(
            push_view(&bytes),
            Ok(PushView {
                msg_id: 1 << 40,
                from: 1_000_000,
                stamp: Some(987_654_321)
            })
        );
        // A body shorter than a stamp: no stamp, the id is still read.
        let short = push(5, 7).encode_to_vec();
        assert_eq!(
            push_view(&short).map(|v| (v.msg_id, v.stamp)),
            Ok((5, None))
        );
        // Cut anywhere before the end of the body: truncated, or (cut between fields) a valid
        // shorter message without a stamp; never a wrong value.
        let body_end = bytes.len() - 18; // server_time_ms and client_msg_id follow the body
        for cut in 1..body_end {
            match push_view(&bytes[..cut]) {
                Ok(view) => assert_eq!((view.msg_id, view.stamp), (1 << 40, None), "cut {cut}"),
                Err(e) => assert!(
                    matches!(e, BodyParseError::Truncated | BodyParseError::NoMsgId),
                    "cut {cut}: {e}"
                ),
            }
        }
        assert_eq!(
            push_view(&bytes[..body_end]).map(|v| v.stamp),
            Ok(Some(987_654_321))
        );
        assert_eq!(push_view(&[]), Err(BodyParseError::NoMsgId));
    }

    #[test]
    fn push_view_agrees_with_prost_when_any_optional_field_is_zero() {
        // prost leaves zero fields out: every subset of the skipped and read fields absent.
        for absent in 0u32..32 {
            let mut msg = push(300 + u64::from(absent), 16);
            let mut body = vec![b'y'; 16];
            body[..8].copy_from_slice(&(42 + u64::from(absent)).to_le_bytes());
            msg.body = Bytes::from(body);
            let zero = |bit: u32| absent & (1 << bit) != 0;
            if zero(0) {
                msg.conv_type = 0;
            }
            if zero(1) {
                msg.conv_id = 0;
            }
            if zero(2) {
                msg.from = 0;
            }
            if zero(3) {
                msg.to = 0;
            }
            if zero(4) {
                msg.content_type = 0;
            }
            let bytes = msg.encode_to_vec();
            assert_eq!(
                push_view(&bytes),
                Ok(PushView {
                    msg_id: msg.msg_id,
                    from: msg.from,
                    stamp: Some(42 + u64::from(absent)),
                }),
                "absent fields {absent:#07b}"
            );
        }
    }

    #[test]
    fn send_resp_code_and_id_are_read_without_decoding_the_message() {
        let resp = pb::SendResp {
            code: 4,
            msg_id: 77,
            server_time_ms: 1,
            message: "rate limited".into(),
        };
        assert_eq!(send_resp(&resp.encode_to_vec()), Ok((4, 77)));
        assert_eq!(send_resp(&[]), Ok((0, 0)));
        assert_eq!(send_resp(&[0x22, 5, b'a']), Err(BodyParseError::Truncated));
    }

    #[test]
    fn notify_latest_finds_the_conversation_among_updates() {
        let update = |conv_type, conv_id, latest_msg_id| pb::ConvUpdate {
            conv_type,
            conv_id,
            latest_msg_id,
            unread: 3,
        };
        let notify = pb::Notify {
            updates: vec![
                update(2, 8, 1000),
                update(2, 9, 500),
                update(1, 9, 9000),
                update(2, 9, 700),
            ],
        };
        let bytes = notify.encode_to_vec();
        assert_eq!(notify_latest(&bytes, 2, 9), Ok(Some(700)));
        assert_eq!(notify_latest(&bytes, 2, 10), Ok(None));
        assert_eq!(notify_latest(&[], 2, 9), Ok(None));
        assert!(notify_latest(&bytes[..bytes.len() - 1], 2, 9).is_err());
    }

    #[test]
    fn pull_resp_walks_every_message_and_reads_has_more() {
        let resp = pb::PullResp {
            code: 0,
            msgs: (1..=3).map(|i| push(i * 10, 16)).collect(),
            has_more: true,
        };
        let mut seen = Vec::new();
        let summary = pull_resp(&resp.encode_to_vec(), |v| seen.push(v.msg_id)).expect("valid");
        assert_eq!(seen, [10, 20, 30]);
        assert_eq!(
            summary,
            PullSummary {
                code: 0,
                has_more: true,
                msgs: 3
            }
        );
        let refused = pb::PullResp {
            code: 4,
            ..Default::default()
        };
        assert_eq!(
            pull_resp(&refused.encode_to_vec(), |_| panic!("no messages")),
            Ok(PullSummary {
                code: 4,
                has_more: false,
                msgs: 0
            })
        );
    }

    #[test]
    fn pull_requests_match_prost() {
        for (after, limit) in [(0u64, 200u32), (1 << 50, 0), (5, 1)] {
            let mut out = Vec::new();
            put_pull(&mut out, 9, 2, 9_000_001, after, limit);
            let req = pb::PullReq {
                conv_type: 2,
                conv_id: 9_000_001,
                after_msg_id: after,
                limit,
                before_msg_id: 0,
            };
            assert_eq!(
                out,
                encode_frame(cmd::PULL, MsgType::Request, 9, 9, &req).to_vec()
            );
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
