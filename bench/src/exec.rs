//! One load executor (a glommio `LocalExecutor` pinned to one core) and the connection shell its
//! tasks share, for every scenario.
//!
//! Owns, per executor: the one large read buffer every connection reads into (a connection keeps
//! only the unparsed tail of its last read, usually nothing), the control block of each of its
//! connections (fd, ACK-flush flag, waker), the wakers of its senders waiting for window room,
//! and its latency histogram (recorded by the handlers as they parse, handed back when the
//! executor ends). Counters go to the executor's slot in [`Shared`] once per read, not per
//! message.
//!
//! The supervisor task is the executor's one periodic timer: every `ack_flush` it asks the
//! connections holding a partial ACK batch to send it, and at [`Phase::Done`] it closes the
//! pacing service and shuts every socket down so the connection tasks see end of stream and
//! return. The other timer is the [`Pace`] driver's, which wakes open-loop senders when they are
//! due (one task and one timer per executor, whatever the number of senders).
//!
//! Never shared across threads except through [`Shared`] (atomics): the rest is `Rc`/`Cell`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::coord::{Counts, Phase, Shared, SpawnConns, Stats};
use crate::drive::{Handler, Received};
use crate::latency::Latency;
use crate::pace::Pace;

/// Bytes of the executor's read buffer (also the most one `recv` asks for).
const READ_BUF: usize = 256 * 1024;
/// Room always left after a connection's carried bytes.
const MIN_READ: usize = 16 * 1024;

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The server closed the connection while the run was on.
    Closed,
    Frame(gate::protocol::FrameError),
    Body(crate::wire::BodyParseError),
    Decode(prost::DecodeError),
    Nats(crate::nats::NatsError),
    /// nats-server sent `-ERR`.
    NatsErr(String),
    LoginRefused {
        code: u32,
        message: String,
    },
    Kicked {
        reason: u32,
    },
    /// ERROR frame from the gate.
    Refused {
        code: u32,
    },
    /// A PULL answered with a non-OK code.
    PullFailed {
        code: u32,
    },
    /// A NOTIFY about a conversation this connection does not pull (single chats are pushed).
    UnexpectedNotify,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Body(e) => write!(f, "bad frame body: {e}"),
            Self::Decode(e) => write!(f, "undecodable body: {e}"),
            Self::Nats(e) => write!(f, "bad nats input: {e}"),
            Self::NatsErr(text) => write!(f, "nats-server sent -ERR {text}"),
            Self::LoginRefused { code, message } => {
                write!(f, "LOGIN refused with code {code}: {message}")
            }
            Self::Kicked { reason } => write!(f, "KICK with reason {reason}"),
            Self::Refused { code } => write!(f, "ERROR frame with code {code}"),
            Self::PullFailed { code } => write!(f, "PULL answered with code {code}"),
            Self::UnexpectedNotify => f.write_str("NOTIFY about a conversation it does not pull"),
        }
    }
}

impl std::error::Error for ConnError {}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What a connection shares with its executor's supervisor.
#[derive(Default)]
pub struct ConnCtl {
    /// The socket, once connected (-1 before).
    fd: Cell<RawFd>,
    /// The connection holds ids not yet sent in an ACK.
    acks_pending: Cell<bool>,
    /// Raised by the supervisor: send the partial ACK batch now.
    flush: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// One executor's context, shared by its tasks.
pub struct Exec {
    pub index: usize,
    pub shared: Arc<Shared>,
    /// Length of the measured window (senders stop at the start plus this).
    pub duration: Duration,
    buf: RefCell<Vec<u8>>,
    conns: RefCell<Vec<Rc<ConnCtl>>>,
    senders_waiting: RefCell<Vec<Waker>>,
    latency: RefCell<Latency>,
    /// Wakes senders at their due times (open-loop schedule, end of the window).
    pub pace: Pace,
}

impl Exec {
    pub fn stats(&self) -> &Stats {
        &self.shared.stats[self.index]
    }

