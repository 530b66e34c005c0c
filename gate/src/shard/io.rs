//! Raw socket IO under the glommio stream: reads straight into a connection's own buffer and
//! vectored writes of its outbound queue.
//!
//! glommio 0.9's `TcpStream` reads only into initialised slices and has no vectored write, so
//! the fast paths here issue `recv`/`sendmsg` with `MSG_DONTWAIT` on the raw fd. Only when the
//! kernel says `EAGAIN` does the connection task fall back to the stream's own poll functions,
//! whose sole job is then to wait for readiness (they retry the syscall once themselves and, if
//! it would still block, arm an io_uring poll). See `conn.rs`.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use bytes::{Buf, Bytes, BytesMut};

/// Outcome of a non-blocking syscall.
pub enum Nb<T> {
    Done(T),
    WouldBlock,
}

/// `recv` up to `max` bytes into the spare capacity of `buf` (reserving it first).
/// `Done(0)` is end of stream.
pub(crate) fn recv_into(fd: RawFd, buf: &mut BytesMut, max: usize) -> io::Result<Nb<usize>> {
    buf.reserve(max);
    loop {
        let spare = buf.spare_capacity_mut();
        let len = spare.len().min(max);
        // SAFETY: `spare` is valid for `len` writable bytes; recv writes at most `len` bytes and
        // reports how many, and only those are marked initialised below.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
        if n >= 0 {
            let n = n as usize; // non-negative and at most `len`
            // SAFETY: the kernel initialised exactly `n` bytes past the current length.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(Nb::Done(n));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(Nb::WouldBlock),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Whether the peer has closed: a non-blocking one-byte peek reads end of stream (or an error).
/// Data waiting, or nothing yet, means alive.
pub(crate) fn peer_closed(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: one writable byte on the stack.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_PEEK,
        )
    };
    if n >= 0 {
        return n == 0;
    }
    !matches!(
        io::Error::last_os_error().kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Most iovecs passed to one `sendmsg`: Linux's IOV_MAX. A fan-out queues hundreds of small
/// PUSHes per connection per loop turn; with 64 per call the gate made 15 times as many
/// `sendmsg` calls and delivered 27 % less (3.03 → 4.16 M deliveries/s, 1,000 members).
const IOVECS_PER_WRITE: usize = 1024;

/// A connection's outbound buffers. Holds shared `Bytes` (never copied per recipient) and is
/// written with one `sendmsg` per up to [`IOVECS_PER_WRITE`] of them. On a WebSocket
/// connection each frame is preceded by its header as a buffer of its own (see
/// `ConnShared::push`), so the frame is still the shared one. Bounded by the caller,
/// which checks [`OutQueue::bytes`] against its limit before pushing.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    pub fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queued bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything queued (a slow consumer's backlog before its KICK).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// The unwritten part of the first frame, for the stream's own (waiting) write.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|b| &b[..])
    }

    /// The queued buffers as `IoSlice`s, as many as `slices` holds; returns how many (for the
    /// TLS layer's vectored write into rustls).
    pub fn io_slices<'a>(&'a self, slices: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(self.frames.iter()) {
            *slot = std::io::IoSlice::new(frame);
            count += 1;
        }
        count
    }

    /// Marks `n` bytes written.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.frames.pop_front();
        }
        if self.frames.is_empty() {
            // An idle connection keeps no output capacity.
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes without blocking. `Done(())` when the queue is empty.
    pub fn write_to(&mut self, fd: RawFd) -> io::Result<Nb<()>> {
        while !self.frames.is_empty() {
            // Uninitialised: only the first `count` are written and passed (16 KiB of zeroing
            // per call otherwise).
            let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; IOVECS_PER_WRITE];
            let mut count = 0;
            for (slot, frame) in iov.iter_mut().zip(self.frames.iter()) {
                slot.write(libc::iovec {
                    iov_base: frame.as_ptr() as *mut _,
                    iov_len: frame.len(),
                });
                count += 1;
            }
            // SAFETY: zeroed msghdr is valid (no name, no control); iov points at `count`
            // initialised iovecs over buffers that outlive the call.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr().cast::<libc::iovec>();
            msg.msg_iovlen = count;
            // MSG_NOSIGNAL: a peer that closed yields EPIPE, never SIGPIPE.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return Ok(Nb::WouldBlock),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
            self.advance(n as usize); // non-negative here
        }
        Ok(Nb::Done(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn queue_writes_every_frame_in_order_and_releases_its_capacity() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutQueue::default();
        for i in 0..200u8 {
            q.push(Bytes::from(vec![i; 3]));
        }
        assert_eq!(q.bytes(), 600);
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.frames.capacity(), 0);
        let mut got = vec![0u8; 600];
        b.read_exact(&mut got).unwrap();
        let want: Vec<u8> = (0..200u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b"world"));
        q.advance(3);
        assert_eq!(q.front(), Some(&b"lo"[..]));
        q.advance(4);
        assert_eq!(q.front(), Some(&b"rld"[..]));
        assert_eq!(q.bytes(), 3);
    }

    #[test]
    fn full_socket_reports_would_block_and_keeps_the_rest() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let big = Bytes::from(vec![7u8; 64 * 1024]);
        for _ in 0..64 {
            q.push(big.clone());
        }
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::WouldBlock));
        assert!(q.bytes() > 0 && q.bytes() < 64 * 64 * 1024);
    }

    #[test]
    fn recv_into_reads_what_is_there_and_reports_end_of_stream() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = BytesMut::new();
        assert!(matches!(
            recv_into(b.as_raw_fd(), &mut buf, 64).unwrap(),
            Nb::WouldBlock
        ));
        (&a).write_all_ok(b"abc");
        assert!(matches!(
            recv_into(b.as_raw_fd(), &mut buf, 64).unwrap(),
            Nb::Done(3)
        ));
        assert_eq!(&buf[..], b"abc");
        assert!(!peer_closed(b.as_raw_fd()));
        drop(a);
        assert!(peer_closed(b.as_raw_fd()));
        assert!(matches!(
            recv_into(b.as_raw_fd(), &mut buf, 64).unwrap(),
            Nb::Done(0)
        ));
    }

    trait WriteAllOk {
        fn write_all_ok(self, bytes: &[u8]);
    }
    impl WriteAllOk for &UnixStream {
        fn write_all_ok(mut self, bytes: &[u8]) {
            std::io::Write::write_all(&mut self, bytes).unwrap();
        }
    }
}
