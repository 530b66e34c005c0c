//! RFC 6455 framing (section 5), sans-IO: [`WsDecoder`] turns a read buffer into
//! [`WsEvent`]s and typed [`WsError`]s; [`server_header`] and [`write_frame`] build outbound
//! frames.
//!
//! The decoder owns only its role, its message limit and the fragmented message being
//! reassembled (at most `max_message` bytes). Like the frame decoder it checks before it
//! buffers: reserved bits and opcodes, masking, control-frame rules, fragmentation order, text
//! messages and the size of a message are all refused from a frame's *header*, before its
//! payload is waited for, so a peer can never make it hold more than one message.
//!
//! Zero copy: an unfragmented binary message is split off the caller's buffer and unmasked in
//! place; only fragmented messages are copied (into their reassembly buffer).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::HEADER_LEN;

/// Close codes the gate sends (RFC 6455 7.4.1, IANA registry).
pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
pub const CLOSE_UNSUPPORTED_DATA: u16 = 1003;
pub const CLOSE_TOO_LARGE: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;
/// Longest server (unmasked) frame header.
pub const SERVER_HEADER_LEN: usize = 10;
/// Largest control frame payload.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame's opcode (RFC 6455 5.2); values not listed are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl Opcode {
    pub const fn from_wire(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    const fn is_control(self) -> bool {
        self as u8 >= 0x8
    }
}

/// Which end decodes: a server requires masked frames, a client refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What one decoded frame (or the last fragment of a message) means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A whole binary message, unmasked.
    Message(BytesMut),
    /// Answer with a pong carrying the same payload.
    Ping(Bytes),
    Pong,
    /// The peer closes, with its status code if it gave one.
    Close {
        code: Option<u16>,
    },
}

/// Input that ends the WebSocket connection, with the close code to send
/// ([`WsError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("client frame is not masked")]
    Unmasked,
    #[error("server frame is masked")]
    MaskedByServer,
    #[error("reserved bits set, and no extension was negotiated")]
    ReservedBits,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("continuation frame with no message to continue")]
    UnexpectedContinuation,
    #[error("new message while a fragmented message is unfinished")]
    UnfinishedMessage,
    #[error("invalid close frame payload")]
    BadClose,
    #[error("text message: imgate frames travel in binary messages")]
    Text,
    /// `head` is the message's first [`HEADER_LEN`] bytes, unmasked, when they had arrived: the
    /// imgate frame header, so the refusal can echo its `seq`.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        len: u64,
        max: usize,
        head: Option<[u8; HEADER_LEN]>,
    },
}

impl WsError {
    /// The status code of the close frame that answers this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::Text => CLOSE_UNSUPPORTED_DATA,
            Self::TooLarge { .. } => CLOSE_TOO_LARGE,
            _ => CLOSE_PROTOCOL_ERROR,
        }
    }
}

/// A frame header as read: everything but the mask key, which the checks never need.
struct FrameHead {
    fin: bool,
    opcode: Opcode,
    masked: bool,
    /// The whole header, the mask key included.
    header_len: usize,
    payload_len: u64,
}

impl FrameHead {
    /// The mask key, once the whole header is in `buf`.
    fn mask(&self, buf: &[u8]) -> Option<[u8; 4]> {
        if !self.masked {
            return None;
        }
        buf.get(self.header_len - 4..self.header_len)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
    }
}

/// Reads the frame header at the front of `buf` up to its length; `Ok(None)` while that much
/// has not arrived. Every refusal a header alone decides is made here.
fn parse_head(buf: &[u8], role: Role) -> Result<Option<FrameHead>, WsError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let opcode = Opcode::from_wire(b0 & 0x0F).ok_or(WsError::ReservedOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(WsError::Unmasked),
        (Role::Client, true) => return Err(WsError::MaskedByServer),
        _ => {}
    }
    let (payload_len, len_end) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
            _ => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|s| <[u8; 8]>::try_from(s).ok()) {
            Some(len) => (u64::from_be_bytes(len), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if opcode.is_control() && (!fin || payload_len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(WsError::BadControlFrame);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        masked,
        header_len: len_end + if masked { 4 } else { 0 },
        payload_len,
    }))
}

