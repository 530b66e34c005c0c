//! Frame header, decoder and encoder (PROTOCOL.md "Frame").
//!
//! The decoder is sans-IO in the mini-redis style: `decode` looks at a `BytesMut`, returns
//! `Ok(None)` while a frame is incomplete, `Ok(Some(frame))` after advancing the buffer past one
//! frame, and `Err` for input that must end the connection. Every refusal is decided from the
//! header alone, before any body byte is buffered: a peer can never make the gate allocate more
//! than `HEADER_LEN + max_frame` for one frame. A wrong magic is refused as soon as the first
//! wrong byte arrives, so a garbage trickle is not waited on.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::Code;

/// `IMGW` in ASCII.
pub const MAGIC: u32 = 0x494D_4757;
/// The only protocol version this gate speaks.
pub const VERSION: u32 = 1;
/// Bytes in every frame header, in every protocol version.
pub const HEADER_LEN: usize = 22;

const MAGIC_BYTES: [u8; 4] = MAGIC.to_be_bytes();

/// Header byte 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MsgType {
    Request = 0,
    Response = 1,
    Notify = 2,
}

impl MsgType {
    /// `None` for values the protocol does not define (a protocol error).
    pub const fn from_wire(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Request),
            1 => Some(Self::Response),
            2 => Some(Self::Notify),
            _ => None,
        }
    }
}

/// A header as it arrived, before validation; kept in errors so a refusal can echo `seq` and
/// `log_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cmd: u8,
    pub msg_type: u8,
    pub log_id: u32,
    pub seq: u32,
    pub len: u32,
}

impl Header {
    /// Reads the 22 header bytes; `None` if fewer are given.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        let u32_at = |at: usize| u32::from_be_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        Some(Self {
            version: u32_at(4),
            cmd: h[8],
            msg_type: h[9],
            log_id: u32_at(10),
            seq: u32_at(14),
            len: u32_at(18),
        })
    }
}

/// One complete, validated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cmd: u8,
    pub msg_type: MsgType,
    pub log_id: u32,
    pub seq: u32,
    /// The protobuf body; shares the read buffer's allocation.
    pub body: Bytes,
}

/// One complete, validated frame borrowed from a read buffer (see [`FrameDecoder::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub cmd: u8,
    pub msg_type: MsgType,
    pub log_id: u32,
    pub seq: u32,
    pub body: &'a [u8],
}

/// Input that ends the connection (PROTOCOL.md "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic: the stream is not imgate frames")]
    BadMagic,
    #[error("unsupported protocol version {}", header.version)]
    UnsupportedVersion { header: Header },
    #[error("bad msg_type {}", header.msg_type)]
    BadMsgType { header: Header },
    #[error("frame body of {} bytes exceeds max_frame {max}", header.len)]
    TooLarge { header: Header, max: u32 },
}

impl FrameError {
    /// The ERROR code PROTOCOL.md names for this refusal, if any (bad magic and bad msg_type
    /// close without one).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::BadMagic | Self::BadMsgType { .. } => None,
            Self::UnsupportedVersion { .. } => Some(Code::UnsupportedVersion),
            Self::TooLarge { .. } => Some(Code::TooLarge),
        }
    }

    /// The offending header, when one was read.
    pub fn header(&self) -> Option<&Header> {
        match self {
            Self::BadMagic => None,
            Self::UnsupportedVersion { header }
            | Self::BadMsgType { header }
            | Self::TooLarge { header, .. } => Some(header),
        }
    }
}

/// Splits a byte stream into frames. Holds only the configured limit: the bytes live in the
/// caller's buffer, so the caller decides how that buffer grows and shrinks.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: u32,
}

