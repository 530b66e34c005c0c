//! Listening sockets and the accept loop.
//!
//! Every shard has its own socket on the same address (socket2, `SO_REUSEPORT`, the configured
//! backlog), created on the main thread so that port 0 resolves once and every shard binds the
//! same port; the kernel spreads new connections across them. At the open-file limit (or when
//! the kernel is out of buffers) the loop backs off instead of spinning. A shard at its share of
//! `limits.max_connections` still accepts, answers the first bytes with KICK 2 (`reconnect_to` =
//! `gate.peers`, a jittered `retry_after_ms`) and closes; a WebSocket client gets it after its
//! upgrade, in a binary message, then close 1013.
//!
//! With `gate.tls_listen` every shard has a second socket, bound the same way, and a second
//! accept loop that gives each connection a fresh TLS layer (the shard's own copy of the server
//! configuration) and a handshake deadline. A TLS connection the shard cannot take gets its
//! handshake and then the same answer inside TLS (PROTOCOL.md: a full gate accepts and sends
//! KICK 2), all within the login timeout: a handshake is the price of telling the client where
//! to go instead of leaving it to retry here blindly.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};
use socket2::{Domain, Protocol, Socket, Type};

use super::StartError;
use super::conn::{Absorbed, Arrival, TlsConn, capacity_answer, linger, serve};
use super::io::OutQueue;
use super::state::Shard;
use crate::config::{Settings, WsSettings};
use crate::protocol::pb::Kick;
use crate::protocol::{KickReason, MsgType, cmd, encode_frame};

/// Pause after an accept that failed for want of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// One listening socket per shard, all on `addr` (`gate.listen` or `gate.tls_listen`). Returns
/// them and the bound address.
pub(crate) fn bind_all(
    settings: &Settings,
    mut addr: SocketAddr,
) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    if addr.port() != 0 {
        ensure_port_free(addr).map_err(|source| StartError::Listen { addr, source })?;
    }
    let mut fds = Vec::with_capacity(settings.shards.get());
    for _ in 0..settings.shards.get() {
        let socket = bind_one(addr, settings.listen_backlog)
            .map_err(|source| StartError::Listen { addr, source })?;
        if let Ok(Some(bound)) = socket.local_addr().map(|a| a.as_socket()) {
            addr = bound;
        }
        fds.push(OwnedFd::from(socket));
    }
    Ok((fds, addr))
}

/// Refuses an address something else already listens on. The shards bind with SO_REUSEPORT,
/// which would otherwise let a second gate (or any process of the same user) started on the
/// same port by mistake silently take a share of the new connections. A probe bound *without*
/// SO_REUSEPORT fails where any listener exists, and is closed before the shards bind.
fn ensure_port_free(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR only: connections of an earlier run in TIME_WAIT must not block a restart.
    probe.set_reuse_address(true)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use by another listener (another gate?); \
             refusing to share it through SO_REUSEPORT",
        )),
        other => other,
    }
}

fn bind_one(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// A warning when the shards' pinned io_memory (3 x per shard) exceeds `RLIMIT_MEMLOCK`:
/// glommio then only logs that registration failed and runs slower.
pub(crate) fn memlock_warning(settings: &Settings) -> Option<String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let needed = 3 * settings.io_memory as u64 * settings.shards.get() as u64;
    (needed > limit.rlim_cur).then(|| {
        format!(
            "3 x gate.io_memory_kib x shards = {} KiB exceeds the memlock limit of {} KiB (shared by all of this user's processes); \
             raise LimitMEMLOCK / ulimit -l or lower gate.io_memory_kib",
            needed / 1024,
            limit.rlim_cur / 1024
        )
    })
}

/// Accepts until the future is dropped (at stop). `tls`: the listener is `gate.tls_listen`,
/// and each connection starts with a TLS layer on this configuration.
pub(crate) async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let now = Instant::now();
                let tls = match &tls {
                    None => None,
                    Some(config) => match tls_layer(&shard, config, now) {
                        Some(layer) => Some(layer),
                        None => continue, // dropping the stream closes it
                    },
                };
                let arrival = Arrival {
                    accepted_at: now,
                    login_deadline: now + shard.settings.login_timeout,
                    buffered: BytesMut::new(),
                    websocket: None,
                    tls,
                };
                admit(&shard, stream, arrival);
            }
            Err(err) => {
                let err = io::Error::from(err);
                let starved = matches!(
                    err.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(shard = shard.index, %err, "accept failed");
                    last_warning = Some(Instant::now());
                }
                if starved {
                    glommio::timer::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// A new connection's TLS layer, its handshake due `gate.tls_handshake_timeout_ms` from now.
fn tls_layer(
    shard: &Shard,
    config: &Arc<rustls::ServerConfig>,
    now: Instant,
) -> Option<Box<TlsConn>> {
    let timeout = shard.settings.tls.as_ref()?.handshake_timeout;
    match TlsConn::new(Arc::clone(config), now + timeout) {
        Ok(layer) => Some(Box::new(layer)),
        Err(err) => {
            tracing::warn!(shard = shard.index, %err, "cannot start a TLS connection");
            None
        }
    }
}

/// Serves a new or adopted connection, or turns it away if the shard is full or stopping.
pub(crate) fn admit(shard: &Rc<Shard>, stream: TcpStream, arrival: Arrival) {
    // Frames are coalesced by the gate itself; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    if shard.at_capacity() || shard.stopping.get() {
        let retry_after_ms = 1000 + (shard.random() % 4000) as u32;
        let kick = Kick {
            reason: KickReason::Draining.wire(),
            message: "gate at capacity".into(),
            reconnect_to: shard.settings.peers.clone(),
            retry_after_ms,
        };
        let refusal = Refusal {
            kick: encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &kick),
            ws: shard.settings.ws.clone(),
            wait: shard.settings.login_timeout,
        };
        if arrival.tls.is_some() {
            glommio::spawn_local(refuse_tls(stream, arrival, refusal)).detach();
        } else {
            glommio::spawn_local(refuse(stream, arrival, refusal)).detach();
        }
        return;
    }
    glommio::spawn_local(serve(Rc::clone(shard), stream, arrival)).detach();
}

