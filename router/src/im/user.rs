//! Per-user state inside the user's partition: the inbox SYNC reads, the sender-keyed dedup
//! index SEND checks, and the online sessions.
//!
//! - [`Inbox`]: one user's conversations that hold messages, each with the `ConvState` its
//!   conversation partition last sent (`InboxSet`) or bumped (`GroupMsg`), the arrival order
//!   SYNC lists them in, and the running `total_unread` (invariant: equals the sum of the
//!   entries' `unread`). Writes are O(1) (a group message bumps every member's inbox); SYNC,
//!   far rarer, pays for the order by selecting and sorting its page.
//! - [`Dedup`]: `(uid, client_msg_id)` → pending (a Store is in flight) or the stored
//!   `(msg_id, server_time_ms)`. A stored entry lives at least the window, then is pruned lazily
//!   from a FIFO of `(recorded_at, key)` (a bounded number per input) and ignored on lookup once
//!   expired. A pending mark lasts until its `Stored` comes back, which every `Store` emits
//!   (refused or not), so pending marks are bounded by the Stores in flight.
//! - [`Presence`]: uid → online session ids.
//!
//! Driven by the partition with `now` passed in; never touches IO or the clock.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use prost::Message as _;

use crate::idmap::IdMap;
use crate::link;

/// Bytes counted per SYNC entry on top of its encoded length (field tag and length prefix).
pub const SYNC_OVERHEAD: usize = 3;

/// Inbox key: (conv_type, conv_id as the user sees it).
type InboxKey = (u32, u64);

/// One user's conversations, as SYNC returns them.
///
/// "Newest first" is the order in which conversations last received a message *here*, not
/// the order of their msg_ids: ids from different partitions minted in the same millisecond
/// are ordered by partition, while updates reach the inbox in the order the messages were
/// stored.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Each conversation's state and the `touch` it is ordered by (higher = newer).
    convs: IdMap<InboxKey, (link::ConvState, u64)>,
    total_unread: u64,
    /// Bumped whenever a conversation gets a newer message.
    touches: u64,
}

impl Inbox {
    /// Applies one conversation's new state. `latest_msg_id == 0` removes the conversation (it
    /// holds no messages for this user any more, e.g. the user left the group).
    pub fn set(&mut self, state: link::ConvState) {
        let key = (state.conv_type, state.conv_id);
        let mut touch = None;
        if let Some((old, old_touch)) = self.convs.remove(&key) {
            self.total_unread = self.total_unread.saturating_sub(u64::from(old.unread));
            if old.latest_msg_id == state.latest_msg_id {
                touch = Some(old_touch); // Only the unread count moved: keep its place.
            }
        }
        if state.latest_msg_id == 0 {
            return;
        }
        let touch = touch.unwrap_or_else(|| {
            self.touches += 1;
            self.touches
        });
        self.total_unread += u64::from(state.unread);
        self.convs.insert(key, (state, touch));
    }

    /// A new message `msg_id` in conversation `key`: it becomes the newest, with `add_unread`
    /// more unread (0 for the sender's own message). Returns the conversation's new state.
    pub fn bump(&mut self, key: InboxKey, msg_id: u64, add_unread: u32) -> link::ConvState {
        self.touches += 1;
        let (state, touch) = self.convs.entry(key).or_insert((
            link::ConvState {
                conv_type: key.0,
                conv_id: key.1,
                latest_msg_id: 0,
                unread: 0,
            },
            0,
        ));
        state.latest_msg_id = msg_id;
        state.unread = state.unread.saturating_add(add_unread);
        *touch = self.touches;
        self.total_unread += u64::from(add_unread);
        *state
    }

    pub fn is_empty(&self) -> bool {
        self.convs.is_empty()
    }

