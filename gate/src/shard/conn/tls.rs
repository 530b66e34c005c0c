//! The TLS layer of a connection on `gate.tls_listen`: owns its `rustls::ServerConnection`,
//! the handshake deadline, and the glue between rustls and the connection's own buffers. TLS
//! runs in userspace (no kernel TLS here), under the transport decision: what comes out of it
//! is the plaintext the plain port would have read, so the first-bytes decision (TCP frames or
//! HTTP/WebSocket) and everything after it are unchanged.
//!
//! Inbound ([`TlsConn::absorb`], sans-IO): ciphertext read from the socket is fed to rustls
//! (`read_tls`, `process_new_packets`) and every byte of plaintext it yields is appended at once
//! to the connection's read buffer, so rustls' own plaintext buffer is always empty. Bounds:
//! rustls holds at most one partial record (about 18 KiB; up to 64 KiB of handshake while
//! handshaking) and refuses more itself; the read buffer grows by at most one record (16 KiB)
//! per read beyond what the plain path holds, and is read only while the frame decoder needs
//! more, as on the plain path. A TLS error (a garbage hello, a bad record) closes that
//! connection after the alert rustls queued, if any.
//!
//! Outbound ([`TlsConn::poll_flush`]): the out queue still holds the shared frames (on a
//! WebSocket connection each behind its header, a separate slice); up to 64 slices at a time
//! are handed to rustls' vectored writer, which packs them into as few records as it can, and
//! the records are written to the fd with `sendmsg` (`MSG_DONTWAIT`). On `EAGAIN` the first chunk of records is handed
//! to glommio's `poll_write`, which waits for writability, exactly like the plain path. rustls'
//! buffers are capped at [`TLS_BUFFER_LIMIT`] (`set_buffer_limit`): when they are full, the
//! frames stay in the out queue, where `limits.outbound_bytes` applies as on the plain path
//! (past it: slow consumer, KICK 4). So a TLS connection may hold `TLS_BUFFER_LIMIT` bytes more
//! than a plain one.
//!
//! The handshake must finish by its deadline (`gate.tls_handshake_timeout_ms` from the
//! connection's opening), a deadline on the connection's one wheel entry like the HTTP header
//! deadline; past it the connection is closed. A connection handed to its owner shard brings
//! this whole state along (the `ServerConnection` is `Send`) inside the hand-off.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use crate::shard::io::OutQueue;

/// Cap of rustls' unsent plaintext (before the handshake ends) and of its unsent records.
pub(crate) const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Queued buffers handed to rustls per vectored write.
const SLICES_PER_SEAL: usize = 64;

/// A TLS connection's state; crosses shards with the fd on a hand-off.
#[derive(Debug)]
pub(crate) struct TlsConn {
    conn: rustls::ServerConnection,
    /// Until the handshake is over: when it must be.
    handshake_deadline: Option<Instant>,
    /// rustls reported a fatal error: only its alert may still go out.
    failed: bool,
}

/// What a read of ciphertext left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Absorbed {
    /// The connection goes on (plaintext, if any, is in the read buffer).
    Open,
    /// The client sent `close_notify`: nothing more will come.
    PeerClosed,
}

/// A TLS-level failure; the connection is closed (after rustls' alert, if it queued one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsFailure {
    #[error("TLS error: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("TLS read: {0}")]
    Read(io::Error),
}

