//! The reference IM logic, sans-IO: message ids, single chats with sender-keyed dedup, groups,
//! history (PULL), read cursors, unread counts (SYNC) — split into a fixed number of
//! *partitions* (`backend.partitions`, default 64).
//!
//! A [`Partition`] is a plain state machine: [`Partition::handle`] takes one [`Input`] and `now`
//! (unix milliseconds, passed in) and appends [`Output`]s. It never touches a socket, a clock, a
//! thread or another partition: talking to another partition is an [`Output::ToPartition`] that
//! the host (the gate's shard shell for the embedded backend, the router binary later) routes.
//!
//! What lives where (partition = stable hash mod `partitions`, independent of the shard count):
//! - a **conversation** (messages, group membership, per-member read cursors) lives in
//!   [`partition_of_conv`]: single chat = hash of the two uids, group = hash of the group id;
//! - a **user** (sender-keyed dedup index `(uid, client_msg_id) -> msg_id`, the inbox of
//!   per-conversation `latest_msg_id` and `unread` that SYNC reads, token check, presence) lives
//!   in [`partition_of_user`].
//!
//! Flows (each arrow one `Input`; `Origin` rides along so the answer finds its connection):
//! - SEND: gate → user(from) `Send` [dedup hit: Reply with the original msg_id; a Store still
//!   in flight: Reply BACKEND_UNAVAILABLE, retry] → conv `Store` → stores, assigns msg_id; emits
//!   `Stored` back to user(from) → records dedup, `Reply`; and the fan-out:
//!   - single chat: `Deliver` to the gates, `InboxSet` (absolute states) to both users;
//!   - group (read diffusion: stored once, no work per member at the conversation): `Deliver`
//!     naming the members when there are at most `push_threshold`, and one `GroupMsg` per user
//!     partition of the members, which bumps each member's inbox (latest, +1 unread) and, above
//!     the threshold, sends their new states to the gates as a `Notify`.
//!
//!   A refused Store (NOT_FOUND, FORBIDDEN) emits only `Stored`, which answers and remembers
//!   nothing.
//! - PULL, READ: gate → conv. READ emits `InboxSet` for the reader and a `ReadReceipt`.
//! - SYNC, LOGIN, presence, delivery reports: gate → user.
//! - BIZ group: `create` → user(caller) partition, which mints a group id that hashes to itself;
//!   `join` / `leave` / `members` → conv(group). A join emits `InboxSet` (nothing unread) and a
//!   leave an `InboxSet` with `latest_msg_id = 0`, which drops the group from the user's SYNC.
//!
//! **Host contract**: deliver every `ToPartition` to its partition, and the ones from one
//! partition to another in the order they were emitted (FIFO per pair of partitions): an
//! `InboxSet` is absolute and a `GroupMsg` a relative bump, so each must apply after every
//! update its conversation partition emitted before it.
//!
//! Layout: `ids` (message ids), `conv` (one conversation: messages, cursors, unread, paging),
//! `user` (inbox, dedup, presence), `biz` (BIZ JSON), `partition` (the state and handlers),
//! `tests` (a cluster harness on virtual time).

mod biz;
mod conv;
pub mod filter;
pub mod ids;
pub mod journal;
mod partition;
pub mod recovery;
#[cfg(test)]
mod tests;
mod user;

pub use ids::MsgIdGen;
pub use partition::{
    DEFAULT_PULL_LIMIT, MAX_GROUP_ID, MAX_PULL_LIMIT, MAX_SYNC_CONVS, Partition, PartitionStats,
    Replayed,
};

use crate::link;

/// Index of a partition, `0..partitions`.
pub type PartitionId = u32;

/// A conversation's identity, the same from both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConvKey {
    /// A single chat between `low < high` (a user may also chat with themself: `low == high`).
    Single {
        low: u64,
        high: u64,
    },
    Group(u64),
}

impl ConvKey {
    /// The single chat between `a` and `b`.
    pub fn single(a: u64, b: u64) -> Self {
        Self::Single {
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// The conversation `uid` names with (`conv_type`, `conv_id`) as it sees it; `None` for an
    /// unknown conv_type.
    pub fn seen_by(uid: u64, conv_type: u32, conv_id: u64) -> Option<Self> {
        match conv_type {
            crate::conv::SINGLE => Some(Self::single(uid, conv_id)),
            crate::conv::GROUP => Some(Self::Group(conv_id)),
            _ => None,
        }
    }
}

/// splitmix64's finaliser: the stable 64-bit mix every placement in imgate uses.
pub const fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The partition holding `uid`'s user state.
pub fn partition_of_user(uid: u64, partitions: u32) -> PartitionId {
    (mix64(uid) % u64::from(partitions)) as PartitionId
}

/// The partition holding a conversation.
pub fn partition_of_conv(conv: ConvKey, partitions: u32) -> PartitionId {
    let h = match conv {
        ConvKey::Single { low, high } => mix64(mix64(low) ^ high.rotate_left(32)),
        ConvKey::Group(gid) => mix64(gid),
    };
    (h % u64::from(partitions)) as PartitionId
}

/// Where an answer goes: opaque to the IM logic, echoed in [`Output::Reply`]. The host fills it
/// (the gate: shard, connection, the request's seq and log_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Origin {
    pub shard: u32,
    pub conn: u64,
    pub seq: u32,
    pub log_id: u32,
}

/// PROTOCOL.md's dedup window: 24 hours, in ms (the least `ImConfig::dedup_window_ms` may be).
pub const DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;

/// Settings of the IM logic.
#[derive(Debug, Clone)]
pub struct ImConfig {
    /// Number of partitions (fixed for the life of the data).
    pub partitions: u32,
    /// Groups with more members than this get NOTIFY instead of PUSH.
    pub push_threshold: u32,
    /// How long a (uid, client_msg_id) is remembered, ms (PROTOCOL.md: at least 24 h).
    pub dedup_window_ms: u64,
    /// HS256 key of `auth.mode = "backend"` tokens; empty refuses every token.
    pub auth_secret: Vec<u8>,
    /// The content filter over SEND bodies (`backend.filter.*`), if configured.
    pub filter: Option<std::sync::Arc<filter::ContentFilter>>,
}

/// A request from a gate, as it enters the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Login(link::Login),
    Send(link::Send),
    Pull(link::Pull),
    Read(link::Read),
    Sync(link::Sync),
    Biz(link::Biz),
}

