//! A partition's journal: what of its state goes into its [`Log`], encoded how, and the
//! bookkeeping retention needs. Owned by the [`super::Partition`] it journals; the partition
//! decides when to append (before it changes memory, so a failed append changes nothing) and
//! replays the records at open (`Partition::open`).
//!
//! Records (payloads are protobuf, so fields can be added later; kinds from [`log::kind`]):
//! - `MESSAGE`: a stored message, the [`link::Msg`] itself (it names its conversation and
//!   carries the sender's `client_msg_id`, so the dedup index can be rebuilt from it). Stored
//!   once, also for groups (read diffusion).
//! - `MEMBERSHIP`: a [`GroupRecord`]: a group created, a member joined or left, or a snapshot
//!   of the whole group (name, members and their read cursors) re-appended by retention.
//! - `CURSOR`: a [`CursorRecord`]: a reader's read cursor moved forward.
//! - `DEDUP`: a [`DedupRecord`]: `(from, client_msg_id) → (msg_id, server_time_ms)` recorded
//!   at the sender's partition when its SEND was stored.
//!
//! Not journaled, because it is rebuilt at start: inboxes (latest and unread of every
//! conversation for every user: computed from the conversations' messages and cursors),
//! presence (gates re-announce their sessions), group fan-out layouts, delivery counters.
//! The reference backend keeps no delivered cursor: what was pushed and acknowledged is the
//! gates' state (delivery reports are counters here), and clients PULL from their own position.

use std::collections::VecDeque;

use super::ConvKey;
use crate::link;
use crate::log::{self, Log, LogError, Retention};

/// How often, at most, a partition checks its retention (on input; an idle partition has no
/// growing log to trim).
pub const RETENTION_CHECK_MS: u64 = 60_000;

/// A group membership change or snapshot.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GroupRecord {
    /// One of [`group_op`].
    #[prost(uint32, tag = "1")]
    pub op: u32,
    #[prost(uint64, tag = "2")]
    pub group_id: u64,
    /// `CREATE` and `SNAPSHOT`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `CREATE`, `SNAPSHOT`: every member; `JOIN`, `LEAVE`: the one member.
    #[prost(uint64, repeated, tag = "4")]
    pub members: Vec<u64>,
    /// `SNAPSHOT`: each member's read cursor, in `members` order.
    #[prost(uint64, repeated, tag = "5")]
    pub cursors: Vec<u64>,
}

/// [`GroupRecord::op`] values.
pub mod group_op {
    pub const CREATE: u32 = 1;
    pub const JOIN: u32 = 2;
    pub const LEAVE: u32 = 3;
    pub const SNAPSHOT: u32 = 4;
}

/// A read cursor moved to `read_up_to` (absolute: replay keeps the highest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CursorRecord {
    /// `conv::SINGLE` (`a < = b` are the two uids) or `conv::GROUP` (`a` is the group id).
    #[prost(uint32, tag = "1")]
    pub conv_type: u32,
    #[prost(uint64, tag = "2")]
    pub a: u64,
    #[prost(uint64, tag = "3")]
    pub b: u64,
    #[prost(uint64, tag = "4")]
    pub uid: u64,
    #[prost(uint64, tag = "5")]
    pub read_up_to: u64,
}

impl CursorRecord {
    pub fn new(conv: ConvKey, uid: u64, read_up_to: u64) -> Self {
        let (conv_type, a, b) = match conv {
            ConvKey::Single { low, high } => (crate::conv::SINGLE, low, high),
            ConvKey::Group(gid) => (crate::conv::GROUP, gid, 0),
        };
        Self {
            conv_type,
            a,
            b,
            uid,
            read_up_to,
        }
    }

    /// The conversation named, `None` for an unknown type or a malformed single key.
    pub fn conv(&self) -> Option<ConvKey> {
        match self.conv_type {
            crate::conv::SINGLE if self.a <= self.b => Some(ConvKey::Single {
                low: self.a,
                high: self.b,
            }),
            crate::conv::GROUP => Some(ConvKey::Group(self.a)),
            _ => None,
        }
    }
}

/// A sender-keyed dedup entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DedupRecord {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint64, tag = "2")]
    pub client_msg_id: u64,
    #[prost(uint64, tag = "3")]
    pub msg_id: u64,
    #[prost(uint64, tag = "4")]
    pub server_time_ms: u64,
    /// When the entry's window started (unix ms).
    #[prost(uint64, tag = "5")]
    pub recorded_at: u64,
}

/// How a partition's journal is kept (from `backend.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    pub log: log::Options,
    pub retention: Retention,
}

