//! WebSocket for the load tool's gate connections (`--target gate-ws`): the HTTP upgrade, and
//! [`WsHandler`], which wraps a gate [`Handler`]: server messages are unwrapped into the imgate
//! frames they carry, and every frame the inner handler writes goes out as one masked binary
//! message. The masking key is zero (valid per RFC 6455 — the gate unmasks as it must — and it
//! keeps the tool's cost per message to a header), so the figure measures the gate's WebSocket
//! path, not the tool's XOR.

use crate::coord::Counts;
use crate::drive::{Handler, Received};
use crate::exec::ConnError;

/// Header bytes of an imgate frame; its body length is the big-endian u32 at 18..22.
const FRAME_HEADER: usize = 22;

/// The upgrade request for `/ws` on `host`.
pub fn upgrade_request(host: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Reads the upgrade's answer; `done` once a whole `101` head was consumed.
#[derive(Default)]
pub struct Upgrade {
    pub done: bool,
}

impl Handler for Upgrade {
    fn feed(
        &mut self,
        buf: &[u8],
        _out: &mut Vec<u8>,
        _rx: &mut Received<'_>,
    ) -> Result<usize, ConnError> {
        if self.done {
            return Ok(0);
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            if buf.len() > 8192 {
                return Err(ConnError::Refused { code: 0 });
            }
            return Ok(0);
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let status = std::str::from_utf8(&buf[9..12.min(buf.len())])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return Err(ConnError::Refused { code: status });
        }
        self.done = true;
        Ok(end + 4)
    }
    fn take_counts(&mut self) -> Counts {
        Counts::default()
    }
    fn acks_pending(&self) -> bool {
        false
    }
    fn flush_acks(&mut self, _out: &mut Vec<u8>) {}
    fn can_send(&self) -> u64 {
        0
    }
    fn put_send(&mut self, _out: &mut Vec<u8>, _stamp_ns: u64) {}
}

/// A gate handler spoken over WebSocket.
pub struct WsHandler<H> {
    pub inner: H,
    /// Payload bytes of server messages not yet consumed by `inner`.
    plain: Vec<u8>,
    /// What `inner` wrote, before wrapping.
    scratch: Vec<u8>,
}

impl<H> WsHandler<H> {
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            plain: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

/// Appends each whole imgate frame of `frames` to `out` as one masked binary message (zero
/// key); returns the bytes of `frames` wrapped (a partial frame stays).
pub fn wrap(frames: &[u8], out: &mut Vec<u8>) -> usize {
    let mut at = 0;
    while frames.len() - at >= FRAME_HEADER {
        let len_bytes = [
            frames[at + 18],
            frames[at + 19],
            frames[at + 20],
            frames[at + 21],
        ];
        let len = FRAME_HEADER + u32::from_be_bytes(len_bytes) as usize;
        if frames.len() - at < len {
            break;
        }
        out.push(0x82);
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&frames[at..at + len]);
        at += len;
    }
    at
}

/// Moves the payloads of the whole server messages at the front of `buf` into `plain`;
/// returns the bytes of `buf` consumed. A close message is the end of the connection.
pub fn unwrap(buf: &[u8], plain: &mut Vec<u8>) -> Result<usize, ConnError> {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        if rest.len() < 2 {
            return Ok(at);
        }
        let (b0, b1) = (rest[0], rest[1]);
        if b1 & 0x80 != 0 {
            return Err(ConnError::Refused { code: 1002 }); // the server never masks
        }
        let (len, header) = match b1 & 0x7F {
            126 if rest.len() >= 4 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 if rest.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return Ok(at),
            n => (n as usize, 2),
        };
        if rest.len() < header + len {
            return Ok(at);
        }
        match b0 & 0x0F {
            // Binary, or a continuation of one: imgate frames.
            0x0 | 0x2 => plain.extend_from_slice(&rest[header..header + len]),
            0x8 => return Err(ConnError::Closed),
            // Ping/pong: the gate does not ping its clients; nothing to answer here.
            _ => {}
        }
        at += header + len;
    }
}

impl<H: Handler> Handler for WsHandler<H> {
    fn feed(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<usize, ConnError> {
        let used = unwrap(buf, &mut self.plain)?;
        let n = self.inner.feed(&self.plain, &mut self.scratch, rx)?;
        self.plain.drain(..n);
        let wrapped = wrap(&self.scratch, out);
        self.scratch.drain(..wrapped);
        Ok(used)
    }

    fn take_counts(&mut self) -> Counts {
        self.inner.take_counts()
    }

    fn acks_pending(&self) -> bool {
        self.inner.acks_pending()
    }

    fn flush_acks(&mut self, out: &mut Vec<u8>) {
        self.inner.flush_acks(&mut self.scratch);
        let wrapped = wrap(&self.scratch, out);
        self.scratch.drain(..wrapped);
    }

    fn can_send(&self) -> u64 {
        self.inner.can_send()
    }

    fn put_send(&mut self, out: &mut Vec<u8>, stamp_ns: u64) {
        self.inner.put_send(&mut self.scratch, stamp_ns);
        let wrapped = wrap(&self.scratch, out);
        self.scratch.drain(..wrapped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gate::protocol::{MsgType, cmd, encode_frame, pb};

    #[test]
    fn frames_round_trip_through_wrap_and_unwrap_at_every_length_class() {
        for body in [0usize, 50, 200, 70_000] {
            let req = pb::SendReq {
                body: vec![7u8; body].into(),
                ..Default::default()
            };
            let frame = encode_frame(cmd::SEND, MsgType::Request, 1, 2, &req);
            let mut two = frame.to_vec();
            two.extend_from_slice(&frame);
            let mut wire = Vec::new();
            assert_eq!(wrap(&two, &mut wire), two.len());
            // What a server sends is unmasked: strip the mask bit and the zero key.
            let mut server = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let ext = match wire[at + 1] & 0x7F {
                    126 => 2,
                    127 => 8,
                    _ => 0,
                };
                let len = match ext {
                    0 => (wire[at + 1] & 0x7F) as usize,
                    2 => u16::from_be_bytes([wire[at + 2], wire[at + 3]]) as usize,
                    _ => u64::from_be_bytes(wire[at + 2..at + 10].try_into().unwrap()) as usize,
                };
                server.push(wire[at]);
                server.push(wire[at + 1] & 0x7F);
                server.extend_from_slice(&wire[at + 2..at + 2 + ext]);
                server.extend_from_slice(&wire[at + 6 + ext..at + 6 + ext + len]);
                at += 6 + ext + len;
            }
            let mut plain = Vec::new();
            assert_eq!(unwrap(&server, &mut plain).unwrap(), server.len());
            assert_eq!(plain, two, "body {body}");
            // A message cut anywhere is left whole for the next read.
            let mut partial = Vec::new();
            assert_eq!(
                unwrap(&server[..server.len() - 1], &mut partial).unwrap(),
                server.len() / 2
            );
        }
    }
}
