//! The embedded plug-in: the reference IM logic run as partitions inside the gate's shards.
//!
//! `backend.partitions` partitions (fixed for the life of the data) are hosted round-robin:
//! partition `p` lives on shard `p % shards`, so changing the shard count moves partitions
//! between shards but never re-hashes data. No extra thread competes for cores: a partition runs
//! on its host shard's executor, between connection tasks.
//!
//! Routing (all through one bounded glommio `channel_mesh` of [`Envelope`]s): a request goes to
//! its first partition ([`crate::im::route`]); partition outputs go to other partitions, answers
//! to the origin shard, downlink to the shards that own the recipients (split per shard, so a
//! deliver to many users crosses to each shard once). Work for partitions of the local shard is
//! run inline, iteratively.
//!
//! Full-channel policy, so no two full channels can ever deadlock (nothing ever *waits* to send
//! from a receiving task):
//! - a new request that arrives while any internal hop of this shard is parked, or whose first
//!   hop would cross a full channel, is refused ([`Unavailable`] → BACKEND_UNAVAILABLE);
//! - an internal hop (partition to partition, answers, downlink) that meets a full channel is
//!   parked in that destination's spill queue, which a per-destination task drains with an
//!   awaiting send. Spill is bounded by the fan-out of the requests already admitted, because
//!   the edge refuses new ones while anything is parked.
//!
//! Group bumps are held for the loop turn: a `GroupMsg` without NOTIFY (a group at or below
//! the push threshold) for a local partition waits until the task that produced it yields (at
//! most [`MAX_HELD_BUMPS`]), and consecutive ones of one group then bump each member's inbox
//! once per run ([`Partition::bump_group_run`]) instead of once per message. An input that
//! reads or writes inboxes ([`Input::touches_inboxes`]: an `InboxSet`, a SYNC, a NOTIFY
//! `GroupMsg`) first applies what is held for its partition, so inboxes still take their
//! updates in the order they were emitted (the host contract of `crate::im`); other inputs
//! (sends, stores, reports, presence) never look at inboxes and pass.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use glommio::GlommioError;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

use super::{Backend, Downlink, GateSink, Origin, Reply, Request, Unavailable};
use crate::im::{ImConfig, Input, Output, Partition, PartitionId, mix64, route, route_presence};
use crate::link;

/// What crosses between shards.
#[derive(Debug)]
pub enum Envelope {
    ToPartition {
        partition: PartitionId,
        input: Input,
    },
    Reply {
        origin: Origin,
        reply: Reply,
    },
    Downlink(Downlink),
}

/// What a cross-shard send does when the channel to its destination is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WhenFull {
    /// A new request: not taken, answered BACKEND_UNAVAILABLE (also while anything is parked).
    Refuse,
    /// An internal hop of an admitted request: parked in the destination's spill queue and sent
    /// by a draining task with an awaiting send; never dropped.
    Park,
}

/// The mesh every shard joins; build one per gate with [`mesh`] and clone it into each shard.
pub type Mesh = MeshBuilder<Envelope, Full>;

/// The mesh for `shards` shards with `capacity` messages per channel.
pub fn mesh(shards: usize, capacity: usize) -> Mesh {
    MeshBuilder::full(shards, capacity)
}

/// The partitions shard `shard` of `shards` hosts: `shard, shard + shards, ...`.
pub fn hosted_by(shard: u32, shards: u32, partitions: u32) -> impl Iterator<Item = PartitionId> {
    (0..partitions).filter(move |p| p % shards.max(1) == shard)
}

/// The gate shard that owns `uid`'s sessions (the gate's own `owner_shard`).
pub fn gate_shard_of(uid: u64, shards: u32) -> u32 {
    (mix64(uid) % u64::from(shards.max(1))) as u32
}

/// Group bumps held at most, over all hosted partitions; one more applies them at once.
pub const MAX_HELD_BUMPS: usize = 4096;

/// A held `GroupMsg` (module doc).
struct HeldBump {
    group_id: u64,
    msg_id: u64,
    from: u64,
    members: Arc<[u64]>,
}

