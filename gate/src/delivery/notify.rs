//! Per-shard NOTIFY merger: several conversation updates for one session within a short window
//! become one NOTIFY frame (PROTOCOL.md "Session rules" 6).
//!
//! # What it owns
//!
//! For every session of the shard with unsent updates: the merged [`ConvUpdate`]s (one per
//! `(conv_type, conv_id)`, in order of first appearance) and the instant they become ready; a
//! FIFO of `(ready_at, session)` in add order; and the sessions that reached `max_updates` and are
//! ready at once. Sessions are named by the shell's connection key `K`; the merger never sees a
//! socket, never encodes a frame and never reads the clock.
//!
//! # Who drives it
//!
//! The shard shell owns one. It calls [`NotifyMerger::add`] for each update addressed to a
//! session, [`NotifyMerger::poll_ready`] until `None` (after adds and when the merger's wheel
//! entry fires), encodes each returned [`Notify`] into one NOTIFY frame, re-arms its wheel entry
//! at [`NotifyMerger::poll_timeout`], and calls [`NotifyMerger::remove`] when a session closes.
//!
//! # Merging
//!
//! A session's updates become ready `window` (`delivery.notify_merge_ms`) after its **first**
//! unflushed update; later updates join it without moving that instant, so a busy conversation
//! cannot postpone its NOTIFY forever. Per conversation the merged update keeps the highest
//! `latest_msg_id` and the `unread` of the most recently added update. A session holding
//! `max_updates` conversations is ready at once, which bounds the NOTIFY's size (each update
//! encodes to at most [`MAX_UPDATE_LEN`] bytes).
//!
//! # Invariants
//!
//! - The FIFO is sorted by `ready_at` (appended at `now + window`, and raised to the last item's
//!   instant if `now` went backwards). Each waiting session has a live item: one whose
//!   `ready_at` equals the session's. Flushed and removed sessions leave dead items behind (lazy
//!   deletion), but **the FIFO head is always live**, so `poll_timeout` is exact, and the FIFO is
//!   compacted when it holds more than `2 * waiting + 32` items (O(1) amortised).
//! - A session is in at most one of `waiting` and `ready`.
//!
//! Costs: `add` is one map lookup plus a merge that scans at most 8 updates (`LINEAR_MAX`), or one
//! more lookup in a per-session index beyond that: O(1) amortised.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::protocol::pb::{ConvUpdate, Notify};

use super::{IdMap, later};

/// Largest encoding of one `ConvUpdate` inside a `Notify`: tag and length (2), `conv_type`
/// (1 + 5), `conv_id` (1 + 10), `latest_msg_id` (1 + 10), `unread` (1 + 5). A shell derives
/// `max_updates` from the frame limit as `max_frame / MAX_UPDATE_LEN`.
pub const MAX_UPDATE_LEN: usize = 36;

/// A session with at most this many conversations is merged by a linear scan; beyond it, a
/// per-session index is built.
const LINEAR_MAX: usize = 8;

/// The FIFO holds at most `2 * waiting + COMPACT_SLACK` items between operations.
const COMPACT_SLACK: usize = 32;

/// How long to merge and how much (the `delivery.notify_merge_ms` key, validated by the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotifyConfig {
    /// Merge window from a session's first unflushed update (default 20 ms); zero makes each
    /// update ready at once (updates added at the same instant still merge).
    pub window: Duration,
    /// Conversations per NOTIFY; a session reaching it is ready at once. 0 is treated as 1.
    pub max_updates: usize,
}

/// The merged updates of one session, not yet ready.
struct Waiting {
    ready_at: Instant,
    updates: Vec<ConvUpdate>,
    /// `(conv_type, conv_id)` -> position in `updates`; filled once there are more than
    /// [`LINEAR_MAX`], empty (unallocated) before.
    index: IdMap<(u32, u64), usize>,
}

