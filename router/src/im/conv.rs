//! One conversation's state inside its partition: the stored messages, who sent which, and the
//! read cursors of its readers (both parties of a single chat, the current members of a group).
//!
//! Invariants: `msgs` is sorted by `msg_id` (ids come from the partition's `MsgIdGen`, which only
//! grows, so storing is an append); `by_sender[u]` is the sorted ids of `u`'s own messages;
//! a cursor never moves back. A message is unread for `u` iff `msg_id > cursor(u)` and
//! `from != u`, so an unread count is two binary searches. Driven by the partition; never
//! touches IO or the clock.

use std::collections::BTreeMap;

use prost::Message as _;

use crate::idmap::IdMap;
use crate::link;

/// Bytes counted per pulled message on top of its encoded length (field tag, length prefix and
/// the PushMsg's extra `conv_id`, with room to spare).
pub const PULL_OVERHEAD: usize = 16;

/// A conversation: messages and read cursors.
#[derive(Debug, Default)]
pub struct Conv {
    msgs: Vec<link::Msg>,
    by_sender: IdMap<u64, Vec<u64>>,
    /// Reader → read cursor (the highest msg_id read). For a group: exactly its members.
    cursors: BTreeMap<u64, u64>,
    /// Journal seq of the oldest record still holding this conversation's live cursors or
    /// membership (`None`: none). Retention re-appends a snapshot before dropping it.
    pub state_since: Option<u64>,
}

/// Which way a page of history goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `msg_id > after`, oldest first.
    After(u64),
    /// `msg_id < before`, newest first.
    Before(u64),
}

impl Conv {
    /// A conversation whose readers are `readers`, every cursor at 0.
    pub fn with_readers(readers: impl IntoIterator<Item = u64>) -> Self {
        Self {
            cursors: readers.into_iter().map(|u| (u, 0)).collect(),
            ..Self::default()
        }
    }

    /// The newest msg_id, 0 when empty.
    pub fn latest(&self) -> u64 {
        self.msgs.last().map_or(0, |m| m.msg_id)
    }

    /// Number of stored messages.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// Appends `msg`, whose id must be above every stored id.
    pub fn push(&mut self, msg: link::Msg) {
        debug_assert!(
            msg.msg_id > self.latest(),
            "msg ids grow within a partition"
        );
        let own = self.by_sender.entry(msg.from).or_default();
        own.push(msg.msg_id);
        self.msgs.push(msg);
    }

    /// Is `uid` a reader (a member, for a group)?
    pub fn is_reader(&self, uid: u64) -> bool {
        self.cursors.contains_key(&uid)
    }

    /// The readers, ascending.
    pub fn readers(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.cursors.keys().copied()
    }

