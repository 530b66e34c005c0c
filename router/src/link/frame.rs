//! Link framing, sans-IO: a frame is a 4-byte big-endian body length `N` (1..=max) and `N`
//! bytes holding one protobuf [`Batch`] of [`LinkMsg`]s.
//!
//! [`FrameDecoder::decode`] checks the length prefix before anything is allocated, returns
//! `Ok(None)` until a whole frame is buffered, and advances the buffer past each frame it
//! returns; bytes fields of the decoded messages share the read buffer (no copy). An `Err` means
//! the peer is broken or hostile: log it and close that link (the others are untouched).
//!
//! [`FrameEncoder`] appends messages to an output buffer as the repeated field of a `Batch`,
//! without building a `Batch` value: everything queued in one loop turn becomes one frame, and a
//! frame that would pass the peer's `max_frame` is closed and a new one opened. Never touches IO.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encoded_len_varint};

use super::{Batch, LinkMsg};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// Largest frame body either side accepts unless configured otherwise (4 MiB).
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;
/// The smallest `max_frame` a side may announce: room for any client request (64 KiB frames)
/// with its link envelope.
pub const MIN_MAX_FRAME: usize = 128 << 10;

/// Why a link is closed. One enum for the whole link layer (framing, handshake, liveness).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("frame of {len} bytes above the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame is not a link batch: {0}")]
    Garbage(#[from] prost::DecodeError),
    #[error("link message of {len} bytes cannot fit a frame of {max}")]
    MessageTooLong { len: usize, max: usize },
    #[error("the peer speaks link version {theirs}, this side {ours}")]
    Version { ours: u32, theirs: u32 },
    #[error("handshake: {0}")]
    Handshake(&'static str),
    #[error("refused by the peer (code {code}): {reason}")]
    Refused { code: u32, reason: String },
    #[error("nothing received for {ms} ms")]
    Silent { ms: u64 },
    #[error("the peer broke the protocol: {0}")]
    Unexpected(&'static str),
    #[error("link closed")]
    Closed,
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits frames off a read buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max: usize,
}

impl FrameDecoder {
    /// Refuses frames whose body is longer than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The next whole frame in `buf`: `Ok(None)` = need more bytes (`buf` untouched, but room
    /// reserved for the announced frame); `Ok(Some)` has advanced `buf` past it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Batch>, LinkError> {
        let Some(prefix) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let mut len = [0u8; HEADER_LEN];
        len.copy_from_slice(prefix);
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            return Err(LinkError::Empty);
        }
        if len > self.max {
            return Err(LinkError::TooLong { len, max: self.max });
        }
        let total = HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let body = buf.split_to(len).freeze();
        Ok(Some(Batch::decode(body)?))
    }
}

/// Appends messages to an output buffer as frames of at most `max` body bytes.
///
/// Call [`push`](Self::push) for each message, then [`finish`](Self::finish) before the buffer
/// is written: until then the open frame's length prefix is not filled in.
#[derive(Debug)]
pub struct FrameEncoder {
    max: usize,
    /// Offset in the output buffer of the open frame's length prefix.
    open: Option<usize>,
}

impl FrameEncoder {
    /// Frames whose body stays within `max` bytes (the peer's `max_frame`).
    pub fn new(max: usize) -> Self {
        Self { max, open: None }
    }

    /// Appends `msg` to the open frame, or to a new one when it would not fit.
    pub fn push(&mut self, msg: &LinkMsg, out: &mut BytesMut) -> Result<(), LinkError> {
        let len = msg.encoded_len();
        // Field 1 of Batch, length-delimited: one key byte, the length, the message.
        let entry = 1 + encoded_len_varint(len as u64) + len;
        if entry > self.max {
            return Err(LinkError::MessageTooLong {
                len: entry,
                max: self.max,
            });
        }
        if let Some(start) = self.open
            && out.len() - start - HEADER_LEN + entry > self.max
        {
            self.finish(out);
        }
        if self.open.is_none() {
            self.open = Some(out.len());
            out.put_u32(0);
        }
        out.reserve(entry);
        encode_key(1, WireType::LengthDelimited, out);
        // Cannot fail: a BytesMut grows as needed.
        let _ = msg.encode_length_delimited(out);
        Ok(())
    }

