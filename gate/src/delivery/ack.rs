//! Per-session ack tracker: the PUSHes sent to one session and not yet acknowledged.
//!
//! # What it owns
//!
//! For one session, every pending PUSH: its frame (a [`SharedFrame`], which also names its
//! msg_id and conversation as this session sees it; a resend copies nothing), how often it was
//! resent, and its next deadline. Nothing else: the session's socket, the shard's timer wheel
//! and the backend link belong to the shell.
//!
//! # Who drives it
//!
//! The shard shell owns one [`AckTracker`] per connection and keeps **one** wheel entry for it, at
//! [`AckTracker::poll_timeout`] (re-armed after every call that changes it); there is no timer
//! per message. The shell calls [`AckTracker::track`] when it queues a PUSH,
//! [`AckTracker::ack`] on an ACK frame, [`AckTracker::clear_through`] on a forward PULL,
//! [`AckTracker::handle_timeout`] when the wheel entry fires, and [`AckTracker::drain`] when the
//! session closes. Ids that come back in `delivered` / `undelivered` go to the shard's
//! [`ReportBatcher`](super::ReportBatcher). The tracker never touches IO and never reads the
//! clock; `now` must not go backwards (a smaller `now` is harmless: nothing fires early, see
//! below).
//!
//! # Retry schedule
//!
//! A PUSH sent at `t` (attempt 0) is due at `t + ack_timeout`. When due and unacknowledged it is
//! resent while `attempt < max_retries`, with `attempt += 1` and the next deadline
//! `now + min(ack_timeout * 2^attempt, max_backoff)` ([`AckConfig::backoff`]); otherwise it is
//! given up: reported undelivered (the backend keeps it for the next PULL) and forgotten, and the
//! shell probes the client with PING (PROTOCOL.md "Session rules" 4).
//!
//! # Data structure and invariants
//!
//! Two parts, because almost every PUSH is acknowledged once, in the order it was sent:
//!
//! - **`fresh`**: first sends (attempt 0) in push order, a `VecDeque` of
//!   `(msg_id, deadline, frame)` — 24 bytes a slot: the deadline in nanoseconds after the
//!   tracker's epoch, the frame a pointer, because a fan-out of a thousand sessions times a
//!   thousand pending PUSHes streams through these slots (at 72 bytes a slot they were a
//!   quarter of its cache misses). Every first send waits `ack_timeout`, so deadlines are
//!   non-decreasing along the deque (an appended deadline is raised to the last one, so a `now`
//!   that went backwards can only make a resend later, never early). An acknowledged entry
//!   gives up its frame and stays as a dead slot until it reaches the front; **the front is
//!   always live**, so it holds the earliest first-send deadline. Dead slots are bounded: when
//!   the deque holds more than `2 * live + 32` slots it is compacted (O(slots), amortised O(1)).
//!   An ACK is looked for first at the *hint* (just past the last entry found) and the few
//!   slots after it: in-order ACKs cost one sequential step each, with no hashing, which is
//!   what a fan-out of a thousand sessions times a thousand pending PUSHes needs (the hash
//!   map this replaced missed the cache on every insert and every ACK). Otherwise: a binary
//!   search while the deque's msg_ids are increasing (the usual case: ids grow within a
//!   conversation), or an index `msg_id -> slot` built on first need and kept until the deque
//!   empties (ids from several partitions interleaved), so no ACK pattern costs a scan.
//! - **`retrying`**: entries that came due at least once, a map `msg_id -> entry` plus one FIFO
//!   of `(deadline, msg_id)` per *level*, where an entry's level is `min(attempt, cap)` and
//!   `cap` is the first attempt whose backoff reaches `max_backoff`. Every push into one level
//!   waits the same duration, so each level's FIFO is sorted by deadline (appends are raised to
//!   the last deadline, as above). Every retrying entry has a live item in its level's FIFO;
//!   acked and resent entries leave their old item behind (lazy deletion); an item is live iff
//!   the map holds its msg_id at that level with that deadline; every FIFO head is live; dead
//!   items are compacted past `2 * len + 32`.
//!
//! A msg_id is live in at most one place. `poll_timeout` is the minimum of `fresh`'s front and
//! the FIFO heads: exactly the earliest pending deadline. **Empty means unallocated** after
//! [`AckTracker::release`]: the whole state lives behind one `Option<Box<..>>`.
//!
//! Costs: `track` is an append (plus a lookup only when its msg_id is not above every id
//! tracked, to ignore a duplicate); an in-order acked id is O(1) without hashing, any other
//! O(log n) or one hash operation; `handle_timeout` is O(k log k) for k due entries (sorted by
//! msg_id so resends keep conversation order); `poll_timeout` is O(levels), a handful;
//! `clear_through` is one pass over the pending entries (bounded by `max_pending`), chosen so
//! the hot path maintains no per-conversation index for the rarer PULL.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::{IdMap, SharedFrame, later};

/// The FIFOs hold at most `2 * len + COMPACT_SLACK` items between operations.
const COMPACT_SLACK: usize = 32;

/// The retry policy of one session's tracker (the `delivery.*` keys, validated by the shell).
///
/// Passed by reference to every call that schedules; it should not change during a tracker's
/// life (if it does, deadlines already scheduled stand and new ones may be later than asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckConfig {
    /// Wait for an ACK after the first send (`delivery.ack_timeout_ms`).
    pub ack_timeout: Duration,
    /// Cap of the doubling wait between resends; raised to `ack_timeout` if below it.
    pub max_backoff: Duration,
    /// Resends before a PUSH is given up (`delivery.max_retries`); 0 gives up at the first
    /// timeout.
    pub max_retries: u32,
    /// Pending PUSHes per session before [`AckTracker::track`] refuses with [`Full`].
    pub max_pending: usize,
}

impl AckConfig {
    /// The wait after send number `attempt` (0 = the first send):
    /// `min(ack_timeout * 2^attempt, max(max_backoff, ack_timeout))`, computed without overflow.
    #[must_use]
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.max_backoff.max(self.ack_timeout);
        let scaled = 1u128
            .checked_shl(attempt)
            .and_then(|factor| self.ack_timeout.as_nanos().checked_mul(factor));
        match scaled {
            Some(nanos) if nanos < cap.as_nanos() => duration_from_nanos(nanos),
            _ => cap,
        }
    }

    /// The first attempt whose wait is the capped one; every later attempt waits the same, so
    /// they share one level.
    fn cap_level(&self) -> u32 {
        let ack = self.ack_timeout.as_nanos();
        if ack == 0 {
            return 0;
        }
        let ratio = self.max_backoff.as_nanos().div_ceil(ack);
        if ratio <= 1 {
            0
        } else {
            // ceil(log2(ratio)): the smallest k with ack * 2^k >= max_backoff.
            u128::BITS - (ratio - 1).leading_zeros()
        }
    }
}

