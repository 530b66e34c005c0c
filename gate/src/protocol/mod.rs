//! The client wire protocol of `shared/PROTOCOL.md`: the 22-byte frame header, the sans-IO frame
//! decoder and encoder, command and code numbers, and the protobuf bodies.
//!
//! Owns no connection state and never touches IO: callers hand in bytes and get frames or typed
//! errors back, and hand in messages and get encoded frames back.

pub mod codes;
pub mod frame;
pub mod ws;

pub use codes::{Code, KickReason};
pub use frame::{
    Frame, FrameDecoder, FrameError, FrameRef, HEADER_LEN, Header, MAGIC, MsgType, VERSION,
    encode_frame, encode_frame_into,
};

/// Protobuf bodies generated from `gate/proto/imgate.proto`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/imgate.v1.rs"));
}

/// Command numbers (header byte 8).
pub mod cmd {
    pub const LOGIN: u8 = 0x01;
    pub const LOGOUT: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const KICK: u8 = 0x04;
    pub const SEND: u8 = 0x10;
    pub const PUSH: u8 = 0x11;
    pub const ACK: u8 = 0x12;
    pub const NOTIFY: u8 = 0x13;
    pub const PULL: u8 = 0x14;
    pub const READ: u8 = 0x15;
    pub const READ_RECEIPT: u8 = 0x16;
    pub const SYNC: u8 = 0x17;
    pub const BIZ: u8 = 0x20;
    pub const BIZ_PUSH: u8 = 0x21;
    pub const ERROR: u8 = 0x7F;
}

/// Default `max_frame`, and the limit clients assume before LOGIN tells them the gate's own.
pub const DEFAULT_MAX_FRAME: u32 = 65_536;

/// The msg_ids of an `Ack` body, appended to `ids`. Every ACK of a fan-out passes here, so the
/// usual encoding — one packed field 1, as proto3 writes a repeated integer — is read in one
/// tight loop; anything else (unpacked ids, several fields, unknown fields) goes through prost.
/// On error `ids` may hold part of the body's ids.
pub fn decode_ack_ids(body: &[u8], ids: &mut Vec<u64>) -> Result<(), prost::DecodeError> {
    if let Some(packed) = single_packed_field(body) {
        let start = ids.len();
        ids.reserve(packed.len() / 4);
        let mut at = 0;
        while let Some(id) = packed_varint(packed, &mut at) {
            ids.push(id);
        }
        if at == packed.len() {
            return Ok(());
        }
        // prost's own walk below reports what is wrong.
        ids.truncate(start);
    }
    let mut ack = pb::Ack {
        msg_ids: std::mem::take(ids),
    };
    let merged = prost::Message::merge(&mut ack, body);
    *ids = ack.msg_ids;
    merged
}

/// The varint at `*at` in `buf`, advancing past it; `None` at the end of `buf` or on a varint
/// that is cut short or longer than 10 bytes (then `*at` is left where it started).
#[inline]
fn packed_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in buf.get(*at..)?.iter().take(10).enumerate() {
        if i == 9 && byte > 1 {
            return None; // Past 64 bits.
        }
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte < 0x80 {
            *at += i + 1;
            return Some(value);
        }
    }
    None
}

/// The payload of `body` when it is exactly one length-delimited field 1 (tag 0x0A).
fn single_packed_field(body: &[u8]) -> Option<&[u8]> {
    let (&tag, mut rest) = body.split_first()?;
    if tag != 0x0A {
        return None;
    }
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    (u64::try_from(rest.len()).ok()? == len).then_some(rest)
}

#[cfg(test)]
mod tests;