    /// Number of conversations.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.convs.len()
    }

    /// Sum of `unread` over every conversation.
    pub fn total_unread(&self) -> u64 {
        self.total_unread
    }

    /// Newest first: at most `max_convs`, their `encoded_len + SYNC_OVERHEAD` summing to at most
    /// `max_bytes` (0: no byte cap); and whether some were left out.
    /// Selects the page before sorting it, so a user with many conversations costs
    /// O(conversations + page log page).
    pub fn newest(&self, max_convs: usize, max_bytes: usize) -> (Vec<link::ConvState>, bool) {
        let mut by_touch: Vec<(u64, &link::ConvState)> = self
            .convs
            .values()
            .map(|(state, touch)| (*touch, state))
            .collect();
        let newest_first = |a: &(u64, &link::ConvState), b: &(u64, &link::ConvState)| b.0.cmp(&a.0);
        if by_touch.len() > max_convs && max_convs > 0 {
            by_touch.select_nth_unstable_by(max_convs - 1, newest_first);
        }
        let candidates = &mut by_touch[..self.convs.len().min(max_convs)];
        candidates.sort_unstable_by(newest_first);
        let mut convs = Vec::new();
        let mut bytes = 0usize;
        for &(_, state) in candidates.iter() {
            let size = state.encoded_len() + SYNC_OVERHEAD;
            if max_bytes != 0 && bytes + size > max_bytes {
                return (convs, true);
            }
            bytes += size;
            convs.push(*state);
        }
        let has_more = convs.len() < self.convs.len();
        (convs, has_more)
    }
}

/// What the dedup index knows about one `(uid, client_msg_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or expired): store it.
    New,
    /// A Store is in flight: the client should retry.
    Pending,
    /// Stored: answer with the original id and time.
    Stored { msg_id: u64, server_time_ms: u64 },
}

#[derive(Debug, Clone, Copy)]
enum DedupEntry {
    Pending,
    Stored {
        msg_id: u64,
        server_time_ms: u64,
        recorded_at: u64,
    },
}

/// Sender-keyed dedup: `(uid, client_msg_id)` → pending or stored (see the module doc).
#[derive(Debug)]
pub struct Dedup {
    window_ms: u64,
    /// SipHash with a random key: `client_msg_id` is the client's choice (see `idmap`).
    entries: HashMap<(u64, u64), DedupEntry>,
    /// `(recorded_at, key)` of every stored entry, oldest first.
    fifo: VecDeque<(u64, (u64, u64))>,
}

/// Expired entries pruned per input at most: more than the one entry an input can add, so the
/// FIFO drains while each input's work stays bounded.
const PRUNE_PER_INPUT: usize = 8;

