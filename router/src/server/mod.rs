//! The link server: accepts gate links, runs the [`Hub`] (route table, downlink split per gate
//! shard, duplicate-login kicks) around a [`Service`] (the reference IM logic by default), and
//! serves the HTTP API.
//!
//! The IO shell is one glommio executor ("the router thread"): every link and HTTP connection is
//! a task on it, and the hub is touched only by that thread (a `RefCell`, no lock). Each link has
//! one bounded [`LinkQueue`] (`router.link_queue`): a gate that lets it fill is too slow and its
//! link is closed (it reconnects and resyncs; what it missed stays in the backend for PULL).
//!
//! Embedding: [`start_with`] runs the server around any [`Service`]; [`start`] around the
//! reference IM logic.

pub mod http;
pub mod hub;
pub mod service;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

pub use hub::{Hub, HubError, LinkId, Out};
pub use service::{ReferenceIm, Service};

use crate::config::RouterSettings;
use crate::link::frame::{FrameDecoder, LinkError, encode_batch};
use crate::link::handshake::{self, CAPABILITIES, VERSION};
use crate::link::io::{LinkQueue, Liveness, drive, read_frame, write_all};
use crate::link::link_msg::Body;
use crate::link::{LinkMsg, Welcome};

/// How long a new connection has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of a running router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Gate links up.
    pub links: usize,
    /// Online sessions over all gates (routes).
    pub sessions: usize,
}

/// Counters the router thread publishes for other threads (relaxed atomics, off the hot path:
/// written once per flush).
#[derive(Debug, Default)]
struct PublishedStats {
    links: AtomicUsize,
    sessions: AtomicUsize,
}

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the router thread: {0}")]
    Executor(String),
    #[error("cannot open the reference backend's data: {0}")]
    Storage(#[from] crate::im::recovery::RecoveryError),
}

/// A running router. Dropping it stops it: listeners and every link close.
pub struct RouterHandle {
    stats: Arc<PublishedStats>,
    link_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    stop: std::os::unix::net::UnixStream,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl RouterHandle {
    /// The bound link address (the resolved port when `router.listen` has port 0).
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// The bound HTTP API address, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The router's counters as last published by its thread.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            links: self.stats.links.load(Ordering::Relaxed),
            sessions: self.stats.sessions.load(Ordering::Relaxed),
        }
    }

    /// Closes the listeners and every link, and waits for the router thread to exit.
    pub fn stop(self) {}
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        let _ = std::io::Write::write_all(&mut &self.stop, b"x");
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long a starting router waits for its address to be released.
const BIND_PATIENCE: Duration = Duration::from_secs(3);

fn bind(addr: SocketAddr) -> Result<(OwnedFd, SocketAddr), StartError> {
    // std sets SO_REUSEADDR, so connections of a previous router do not hold the port. Its
    // listening socket may: an io_uring accept in flight keeps it open until the kernel tears the
    // old ring down, which it does asynchronously after the old executor (or process) ended. So
    // an address in use is retried for a few seconds before it is an error.
    let deadline = std::time::Instant::now() + BIND_PATIENCE;
    let listener = loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => break listener,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(StartError::Listen { addr, source }),
        }
    };
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen { addr, source })?;
    Ok((OwnedFd::from(listener), local))
}

/// Starts the router around the reference IM logic: its data opened from `backend.data_dir`
/// (replayed before the router listens) or fresh in memory.
pub fn start(settings: RouterSettings) -> Result<RouterHandle, StartError> {
    let service = match &settings.storage {
        Some(storage) => {
            let started = std::time::Instant::now();
            let opened = crate::im::recovery::open(storage, &settings.im, now_ms())?;
            tracing::info!(
                dir = %storage.dir.display(),
                partitions = settings.im.partitions,
                records = opened.records(),
                ms = started.elapsed().as_millis() as u64,
                "reference backend data loaded"
            );
            ReferenceIm::opened(opened)
        }
        None => {
            tracing::warn!(
                "backend.data_dir is empty: messages are kept in memory only and lost when the router stops"
            );
            ReferenceIm::new(settings.im.clone())
        }
    };
    start_with(settings, move |_| service)
}

/// How often the router lets its service do timed work ([`Service::tick`]).
const SERVICE_TICK: Duration = Duration::from_millis(50);

