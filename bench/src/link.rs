//! The socket shell shared by the scenarios: opening a connection from a chosen source address
//! ([`open`]), and one read into the executor's shared buffer parsed at once
//! ([`poll_read_parsed`], used by `fanout` too), and [`Link`], a gate connection of the `connect`
//! and `idle` scenarios (socket + the unparsed tail of its last read), and [`Signal`], how a
//! supervisor task pokes a connection task.
//!
//! A connection keeps no read buffer of its own: it reads into its executor's one large buffer,
//! after the bytes it carried over from the previous read (usually none), and keeps only the
//! incomplete tail. Nothing here allocates per frame.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWriteExt};
use gate::protocol::{DEFAULT_MAX_FRAME, FrameError, HEADER_LEN};
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

use crate::login::{Failure, LoggedIn, on_frame, put_logout};
use crate::wire::{RawFrame, split_frame};

/// Room always left after a connection's carried bytes.
pub const MIN_READ: usize = 16 * 1024;

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Bytes were read and handed to the parser.
    Parsed,
    /// End of stream.
    Eof,
}

/// How a connection ends when the tool closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CloseMode {
    /// `SO_LINGER` 0: `close` sends RST; neither side keeps TIME_WAIT.
    Reset,
    /// LOGOUT, then wait for the gate to close first: the gate's side keeps TIME_WAIT (in its
    /// kernel, not its process), the tool's none.
    Logout,
}

impl CloseMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Reset => "reset",
            Self::Logout => "logout",
        }
    }
}

/// A non-blocking TCP socket bound to `source` (port 0, chosen at `connect` by the kernel with
/// `IP_BIND_ADDRESS_NO_PORT`, so a port is unique per 4-tuple rather than per source address),
/// with `TCP_NODELAY`, `SO_LINGER` 0 when `reset_on_close`, and its `connect` to `dest` started.
/// The connection completes in the background: the first write waits for it (`EAGAIN` until
/// established), and a refused connection shows as that write's error.
pub fn open(source: Ipv4Addr, dest: SocketAddr, reset_on_close: bool) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    if reset_on_close {
        socket.set_linger(Some(Duration::ZERO))?;
    }
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a live c_int and its size.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(source.into(), 0).into())?;
    match socket.connect(&dest.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: `into_raw_fd` hands over the one owner of an open TCP socket.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// One read into `buf` after the bytes `carry` holds, parsed by `feed` (which returns how many
/// bytes it consumed); the unconsumed tail goes back into `carry`.
pub fn poll_read_parsed<E: From<io::Error>>(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut Vec<u8>,
    carry: &mut Vec<u8>,
    feed: impl FnOnce(&[u8]) -> Result<usize, E>,
) -> Poll<Result<Input, E>> {
    let carried = carry.len();
    if buf.len() < carried + MIN_READ {
        buf.resize(carried + MIN_READ, 0);
    }
    buf[..carried].copy_from_slice(carry);
    let n = match Pin::new(stream).poll_read(cx, &mut buf[carried..]) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
        Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Input::Eof)),
        Poll::Ready(Ok(n)) => n,
    };
    let filled = carried + n;
    let consumed = match feed(&buf[..filled]) {
        Ok(consumed) => consumed,
        Err(e) => return Poll::Ready(Err(e)),
    };
    carry.clear();
    carry.extend_from_slice(&buf[consumed..filled]);
    Poll::Ready(Ok(Input::Parsed))
}

/// A gate connection of the login scenarios.
pub struct Link {
    stream: TcpStream,
    carry: Vec<u8>,
}

impl Link {
    /// See [`open`].
    pub fn open(source: Ipv4Addr, dest: SocketAddr, close: CloseMode) -> io::Result<Self> {
        Ok(Self {
            stream: open(source, dest, close == CloseMode::Reset)?,
            carry: Vec::new(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Writes all of `bytes` (waiting for the connection to be established, or the socket to
    /// drain).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// One read, every complete frame handed to `on_frame` in order (it may stop the parse with
    /// an error).
    pub fn poll_frames<E>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut Vec<u8>,
        max_frame: u32,
        mut on_frame: impl FnMut(RawFrame<'_>) -> Result<(), E>,
    ) -> Poll<Result<Input, E>>
    where
        E: From<io::Error> + From<FrameError>,
    {
        poll_read_parsed(&mut self.stream, cx, buf, &mut self.carry, |bytes| {
            let mut at = 0;
            while let Some((frame, n)) = split_frame(&bytes[at..], max_frame)? {
                on_frame(frame)?;
                at += n;
            }
            Ok(at)
        })
    }
}

impl Link {
    /// Sends the pre-encoded LOGIN `frame` and reads until its LoginResp (answering PINGs).
    /// Errors until the LOGIN is written are [`Failure::Connect`]: the connection was never
    /// established.
    pub async fn login(
        &mut self,
        buf: &RefCell<Vec<u8>>,
        frame: &[u8],
    ) -> Result<LoggedIn, Failure> {
        self.send(frame).await.map_err(Failure::Connect)?;
        let mut out = Vec::new(); // stays unallocated unless the gate PINGs before answering
        loop {
            let mut logged_in = None;
            let input = poll_fn(|cx| {
                let mut buf = buf.borrow_mut();
                self.poll_frames(cx, &mut buf, DEFAULT_MAX_FRAME, |f| {
                    if let Some(l) = on_frame(f, &mut out)? {
                        logged_in = Some(l);
                    }
                    Ok::<_, Failure>(())
                })
            })
            .await?;
            if let Some(l) = logged_in {
                return Ok(l);
            }
            if input == Input::Eof {
                return Err(Failure::Closed);
            }
            if !out.is_empty() {
                self.send(&out).await?;
                out.clear();
            }
        }
    }

    /// Sends LOGOUT and reads until the gate closes (PROTOCOL.md: it answers, then closes).
    pub async fn logout(&mut self, buf: &RefCell<Vec<u8>>, max_frame: u32) -> Result<(), Failure> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        put_logout(&mut out);
        self.send(&out).await?;
        out.clear();
        loop {
            let input = poll_fn(|cx| {
                let mut buf = buf.borrow_mut();
                self.poll_frames(cx, &mut buf, max_frame, |f| on_frame(f, &mut out).map(drop))
            })
            .await?;
            if input == Input::Eof {
                return Ok(());
            }
        }
    }
}

/// A flag one task raises and another awaits, on one executor (no atomics): how a supervisor
/// tells a connection task its deadline passed, a PING is due, or the run is over.
#[derive(Default)]
pub struct Signal {
    raised: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    /// Raises the flag and wakes the waiting task, if any.
    pub fn raise(&self) {
        self.raised.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes the flag if raised; otherwise remembers `cx`'s waker for [`Signal::raise`].
    pub fn poll_take(&self, cx: &mut Context<'_>) -> bool {
        if self.raised.take() {
            return true;
        }
        let waker = self.waker.take();
        self.waker.set(match waker {
            Some(w) if w.will_wake(cx.waker()) => Some(w),
            _ => Some(cx.waker().clone()),
        });
        false
    }

    /// Lowers the flag without waiting.
    pub fn clear(&self) {
        self.raised.set(false);
    }

    /// Completes once the flag is raised (and takes it).
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            if self.poll_take(cx) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}
