//! The boundary between a gate shard and its backend.
//!
//! A shard talks to its backend only in link messages (`crate::link`), through [`Backend`]:
//! requests go in with an [`Origin`] and are answered later through the shard's [`GateSink`];
//! the backend pushes downlink ([`Downlink`]) through the same sink. Which plug-in serves the
//! shard (embedded or remote) is hidden behind the trait. Both sides are shard-local
//! (`!Send`): one `Backend` per shard, one `GateSink` per shard.

pub mod embedded;
pub mod remote;

pub use crate::im::{Origin, Reply, Request};
use crate::link;

/// The backend could not take a request now (a full channel, a link down): the client gets
/// BACKEND_UNAVAILABLE and may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("backend unavailable")]
pub struct Unavailable;

/// Backend → gate, for the users of one gate shard.
#[derive(Debug, Clone, PartialEq)]
pub enum Downlink {
    Deliver(link::Deliver),
    Notify(link::NotifyUsers),
    ReadReceipt(link::ReadReceiptOut),
    Kick(link::KickUser),
    BizPush(link::BizPushUsers),
}

/// What a gate shard offers its backend: answers and downlink land here, on the shard's own
/// thread.
pub trait GateSink {
    /// The answer to a request submitted with `origin`.
    fn reply(&self, origin: Origin, reply: Reply);
    /// Downlink whose recipients all live on this shard.
    fn downlink(&self, downlink: Downlink);
}

/// A gate shard's handle on its backend.
pub trait Backend {
    /// Submits `request`; its answer arrives through [`GateSink::reply`] with the same `origin`.
    /// `Err` means it was not taken: answer BACKEND_UNAVAILABLE now.
    fn submit(&self, origin: Origin, request: Request) -> Result<(), Unavailable>;
    /// A session came online or went offline (best effort).
    fn presence(&self, presence: link::Presence);
    /// Delivered / undelivered PUSHes, batched by the shard (`delivery.report_batch`).
    fn report(&self, batch: link::DeliveryReportBatch);
    /// Whether requests can be served now (a remote backend: its link is up). For readiness
    /// probes; `submit` still decides per request.
    fn is_up(&self) -> bool {
        true
    }
    /// Whether everything given to the backend has left this process (a remote backend: its
    /// link's write queue is empty); a draining gate waits for it, briefly.
    fn flushed(&self) -> bool {
        true
    }
}
