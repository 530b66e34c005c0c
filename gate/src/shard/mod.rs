//! The IO shell: one glommio executor per shard, pinned to a core, each accepting on its own
//! `SO_REUSEPORT` socket, handing connections to the shard that owns their uid, and running the
//! connection tasks around the sans-IO cores.
//!
//! Rooms: `listener` (sockets, accept, capacity; the TLS port too), `conn` (one task per
//! connection: reads, session, vectored writes; `conn/tls.rs`: the TLS layer), `handoff` (fd moves between shards), `timer` (the shard's one
//! runtime timer over its wheel), `state` (what a shard owns), `io` (raw socket calls),
//! `uplink` (client requests → link requests), `downlink` (the shard as its backend's sink:
//! answers and pushes → frames), `remote` (the shard's own link when `backend.kind = "remote"`).
//! Shards share nothing; they talk only through bounded meshes:
//! the hand-off mesh here and the embedded backend's own (`router::backend::embedded`).

mod conn;
mod control;
mod delivery;
mod downlink;
mod handoff;
mod io;
mod listener;
pub mod metrics;
mod remote;
mod state;
mod timer;
mod uplink;

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use router::backend::embedded;

use crate::config::{BackendKind, Settings};
use crate::protocol::KickReason;
pub use control::GateControl;
pub use delivery::DeliveryObserver;
use handoff::Handoff;
/// A connection's outbound queue, public for the criterion benches (`bench/benches/fanout.rs`).
#[doc(hidden)]
pub use io::OutQueue;
use state::{PublishedStats, Shard};

/// How long a draining shard waits, past `gate.drain_secs`, for its connections to take their
/// KICK and close and for its delivery reports to leave.
const DRAIN_SLACK: Duration = Duration::from_secs(3);

/// The shard that owns `uid`: a fixed 64-bit mix (splitmix64's finaliser) modulo the shard
/// count. Stable across builds, hosts and restarts; never `RandomState`.
pub fn owner_shard(uid: u64, shards: usize) -> usize {
    // shards <= 1024, so the cast back to usize cannot truncate. The embedded backend routes
    // downlink with the same function (`router::backend::embedded::gate_shard_of`).
    (router::im::mix64(uid) % shards as u64) as usize
}

/// The shard a session lives on, read from its `session_id` (the low 10 bits).
pub fn shard_of_session(session_id: u64) -> usize {
    (session_id & 0x3FF) as usize
}

/// Why the gate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start shard {shard}: {reason}")]
    Executor { shard: usize, reason: String },
    #[error("cannot open the embedded backend's data: {0}")]
    Storage(#[from] router::im::recovery::RecoveryError),
}

/// Counters of one shard, as last published by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Open client connections on this shard (logged in or not).
    pub connections: u64,
    /// Logged-in sessions.
    pub sessions: u64,
    pub logins_ok: u64,
    pub logins_refused: u64,
    /// Connections this shard accepted whose LOGIN named a uid owned by another shard.
    pub handoffs_out: u64,
    /// Connections adopted from another shard.
    pub handoffs_in: u64,
    /// Hand-offs abandoned (channel full or the client gone); the fd was closed.
    pub handoffs_dropped: u64,
}

/// A running gate. Dropping it stops the gate.
pub struct GateHandle {
    local_addr: SocketAddr,
    /// The TLS listener's address, when `gate.tls_listen` is set.
    tls_addr: Option<SocketAddr>,
    /// The admin endpoint, stopped first.
    admin: Option<crate::admin::AdminServer>,
    control: Arc<GateControl>,
    shards: Vec<ShardHandle>,
    /// One message per shard that has exited, and how many did.
    exits: mpsc::Receiver<()>,
    exited: usize,
    /// The embedded backend's data directory lock; declared after `shards` so it is released
    /// only once every shard (and its partitions' logs) is gone.
    _data: Option<router::im::recovery::DataDirLock>,
}

struct ShardHandle {
    stats: Arc<PublishedStats>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl GateHandle {
    /// The address the client listener is bound to (the resolved port when `gate.listen` has
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the TLS listener is bound to (the resolved port when `gate.tls_listen` has
    /// port 0); `None` without `gate.tls_listen`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Every shard's counters, indexed by shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(|s| s.stats.snapshot()).collect()
    }

    /// The admin endpoint's address, when `admin.listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(crate::admin::AdminServer::local_addr)
    }

    /// The gate's control plane (metrics, kick, drain), for other threads.
    pub fn control(&self) -> Arc<GateControl> {
        Arc::clone(&self.control)
    }

    /// Drains (closes the listeners, KICK 2 to every session, pending PUSHes reported
    /// undelivered) and waits for the shards to exit.
    pub fn stop(self) {}

