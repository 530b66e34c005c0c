//! Per-shard delivery-report batcher: delay-ack toward the backend.
//!
//! # What it owns
//!
//! The delivered and undelivered msg ids of one shard that the backend has not been told about
//! yet, grouped per `(uid, session_id)` into the [`DeliveryReportBatch`] being gathered, plus full
//! batches sealed and waiting to be polled. It never sends anything: the shell takes batches
//! from [`ReportBatcher::poll_batch`] and hands them to the backend link.
//!
//! # Who drives it
//!
//! The shard shell owns one. Ids come from the shard's [`AckTracker`](super::AckTracker)s
//! (`delivered` from ACK and PULL, `undelivered` from give-ups and closes). **After every add the
//! shell calls [`ReportBatcher::poll_batch`] until `None`**, and re-arms the batcher's wheel
//! entry at [`ReportBatcher::poll_timeout`]; at shutdown it calls [`ReportBatcher::flush`] until
//! `None`. Time enters only as `now`; nothing reads the clock.
//!
//! # Invariants
//!
//! - A batch is emitted when it holds `batch` ids (`delivery.report_batch`) or when
//!   `flush_after` (`delivery.report_flush_ms`) has passed since its first id, whichever comes
//!   first. A full batch is sealed the moment its `batch`-th id is added (one large add is
//!   split across batches), so **every emitted batch holds at most `batch` ids**, and after
//!   `poll_batch` returned `None` the batcher holds fewer than `batch`.
//! - Within one batch there is **at most one [`DeliveryReport`] per `(uid, session_id)`**; ids
//!   are appended to it in the order they were added. Reports appear in order of their first id.
//! - `opened_at` is `Some` iff the open batch holds an id; sealed batches are due at once.
//!
//! Costs: one hash lookup per add (per session, not per id) plus the id copies.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use router::link::{DeliveryReport, DeliveryReportBatch};

use super::IdMap;

/// When to send a batch (the `delivery.report_*` keys, validated by the shell).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Ids per batch (`delivery.report_batch`, default 256); 0 is treated as 1.
    pub batch: usize,
    /// Longest wait of an id before its batch goes (`delivery.report_flush_ms`, default 10 ms).
    pub flush_after: Duration,
}

#[derive(Clone, Copy)]
enum Outcome {
    Delivered,
    Undelivered,
}

/// Gathers one shard's delivery reports into batches. See the module doc.
#[derive(Debug)]
pub struct ReportBatcher {
    batch: usize,
    flush_after: Duration,
    /// The batch being gathered.
    open: Vec<DeliveryReport>,
    /// `(uid, session_id)` -> index of its report in `open`.
    index: IdMap<(u64, u64), usize>,
    /// Ids in `open`; always below `batch` between calls.
    open_ids: usize,
    /// When the first id of `open` was added.
    opened_at: Option<Instant>,
    /// Full batches (exactly `batch` ids each) with the instant they were sealed.
    sealed: VecDeque<(Instant, DeliveryReportBatch)>,
    /// Ids held, open and sealed.
    held: usize,
}

impl ReportBatcher {
    /// An empty batcher.
    pub fn new(cfg: BatchConfig) -> Self {
        Self {
            batch: cfg.batch.max(1),
            flush_after: cfg.flush_after,
            open: Vec::new(),
            index: IdMap::default(),
            open_ids: 0,
            opened_at: None,
            sealed: VecDeque::new(),
            held: 0,
        }
    }

    /// `msg_ids` were delivered to session `session_id` of `uid` (ACK or PULL). Call
    /// [`Self::poll_batch`] afterwards.
    pub fn delivered(&mut self, uid: u64, session_id: u64, msg_ids: &[u64], now: Instant) {
        self.add(uid, session_id, msg_ids, Outcome::Delivered, now);
    }

    /// `msg_ids` were given up for session `session_id` of `uid` (retries exhausted or the
    /// session closed): the backend keeps them for PULL. Call [`Self::poll_batch`] afterwards.
    pub fn undelivered(&mut self, uid: u64, session_id: u64, msg_ids: &[u64], now: Instant) {
        self.add(uid, session_id, msg_ids, Outcome::Undelivered, now);
    }

