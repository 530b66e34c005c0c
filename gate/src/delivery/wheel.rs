//! Hierarchical timing wheel: the one timer store of a shard.
//!
//! # What it owns
//!
//! Every live timer of one shard and its payload `T`: a slab of entries (a `Vec` with a free
//! list), one intrusive doubly-linked list per slot (slab indices, not pointers), a 64-bit
//! occupancy bitmap per level, a `pending` list of entries already due, and `elapsed`, the tick
//! up to which time has been processed. Insert and cancel are O(1); finding the next non-empty
//! slot is a few bit operations per level. After warm-up nothing allocates except slab growth.
//!
//! # Who drives it
//!
//! The shard (or a sans-IO core it owns) calls [`TimerWheel::insert`] and
//! [`TimerWheel::cancel`] as its state machines ask, drains [`TimerWheel::poll_expired`] with
//! the current `now` until it returns `None`, then arms its single runtime timer at
//! [`TimerWheel::poll_timeout`]. An expiry yields `(TimerId, T)`; the owner decides what it
//! means. The wheel never touches IO, never reads the clock, never sleeps or spawns: time only
//! enters as the `now` argument, so it is tested on virtual time.
//!
//! # Time
//!
//! Time is integer millisecond ticks since the `start` instant given at construction. A deadline
//! is rounded *up* to a whole tick and `now` is rounded *down*, so nothing fires early and
//! nothing fires more than 1 ms late (plus the caller's wake-up latency). `now` must not go
//! backwards; a smaller `now` is treated as the current time (never a panic). Deadlines at or
//! before the current tick, including instants before `start`, fire on the next poll.
//!
//! # Levels
//!
//! Six levels of 64 slots; a slot of level `L` spans `64^L` ticks:
//!
//! | level | slot width           | level range            |
//! |-------|----------------------|------------------------|
//! | 0     | 1 ms                 | 64 ms                  |
//! | 1     | 64 ms                | ~4.1 s (4 096 ms)      |
//! | 2     | ~4.1 s               | ~4.4 min (262 144 ms)  |
//! | 3     | ~4.4 min             | ~4.7 h (16 777 216 ms) |
//! | 4     | ~4.7 h               | ~12.4 days (2^30 ms)   |
//! | 5     | ~12.4 days           | ~2.2 years (2^36 ms)   |
//!
//! An entry goes to the level of the highest bit in which its tick differs from `elapsed`
//! ([`level_for`]), at slot `(when >> 6 * level) & 63`. When time reaches the start of a slot of
//! level `L > 0`, its entries cascade into lower levels (or become due). Deadlines beyond the
//! horizon (2^36 ms ahead) are *not* clamped: they go to the top level, in the slot their tick
//! maps to modulo the top level's range. That slot comes round at most once per top-level turn
//! (~2.2 years) and never after the entry's tick; the entry is then re-placed, so its exact tick
//! is kept and it costs one extra cascade per turn.
//!
//! # Invariants
//!
//! - Every live entry is in exactly one list: `pending` iff `when <= elapsed`, else the slot
//!   `(when >> 6 * L) & 63` of a level `L`, with `when` and `elapsed` equal in every bit above
//!   level `L` (except on the top level, see above). Its `list` field names that list.
//! - Bit `s` of `occupied[L]` is set iff slot `s` of level `L` is non-empty.
//! - `elapsed` never decreases and never passes the start of a non-empty slot without draining
//!   it first; so a lower level's next slot is always due before any higher level's.
//! - A vacant slab entry's generation differs from that of every `TimerId` handed out for it:
//!   the generation is bumped whenever an entry is freed (fired or cancelled).

use std::fmt;
use std::time::{Duration, Instant};

/// Bits of a tick consumed by one level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Levels in the wheel.
const LEVELS: usize = 6;
/// Ticks covered by the whole wheel: 64^6 ms, about 2.2 years.
const HORIZON: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// The "no entry" index of the intrusive lists and the free list.
const NIL: u32 = u32::MAX;
/// `list` value of an entry in the pending (already due) list; slot lists are `level * 64 +
/// slot`, below this.
const PENDING: u16 = (LEVELS * SLOTS) as u16;
/// `list` value of a vacant slab entry.
const VACANT: u16 = u16::MAX;
/// Slot lists plus the pending list.
const LISTS: usize = LEVELS * SLOTS + 1;