impl TlsConn {
    /// A fresh server connection that must finish its handshake by `deadline`.
    pub fn new(
        config: Arc<rustls::ServerConfig>,
        deadline: Instant,
    ) -> Result<Self, rustls::Error> {
        let mut conn = rustls::ServerConnection::new(config)?;
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Self {
            conn,
            handshake_deadline: Some(deadline),
            failed: false,
        })
    }

    /// The handshake deadline, while the handshake runs.
    pub fn deadline(&self) -> Option<Instant> {
        self.handshake_deadline
    }

    /// rustls has records (handshake, alert, data) to send.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Feeds `ciphertext` to rustls and appends the plaintext it yields to `plaintext`.
    pub fn absorb(
        &mut self,
        mut ciphertext: &[u8],
        plaintext: &mut BytesMut,
    ) -> Result<Absorbed, TlsFailure> {
        while !ciphertext.is_empty() {
            // Reads at most one 4 KiB chunk from the slice, advancing it.
            let read = match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => return Ok(Absorbed::PeerClosed),
                Ok(n) => n,
                Err(err) => {
                    self.failed = true;
                    return Err(TlsFailure::Read(err));
                }
            };
            debug_assert!(read > 0);
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(err) => {
                    self.failed = true;
                    return Err(err.into());
                }
            };
            if !self.conn.is_handshaking() {
                self.handshake_deadline = None;
            }
            let len = state.plaintext_bytes_to_read();
            if len > 0 {
                let start = plaintext.len();
                plaintext.resize(start + len, 0);
                // rustls said exactly this many bytes are ready.
                let got = self
                    .conn
                    .reader()
                    .read(&mut plaintext[start..])
                    .map_err(TlsFailure::Read)?;
                plaintext.truncate(start + got);
            }
            if state.peer_has_closed() {
                return Ok(Absorbed::PeerClosed);
            }
        }
        Ok(Absorbed::Open)
    }

    /// Hands queued frames to rustls, as much as its buffer limit takes; returns the bytes
    /// taken off `out`.
    pub fn seal(&mut self, out: &mut OutQueue) -> io::Result<usize> {
        let mut taken = 0;
        while !out.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES_PER_SEAL];
            let count = out.io_slices(&mut slices);
            let n = self.conn.writer().write_vectored(&slices[..count])?;
            // Also drops an empty frame at the front (then n is 0 and the rest waits).
            out.advance(n);
            if n == 0 {
                break;
            }
            taken += n;
        }
        Ok(taken)
    }

    /// Queues `close_notify` for the client, unless the connection failed or never finished
    /// its handshake (then there is nothing to close politely).
    pub fn close_notify(&mut self) {
        if !self.failed && !self.conn.is_handshaking() {
            self.conn.send_close_notify();
        }
    }

    /// Moves `out` through rustls and writes the records to `fd`; on `EAGAIN` the first chunk
    /// of records goes to glommio's write, which waits for writability. `Ready(Ok)` when
    /// everything rustls can take has been sent (before the handshake ends, frames beyond
    /// [`TLS_BUFFER_LIMIT`] wait in `out`); `Pending`: woken when the socket can take more.
    pub fn poll_flush(
        &mut self,
        out: &mut OutQueue,
        fd: RawFd,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.failed {
                self.seal(out)?;
            }
            if !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            match self.conn.write_tls(&mut FdWriter(fd)) {
                Ok(_) => continue,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
            let mut waiting = WaitingWriter { stream, cx };
            match self.conn.write_tls(&mut waiting) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

/// Non-blocking writes of TLS records straight to the fd (vectored, `MSG_NOSIGNAL`).
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: a zeroed msghdr is valid (no name, no control); `IoSlice` is guaranteed
        // ABI-compatible with `iovec` on Unix, and the slices outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len();
        loop {
            // SAFETY: as above.
            let n = unsafe { libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n as usize); // non-negative here
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// glommio's write as an `io::Write`: `Pending` becomes `WouldBlock`, with the waker left with
/// the stream, so rustls keeps the records and the task is woken when the socket is writable.
struct WaitingWriter<'a, 'b> {
    stream: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for WaitingWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The sans-IO glue against an in-memory rustls client: no socket, no runtime.

    use std::time::Duration;

    use bytes::Bytes;
    use rustls::pki_types::ServerName;

    use super::*;

    struct Pair {
        server: TlsConn,
        client: rustls::ClientConnection,
        /// Plaintext the server side produced.
        plaintext: BytesMut,
    }

    fn pair() -> Pair {
        let cert = rcgen::generate_simple_self_signed(vec!["gate.test".into()]).expect("rcgen");
        let certs = vec![cert.cert.der().clone()];
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = crate::tls::server_config_from(certs, key).expect("server config");
        let client = crate::tls::client_config(cert.cert.pem().as_bytes()).expect("client config");
        let name = ServerName::try_from("gate.test").expect("name");
        Pair {
            server: TlsConn::new(Arc::new(server), Instant::now() + Duration::from_secs(5))
                .expect("server conn"),
            client: rustls::ClientConnection::new(Arc::new(client), name).expect("client conn"),
            plaintext: BytesMut::new(),
        }
    }

    impl Pair {
        /// Client records to the server, fed in pieces of `step` bytes.
        fn client_to_server(&mut self, step: usize) -> Result<Absorbed, TlsFailure> {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).expect("client write");
            }
            let mut state = Absorbed::Open;
            for piece in wire.chunks(step.max(1)) {
                state = self.server.absorb(piece, &mut self.plaintext)?;
            }
            Ok(state)
        }

        /// Server records to the client; returns the client's plaintext.
        fn server_to_client(&mut self) -> Vec<u8> {
            let mut wire = Vec::new();
            while self.server.conn.wants_write() {
                self.server.conn.write_tls(&mut wire).expect("server write");
            }
            let mut slice = &wire[..];
            let mut got = Vec::new();
            while !slice.is_empty() {
                self.client.read_tls(&mut slice).expect("client read");
                self.client.process_new_packets().expect("client process");
                // WouldBlock once drained: what was there is in `got`.
                let _ = self.client.reader().read_to_end(&mut got);
            }
            got
        }

        fn handshake(&mut self, step: usize) {
            for _ in 0..4 {
                self.client_to_server(step).expect("handshake");
                self.server_to_client();
            }
            assert!(!self.server.conn.is_handshaking());
            assert!(!self.client.is_handshaking());
        }
    }

    #[test]
    fn handshake_clears_the_deadline_and_plaintext_reaches_the_read_buffer() {
        let mut p = pair();
        assert!(p.server.deadline().is_some());
        p.handshake(usize::MAX);
        assert_eq!(p.server.deadline(), None);
        p.client
            .writer()
            .write_all(b"GET /ws HTTP/1.1\r\n")
            .expect("write");
        assert_eq!(
            p.client_to_server(usize::MAX).expect("data"),
            Absorbed::Open
        );
        assert_eq!(&p.plaintext[..], b"GET /ws HTTP/1.1\r\n");
    }

    #[test]
    fn records_split_at_any_offset_give_the_same_plaintext() {
        for step in [1, 3, 5, 64, 1000] {
            let mut p = pair();
            p.handshake(step);
            let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
            p.client.writer().write_all(&data).expect("write");
            p.client_to_server(step).expect("data");
            assert_eq!(&p.plaintext[..], &data[..], "step {step}");
        }
    }

    #[test]
    fn queued_frames_are_sealed_within_the_buffer_limit_and_arrive_whole() {
        let mut p = pair();
        p.handshake(usize::MAX);
        let mut out = OutQueue::default();
        // WebSocket-framed: each frame goes out as two buffers (its header, then the frame).
        out.set_websocket();
        let frame = crate::delivery::OutFrame::frame(Bytes::from(vec![7u8; 10_000]));
        for _ in 0..20 {
            out.push(frame.clone());
        }
        let total = out.bytes();
        let taken = p.server.seal(&mut out).expect("seal");
        assert!(taken <= TLS_BUFFER_LIMIT + 16 * 1024, "{taken}");
        assert!(taken < total, "the limit held part of the queue back");
        let mut got = p.server_to_client();
        while !out.is_empty() {
            p.server.seal(&mut out).expect("seal");
            got.extend(p.server_to_client());
        }
        assert_eq!(got.len(), total);
        let one: Vec<u8> = [&[0x82, 126, 0x27, 0x10][..], &[7u8; 10_000][..]].concat();
        assert_eq!(got, one.repeat(20));
    }

    #[test]
    fn garbage_hello_is_a_protocol_error_with_an_alert() {
        let mut p = pair();
        let err = p
            .server
            .absorb(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut p.plaintext)
            .unwrap_err();
        assert!(matches!(err, TlsFailure::Protocol(_)), "{err}");
        assert!(p.server.wants_write(), "an alert is queued");
        assert!(p.plaintext.is_empty());
        p.server.close_notify();
    }

    #[test]
    fn close_notify_from_the_client_ends_the_input() {
        let mut p = pair();
        p.handshake(usize::MAX);
        p.client.send_close_notify();
        assert_eq!(
            p.client_to_server(usize::MAX).expect("close"),
            Absorbed::PeerClosed
        );
    }
}