    fn add(&mut self, uid: u64, session_id: u64, mut msg_ids: &[u64], what: Outcome, now: Instant) {
        while !msg_ids.is_empty() {
            let room = self.batch - self.open_ids;
            let (now_ids, rest) = msg_ids.split_at(room.min(msg_ids.len()));
            if self.opened_at.is_none() {
                self.opened_at = Some(now);
            }
            let open = &mut self.open;
            let at = *self.index.entry((uid, session_id)).or_insert_with(|| {
                open.push(DeliveryReport {
                    uid,
                    session_id,
                    ..DeliveryReport::default()
                });
                open.len() - 1
            });
            let report = &mut self.open[at];
            match what {
                Outcome::Delivered => report.delivered.extend_from_slice(now_ids),
                Outcome::Undelivered => report.undelivered.extend_from_slice(now_ids),
            }
            self.open_ids += now_ids.len();
            self.held += now_ids.len();
            if self.open_ids == self.batch {
                let full = self.take_open();
                self.sealed.push_back((now, full));
            }
            msg_ids = rest;
        }
    }

    /// When the next batch is due: at once if one is full, else `flush_after` after the first
    /// unflushed id. `None` when nothing is held (or the wait is beyond `Instant`'s range).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if let Some(&(sealed_at, _)) = self.sealed.front() {
            return Some(sealed_at);
        }
        self.opened_at?.checked_add(self.flush_after)
    }

    /// The next batch to send: a full one, or the open one once `flush_after` has passed since
    /// its first id. Call until `None` (after every add, and when `poll_timeout` has passed).
    #[must_use = "a batch of delivery reports is lost if the result is ignored"]
    pub fn poll_batch(&mut self, now: Instant) -> Option<DeliveryReportBatch> {
        if let Some((_, full)) = self.sealed.pop_front() {
            self.held -= self.batch;
            return Some(full);
        }
        let due = self
            .opened_at?
            .checked_add(self.flush_after)
            .is_some_and(|at| at <= now);
        if !due {
            return None;
        }
        self.held -= self.open_ids;
        Some(self.take_open())
    }

    /// Every held id, due or not (shutdown): full batches first, then the open one. Call until
    /// `None`.
    #[must_use = "a batch of delivery reports is lost if the result is ignored"]
    pub fn flush(&mut self) -> Option<DeliveryReportBatch> {
        if let Some((_, full)) = self.sealed.pop_front() {
            self.held -= self.batch;
            return Some(full);
        }
        self.opened_at?;
        self.held -= self.open_ids;
        Some(self.take_open())
    }

    /// Ids held (not yet returned by `poll_batch` or `flush`).
    pub fn len(&self) -> usize {
        self.held
    }

    /// No ids held.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Closes the open batch and returns it; the next add opens a new one.
    fn take_open(&mut self) -> DeliveryReportBatch {
        self.index.clear();
        self.open_ids = 0;
        self.opened_at = None;
        DeliveryReportBatch {
            reports: std::mem::take(&mut self.open),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn batcher(batch: usize) -> ReportBatcher {
        ReportBatcher::new(BatchConfig {
            batch,
            flush_after: ms(10),
        })
    }

    fn ids_in(batch: &DeliveryReportBatch) -> usize {
        batch
            .reports
            .iter()
            .map(|r| r.delivered.len() + r.undelivered.len())
            .sum()
    }

    fn report(uid: u64, session_id: u64, delivered: &[u64], undelivered: &[u64]) -> DeliveryReport {
        DeliveryReport {
            uid,
            session_id,
            delivered: delivered.to_vec(),
            undelivered: undelivered.to_vec(),
        }
    }

    #[test]
    fn flushes_at_batch_size() {
        let t0 = Instant::now();
        let mut b = batcher(4);
        b.delivered(1, 10, &[1, 2, 3], t0);
        assert_eq!(b.poll_batch(t0), None);
        b.delivered(2, 20, &[4, 5, 6], t0 + ms(1));
        // The 4th id sealed a batch at once; the other two wait in the next one.
        assert_eq!(b.poll_timeout(), Some(t0 + ms(1)));
        let full = b.poll_batch(t0 + ms(1)).expect("full batch");
        assert_eq!(
            full.reports,
            [report(1, 10, &[1, 2, 3], &[]), report(2, 20, &[4], &[])]
        );
        assert_eq!(b.poll_batch(t0 + ms(1)), None);
        assert_eq!(b.len(), 2);

        // One add larger than several batches is split; every batch holds at most `batch`.
        b.undelivered(3, 30, &(100..111).collect::<Vec<_>>(), t0 + ms(2));
        let mut sizes = Vec::new();
        while let Some(batch) = b.poll_batch(t0 + ms(2)) {
            sizes.push(ids_in(&batch));
        }
        assert_eq!(sizes, [4, 4, 4]);
        assert_eq!(b.len(), 1);
        assert!(b.len() < 4);
    }

    #[test]
    fn flushes_after_flush_ms_even_if_small() {
        let t0 = Instant::now();
        let mut b = batcher(256);
        b.delivered(1, 10, &[7], t0);
        b.delivered(1, 10, &[8], t0 + ms(5));
        // Due 10 ms after the *first* id, not the latest.
        assert_eq!(b.poll_timeout(), Some(t0 + ms(10)));
        assert_eq!(b.poll_batch(t0 + ms(9)), None);
        let batch = b.poll_batch(t0 + ms(10)).expect("due");
        assert_eq!(batch.reports, [report(1, 10, &[7, 8], &[])]);
        assert!(b.is_empty());
        assert_eq!(b.poll_timeout(), None);

        // The next id opens a new window.
        b.undelivered(1, 10, &[9], t0 + ms(30));
        assert_eq!(b.poll_timeout(), Some(t0 + ms(40)));
    }

    #[test]
    fn merges_ids_per_session() {
        let t0 = Instant::now();
        let mut b = batcher(256);
        b.delivered(1, 10, &[1, 2], t0);
        b.delivered(1, 11, &[3], t0);
        b.undelivered(1, 10, &[4], t0);
        b.delivered(2, 10, &[5], t0);
        b.delivered(1, 10, &[6], t0);
        b.delivered(1, 10, &[], t0);
        let batch = b.flush().expect("held ids");
        assert_eq!(
            batch.reports,
            [
                report(1, 10, &[1, 2, 6], &[4]),
                report(1, 11, &[3], &[]),
                report(2, 10, &[5], &[]),
            ]
        );
        assert_eq!(b.flush(), None);
        assert!(b.is_empty());
    }

    #[test]
    fn nothing_pending_no_timeout() {
        let t0 = Instant::now();
        let mut b = batcher(2);
        assert_eq!(b.poll_timeout(), None);
        b.delivered(1, 1, &[], t0);
        assert_eq!((b.poll_timeout(), b.len()), (None, 0));
        assert_eq!(b.poll_batch(t0 + ms(1_000)), None);
        assert_eq!(b.flush(), None);

        b.delivered(1, 1, &[1, 2], t0);
        assert!(b.poll_batch(t0).is_some());
        assert_eq!(b.poll_timeout(), None);
        assert!(b.is_empty());
    }

    #[test]
    fn every_id_is_reported_once_in_bounded_batches() {
        let t0 = Instant::now();
        let mut b = batcher(50);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut now, mut id, mut sent) = (t0, 0u64, Vec::new());
        let mut got = Vec::new();
        for _ in 0..5_000 {
            now += Duration::from_micros(next() % 3_000);
            let n = next() % 80;
            let ids: Vec<u64> = (id..id + n).collect();
            id += n;
            let (uid, session) = (next() % 20, next() % 3);
            if next() % 4 == 0 {
                b.undelivered(uid, session, &ids, now);
            } else {
                b.delivered(uid, session, &ids, now);
            }
            sent.extend_from_slice(&ids);
            while let Some(batch) = b.poll_batch(now) {
                assert!(ids_in(&batch) <= 50);
                let mut keys: Vec<_> = batch
                    .reports
                    .iter()
                    .map(|r| (r.uid, r.session_id))
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                assert_eq!(keys.len(), batch.reports.len(), "one report per session");
                for r in batch.reports {
                    got.extend(r.delivered);
                    got.extend(r.undelivered);
                }
            }
            assert!(b.len() < 50);
            if let Some(at) = b.poll_timeout() {
                assert!(at > now, "a due batch was left behind");
            }
        }
        while let Some(batch) = b.flush() {
            got.extend(
                batch
                    .reports
                    .into_iter()
                    .flat_map(|r| r.delivered.into_iter().chain(r.undelivered)),
            );
        }
        got.sort_unstable();
        assert_eq!(got, sent);
    }
}
