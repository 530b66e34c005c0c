//! One load executor (a glommio `LocalExecutor` pinned to one core) and the connection shell its
//! tasks share.
//!
//! Owns, per executor: the one large read buffer every connection reads into (a connection keeps
//! only the unparsed tail of its last read, usually nothing), the control block of each of its
//! connections (fd, ACK-flush flag, waker), and the wakers of its publishers waiting for window
//! room. Counters go to the executor's slot in [`Shared`] once per read, not per message.
//!
//! The supervisor task is the executor's one periodic timer: every `ack_flush` it asks the
//! connections holding a partial ACK batch to send it, and at [`Phase::Done`] it shuts every
//! socket down so the connection tasks see end of stream and return.
//!
//! Never shared across threads except through [`Shared`] (atomics): the rest is `Rc`/`Cell`.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::drive::{Handler, window_room};
use super::{ConnSpec, Phase, Plan, Shared, Stats, Target};
use crate::link::{Input, poll_read_parsed};

/// Bytes of the executor's read buffer (also the most one `recv` asks for).
const READ_BUF: usize = 256 * 1024;

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnError {
    Io(io::Error),
    /// The server closed the connection while the run was on.
    Closed,
    Frame(gate::protocol::FrameError),
    Push(crate::wire::PushParseError),
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
    SendFailed {
        code: u32,
        message: String,
    },
    /// A NOTIFY instead of PUSH: the group is above the gate's `backend.push_threshold`.
    Notify,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "i/o error: {e}"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Push(e) => write!(f, "bad PUSH: {e}"),
            Self::Decode(e) => write!(f, "undecodable body: {e}"),
            Self::Nats(e) => write!(f, "bad nats input: {e}"),
            Self::NatsErr(text) => write!(f, "nats-server sent -ERR {text}"),
            Self::LoginRefused { code, message } => {
                write!(f, "LOGIN refused with code {code}: {message}")
            }
            Self::Kicked { reason } => write!(f, "KICK with reason {reason}"),
            Self::Refused { code } => write!(f, "ERROR frame with code {code}"),
            Self::SendFailed { code, message } => {
                write!(f, "SEND answered with code {code}: {message}")
            }
            Self::Notify => f.write_str(
                "got NOTIFY instead of PUSH: run the gate with backend.push_threshold >= members + publishers",
            ),
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
    pub plan: Arc<Plan>,
    buf: RefCell<Vec<u8>>,
    conns: RefCell<Vec<Rc<ConnCtl>>>,
    publishers_waiting: RefCell<Vec<Waker>>,
}

impl Exec {
    pub fn stats(&self) -> &Stats {
        &self.shared.stats[self.index]
    }

    /// Wakes this executor's publishers waiting for window room (deliveries arrived).
    pub fn wake_publishers(&self) {
        let mut waiting = self.publishers_waiting.borrow_mut();
        for waker in waiting.drain(..) {
            waker.wake();
        }
    }

    /// Parks a publisher until [`Exec::wake_publishers`].
    pub fn wait_for_window(&self, waker: &Waker) {
        let mut waiting = self.publishers_waiting.borrow_mut();
        if !waiting.iter().any(|w| w.will_wake(waker)) {
            waiting.push(waker.clone());
        }
    }

    /// A connection is logged in (gate) or subscribed (nats).
    pub fn joined(&self) {
        self.stats().connections.fetch_add(1, Ordering::Relaxed);
        self.shared.ready.fetch_add(1, Ordering::Release);
    }

    /// A connection has ended.
    pub fn left(&self) {
        self.stats().connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Messages all publishers may add now (see `drive::window_room`).
    pub fn window_room(&self) -> u64 {
        let totals = self.shared.totals();
        window_room(
            totals.published,
            totals.unique(),
            self.plan.recipients,
            self.plan.window_msgs,
        )
    }

    /// Counts deliveries read by one connection and lets publishers look at the window again.
    pub fn delivered(&self, n: u64, repeats: u64) {
        if repeats > 0 {
            self.stats().repeats.fetch_add(repeats, Ordering::Relaxed);
        }
        if n > 0 {
            self.stats().add_delivered(n);
            self.wake_publishers();
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
        let out = &mut self.out;
        poll_read_parsed(&mut self.stream, cx, &mut buf, &mut self.carry, |bytes| {
            h.feed(bytes, out)
        })
        .map_ok(|input| match input {
            Input::Parsed => Event::Input,
            Input::Eof => Event::Eof,
        })
    }
}

/// Runs one executor: spawns its connections, then supervises until [`Phase::Done`].
pub async fn run(index: usize, shared: Arc<Shared>, plan: Arc<Plan>, specs: Vec<ConnSpec>) {
    let exec = Rc::new(Exec {
        index,
        shared,
        plan,
        buf: RefCell::new(vec![0; READ_BUF]),
        conns: RefCell::new(Vec::with_capacity(specs.len())),
        publishers_waiting: RefCell::new(Vec::new()),
    });
    let mut tasks = Vec::with_capacity(specs.len());
    for spec in specs {
        let exec = Rc::clone(&exec);
        tasks.push(glommio::spawn_local(async move {
            let result = match exec.plan.target {
                Target::Gate => super::gate_side::conn(&exec, spec).await,
                Target::Nats => super::nats_side::conn(&exec, spec).await,
            };
            if let Err(e) = result {
                exec.shared.record_error(format!("uid {}: {e}", spec.uid));
            }
        }));
    }
    let tick = exec.plan.ack_flush;
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
        Ok(())
    })
    .await;
    if joined.is_err() {
        eprintln!("imgate-bench: executor {index}: connections did not end within 3 s");
    }
}