/// `nanos` as a `Duration`; only called with values below some `Duration`'s nanos.
fn duration_from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let sub = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, sub)
}

/// A conversation as this session sees it (PROTOCOL.md: for a single chat, the other party).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ConvRef {
    pub conv_type: u32,
    pub conv_id: u64,
}

/// [`AckTracker::track`] refused a PUSH: `max_pending` PUSHes are already waiting for an ACK. The
/// shell treats the session as a slow consumer (KICK 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{max_pending} PUSHes already pending acknowledgement")]
pub struct Full {
    pub max_pending: usize,
}

/// A PUSH resent at least once, waiting for its ACK.
struct Pending {
    frame: SharedFrame,
    /// When it is due; equal to the deadline of its live FIFO item.
    deadline: Instant,
    /// Resends so far.
    attempt: u32,
    /// The FIFO holding its live item: `min(attempt, cap_level)` when it was scheduled.
    level: u32,
}

/// A first send in push order; dead (acknowledged, cleared or moved to `retrying`) once its
/// frame is taken.
struct Fresh {
    msg_id: u64,
    /// Nanoseconds after [`Inner::epoch`].
    deadline: u64,
    frame: Option<SharedFrame>,
}

impl Fresh {
    fn is_live(&self) -> bool {
        self.frame.is_some()
    }
}

/// A FIFO item; live iff `retrying` holds `msg_id` at this level with this `deadline`.
#[derive(Clone, Copy, Debug)]
struct Due {
    deadline: Instant,
    msg_id: u64,
}

/// Slots after the hint an ACK is looked for before a search: a few lost ACKs in a row still
/// take the fast path.
const HINT_WINDOW: usize = 8;

/// The state of a non-empty tracker.
struct Inner {
    /// The instant first-send deadlines count from (the first `track`'s `now`).
    epoch: Instant,
    /// First sends, in push order (see the module doc).
    fresh: VecDeque<Fresh>,
    /// Live slots in `fresh`.
    fresh_live: usize,
    /// Every msg_id in `fresh` is above the one before it: lookups may binary-search.
    fresh_sorted: bool,
    /// Absolute number of `fresh[0]`: slots are numbered in push order from the tracker's
    /// start, so `index` survives pops at the front.
    front_seq: u64,
    /// Where the next in-order ACK is expected: the slot after the last one found.
    hint: usize,
    /// msg_id -> absolute slot number of every live slot, while `fresh` is not sorted and a
    /// lookup needed it; dropped when `fresh` empties.
    index: Option<IdMap<u64, u64>>,
    /// The highest msg_id tracked since the tracker was last empty: a larger one is new.
    max_tracked: u64,
    /// msg_id and deadline of `fresh`'s back, kept here so an append reads no slot (the
    /// deque's tail is cold when a fan-out comes back to this session).
    back_msg_id: u64,
    back_deadline: Option<u64>,
    /// The last `track`'s `now` and the first-send deadline computed from it: a fan-out tracks
    /// a run of PUSHes at one `now`, and the deadline arithmetic was a tenth of a track.
    last_track: Option<(Instant, u64)>,
    /// Entries resent at least once (the rare path).
    retrying: IdMap<u64, Pending>,
    /// The FIFO of each level, indexed by level, grown on demand.
    levels: Vec<VecDeque<Due>>,
    /// Scratch for `handle_timeout`, kept while the tracker is allocated.
    due: Vec<u64>,
}

impl Inner {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            fresh: VecDeque::new(),
            fresh_live: 0,
            fresh_sorted: true,
            front_seq: 0,
            hint: 0,
            index: None,
            max_tracked: 0,
            back_msg_id: 0,
            back_deadline: None,
            last_track: None,
            retrying: IdMap::default(),
            levels: Vec::new(),
            due: Vec::new(),
        }
    }
}

impl Inner {
    /// `at` as nanoseconds after the epoch; an instant before it counts as the epoch (later,
    /// never earlier, than asked).
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the epoch.
    fn instant(&self, nanos: u64) -> Instant {
        later(self.epoch, Duration::from_nanos(nanos))
    }

    fn len(&self) -> usize {
        self.fresh_live + self.retrying.len()
    }

    /// The slot of the live first send `msg_id`, if there is one.
    fn find_fresh(&mut self, msg_id: u64) -> Option<usize> {
        // The usual case: the ACK names the slot at the hint.
        if let Some(e) = self.fresh.get(self.hint)
            && e.msg_id == msg_id
            && e.is_live()
        {
            return Some(self.hint);
        }
        let len = self.fresh.len();
        let start = self.hint.min(len);
        let window = start..(start + HINT_WINDOW).min(len);
        if let Some(slot) = window
            .into_iter()
            .find(|&i| self.fresh[i].msg_id == msg_id && self.fresh[i].is_live())
        {
            return Some(slot);
        }
        if self.fresh_sorted {
            // Strictly increasing ids: at most one slot holds `msg_id`.
            let slot = self.fresh.partition_point(|e| e.msg_id < msg_id);
            return self
                .fresh
                .get(slot)
                .is_some_and(|e| e.msg_id == msg_id && e.is_live())
                .then_some(slot);
        }
        let front_seq = self.front_seq;
        let index = self.index.get_or_insert_with(|| {
            self.fresh
                .iter()
                .enumerate()
                .filter(|(_, e)| e.is_live())
                .map(|(i, e)| (e.msg_id, front_seq + i as u64))
                .collect()
        });
        let seq = *index.get(&msg_id)?;
        // Invariant: the index names live slots at or after the front.
        usize::try_from(seq - front_seq).ok()
    }

    /// Takes the frame of live slot `slot` (it becomes dead).
    fn take_fresh(&mut self, slot: usize) -> Option<SharedFrame> {
        let entry = self.fresh.get_mut(slot)?;
        let frame = entry.frame.take()?;
        self.fresh_live -= 1;
        if let Some(index) = &mut self.index {
            index.remove(&entry.msg_id);
        }
        Some(frame)
    }

    /// Is `msg_id` pending anywhere?
    fn contains(&mut self, msg_id: u64) -> bool {
        msg_id <= self.max_tracked
            && (self.retrying.contains_key(&msg_id) || self.find_fresh(msg_id).is_some())
    }