    /// Adds `uid` as a reader with nothing unread (cursor = latest); `false` if it already was.
    pub fn add_reader(&mut self, uid: u64) -> bool {
        let latest = self.latest();
        match self.cursors.entry(uid) {
            std::collections::btree_map::Entry::Occupied(_) => false,
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(latest);
                true
            }
        }
    }

    /// Removes `uid` as a reader; `false` if it was not one.
    pub fn remove_reader(&mut self, uid: u64) -> bool {
        self.cursors.remove(&uid).is_some()
    }

    /// Moves `uid`'s cursor to `read_up_to` clamped to the latest id. `Some(applied)` if the
    /// cursor moved forward, `None` if it did not (or `uid` is not a reader).
    pub fn read(&mut self, uid: u64, read_up_to: u64) -> Option<u64> {
        let applied = read_up_to.min(self.latest());
        let cursor = self.cursors.get_mut(&uid)?;
        if applied <= *cursor {
            return None;
        }
        *cursor = applied;
        Some(applied)
    }

    /// Every reader with its cursor, ascending by uid.
    pub fn cursors(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.cursors.iter().map(|(&u, &c)| (u, c))
    }

    /// The stored messages, oldest first.
    pub fn messages(&self) -> &[link::Msg] {
        &self.msgs
    }

    /// Replay: moves `uid`'s cursor to `read_up_to` if that is further (not clamped: the
    /// messages it covered may be gone); a non-reader is ignored.
    pub fn restore_cursor(&mut self, uid: u64, read_up_to: u64) {
        if let Some(cursor) = self.cursors.get_mut(&uid) {
            *cursor = (*cursor).max(read_up_to);
        }
    }

    /// Replay of a snapshot: exactly these readers with these cursors.
    pub fn set_readers(&mut self, readers: impl IntoIterator<Item = (u64, u64)>) {
        self.cursors = readers.into_iter().collect();
    }

    /// Forgets every message with `msg_id <= max_id` (retention); whether any went.
    pub fn drop_through(&mut self, max_id: u64) -> bool {
        let n = self.msgs.partition_point(|m| m.msg_id <= max_id);
        if n == 0 {
            return false;
        }
        self.msgs.drain(..n);
        self.by_sender.retain(|_, own| {
            let k = own.partition_point(|&id| id <= max_id);
            own.drain(..k);
            !own.is_empty()
        });
        true
    }

    /// Where [`Conv::read`] would move `uid`'s cursor (clamped to the latest id), without
    /// moving it: `None` if it would not move.
    pub fn read_target(&self, uid: u64, read_up_to: u64) -> Option<u64> {
        let applied = read_up_to.min(self.latest());
        let cursor = *self.cursors.get(&uid)?;
        (applied > cursor).then_some(applied)
    }

    /// `uid`'s unread count: messages above its cursor not sent by itself (0 for a non-reader).
    pub fn unread(&self, uid: u64) -> u32 {
        let Some(&cursor) = self.cursors.get(&uid) else {
            return 0;
        };
        let above = self.msgs.len() - self.msgs.partition_point(|m| m.msg_id <= cursor);
        let own_above = self
            .by_sender
            .get(&uid)
            .map_or(0, |own| own.len() - own.partition_point(|&id| id <= cursor));
        u32::try_from(above - own_above).unwrap_or(u32::MAX)
    }

    /// One page of history: at most `limit` messages in `page`'s direction whose summed
    /// `encoded_len + PULL_OVERHEAD` stays within `max_bytes` (0: no byte cap), but at least one
    /// when there is one; and whether more remain in that direction.
    pub fn page(&self, page: Page, limit: usize, max_bytes: usize) -> (Vec<link::Msg>, bool) {
        let mut msgs = Vec::new();
        let mut bytes = 0usize;
        let mut take = |m: &link::Msg| -> bool {
            if msgs.len() >= limit {
                return false;
            }
            let size = m.encoded_len() + PULL_OVERHEAD;
            if max_bytes != 0 && !msgs.is_empty() && bytes + size > max_bytes {
                return false;
            }
            bytes += size;
            msgs.push(m.clone());
            true
        };
        let has_more = match page {
            Page::After(after) => {
                let start = self.msgs.partition_point(|m| m.msg_id <= after);
                let rest = &self.msgs[start..];
                let taken = rest.iter().take_while(|m| take(m)).count();
                taken < rest.len()
            }
            Page::Before(before) => {
                let end = self.msgs.partition_point(|m| m.msg_id < before);
                let rest = &self.msgs[..end];
                let taken = rest.iter().rev().take_while(|m| take(m)).count();
                taken < rest.len()
            }
        };
        (msgs, has_more)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, from: u64) -> link::Msg {
        link::Msg {
            msg_id: id,
            from,
            conv_type: 2,
            to: 100,
            ..Default::default()
        }
    }

    #[test]
    fn unread_counts_others_messages_above_the_cursor() {
        let mut c = Conv::with_readers([1, 2, 3]);
        for (id, from) in [(10, 1), (20, 2), (30, 1), (40, 3), (50, 2)] {
            c.push(msg(id, from));
        }
        assert_eq!((c.unread(1), c.unread(2), c.unread(3)), (3, 3, 4));
        assert_eq!(c.read(1, 35), Some(35));
        assert_eq!(c.unread(1), 2);
        assert_eq!(c.read(1, 20), None, "cursor never moves back");
        assert_eq!(c.read(2, u64::MAX), Some(50), "clamped to the latest");
        assert_eq!(c.unread(2), 0);
        assert_eq!(c.unread(99), 0);
        assert!(c.add_reader(4));
        assert_eq!(c.unread(4), 0, "a new reader starts with nothing unread");
        assert!(!c.add_reader(4));
    }

    #[test]
    fn page_stops_at_the_byte_cap_but_returns_at_least_one() {
        let mut c = Conv::with_readers([1]);
        for id in 1..=10 {
            c.push(msg(id, 1));
        }
        let one = msg(1, 1).encoded_len() + PULL_OVERHEAD;
        let (page, more) = c.page(Page::After(0), 50, one * 3);
        assert_eq!(page.len(), 3);
        assert!(more);
        let (page, more) = c.page(Page::After(0), 50, 1);
        assert_eq!(page.len(), 1);
        assert!(more);
        let (page, more) = c.page(Page::Before(4), 50, 0);
        assert_eq!(page.iter().map(|m| m.msg_id).collect::<Vec<_>>(), [3, 2, 1]);
        assert!(!more);
    }
}