/// Handle of one timer: a slab index plus the generation it was inserted with.
///
/// Small and `Copy`. Once the timer fired or was cancelled the generation is stale, and every
/// operation with the handle is a harmless no-op, even after the slab entry was reused.
/// (Generations are `u32` and wrap: a handle kept across 2^32 reuses of the same entry could
/// alias a new timer.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

/// One slab entry; vacant when `list == VACANT`, then `next` links the free list.
struct Entry<T> {
    /// Deadline tick (rounded up).
    when: u64,
    value: Option<T>,
    prev: u32,
    next: u32,
    generation: u32,
    list: u16,
}

/// The next slot to process: `deadline` is the tick at which it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiration {
    level: usize,
    slot: usize,
    deadline: u64,
}

/// A hierarchical timing wheel of payloads `T`, on millisecond ticks since `start`.
///
/// Call order: any number of `insert` / `cancel`; then `poll_expired(now)` in a loop until
/// `None`; then sleep until `poll_timeout()` (or the next input). `now` must be monotonic; a
/// `now` earlier than the latest one passed is treated as that latest one.
///
/// # Panics
///
/// `insert` panics if more than `u32::MAX - 1` timers would be live at once (the slab uses
/// `u32` indices), like `Vec` does on capacity overflow. Nothing else panics.
pub struct TimerWheel<T> {
    start: Instant,
    /// Tick up to which time has been processed; every entry with `when <= elapsed` is pending.
    elapsed: u64,
    entries: Vec<Entry<T>>,
    /// Head of the free list of vacant entries.
    free: u32,
    /// Live timers.
    len: usize,
    /// Heads of the slot lists (`level * 64 + slot`) and, last, of the pending list.
    heads: [u32; LISTS],
    /// Per level, bit `s` set iff slot `s` is non-empty.
    occupied: [u64; LEVELS],
    /// While `pending` is non-empty: a tick at or before every pending entry's tick.
    pending_floor: u64,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose tick 0 is `start`.
    pub fn new(start: Instant) -> Self {
        Self::with_capacity(start, 0)
    }

    /// An empty wheel with room for `cap` live timers before the slab grows.
    pub fn with_capacity(start: Instant, cap: usize) -> Self {
        Self {
            start,
            elapsed: 0,
            entries: Vec::with_capacity(cap),
            free: NIL,
            len: 0,
            heads: [NIL; LISTS],
            occupied: [0; LEVELS],
            pending_floor: 0,
        }
    }

    /// Live timers (inserted, neither fired nor cancelled).
    pub fn len(&self) -> usize {
        self.len
    }

    /// No live timers.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `value` to expire at `deadline`, rounded up to the next whole millisecond.
    ///
    /// A deadline at or before the current time (the latest `now` passed to `poll_expired`)
    /// fires on the next poll. O(1).
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerId {
        let when = self.tick_ceil(deadline);
        let index = self.alloc(when, value);
        self.place(index, when);
        TimerId {
            index,
            generation: self.entries[index as usize].generation,
        }
    }