    /// Restores the invariants after entries left: empties everything (keeping allocations)
    /// when nothing is pending; else pops dead slots and FIFO heads and compacts when dead
    /// ones dominate.
    fn settle(&mut self) {
        if self.len() == 0 {
            self.fresh.clear();
            self.back_deadline = None;
            self.fresh_sorted = true;
            self.hint = 0;
            self.index = None;
            self.max_tracked = 0;
            self.levels.iter_mut().for_each(VecDeque::clear);
            return;
        }
        while self.fresh.front().is_some_and(|e| !e.is_live()) {
            self.fresh.pop_front();
            self.front_seq += 1;
            self.hint = self.hint.saturating_sub(1);
        }
        if self.fresh.len() > 2 * self.fresh_live + COMPACT_SLACK {
            self.fresh.retain(Fresh::is_live);
            self.hint = 0;
            if let Some(back) = self.fresh.back() {
                self.back_msg_id = back.msg_id;
                self.back_deadline = Some(back.deadline);
            }
            if let Some(index) = &mut self.index {
                index.clear();
                let front_seq = self.front_seq;
                index.extend(
                    self.fresh
                        .iter()
                        .enumerate()
                        .map(|(i, e)| (e.msg_id, front_seq + i as u64)),
                );
            }
        }
        if self.fresh.is_empty() {
            self.fresh_sorted = true;
            self.index = None;
            self.back_deadline = None;
        }
        let Self {
            retrying, levels, ..
        } = self;
        let mut items = 0;
        for (level, queue) in levels.iter_mut().enumerate() {
            while queue.front().is_some_and(|&d| !is_live(retrying, level, d)) {
                queue.pop_front();
            }
            items += queue.len();
        }
        if items > 2 * retrying.len() + COMPACT_SLACK {
            for (level, queue) in levels.iter_mut().enumerate() {
                queue.retain(|&d| is_live(retrying, level, d));
            }
        }
    }
}

/// The unacknowledged PUSHes of one session and when to resend them. See the module doc.
///
/// Call order: `track` / `ack` / `clear_through` as frames come and go; `handle_timeout(now)`
/// when `poll_timeout()` has passed; re-arm the session's wheel entry at `poll_timeout()` after
/// each of them; `drain` at close.
///
/// Size: one pointer (`Option<Box<..>>`), and a released tracker holds no heap memory, because
/// a shard keeps one per connection and most of a million connections are idle. Emptying keeps
/// the state for reuse until [`AckTracker::release`].
#[derive(Default)]
pub struct AckTracker {
    inner: Option<Box<Inner>>,
}

impl AckTracker {
    /// An empty tracker (allocates nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// A PUSH was queued to the session at `now`: it is due at `now + ack_timeout`.
    ///
    /// `Err(Full)` when `max_pending` are already pending (the shell then treats the session as
    /// a slow consumer). A `msg_id` already pending is ignored (`Ok`, its schedule unchanged).
    /// O(1) amortised.
    pub fn track(&mut self, frame: SharedFrame, now: Instant, cfg: &AckConfig) -> Result<(), Full> {
        let full = Full {
            max_pending: cfg.max_pending,
        };
        let inner = match &mut self.inner {
            Some(inner) => inner,
            None if cfg.max_pending == 0 => return Err(full),
            None => self.inner.insert(Box::new(Inner::new(now))),
        };
        let msg_id = frame.msg_id();
        if inner.contains(msg_id) {
            return Ok(());
        }
        if inner.len() >= cfg.max_pending {
            return Err(full);
        }
        let at = match inner.last_track {
            Some((at_now, at)) if at_now == now => at,
            _ => {
                let at = inner.nanos(later(now, cfg.backoff(0)));
                inner.last_track = Some((now, at));
                at
            }
        };
        let deadline = inner.back_deadline.map_or(at, |last| last.max(at));
        if inner.back_deadline.is_some() && inner.back_msg_id >= msg_id {
            inner.fresh_sorted = false;
        }
        inner.back_deadline = Some(deadline);
        inner.back_msg_id = msg_id;
        if let Some(index) = &mut inner.index {
            index.insert(msg_id, inner.front_seq + inner.fresh.len() as u64);
        }
        inner.fresh.push_back(Fresh {
            msg_id,
            deadline,
            frame: Some(frame),
        });
        inner.fresh_live += 1;
        inner.max_tracked = inner.max_tracked.max(msg_id);
        Ok(())
    }

    /// An ACK named `msg_ids`: each pending one is forgotten and appended to `delivered`, in the
    /// order named. Unknown and repeated ids are ignored. O(1) per id when ACKs come in the
    /// order the PUSHes were sent.
    pub fn ack(&mut self, msg_ids: &[u64], delivered: &mut Vec<u64>) {
        let Some(inner) = self.inner.as_deref_mut() else {
            return;
        };
        for &msg_id in msg_ids {
            if msg_id > inner.max_tracked {
                continue;
            }
            // The usual case, an ACK of the oldest first send: popped here, one slot read.
            if inner.hint == 0
                && let Some(front) = inner.fresh.front()
                && front.msg_id == msg_id
                && front.is_live()
            {
                inner.fresh.pop_front();
                inner.front_seq += 1;
                inner.fresh_live -= 1;
                if let Some(index) = &mut inner.index {
                    index.remove(&msg_id);
                }
                delivered.push(msg_id);
                continue;
            }
            if let Some(slot) = inner.find_fresh(msg_id) {
                if inner.take_fresh(slot).is_some() {
                    inner.hint = slot + 1;
                    delivered.push(msg_id);
                }
            } else if inner.retrying.remove(&msg_id).is_some() {
                delivered.push(msg_id);
            }
        }
        inner.settle();
    }

    /// A forward PULL of `conv` from `after_msg_id` acknowledges everything up to it
    /// (PROTOCOL.md "Session rules" 6): every pending PUSH of `conv` with `msg_id <=
    /// after_msg_id` is forgotten and appended to `delivered`, in msg_id order. Other
    /// conversations are untouched. One pass over the pending entries.
    pub fn clear_through(&mut self, conv: ConvRef, after_msg_id: u64, delivered: &mut Vec<u64>) {
        let Some(inner) = self.inner.as_deref_mut() else {
            return;
        };
        let start = delivered.len();
        for slot in 0..inner.fresh.len() {
            let e = &inner.fresh[slot];
            if e.msg_id <= after_msg_id && e.frame.as_ref().is_some_and(|f| f.conv() == conv) {
                let msg_id = e.msg_id;
                inner.take_fresh(slot);
                delivered.push(msg_id);
            }
        }
        inner.retrying.retain(|&msg_id, pending| {
            let cleared = pending.frame.conv() == conv && msg_id <= after_msg_id;
            if cleared {
                delivered.push(msg_id);
            }
            !cleared
        });
        delivered[start..].sort_unstable();
        inner.settle();
    }