/// XORs `data` with `mask` (RFC 6455 5.3), `data[0]` taking `mask[0]`. Eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let [m0, m1, m2, m3] = mask;
    let word = u64::from_ne_bytes([m0, m1, m2, m3, m0, m1, m2, m3]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so its byte i takes mask[i % 4].
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Splits a byte stream into WebSocket events (see the module doc).
///
/// `decode` returns `Ok(None)` while the next frame is incomplete (nothing consumed; a fragment
/// already taken stays in the decoder), `Ok(Some(event))` after consuming at least one frame,
/// and `Err` when the connection must be closed with [`WsError::close_code`]. After an `Err` the
/// decoder must not be used again.
#[derive(Debug)]
pub struct WsDecoder {
    role: Role,
    max_message: usize,
    /// The fragmented binary message being reassembled.
    partial: Option<BytesMut>,
}

impl WsDecoder {
    /// A decoder for `role` that refuses messages longer than `max_message` bytes.
    pub fn new(role: Role, max_message: usize) -> Self {
        Self {
            role,
            max_message,
            partial: None,
        }
    }

    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Decodes the next event from the front of `buf` (see the type's doc).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<WsEvent>, WsError> {
        loop {
            let Some(head) = parse_head(buf, self.role)? else {
                return Ok(None);
            };
            match head.opcode {
                Opcode::Continuation if self.partial.is_none() => {
                    return Err(WsError::UnexpectedContinuation);
                }
                Opcode::Text | Opcode::Binary if self.partial.is_some() => {
                    return Err(WsError::UnfinishedMessage);
                }
                Opcode::Text => return Err(WsError::Text),
                _ => {}
            }
            if !head.opcode.is_control() {
                let so_far = self.partial.as_ref().map_or(0, |p| p.len() as u64);
                let len = so_far.saturating_add(head.payload_len);
                if len > self.max_message as u64 {
                    return Err(WsError::TooLarge {
                        len,
                        max: self.max_message,
                        head: self.message_head(buf, &head),
                    });
                }
            }
            // At most max_message (data) or 125 (control) here, so it fits a usize.
            let payload_len = usize::try_from(head.payload_len).unwrap_or(usize::MAX);
            let Some(total) = head.header_len.checked_add(payload_len) else {
                return Err(WsError::BadControlFrame);
            };
            if buf.len() < total {
                return Ok(None);
            }
            let mask = head.mask(buf);
            let mut payload = buf.split_to(total);
            payload.advance(head.header_len);
            if let Some(mask) = mask {
                apply_mask(&mut payload, mask);
            }
            match head.opcode {
                Opcode::Binary if head.fin => return Ok(Some(WsEvent::Message(payload))),
                Opcode::Binary => self.partial = Some(payload),
                Opcode::Continuation => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(WsError::UnexpectedContinuation);
                    };
                    partial.extend_from_slice(&payload);
                    if head.fin {
                        let message = self.partial.take().unwrap_or_default();
                        return Ok(Some(WsEvent::Message(message)));
                    }
                }
                Opcode::Ping => return Ok(Some(WsEvent::Ping(payload.freeze()))),
                Opcode::Pong => return Ok(Some(WsEvent::Pong)),
                Opcode::Close => return parse_close(&payload).map(Some),
                Opcode::Text => return Err(WsError::Text),
            }
        }
    }

    /// How many bytes the frame at the front of `buf` needs in all (its header, then header and
    /// payload), so a reader can size its buffer; never above a header plus `max_message`.
    pub fn frame_len_hint(&self, buf: &[u8]) -> usize {
        match parse_head(buf, self.role) {
            Ok(Some(head)) => {
                let payload = usize::try_from(head.payload_len).unwrap_or(usize::MAX);
                head.header_len + payload.min(self.max_message)
            }
            _ => 2,
        }
    }

    /// The first bytes of the message whose frame `head` starts `buf`, unmasked, if present.
    fn message_head(&self, buf: &[u8], head: &FrameHead) -> Option<[u8; HEADER_LEN]> {
        if let Some(partial) = &self.partial {
            return partial.get(..HEADER_LEN)?.try_into().ok();
        }
        let bytes = buf.get(head.header_len..head.header_len + HEADER_LEN)?;
        let mut out: [u8; HEADER_LEN] = bytes.try_into().ok()?;
        if let Some(mask) = head.mask(buf) {
            apply_mask(&mut out, mask);
        }
        Some(out)
    }
}

/// A close frame's payload: nothing, or a valid status code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload {
        [] => Ok(WsEvent::Close { code: None }),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let known = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !known || std::str::from_utf8(reason).is_err() {
                return Err(WsError::BadClose);
            }
            Ok(WsEvent::Close { code: Some(code) })
        }
        [_] => Err(WsError::BadClose),
    }
}

/// The header of a server frame (FIN set, unmasked) carrying `len` payload bytes: the bytes and
/// how many of them are used (2, 4 or 10). Sent as its own buffer ahead of the payload.
pub fn server_header(opcode: Opcode, len: usize) -> ([u8; SERVER_HEADER_LEN], usize) {
    let mut out = [0u8; SERVER_HEADER_LEN];
    out[0] = 0x80 | opcode as u8;
    let used = if len <= MAX_CONTROL_PAYLOAD {
        // Cannot truncate: at most 125.
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    (out, used)
}

/// Appends one whole frame: `opcode_bits` as given (reserved values included, for tests),
/// FIN as asked, masked with `mask` when given (a client's frames), never masked otherwise.
pub fn write_frame(
    out: &mut BytesMut,
    fin: bool,
    opcode_bits: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    out.reserve(MAX_HEADER_LEN + payload.len());
    out.put_u8(if fin { 0x80 } else { 0 } | (opcode_bits & 0x0F));
    let len = payload.len();
    if len <= MAX_CONTROL_PAYLOAD {
        // Cannot truncate: at most 125.
        out.put_u8(mask_bit | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.put_u8(mask_bit | 126);
        out.put_u16(len);
    } else {
        out.put_u8(mask_bit | 127);
        out.put_u64(len as u64);
    }
    match mask {
        Some(mask) => {
            out.put_slice(&mask);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], mask);
        }
        None => out.put_slice(payload),
    }
}

/// A client's whole binary message in one masked frame.
pub fn client_frame(payload: &[u8], mask: [u8; 4]) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, true, Opcode::Binary as u8, payload, Some(mask));
    out
}

/// A server close frame with `code` and no reason.
pub fn close_frame(code: u16) -> Bytes {
    let mut out = BytesMut::with_capacity(4);
    write_frame(
        &mut out,
        true,
        Opcode::Close as u8,
        &code.to_be_bytes(),
        None,
    );
    out.freeze()
}

/// A server pong answering a ping's `payload` (at most 125 bytes, as the decoder enforces).
pub fn pong_frame(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + payload.len());
    write_frame(&mut out, true, Opcode::Pong as u8, payload, None);
    out.freeze()
}
