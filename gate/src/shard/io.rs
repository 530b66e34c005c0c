//! Raw socket IO under the glommio stream: reads straight into a connection's own buffer and
//! vectored writes of its outbound queue.
//!
//! glommio 0.9's `TcpStream` reads only into initialised slices and has no vectored write, so
//! the fast paths here issue `recv`/`sendmsg` with `MSG_DONTWAIT` on the raw fd. Only when the
//! kernel says `EAGAIN` does the connection task fall back to the stream's own poll functions,
//! whose sole job is then to wait for readiness (they retry the syscall once themselves and, if
//! it would still block, arm an io_uring poll). See `conn.rs`.
//!
//! Small frames are coalesced on the way out: a flush copies frames of up to
//! [`COALESCE_MAX`] bytes, in order, into the shard thread's staging buffer (256 KiB, reused by
//! every flush, so it stays in cache), and neighbours go to the kernel as one iovec; larger
//! frames go as iovecs of their own, uncopied. The queue itself still holds shared frames and
//! is advanced by what the kernel took, so a partial write is resumed from the queue. Why: the
//! kernel copies each iovec separately, with a fixed cost per iovec that a fan-out's ~120-byte
//! PUSHes paid a thousand times per `sendmsg` (see the commit for the figures).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use bytes::BytesMut;

use crate::delivery::SharedFrame;

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

/// Queue slots kept when a write empties the queue: more means a busy connection, which keeps
/// them until it is quiet ([`OutQueue::release`]); fewer are freed at once.
const KEEP_WHEN_EMPTY: usize = 16;

/// Frames (or WebSocket headers) up to this size are coalesced in the staging buffer.
pub(crate) const COALESCE_MAX: usize = 512;

/// Bytes of the staging buffer: at most this much is coalesced per `sendmsg`.
const STAGING_BYTES: usize = 256 * 1024;

thread_local! {
    /// The shard thread's staging buffer (module doc). Only `OutQueue::write_to` uses it, and
    /// only within one call.
    static STAGING: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(STAGING_BYTES));
}

/// A connection's outbound frames. Holds [`SharedFrame`]s (a pointer each: a PUSH is one
/// buffer for every recipient, never copied) and writes them with one `sendmsg` per up to
/// [`IOVECS_PER_WRITE`] buffers. On a WebSocket connection each frame but a raw one goes out
/// behind its binary-message header, a buffer of its own inside the shared frame, so framing
/// copies nothing either. Bounded by the caller, which checks [`OutQueue::bytes`] against its
/// limit before pushing.
///
/// A busy queue's capacity (more than `KEEP_WHEN_EMPTY` slots) is kept when it empties, so a
/// fan-out does not regrow it every loop turn; [`OutQueue::release`] gives it back once the
/// connection is quiet. A small one is freed when it empties, so an idle connection holds none.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<SharedFrame>,
    /// Bytes of the front frame's wire form (header included) already written.
    front_written: usize,
    /// Queued wire bytes not yet written.
    bytes: usize,
    /// Frames go out as WebSocket binary messages.
    websocket: bool,
}

impl OutQueue {
    /// Queues `frame`; returns its bytes on the wire.
    pub fn push(&mut self, frame: SharedFrame) -> usize {
        let len = self.wire_len(&frame);
        self.bytes += len;
        self.frames.push_back(frame);
        len
    }

    /// What `frame` would add to [`Self::bytes`].
    pub fn wire_len(&self, frame: &SharedFrame) -> usize {
        // A raw frame has no WebSocket header to add.
        frame.wire_len(self.websocket)
    }

    /// Frames go out as WebSocket binary messages.
    pub fn is_websocket(&self) -> bool {
        self.websocket
    }