/// One shard's part of the embedded backend.
pub struct EmbeddedShard {
    shard: u32,
    shards: u32,
    config: ImConfig,
    /// The hosted partitions `shard, shard + shards, ...`: partition `p` is at `p / shards`.
    partitions: RefCell<Vec<Partition>>,
    senders: Option<Senders<Envelope>>,
    sink: Weak<dyn GateSink>,
    /// Internal hops waiting for room in the channel to each shard.
    spill: Vec<RefCell<VecDeque<Envelope>>>,
    draining: Vec<Cell<bool>>,
    parked: Cell<usize>,
    /// `backend.sync = "always"`: what a cascade wrote is synced before anything it caused
    /// leaves; cascades of one loop turn share one msync per partition (group commit).
    sync_always: bool,
    /// Outputs waiting for the commit (bounded by the inputs admitted in one loop turn).
    held: RefCell<Vec<Output>>,
    commit_scheduled: Cell<bool>,
    /// Group bumps held for the loop turn, per hosted partition (indexed like `partitions`).
    bumps: RefCell<Vec<Vec<HeldBump>>>,
    bumps_held: Cell<usize>,
    bumps_scheduled: Cell<bool>,
    me: Weak<Self>,
}

impl EmbeddedShard {
    /// Joins the mesh (when there is more than one shard), takes the partitions this shard
    /// hosts (`hosted_by(shard, shards)` of them, in id order: fresh ones, or opened from the
    /// data directory by [`crate::im::recovery::open`]) and starts receiving. Must run on the
    /// shard's executor.
    pub async fn start(
        shard: usize,
        shards: usize,
        config: ImConfig,
        partitions: Vec<Partition>,
        mesh: Option<Mesh>,
        sink: Weak<dyn GateSink>,
    ) -> Result<Rc<Self>, String> {
        let (senders, receivers) = match mesh {
            Some(mesh) => match mesh.join().await {
                Ok((tx, rx)) => (Some(tx), Some(rx)),
                Err(e) => return Err(format!("backend mesh: {e}")),
            },
            None => (None, None),
        };
        let (shard, shards) = (shard as u32, shards.max(1) as u32);
        let expected: Vec<PartitionId> = hosted_by(shard, shards, config.partitions).collect();
        if partitions
            .iter()
            .map(Partition::id)
            .ne(expected.iter().copied())
        {
            return Err(format!(
                "shard {shard} was given partitions {:?}, expected {expected:?}",
                partitions.iter().map(Partition::id).collect::<Vec<_>>()
            ));
        }
        let sync_always = partitions
            .iter()
            .any(|p| p.sync_policy() == Some(crate::log::Sync::Always));
        let ticker = partitions
            .iter()
            .filter_map(Partition::sync_policy)
            .find_map(|policy| match policy {
                crate::log::Sync::Interval(ms) => Some(ms),
                _ => None,
            });
        let this = Rc::new_cyclic(|me| Self {
            shard,
            shards,
            config,
            partitions: RefCell::new(partitions),
            senders,
            sink,
            spill: (0..shards).map(|_| RefCell::default()).collect(),
            draining: (0..shards).map(|_| Cell::new(false)).collect(),
            parked: Cell::new(0),
            sync_always,
            held: RefCell::default(),
            commit_scheduled: Cell::new(false),
            bumps: RefCell::new((0..expected.len()).map(|_| Vec::new()).collect()),
            bumps_held: Cell::new(0),
            bumps_scheduled: Cell::new(false),
            me: me.clone(),
        });
        if let Some(interval_ms) = ticker {
            // The log's flush under `backend.sync = "interval"`: this plug-in's own timer (the
            // gate's wheel is not the backend's), a few times per interval, syncing only the
            // partitions whose deadline passed.
            let tick = Duration::from_millis((interval_ms / 4).clamp(1, 250));
            let this = Rc::downgrade(&this);
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(tick).await;
                    let Some(me) = this.upgrade() else { return };
                    me.sync_due(now_ms());
                }
            })
            .detach();
        }
        if let Some(mut receivers) = receivers {
            for (_peer, rx) in receivers.streams() {
                let this = Rc::downgrade(&this);
                glommio::spawn_local(async move {
                    while let Some(envelope) = rx.recv().await {
                        let Some(this) = this.upgrade() else { break };
                        this.accept(envelope);
                    }
                })
                .detach();
            }
        }
        Ok(this)
    }

    /// Partitions hosted here.
    pub fn hosted(&self) -> Vec<PartitionId> {
        self.partitions.borrow().iter().map(Partition::id).collect()
    }

    fn host_of(&self, partition: PartitionId) -> u32 {
        partition % self.shards
    }

    fn accept(&self, envelope: Envelope) {
        match envelope {
            Envelope::ToPartition { partition, input } => self.run(partition, input),
            Envelope::Reply { origin, reply } => self.to_sink(|s| s.reply(origin, reply)),
            Envelope::Downlink(d) => self.to_sink(|s| s.downlink(d)),
        }
    }

    fn to_sink(&self, f: impl FnOnce(&dyn GateSink)) {
        if let Some(sink) = self.sink.upgrade() {
            f(&*sink);
        }
    }

    /// Syncs every hosted partition whose journal deadline is at or before `now`.
    fn sync_due(&self, now: u64) {
        for p in self.partitions.borrow_mut().iter_mut() {
            if p.sync_deadline().is_some_and(|d| d <= now)
                && let Err(err) = p.sync_journal()
            {
                tracing::error!(partition = p.id(), %err, "journal sync failed; retrying");
            }
        }
    }

    /// Runs `input` on a local partition and everything local it leads to. What leaves the
    /// cascade (answers, hops to other shards, downlink) goes out after it; under
    /// `backend.sync = "always"` only once the journals it wrote are synced (the answer never
    /// precedes the durability it promises), by a commit shared with every other cascade of
    /// the same loop turn.
    fn run(&self, partition: PartitionId, input: Input) {
        let mut work = VecDeque::from([(partition, input)]);
        let mut out = Vec::new();
        let mut leaving = Vec::new();
        // One clock reading for the whole cascade: it is one logical step of the backend.
        let now = now_ms();
        while let Some((partition, input)) = work.pop_front() {
            let hosted = self.host_of(partition) == self.shard;
            let input = match input {
                Input::GroupMsg {
                    group_id,
                    msg_id,
                    from,
                    members,
                    notify: false,
                    ..
                } if hosted => {
                    let bump = HeldBump {
                        group_id,
                        msg_id,
                        from,
                        members,
                    };
                    self.hold_bump(partition, bump);
                    continue;
                }
                other => other,
            };
            // What is held for this partition goes first when this input reads or writes
            // inboxes: to them, inputs keep their order.
            if input.touches_inboxes() {
                self.apply_bumps(partition);
            }
            {
                let mut partitions = self.partitions.borrow_mut();
                let index = (partition / self.shards) as usize;
                let Some(p) = partitions.get_mut(index).filter(|_| hosted) else {
                    tracing::error!(
                        shard = self.shard,
                        partition,
                        "input for a partition not hosted here"
                    );
                    continue;
                };
                p.handle(input, now, &mut out);
            }
            for output in out.drain(..) {
                match output {
                    Output::ToPartition { partition, input }
                        if self.host_of(partition) == self.shard =>
                    {
                        work.push_back((partition, input));
                    }
                    // Only a commit holds outputs back; otherwise they leave at once (no
                    // buffer per cascade on the message path).
                    other if self.sync_always => leaving.push(other),
                    other => self.dispatch(other),
                }
            }
        }
        if self.sync_always
            && (self.commit_scheduled.get()
                || self
                    .partitions
                    .borrow()
                    .iter()
                    .any(|p| p.sync_deadline().is_some()))
        {
            // Group commit: held until one msync covers every cascade of this loop turn.
            self.held.borrow_mut().extend(leaving);
            self.schedule_commit();
            return;
        }
        for output in leaving {
            self.dispatch(output);
        }
    }

    /// Holds a group bump for the end of the loop turn (module doc).
    fn hold_bump(&self, partition: PartitionId, bump: HeldBump) {
        let index = (partition / self.shards) as usize;
        match self.bumps.borrow_mut().get_mut(index) {
            Some(held) => held.push(bump),
            None => return, // Not hosted here: `run` only holds for hosted partitions.
        }
        let held = self.bumps_held.get() + 1;
        self.bumps_held.set(held);
        if held >= MAX_HELD_BUMPS {
            self.apply_all_bumps();
            return;
        }
        if self.bumps_scheduled.replace(true) {
            return;
        }
        // After the tasks ready now: their cascades' bumps join the runs.
        self.after_ready_tasks(|me| {
            me.bumps_scheduled.set(false);
            me.apply_all_bumps();
        });
    }

    /// Runs `f` once the tasks ready now have run. A spawned task is first polled at once,
    /// hence the yield before `f`.
    fn after_ready_tasks(&self, f: impl FnOnce(&Self) + 'static) {
        let this = self.me.clone();
        glommio::spawn_local(async move {
            futures_lite::future::yield_now().await;
            if let Some(me) = this.upgrade() {
                f(&me);
            }
        })
        .detach();
    }

    fn apply_all_bumps(&self) {
        let partitions = self.bumps.borrow().len();
        for index in 0..partitions {
            self.apply_index(index);
        }
    }

    /// Applies the bumps held for `partition`, runs of one group to the same members at once.
    fn apply_bumps(&self, partition: PartitionId) {
        self.apply_index((partition / self.shards) as usize);
    }

    fn apply_index(&self, index: usize) {
        let held = match self.bumps.borrow_mut().get_mut(index) {
            Some(held) if !held.is_empty() => std::mem::take(held),
            _ => return,
        };
        self.bumps_held
            .set(self.bumps_held.get().saturating_sub(held.len()));
        let mut partitions = self.partitions.borrow_mut();
        let Some(p) = partitions.get_mut(index) else {
            return;
        };
        let mut msgs = Vec::new();
        let mut rest = &held[..];
        while let Some(first) = rest.first() {
            let run = rest
                .iter()
                .take_while(|b| {
                    b.group_id == first.group_id
                        && (Arc::ptr_eq(&b.members, &first.members) || b.members == first.members)
                })
                .count();
            msgs.clear();
            msgs.extend(rest[..run].iter().map(|b| (b.msg_id, b.from)));
            p.bump_group_run(first.group_id, &first.members, &msgs);
            rest = &rest[run..];
        }
    }

    /// After the tasks ready now have run (their cascades join this commit), syncs every
    /// dirty journal once and releases what was held, in order.
    fn schedule_commit(&self) {
        if self.commit_scheduled.replace(true) {
            return;
        }
        self.after_ready_tasks(|me| {
            me.sync_due(u64::MAX);
            me.commit_scheduled.set(false);
            let held = std::mem::take(&mut *me.held.borrow_mut());
            for output in held {
                me.dispatch(output);
            }
        });
    }

    /// Sends one output of a cascade where it goes.
    fn dispatch(&self, output: Output) {
        match output {
            Output::ToPartition { partition, input } => {
                let host = self.host_of(partition);
                self.send(host, Envelope::ToPartition { partition, input });
            }
            Output::Reply { origin, reply } => {
                if origin.shard == self.shard {
                    self.to_sink(|s| s.reply(origin, reply));
                } else {
                    self.send(origin.shard, Envelope::Reply { origin, reply });
                }
            }
            Output::Deliver(d) => self.deliver(d),
            Output::Notify(n) => self.notify(n),
            Output::ReadReceipt(r) => self.read_receipt(r),
            Output::Kick(k) => {
                let shard = gate_shard_of(k.uid, self.shards);
                self.downlink_to(shard, Downlink::Kick(k));
            }
        }
    }

    /// One Deliver per gate shard, naming only that shard's recipients.
    fn deliver(&self, d: link::Deliver) {
        if let Some(shard) = self.single_shard(&d.recipients) {
            // Every recipient on one shard (always so with one shard): no copy, no split.
            self.downlink_to(shard, Downlink::Deliver(d));
            return;
        }
        for (shard, recipients) in self.split(&d.recipients) {
            let part = link::Deliver {
                msg: d.msg.clone(),
                recipients,
                exclude_session: d.exclude_session,
            };
            self.downlink_to(shard, Downlink::Deliver(part));
        }
    }

    fn notify(&self, n: link::NotifyUsers) {
        let mut by_shard: Vec<Vec<link::UserConv>> = vec![Vec::new(); self.shards as usize];
        for update in n.updates {
            by_shard[gate_shard_of(update.uid, self.shards) as usize].push(update);
        }
        for (shard, updates) in by_shard.into_iter().enumerate() {
            if !updates.is_empty() {
                self.downlink_to(
                    shard as u32,
                    Downlink::Notify(link::NotifyUsers {
                        updates,
                        exclude_session: n.exclude_session,
                    }),
                );
            }
        }
    }

    fn read_receipt(&self, r: link::ReadReceiptOut) {
        for (shard, recipients) in self.split(&r.recipients) {
            let part = link::ReadReceiptOut {
                recipients,
                ..r.clone()
            };
            self.downlink_to(shard, Downlink::ReadReceipt(part));
        }
    }

    /// The shard of every uid in `uids`, if they all live on one.
    fn single_shard(&self, uids: &[u64]) -> Option<u32> {
        if self.shards == 1 {
            return Some(0);
        }
        let first = gate_shard_of(*uids.first()?, self.shards);
        uids.iter()
            .all(|&uid| gate_shard_of(uid, self.shards) == first)
            .then_some(first)
    }

    fn split(&self, uids: &[u64]) -> Vec<(u32, Vec<u64>)> {
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); self.shards as usize];
        for &uid in uids {
            by_shard[gate_shard_of(uid, self.shards) as usize].push(uid);
        }
        by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, u)| !u.is_empty())
            .map(|(s, u)| (s as u32, u))
            .collect()
    }

    fn downlink_to(&self, shard: u32, downlink: Downlink) {
        if shard == self.shard {
            self.to_sink(|s| s.downlink(downlink));
        } else {
            self.send(shard, Envelope::Downlink(downlink));
        }
    }

    /// An internal hop: never dropped, parked when the channel is full.
    fn send(&self, dest: u32, envelope: Envelope) {
        // `Park` never refuses.
        let _ = self.send_or(dest, envelope, WhenFull::Park);
    }

    /// Sends `envelope` to shard `dest`, doing `when_full` if its channel has no room.
    fn send_or(
        &self,
        dest: u32,
        envelope: Envelope,
        when_full: WhenFull,
    ) -> Result<(), Unavailable> {
        let Some(senders) = &self.senders else {
            tracing::error!(dest, "cross-shard hop with a single shard");
            return Err(Unavailable);
        };
        let idx = dest as usize;
        let mut spill = self.spill[idx].borrow_mut();
        if spill.is_empty() {
            match senders.try_send_to(idx, envelope) {
                Ok(()) => return Ok(()),
                Err(GlommioError::WouldBlock(glommio::ResourceType::Channel(back))) => {
                    match when_full {
                        WhenFull::Refuse => return Err(Unavailable),
                        WhenFull::Park => spill.push_back(back),
                    }
                }
                Err(err) => {
                    tracing::error!(dest, %err, "backend hop lost: peer shard gone");
                    return Err(Unavailable);
                }
            }
        } else {
            spill.push_back(envelope);
        }
        self.parked.set(self.parked.get() + 1);
        drop(spill);
        self.drain_spill(idx);
        Ok(())
    }

    fn drain_spill(&self, idx: usize) {
        if self.draining[idx].replace(true) {
            return;
        }
        let this = self.me.clone();
        glommio::spawn_local(async move {
            loop {
                let Some(me) = this.upgrade() else { return };
                let next = me.spill[idx].borrow_mut().pop_front();
                let Some(envelope) = next else {
                    me.draining[idx].set(false);
                    return;
                };
                me.parked.set(me.parked.get() - 1);
                let Some(senders) = &me.senders else { return };
                if senders.send_to(idx, envelope).await.is_err() {
                    tracing::error!(dest = idx, "backend hop lost: peer shard gone");
                }
            }
        })
        .detach();
    }
}

