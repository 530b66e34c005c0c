//! The shard's half of the delivery engine: what PUSHes each session has pending (an
//! `AckTracker` per connection, in its `ConnShared`), the one `ReportBatcher` that turns ACKs,
//! PULLs and give-ups into batched delivery reports for the backend, and the one
//! `NotifyMerger` that folds NOTIFY updates per session and window. Their deadlines are entries
//! in the shard's wheel (`TimerKey::Reports`, `TimerKey::Notify`), at most one each.
//!
//! Conservation: every PUSH queued to a session is tracked first; it leaves the tracker only
//! as delivered (ACK, or a PULL past it) or undelivered (retries exhausted, the session closed,
//! or the tracker full), and each of those is reported exactly once.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use router::link;

use super::state::{ConnKey, ConnShared, Shard, TimerKey};
use crate::config::Settings;
use crate::delivery::{
    AckConfig, BatchConfig, JoinedRun, MAX_UPDATE_LEN, NotifyConfig, NotifyMerger, ReportBatcher,
    SharedFrame, TimerId,
};
use crate::protocol::pb::ConvUpdate;
use crate::protocol::{KickReason, MsgType, cmd, encode_frame};

/// Watches deliveries as they happen: what each session was pushed and what was reported.
/// For tests and audits (the conservation tests keep a ledger with it); called on the shard's
/// thread, so implementations must be cheap and thread-safe.
pub trait DeliveryObserver: Send + Sync {
    /// `msg_id` was queued (and is tracked) for `session_id` of `uid`.
    fn pushed(&self, uid: u64, session_id: u64, msg_id: u64);
    /// A batch of delivery reports is leaving for the backend.
    fn reported(&self, batch: &link::DeliveryReportBatch);
}

/// The shard's delivery state.
pub(crate) struct ShardDelivery {
    pub ack: AckConfig,
    reports: RefCell<ReportBatcher>,
    reports_armed: Cell<Option<(TimerId, Instant)>>,
    notify: RefCell<NotifyMerger<ConnKey>>,
    notify_armed: Cell<Option<(TimerId, Instant)>>,
    pub observer: Option<Arc<dyn DeliveryObserver>>,
}

impl ShardDelivery {
    pub fn new(settings: &Settings, observer: Option<Arc<dyn DeliveryObserver>>) -> Self {
        let d = &settings.delivery;
        Self {
            ack: AckConfig {
                ack_timeout: d.ack_timeout(),
                max_backoff: d.max_backoff(),
                max_retries: d.max_retries,
                max_pending: d.max_pending,
            },
            reports: RefCell::new(ReportBatcher::new(BatchConfig {
                batch: d.report_batch,
                flush_after: d.report_flush(),
            })),
            reports_armed: Cell::new(None),
            notify: RefCell::new(NotifyMerger::new(NotifyConfig {
                window: d.notify_merge(),
                // A merged NOTIFY always fits a frame.
                max_updates: (settings.max_frame as usize / MAX_UPDATE_LEN).max(1),
            })),
            notify_armed: Cell::new(None),
            observer,
        }
    }
}

impl Shard {
    /// Queues a PUSH to one session, tracking it for its ACK. A session with
    /// `delivery.max_pending` PUSHes pending is a slow consumer: this one is reported
    /// undelivered at once and the session kicked (KICK 4).
    pub fn push_tracked(&self, conn: &ConnShared, frame: &SharedFrame, now: Instant) {
        self.push_tracked_run(conn, &JoinedRun::new(std::slice::from_ref(frame)), now);
    }

    /// [`Shard::push_tracked`] for a run of PUSHes to one session, in order: one borrow of its
    /// tracker and of its queue for the whole run (a fan-out run of hundreds of messages), and
    /// when the tracker takes them all, one queue slot (the run's joined buffer).
    pub fn push_tracked_run(&self, conn: &ConnShared, run: &JoinedRun<'_>, now: Instant) {
        let frames = run.frames();
        let (uid, session_id) = (conn.uid(), conn.session_id());
        // PUSHes the tracker refused (the session is full): rare, so only then allocated.
        let mut refused: Vec<u64> = Vec::new();
        {
            let mut acks = conn.acks();
            let was_empty = acks.is_empty();
            for frame in frames {
                if acks
                    .track(Rc::clone(frame), now, &self.delivery.ack)
                    .is_err()
                {
                    refused.push(frame.msg_id());
                }
            }
            if was_empty && refused.len() < frames.len() {
                // Its deadline may be earlier than the connection's armed timer.
                conn.request_rearm();
            }
        }
        if let Some(observer) = &self.delivery.observer {
            for frame in frames {
                observer.pushed(uid, session_id, frame.msg_id());
            }
        }
        let accepted = frames.len() - refused.len();
        super::state::HotCounters::bump(&self.hot.pushes, accepted as u64);
        if refused.is_empty() {
            let websocket = conn.out().is_websocket();
            self.queue_counted(conn, run.queued(websocket).iter().cloned());
            return;
        }
        let kept = frames.iter().filter(|f| !refused.contains(&f.msg_id()));
        self.queue_frames(conn, kept.cloned());
        self.report(uid, session_id, &[], &refused, now);
        conn.request_kick(KickReason::SlowConsumer);
    }

