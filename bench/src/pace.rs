//! Open-loop pacing for one executor: one driver task sleeps until the earliest time any of the
//! executor's senders is due and wakes the ones that are, instead of a runtime timer per
//! connection re-armed on every poll.
//!
//! - [`DueQueue`] (sans-IO, no clock) owns the due times: an indexed binary min-heap of
//!   `(due_ns, slot)` with **at most one entry per slot** (setting a slot's time again moves its
//!   entry), and `armed`, the earliest time the driver will look at the queue. [`DueQueue::set`]
//!   says when a new time is earlier than that, so the driver must be woken to re-arm. Slots
//!   are added once per sender connection; nothing is allocated per message or per poll.
//! - [`Pace`] is the shell: the queue, one waker per slot and the driver's waker, all
//!   `RefCell`/`Cell` on one executor. [`Pace::drive`] is the driver task: it waits for the
//!   run's start, then loops "wake every slot due at `now`, arm one glommio timer for the next
//!   due time" until [`Pace::close`] (at `Phase::Done`) wakes everyone and ends it.
//!
//! Times are nanoseconds since the run's start, as everywhere in the tool. The driver never
//! wakes a slot before its due time, so a message is never sent before its scheduled time.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use crate::coord::{Phase, Shared};

/// `pos` of a slot without an entry.
const ABSENT: u32 = u32::MAX;
/// How often the driver looks at the phase before the run starts.
const SETUP_POLL: Duration = Duration::from_millis(1);

/// The due times of one executor's senders, at most one per slot (module doc).
///
/// Invariant: `armed <= ` every entry's due time, and `pos[heap[i].1] == i` for every entry.
#[derive(Debug)]
pub struct DueQueue {
    /// Min-heap on `(due_ns, slot)`.
    heap: Vec<(u64, u32)>,
    /// Per slot: its index in `heap`, or [`ABSENT`].
    pos: Vec<u32>,
    /// The earliest time the driver will look at the queue again (`u64::MAX`: parked with no
    /// deadline).
    armed: u64,
}

impl Default for DueQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl DueQueue {
    pub fn new() -> Self {
        Self {
            heap: Vec::new(),
            pos: Vec::new(),
            armed: u64::MAX,
        }
    }

    /// A new slot, with no due time.
    pub fn add_slot(&mut self) -> usize {
        debug_assert!(self.pos.len() < ABSENT as usize);
        self.pos.push(ABSENT);
        self.heap.reserve(1);
        self.pos.len() - 1
    }

    /// Entries in the queue (at most one per slot).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The due time of `slot`, if it has one.
    pub fn due_of(&self, slot: usize) -> Option<u64> {
        match self.pos.get(slot) {
            Some(&i) if i != ABSENT => Some(self.heap[i as usize].0),
            _ => None,
        }
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<u64> {
        self.heap.first().map(|&(due, _)| due)
    }

    /// Sets `slot`'s due time (adding its entry or moving it). Returns true when the driver
    /// must be woken because `due_ns` is earlier than the time it is armed for.
    #[must_use]
    pub fn set(&mut self, slot: usize, due_ns: u64) -> bool {
        let i = self.pos[slot];
        if i == ABSENT {
            let at = self.heap.len();
            self.heap.push((due_ns, slot as u32));
            self.pos[slot] = at as u32;
            self.sift_up(at);
        } else {
            let i = i as usize;
            let old = self.heap[i].0;
            if old == due_ns {
                return false;
            }
            self.heap[i].0 = due_ns;
            if due_ns < old {
                self.sift_up(i);
            } else {
                self.sift_down(i);
            }
        }
        let wake = due_ns < self.armed;
        if wake {
            self.armed = due_ns;
        }
        wake
    }

    /// Removes `slot`'s entry, if any.
    pub fn remove(&mut self, slot: usize) {
        let i = self.pos[slot];
        if i != ABSENT {
            self.remove_at(i as usize);
        }
    }

    /// Takes one slot due at or before `now_ns` (earliest first; ties by slot).
    pub fn pop_due(&mut self, now_ns: u64) -> Option<usize> {
        match self.heap.first() {
            Some(&(due, slot)) if due <= now_ns => {
                self.remove_at(0);
                Some(slot as usize)
            }
            _ => None,
        }
    }

    /// The driver is about to sleep: it will look again at the returned time (the earliest due
    /// time), or when woken because an earlier one was [`set`](Self::set).
    pub fn arm(&mut self) -> Option<u64> {
        let next = self.next_due();
        self.armed = next.unwrap_or(u64::MAX);
        next
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.heap.swap(i, last);
        let (_, gone) = self.heap.pop().expect("i < len, so the heap is not empty");
        self.pos[gone as usize] = ABSENT;
        if i < last {
            self.pos[self.heap[i].1 as usize] = i as u32;
            self.sift_down(i);
            self.sift_up(i);
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent] <= self.heap[i] {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < n && self.heap[l] < self.heap[least] {
                least = l;
            }
            if r < n && self.heap[r] < self.heap[least] {
                least = r;
            }
            if least == i {
                break;
            }
            self.swap(i, least);
            i = least;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1 as usize] = a as u32;
        self.pos[self.heap[b].1 as usize] = b as u32;
    }
}

/// One executor's pacing service (module doc).
#[derive(Default)]
pub struct Pace {
    queue: RefCell<DueQueue>,
    wakers: RefCell<Vec<Option<Waker>>>,
    driver: Cell<Option<Waker>>,
    closed: Cell<bool>,
}

/// A sender's place in [`Pace`]; its entry and waker go when it is dropped.
pub struct PaceSlot<'a> {
    pace: &'a Pace,
    slot: usize,
}