/// How a connection the shard cannot take is sent away.
pub(crate) struct Refusal {
    /// KICK 2 with `reconnect_to` and `retry_after_ms`.
    pub kick: Bytes,
    pub ws: WsSettings,
    /// Longest wait for the first bytes (the login timeout).
    pub wait: Duration,
}

/// KICK 2 for a connection the shard cannot take, once its first bytes show it is a client:
/// a TCP client gets the frame; an HTTP client is upgraded first when its request is a valid
/// upgrade (then gets the KICK in a binary message and close 1013), or gets the HTTP refusal.
async fn refuse(mut stream: TcpStream, mut arrival: Arrival, refusal: Refusal) {
    let answer = async {
        loop {
            match capacity_answer(&arrival, &refusal) {
                Some(answer) => return Ok(Some(answer)),
                None => {
                    let mut chunk = [0u8; 1024];
                    match futures_lite::AsyncReadExt::read(&mut stream, &mut chunk).await {
                        Ok(n) if n > 0 => arrival.buffered.extend_from_slice(&chunk[..n]),
                        // Gone before saying anything.
                        _ => return Ok(None),
                    }
                }
            }
        }
    };
    let answer: Bytes = match glommio::timer::timeout(refusal.wait, answer).await {
        Ok(Some(answer)) => answer,
        _ => return,
    };
    let _ = futures_lite::AsyncWriteExt::write_all(&mut stream, &answer).await;
    linger(&mut stream, &mut arrival.buffered).await;
}

/// [`refuse`] on the TLS port: the handshake first (a full gate still answers as PROTOCOL.md
/// says: it accepts and sends KICK 2), then the same answer inside TLS, `close_notify`, close.
/// Bounded like the plain refusal: all of it within the login timeout.
async fn refuse_tls(mut stream: TcpStream, mut arrival: Arrival, refusal: Refusal) {
    use std::os::fd::AsRawFd;
    let Some(mut tls) = arrival.tls.take() else {
        return;
    };
    let fd = stream.as_raw_fd();
    let exchange = async {
        let mut out = OutQueue::default();
        let mut chunk = [0u8; 4096];
        loop {
            // Handshake records (or an alert) first.
            std::future::poll_fn(|cx| tls.poll_flush(&mut out, fd, &mut stream, cx)).await?;
            if let Some(answer) = capacity_answer(&arrival, &refusal) {
                out.push(crate::delivery::OutFrame::raw(answer));
                // The answer goes into records before the close alert (rustls takes no data
                // after close_notify).
                std::future::poll_fn(|cx| tls.poll_flush(&mut out, fd, &mut stream, cx)).await?;
                tls.close_notify();
                std::future::poll_fn(|cx| tls.poll_flush(&mut out, fd, &mut stream, cx)).await?;
                return Ok(true);
            }
            let n = futures_lite::AsyncReadExt::read(&mut stream, &mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            match tls.absorb(&chunk[..n], &mut arrival.buffered) {
                Ok(Absorbed::Open) => {}
                Ok(Absorbed::PeerClosed) => return Ok(false),
                // A garbage hello: send the alert rustls queued, if any, and stop.
                Err(_) => {
                    let _ =
                        std::future::poll_fn(|cx| tls.poll_flush(&mut out, fd, &mut stream, cx))
                            .await;
                    return Ok(false);
                }
            }
        }
    };
    let answered: std::io::Result<bool> =
        match glommio::timer::timeout(refusal.wait, async { Ok(exchange.await) }).await {
            Ok(result) => result,
            Err(_) => Ok(false),
        };
    if matches!(answered, Ok(true)) {
        linger(&mut stream, &mut arrival.buffered).await;
    }
}