    /// Records delivered / undelivered PUSHes of one session for the next report batch.
    pub fn report(
        &self,
        uid: u64,
        session_id: u64,
        delivered: &[u64],
        undelivered: &[u64],
        now: Instant,
    ) {
        if delivered.is_empty() && undelivered.is_empty() {
            return;
        }
        self.metric(|m| {
            m.acks += delivered.len() as u64;
            m.undelivered += undelivered.len() as u64;
        });
        {
            let mut reports = self.delivery.reports.borrow_mut();
            if !delivered.is_empty() {
                reports.delivered(uid, session_id, delivered, now);
            }
            if !undelivered.is_empty() {
                reports.undelivered(uid, session_id, undelivered, now);
            }
        }
        self.flush_reports(now);
    }

    /// Sends every batch that is full or due, and keeps the wheel entry at the next deadline.
    pub fn flush_reports(&self, now: Instant) {
        loop {
            let batch = self.delivery.reports.borrow_mut().poll_batch(now);
            let Some(batch) = batch else { break };
            self.send_reports(batch);
        }
        let next = self.delivery.reports.borrow().poll_timeout();
        self.arm_shard_timer(TimerKey::Reports, &self.delivery.reports_armed, next);
    }

    /// At stop: everything gathered goes now.
    pub fn flush_all_reports(&self) {
        loop {
            let batch = self.delivery.reports.borrow_mut().flush();
            let Some(batch) = batch else { break };
            self.send_reports(batch);
        }
    }

    fn send_reports(&self, batch: link::DeliveryReportBatch) {
        if let Some(observer) = &self.delivery.observer {
            observer.reported(&batch);
        }
        if let Some(backend) = self.backend.get() {
            backend.report(batch);
        }
    }

    /// A NOTIFY update for one session, merged within `delivery.notify_merge_ms`.
    pub fn notify(&self, key: ConnKey, update: ConvUpdate, now: Instant) {
        self.delivery.notify.borrow_mut().add(key, update, now);
        self.flush_notifies(now);
    }

    /// Sends every merged NOTIFY whose window has closed.
    pub fn flush_notifies(&self, now: Instant) {
        loop {
            let ready = self.delivery.notify.borrow_mut().poll_ready(now);
            let Some((key, body)) = ready else { break };
            if let Some(conn) = self.conn(key) {
                self.queue(
                    &conn,
                    encode_frame(cmd::NOTIFY, MsgType::Notify, 0, 0, &body),
                );
            }
        }
        let next = self.delivery.notify.borrow().poll_timeout();
        self.arm_shard_timer(TimerKey::Notify, &self.delivery.notify_armed, next);
    }

    /// A connection ended: its merged NOTIFYs are dropped.
    pub fn forget_notifies(&self, key: ConnKey) {
        self.delivery.notify.borrow_mut().remove(key);
    }

    /// A shard-level timer fired.
    pub fn shard_timer_fired(&self, key: TimerKey, now: Instant) {
        match key {
            TimerKey::Reports => {
                self.delivery.reports_armed.set(None);
                self.flush_reports(now);
            }
            TimerKey::Notify => {
                self.delivery.notify_armed.set(None);
                self.flush_notifies(now);
            }
            TimerKey::Conn(_) | TimerKey::Flush => {}
        }
    }

    /// Keeps exactly one wheel entry for `key`, no later than `next`: an earlier armed entry is
    /// left to fire (finding less or nothing due, it re-arms), a later one is replaced.
    fn arm_shard_timer(
        &self,
        key: TimerKey,
        armed: &Cell<Option<(TimerId, Instant)>>,
        next: Option<Instant>,
    ) {
        let Some(next) = next else { return };
        match armed.get() {
            Some((_, at)) if at <= next => return,
            Some((id, _)) => self.cancel_timer(id),
            None => {}
        }
        armed.set(Some((self.arm_timer(key, next), next)));
    }
}