/// Starts the router around the [`Service`] `make` builds on the router thread.
pub fn start_with<S, F>(settings: RouterSettings, make: F) -> Result<RouterHandle, StartError>
where
    S: Service + 'static,
    F: FnOnce(&RouterSettings) -> S + Send + 'static,
{
    let (link_fd, link_addr) = bind(settings.listen)?;
    let (http_fd, http_addr) = match settings.http_listen {
        Some(addr) => {
            let (fd, local) = bind(addr)?;
            (Some(fd), Some(local))
        }
        None => (None, None),
    };
    let (stop, stop_theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| StartError::Executor(format!("stop socket: {e}")))?;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let stop_theirs = OwnedFd::from(stop_theirs);
    let stats = Arc::new(PublishedStats::default());
    let published = Arc::clone(&stats);
    let thread = LocalExecutorBuilder::new(Placement::Unbound)
        .name("imgate-router")
        .io_memory(settings.io_memory)
        .spawn(move || async move {
            let service = make(&settings);
            let server = Rc::new(Server {
                settings,
                hub: RefCell::new(Hub::new(service)),
                links: RefCell::default(),
                http: http::HttpState::default(),
                published,
            });
            // SAFETY: the fds are ours alone; the glommio wrappers take over closing them.
            let listener = unsafe { TcpListener::from_raw_fd(link_fd.into_raw_fd()) };
            let http_listener =
                http_fd.map(|fd| unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) });
            let mut stop =
                unsafe { glommio::net::UnixStream::from_raw_fd(stop_theirs.into_raw_fd()) };
            let _ = ready_tx.send(());
            let ticking = Rc::downgrade(&server);
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(SERVICE_TICK).await;
                    let Some(server) = ticking.upgrade() else {
                        return;
                    };
                    server.hub.borrow_mut().service_mut().tick(now_ms());
                }
            })
            .detach();
            let serving = async {
                if let Some(http_listener) = http_listener {
                    glommio::spawn_local(http::accept_loop(Rc::clone(&server), http_listener))
                        .detach();
                }
                accept_loop(Rc::clone(&server), listener).await;
            };
            let stopped = async {
                let mut byte = [0u8; 1];
                let _ = futures_lite::AsyncReadExt::read(&mut stop, &mut byte).await;
            };
            futures_lite::future::or(serving, stopped).await;
            tracing::info!("router stopping");
            for queue in server.links.borrow().values() {
                queue.close();
            }
        })
        .map_err(|e| StartError::Executor(e.to_string()))?;
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| StartError::Executor("the router thread did not start".into()))?;
    tracing::info!(link = %link_addr, http = ?http_addr, "router accepting");
    Ok(RouterHandle {
        stats,
        link_addr,
        http_addr,
        stop,
        thread: Some(thread),
    })
}

/// Blocks SIGINT and SIGTERM in the calling thread and returns the set, for `sigwait`. Called
/// before any other thread exists, so every thread inherits the mask and only the waiting one
/// receives them (the router's and the gate's `run`).
pub fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on values we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Starts the router and runs it until SIGINT or SIGTERM.
pub fn run(settings: RouterSettings) -> Result<(), StartError> {
    let set = block_stop_signals();
    let handle = start(settings)?;
    // Listening and accepting: tell systemd (Type=notify), and keep its watchdog fed.
    if let Err(err) = crate::sdnotify::ready() {
        tracing::warn!(%err, "could not send READY=1 to systemd");
    }
    crate::sdnotify::spawn_watchdog("router");
    let mut signal = 0;
    // SAFETY: waits on the set built above.
    unsafe { libc::sigwait(&set, &mut signal) };
    tracing::info!(signal, "stopping");
    let _ = crate::sdnotify::stopping();
    handle.stop();
    Ok(())
}

/// The router thread's state.
pub(crate) struct Server<S> {
    pub settings: RouterSettings,
    pub hub: RefCell<Hub<S>>,
    links: RefCell<HashMap<LinkId, Rc<LinkQueue>>>,
    pub http: http::HttpState,
    published: Arc<PublishedStats>,
}