    /// Closes the open frame (fills in its length). Does nothing when no frame is open.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if let Some(start) = self.open.take() {
            let len = out.len() - start - HEADER_LEN;
            // len <= max, which is a usize from a u32 setting or a constant below 2^32.
            out[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

/// `msgs` as frames of at most `max` body bytes (tests, tools, one-off sends).
pub fn encode_batch(msgs: &[LinkMsg], max: usize) -> Result<BytesMut, LinkError> {
    let mut out = BytesMut::new();
    let mut encoder = FrameEncoder::new(max);
    for msg in msgs {
        encoder.push(msg, &mut out)?;
    }
    encoder.finish(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{self, link_msg::Body};
    use bytes::Bytes;

    fn send(request_id: u64, body_len: usize) -> LinkMsg {
        LinkMsg::request(
            request_id,
            Body::Send(link::Send {
                from: 7,
                client_msg_id: request_id,
                conv_type: 1,
                to: 42,
                content_type: 1,
                body: Bytes::from(vec![b'x'; body_len]),
                session_id: 1025,
                log_id: 9,
            }),
        )
    }

    fn batch_of(n: u64) -> Vec<LinkMsg> {
        let mut msgs: Vec<LinkMsg> = (1..=n).map(|i| send(i, 64)).collect();
        msgs.push(LinkMsg::event(Body::Heartbeat(link::Heartbeat {})));
        msgs.push(LinkMsg::event(Body::Presence(link::Presence {
            uid: 7,
            device_id: "phone".into(),
            session_id: 1025,
            online: true,
            platform: 2,
            since_ms: 1,
        })));
        msgs
    }

    fn decode_all(decoder: &FrameDecoder, buf: &mut BytesMut) -> Vec<LinkMsg> {
        let mut got = Vec::new();
        while let Some(batch) = decoder.decode(buf).expect("valid frames") {
            got.extend(batch.msgs);
        }
        got
    }

    #[test]
    fn a_batch_round_trips_in_one_frame() {
        let msgs = batch_of(10);
        let mut buf = encode_batch(&msgs, DEFAULT_MAX_FRAME).expect("fits");
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let batch = decoder.decode(&mut buf).expect("valid").expect("whole");
        assert_eq!(batch.msgs, msgs);
        assert!(buf.is_empty());
    }

    #[test]
    fn the_encoder_output_is_a_plain_protobuf_batch() {
        // What a Java or Go peer does: Batch { msgs }.encode() behind a big-endian length.
        let msgs = batch_of(3);
        let ours = encode_batch(&msgs, DEFAULT_MAX_FRAME).expect("fits");
        let body = Batch { msgs }.encode_to_vec();
        let mut theirs = (body.len() as u32).to_be_bytes().to_vec();
        theirs.extend_from_slice(&body);
        assert_eq!(&ours[..], &theirs[..]);
    }

    #[test]
    fn every_split_of_the_input_decodes_the_same_messages() {
        let msgs = batch_of(4);
        let mut stream = encode_batch(&msgs[..3], DEFAULT_MAX_FRAME).expect("fits");
        stream.extend_from_slice(&encode_batch(&msgs[3..], DEFAULT_MAX_FRAME).expect("fits"));
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        for split in 0..=stream.len() {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&stream[..split]);
            let mut got = decode_all(&decoder, &mut buf);
            buf.extend_from_slice(&stream[split..]);
            got.extend(decode_all(&decoder, &mut buf));
            assert_eq!(got, msgs, "split at {split}");
            assert!(buf.is_empty(), "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_input_decodes_the_same_messages() {
        let msgs = batch_of(20);
        let stream = encode_batch(&msgs, 2048).expect("fits");
        let decoder = FrameDecoder::new(2048);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream.iter() {
            buf.put_u8(b);
            got.extend(decode_all(&decoder, &mut buf));
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn a_batch_larger_than_max_is_split_into_frames_that_fit() {
        let msgs = batch_of(100);
        let max = 1024;
        let mut buf = encode_batch(&msgs, max).expect("each fits");
        let decoder = FrameDecoder::new(max);
        let mut frames = 0;
        let mut got = Vec::new();
        while let Some(batch) = decoder.decode(&mut buf).expect("every frame within max") {
            frames += 1;
            got.extend(batch.msgs);
        }
        assert!(frames > 5, "{frames} frames");
        assert_eq!(got, msgs);
    }

    #[test]
    fn a_message_that_cannot_fit_any_frame_is_refused_and_the_rest_still_encodes() {
        let mut out = BytesMut::new();
        let mut encoder = FrameEncoder::new(256);
        encoder.push(&send(1, 10), &mut out).expect("fits");
        let err = encoder.push(&send(2, 1000), &mut out).expect_err("too big");
        assert!(
            matches!(err, LinkError::MessageTooLong { max: 256, .. }),
            "{err}"
        );
        encoder.push(&send(3, 10), &mut out).expect("fits");
        encoder.finish(&mut out);
        let got = decode_all(&FrameDecoder::new(256), &mut out);
        assert_eq!(got, [send(1, 10), send(3, 10)]);
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&((DEFAULT_MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        let err = FrameDecoder::new(DEFAULT_MAX_FRAME)
            .decode(&mut buf)
            .expect_err("too long");
        assert!(matches!(err, LinkError::TooLong { len, .. } if len == DEFAULT_MAX_FRAME + 1));
        // Nothing was reserved for it.
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn an_empty_frame_is_refused() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        let err = FrameDecoder::new(1024).decode(&mut buf).expect_err("empty");
        assert!(matches!(err, LinkError::Empty));
    }

    #[test]
    fn garbage_is_refused_never_a_panic() {
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        // A length that fits, then bytes that are no protobuf Batch.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 4, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(LinkError::Garbage(_))
        ));
        // Pseudo-random input: every outcome is a value or an error.
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..2000 {
            let mut buf = BytesMut::new();
            let len = (x % 64) as u32 + 1;
            buf.put_u32(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.put_u8(x as u8);
            }
            let _ = decoder.decode(&mut buf);
        }
    }
}
