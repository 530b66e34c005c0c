//! The IO shell: one glommio executor per shard, pinned to a core, each accepting on its own
//! `SO_REUSEPORT` socket, handing connections to the shard that owns their uid, and running the
//! connection tasks around the sans-IO cores.
//!
//! Rooms: `listener` (sockets, accept, capacity), `conn` (one task per connection: reads,
//! session, vectored writes), `handoff` (fd moves between shards), `timer` (the shard's one
//! runtime timer over its wheel), `state` (what a shard owns), `io` (raw socket calls),
//! `uplink` (client requests → link requests), `downlink` (the shard as its backend's sink:
//! answers and pushes → frames), `remote` (the shard's own link when `backend.kind = "remote"`).
//! Shards share nothing; they talk only through bounded meshes:
//! the hand-off mesh here and the embedded backend's own (`router::backend::embedded`).

mod conn;
mod delivery;
mod downlink;
mod handoff;
mod io;
mod listener;
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
pub use delivery::DeliveryObserver;
use handoff::Handoff;
/// A connection's outbound queue, public for the criterion benches (`bench/benches/fanout.rs`).
#[doc(hidden)]
pub use io::OutQueue;
use state::{PublishedStats, Shard};

/// How long the reference backend remembers a (uid, client_msg_id) (PROTOCOL.md: at least 24 h).
const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;

/// How long a stopping shard waits for its connections to take their KICK and close.
const STOP_GRACE: Duration = Duration::from_secs(3);

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
    shards: Vec<ShardHandle>,
}

struct ShardHandle {
    stop: std::os::unix::net::UnixStream,
    stats: Arc<PublishedStats>,
    thread: Option<glommio::ExecutorJoinHandle<()>>,
}

impl GateHandle {
    /// The address the client listener is bound to (the resolved port when `gate.listen` has
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every shard's counters, indexed by shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        self.shards.iter().map(|s| s.stats.snapshot()).collect()
    }

    /// Closes the listeners, kicks every session (KICK 2) and waits for the shards to exit.
    pub fn stop(self) {}
}

impl Drop for GateHandle {
    fn drop(&mut self) {
        for shard in &self.shards {
            // The shard's stop task wakes on this byte (or on the socket closing).
            let _ = std::io::Write::write_all(&mut &shard.stop, b"x");
        }
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
    let (fds, local_addr) = listener::bind_all(&settings)?;
    let count = settings.shards.get();
    let mesh: MeshBuilder<Handoff, _> = MeshBuilder::full(count, settings.handoff_queue.get());
    let backend_mesh = embedded::mesh(count, settings.backend.queue);
    let embedded_backend = settings.backend.kind == BackendKind::Embedded;
    let cpus = allowed_cpus();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut shards = Vec::with_capacity(count);
    for (index, listen_fd) in fds.into_iter().enumerate() {
        let (stop, stop_theirs) =
            std::os::unix::net::UnixStream::pair().map_err(|e| StartError::Executor {
                shard: index,
                reason: format!("stop socket: {e}"),
            })?;
        let stats = Arc::new(PublishedStats::default());
        let ctx = ShardStart {
            index,
            settings: settings.clone(),
            listen_fd,
            stop: OwnedFd::from(stop_theirs),
            mesh: (count > 1).then(|| mesh.clone()),
            backend_mesh: (count > 1 && embedded_backend).then(|| backend_mesh.clone()),
            stats: Arc::clone(&stats),
            observer: observer.clone(),
            ready: ready_tx.clone(),
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
            stop,
            stats,
            thread: Some(thread),
        });
    }
    drop(ready_tx);
    let handle = GateHandle { local_addr, shards };
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
    tracing::info!(addr = %local_addr, shards = count, "gate accepting");
    Ok(handle)
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
    // Block the stop signals before any shard thread exists, so they inherit the mask and only
    // this thread receives them, in sigwait.
    // SAFETY: plain signal-set manipulation on values we own.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    if !settings.huge_pages {
        disable_transparent_huge_pages();
    }
    let handle = start(settings)?;
    let mut signal = 0;
    // SAFETY: waits on the set built above.
    unsafe { libc::sigwait(&set, &mut signal) };
    tracing::info!(signal, "stopping");
    handle.stop();
    Ok(())
}

/// Everything a shard thread starts from (all `Send`).
struct ShardStart {
    index: usize,
    settings: Settings,
    listen_fd: OwnedFd,
    stop: OwnedFd,
    mesh: Option<MeshBuilder<Handoff, glommio::channels::channel_mesh::Full>>,
    backend_mesh: Option<embedded::Mesh>,
    stats: Arc<PublishedStats>,
    observer: Option<Arc<dyn DeliveryObserver>>,
    ready: mpsc::Sender<Result<(), String>>,
}

async fn run_shard(ctx: ShardStart) {
    let shard = Rc::new(Shard::new(
        ctx.index,
        ctx.settings,
        ctx.stats,
        ctx.observer.clone(),
        Instant::now(),
    ));
    // SAFETY: both fds are ours alone; the glommio wrappers take over closing them.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(ctx.listen_fd.into_raw_fd()) };
    let mut stop = unsafe { glommio::net::UnixStream::from_raw_fd(ctx.stop.into_raw_fd()) };
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
                let im = router::im::ImConfig {
                    partitions: shard.settings.backend.partitions,
                    push_threshold: shard.settings.backend.push_threshold,
                    dedup_window_ms: DEDUP_WINDOW_MS,
                    auth_secret: shard.settings.backend.auth_secret.clone().into_bytes(),
                };
                let started = embedded::EmbeddedShard::start(
                    shard.index,
                    shard.shards,
                    im,
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
        let _ = ctx.ready.send(Ok(()));
        listener::accept_loop(Rc::clone(&shard), listener).await;
    };
    let stopped = async {
        let mut byte = [0u8; 1];
        let _ = futures_lite::AsyncReadExt::read(&mut stop, &mut byte).await;
    };
    futures_lite::future::or(serving, stopped).await;
    // The listener is closed (dropped with `serving`); send everyone away.
    shard.stopping.set(true);
    shard.kick_all(KickReason::Draining);
    let deadline = Instant::now() + STOP_GRACE;
    while shard.connections() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // What the closed sessions left pending was reported undelivered; send it now.
    shard.flush_all_reports();
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