    /// Nanoseconds from the run's start to `now` (0 before the start or while it is unset).
    pub fn ns_since_start(&self, now: Instant) -> u64 {
        self.shared.start().map_or(0, |start| {
            u64::try_from(now.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// Wakes this executor's senders waiting for window room (deliveries arrived).
    pub fn wake_senders(&self) {
        let mut waiting = self.senders_waiting.borrow_mut();
        for waker in waiting.drain(..) {
            waker.wake();
        }
    }

    /// Parks a sender until [`Exec::wake_senders`].
    pub fn wait_for_window(&self, waker: &Waker) {
        let mut waiting = self.senders_waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }

    /// A connection is logged in (gate) or subscribed (nats).
    pub fn joined(&self) {
        self.stats().connections.fetch_add(1, Ordering::Relaxed);
        self.shared.joined();
    }

    /// A connection has ended.
    pub fn left(&self) {
        self.stats().connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts what one connection read and lets waiting senders look at their window again.
    pub fn count(&self, counts: &Counts) {
        if counts.is_empty() {
            return;
        }
        self.stats().add(counts);
        if counts.delivered > 0 {
            self.wake_senders();
        }
    }
}

/// One connection's socket, carried input and output buffer.
pub struct Conn {
    stream: TcpStream,
    carry: Vec<u8>,
    pub out: Vec<u8>,
    pub ctl: Rc<ConnCtl>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The fd closes with the stream: the supervisor must not shut down a reused number.
        self.ctl.fd.set(-1);
        self.ctl.acks_pending.set(false);
    }
}

/// What woke a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Bytes were read and parsed.
    Input,
    /// End of stream.
    Eof,
    /// The supervisor asks for the partial ACK batch.
    Flush,
    /// Something the caller polled (window room, a timer) is ready.
    Ready,
}

impl Conn {
    pub async fn connect(exec: &Exec, addr: SocketAddr) -> Result<Self, ConnError> {
        let stream = TcpStream::connect(addr).await.map_err(io::Error::from)?;
        stream.set_nodelay(true).map_err(io::Error::from)?;
        let ctl = Rc::new(ConnCtl::default());
        ctl.fd.set(stream.as_raw_fd());
        exec.conns.borrow_mut().push(Rc::clone(&ctl));
        Ok(Self {
            stream,
            carry: Vec::new(),
            out: Vec::with_capacity(4096),
            ctl,
        })
    }

    /// Writes and clears the output buffer (one `send` unless the socket is full).
    pub async fn flush_out(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Marks whether ids wait for an ACK, so the supervisor knows whom to ask.
    pub fn set_acks_pending(&self, pending: bool) {
        self.ctl.acks_pending.set(pending);
    }

    /// Waits for the next event. `h` parses the unread bytes (carry, then the new read) and
    /// appends answers to the output buffer; `ready` is polled after the input and returns true
    /// when the caller has something to do.
    pub async fn next_event<H, R>(
        &mut self,
        exec: &Exec,
        h: &mut H,
        mut ready: R,
    ) -> Result<Event, ConnError>
    where
        H: Handler,
        R: FnMut(&mut Context<'_>, &H) -> bool,
    {
        poll_fn(|cx| {
            if self.ctl.flush.take() {
                return Poll::Ready(Ok(Event::Flush));
            }
            if let Poll::Ready(r) = self.poll_input(cx, exec, h) {
                return Poll::Ready(r);
            }
            if ready(cx, h) {
                return Poll::Ready(Ok(Event::Ready));
            }
            if self.ctl.acks_pending.get() {
                self.ctl.waker.set(Some(cx.waker().clone()));
            }
            Poll::Pending
        })
        .await
    }

    /// One read into the executor's buffer after this connection's carried bytes, parsed at once.
    fn poll_input<H: Handler>(
        &mut self,
        cx: &mut Context<'_>,
        exec: &Exec,
        h: &mut H,
    ) -> Poll<Result<Event, ConnError>> {
        let mut buf = exec.buf.borrow_mut();
        let carried = self.carry.len();
        if buf.len() < carried + MIN_READ {
            buf.resize(carried + MIN_READ, 0);
        }
        buf[..carried].copy_from_slice(&self.carry);
        let n = match Pin::new(&mut self.stream).poll_read(cx, &mut buf[carried..]) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Event::Eof)),
            Poll::Ready(Ok(n)) => n,
        };
        let filled = carried + n;
        // One clock read per read: every message in it arrived at the same time.
        let mut rx = Received {
            now_ns: exec.ns_since_start(Instant::now()),
            latency: &mut exec.latency.borrow_mut(),
        };
        let consumed = match h.feed(&buf[..filled], &mut self.out, &mut rx) {
            Ok(consumed) => consumed,
            Err(e) => return Poll::Ready(Err(e)),
        };
        self.carry.clear();
        self.carry.extend_from_slice(&buf[consumed..filled]);
        Poll::Ready(Ok(Event::Input))
    }
}

/// Runs one executor: spawns its connections, supervises until [`Phase::Done`], and returns its
/// latencies.
pub async fn run(
    index: usize,
    shared: Arc<Shared>,
    ack_flush: Duration,
    duration: Duration,
    spawn: SpawnConns,
) -> Latency {
    let exec = Rc::new(Exec {
        index,
        shared,
        duration,
        buf: RefCell::new(vec![0; READ_BUF]),
        conns: RefCell::new(Vec::new()),
        senders_waiting: RefCell::new(Vec::new()),
        latency: RefCell::new(Latency::new()),
        pace: Pace::default(),
    });
    let driver = {
        let exec = Rc::clone(&exec);
        glommio::spawn_local(async move { exec.pace.drive(&exec.shared).await })
    };
    let tasks = spawn(&exec);
    let tick = ack_flush;
    while exec.shared.phase() != Phase::Done {
        glommio::timer::sleep(tick).await;
        for ctl in exec.conns.borrow().iter() {
            if ctl.acks_pending.get() {
                ctl.flush.set(true);
                if let Some(waker) = ctl.waker.take() {
                    waker.wake();
                }
            }
        }
    }
    exec.pace.close();
    for ctl in exec.conns.borrow().iter() {
        let fd = ctl.fd.get();
        if fd >= 0 {
            // SAFETY: `fd` is the open socket of a live `TcpStream` owned by a task of this
            // executor (it is closed only when that task ends, after this loop: tasks do not run
            // while this one does). Shutting it down makes its pending reads see end of stream.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }
    let joined = glommio::timer::timeout(Duration::from_secs(3), async {
        for task in tasks {
            task.await;
        }
        driver.await;
        Ok(())
    })
    .await;
    if joined.is_err() {
        eprintln!("imgate-bench: executor {index}: connections did not end within 3 s");
    }
    exec.latency.replace(Latency::new())
}