impl Waiting {
    fn merge(&mut self, update: ConvUpdate) {
        let key = (update.conv_type, update.conv_id);
        let found = if self.index.is_empty() {
            self.updates
                .iter()
                .position(|u| (u.conv_type, u.conv_id) == key)
        } else {
            self.index.get(&key).copied()
        };
        match found.and_then(|at| self.updates.get_mut(at)) {
            Some(merged) => {
                merged.latest_msg_id = merged.latest_msg_id.max(update.latest_msg_id);
                merged.unread = update.unread;
            }
            None => {
                self.updates.push(update);
                if !self.index.is_empty() {
                    self.index.insert(key, self.updates.len() - 1);
                } else if self.updates.len() > LINEAR_MAX {
                    self.index.extend(
                        self.updates
                            .iter()
                            .enumerate()
                            .map(|(at, u)| ((u.conv_type, u.conv_id), at)),
                    );
                }
            }
        }
    }
}

/// Merges the NOTIFY updates of a shard's sessions. See the module doc.
pub struct NotifyMerger<K> {
    window: Duration,
    max_updates: usize,
    waiting: IdMap<K, Waiting>,
    /// `(ready_at, session)` in add order; sorted, head live.
    fifo: VecDeque<(Instant, K)>,
    /// Sessions that reached `max_updates`, with the instant they did, in order.
    ready: VecDeque<(Instant, K, Notify)>,
}