    /// Waits until every shard has exited (after a drain, from any thread or the admin
    /// endpoint); `false` if `timeout` passed first.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.exited < self.shards.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.exits.recv_timeout(left) {
                Ok(()) => self.exited += 1,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                // Every shard's sender is gone: they all ended.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                let _ = thread.join();
            }
        }
        true
    }
}

impl Drop for GateHandle {
    fn drop(&mut self) {
        self.admin.take();
        self.control.drain();
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// Starts every shard and returns once all of them are accepting.
pub fn start(settings: Settings) -> Result<GateHandle, StartError> {
    start_observed(settings, None)
}

/// [`start`], with every PUSH and delivery report shown to `observer` (tests, audits).
pub fn start_observed(
    settings: Settings,
    observer: Option<Arc<dyn DeliveryObserver>>,
) -> Result<GateHandle, StartError> {
    if let Some(warning) = listener::memlock_warning(&settings) {
        tracing::warn!("{warning}");
    }
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let (fds, local_addr) = listener::bind_all(&settings, settings.listen)?;
    let (mut tls_fds, tls_addr) = match &settings.tls {
        Some(tls) => {
            let (fds, addr) = listener::bind_all(&settings, tls.listen)?;
            (fds.into_iter().map(Some).collect(), Some(addr))
        }
        None => ((0..fds.len()).map(|_| None).collect::<Vec<_>>(), None),
    };
    let count = settings.shards.get();
    let (mut partitions, data) = embedded_partitions(&settings)?;
    let mesh: MeshBuilder<Handoff, _> = MeshBuilder::full(count, settings.handoff_queue.get());
    let backend_mesh = embedded::mesh(count, settings.backend.queue);
    let embedded_backend = settings.backend.kind == BackendKind::Embedded;
    let cpus = allowed_cpus();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let (exit_tx, exits) = mpsc::channel::<()>();
    let mut shards = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    for (index, listen_fd) in fds.into_iter().enumerate() {
        let (port, inbox) = control::channel().map_err(|e| StartError::Executor {
            shard: index,
            reason: format!("control socket: {e}"),
        })?;
        ports.push(port);
        let stats = Arc::new(PublishedStats::default());
        let ctx = ShardStart {
            index,
            settings: settings.clone(),
            listen_fd,
            tls_listen_fd: tls_fds[index].take(),
            control: inbox,
            mesh: (count > 1).then(|| mesh.clone()),
            backend_mesh: (count > 1 && embedded_backend).then(|| backend_mesh.clone()),
            stats: Arc::clone(&stats),
            observer: observer.clone(),
            partitions: std::mem::take(&mut partitions[index]),
            ready: ready_tx.clone(),
            exited: exit_tx.clone(),
        };
        let cpu = cpus
            .get(index % cpus.len().max(1))
            .copied()
            .unwrap_or(index);
        let thread = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("imgate-shard-{index}"))
            .io_memory(settings.io_memory)
            .spawn(move || run_shard(ctx))
            .map_err(|e| StartError::Executor {
                shard: index,
                reason: e.to_string(),
            })?;
        shards.push(ShardHandle {
            stats,
            thread: Some(thread),
        });
    }
    drop(ready_tx);
    let control = Arc::new(GateControl::new(ports, settings.max_connections));
    let mut handle = GateHandle {
        local_addr,
        tls_addr,
        admin: None,
        control: Arc::clone(&control),
        shards,
        exits,
        exited: 0,
        _data: data,
    };
    for _ in 0..count {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(StartError::Executor { shard: 0, reason }),
            Err(_) => {
                return Err(StartError::Executor {
                    shard: 0,
                    reason: "a shard did not start".into(),
                });
            }
        }
    }
    if let Some(addr) = settings.admin_listen {
        let admin = crate::admin::AdminServer::start(addr, control)
            .map_err(|source| StartError::Listen { addr, source })?;
        tracing::info!(admin = %admin.local_addr(), "admin endpoint listening");
        handle.admin = Some(admin);
    }
    match tls_addr {
        Some(tls) => tracing::info!(addr = %local_addr, %tls, shards = count, "gate accepting"),
        None => tracing::info!(addr = %local_addr, shards = count, "gate accepting"),
    }
    Ok(handle)
}

/// The embedded backend's partitions, per shard (`p % shards`, in id order): opened from
/// `backend.data_dir` (replayed and rebuilt before any shard serves) or fresh in memory. Empty
/// with a remote backend.
fn embedded_partitions(
    settings: &Settings,
) -> Result<
    (
        Vec<Vec<router::im::Partition>>,
        Option<router::im::recovery::DataDirLock>,
    ),
    StartError,