impl Dedup {
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            entries: HashMap::new(),
            fifo: VecDeque::new(),
        }
    }

    fn expired(&self, recorded_at: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(recorded_at) >= self.window_ms
    }

    /// What is known about `key` at `now_ms`.
    pub fn check(&self, key: (u64, u64), now_ms: u64) -> Seen {
        match self.entries.get(&key) {
            None => Seen::New,
            Some(DedupEntry::Pending) => Seen::Pending,
            Some(&DedupEntry::Stored {
                msg_id,
                server_time_ms,
                recorded_at,
            }) => {
                if self.expired(recorded_at, now_ms) {
                    Seen::New
                } else {
                    Seen::Stored {
                        msg_id,
                        server_time_ms,
                    }
                }
            }
        }
    }

    /// Marks `key` as having a Store in flight (replacing an expired entry).
    pub fn mark_pending(&mut self, key: (u64, u64)) {
        self.entries.insert(key, DedupEntry::Pending);
    }

    /// The Store for `key` ended: with `Some((msg_id, server_time_ms))` remember it from
    /// `now_ms` on; with `None` (refused) forget the pending mark.
    pub fn finish(&mut self, key: (u64, u64), stored: Option<(u64, u64)>, now_ms: u64) {
        match stored {
            Some((msg_id, server_time_ms)) => {
                self.entries.insert(
                    key,
                    DedupEntry::Stored {
                        msg_id,
                        server_time_ms,
                        recorded_at: now_ms,
                    },
                );
                self.fifo.push_back((now_ms, key));
            }
            None => {
                if let Entry::Occupied(e) = self.entries.entry(key)
                    && matches!(e.get(), DedupEntry::Pending)
                {
                    e.remove();
                }
            }
        }
    }

    /// Forgets at most [`PRUNE_PER_INPUT`] expired entries, oldest first.
    pub fn prune(&mut self, now_ms: u64) {
        for _ in 0..PRUNE_PER_INPUT {
            let Some(&(recorded_at, key)) = self.fifo.front() else {
                return;
            };
            if !self.expired(recorded_at, now_ms) {
                return;
            }
            self.fifo.pop_front();
            // The key may have been stored again since (after expiring, or a Pending now):
            // only remove the entry this FIFO slot recorded.
            if let Entry::Occupied(e) = self.entries.entry(key)
                && matches!(*e.get(), DedupEntry::Stored { recorded_at: r, .. } if r == recorded_at)
            {
                e.remove();
            }
        }
    }

    /// Replay: remembers `key` as stored, recorded at `recorded_at`, unless a later recording
    /// is known. Call [`Dedup::sort_fifo`] when done.
    pub fn restore(&mut self, key: (u64, u64), msg_id: u64, server_time_ms: u64, recorded_at: u64) {
        if let Some(DedupEntry::Stored { recorded_at: r, .. }) = self.entries.get(&key)
            && *r >= recorded_at
        {
            return;
        }
        self.entries.insert(
            key,
            DedupEntry::Stored {
                msg_id,
                server_time_ms,
                recorded_at,
            },
        );
        self.fifo.push_back((recorded_at, key));
    }

    /// Puts the FIFO back in `recorded_at` order after [`Dedup::restore`]s in any order.
    pub fn sort_fifo(&mut self) {
        self.fifo.make_contiguous().sort_unstable();
    }

    /// The live stored entries recorded at or before `until_ms`, unexpired at `now_ms`, as
    /// `(key, msg_id, server_time_ms, recorded_at)` (retention re-appends them).
    pub fn stored_until(
        &self,
        until_ms: u64,
        now_ms: u64,
    ) -> impl Iterator<Item = ((u64, u64), u64, u64, u64)> + '_ {
        self.fifo
            .iter()
            .take_while(move |&&(at, _)| at <= until_ms)
            .filter_map(move |&(at, key)| match self.entries.get(&key) {
                Some(&DedupEntry::Stored {
                    msg_id,
                    server_time_ms,
                    recorded_at,
                }) if recorded_at == at && !self.expired(at, now_ms) => {
                    Some((key, msg_id, server_time_ms, recorded_at))
                }
                _ => None,
            })
    }

    /// Entries held (pending and stored, expired or not yet pruned).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// uid → the session ids online.
#[derive(Debug, Default)]
pub struct Presence {
    /// Online sessions per user, ascending. A user has one or a few: a small vector (not a
    /// tree) keeps this a few dozen bytes per online user.
    online: IdMap<u64, Vec<u64>>,
}

