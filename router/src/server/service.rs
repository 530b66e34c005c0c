//! What runs behind the link server: a [`Service`] takes the gates' requests and events and
//! emits answers and downlink. The reference IM backend ([`ReferenceIm`]) is one; an existing
//! Rust backend embeds the link server by implementing the trait.

use std::collections::VecDeque;

use crate::im::recovery::{DataDirLock, Opened};
use crate::im::{
    ImConfig, Input, Origin, Output, Partition, PartitionId, Request, partition_of_user, route,
    route_presence,
};
use crate::link;

/// What the link server hands to its backend logic, on the server's thread. Session ids here
/// are *router-wide* (the hub makes them unique across gates); echo them as they are.
pub trait Service {
    /// A request from a gate (or from the HTTP API). Answer with an [`Output::Reply`] naming
    /// `origin`, now or later through [`crate::server::Hub::emit`].
    fn request(&mut self, origin: Origin, request: Request, now_ms: u64, out: &mut Vec<Output>);
    /// A session came online or went offline.
    fn presence(&mut self, presence: link::Presence, now_ms: u64, out: &mut Vec<Output>);
    /// PUSHes delivered or given up on by a gate.
    fn report(&mut self, report: link::DeliveryReport, now_ms: u64, out: &mut Vec<Output>);
    /// Timed work (a log flush due, say); called every few tens of milliseconds.
    fn tick(&mut self, _now_ms: u64) {}
}

/// The reference IM logic (`crate::im`) with every partition in this thread: the same code the
/// embedded backend runs inside the gate's shards.
pub struct ReferenceIm {
    partitions: Vec<Partition>,
    count: u32,
    work: VecDeque<(PartitionId, Input)>,
    scratch: Vec<Output>,
    /// `backend.sync = "always"`: each input's journal appends are synced before its outputs
    /// leave.
    sync_always: bool,
    /// The data directory's lock, held as long as the partitions journal into it.
    _data: Option<DataDirLock>,
}

impl ReferenceIm {
    pub fn new(config: ImConfig) -> Self {
        let count = config.partitions.max(1);
        Self {
            partitions: (0..count)
                .map(|p| Partition::new(p, config.clone()))
                .collect(),
            count,
            work: VecDeque::new(),
            scratch: Vec::new(),
            sync_always: false,
            _data: None,
        }
    }

    /// The partitions of an opened data directory (`crate::im::recovery::open`).
    pub fn opened(opened: Opened) -> Self {
        let count = opened.partitions.len() as u32;
        let sync_always = opened
            .partitions
            .iter()
            .any(|p| p.sync_policy() == Some(crate::log::Sync::Always));
        Self {
            partitions: opened.partitions,
            count,
            work: VecDeque::new(),
            scratch: Vec::new(),
            sync_always,
            _data: Some(opened.lock),
        }
    }

    /// Syncs every partition whose journal deadline is at or before `now_ms`.
    fn sync_due(&mut self, now_ms: u64) {
        for p in &mut self.partitions {
            if p.sync_deadline().is_some_and(|d| d <= now_ms)
                && let Err(err) = p.sync_journal()
            {
                tracing::error!(partition = p.id(), %err, "journal sync failed; retrying");
            }
        }
    }

    /// Runs `input` and every hop between partitions it leads to (in emission order: the FIFO
    /// per pair of partitions the IM logic relies on); whatever leaves the backend goes to `out`.
    fn run(&mut self, partition: PartitionId, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        self.work.push_back((partition, input));
        while let Some((partition, input)) = self.work.pop_front() {
            let Some(p) = self.partitions.get_mut(partition as usize) else {
                tracing::error!(partition, "input for a partition that does not exist");
                continue;
            };
            p.handle(input, now_ms, &mut self.scratch);
            for output in self.scratch.drain(..) {
                match output {
                    Output::ToPartition { partition, input } => {
                        self.work.push_back((partition, input))
                    }
                    other => out.push(other),
                }
            }
        }
        if self.sync_always {
            self.sync_due(now_ms);
        }
    }

    /// Online sessions the IM logic knows for `uid` (router-wide ids).
    pub fn online_sessions(&self, uid: u64) -> Vec<u64> {
        let p = partition_of_user(uid, self.count) as usize;
        self.partitions
            .get(p)
            .map(|p| p.online_sessions(uid).collect())
            .unwrap_or_default()
    }
}

impl Service for ReferenceIm {
    fn request(&mut self, origin: Origin, request: Request, now_ms: u64, out: &mut Vec<Output>) {
        let partition = route(&request, self.count);
        self.run(partition, Input::Request { origin, request }, now_ms, out);
    }

    fn presence(&mut self, presence: link::Presence, now_ms: u64, out: &mut Vec<Output>) {
        let partition = route_presence(&presence, self.count);
        self.run(partition, Input::Presence(presence), now_ms, out);
    }

    fn report(&mut self, report: link::DeliveryReport, now_ms: u64, out: &mut Vec<Output>) {
        let partition = partition_of_user(report.uid, self.count);
        self.run(partition, Input::Report(report), now_ms, out);
    }

    fn tick(&mut self, now_ms: u64) {
        self.sync_due(now_ms);
    }
}
