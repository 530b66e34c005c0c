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
//!
//! [`JoinedRun`]: a run of PUSHes that many sessions take whole and in order (a group fan-out
//! run) is also joined into one buffer per transport, once, so each session queues one buffer
//! for the run instead of one frame per message.

use std::cell::OnceCell;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};

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

/// Frames up to this size are joined (the write path's coalescing bound); larger ones are
/// queued as themselves, uncopied.
pub const JOIN_FRAME_MAX: usize = 512;
/// Most bytes in one joined buffer: a run of thousands of small PUSHes becomes a few buffers,
/// and what joining adds to memory stays bounded by the run's small frames.
pub const JOIN_BYTES_MAX: usize = 64 * 1024;

/// A run of frames every session of an audience takes whole, in order. Each session's ack
/// tracker still takes the frames one by one (acknowledged and resent per PUSH), but its queue
/// takes [`JoinedRun::queued`]: consecutive small frames (up to [`JOIN_FRAME_MAX`] bytes)
/// joined once per transport into raw buffers of at most [`JOIN_BYTES_MAX`] (a TCP one; a
/// WebSocket one with each frame behind its own header, each still one binary message), large
/// frames as themselves. A fan-out run of k small PUSHes to n sessions then costs one copy of
/// the run instead of n (the per-write coalescing copy), and about n queue slots instead of
/// k × n.
#[derive(Debug)]
pub struct JoinedRun<'a> {
    frames: &'a [SharedFrame],
    tcp: OnceCell<Vec<(SharedFrame, u64)>>,
    websocket: OnceCell<Vec<(SharedFrame, u64)>>,
}

impl<'a> JoinedRun<'a> {
    pub fn new(frames: &'a [SharedFrame]) -> Self {
        Self {
            frames,
            tcp: OnceCell::new(),
            websocket: OnceCell::new(),
        }
    }

    /// The frames, one by one.
    pub fn frames(&self) -> &'a [SharedFrame] {
        self.frames
    }

    /// What a connection of this transport queues for the whole run, in order, each buffer
    /// with the number of frames it carries (built on first use; a run of one frame is that
    /// frame).
    pub fn queued(&self, websocket: bool) -> &[(SharedFrame, u64)] {
        let cell = if websocket {
            &self.websocket
        } else {
            &self.tcp
        };
        cell.get_or_init(|| join(self.frames, websocket))
    }
}

/// `frames` as buffers for one connection: runs of small frames joined (raw, each frame's
/// WebSocket header included when `websocket`; a raw frame has none), large ones as they are.
fn join(frames: &[SharedFrame], websocket: bool) -> Vec<(SharedFrame, u64)> {
    let mut out = Vec::new();
    let mut joined = BytesMut::new();
    let mut pending: Vec<&SharedFrame> = Vec::new();
    for frame in frames {
        let len = frame.wire_len(websocket);
        if len > JOIN_FRAME_MAX {
            end_join(&mut pending, &mut joined, &mut out);
            out.push((Rc::clone(frame), 1));
            continue;
        }
        if joined.len() + len > JOIN_BYTES_MAX {
            end_join(&mut pending, &mut joined, &mut out);
        }
        for piece in frame.wire(websocket) {
            joined.extend_from_slice(piece);
        }
        pending.push(frame);
    }
    end_join(&mut pending, &mut joined, &mut out);
    out
}

/// Closes the joined buffer being built: one frame goes as itself (nothing gained by a copy).
fn end_join(
    pending: &mut Vec<&SharedFrame>,
    joined: &mut BytesMut,
    out: &mut Vec<(SharedFrame, u64)>,
) {
    match pending.as_slice() {
        [] => {}
        [one] => out.push((Rc::clone(one), 1)),
        many => out.push((OutFrame::raw(joined.split().freeze()), many.len() as u64)),
    }
    pending.clear();
    joined.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(msg_id: u64, len: usize) -> SharedFrame {
        OutFrame::push(
            Bytes::from(vec![msg_id as u8; len]),
            msg_id,
            ConvRef::default(),
        )
    }

    /// Each frame's wire pieces, back to back.
    fn wire_of(frames: &[SharedFrame], websocket: bool) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| f.wire(websocket).concat())
            .collect()
    }

    /// The bytes a connection of this transport sends for `queued`, back to back.
    fn sent(queued: &[(SharedFrame, u64)], websocket: bool) -> Vec<u8> {
        queued
            .iter()
            .flat_map(|(f, _)| f.wire(websocket).concat())
            .collect()
    }

    #[test]
    fn a_joined_run_sends_each_frame_as_it_goes_out_back_to_back_built_once() {
        // Small frames on both sides of the WebSocket header's first length class, a large
        // one between them, and enough small ones to fill more than one joined buffer.
        let mut frames: Vec<SharedFrame> = vec![push(1, 10), push(2, 125), push(3, 126)];
        frames.push(push(4, 70_000));
        frames.extend((5..1_000).map(|id| push(id, 100 + (id as usize % 300))));
        frames.push(push(1_000, 0));
        let run = JoinedRun::new(&frames);
        for websocket in [false, true] {
            let queued = run.queued(websocket);
            assert_eq!(
                sent(queued, websocket),
                wire_of(&frames, websocket),
                "websocket {websocket}"
            );
            let carried: u64 = queued.iter().map(|(_, n)| n).sum();
            assert_eq!(carried, frames.len() as u64, "every frame counted once");
            assert!(
                queued.len() > 3 && queued.len() < 40,
                "{} buffers",
                queued.len()
            );
            for (buffer, n) in queued {
                let len = buffer.wire_len(websocket);
                if *n > 1 {
                    assert!(buffer.is_raw() && len <= JOIN_BYTES_MAX, "{len} bytes");
                    assert_eq!(buffer.msg_id(), 0, "not a PUSH: the trackers hold those");
                }
            }
            // The large frame goes as itself, uncopied.
            assert!(
                queued
                    .iter()
                    .any(|(f, n)| *n == 1 && Rc::ptr_eq(f, &frames[3]))
            );
            let again = run.queued(websocket);
            assert!(
                Rc::ptr_eq(&queued[0].0, &again[0].0),
                "joined once per transport"
            );
        }
        assert!(!Rc::ptr_eq(&run.queued(false)[0].0, &run.queued(true)[0].0));
    }

    #[test]
    fn a_run_of_one_frame_is_that_frame_and_an_empty_run_nothing() {
        let frames = [push(9, 40)];
        let run = JoinedRun::new(&frames);
        for websocket in [false, true] {
            let queued = run.queued(websocket);
            assert_eq!(queued.len(), 1);
            assert!(Rc::ptr_eq(&queued[0].0, &frames[0]));
            assert_eq!(queued[0].1, 1);
        }
        assert!(JoinedRun::new(&[]).queued(false).is_empty());
    }

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