    /// From now on frames go out as WebSocket binary messages (set before any is queued).
    pub fn set_websocket(&mut self) {
        self.websocket = true;
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queued bytes not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Drops everything queued (a slow consumer's backlog before its KICK) and its capacity.
    pub fn clear(&mut self) {
        self.frames = VecDeque::new();
        self.front_written = 0;
        self.bytes = 0;
    }

    /// Gives the queue's capacity back if nothing is queued (the connection is quiet).
    pub fn release(&mut self) {
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// The unwritten buffers, in order, without empty ones.
    fn pieces(&self) -> impl Iterator<Item = &[u8]> {
        let websocket = self.websocket;
        let mut skip = self.front_written;
        self.frames
            .iter()
            .flat_map(move |frame| frame.wire(websocket))
            .filter_map(move |piece| {
                // Only the front frame's pieces are skipped: `skip` is below its wire length.
                if skip >= piece.len() {
                    skip -= piece.len();
                    None
                } else {
                    let rest = &piece[skip..];
                    skip = 0;
                    Some(rest)
                }
            })
    }

    /// The first unwritten buffer, for the stream's own (waiting) write.
    pub fn front(&self) -> Option<&[u8]> {
        self.pieces().next()
    }

    /// The queued buffers as `IoSlice`s, as many as `slices` holds; returns how many (for the
    /// TLS layer's vectored write into rustls).
    pub fn io_slices<'a>(&'a self, slices: &mut [std::io::IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, piece) in slices.iter_mut().zip(self.pieces()) {
            *slot = std::io::IoSlice::new(piece);
            count += 1;
        }
        count
    }

    /// Marks `n` bytes written.
    pub fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        // Also pops an empty frame at the front, which no write would ever take.
        while let Some(front) = self.frames.front() {
            let left = self.wire_len(front) - self.front_written;
            if n < left {
                self.front_written += n;
                return;
            }
            n -= left;
            self.front_written = 0;
            self.frames.pop_front();
        }
        if self.frames.is_empty() && self.frames.capacity() <= KEEP_WHEN_EMPTY {
            // A connection that gets a frame now and then (a login answer, a chat) holds no
            // output capacity while idle; a busy one keeps its larger queue (`release`).
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes without blocking. `Done(())` when the queue is empty.
    pub fn write_to(&mut self, fd: RawFd) -> io::Result<Nb<()>> {
        STAGING.with(|staging| match staging.try_borrow_mut() {
            Ok(mut staging) => self.write_staged(fd, &mut staging),
            // Not reachable (one flush at a time per thread); without the buffer nothing is
            // coalesced, and everything still goes out.
            Err(_) => self.write_staged(fd, &mut Vec::new()),
        })
    }

    fn write_staged(&mut self, fd: RawFd, staging: &mut Vec<u8>) -> io::Result<Nb<()>> {
        while !self.frames.is_empty() {
            // Uninitialised: only the first `count` are written and passed (16 KiB of zeroing
            // per call otherwise).
            let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; IOVECS_PER_WRITE];
            staging.clear();
            let count = if self.websocket {
                gather(&mut iov, staging, self.pieces())
            } else {
                // TCP: one buffer per frame, the front one less what was written (the general
                // `pieces` walk was 4 % of a fan-out).
                let mut frames = self.frames.iter().map(|frame| &frame.bytes()[..]);
                let front = frames.next().map(|bytes| &bytes[self.front_written..]);
                gather(&mut iov, staging, front.into_iter().chain(frames))
            };
            // SAFETY: zeroed msghdr is valid (no name, no control); iov points at `count`
            // initialised iovecs over buffers that outlive the call (queued frames, and the
            // staging buffer, untouched until the next loop).
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

/// Writes iovecs for `pieces`, in order, into `iov`: runs of pieces of up to
/// [`COALESCE_MAX`] bytes are copied into `staging` (never beyond its capacity, so it does
/// not move) and take one iovec per run; larger pieces, and small ones once `staging` is full,
/// one each. Stops when `iov` is full; returns how many iovecs were written (at least one if
/// there is a piece).
fn gather<'a>(
    iov: &mut [MaybeUninit<libc::iovec>],
    staging: &mut Vec<u8>,
    pieces: impl Iterator<Item = &'a [u8]>,
) -> usize {
    let mut count = 0;
    // The open run in `staging` (offset, length); its iovec is slot `count - 1`.
    let mut run: Option<(usize, usize)> = None;
    for piece in pieces {
        // A small piece that no longer fits goes uncopied, like a large one.
        if piece.len() <= COALESCE_MAX && staging.len() + piece.len() <= staging.capacity() {
            let offset = staging.len();
            let (_, len) = match &mut run {
                Some(open) => open,
                None if count == iov.len() => break,
                None => {
                    count += 1;
                    run.insert((offset, 0))
                }
            };
            *len += piece.len();
            staging.extend_from_slice(piece);
            continue;
        }
        if let Some((offset, len)) = run.take() {
            iov[count - 1].write(staged(staging, offset, len));
        }
        if count == iov.len() {
            break;
        }
        iov[count].write(libc::iovec {
            iov_base: piece.as_ptr() as *mut _,
            iov_len: piece.len(),
        });
        count += 1;
    }
    if let Some((offset, len)) = run {
        iov[count - 1].write(staged(staging, offset, len));
    }
    count
}

/// The iovec of `len` staged bytes at `offset`.
fn staged(staging: &[u8], offset: usize, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: staging[offset..].as_ptr() as *mut _,
        iov_len: len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::OutFrame;
    use bytes::Bytes;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn frame(bytes: impl Into<Bytes>) -> SharedFrame {
        OutFrame::frame(bytes.into())
    }

    #[test]
    fn queue_writes_every_frame_in_order_and_keeps_its_capacity_until_released() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutQueue::default();
        for i in 0..200u8 {
            q.push(frame(vec![i; 3]));
        }
        assert_eq!(q.bytes(), 600);
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        let mut got = vec![0u8; 600];
        b.read_exact(&mut got).unwrap();
        let want: Vec<u8> = (0..200u8).flat_map(|i| [i; 3]).collect();
        assert_eq!(got, want);
        assert!(
            q.frames.capacity() >= 200,
            "a busy queue keeps its capacity"
        );
        q.release();
        assert_eq!(q.frames.capacity(), 0);
        // A frame now and then: nothing kept once it is written.
        q.push(frame(vec![9u8; 3]));
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        assert_eq!(
            q.frames.capacity(),
            0,
            "a small queue is freed when it empties"
        );
    }

    #[test]
    fn more_frames_than_one_sendmsg_takes_all_go_out_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutQueue::default();
        let count = IOVECS_PER_WRITE * 2 + 7;
        for i in 0..count {
            q.push(frame((i as u32).to_be_bytes().to_vec()));
        }
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        let mut got = vec![0u8; count * 4];
        b.read_exact(&mut got).unwrap();
        let want: Vec<u8> = (0..count as u32).flat_map(u32::to_be_bytes).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn small_neighbours_share_an_iovec_and_large_or_unstaged_pieces_get_their_own() {
        let small = [1u8; 100];
        let large = [2u8; COALESCE_MAX + 1];
        let pieces: Vec<&[u8]> = vec![&small, &small, &small, &large, &small, &small];
        let mut iov = [const { MaybeUninit::<libc::iovec>::uninit() }; 8];
        let mut staging = Vec::with_capacity(1024);
        assert_eq!(gather(&mut iov, &mut staging, pieces.iter().copied()), 3);
        // SAFETY: gather initialised the first 3.
        let lens: Vec<usize> = iov[..3]
            .iter()
            .map(|v| unsafe { v.assume_init_ref() }.iov_len)
            .collect();
        assert_eq!(lens, [300, COALESCE_MAX + 1, 200]);
        assert_eq!(staging.len(), 500);
        // No room to stage: every piece on its own, nothing lost.
        let mut none = Vec::new();
        assert_eq!(gather(&mut iov, &mut none, pieces.iter().copied()), 6);
        // Fewer slots than runs: stops at the last whole slot.
        let mut two = [const { MaybeUninit::<libc::iovec>::uninit() }; 2];
        staging.clear();
        assert_eq!(gather(&mut two, &mut staging, pieces.iter().copied()), 2);
    }

    #[test]
    fn a_full_socket_takes_coalesced_frames_in_pieces_and_they_arrive_whole_and_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        q.set_websocket();
        let mut want = Vec::new();
        for i in 0..20_000u32 {
            // Sizes around the coalescing limit, so runs and uncopied frames interleave.
            let len = [3, 120, COALESCE_MAX, COALESCE_MAX + 7][(i % 4) as usize];
            let body = vec![(i % 251) as u8; len];
            let f = frame(body.clone());
            want.extend_from_slice(f.wire(true)[0]);
            want.extend_from_slice(&body);
            q.push(f);
        }
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let done = matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(()));
            // Drain what the socket holds.
            b.set_nonblocking(true).unwrap();
            while let Ok(n) = b.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
            }
            if done {
                break;
            }
        }
        assert_eq!(q.bytes(), 0);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes arrive whole and in order");
    }

    #[test]
    fn an_empty_frame_does_not_stall_the_queue() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut q = OutQueue::default();
        q.push(frame(&b"ab"[..]));
        q.push(OutFrame::raw(Bytes::new()));
        q.push(frame(&b"cd"[..]));
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        assert!(q.is_empty());
        let mut got = [0u8; 4];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcd");
        // Alone, too.
        q.push(OutFrame::raw(Bytes::new()));
        assert!(matches!(q.write_to(a.as_raw_fd()).unwrap(), Nb::Done(())));
        assert!(q.is_empty());
    }

    #[test]
    fn partial_writes_resume_mid_frame() {
        let mut q = OutQueue::default();
        q.push(frame(&b"hello"[..]));
        q.push(frame(&b"world"[..]));
        q.advance(3);
        assert_eq!(q.front(), Some(&b"lo"[..]));
        q.advance(4);
        assert_eq!(q.front(), Some(&b"rld"[..]));
        assert_eq!(q.bytes(), 3);
    }

    #[test]
    fn websocket_frames_go_out_behind_their_header_and_raw_bytes_as_they_are() {
        let mut q = OutQueue::default();
        q.set_websocket();
        let raw = OutFrame::raw(Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"));
        assert_eq!(q.push(raw), 16);
        assert_eq!(q.push(frame(vec![1u8; 30])), 32);
        assert_eq!(q.push(frame(vec![2u8; 300])), 304);
        assert_eq!(q.bytes(), 16 + 32 + 304);
        // Written a byte at a time through the headers: every cut resumes where it stopped.
        let mut wire = Vec::new();
        while let Some(front) = q.front() {
            wire.push(front[0]);
            q.advance(1);
        }
        assert_eq!(q.bytes(), 0);
        let mut want = b"HTTP/1.1 101\r\n\r\n".to_vec();
        want.extend([0x82, 30]);
        want.extend([1u8; 30]);
        want.extend([0x82, 126, 1, 44]);
        want.extend([2u8; 300]);
        assert_eq!(wire, want);
    }

    #[test]
    fn full_socket_reports_would_block_and_keeps_the_rest() {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = OutQueue::default();
        let big = frame(vec![7u8; 64 * 1024]);
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