/// An answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Login(link::LoginResult),
    Send(link::SendResult),
    Pull(link::PullResult),
    Read(link::ReadResult),
    Sync(link::SyncResult),
    Biz(link::BizResult),
}

/// One input to a partition. `Request`, `Presence` and `Report` come from gates; the rest are
/// hops between partitions (documented per variant).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A gate request routed by [`route`].
    Request {
        origin: Origin,
        request: Request,
    },
    Presence(link::Presence),
    Report(link::DeliveryReport),
    /// user(from) → conv: dedup missed; store and fan out.
    Store {
        origin: Origin,
        send: link::Send,
    },
    /// conv → user(from): the message was stored (or refused): record dedup, answer the gate.
    Stored {
        origin: Origin,
        from: u64,
        client_msg_id: u64,
        result: link::SendResult,
    },
    /// conv(group) → user: a group message was stored. Each of `members` (the group's members
    /// whose user partition is the destination) gets `latest_msg_id = msg_id` and one more
    /// unread unless it is `from`; with `notify` (a group above the push threshold) the new
    /// states go to the gates as one `Notify`, sparing `exclude_session` (the sender's).
    GroupMsg {
        group_id: u64,
        msg_id: u64,
        from: u64,
        members: std::sync::Arc<[u64]>,
        notify: bool,
        exclude_session: u64,
    },
    /// conv → user: new (latest_msg_id, unread) of conversations, one entry per user;
    /// `latest_msg_id == 0` removes the conversation from that user's inbox.
    InboxSet {
        entries: Vec<link::UserConv>,
    },
}

impl Input {
    /// Whether handling this input reads or writes user inboxes: a host that holds group bumps
    /// back (`backend::embedded`) applies them first. Keep in step with `Partition::handle`:
    /// only `GroupMsg`, `InboxSet` and SYNC reach `Partition::inboxes`.
    pub fn touches_inboxes(&self) -> bool {
        matches!(
            self,
            Input::GroupMsg { .. }
                | Input::InboxSet { .. }
                | Input::Request {
                    request: Request::Sync(_),
                    ..
                }
        )
    }
}

/// What a partition asks its host to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Answer the gate connection named by `origin`.
    Reply {
        origin: Origin,
        reply: Reply,
    },
    /// Hand `input` to another (or the same) partition.
    ToPartition {
        partition: PartitionId,
        input: Input,
    },
    /// Downlink to the gates holding the recipients (the host splits recipients by gate shard).
    Deliver(link::Deliver),
    Notify(link::NotifyUsers),
    ReadReceipt(link::ReadReceiptOut),
    Kick(link::KickUser),
}

/// The partition a gate request goes to first.
pub fn route(request: &Request, partitions: u32) -> PartitionId {
    match request {
        Request::Login(r) => partition_of_user(r.uid, partitions),
        Request::Send(r) => partition_of_user(r.from, partitions),
        Request::Sync(r) => partition_of_user(r.uid, partitions),
        Request::Pull(r) => conv_partition_or_user(r.uid, r.conv_type, r.conv_id, partitions),
        Request::Read(r) => conv_partition_or_user(r.uid, r.conv_type, r.conv_id, partitions),
        Request::Biz(r) => biz_partition(r, partitions),
    }
}

/// The partition a gate event goes to.
pub fn route_presence(p: &link::Presence, partitions: u32) -> PartitionId {
    partition_of_user(p.uid, partitions)
}

fn conv_partition_or_user(uid: u64, conv_type: u32, conv_id: u64, partitions: u32) -> PartitionId {
    // An unknown conv_type is answered BAD_REQUEST by the user's own partition.
    match ConvKey::seen_by(uid, conv_type, conv_id) {
        Some(conv) => partition_of_conv(conv, partitions),
        None => partition_of_user(uid, partitions),
    }
}

/// `group.join`, `group.leave` and `group.members` name a group: its partition. Everything else
/// (`group.create`, unknown services, bad payloads) goes to the caller's partition, which answers.
fn biz_partition(biz: &link::Biz, partitions: u32) -> PartitionId {
    if biz.service == "group"
        && matches!(biz.method.as_str(), "join" | "leave" | "members")
        && let Some(gid) = group_id_of(&biz.payload)
    {
        return partition_of_conv(ConvKey::Group(gid), partitions);
    }
    partition_of_user(biz.uid, partitions)
}

/// `{"group_id": N}` → N.
pub fn group_id_of(payload: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct GroupRef {
        group_id: u64,
    }
    serde_json::from_slice::<GroupRef>(payload)
        .ok()
        .map(|g| g.group_id)
}