impl Backend for EmbeddedShard {
    fn submit(&self, origin: Origin, request: Request) -> Result<(), Unavailable> {
        let partition = route(&request, self.config.partitions);
        let input = Input::Request { origin, request };
        let host = self.host_of(partition);
        if self.parked.get() > 0 {
            // Hops of admitted requests are waiting for room: admit nothing new, even work that
            // starts here, until they drain. This is what bounds the spill queues.
            return Err(Unavailable);
        }
        if host == self.shard {
            self.run(partition, input);
            return Ok(());
        }
        self.send_or(
            host,
            Envelope::ToPartition { partition, input },
            WhenFull::Refuse,
        )
    }

    fn presence(&self, presence: link::Presence) {
        let partition = route_presence(&presence, self.config.partitions);
        self.hop_or_run(partition, Input::Presence(presence));
    }

    fn report(&self, batch: link::DeliveryReportBatch) {
        // One message from the gate; each report goes to its user's partition.
        for report in batch.reports {
            let partition = crate::im::partition_of_user(report.uid, self.config.partitions);
            self.hop_or_run(partition, Input::Report(report));
        }
    }
}

impl EmbeddedShard {
    fn hop_or_run(&self, partition: PartitionId, input: Input) {
        let host = self.host_of(partition);
        if host == self.shard {
            self.run(partition, input);
        } else {
            self.send(host, Envelope::ToPartition { partition, input });
        }
    }
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
