//! An encoded frame on its way out of a shard, shared by every connection it goes to.
//!
//! A fan-out queues one frame to a thousand connections and tracks it in a thousand ack
//! trackers. Sharing it through `Rc` (a shard is one thread) makes each of those a pointer and a
//! non-atomic increment: the previous `Bytes` per queue slot and per tracker slot cost 32 bytes
//! each and an atomic reference count per clone and per drop, and at a million PUSHes in flight
//! the queues and trackers no longer fit in any cache (see the commit introducing this type for
//! the fan-out figures).
//!
//! The frame also carries what its holders need besides the bytes: the PUSH it is (msg_id and
//! conversation, for the ack tracker), whether it is sent as it is (`raw`: an HTTP answer, a
//! WebSocket pong or close) and the WebSocket binary-message header that precedes it on a
//! WebSocket connection, so that framing copies nothing.

use std::rc::Rc;

use bytes::Bytes;

use super::ConvRef;
use crate::protocol::ws::{Opcode, SERVER_HEADER_LEN as WS_HEADER_MAX, server_header};

/// A frame queued for output. See the module doc.
#[derive(Debug)]
pub struct OutFrame {
    bytes: Bytes,
    msg_id: u64,
    conv: ConvRef,
    raw: bool,
    ws_header: [u8; WS_HEADER_MAX],
    ws_header_len: u8,
}

/// How frames are held by queues and trackers.
pub type SharedFrame = Rc<OutFrame>;

impl OutFrame {
    /// A protocol frame (WebSocket-framed on a WebSocket connection) that is not a PUSH.
    pub fn frame(bytes: Bytes) -> SharedFrame {
        Self::build(bytes, 0, ConvRef::default(), false)
    }

    /// A PUSH of `msg_id` in `conv` (as its recipients see it), for the ack tracker.
    pub fn push(bytes: Bytes, msg_id: u64, conv: ConvRef) -> SharedFrame {
        Self::build(bytes, msg_id, conv, false)
    }

    /// Bytes sent exactly as they are, never WebSocket-framed.
    pub fn raw(bytes: Bytes) -> SharedFrame {
        Self::build(bytes, 0, ConvRef::default(), true)
    }

    fn build(bytes: Bytes, msg_id: u64, conv: ConvRef, raw: bool) -> SharedFrame {
        let (ws_header, used) = if raw {
            ([0; WS_HEADER_MAX], 0)
        } else {
            server_header(Opcode::Binary, bytes.len())
        };
        Rc::new(Self {
            bytes,
            msg_id,
            conv,
            raw,
            ws_header,
            // At most WS_HEADER_MAX.
            ws_header_len: used as u8,
        })
    }

    /// The encoded frame (without any WebSocket header).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The PUSH's msg_id (0 for other frames).
    pub fn msg_id(&self) -> u64 {
        self.msg_id
    }

    /// The PUSH's conversation as its recipients see it.
    pub fn conv(&self) -> ConvRef {
        self.conv
    }

    /// The pieces that go on the wire, in order: on a WebSocket connection the binary-message
    /// header (empty for a raw frame), then the frame. The first piece is empty on TCP.
    pub fn wire(&self, websocket: bool) -> [&[u8]; 2] {
        let header = if websocket {
            &self.ws_header[..usize::from(self.ws_header_len)]
        } else {
            &[]
        };
        [header, &self.bytes]
    }

    /// Bytes on the wire (see [`Self::wire`]).
    pub fn wire_len(&self, websocket: bool) -> usize {
        let header = if websocket {
            usize::from(self.ws_header_len)
        } else {
            0
        };
        header + self.bytes.len()
    }

    /// Sent as it is on every connection.
    pub fn is_raw(&self) -> bool {
        self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_header_is_a_final_binary_message_of_the_frame_length() {
        for len in [0, 1, 125, 126, 300, 65_535, 65_536, 1 << 20] {
            let frame = OutFrame::frame(Bytes::from(vec![0u8; len]));
            let [header, body] = frame.wire(true);
            let mut want = vec![0x82];
            match len {
                0..=125 => want.push(len as u8),
                126..=65_535 => {
                    want.push(126);
                    want.extend((len as u16).to_be_bytes());
                }
                _ => {
                    want.push(127);
                    want.extend((len as u64).to_be_bytes());
                }
            }
            assert_eq!(header, &want[..], "len {len}");
            assert_eq!(body.len(), len);
            assert_eq!(frame.wire_len(true), header.len() + len);
            assert_eq!(frame.wire(false)[0], &[] as &[u8]);
            assert_eq!(frame.wire_len(false), len);
        }
    }

    #[test]
    fn raw_bytes_get_no_header_and_pushes_name_their_message() {
        let raw = OutFrame::raw(Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"));
        assert!(raw.is_raw());
        assert_eq!(raw.wire(true)[0], &[] as &[u8]);
        assert_eq!(raw.wire_len(true), 16);
        let conv = ConvRef {
            conv_type: 2,
            conv_id: 9,
        };
        let push = OutFrame::push(Bytes::from_static(b"p"), 42, conv);
        assert_eq!((push.msg_id(), push.conv()), (42, conv));
        assert!(!push.is_raw());
    }
}