impl Presence {
    pub fn apply(&mut self, p: &link::Presence) {
        if p.online {
            let sessions = self
                .online
                .entry(p.uid)
                .or_insert_with(|| Vec::with_capacity(1));
            if let Err(at) = sessions.binary_search(&p.session_id) {
                sessions.insert(at, p.session_id);
            }
        } else if let Entry::Occupied(mut e) = self.online.entry(p.uid) {
            e.get_mut().retain(|&s| s != p.session_id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    /// `uid`'s online sessions, ascending.
    pub fn sessions(&self, uid: u64) -> impl Iterator<Item = u64> + '_ {
        self.online.get(&uid).into_iter().flatten().copied()
    }

    /// Users with at least one online session.
    pub fn online_users(&self) -> usize {
        self.online.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(conv_id: u64, latest: u64, unread: u32) -> link::ConvState {
        link::ConvState {
            conv_type: 1,
            conv_id,
            latest_msg_id: latest,
            unread,
        }
    }

    #[test]
    fn inbox_is_newest_first_by_arrival_and_unread_changes_keep_the_place() {
        let mut inbox = Inbox::default();
        // A higher msg_id can arrive first (another partition minted it in the same ms).
        inbox.set(state(1, 900, 1));
        inbox.set(state(2, 500, 1));
        inbox.set(state(3, 700, 1));
        let order = |inbox: &Inbox| -> Vec<u64> {
            inbox.newest(10, 0).0.iter().map(|c| c.conv_id).collect()
        };
        assert_eq!(order(&inbox), [3, 2, 1]);
        // A read (same latest, fewer unread) does not move a conversation.
        inbox.set(state(2, 500, 0));
        assert_eq!(order(&inbox), [3, 2, 1]);
        // A new message does.
        inbox.set(state(1, 901, 2));
        assert_eq!(order(&inbox), [1, 3, 2]);
        assert_eq!(inbox.total_unread(), 3);
    }

    #[test]
    fn bumps_make_a_conversation_newest_and_add_unread_and_pages_select_the_newest() {
        let mut inbox = Inbox::default();
        for conv_id in 1..=50 {
            inbox.set(state(conv_id, conv_id * 10, 0));
        }
        // A group message from someone else, then the member's own message.
        assert_eq!(inbox.bump((2, 7), 1000, 1), group_state(7, 1000, 1));
        assert_eq!(inbox.bump((2, 7), 1001, 0), group_state(7, 1001, 1));
        assert_eq!(inbox.bump((1, 3), 1002, 1), state(3, 1002, 1));
        assert_eq!(inbox.total_unread(), 2);
        let (page, more) = inbox.newest(4, 0);
        let order: Vec<(u32, u64)> = page.iter().map(|c| (c.conv_type, c.conv_id)).collect();
        assert_eq!(order, [(1, 3), (2, 7), (1, 50), (1, 49)]);
        assert!(more);
        let (all, more) = inbox.newest(1000, 0);
        assert_eq!(all.len(), 51);
        assert!(!more);
        assert_eq!(inbox.newest(0, 0), (Vec::new(), true));
    }

    fn group_state(conv_id: u64, latest: u64, unread: u32) -> link::ConvState {
        link::ConvState {
            conv_type: 2,
            ..state(conv_id, latest, unread)
        }
    }

    #[test]
    fn inbox_total_follows_every_update_and_removal() {
        let mut inbox = Inbox::default();
        inbox.set(state(1, 10, 2));
        inbox.set(state(2, 20, 3));
        inbox.set(state(1, 30, 1));
        assert_eq!(inbox.total_unread(), 4);
        let (convs, more) = inbox.newest(10, 0);
        assert_eq!(convs, [state(1, 30, 1), state(2, 20, 3)]);
        assert!(!more);
        inbox.set(state(2, 0, 0));
        assert_eq!(inbox.total_unread(), 1);
        assert_eq!(inbox.len(), 1);
    }

    #[test]
    fn dedup_entry_is_pruned_after_the_window_but_not_a_newer_one() {
        let mut d = Dedup::new(100);
        d.mark_pending((1, 7));
        assert_eq!(d.check((1, 7), 0), Seen::Pending);
        d.finish((1, 7), Some((55, 5)), 0);
        assert_eq!(
            d.check((1, 7), 99),
            Seen::Stored {
                msg_id: 55,
                server_time_ms: 5
            }
        );
        assert_eq!(d.check((1, 7), 100), Seen::New);
        // Stored again after expiry, before the old FIFO slot was pruned.
        d.mark_pending((1, 7));
        d.finish((1, 7), Some((66, 150)), 150);
        d.prune(150);
        assert_eq!(
            d.check((1, 7), 150),
            Seen::Stored {
                msg_id: 66,
                server_time_ms: 150
            }
        );
        d.prune(250);
        assert_eq!(d.len(), 0);
    }
}