impl PaceSlot<'_> {
    /// Parks the caller (`waker`) until `due_ns`, replacing its previous due time. The caller
    /// still returns `Pending` itself; it is woken at or after `due_ns`, or by [`Pace::close`].
    pub fn wait(&self, due_ns: u64, waker: &Waker) {
        let pace = self.pace;
        {
            let mut wakers = pace.wakers.borrow_mut();
            let mine = &mut wakers[self.slot];
            if !mine.as_ref().is_some_and(|w| w.will_wake(waker)) {
                *mine = Some(waker.clone());
            }
        }
        if pace.queue.borrow_mut().set(self.slot, due_ns)
            && let Some(driver) = pace.driver.take()
        {
            driver.wake();
        }
    }
}

impl Drop for PaceSlot<'_> {
    fn drop(&mut self) {
        self.pace.queue.borrow_mut().remove(self.slot);
        self.pace.wakers.borrow_mut()[self.slot] = None;
    }
}

impl Pace {
    /// A slot for one sender connection.
    pub fn slot(&self) -> PaceSlot<'_> {
        let slot = self.queue.borrow_mut().add_slot();
        self.wakers.borrow_mut().push(None);
        PaceSlot { pace: self, slot }
    }

    /// Wakes every parked sender and the driver, which ends (the run is over).
    pub fn close(&self) {
        self.closed.set(true);
        let mut queue = self.queue.borrow_mut();
        while queue.pop_due(u64::MAX).is_some() {}
        for waker in self.wakers.borrow_mut().iter_mut() {
            if let Some(w) = waker.take() {
                w.wake();
            }
        }
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }

    /// Wakes the slots due at `now_ns`; returns the next due time (and arms for it).
    fn wake_due(&self, now_ns: u64) -> Option<u64> {
        let mut queue = self.queue.borrow_mut();
        let mut wakers = self.wakers.borrow_mut();
        while let Some(slot) = queue.pop_due(now_ns) {
            if let Some(w) = wakers[slot].take() {
                w.wake();
            }
        }
        queue.arm()
    }

    /// The driver task: from the run's start until [`Pace::close`], wakes each slot at its due
    /// time with one timer.
    pub async fn drive(&self, shared: &Shared) {
        let start = loop {
            if self.closed.get() {
                return;
            }
            match (shared.phase(), shared.start()) {
                (Phase::Running, Some(start)) => break start,
                (Phase::Setup, _) => glommio::timer::sleep(SETUP_POLL).await,
                // Never started: every sender is woken by `close`.
                _ => return,
            }
        };
        // Nothing is due before the start: senders waiting for it registered time 0.
        glommio::timer::sleep(start.saturating_duration_since(Instant::now())).await;
        let mut timer: Option<(Timer, u64)> = None;
        poll_fn(|cx| {
            loop {
                if self.closed.get() {
                    return Poll::Ready(());
                }
                let now = Instant::now();
                let now_ns = u64::try_from(now.saturating_duration_since(start).as_nanos())
                    .unwrap_or(u64::MAX);
                let Some(next) = self.wake_due(now_ns) else {
                    self.driver.set(Some(cx.waker().clone()));
                    return Poll::Pending;
                };
                // `next > now_ns`: everything due by now was just woken.
                let wait = Duration::from_nanos(next - now_ns);
                let t = match &mut timer {
                    Some((t, at)) if *at == next => t,
                    Some((t, at)) => {
                        t.reset(wait);
                        *at = next;
                        t
                    }
                    None => &mut timer.insert((Timer::new(wait), next)).0,
                };
                if Pin::new(t).poll(cx).is_pending() {
                    self.driver.set(Some(cx.waker().clone()));
                    return Poll::Pending;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(q: &mut DueQueue, n: usize) -> Vec<usize> {
        (0..n).map(|_| q.add_slot()).collect()
    }

    #[test]
    fn slots_come_out_in_due_order_and_only_once_due() {
        let mut q = DueQueue::new();
        let s = slots(&mut q, 5);
        for (slot, due) in [(s[0], 50), (s[1], 10), (s[2], 40), (s[3], 10), (s[4], 30)] {
            let _ = q.set(slot, due);
        }
        assert_eq!(q.next_due(), Some(10));
        assert_eq!(q.pop_due(9), None, "nothing is due before 10");
        // Ties go by slot number.
        assert_eq!(q.pop_due(10), Some(s[1]));
        assert_eq!(q.pop_due(10), Some(s[3]));
        assert_eq!(q.pop_due(10), None);
        assert_eq!(q.pop_due(45), Some(s[4]));
        assert_eq!(q.pop_due(45), Some(s[2]));
        assert_eq!(q.pop_due(45), None);
        assert_eq!(q.next_due(), Some(50));
        assert_eq!(q.pop_due(u64::MAX), Some(s[0]));
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_slot_has_at_most_one_entry_and_setting_it_again_moves_it() {
        let mut q = DueQueue::new();
        let s = slots(&mut q, 3);
        let _ = q.set(s[0], 100);
        let _ = q.set(s[1], 200);
        let _ = q.set(s[2], 300);
        for _ in 0..10 {
            let _ = q.set(s[1], 200);
        }
        assert_eq!(q.len(), 3, "re-registering the same time adds nothing");
        let _ = q.set(s[1], 50);
        assert_eq!(q.len(), 3);
        assert_eq!(q.due_of(s[1]), Some(50));
        let _ = q.set(s[0], 400);
        assert_eq!(q.len(), 3);
        let order: Vec<usize> = std::iter::from_fn(|| q.pop_due(u64::MAX)).collect();
        assert_eq!(order, [s[1], s[2], s[0]]);
        assert_eq!(q.due_of(s[1]), None, "popped slots have no entry");
    }

    #[test]
    fn the_driver_is_woken_only_for_a_time_earlier_than_it_is_armed_for() {
        let mut q = DueQueue::new();
        let s = slots(&mut q, 4);
        // Parked with nothing to wait for: any registration wakes it.
        assert!(q.set(s[0], 1_000));
        // It has not re-armed yet, but will look at 1,000 anyway: later times need no wake-up.
        assert!(!q.set(s[1], 2_000));
        assert_eq!(q.arm(), Some(1_000));
        assert!(!q.set(s[2], 1_000), "the same time as armed: no wake-up");
        assert!(q.set(s[3], 500), "earlier than armed: wake the driver");
        assert!(!q.set(s[3], 700), "it will look at 500 already");
        assert_eq!(q.arm(), Some(700));
        // Drained and re-armed with nothing left: parked again.
        while q.pop_due(u64::MAX).is_some() {}
        assert_eq!(q.arm(), None);
        assert!(q.set(s[0], u64::MAX - 1));
    }

    #[test]
    fn removed_slots_are_never_popped() {
        let mut q = DueQueue::new();
        let s = slots(&mut q, 4);
        for (i, &slot) in s.iter().enumerate() {
            let _ = q.set(slot, 10 * (i as u64 + 1));
        }
        q.remove(s[0]);
        q.remove(s[2]);
        q.remove(s[2]);
        assert_eq!(q.len(), 2);
        let order: Vec<usize> = std::iter::from_fn(|| q.pop_due(u64::MAX)).collect();
        assert_eq!(order, [s[1], s[3]]);
    }

    #[test]
    fn many_random_moves_keep_the_heap_in_order() {
        // A fixed LCG against a plain model: one due time (or none) per slot.
        let mut q = DueQueue::new();
        let s = slots(&mut q, 64);
        let mut model: Vec<Option<u64>> = vec![None; 64];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            x >> 33
        };
        let mut now = 0;
        for _ in 0..20_000 {
            let slot = (next() % 64) as usize;
            match next() % 4 {
                0 => {
                    q.remove(s[slot]);
                    model[slot] = None;
                }
                1 => {
                    now += next() % 50;
                    let mut popped = Vec::new();
                    while let Some(p) = q.pop_due(now) {
                        popped.push(p);
                    }
                    let mut want: Vec<(u64, usize)> = model
                        .iter()
                        .enumerate()
                        .filter_map(|(i, d)| d.filter(|&d| d <= now).map(|d| (d, i)))
                        .collect();
                    want.sort_unstable();
                    for (_, i) in &want {
                        model[*i] = None;
                    }
                    let want: Vec<usize> = want.into_iter().map(|(_, i)| s[i]).collect();
                    assert_eq!(popped, want);
                }
                _ => {
                    let due = now + next() % 1_000;
                    let _ = q.set(s[slot], due);
                    model[slot] = Some(due);
                }
            }
            assert_eq!(q.len(), model.iter().flatten().count());
            assert_eq!(q.next_due(), model.iter().flatten().min().copied());
        }
    }
}