impl<S: Service> Server<S> {
    /// Carries out what the hub asked for.
    pub fn flush(&self) {
        let (outs, stats) = {
            let mut hub = self.hub.borrow_mut();
            (hub.drain().collect::<Vec<Out>>(), hub.stats())
        };
        self.published.links.store(stats.links, Ordering::Relaxed);
        self.published
            .sessions
            .store(stats.sessions, Ordering::Relaxed);
        if outs.is_empty() {
            return;
        }
        let links = self.links.borrow();
        for out in outs {
            match out {
                Out::Link(link, msg) => {
                    if let Some(queue) = links.get(&link)
                        && queue.push(msg).is_err()
                    {
                        tracing::warn!(
                            link,
                            "link queue full (router.link_queue): the gate is too slow; closing its link"
                        );
                        queue.close();
                    }
                }
                Out::Close(link) => {
                    if let Some(queue) = links.get(&link) {
                        queue.close();
                    }
                }
                Out::Local { origin, reply } => self.http.answer(origin, reply),
            }
        }
    }
}

async fn accept_loop<S: Service + 'static>(server: Rc<Server<S>>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve_link(Rc::clone(&server), stream)).detach();
            }
            Err(err) => {
                tracing::warn!(%err, "link accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One link: handshake, then [`drive`] until it ends.
async fn serve_link<S: Service + 'static>(server: Rc<Server<S>>, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let decoder = FrameDecoder::new(server.settings.max_frame);
    let mut rbuf = BytesMut::new();
    let first = futures_lite::future::or(read_frame(&mut stream, &mut rbuf, decoder), async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        Err(LinkError::Silent {
            ms: HELLO_TIMEOUT.as_millis() as u64,
        })
    })
    .await;
    let first = match first {
        Ok(first) => first,
        Err(err) => {
            tracing::warn!(?peer, %err, "link refused before its handshake");
            return;
        }
    };
    let accepted = handshake::accept_hello(first).and_then(|(hello, rest)| {
        Ok((server.hub.borrow_mut().open(&hello, now_ms())?, hello, rest))
    });
    let (link, hello, rest) = match accepted {
        Ok(ok) => ok,
        Err(refusal) => {
            tracing::warn!(?peer, reason = %refusal.reason, "link refused");
            if let Ok(frame) = encode_batch(&[refusal.to_msg()], handshake_max()) {
                let _ = write_all(&mut stream, &frame).await;
            }
            let _ = stream.shutdown(std::net::Shutdown::Both).await;
            return;
        }
    };
    tracing::info!(?peer, link, gate = %hello.gate_id, shard = hello.shard, shards = hello.shards, "link up");
    let queue = Rc::new(LinkQueue::new(server.settings.link_queue));
    server.links.borrow_mut().insert(link, Rc::clone(&queue));
    server.flush(); // closes the link this one replaced
    let welcome = LinkMsg::event(Body::Welcome(Welcome {
        version: VERSION,
        backend_id: server.settings.id.clone(),
        capabilities: CAPABILITIES & hello.capabilities,
        heartbeat_ms: server.settings.heartbeat.as_millis() as u32,
        max_frame: server.settings.max_frame as u32,
    }));
    // The Welcome goes first; answers to what followed the Hello queue behind it.
    let _ = queue.push(welcome);
    let input = |msgs: Vec<LinkMsg>| -> Result<(), LinkError> {
        let mut result = Ok(());
        {
            let mut hub = server.hub.borrow_mut();
            let now = now_ms();
            for msg in msgs {
                if let Err(err) = hub.input(link, msg, now) {
                    result = Err(LinkError::Unexpected(match err {
                        HubError::Unexpected(what) => what,
                        HubError::NoRequestId => "a request without a request_id",
                        HubError::Empty => "a message without a body",
                    }));
                    break;
                }
            }
        }
        server.flush();
        result
    };
    let ended = match input(rest) {
        Err(err) => err,
        Ok(()) => {
            let liveness = Liveness {
                heartbeat: server.settings.heartbeat,
                silence: Duration::from_millis(u64::from(hello.heartbeat_ms) * 3),
            };
            drive(
                &mut stream,
                &queue,
                rbuf,
                decoder,
                hello.max_frame as usize,
                liveness,
                |batch| input(batch.msgs),
            )
            .await
        }
    };
    match &ended {
        LinkError::Closed => tracing::info!(?peer, link, "link closed"),
        err => tracing::warn!(?peer, link, %err, "link closed"),
    }
    server.links.borrow_mut().remove(&link);
    queue.clear();
    server.hub.borrow_mut().close(link, now_ms());
    server.flush();
    let _ = stream.shutdown(std::net::Shutdown::Both).await;
}

/// The frame limit for a Refused sent before the peer announced its own.
fn handshake_max() -> usize {
    crate::link::frame::MIN_MAX_FRAME
}

pub(crate) fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