impl FrameDecoder {
    pub fn new(max_frame: u32) -> Self {
        Self { max_frame }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Validates the frame at the front of `buf` without consuming or copying anything: the
    /// frame borrowed from `buf` and its total length (header + body), `Ok(None)` while it is
    /// incomplete, `Err` as for [`decode`](Self::decode). For readers that keep their own buffer
    /// (the load generator).
    pub fn peek<'a>(&self, buf: &'a [u8]) -> Result<Option<(FrameRef<'a>, usize)>, FrameError> {
        // A whole magic is one integer compare (a slice compare called memcmp per frame).
        let magic_ok = match buf.first_chunk::<4>() {
            Some(head) => u32::from_be_bytes(*head) == MAGIC,
            None => buf[..] == MAGIC_BYTES[..buf.len()],
        };
        if !magic_ok {
            return Err(FrameError::BadMagic);
        }
        let Some(header) = Header::parse(buf) else {
            return Ok(None);
        };
        if header.version != VERSION {
            return Err(FrameError::UnsupportedVersion { header });
        }
        let Some(msg_type) = MsgType::from_wire(header.msg_type) else {
            return Err(FrameError::BadMsgType { header });
        };
        if header.len > self.max_frame {
            return Err(FrameError::TooLarge {
                header,
                max: self.max_frame,
            });
        }
        // `len <= max_frame <= u32::MAX`, so this cannot truncate on 64-bit targets.
        let total = HEADER_LEN + header.len as usize;
        let Some(body) = buf.get(HEADER_LEN..total) else {
            return Ok(None);
        };
        let frame = FrameRef {
            cmd: header.cmd,
            msg_type,
            log_id: header.log_id,
            seq: header.seq,
            body,
        };
        Ok(Some((frame, total)))
    }

    /// Decodes one frame from the front of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (nothing consumed). `Ok(Some)`: `buf` was advanced past
    /// the frame. `Err`: the stream is unusable; the caller answers with [`FrameError::code`] and
    /// closes.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (cmd, msg_type, log_id, seq, total) = match self.peek(buf)? {
            None => return Ok(None),
            Some((f, total)) => (f.cmd, f.msg_type, f.log_id, f.seq, total),
        };
        let mut frame = buf.split_to(total);
        let body = frame.split_off(HEADER_LEN).freeze();
        Ok(Some(Frame {
            cmd,
            msg_type,
            log_id,
            seq,
            body,
        }))
    }

    /// How many bytes the frame at the front of `buf` needs in all (header, then header + body),
    /// so a reader can size its buffer to the frame instead of guessing. Never above
    /// `HEADER_LEN + max_frame`.
    pub fn frame_len_hint(&self, buf: &[u8]) -> usize {
        match Header::parse(buf) {
            Some(h) if h.len <= self.max_frame => HEADER_LEN + h.len as usize,
            _ => HEADER_LEN,
        }
    }
}

/// Appends one frame to `out`: the header, then `body` encoded in place (one reservation).
pub fn encode_frame_into(
    out: &mut BytesMut,
    cmd: u8,
    msg_type: MsgType,
    log_id: u32,
    seq: u32,
    body: &impl Message,
) {
    let len = body.encoded_len();
    out.reserve(HEADER_LEN + len);
    put_header(out, cmd, msg_type, log_id, seq, len);
    // Cannot fail: `reserve` above made room for `encoded_len` bytes.
    body.encode_raw(out);
}

/// Encodes one frame into its own buffer, ready to be shared by every recipient.
pub fn encode_frame(
    cmd: u8,
    msg_type: MsgType,
    log_id: u32,
    seq: u32,
    body: &impl Message,
) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.encoded_len());
    encode_frame_into(&mut out, cmd, msg_type, log_id, seq, body);
    out.freeze()
}

fn put_header(out: &mut BytesMut, cmd: u8, msg_type: MsgType, log_id: u32, seq: u32, len: usize) {
    out.put_u32(MAGIC);
    out.put_u32(VERSION);
    out.put_u8(cmd);
    out.put_u8(msg_type as u8);
    out.put_u32(log_id);
    out.put_u32(seq);
    // Bodies the gate builds are bounded by max_frame (checked by the callers that build
    // variable-size answers); saturate rather than wrap if a bug ever passes a larger one.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}