> {
    let count = settings.shards.get();
    let mut per_shard: Vec<Vec<router::im::Partition>> = (0..count).map(|_| Vec::new()).collect();
    if settings.backend.kind != BackendKind::Embedded {
        return Ok((per_shard, None));
    }
    let im = settings.im_config();
    let (partitions, lock) = match &settings.storage {
        Some(storage) => {
            let started = Instant::now();
            let opened = router::im::recovery::open(storage, &im, unix_ms())?;
            tracing::info!(
                dir = %storage.dir.display(),
                partitions = im.partitions,
                records = opened.records(),
                ms = started.elapsed().as_millis() as u64,
                "embedded backend data loaded"
            );
            (opened.partitions, Some(opened.lock))
        }
        None => {
            tracing::warn!(
                "backend.data_dir is empty: the embedded backend keeps messages in memory only; they are lost when the gate stops"
            );
            let fresh = (0..im.partitions)
                .map(|p| router::im::Partition::new(p, im.clone()))
                .collect();
            (fresh, None)
        }
    };
    for p in partitions {
        per_shard[p.id() as usize % count].push(p);
    }
    Ok((per_shard, lock))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Turns transparent huge pages off for this process (`gate.huge_pages = false`, the default).
///
/// The allocator (mimalloc) asks for huge pages on its arenas (`madvise`), so every 2 MiB range
/// it touches becomes resident whole: with many small per-connection objects spread over
/// size classes that was ~0.8 KB of extra RSS per idle connection (2.45 -> 1.43 KB measured
/// with 12,000 sessions), for no measurable fan-out throughput. Affects the whole process,
/// existing mappings included (PR_SET_THP_DISABLE is checked at fault time).
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not turn transparent huge pages off; idle connections will cost more memory"
        );
    }
}

/// Starts the gate and runs it until SIGINT or SIGTERM.
pub fn run(settings: Settings) -> Result<(), StartError> {
    // Before any shard thread exists, so they inherit the mask and only the signal thread
    // receives SIGINT/SIGTERM, in sigwait.
    let set = router::server::block_stop_signals();
    if !settings.huge_pages {
        disable_transparent_huge_pages();
    }
    let mut handle = start(settings)?;
    // `start` returned: every shard is accepting. Tell systemd (Type=notify) and feed its
    // watchdog while every shard answers.
    if let Err(err) = crate::sdnotify::ready() {
        tracing::warn!(%err, "could not send READY=1 to systemd");
    }
    spawn_watchdog(handle.control());
    // The first SIGINT/SIGTERM drains; a second one exits at once.
    let control = handle.control();
    std::thread::Builder::new()
        .name("imgate-signals".into())
        .spawn(move || {
            let mut signal = 0;
            // SAFETY: waits on the set built above.
            unsafe { libc::sigwait(&set, &mut signal) };
            tracing::info!(signal, "draining on signal; a second one exits at once");
            control.drain();
            // SAFETY: as above.
            unsafe { libc::sigwait(&set, &mut signal) };
            tracing::warn!(signal, "second signal: exiting now");
            std::process::exit(1);
        })
        .map_err(|e| StartError::Executor {
            shard: 0,
            reason: format!("signal thread: {e}"),
        })?;
    // Until a drain (a signal, or POST /drain) has let every shard exit. The shards bound
    // their own drain; this bound is the promise to systemd's TimeoutStopSec.
    while !handle.wait(Duration::from_secs(3600)) {}
    drop(handle);
    Ok(())
}