/// One partition's log and the bookkeeping of what its segments hold.
#[derive(Debug)]
pub struct Journal {
    log: Log,
    retention: Retention,
    /// `(segment base_seq, largest msg_id stored in it)`, ascending, for segments that hold
    /// messages: dropping a prefix of segments drops the messages up to that id from memory
    /// (ids grow with the log: one generator per partition, appended in order).
    msg_marks: VecDeque<(u64, u64)>,
    next_retention_ms: u64,
    /// Appends that failed (disk full, I/O error) since start.
    failures: u64,
    scratch: Vec<u8>,
}

impl Journal {
    /// Wraps an opened log; `messages` are the `(seq, msg_id)` of the MESSAGE records replayed.
    pub fn new(log: Log, retention: Retention, messages: &[(u64, u64)], now_ms: u64) -> Self {
        let bases: Vec<u64> = log.segments().map(|s| s.base_seq).collect();
        let mut msg_marks: VecDeque<(u64, u64)> = VecDeque::new();
        for &(seq, msg_id) in messages {
            // The segment holding `seq`: the last base at or below it.
            let at = bases.partition_point(|&b| b <= seq);
            let Some(&base) = at.checked_sub(1).and_then(|i| bases.get(i)) else {
                continue;
            };
            match msg_marks.back_mut() {
                Some((b, max)) if *b == base => *max = (*max).max(msg_id),
                _ => msg_marks.push_back((base, msg_id)),
            }
        }
        Self {
            log,
            retention,
            msg_marks,
            next_retention_ms: now_ms,
            failures: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends one record; on failure counts it and logs it (rate-limited by the caller's
    /// answer: every failed SEND is answered BACKEND_UNAVAILABLE).
    pub fn append(
        &mut self,
        kind: u8,
        now_ms: u64,
        record: &impl prost::Message,
    ) -> Result<u64, LogError> {
        self.scratch.clear();
        // Invariant: encoding into a Vec cannot run out of room.
        record
            .encode(&mut self.scratch)
            .expect("a Vec grows to fit");
        match self.log.append(kind, now_ms, &self.scratch) {
            Ok(seq) => Ok(seq),
            Err(err) => {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    tracing::error!(dir = %self.log.dir().display(), failures = self.failures, %err, "journal append failed");
                }
                Err(err)
            }
        }
    }

    /// Appends a MESSAGE record and notes which segment holds it.
    pub fn append_message(&mut self, now_ms: u64, msg: &link::Msg) -> Result<u64, LogError> {
        let seq = self.append(log::kind::MESSAGE, now_ms, msg)?;
        let base = self.log.active_base();
        match self.msg_marks.back_mut() {
            Some((b, max)) if *b == base => *max = (*max).max(msg.msg_id),
            _ => self.msg_marks.push_back((base, msg.msg_id)),
        }
        Ok(seq)
    }

    /// Whether a retention check is due at `now_ms`; if so, the next one is scheduled.
    pub fn retention_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_retention_ms
            || (self.retention.max_bytes.is_none() && self.retention.max_age_ms.is_none())
        {
            return false;
        }
        self.next_retention_ms = now_ms.saturating_add(RETENTION_CHECK_MS);
        true
    }

    /// Where retention would cut now (see [`Log::retention_cut`]), and the newest record time
    /// in the segments before the cut.
    pub fn retention_cut(&self, now_ms: u64) -> Option<(u64, u64)> {
        let cut = self.log.retention_cut(now_ms, &self.retention)?;
        let newest = self
            .log
            .segments()
            .take_while(|s| s.base_seq < cut)
            .map(|s| s.newest_ms)
            .max()
            .unwrap_or(0);
        Some((cut, newest))
    }

    /// Drops the segments before `cut`; returns the largest msg_id they held (0: none), which
    /// the caller drops from memory.
    pub fn drop_before(&mut self, cut: u64) -> Result<u64, LogError> {
        self.log.drop_before(cut)?;
        let mut max = 0;
        while let Some(&(base, id)) = self.msg_marks.front() {
            if base >= cut {
                break;
            }
            max = max.max(id);
            self.msg_marks.pop_front();
        }
        Ok(max)
    }

    /// When the host must call [`Journal::sync`] (see [`Log::sync_deadline`]).
    pub fn sync_deadline(&self) -> Option<u64> {
        self.log.sync_deadline()
    }

    /// Makes every append durable.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.log.sync()
    }

    /// See [`Log::set_space_limit`].
    pub fn set_space_limit(&mut self, limit: Option<u64>) {
        self.log.set_space_limit(limit);
    }

    pub fn failures(&self) -> u64 {
        self.failures
    }

    pub fn log(&self) -> &Log {
        &self.log
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // A clean stop leaves nothing unsynced under `always` and `interval`.
        if self.log.is_dirty()
            && self.log.sync_policy() != log::Sync::Os
            && let Err(err) = self.log.sync()
        {
            tracing::error!(dir = %self.log.dir().display(), %err, "journal sync at close failed");
        }
    }
}