impl<K: Copy + Eq + Hash> NotifyMerger<K> {
    /// An empty merger.
    pub fn new(cfg: NotifyConfig) -> Self {
        Self {
            window: cfg.window,
            max_updates: cfg.max_updates.max(1),
            waiting: IdMap::default(),
            fifo: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// An update for session `conn` at `now`. The first one since the session's last NOTIFY
    /// opens its window; later ones merge into it. O(1) amortised.
    pub fn add(&mut self, conn: K, update: ConvUpdate, now: Instant) {
        let waiting = match self.waiting.entry(conn) {
            Entry::Occupied(slot) => {
                let waiting = slot.into_mut();
                waiting.merge(update);
                waiting
            }
            Entry::Vacant(slot) => {
                let at = later(now, self.window);
                let ready_at = self.fifo.back().map_or(at, |&(last, _)| last.max(at));
                self.fifo.push_back((ready_at, conn));
                slot.insert(Waiting {
                    ready_at,
                    updates: vec![update],
                    index: IdMap::default(),
                })
            }
        };
        if waiting.updates.len() >= self.max_updates {
            if let Some(full) = self.waiting.remove(&conn) {
                let notify = Notify {
                    updates: full.updates,
                };
                self.ready.push_back((now, conn, notify));
            }
            self.settle();
        }
    }

    /// The earliest instant a NOTIFY is ready: call [`Self::poll_ready`] then. `None` when no
    /// session has updates waiting.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let full = self.ready.front().map(|&(at, ..)| at);
        let merged = self.fifo.front().map(|&(at, _)| at);
        match (full, merged) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next session whose merged updates are ready at `now`, with its NOTIFY body (updates
    /// in order of first appearance). Call until `None`.
    #[must_use = "a session's NOTIFY is lost if the result is ignored"]
    pub fn poll_ready(&mut self, now: Instant) -> Option<(K, Notify)> {
        if let Some((_, conn, notify)) = self.ready.pop_front() {
            return Some((conn, notify));
        }
        while let Some(&(at, conn)) = self.fifo.front() {
            if at > now {
                break;
            }
            self.fifo.pop_front();
            if let Entry::Occupied(slot) = self.waiting.entry(conn)
                && slot.get().ready_at == at
            {
                let updates = slot.remove().updates;
                self.settle();
                return Some((conn, Notify { updates }));
            }
        }
        None
    }

    /// Session `conn` closed: its pending updates are dropped.
    pub fn remove(&mut self, conn: K) {
        self.waiting.remove(&conn);
        self.ready.retain(|&(_, k, _)| k != conn);
        self.settle();
    }

    /// Sessions with a NOTIFY waiting (merging or ready).
    pub fn len(&self) -> usize {
        self.waiting.len() + self.ready.len()
    }

    /// No session has a NOTIFY waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pops dead FIFO heads; compacts the FIFO when dead items dominate.
    fn settle(&mut self) {
        let waiting = &self.waiting;
        let live =
            |&(at, conn): &(Instant, K)| waiting.get(&conn).is_some_and(|w| w.ready_at == at);
        while self.fifo.front().is_some_and(|item| !live(item)) {
            self.fifo.pop_front();
        }
        if self.fifo.len() > 2 * waiting.len() + COMPACT_SLACK {
            self.fifo.retain(live);
        }
    }
}

impl<K> std::fmt::Debug for NotifyMerger<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyMerger")
            .field("window", &self.window)
            .field("waiting", &self.waiting.len())
            .field("ready", &self.ready.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn merger(window_ms: u64) -> NotifyMerger<u32> {
        NotifyMerger::new(NotifyConfig {
            window: ms(window_ms),
            max_updates: 1_000,
        })
    }

    fn up(conv_type: u32, conv_id: u64, latest_msg_id: u64, unread: u32) -> ConvUpdate {
        ConvUpdate {
            conv_type,
            conv_id,
            latest_msg_id,
            unread,
        }
    }

    fn drain(m: &mut NotifyMerger<u32>, now: Instant) -> Vec<(u32, Vec<ConvUpdate>)> {
        std::iter::from_fn(|| m.poll_ready(now))
            .map(|(k, n)| (k, n.updates))
            .collect()
    }

    #[test]
    fn updates_within_the_window_become_one_notify() {
        let t0 = Instant::now();
        let mut m = merger(20);
        m.add(1, up(2, 100, 5, 1), t0);
        m.add(2, up(2, 100, 5, 1), t0 + ms(3));
        m.add(1, up(2, 200, 9, 1), t0 + ms(10));
        m.add(1, up(2, 100, 6, 2), t0 + ms(19));
        assert_eq!(m.poll_timeout(), Some(t0 + ms(20)));
        assert_eq!(drain(&mut m, t0 + ms(19)), []);
        // Session 1's window ran from its first update; the one at 19 ms rode along.
        assert_eq!(
            drain(&mut m, t0 + ms(20)),
            [(1, vec![up(2, 100, 6, 2), up(2, 200, 9, 1)])]
        );
        assert_eq!(m.poll_timeout(), Some(t0 + ms(23)));
        assert_eq!(drain(&mut m, t0 + ms(30)), [(2, vec![up(2, 100, 5, 1)])]);
        assert!(m.is_empty());
        assert_eq!(m.poll_timeout(), None);

        // An update after the NOTIFY opens a new window.
        m.add(1, up(2, 100, 7, 3), t0 + ms(31));
        assert_eq!(m.poll_timeout(), Some(t0 + ms(51)));
    }

    #[test]
    fn highest_latest_and_newest_unread_win() {
        let t0 = Instant::now();
        let mut m = merger(20);
        m.add(1, up(1, 42, 10, 4), t0);
        // An update that arrives late with an older latest_msg_id does not move it back, but its
        // unread is the newest word.
        m.add(1, up(1, 42, 8, 0), t0 + ms(1));
        // Same conv_id, other conv_type: another conversation.
        m.add(1, up(2, 42, 3, 1), t0 + ms(2));
        m.add(1, up(1, 42, 12, 5), t0 + ms(3));
        m.add(1, up(1, 42, 11, 2), t0 + ms(4));
        assert_eq!(
            drain(&mut m, t0 + ms(20)),
            [(1, vec![up(1, 42, 12, 2), up(2, 42, 3, 1)])]
        );
    }

    #[test]
    fn window_zero_is_immediate() {
        let t0 = Instant::now();
        let mut m = merger(0);
        m.add(7, up(1, 1, 1, 1), t0);
        m.add(7, up(1, 1, 2, 2), t0);
        assert_eq!(m.poll_timeout(), Some(t0));
        assert_eq!(drain(&mut m, t0), [(7, vec![up(1, 1, 2, 2)])]);
        m.add(7, up(1, 1, 3, 3), t0 + ms(1));
        assert_eq!(drain(&mut m, t0 + ms(1)), [(7, vec![up(1, 1, 3, 3)])]);
    }

    #[test]
    fn removed_session_gets_nothing() {
        let t0 = Instant::now();
        let mut m = NotifyMerger::new(NotifyConfig {
            window: ms(20),
            max_updates: 2,
        });
        m.add(1, up(1, 1, 1, 1), t0);
        m.add(2, up(1, 1, 1, 1), t0 + ms(5));
        // Session 3 fills up (ready at once) but closes before the shell polls.
        m.add(3, up(1, 1, 1, 1), t0 + ms(6));
        m.add(3, up(1, 2, 1, 1), t0 + ms(6));
        assert_eq!(m.len(), 3);
        m.remove(1);
        m.remove(3);
        m.remove(99);
        // The head was session 1's: the next wakeup is session 2's.
        assert_eq!(m.poll_timeout(), Some(t0 + ms(25)));
        assert_eq!(drain(&mut m, t0 + ms(100)), [(2, vec![up(1, 1, 1, 1)])]);

        // A session removed and back within the old window waits its own window.
        m.add(1, up(1, 1, 1, 1), t0 + ms(100));
        m.remove(1);
        m.add(1, up(1, 1, 2, 1), t0 + ms(110));
        assert_eq!(drain(&mut m, t0 + ms(120)), []);
        assert_eq!(drain(&mut m, t0 + ms(130)), [(1, vec![up(1, 1, 2, 1)])]);
        assert!(m.is_empty());
    }

    #[test]
    fn a_session_at_max_updates_is_ready_at_once() {
        let t0 = Instant::now();
        let mut m = NotifyMerger::new(NotifyConfig {
            window: ms(20),
            max_updates: 3,
        });
        for conv in 0..3 {
            m.add(1, up(2, conv, conv + 10, 1), t0 + ms(conv));
        }
        assert_eq!(m.poll_timeout(), Some(t0 + ms(2)));
        let ready = drain(&mut m, t0 + ms(2));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.len(), 3);
        // The fourth starts a new NOTIFY with its own window.
        m.add(1, up(2, 3, 13, 1), t0 + ms(3));
        assert_eq!(m.poll_timeout(), Some(t0 + ms(23)));
    }

    #[test]
    fn many_conversations_keep_first_appearance_order() {
        let t0 = Instant::now();
        let mut m = merger(20);
        // Past the linear-scan size, merging goes through the per-session index.
        let convs: Vec<u64> = (0..100).map(|i| (i * 7_919) % 1_000).collect();
        for round in 0..3u64 {
            for &c in &convs {
                m.add(5, up(2, c, round * 1_000 + c, round as u32), t0);
            }
        }
        let ready = drain(&mut m, t0 + ms(20));
        let expected: Vec<ConvUpdate> = convs.iter().map(|&c| up(2, c, 2_000 + c, 2)).collect();
        assert_eq!(ready, [(5, expected)]);
    }

    #[test]
    fn dead_fifo_items_are_bounded() {
        let t0 = Instant::now();
        let mut m = merger(1_000);
        m.add(0, up(1, 1, 1, 1), t0);
        for conn in 1..10_000u32 {
            m.add(
                conn,
                up(1, 1, 1, 1),
                t0 + Duration::from_micros(u64::from(conn)),
            );
            m.remove(conn);
            assert!(m.fifo.len() <= 2 * m.waiting.len() + COMPACT_SLACK);
        }
        assert_eq!(m.len(), 1);
        assert_eq!(m.poll_timeout(), Some(t0 + ms(1_000)));
    }
}
