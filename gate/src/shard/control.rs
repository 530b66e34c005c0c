//! The admin plane's way into a running shard: commands on a bounded std channel, a doorbell
//! byte on a socket pair the shard's executor waits on, and an answer on a channel that comes
//! with each command. Off the message path: a shard takes commands between connection tasks,
//! and nothing on the message path ever waits for the admin plane.
//!
//! Owns [`GateControl`] (the admin side: every shard's port, scrape, ping, kick, drain) and the
//! shard side's command loop. A full command channel refuses the command (the caller reports
//! the shard as not answering) rather than block.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::metrics::ShardMetrics;
use super::owner_shard;
use super::state::Shard;
use crate::protocol::KickReason;

/// Commands waiting for one shard at most.
const COMMAND_QUEUE: usize = 64;

/// What the admin plane asks of a shard.
pub(crate) enum Command {
    /// Copy out the metrics.
    Scrape(SyncSender<ShardMetrics>),
    /// Answer, to prove the shard's executor runs.
    Ping(SyncSender<()>),
    /// KICK 7 to `uid`'s sessions (one device, or all); answers how many.
    Kick {
        uid: u64,
        device_id: Option<String>,
        reply: SyncSender<usize>,
    },
    /// Stop accepting and send everyone away (see `run_shard`).
    Drain,
}

/// The admin side of one shard's channel.
pub(crate) struct ControlPort {
    commands: SyncSender<Command>,
    bell: UnixStream,
}

/// The shard side: where commands arrive, and the socket that rings.
pub(crate) struct ControlInbox {
    pub commands: Receiver<Command>,
    pub bell: std::os::fd::OwnedFd,
}

/// A channel for one shard.
pub(crate) fn channel() -> std::io::Result<(ControlPort, ControlInbox)> {
    let (ours, theirs) = UnixStream::pair()?;
    // Rings never block the admin thread: a full socket already has a ring pending.
    ours.set_nonblocking(true)?;
    let (tx, rx) = sync_channel(COMMAND_QUEUE);
    Ok((
        ControlPort {
            commands: tx,
            bell: ours,
        },
        ControlInbox {
            commands: rx,
            bell: theirs.into(),
        },
    ))
}

impl ControlPort {
    fn send(&self, command: Command) -> bool {
        if self.commands.try_send(command).is_err() {
            return false;
        }
        let _ = (&self.bell).write(b"c");
        true
    }
}

/// The gate as the admin endpoint, the signal handler and systemd's watchdog see it: one port
/// per shard. `Send + Sync`; every call waits at most its timeout.
pub struct GateControl {
    ports: Vec<ControlPort>,
    draining: AtomicBool,
    max_connections: usize,
}

impl GateControl {
    pub(crate) fn new(ports: Vec<ControlPort>, max_connections: usize) -> Self {
        Self {
            ports,
            draining: AtomicBool::new(false),
            max_connections,
        }
    }

    pub fn shards(&self) -> usize {
        self.ports.len()
    }

    /// Connections the gate holds at most (`limits.max_connections`, resolved).
    pub fn capacity(&self) -> usize {
        self.max_connections
    }

    /// Every shard's metrics, or the first shard that did not answer within `timeout`.
    pub fn scrape(&self, timeout: Duration) -> Result<Vec<ShardMetrics>, usize> {
        self.ask_all(timeout, Command::Scrape)
    }

    /// Whether every shard answers within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        self.ask_all(timeout, Command::Ping).is_ok()
    }

    /// Asks every shard at once (`ask` builds the command around its reply channel) and
    /// collects the answers in shard order; `Err(shard)` for the first one that did not
    /// answer by the deadline.
    fn ask_all<T>(
        &self,
        timeout: Duration,
        ask: impl Fn(SyncSender<T>) -> Command,
    ) -> Result<Vec<T>, usize> {
        let deadline = Instant::now() + timeout;
        let asked: Vec<_> = self
            .ports
            .iter()
            .map(|port| {
                let (tx, rx) = sync_channel(1);
                port.send(ask(tx)).then_some(rx)
            })
            .collect();
        asked
            .into_iter()
            .enumerate()
            .map(|(shard, rx)| {
                let left = deadline.saturating_duration_since(Instant::now());
                rx.and_then(|rx| rx.recv_timeout(left).ok()).ok_or(shard)
            })
            .collect()
    }

    /// KICK 7 to `uid`'s sessions (`device_id`: only that device); how many were kicked, `None`
    /// when the owner shard did not answer within `timeout`.
    pub fn kick(&self, uid: u64, device_id: Option<String>, timeout: Duration) -> Option<usize> {
        let port = self.ports.get(owner_shard(uid, self.ports.len()))?;
        let (tx, rx) = sync_channel(1);
        if !port.send(Command::Kick {
            uid,
            device_id,
            reply: tx,
        }) {
            return None;
        }
        rx.recv_timeout(timeout).ok()
    }

    /// Starts the drain (idempotent): every shard closes its listener, kicks its sessions with
    /// KICK 2 and exits once they are gone or `gate.drain_secs` passed. Tells systemd STOPPING=1.
    pub fn drain(&self) {
        if self.draining.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!("draining");
        let _ = crate::sdnotify::stopping();
        for port in &self.ports {
            // A full queue still gets the ring; a shard whose channel is gone has exited.
            if !port.send(Command::Drain) {
                let _ = (&port.bell).write(b"d");
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// The shard side: runs commands as the bell rings, for as long as the shard runs (metrics stay
/// readable during a drain); tells `drain` when a drain is asked for, or when the admin side is
/// gone, which is how a dropped `GateHandle` stops the gate.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    inbox: ControlInbox,
    drain: glommio::channels::local_channel::LocalSender<()>,
) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the fd is ours alone; the glommio wrapper takes over closing it.
    let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(inbox.bell.into_raw_fd()) };
    let mut rings = [0u8; 64];
    loop {
        let n = futures_lite::AsyncReadExt::read(&mut bell, &mut rings)
            .await
            .unwrap_or(0);
        if n == 0 {
            // The admin side is gone: stop.
            let _ = drain.try_send(());
            return;
        }
        while let Ok(command) = inbox.commands.try_recv() {
            match command {
                Command::Scrape(reply) => {
                    let _ = reply.try_send(shard.metrics_snapshot());
                }
                Command::Ping(reply) => {
                    let _ = reply.try_send(());
                }
                Command::Kick {
                    uid,
                    device_id,
                    reply,
                } => {
                    let _ = reply.try_send(shard.kick_uid(uid, device_id.as_deref()));
                }
                Command::Drain => {
                    let _ = drain.try_send(());
                }
            }
        }
        if rings[..n].contains(&b'd') {
            let _ = drain.try_send(());
        }
    }
}

impl Shard {
    /// KICK 7 to `uid`'s sessions here (one device or all); how many.
    fn kick_uid(&self, uid: u64, device_id: Option<&str>) -> usize {
        let keys: Vec<_> = self
            .registry
            .borrow()
            .devices(uid)
            .iter()
            .filter(|d| device_id.is_none_or(|want| *d.device_id == *want))
            .map(|d| d.conn)
            .collect();
        for &key in &keys {
            self.kick(key, KickReason::Admin);
        }
        keys.len()
    }
}