    /// The earliest deadline of a pending PUSH: call [`Self::handle_timeout`] then. `None` when
    /// nothing is pending. O(levels).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let inner = self.inner.as_deref()?;
        // Invariant: the front of `fresh` and every FIFO head are live.
        let fresh = inner.fresh.front().map(|e| inner.instant(e.deadline));
        let retrying = inner
            .levels
            .iter()
            .filter_map(|q| q.front())
            .map(|d| d.deadline);
        fresh.into_iter().chain(retrying).min()
    }

    /// Handles every PUSH due at `now`, in msg_id order (so resends keep conversation order):
    /// while `attempt < max_retries` its frame is appended to `resend` and its next deadline is
    /// `now + backoff(attempt + 1)`; otherwise it is given up: its msg_id is appended to
    /// `undelivered` and it is forgotten.
    ///
    /// Returns whether anything was given up: the shell then probes the client with PING.
    #[must_use = "a PUSH given up means the client must be probed with PING"]
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        cfg: &AckConfig,
        resend: &mut Vec<SharedFrame>,
        undelivered: &mut Vec<u64>,
    ) -> bool {
        let Some(inner) = self.inner.as_deref_mut() else {
            return false;
        };
        inner.due.clear();
        // First sends that came due move to `retrying` (attempt 0, in no FIFO yet), which
        // grows once for all of them.
        let now_nanos = inner.nanos(now);
        let coming = inner
            .fresh
            .iter()
            .take_while(|e| e.deadline <= now_nanos)
            .count();
        inner.retrying.reserve(coming);
        while inner.fresh.front().is_some_and(|e| e.deadline <= now_nanos) {
            if let Some(e) = inner.fresh.front()
                && e.is_live()
            {
                let (msg_id, deadline) = (e.msg_id, inner.instant(e.deadline));
                if let Some(frame) = inner.take_fresh(0) {
                    inner.retrying.insert(
                        msg_id,
                        Pending {
                            frame,
                            deadline,
                            attempt: 0,
                            level: u32::MAX,
                        },
                    );
                    inner.due.push(msg_id);
                }
            }
            inner.fresh.pop_front();
            inner.front_seq += 1;
            inner.hint = inner.hint.saturating_sub(1);
        }
        let Inner {
            retrying,
            levels,
            due,
            ..
        } = inner;
        for (level, queue) in levels.iter_mut().enumerate() {
            while let Some(&item) = queue.front() {
                if item.deadline > now {
                    break;
                }
                queue.pop_front();
                if is_live(retrying, level, item) {
                    due.push(item.msg_id);
                }
            }
        }
        // An entry re-tracked at the same instant can have two live items; handle it once.
        due.sort_unstable();
        due.dedup();

        let cap = cfg.cap_level();
        let mut gave_up = false;
        for &msg_id in due.iter() {
            let Some(entry) = retrying.get_mut(&msg_id) else {
                continue;
            };
            if entry.attempt >= cfg.max_retries {
                retrying.remove(&msg_id);
                undelivered.push(msg_id);
                gave_up = true;
                continue;
            }
            entry.attempt += 1;
            entry.level = entry.attempt.min(cap);
            resend.push(entry.frame.clone());
            let queue = level_mut(levels, entry.level);
            entry.deadline = schedule(queue, later(now, cfg.backoff(entry.attempt)), msg_id);
        }
        inner.settle();
        gave_up
    }

    /// The session is closing: every pending PUSH is appended to `undelivered` (in msg_id order)
    /// and the tracker is left empty, holding no memory.
    pub fn drain(&mut self, undelivered: &mut Vec<u64>) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let start = undelivered.len();
        undelivered.extend(inner.fresh.iter().filter(|e| e.is_live()).map(|e| e.msg_id));
        undelivered.extend(inner.retrying.into_keys());
        undelivered[start..].sort_unstable();
    }

    /// Pending PUSHes.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.len())
    }

    /// Nothing pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees the state kept from earlier PUSHes if nothing is pending. The shell calls it when
    /// the session's timer fires with nothing due, so a quiet session holds no heap memory
    /// while a busy one does not allocate per message.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.inner = None;
        }
    }
}

/// The FIFO of `level`, growing the level vector if this is the first entry to reach it.
fn level_mut(levels: &mut Vec<VecDeque<Due>>, level: u32) -> &mut VecDeque<Due> {
    let index = level as usize;
    if levels.len() <= index {
        levels.resize_with(index + 1, VecDeque::new);
    }
    &mut levels[index]
}

/// Appends an item due at `at` (raised to the FIFO's last deadline, keeping it sorted) and
/// returns the deadline used.
fn schedule(queue: &mut VecDeque<Due>, at: Instant, msg_id: u64) -> Instant {
    let deadline = queue.back().map_or(at, |last| last.deadline.max(at));
    queue.push_back(Due { deadline, msg_id });
    deadline
}

fn is_live(retrying: &IdMap<u64, Pending>, level: usize, item: Due) -> bool {
    retrying
        .get(&item.msg_id)
        .is_some_and(|p| p.level as usize == level && p.deadline == item.deadline)
}