    /// Cancels a live timer and returns its payload. O(1).
    ///
    /// `None` if `id` already fired or was cancelled, even if its slab entry now holds another
    /// timer.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        if !self.is_live(id) {
            return None;
        }
        self.unlink(id.index);
        Some(self.release(id.index))
    }

    /// The deadline of a live timer, rounded up to its millisecond tick; `None` once it fired or
    /// was cancelled.
    pub fn deadline(&self, id: TimerId) -> Option<Instant> {
        if !self.is_live(id) {
            return None;
        }
        Some(self.instant_at(self.entries[id.index as usize].when))
    }

    /// The earliest instant at which `poll_expired` may yield something: never later than the
    /// earliest deadline, possibly earlier (a cascade point, where entries only move down a
    /// level). At or before the current time if something is already due (then it is the
    /// earliest deadline among the due ones, or earlier). `None` when the wheel is empty.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.heads[usize::from(PENDING)] != NIL {
            debug_assert!(self.pending_floor <= self.elapsed);
            return Some(self.instant_at(self.pending_floor));
        }
        self.next_expiration()
            .map(|expiration| self.instant_at(expiration.deadline))
    }

    /// Advances the wheel to `now` and yields one expired timer; call in a loop until `None`.
    ///
    /// Every timer whose tick is at or before `now` is yielded exactly once, in no particular
    /// order, and none before its deadline. `now` must not go backwards: a `now` earlier than
    /// one already passed is treated as the time already reached.
    #[must_use = "an expired timer's payload is dropped if the result is ignored"]
    pub fn poll_expired(&mut self, now: Instant) -> Option<(TimerId, T)> {
        let now = self.tick_floor(now).max(self.elapsed);
        loop {
            let head = self.heads[usize::from(PENDING)];
            if head != NIL {
                let generation = self.entries[head as usize].generation;
                self.unlink(head);
                let value = self.release(head);
                let id = TimerId {
                    index: head,
                    generation,
                };
                return Some((id, value));
            }
            match self.next_expiration() {
                Some(expiration) if expiration.deadline <= now => self.process(expiration),
                _ => {
                    // No slot starts at or before `now`: jumping there skips nothing.
                    self.elapsed = now;
                    return None;
                }
            }
        }
    }

    fn is_live(&self, id: TimerId) -> bool {
        self.entries
            .get(id.index as usize)
            .is_some_and(|e| e.generation == id.generation && e.list != VACANT)
    }

    /// Takes a vacant entry (or grows the slab) and fills it; not yet linked.
    fn alloc(&mut self, when: u64, value: T) -> u32 {
        self.len += 1;
        if self.free != NIL {
            let index = self.free;
            let entry = &mut self.entries[index as usize];
            debug_assert_eq!(entry.list, VACANT);
            self.free = entry.next;
            entry.when = when;
            entry.value = Some(value);
            return index;
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NIL)
            .expect("TimerWheel holds at most u32::MAX - 1 live timers");
        self.entries.push(Entry {
            when,
            value: Some(value),
            prev: NIL,
            next: NIL,
            generation: 0,
            list: VACANT,
        });
        index
    }

    /// Frees an unlinked entry, bumping its generation, and returns its payload.
    fn release(&mut self, index: u32) -> T {
        let entry = &mut self.entries[index as usize];
        let value = entry.value.take();
        entry.generation = entry.generation.wrapping_add(1);
        entry.list = VACANT;
        entry.prev = NIL;
        entry.next = self.free;
        self.free = index;
        self.len -= 1;
        // A linked entry always holds its payload; this is an invariant, not caller input.
        value.expect("live timer entry holds its payload")
    }

    /// Links entry `index` into the list its tick belongs to, relative to `elapsed`.
    fn place(&mut self, index: u32, when: u64) {
        let list = if when <= self.elapsed {
            PENDING
        } else {
            let level = level_for(self.elapsed, when);
            (level * SLOTS + slot_for(when, level)) as u16
        };
        self.push_front(list, index);
    }

    fn push_front(&mut self, list: u16, index: u32) {
        let head = self.heads[usize::from(list)];
        if head != NIL {
            self.entries[head as usize].prev = index;
        }
        let entry = &mut self.entries[index as usize];
        if list == PENDING {
            self.pending_floor = if head == NIL {
                entry.when
            } else {
                self.pending_floor.min(entry.when)
            };
        }
        entry.prev = NIL;
        entry.next = head;
        entry.list = list;
        self.heads[usize::from(list)] = index;
        if list < PENDING {
            let list = usize::from(list);
            self.occupied[list / SLOTS] |= 1 << (list % SLOTS);
        }
    }

    fn unlink(&mut self, index: u32) {
        let Entry {
            prev, next, list, ..
        } = self.entries[index as usize];
        debug_assert_ne!(list, VACANT);
        let list = usize::from(list);
        if prev == NIL {
            debug_assert_eq!(self.heads[list], index);
            self.heads[list] = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next != NIL {
            self.entries[next as usize].prev = prev;
        }
        if self.heads[list] == NIL && list < usize::from(PENDING) {
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
    }

    /// Moves time to the start of `expiration`'s slot and empties it: entries whose tick has
    /// come become pending, the others move down a level (or round the top level).
    fn process(&mut self, expiration: Expiration) {
        debug_assert!(expiration.deadline > self.elapsed);
        self.elapsed = expiration.deadline;
        let list = expiration.level * SLOTS + expiration.slot;
        // Detach the whole slot first: a beyond-horizon entry may go back into this very slot.
        let mut cursor = std::mem::replace(&mut self.heads[list], NIL);
        self.occupied[expiration.level] &= !(1 << expiration.slot);
        while cursor != NIL {
            let Entry { next, when, .. } = self.entries[cursor as usize];
            debug_assert!(
                when >= expiration.deadline,
                "entry {cursor} skipped its tick"
            );
            self.place(cursor, when);
            debug_assert!(
                {
                    let placed = self.entries[cursor as usize].list;
                    placed == PENDING
                        || expiration.level == LEVELS - 1
                        || usize::from(placed) < expiration.level * SLOTS
                },
                "a cascade moves an entry down a level or makes it due"
            );
            cursor = next;
        }
    }

    /// The first non-empty slot to process, by start tick.
    fn next_expiration(&self) -> Option<Expiration> {
        let expiration = (0..LEVELS).find_map(|level| self.level_expiration(level))?;
        debug_assert!(
            (expiration.level + 1..LEVELS)
                .filter_map(|level| self.level_expiration(level))
                .all(|later| later.deadline >= expiration.deadline),
            "a higher level is due before a lower one"
        );
        Some(expiration)
    }

    /// The next non-empty slot of `level` after `elapsed`, with the tick it starts at.
    ///
    /// Slots are searched from the one after the current slot round to the current slot
    /// itself: the current slot of a level can only hold top-level entries a whole turn (or
    /// more) ahead, so it comes last.
    fn level_expiration(&self, level: usize) -> Option<Expiration> {
        let occupied = self.occupied[level];
        if occupied == 0 {
            return None;
        }
        let now_slot = slot_for(self.elapsed, level);
        let first = (now_slot + 1) % SLOTS;
        let ahead = occupied.rotate_right(first as u32).trailing_zeros() as usize;
        let slot = (first + ahead) % SLOTS;
        let slot_range = 1u64 << (SLOT_BITS * level as u32);
        let level_range = slot_range << SLOT_BITS;
        let level_start = self.elapsed & !(level_range - 1);
        let mut deadline = level_start.saturating_add(slot as u64 * slot_range);
        if slot <= now_slot {
            // Only the top level holds slots at or "behind" the current one: beyond-horizon
            // entries, visited on the level's next turn.
            debug_assert_eq!(level, LEVELS - 1);
            deadline = deadline.saturating_add(level_range);
        }
        debug_assert!(deadline > self.elapsed);
        Some(Expiration {
            level,
            slot,
            deadline,
        })
    }

    /// Whole milliseconds from `start` to `t`, rounded up; 0 for instants before `start`.
    fn tick_ceil(&self, t: Instant) -> u64 {
        let since = t.saturating_duration_since(self.start);
        let ms = millis(since);
        if Duration::from_millis(ms) < since {
            ms.saturating_add(1)
        } else {
            ms
        }
    }

    /// Whole milliseconds from `start` to `t`, rounded down; 0 for instants before `start`.
    fn tick_floor(&self, t: Instant) -> u64 {
        millis(t.saturating_duration_since(self.start))
    }

    /// The instant of `tick`. A tick always comes from a representable instant rounded up by
    /// less than 1 ms, so at worst (at the very end of `Instant`'s range) this is 1 ms early.
    fn instant_at(&self, tick: u64) -> Instant {
        self.start
            .checked_add(Duration::from_millis(tick))
            .or_else(|| {
                self.start
                    .checked_add(Duration::from_millis(tick.saturating_sub(1)))
            })
            .unwrap_or(self.start)
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("start", &self.start)
            .field("elapsed_ms", &self.elapsed)
            .field("len", &self.len)
            .field("slab", &self.entries.len())
            .finish()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The level for an entry due at tick `when` while the wheel stands at `elapsed`: the level of
/// the highest bit in which they differ (ticks in the same 64-tick block go to level 0); entries
/// beyond the horizon go to the top level.
fn level_for(elapsed: u64, when: u64) -> usize {
    let mut masked = (elapsed ^ when) | (SLOTS as u64 - 1);
    if masked >= HORIZON {
        masked = HORIZON - 1;
    }
    let significant = 63 - masked.leading_zeros();
    (significant / SLOT_BITS) as usize
}

/// The slot of tick `when` in `level`.
fn slot_for(when: u64, level: usize) -> usize {
    ((when >> (SLOT_BITS as usize * level)) % SLOTS as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap, HashSet};

    use super::*;

    const MS: u64 = 1;
    const SEC: u64 = 1_000 * MS;
    const MIN: u64 = 60 * SEC;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    const YEAR: u64 = 365 * DAY;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drains everything due at `now`.
    fn drain<T>(wheel: &mut TimerWheel<T>, now: Instant) -> Vec<(TimerId, T)> {
        std::iter::from_fn(|| wheel.poll_expired(now)).collect()
    }

    use crate::delivery::test_rng::XorShift;

    impl<T> TimerWheel<T> {
        /// Walks every list and checks the structural invariants of the module doc.
        fn check_invariants(&self) {
            let mut seen = 0;
            for (list, &head) in self.heads.iter().enumerate() {
                if list < usize::from(PENDING) {
                    let bit = self.occupied[list / SLOTS] >> (list % SLOTS) & 1 == 1;
                    assert_eq!(bit, head != NIL, "occupancy bit of list {list}");
                }
                let mut prev = NIL;
                let mut cursor = head;
                while cursor != NIL {
                    let e = &self.entries[cursor as usize];
                    assert_eq!(usize::from(e.list), list);
                    assert_eq!(e.prev, prev);
                    assert!(e.value.is_some());
                    if list == usize::from(PENDING) {
                        assert!(e.when <= self.elapsed);
                    } else {
                        let (level, slot) = (list / SLOTS, list % SLOTS);
                        assert!(e.when > self.elapsed, "due entry left in a slot");
                        assert_eq!(slot_for(e.when, level), slot);
                        if level < LEVELS - 1 {
                            let above = SLOT_BITS as usize * (level + 1);
                            assert_eq!(e.when >> above, self.elapsed >> above);
                        }
                    }
                    seen += 1;
                    prev = cursor;
                    cursor = e.next;
                }
            }
            assert_eq!(seen, self.len);
            let vacant = self.entries.iter().filter(|e| e.list == VACANT).count();
            assert_eq!(vacant + self.len, self.entries.len());
        }
    }

    #[test]
    fn level_for_picks_the_level_of_the_highest_differing_bit() {
        for when in 0..64 {
            assert_eq!(level_for(0, when), 0, "when={when}");
        }
        for level in 1..LEVELS {
            let first = 1u64 << (SLOT_BITS as usize * level);
            let last = (first << SLOT_BITS) - 1;
            assert_eq!(level_for(0, first), level, "first tick of level {level}");
            assert_eq!(level_for(0, first + 1), level);
            assert_eq!(level_for(0, last), level, "last tick of level {level}");
            assert_eq!(level_for(0, first - 1), level - 1);
        }
        // Relative to elapsed: the same 64-tick block is level 0, the next block is level 1,
        // even one tick away.
        assert_eq!(level_for(100, 127), 0);
        assert_eq!(level_for(100, 128), 1);
        assert_eq!(level_for(63, 64), 1);
        assert_eq!(level_for(4095, 4096), 2);
        // Beyond the horizon: top level.
        assert_eq!(level_for(0, HORIZON), LEVELS - 1);
        assert_eq!(level_for(0, u64::MAX), LEVELS - 1);
        assert_eq!(level_for(HORIZON - 1, HORIZON), LEVELS - 1);
        assert_eq!(slot_for(HORIZON + 5, LEVELS - 1), 0);
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let a = wheel.insert(t0 + ms(10), 'a');
        assert_eq!(wheel.poll_expired(t0 + ms(9)), None);
        assert_eq!(wheel.poll_expired(t0 + Duration::from_micros(9_999)), None);
        assert_eq!(wheel.poll_expired(t0 + ms(10)), Some((a, 'a')));
        assert_eq!(wheel.poll_expired(t0 + ms(10)), None);

        // A sub-millisecond deadline is rounded up: never early, at most 1 ms late.
        let b = wheel.insert(t0 + Duration::from_micros(20_300), 'b');
        assert_eq!(wheel.deadline(b), Some(t0 + ms(21)));
        assert_eq!(wheel.poll_expired(t0 + ms(20)), None);
        assert_eq!(wheel.poll_expired(t0 + Duration::from_micros(20_500)), None);
        assert_eq!(wheel.poll_expired(t0 + ms(21)), Some((b, 'b')));
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancel_is_o1_and_stale_cancel_is_noop() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // Three entries in one slot: cancelling the middle one keeps the list intact.
        let a = wheel.insert(t0 + ms(5), 'a');
        let b = wheel.insert(t0 + ms(5), 'b');
        let c = wheel.insert(t0 + ms(5), 'c');
        assert_eq!(wheel.cancel(b), Some('b'));
        assert_eq!(wheel.cancel(b), None);
        assert_eq!(wheel.deadline(b), None);
        assert_eq!(wheel.len(), 2);
        wheel.check_invariants();

        let mut fired = drain(&mut wheel, t0 + ms(5));
        fired.sort_by_key(|&(_, v)| v);
        assert_eq!(fired, vec![(a, 'a'), (c, 'c')]);
        // Cancelling a fired timer is a no-op.
        assert_eq!(wheel.cancel(a), None);
        assert_eq!(wheel.cancel(c), None);

        // A reused slab entry carries a new generation: the old id does not touch it.
        let d = wheel.insert(t0 + ms(50), 'd');
        assert!([a.index, b.index, c.index].contains(&d.index));
        let old = [a, b, c]
            .into_iter()
            .find(|id| id.index == d.index)
            .expect("d reuses a freed entry");
        assert_ne!(old.generation, d.generation);
        assert_eq!(wheel.cancel(old), None);
        assert_eq!(wheel.deadline(old), None);
        assert_eq!(wheel.deadline(d), Some(t0 + ms(50)));
        assert_eq!(wheel.len(), 1);

        // An id that was never handed out is no-op too.
        let bogus = TimerId {
            index: 1_000,
            generation: 0,
        };
        assert_eq!(wheel.cancel(bogus), None);
        assert_eq!(wheel.cancel(d), Some('d'));
        assert_eq!(wheel.poll_expired(t0 + ms(100)), None);
        assert_eq!(wheel.poll_timeout(), None);
        wheel.check_invariants();
    }

    #[test]
    fn entries_cascade_from_upper_levels() {
        let deadlines = [70 * MS, 5 * SEC, 3 * HOUR, 2 * DAY];
        let t0 = Instant::now();

        // Tick by tick around each deadline.
        let mut wheel = TimerWheel::new(t0);
        let ids: Vec<TimerId> = deadlines
            .iter()
            .map(|&d| wheel.insert(t0 + ms(d), d))
            .collect();
        let levels: Vec<usize> = ids
            .iter()
            .map(|id| usize::from(wheel.entries[id.index as usize].list) / SLOTS)
            .collect();
        assert_eq!(levels, vec![1, 2, 3, 4], "each starts on a higher level");
        for (&d, &id) in deadlines.iter().zip(&ids) {
            assert_eq!(drain(&mut wheel, t0 + ms(d - 3)), vec![]);
            for tick in d - 2..d {
                assert_eq!(wheel.poll_expired(t0 + ms(tick)), None, "early at {tick}");
            }
            assert_eq!(drain(&mut wheel, t0 + ms(d)), vec![(id, d)]);
            assert_eq!(wheel.poll_expired(t0 + ms(d + 1)), None);
            wheel.check_invariants();
        }
        assert!(wheel.is_empty());

        // Big jumps: straight to one tick before, then to the tick.
        let mut wheel = TimerWheel::new(t0);
        let ids: Vec<TimerId> = deadlines
            .iter()
            .map(|&d| wheel.insert(t0 + ms(d), d))
            .collect();
        for (&d, &id) in deadlines.iter().zip(&ids) {
            assert_eq!(drain(&mut wheel, t0 + ms(d - 1)), vec![]);
            assert_eq!(drain(&mut wheel, t0 + ms(d)), vec![(id, d)]);
        }

        // One jump past all of them.
        let mut wheel = TimerWheel::new(t0);
        for &d in &deadlines {
            let _ = wheel.insert(t0 + ms(d), d);
        }
        let mut fired: Vec<u64> = drain(&mut wheel, t0 + ms(3 * DAY))
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        fired.sort_unstable();
        assert_eq!(fired, deadlines);
    }

    #[test]
    fn beyond_horizon_deadline_fires_on_its_tick() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let far = [HORIZON + 5, 3 * YEAR + 17, 10 * YEAR];
        for &d in &far {
            let _ = wheel.insert(t0 + ms(d), d);
        }
        for &d in &far {
            assert_eq!(drain(&mut wheel, t0 + ms(d - 1)), vec![]);
            let fired: Vec<u64> = drain(&mut wheel, t0 + ms(d))
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            assert_eq!(fired, vec![d]);
            wheel.check_invariants();
        }
    }

    #[test]
    fn wrapped_top_level_slot_does_not_hide_a_nearer_one() {
        // Tick 2^36 + 10 maps to top slot 0, the current one; 2^30 + 5 to top slot 1. The
        // wrapped slot 0 must come last, not first.
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let far = wheel.insert(t0 + ms(HORIZON + 10), "far");
        let near = wheel.insert(t0 + ms((1 << 30) + 5), "near");
        assert!(
            wheel
                .poll_timeout()
                .is_some_and(|t| t <= t0 + ms((1 << 30) + 5))
        );
        let mut fired = Vec::new();
        while let Some(at) = wheel.poll_timeout() {
            fired.extend(
                drain(&mut wheel, at)
                    .into_iter()
                    .map(|(id, _)| (id, at - t0)),
            );
        }
        assert_eq!(
            fired,
            vec![(near, ms((1 << 30) + 5)), (far, ms(HORIZON + 10))]
        );
    }

    #[test]
    fn big_jump_expires_everything_due_once() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::with_capacity(t0, 10_000);
        let mut rng = XorShift(0x5EED_0001);
        let jump = 3 * DAY;
        let mut due = HashSet::new();
        for v in 0..10_000u64 {
            // Spread over 0..4 days, in microseconds so rounding is exercised.
            let us = rng.below(4 * DAY * 1_000);
            let id = wheel.insert(t0 + Duration::from_micros(us), v);
            if us.div_ceil(1_000) <= jump {
                due.insert(id);
            }
        }
        let mut fired = HashSet::new();
        while let Some((id, _)) = wheel.poll_expired(t0 + ms(jump)) {
            assert!(fired.insert(id), "{id:?} fired twice");
        }
        assert_eq!(fired, due);
        assert_eq!(wheel.len(), 10_000 - due.len());
        assert_eq!(wheel.poll_expired(t0 + ms(jump)), None);
        wheel.check_invariants();

        let rest = drain(&mut wheel, t0 + ms(4 * DAY));
        assert_eq!(rest.len(), 10_000 - due.len());
        assert!(rest.iter().all(|(id, _)| !fired.contains(id)));
        assert!(wheel.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_poll() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        // At tick 0 with nothing polled yet: a deadline of `start` is already due.
        let now_id = wheel.insert(t0, "start");
        assert_eq!(wheel.poll_timeout(), Some(t0));
        assert_eq!(wheel.poll_expired(t0), Some((now_id, "start")));

        assert_eq!(wheel.poll_expired(t0 + ms(1_000)), None);
        let past = wheel.insert(t0 + ms(500), "past");
        let now = wheel.insert(t0 + ms(1_000), "now");
        let before_start = wheel.insert(t0.checked_sub(ms(1)).unwrap_or(t0), "before start");
        assert!(wheel.poll_timeout().is_some_and(|t| t <= t0 + ms(1_000)));
        let mut fired = drain(&mut wheel, t0 + ms(1_000));
        fired.sort_by_key(|&(_, v)| v);
        assert_eq!(
            fired,
            vec![(before_start, "before start"), (now, "now"), (past, "past")]
        );
        assert!(wheel.is_empty());
    }

    #[test]
    fn now_going_backwards_is_treated_as_current_time() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        let _ = wheel.insert(t0 + ms(200), 'x');
        assert_eq!(wheel.poll_expired(t0 + ms(100)), None);
        assert_eq!(wheel.poll_expired(t0 + ms(50)), None);
        // Tick 80 is before the time already reached (100): due, even with a smaller `now`.
        let y = wheel.insert(t0 + ms(80), 'y');
        assert_eq!(wheel.poll_expired(t0 + ms(50)), Some((y, 'y')));
        assert_eq!(wheel.poll_expired(t0 + ms(199)), None);
        assert_eq!(drain(&mut wheel, t0 + ms(200)).len(), 1);
    }

    #[test]
    fn poll_timeout_is_never_later_than_earliest_deadline() {
        let t0 = Instant::now();
        let mut wheel = TimerWheel::new(t0);
        assert_eq!(wheel.poll_timeout(), None);
        let mut rng = XorShift(0x5EED_0002);
        let mut deadlines = HashMap::new();
        for _ in 0..2_000 {
            let class = rng.below(5);
            let span = [64 * MS, 5 * SEC, 3 * HOUR, 20 * DAY, 3 * YEAR][class as usize];
            let d = 1 + rng.below(span);
            let id = wheel.insert(t0 + ms(d), d);
            deadlines.insert(id, d);
        }
        // Drive it like a shell: sleep until poll_timeout, drain, repeat. Every timer then fires
        // exactly on its tick.
        let mut wakeups = 0;
        while let Some(at) = wheel.poll_timeout() {
            let earliest = deadlines.values().min().copied().expect("wheel not empty");
            assert!(
                at <= t0 + ms(earliest),
                "wakeup after the earliest deadline"
            );
            wakeups += 1;
            while let Some((id, d)) = wheel.poll_expired(at) {
                assert_eq!(at, t0 + ms(d), "fired off its tick");
                assert_eq!(deadlines.remove(&id), Some(d));
            }
        }
        assert!(deadlines.is_empty());
        assert!(wakeups < 2_000 * LEVELS, "{wakeups} wakeups");
    }

    /// Mixes inserts (past, sub-ms, short, long, beyond the horizon), cancels (live and stale)
    /// and time jumps of every size, checking each step against a `BTreeMap` of (tick, seq).
    #[test]
    fn matches_btreemap_model_under_random_ops() {
        for seed in [1, 0xDEAD_BEEF, 0x1234_5678_9ABC, 42, 7, 0xC0FFEE] {
            run_model(seed, 50_000);
        }
    }

    fn run_model(seed: u64, steps: usize) {
        let mut rng = XorShift(seed);
        let t0 = Instant::now();
        let mut wheel: TimerWheel<(u64, u64)> = TimerWheel::new(t0);
        // Reference: (tick, seq) -> id of every live timer.
        let mut model: BTreeMap<(u64, u64), TimerId> = BTreeMap::new();
        // Every id ever handed out, for cancels of live and stale ids alike.
        let mut handed: Vec<(TimerId, u64, u64)> = Vec::new();
        let mut now_us: u64 = 0;
        let mut reached_ms: u64 = 0;
        let mut seq = 0u64;

        for step in 0..steps {
            match rng.below(100) {
                0..50 => {
                    let span_us = [
                        1_000,
                        5_000,
                        200_000,
                        10 * MIN * 1_000,
                        3 * DAY * 1_000,
                        5 * YEAR * 1_000,
                    ][rng.below(6) as usize];
                    let at_us = if rng.below(10) == 0 {
                        now_us.saturating_sub(rng.below(2_000_000))
                    } else {
                        now_us + rng.below(span_us)
                    };
                    let tick = at_us.div_ceil(1_000);
                    seq += 1;
                    let id = wheel.insert(t0 + Duration::from_micros(at_us), (tick, seq));
                    assert_eq!(wheel.deadline(id), Some(t0 + ms(tick)));
                    model.insert((tick, seq), id);
                    handed.push((id, tick, seq));
                }
                50..75 => {
                    if handed.is_empty() {
                        continue;
                    }
                    let pick = rng.below(handed.len() as u64) as usize;
                    let (id, tick, s) = handed.swap_remove(pick);
                    let expected = model.remove(&(tick, s)).map(|_| (tick, s));
                    assert_eq!(wheel.cancel(id), expected, "cancel {id:?}");
                    assert_eq!(wheel.cancel(id), None);
                }
                _ => {
                    let jump_us = [
                        0,
                        3_000,
                        100_000,
                        10 * SEC * 1_000,
                        2 * HOUR * 1_000,
                        40 * DAY * 1_000,
                        3 * YEAR * 1_000,
                    ][rng.below(7) as usize];
                    let poll_us = if rng.below(20) == 0 {
                        // A `now` that went backwards.
                        now_us.saturating_sub(rng.below(5_000_000))
                    } else {
                        now_us += rng.below(jump_us + 1);
                        now_us
                    };
                    reached_ms = reached_ms.max(poll_us / 1_000);
                    while let Some((id, (tick, s))) =
                        wheel.poll_expired(t0 + Duration::from_micros(poll_us))
                    {
                        assert!(
                            tick <= reached_ms,
                            "fired early: tick {tick} at {reached_ms}"
                        );
                        assert_eq!(model.remove(&(tick, s)), Some(id), "fired twice or unknown");
                    }
                    assert!(
                        model.range(..=(reached_ms, u64::MAX)).next().is_none(),
                        "a due timer did not fire by {reached_ms}"
                    );
                }
            }
            assert_eq!(wheel.len(), model.len());
            match model.keys().next() {
                Some(&(earliest, _)) => {
                    let at = wheel.poll_timeout().expect("non-empty wheel has a timeout");
                    assert!(
                        at <= t0 + ms(earliest),
                        "step {step}: timeout after earliest"
                    );
                }
                None => assert_eq!(wheel.poll_timeout(), None),
            }
            if step % 1_000 == 0 {
                wheel.check_invariants();
            }
        }
        wheel.check_invariants();

        // Far enough for everything, including beyond-horizon entries.
        let end = t0 + ms(reached_ms + 6 * YEAR);
        while let Some((id, (tick, s))) = wheel.poll_expired(end) {
            assert_eq!(model.remove(&(tick, s)), Some(id));
        }
        assert!(model.is_empty());
        assert!(wheel.is_empty());
        wheel.check_invariants();
    }
}
