//! The socket shell shared by the scenarios: opening a connection from a chosen source address
//! ([`open`]), and one read into the executor's shared buffer parsed at once
//! ([`poll_read_parsed`], used by `fanout` too), and [`Link`], a gate connection of the `connect`
//! and `idle` scenarios (socket + the unparsed tail of its last read).
//!
//! A connection keeps no read buffer of its own: it reads into its executor's one large buffer,
//! after the bytes it carried over from the previous read (usually none), and keeps only the
//! incomplete tail. Nothing here allocates per frame.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWriteExt};
use gate::protocol::FrameError;
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

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
