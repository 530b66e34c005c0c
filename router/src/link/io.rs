//! The glommio shell of one link connection, shared by both ends (the gate's remote plug-in and
//! the router's link server): a bounded outgoing queue, and [`drive`], the connection's one task
//! after the handshake.
//!
//! Owns, per link: the [`LinkQueue`] of messages waiting to be framed (bounded; what happens when
//! full is the caller's policy, named where it pushes), the read and write buffers, and the
//! liveness clock. Writes are coalesced: every message queued since the task last ran is framed
//! into one frame (or several, if they pass the peer's `max_frame`) and written together.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::frame::{FrameDecoder, FrameEncoder, LinkError};
use super::link_msg::Body;
use super::{Batch, LinkMsg};

/// Bytes read from the socket per read call.
const READ_CHUNK: usize = 64 << 10;

/// Read/write rounds one poll of a link may run before it yields to other tasks.
const TURNS_PER_POLL: usize = 32;

/// The queue is full: the message was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Messages waiting for the link's task to frame and write them. Shard-local.
pub struct LinkQueue {
    msgs: RefCell<VecDeque<LinkMsg>>,
    cap: usize,
    waker: Cell<Option<Waker>>,
    /// Set by [`close`](Self::close): the task ends the link at its next poll.
    closed: Cell<bool>,
}

impl LinkQueue {
    /// A queue of at most `cap` messages.
    pub fn new(cap: usize) -> Self {
        Self {
            msgs: RefCell::default(),
            cap: cap.max(1),
            waker: Cell::new(None),
            closed: Cell::new(false),
        }
    }

    /// Queues `msg` unless `cap` messages are already waiting; wakes the link's task.
    pub fn push(&self, msg: LinkMsg) -> Result<(), QueueFull> {
        let mut msgs = self.msgs.borrow_mut();
        if msgs.len() >= self.cap {
            return Err(QueueFull);
        }
        msgs.push_back(msg);
        drop(msgs);
        self.wake();
        Ok(())
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.msgs.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.borrow().is_empty()
    }

    /// Room left.
    pub fn room(&self) -> usize {
        self.cap - self.len().min(self.cap)
    }

    /// Asks the link's task to end the connection.
    pub fn close(&self) {
        self.closed.set(true);
        self.wake();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Drops whatever is waiting (the link is gone).
    pub fn clear(&self) {
        self.msgs.borrow_mut().clear();
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// How a link keeps time.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Send a Heartbeat after this long without sending anything.
    pub heartbeat: Duration,
    /// Close the link after this long without receiving anything (3 x the peer's heartbeat).
    pub silence: Duration,
}

/// Writes `bytes` whole.
pub async fn write_all(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), LinkError> {
    stream.write_all(bytes).await?;
    Ok(())
}

/// Reads until one whole frame is in `rbuf` and returns it (the handshake). Bytes after it stay
/// in `rbuf`.
pub async fn read_frame(
    stream: &mut TcpStream,
    rbuf: &mut BytesMut,
    decoder: FrameDecoder,
) -> Result<Batch, LinkError> {
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if let Some(batch) = decoder.decode(rbuf)? {
            return Ok(batch);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        rbuf.extend_from_slice(&chunk[..n]);
    }
}

/// Runs an established link until it fails or is closed: frames and writes what `queue` holds
/// (coalesced), reads frames and hands each batch to `on_batch` (whose `Err` ends the link),
/// sends heartbeats and ends a silent link. `rbuf` holds bytes read past the handshake.
/// Returns why the link ended.
pub async fn drive(
    stream: &mut TcpStream,
    queue: &LinkQueue,
    mut rbuf: BytesMut,
    decoder: FrameDecoder,
    peer_max_frame: usize,
    liveness: Liveness,
    mut on_batch: impl FnMut(Batch) -> Result<(), LinkError>,
) -> LinkError {
    let mut encoder = FrameEncoder::new(peer_max_frame);
    let mut wbuf = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK];
    let last_rx = Cell::new(Instant::now());
    let last_tx = Cell::new(Instant::now());
    let io = poll_fn(|cx| {
        for _ in 0..TURNS_PER_POLL {
            if queue.closed.get() {
                return Poll::Ready(LinkError::Closed);
            }
            // Frame everything queued since the last turn: one frame per turn.
            {
                let mut msgs = queue.msgs.borrow_mut();
                for msg in msgs.drain(..) {
                    if let Err(err) = encoder.push(&msg, &mut wbuf) {
                        tracing::error!(%err, "link message dropped: larger than the peer's max_frame");
                    }
                }
                encoder.finish(&mut wbuf);
            }
            let mut progress = false;
            while !wbuf.is_empty() {
                match Pin::new(&mut *stream).poll_write(cx, &wbuf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(LinkError::Closed),
                    Poll::Ready(Ok(n)) => {
                        wbuf.advance(n);
                        last_tx.set(Instant::now());
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(LinkError::Io(e)),
                    Poll::Pending => break,
                }
            }
            match Pin::new(&mut *stream).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => return Poll::Ready(LinkError::Closed),
                Poll::Ready(Ok(n)) => {
                    rbuf.extend_from_slice(&chunk[..n]);
                    last_rx.set(Instant::now());
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(LinkError::Io(e)),
                Poll::Pending => {}
            }
            loop {
                match decoder.decode(&mut rbuf) {
                    Ok(Some(batch)) => {
                        if let Err(err) = on_batch(batch) {
                            return Poll::Ready(err);
                        }
                    }
                    Ok(None) => break,
                    Err(err) => return Poll::Ready(err),
                }
            }
            if !progress && (queue.is_empty() || !wbuf.is_empty()) {
                queue.waker.set(Some(cx.waker().clone()));
                // Queued while we were decoding? Run again rather than sleep on it.
                if queue.is_empty() || !wbuf.is_empty() {
                    return Poll::Pending;
                }
            }
        }
        // Still busy: let the executor's other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    });
    let clock = async {
        let tick = liveness
            .heartbeat
            .min(liveness.silence / 3)
            .max(Duration::from_millis(10));
        loop {
            glommio::timer::sleep(tick).await;
            let now = Instant::now();
            if now.duration_since(last_rx.get()) >= liveness.silence {
                return LinkError::Silent {
                    ms: liveness.silence.as_millis() as u64,
                };
            }
            if now.duration_since(last_tx.get()) >= liveness.heartbeat && queue.is_empty() {
                // Room is not checked: a heartbeat on a full queue would be redundant anyway.
                let _ = queue.push(LinkMsg::event(Body::Heartbeat(Default::default())));
            }
        }
    };
    futures_lite::future::or(io, clock).await
}