/// WATCHDOG=1 to systemd at half its interval, only while every shard answers a ping.
fn spawn_watchdog(control: Arc<GateControl>) {
    let Some(interval) = crate::sdnotify::watchdog_interval() else {
        return;
    };
    let period = interval / 2;
    let spawned = std::thread::Builder::new()
        .name("imgate-watchdog".into())
        .spawn(move || {
            loop {
                std::thread::sleep(period);
                if control.is_draining() {
                    continue; // STOPPING: systemd's stop timeout applies now.
                }
                if control.ping(period / 2) {
                    let _ = crate::sdnotify::watchdog();
                } else {
                    tracing::error!("a shard did not answer: withholding WATCHDOG=1");
                }
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(%err, "could not start the watchdog thread");
    }
}

/// Everything a shard thread starts from (all `Send`).
struct ShardStart {
    index: usize,
    settings: Settings,
    listen_fd: OwnedFd,
    /// The shard's socket on `gate.tls_listen`, when set.
    tls_listen_fd: Option<OwnedFd>,
    control: control::ControlInbox,
    mesh: Option<MeshBuilder<Handoff, glommio::channels::channel_mesh::Full>>,
    backend_mesh: Option<embedded::Mesh>,
    stats: Arc<PublishedStats>,
    observer: Option<Arc<dyn DeliveryObserver>>,
    /// The embedded backend's partitions this shard hosts (empty with a remote backend).
    partitions: Vec<router::im::Partition>,
    ready: mpsc::Sender<Result<(), String>>,
    /// Told when the shard's work is over (its executor then ends).
    exited: mpsc::Sender<()>,
}

async fn run_shard(ctx: ShardStart) {
    let shard = Rc::new(Shard::new(
        ctx.index,
        ctx.settings,
        ctx.stats,
        ctx.observer.clone(),
        Instant::now(),
    ));
    // SAFETY: the fd is ours alone; the glommio wrapper takes over closing it.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(ctx.listen_fd.into_raw_fd()) };
    // SAFETY: as above.
    let tls_listener = ctx
        .tls_listen_fd
        .map(|fd| unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) });
    let serving = async {
        if let Some(mesh) = ctx.mesh {
            match mesh.join().await {
                Ok((senders, receivers)) => {
                    let _ = shard.handoff.set(senders);
                    handoff::spawn_receivers(&shard, receivers);
                }
                Err(_) => {
                    let _ = ctx.ready.send(Err(format!(
                        "shard {} could not join the mesh",
                        shard.index
                    )));
                    return;
                }
            }
        }
        let sink: std::rc::Weak<dyn router::backend::GateSink> = Rc::downgrade(&shard) as _;
        match shard.settings.backend.kind {
            BackendKind::Remote => {
                // This shard's own link to backend.addr (connects in the background).
                let backend = remote::start(&shard, sink);
                let _ = shard.backend.set(backend);
            }
            BackendKind::Embedded => {
                let started = embedded::EmbeddedShard::start(
                    shard.index,
                    shard.shards,
                    shard.settings.im_config(),
                    ctx.partitions,
                    ctx.backend_mesh,
                    sink,
                )
                .await;
                match started {
                    Ok(backend) => {
                        let _ = shard.backend.set(backend);
                    }
                    Err(reason) => {
                        let _ = ctx.ready.send(Err(reason));
                        return;
                    }
                }
            }
        }
        glommio::spawn_local(timer::run_timer(Rc::clone(&shard))).detach();
        glommio::spawn_local(downlink::run_fan_out(Rc::clone(&shard))).detach();
        let _ = ctx.ready.send(Ok(()));
        let plain = listener::accept_loop(Rc::clone(&shard), listener, None);
        match (tls_listener, shard.settings.tls.as_ref()) {
            (Some(tls_listener), Some(tls)) => {
                let config = tls_config(&tls.server);
                let tls = listener::accept_loop(Rc::clone(&shard), tls_listener, Some(config));
                futures_lite::future::zip(plain, tls).await;
            }
            _ => plain.await,
        }
    };
    // Commands from the admin plane run beside the connections (and on through the drain);
    // the shard serves until a drain is asked for.
    let (drain_tx, drain_rx) = glommio::channels::local_channel::new_bounded(1);
    glommio::spawn_local(control::serve(Rc::clone(&shard), ctx.control, drain_tx)).detach();
    let stopped = async {
        let _ = drain_rx.recv().await;
    };
    futures_lite::future::or(serving, stopped).await;
    // The listener is closed (dropped with `serving`); send everyone away with KICK 2, their
    // retry_after_ms spread over the drain window.
    let drain = shard.settings.drain_time();
    shard
        .drain_window_ms
        .set(u32::try_from(drain.as_millis()).unwrap_or(u32::MAX));
    shard.stopping.set(true);
    shard.kick_all(KickReason::Draining);
    let deadline = Instant::now() + drain + DRAIN_SLACK;
    while shard.connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // What the closed sessions left pending was reported undelivered; send it now, and give
    // a remote backend's link the time to write it.
    shard.flush_all_reports();
    let flush_deadline = Instant::now() + DRAIN_SLACK;
    while shard.backend.get().is_some_and(|b| !b.flushed()) && Instant::now() < flush_deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // An empty link queue has been framed into the link's write buffer; one more turn lets
    // its task write it before the executor ends.
    glommio::timer::sleep(Duration::from_millis(10)).await;
    let _ = ctx.exited.send(());
}

/// Session-ID entries one shard's TLS server remembers for resumption.
const TLS_SESSION_CACHE: usize = 4096;

/// A shard's own copy of the TLS server configuration: the certificate and settings are shared
/// (immutable), but the session cache is the shard's, so no handshake touches another shard's
/// lock. A client resuming by session ID resumes when its reconnection lands on the same shard,
/// and does a full handshake otherwise.
fn tls_config(base: &rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    let mut config = base.clone();
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSION_CACHE);
    Arc::new(config)
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the set we own; CPU_ISSET reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}
