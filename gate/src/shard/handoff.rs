//! Moving a connection to the shard that owns its uid.
//!
//! The accepting shard, on a LOGIN for another shard's uid, flushes what it owes the client,
//! `dup`s the fd, drops its glommio stream and sends [`Handoff`] (the fd, the LOGIN frame and
//! any bytes after it, the login deadline, a WebSocket connection's transport state and a TLS
//! connection's `rustls::ServerConnection`) over
//! the bounded `channel_mesh`. The owner checks the client is still there, adopts the fd with
//! `from_raw_fd` and serves it from the LOGIN on.
//!
//! Failure policy: a full channel (`gate.handoff_queue`) or a dead peer shard drops the
//! message, which closes the fd (it is an `OwnedFd`); a client that closed while its fd was in
//! flight is closed by the owner before anything is registered. Both count as
//! `handoffs_dropped`.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glommio::channels::channel_mesh::Receivers;
use glommio::net::TcpStream;

use super::conn::{Arrival, TlsConn, WsConn};
use super::io::peer_closed;
use super::state::{Counter, Shard};

/// A connection in flight between shards.
pub(crate) struct Handoff {
    pub fd: OwnedFd,
    /// TCP: the LOGIN frame and whatever followed it. WebSocket: the raw bytes after the
    /// LOGIN's message.
    pub buffered: Bytes,
    pub login_deadline: Instant,
    /// A WebSocket connection's state: its decoder (with any message being reassembled) and
    /// the LOGIN frame. `None`: TCP.
    pub websocket: Option<Box<WsConn>>,
    /// A TLS connection's rustls state (keys, sequence numbers, any partial record). `buffered`
    /// is then plaintext, as it is for every connection. `None`: plain.
    pub tls: Option<Box<TlsConn>>,
}

/// Sends `handoff` to `owner`, or drops it (closing the fd) if the channel is full.
pub(crate) fn send(shard: &Shard, owner: usize, handoff: Handoff) {
    let Some(senders) = shard.handoff.get() else {
        shard.count(Counter::HandoffsDropped);
        return;
    };
    match senders.try_send_to(owner, handoff) {
        Ok(()) => shard.count(Counter::HandoffsOut),
        Err(err) => {
            // The error owns the message; dropping it closes the fd.
            tracing::warn!(shard = shard.index, owner, %err, "hand-off refused; connection closed");
            shard.count(Counter::HandoffsDropped);
        }
    }
}

/// Receives connections from every peer shard until the mesh closes.
pub(crate) fn spawn_receivers(shard: &Rc<Shard>, mut receivers: Receivers<Handoff>) {
    for (_peer, receiver) in receivers.streams() {
        let shard = Rc::clone(shard);
        glommio::spawn_local(async move {
            while let Some(handoff) = receiver.recv().await {
                adopt(&shard, handoff);
            }
        })
        .detach();
    }
}

fn adopt(shard: &Rc<Shard>, handoff: Handoff) {
    if peer_closed(handoff.fd.as_raw_fd()) {
        shard.count(Counter::HandoffsDropped);
        return;
    }
    shard.count(Counter::HandoffsIn);
    // SAFETY: the fd is a connected TCP socket we own exclusively (into_raw_fd gives up the
    // OwnedFd's ownership to the stream).
    let stream = unsafe { TcpStream::from_raw_fd(handoff.fd.into_raw_fd()) };
    let arrival = Arrival {
        accepted_at: Instant::now(),
        login_deadline: handoff.login_deadline,
        buffered: BytesMut::from(&handoff.buffered[..]),
        websocket: handoff.websocket,
        tls: handoff.tls,
    };
    super::listener::admit(shard, stream, arrival);
}