impl fmt::Debug for AckTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AckTracker")
            .field("pending", &self.len())
            .field("next", &self.poll_timeout())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::delivery::OutFrame;
    use bytes::Bytes;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg() -> AckConfig {
        AckConfig {
            ack_timeout: ms(100),
            max_backoff: ms(1_000),
            max_retries: 5,
            max_pending: 1_000,
        }
    }

    const A: ConvRef = ConvRef {
        conv_type: 1,
        conv_id: 7,
    };
    const B: ConvRef = ConvRef {
        conv_type: 2,
        conv_id: 900,
    };

    /// The PUSH frame of `msg_id` in `conv`.
    fn frame(msg_id: u64, conv: ConvRef) -> SharedFrame {
        OutFrame::push(Bytes::copy_from_slice(&msg_id.to_be_bytes()), msg_id, conv)
    }

    fn id_of(frame: &SharedFrame) -> u64 {
        frame.msg_id()
    }

    fn track(t: &mut AckTracker, id: u64, conv: ConvRef, now: Instant, cfg: &AckConfig) {
        t.track(frame(id, conv), now, cfg)
            .expect("tracker has room");
    }

    /// Runs `handle_timeout(now)`: (resent msg_ids, given up msg_ids, returned flag).
    fn fire(t: &mut AckTracker, now: Instant, cfg: &AckConfig) -> (Vec<u64>, Vec<u64>, bool) {
        let (mut resend, mut undelivered) = (Vec::new(), Vec::new());
        let gave_up = t.handle_timeout(now, cfg, &mut resend, &mut undelivered);
        (resend.iter().map(id_of).collect(), undelivered, gave_up)
    }

    impl AckTracker {
        /// Checks the invariants of the module doc.
        fn check_invariants(&self) {
            let Some(inner) = self.inner.as_deref() else {
                return;
            };
            if inner.len() == 0 {
                // Kept for reuse after emptying: nothing queued either.
                assert!(inner.fresh.is_empty(), "an empty tracker holds no slot");
                assert!(
                    inner.levels.iter().all(VecDeque::is_empty),
                    "an empty tracker queues nothing"
                );
                return;
            }
            // fresh: front live, deadlines sorted, live count, sortedness, index, bounded.
            if let Some(front) = inner.fresh.front() {
                assert!(front.is_live(), "dead front");
            }
            let slots: Vec<&Fresh> = inner.fresh.iter().collect();
            for pair in slots.windows(2) {
                assert!(pair[0].deadline <= pair[1].deadline, "fresh out of order");
                if inner.fresh_sorted {
                    assert!(pair[0].msg_id < pair[1].msg_id, "fresh not sorted");
                }
            }
            let live: Vec<u64> = slots
                .iter()
                .filter(|e| e.is_live())
                .map(|e| e.msg_id)
                .collect();
            assert_eq!(live.len(), inner.fresh_live, "live count");
            let distinct: std::collections::HashSet<u64> = live.iter().copied().collect();
            assert_eq!(distinct.len(), live.len(), "a msg_id live twice in fresh");
            for id in &live {
                assert!(!inner.retrying.contains_key(id), "{id} live in both parts");
                assert!(*id <= inner.max_tracked);
            }
            if let Some(index) = &inner.index {
                assert_eq!(index.len(), live.len(), "index covers the live slots");
                for (i, e) in slots.iter().enumerate() {
                    if e.is_live() {
                        assert_eq!(index.get(&e.msg_id), Some(&(inner.front_seq + i as u64)));
                    }
                }
            }
            assert!(inner.fresh.len() <= 2 * inner.fresh_live + COMPACT_SLACK);
            assert_eq!(inner.back_deadline, inner.fresh.back().map(|e| e.deadline));
            if let Some(back) = inner.fresh.back() {
                assert_eq!(inner.back_msg_id, back.msg_id);
            }
            // retrying: heads live, FIFOs sorted, every entry has a live item, bounded.
            let mut items = 0;
            for (level, queue) in inner.levels.iter().enumerate() {
                items += queue.len();
                if let Some(&head) = queue.front() {
                    assert!(is_live(&inner.retrying, level, head), "dead head");
                }
                for pair in queue.iter().collect::<Vec<_>>().windows(2) {
                    assert!(pair[0].deadline <= pair[1].deadline, "FIFO out of order");
                }
            }
            for (&msg_id, p) in &inner.retrying {
                assert!(msg_id <= inner.max_tracked);
                let live = inner
                    .levels
                    .get(p.level as usize)
                    .expect("level exists")
                    .iter()
                    .any(|d| d.msg_id == msg_id && d.deadline == p.deadline);
                assert!(live, "pending {msg_id} has no live item");
            }
            assert!(items <= 2 * inner.retrying.len() + COMPACT_SLACK);
        }
    }

    #[test]
    fn push_is_resent_after_ack_timeout_with_backoff() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        track(&mut t, 10, A, t0, &cfg);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(100)));
        assert_eq!(fire(&mut t, t0 + ms(99), &cfg), (vec![], vec![], false));

        // Resends at 100, then +200, +400, +800: the wait doubles each time.
        let mut at = t0 + ms(100);
        for wait in [200, 400, 800] {
            assert_eq!(fire(&mut t, at, &cfg), (vec![10], vec![], false));
            assert_eq!(t.poll_timeout(), Some(at + ms(wait)));
            assert_eq!(fire(&mut t, at + ms(wait - 1), &cfg).0, Vec::<u64>::new());
            at += ms(wait);
        }
        assert_eq!(t.len(), 1);
        t.check_invariants();
    }

    #[test]
    fn backoff_is_capped() {
        let cfg = AckConfig {
            max_retries: 10,
            ..cfg()
        };
        let waits: Vec<u64> = (0..8).map(|a| cfg.backoff(a).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000]);
        assert_eq!(cfg.cap_level(), 4);
        assert_eq!(cfg.backoff(u32::MAX), ms(1_000));

        // Driven at its deadlines, the gaps between resends stop growing at max_backoff.
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        track(&mut t, 1, A, t0, &cfg);
        let mut sent = vec![t0];
        while let Some(at) = t.poll_timeout() {
            let (resent, _, _) = fire(&mut t, at, &cfg);
            if !resent.is_empty() {
                sent.push(at);
            }
        }
        let gaps: Vec<u128> = sent.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
        assert_eq!(
            gaps,
            [100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000, 1_000, 1_000]
        );

        // Odd configurations neither overflow nor shorten the first wait.
        let odd = AckConfig {
            ack_timeout: ms(500),
            max_backoff: ms(10),
            ..cfg
        };
        assert_eq!(
            (odd.backoff(0), odd.backoff(3), odd.cap_level()),
            (ms(500), ms(500), 0)
        );
        let huge = AckConfig {
            ack_timeout: Duration::from_nanos(1),
            max_backoff: Duration::MAX,
            ..cfg
        };
        assert_eq!(huge.backoff(127), Duration::MAX);
        assert_eq!(huge.backoff(3), Duration::from_nanos(8));
        assert!(huge.cap_level() < 128);
    }

    #[test]
    fn given_up_after_max_retries_and_reported_undelivered() {
        let cfg = AckConfig {
            max_retries: 2,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        track(&mut t, 1, A, t0, &cfg);
        track(&mut t, 2, B, t0 + ms(50), &cfg);
        let mut log = Vec::new();
        while let Some(at) = t.poll_timeout() {
            let (resent, undelivered, gave_up) = fire(&mut t, at, &cfg);
            assert_eq!(gave_up, !undelivered.is_empty());
            log.push(((at - t0).as_millis(), resent, undelivered));
        }
        assert_eq!(
            log,
            [
                (100, vec![1], vec![]),
                (150, vec![2], vec![]),
                (300, vec![1], vec![]),
                (350, vec![2], vec![]),
                (700, vec![], vec![1]),
                (750, vec![], vec![2]),
            ]
        );
        assert!(t.is_empty());
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn batched_ack_clears_many() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        for id in 1..=200 {
            track(
                &mut t,
                id,
                if id % 2 == 0 { A } else { B },
                t0 + ms(id / 10),
                &cfg,
            );
        }
        let mut delivered = Vec::new();
        let batch: Vec<u64> = (1..=64).collect();
        t.ack(&batch, &mut delivered);
        assert_eq!(delivered, batch);
        assert_eq!(t.len(), 136);
        // The earliest remaining deadline is that of id 65, tracked at 6 ms.
        assert_eq!(t.poll_timeout(), Some(t0 + ms(106)));
        t.check_invariants();

        delivered.clear();
        let rest: Vec<u64> = (65..=200).rev().collect();
        t.ack(&rest, &mut delivered);
        assert_eq!(delivered, rest);
        assert!(t.is_empty());
        assert_eq!(fire(&mut t, t0 + ms(10_000), &cfg), (vec![], vec![], false));
    }

    #[test]
    fn ack_of_unknown_or_repeated_id_is_ignored() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        let mut delivered = Vec::new();
        t.ack(&[1, 2, 3], &mut delivered);
        assert!(delivered.is_empty());

        track(&mut t, 5, A, t0, &cfg);
        track(&mut t, 6, A, t0, &cfg);
        t.ack(&[4, 5, 5, 99], &mut delivered);
        assert_eq!(delivered, [5]);
        t.ack(&[5], &mut delivered);
        assert_eq!(delivered, [5]);
        assert_eq!(t.len(), 1);
        // Tracking a pending id again changes nothing, not even its deadline.
        track(&mut t, 6, B, t0 + ms(50), &cfg);
        assert_eq!((t.len(), t.poll_timeout()), (1, Some(t0 + ms(100))));
        assert_eq!(fire(&mut t, t0 + ms(100), &cfg).0, [6]);
        t.check_invariants();
    }

    #[test]
    fn pull_clears_pending_of_that_conversation_up_to_after_msg_id_only() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        for id in [10, 11, 12, 13] {
            track(&mut t, id, A, t0, &cfg);
        }
        for id in [5, 11_000] {
            track(&mut t, id, B, t0, &cfg);
        }
        // Same conv_id as A, other conv_type: another conversation.
        let a_as_group = ConvRef {
            conv_type: 2,
            conv_id: A.conv_id,
        };
        track(&mut t, 1, a_as_group, t0, &cfg);

        let mut delivered = Vec::new();
        t.clear_through(A, 12, &mut delivered);
        assert_eq!(delivered, [10, 11, 12]);
        assert_eq!(t.len(), 4);
        delivered.clear();
        t.clear_through(A, 12, &mut delivered);
        assert!(delivered.is_empty());

        let (resent, _, _) = fire(&mut t, t0 + ms(100), &cfg);
        assert_eq!(resent, [1, 5, 13, 11_000]);
        t.clear_through(B, u64::MAX, &mut delivered);
        t.clear_through(A, 13, &mut delivered);
        t.clear_through(a_as_group, 1, &mut delivered);
        assert_eq!(delivered, [5, 11_000, 13, 1]);
        assert!(t.is_empty());
    }

    #[test]
    fn drain_reports_everything_pending() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        for id in [30, 10, 20, 40] {
            track(&mut t, id, A, t0, &cfg);
        }
        let _ = fire(&mut t, t0 + ms(100), &cfg);
        let mut delivered = Vec::new();
        t.ack(&[20], &mut delivered);
        let mut undelivered = vec![7];
        t.drain(&mut undelivered);
        assert_eq!(undelivered, [7, 10, 30, 40]);
        assert!(t.is_empty());
        assert_eq!(t.poll_timeout(), None);
        t.drain(&mut undelivered);
        assert_eq!(undelivered.len(), 4);
    }

    #[test]
    fn full_tracker_refuses() {
        let cfg = AckConfig {
            max_pending: 3,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        for id in 1..=3 {
            track(&mut t, id, A, t0, &cfg);
        }
        assert_eq!(t.track(frame(4, A), t0, &cfg), Err(Full { max_pending: 3 }));
        // A duplicate of a pending id is still just ignored.
        assert_eq!(t.track(frame(2, A), t0, &cfg), Ok(()));
        assert_eq!(t.len(), 3);
        t.ack(&[1], &mut Vec::new());
        assert_eq!(t.track(frame(4, A), t0, &cfg), Ok(()));

        let none = AckConfig {
            max_pending: 0,
            ..cfg
        };
        let mut empty = AckTracker::new();
        assert_eq!(
            empty.track(frame(1, A), t0, &none),
            Err(Full { max_pending: 0 })
        );
        assert!(empty.is_empty());
    }

    #[test]
    fn empty_tracker_holds_no_allocation() {
        // One pointer; a million idle sessions cost 8 MB of trackers.
        assert!(size_of::<AckTracker>() <= size_of::<usize>());
        assert!(size_of::<AckTracker>() < 64);
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::default();
        assert!(t.inner.is_none());

        for id in 0..500 {
            track(&mut t, id, A, t0, &cfg);
        }
        let _ = fire(&mut t, t0 + ms(100), &cfg);
        t.ack(&(0..500).collect::<Vec<_>>(), &mut Vec::new());
        assert!(
            t.is_empty() && t.inner.is_some(),
            "acked to empty: kept for reuse"
        );
        t.release();
        assert!(t.inner.is_none(), "released when quiet");

        track(&mut t, 1, A, t0, &cfg);
        t.clear_through(A, 1, &mut Vec::new());
        t.release();
        assert!(t.inner.is_none(), "cleared to empty: released");

        let cfg0 = AckConfig {
            max_retries: 0,
            ..cfg
        };
        track(&mut t, 1, A, t0, &cfg0);
        assert!(fire(&mut t, t0 + ms(100), &cfg0).2);
        t.release();
        assert!(t.inner.is_none(), "given up to empty: released");
    }

    #[test]
    fn resends_keep_msg_id_order_across_conversations_and_levels() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        // 3 is tracked first and resent once (next due at 300); 1 and 2 come due at 300 too.
        track(&mut t, 3, A, t0, &cfg);
        let _ = fire(&mut t, t0 + ms(100), &cfg);
        track(&mut t, 2, B, t0 + ms(200), &cfg);
        track(&mut t, 1, A, t0 + ms(200), &cfg);
        assert_eq!(fire(&mut t, t0 + ms(300), &cfg).0, [1, 2, 3]);
        t.check_invariants();
    }

    #[test]
    fn push_tracked_again_at_the_same_instant_is_resent_once() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        // Acked, then delivered again at the same instant: two FIFO items with one deadline
        // (2 keeps the tracker, and so the stale item, alive).
        track(&mut t, 2, A, t0, &cfg);
        track(&mut t, 1, A, t0, &cfg);
        t.ack(&[1], &mut Vec::new());
        track(&mut t, 1, A, t0, &cfg);
        assert_eq!(fire(&mut t, t0 + ms(100), &cfg).0, [1, 2]);
        assert_eq!(t.poll_timeout(), Some(t0 + ms(300)));
        assert_eq!(fire(&mut t, t0 + ms(300), &cfg).0, [1, 2]);
        t.check_invariants();
    }

    #[test]
    fn now_going_backwards_never_resends_early() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        track(&mut t, 1, A, t0 + ms(50), &cfg);
        track(&mut t, 2, A, t0, &cfg);
        // 2 was tracked "before" 1; its deadline is raised to keep the FIFO sorted.
        assert_eq!(t.poll_timeout(), Some(t0 + ms(150)));
        assert_eq!(fire(&mut t, t0 + ms(149), &cfg).0, Vec::<u64>::new());
        assert_eq!(fire(&mut t, t0 + ms(150), &cfg).0, [1, 2]);
        t.check_invariants();
    }

    #[test]
    fn in_order_acks_take_the_fast_path_and_build_no_index() {
        let cfg = AckConfig {
            max_pending: 10_000,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        for id in 1..=1_000 {
            track(&mut t, id * 3, A, t0, &cfg);
        }
        // Batches of 64 in push order, every tenth ACK lost.
        let acked: Vec<u64> = (1..=1_000).filter(|i| i % 10 != 0).map(|i| i * 3).collect();
        let mut delivered = Vec::new();
        for batch in acked.chunks(64) {
            t.ack(batch, &mut delivered);
            t.check_invariants();
        }
        assert_eq!(delivered, acked);
        assert_eq!(t.len(), 100);
        let inner = t.inner.as_deref().expect("pending");
        assert!(inner.fresh_sorted && inner.index.is_none());
        // The lost ones are still found, by binary search.
        let lost: Vec<u64> = (1..=100).rev().map(|i| i * 30).collect();
        let mut delivered = Vec::new();
        t.ack(&lost, &mut delivered);
        assert_eq!(delivered, lost);
        assert!(t.is_empty());
    }

    #[test]
    fn interleaved_ids_are_found_through_the_index() {
        let cfg = AckConfig {
            max_pending: 10_000,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        // Ids of two partitions interleaved: not increasing in push order.
        let ids: Vec<u64> = (0..500).flat_map(|i| [1_000_000 + i, 2_000 + i]).collect();
        for &id in &ids {
            track(&mut t, id, A, t0, &cfg);
        }
        assert!(!t.inner.as_deref().expect("pending").fresh_sorted);
        // Duplicates of pending ids are still ignored.
        track(&mut t, 2_000, A, t0, &cfg);
        assert_eq!(t.len(), 1_000);
        let mut backwards = ids.clone();
        backwards.reverse();
        let mut delivered = Vec::new();
        t.ack(&backwards[..400], &mut delivered);
        assert!(t.inner.as_deref().expect("pending").index.is_some());
        t.check_invariants();
        // Unknown and repeated ids are ignored; new pushes join the index.
        t.ack(&[1, 3_000_000, backwards[0]], &mut delivered);
        track(&mut t, 5, B, t0, &cfg);
        t.check_invariants();
        t.ack(&backwards[400..], &mut delivered);
        t.ack(&[5], &mut delivered);
        let mut want = backwards.clone();
        want.push(5);
        assert_eq!(delivered, want);
        assert!(t.is_empty());
        assert!(
            t.inner.as_deref().expect("kept").index.is_none(),
            "dropped when empty"
        );
    }

    #[test]
    fn dead_items_are_compacted() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        // One PUSH stays pending at the head while 10k others are tracked and acked behind it.
        track(&mut t, 0, A, t0, &cfg);
        for id in 1..10_000 {
            track(&mut t, id, A, t0 + Duration::from_micros(id), &cfg);
            t.ack(&[id], &mut Vec::new());
            t.check_invariants();
        }
        let inner = t.inner.as_deref().expect("pending");
        let items: usize =
            inner.fresh.len() + inner.levels.iter().map(VecDeque::len).sum::<usize>();
        assert!(
            items <= 1 + COMPACT_SLACK + 2,
            "{items} items for 1 pending"
        );
    }

    /// Reference model: a plain list of pending PUSHes with their deadlines.
    struct Model {
        pending: Vec<(u64, ConvRef, Instant, u32)>,
    }

    impl Model {
        fn position(&self, id: u64) -> Option<usize> {
            self.pending.iter().position(|p| p.0 == id)
        }

        fn earliest(&self) -> Option<Instant> {
            self.pending.iter().map(|p| p.2).min()
        }
    }

    use crate::delivery::test_rng::XorShift;

    /// Random track / ack / PULL / timeout / time-jump steps, each checked against [`Model`]:
    /// the same ids resent and given up at the same instants (so never early), `poll_timeout`
    /// equal to the earliest model deadline, and every tracked PUSH ending exactly once as
    /// delivered or undelivered.
    #[test]
    fn matches_naive_model_and_conserves_every_push() {
        let configs = [
            AckConfig {
                max_pending: 48,
                ..cfg()
            },
            AckConfig {
                ack_timeout: ms(40),
                max_backoff: ms(90),
                max_retries: 3,
                max_pending: 64,
            },
            AckConfig {
                ack_timeout: ms(10),
                max_backoff: ms(10),
                max_retries: 0,
                max_pending: 16,
            },
            AckConfig {
                ack_timeout: ms(7),
                max_backoff: ms(5_000),
                max_retries: 12,
                max_pending: 100,
            },
        ];
        let mut seen = Coverage::default();
        for (i, cfg) in configs.iter().enumerate() {
            for seed in [1u64, 0xDEAD_BEEF, 0x1234_5678_9ABC] {
                let run = run_model(seed.wrapping_add(i as u64), 20_000, cfg);
                seen.refused += run.refused;
                seen.retracked += run.retracked;
                seen.pulled += run.pulled;
                seen.resent += run.resent;
                seen.given_up += run.given_up;
            }
        }
        // The steps reached every path (guards the test's own strength).
        assert!(
            seen.refused > 100 && seen.retracked > 100 && seen.pulled > 100,
            "{seen:?}"
        );
        assert!(seen.resent > 1_000 && seen.given_up > 1_000, "{seen:?}");
    }

    /// How often a model run took each path.
    #[derive(Debug, Default)]
    struct Coverage {
        refused: usize,
        retracked: usize,
        pulled: usize,
        resent: usize,
        given_up: usize,
    }

    fn run_model(seed: u64, steps: usize, cfg: &AckConfig) -> Coverage {
        let mut rng = XorShift(seed);
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = AckTracker::new();
        let mut model = Model {
            pending: Vec::new(),
        };
        let convs: Vec<ConvRef> = (0..5)
            .map(|c| ConvRef {
                conv_type: 1 + c % 2,
                conv_id: u64::from(c / 2),
            })
            .collect();
        let mut next_id = 1u64;
        let mut seen = Coverage::default();
        // Incarnations tracked, and outcomes (delivered or undelivered) per id.
        let mut tracked: HashMap<u64, u32> = HashMap::new();
        let mut ended: HashMap<u64, u32> = HashMap::new();
        let mut end = |ids: &[u64], model: &mut Model| {
            for &id in ids {
                let at = model.position(id).expect("ended id was pending");
                model.pending.swap_remove(at);
                *ended.entry(id).or_default() += 1;
            }
        };

        // Phases of 1,000 steps: a normal client, a silent one (retries, give-ups) and a flood
        // (the tracker fills to `max_pending`). Weights of track / ack / PULL (the rest is time
        // jumps) and the largest jump in µs.
        let phases = [(40, 25, 5, 150_000), (45, 2, 3, 150_000), (70, 8, 4, 5_000)];
        let (mut w_track, mut w_ack, mut w_pull, mut jump_us) = phases[0];
        for step in 0..steps {
            if step % 1_000 == 0 {
                (w_track, w_ack, w_pull, jump_us) = phases[rng.below(phases.len() as u64) as usize];
            }
            let roll = rng.below(100);
            let op = [w_track, w_track + w_ack, w_track + w_ack + w_pull]
                .iter()
                .position(|&bound| roll < bound)
                .unwrap_or(3);
            match op {
                0 => {
                    // Mostly fresh ids; sometimes a pending one, sometimes one already ended.
                    let id = match rng.below(10) {
                        0 if next_id > 1 => 1 + rng.below(next_id - 1),
                        _ => {
                            next_id += 1 + rng.below(3);
                            next_id
                        }
                    };
                    let conv = convs[rng.below(convs.len() as u64) as usize];
                    let result = t.track(frame(id, conv), now, cfg);
                    if model.position(id).is_some() {
                        assert_eq!(result, Ok(()));
                    } else if model.pending.len() >= cfg.max_pending {
                        assert_eq!(
                            result,
                            Err(Full {
                                max_pending: cfg.max_pending
                            })
                        );
                        seen.refused += 1;
                    } else {
                        assert_eq!(result, Ok(()));
                        model
                            .pending
                            .push((id, conv, later(now, cfg.backoff(0)), 0));
                        let before = tracked.entry(id).or_default();
                        seen.retracked += usize::from(*before > 0);
                        *before += 1;
                    }
                }
                1 => {
                    let n = rng.below(70);
                    let ids: Vec<u64> = (0..n)
                        .map(|_| match (rng.below(4), model.pending.len()) {
                            (0, _) | (_, 0) => rng.below(next_id + 5),
                            (_, len) => model.pending[rng.below(len as u64) as usize].0,
                        })
                        .collect();
                    let mut expected = Vec::new();
                    for &id in &ids {
                        if model.position(id).is_some() && !expected.contains(&id) {
                            expected.push(id);
                        }
                    }
                    let mut delivered = Vec::new();
                    t.ack(&ids, &mut delivered);
                    assert_eq!(delivered, expected, "step {step}: ack");
                    end(&delivered, &mut model);
                }
                2 => {
                    let conv = convs[rng.below(convs.len() as u64) as usize];
                    // Around a pending id half the time, so PULLs clear some and keep some.
                    let after = match (rng.below(2), model.pending.len()) {
                        (0, len) if len > 0 => {
                            let near = model.pending[rng.below(len as u64) as usize].0;
                            (near + rng.below(4)).saturating_sub(2)
                        }
                        _ => rng.below(next_id + 2),
                    };
                    let mut expected: Vec<u64> = model
                        .pending
                        .iter()
                        .filter(|p| p.1 == conv && p.0 <= after)
                        .map(|p| p.0)
                        .collect();
                    expected.sort_unstable();
                    let mut delivered = Vec::new();
                    t.clear_through(conv, after, &mut delivered);
                    assert_eq!(delivered, expected, "step {step}: pull");
                    seen.pulled += delivered.len();
                    end(&delivered, &mut model);
                }
                _ => {
                    // Jump: to the next wakeup (like the shell), or by an arbitrary amount.
                    now = match (rng.below(3), t.poll_timeout()) {
                        (0, Some(at)) => at.max(now),
                        _ => now + Duration::from_micros(rng.below(jump_us)),
                    };
                    let mut due: Vec<(u64, u32)> = model
                        .pending
                        .iter()
                        .filter(|p| p.2 <= now)
                        .map(|p| (p.0, p.3))
                        .collect();
                    due.sort_unstable();
                    let expect_resent: Vec<u64> = due
                        .iter()
                        .filter(|d| d.1 < cfg.max_retries)
                        .map(|d| d.0)
                        .collect();
                    let expect_given_up: Vec<u64> = due
                        .iter()
                        .filter(|d| d.1 >= cfg.max_retries)
                        .map(|d| d.0)
                        .collect();
                    let (resent, undelivered, gave_up) = fire(&mut t, now, cfg);
                    assert_eq!(resent, expect_resent, "step {step}: resent");
                    assert_eq!(undelivered, expect_given_up, "step {step}: given up");
                    assert_eq!(gave_up, !undelivered.is_empty());
                    seen.resent += resent.len();
                    seen.given_up += undelivered.len();
                    for p in model.pending.iter_mut() {
                        if resent.contains(&p.0) {
                            assert!(p.2 <= now, "resent early");
                            p.3 += 1;
                            p.2 = later(now, cfg.backoff(p.3));
                        }
                    }
                    end(&undelivered, &mut model);
                }
            }
            assert_eq!(t.len(), model.pending.len(), "step {step}: len");
            assert_eq!(t.is_empty(), model.pending.is_empty());
            assert_eq!(t.poll_timeout(), model.earliest(), "step {step}: timeout");
            if step % 256 == 0 {
                t.check_invariants();
            }
        }
        t.check_invariants();

        let mut undelivered = Vec::new();
        t.drain(&mut undelivered);
        end(&undelivered, &mut model);
        assert!(model.pending.is_empty() && t.is_empty());
        t.release();
        assert!(t.inner.is_none());
        assert_eq!(tracked, ended, "every tracked PUSH ends exactly once");
        seen
    }
}
