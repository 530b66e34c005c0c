//! The IO shell: one glommio executor per shard, each accepting on its own SO_REUSEPORT socket,
//! handing connections to the shard that owns their uid, and running the connection tasks.
//! (Stub: the API below is what the rest of the crate and the tests build on.)

use std::net::SocketAddr;

use crate::config::Settings;

/// The shard that owns `uid`: a fixed 64-bit mix (splitmix64's finaliser) modulo the shard
/// count. Stable across builds, hosts and restarts; never `RandomState`.
pub fn owner_shard(uid: u64, shards: usize) -> usize {
    let mut z = uid.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    // shards <= 1024, so the cast back to usize cannot truncate.
    (z % shards as u64) as usize
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
}

impl GateHandle {
    /// The address the client listener is bound to (the resolved port when `gate.listen` has
    /// port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every shard's counters, indexed by shard.
    pub fn stats(&self) -> Vec<ShardStats> {
        Vec::new()
    }

    /// Closes the listeners and every connection, and waits for the shards to exit.
    pub fn stop(self) {}
}

/// Starts every shard and returns once all of them are accepting.
pub fn start(settings: Settings) -> Result<GateHandle, StartError> {
    Ok(GateHandle {
        local_addr: settings.listen,
    })
}
