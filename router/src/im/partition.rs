//! One partition of the reference IM logic: the state of the conversations and users that hash
//! to it, and the handlers of every [`Input`] (the flows are in the `im` module doc).
//!
//! Owns, all in memory, in plain structs that a log could rebuild:
//! - conversations: single chats keyed by their two uids and groups keyed by id, each a
//!   [`Conv`] (messages, per-sender ids, read cursors) — for the conversations whose
//!   [`partition_of_conv`] is this partition;
//! - users: the [`Inbox`] SYNC reads, the [`Dedup`] index SEND checks, [`Presence`] — for the
//!   users whose [`partition_of_user`] is this partition;
//! - the partition's [`MsgIdGen`] (node = partition id) and group-id counter.
//!
//! Invariants: msg ids grow within a conversation (one generator per partition); every inbox
//! value is the exact (latest, unread) its conversation partition computed last, so SYNC's total
//! is the sum of the per-conversation unread counts. This relies on the host delivering the
//! `ToPartition` outputs of one partition to another in the order they were emitted (FIFO per
//! pair of partitions), which the shard mesh and a link connection both give.
//!
//! Work per input is bounded (binary searches, at most 200 pulled messages, at most 1,000 synced
//! conversations, a few dedup prunes) except fan-out, proportional to the group's size. No input
//! panics. Time is the `now_ms` argument; this module never reads the clock and never touches
//! IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;

use super::biz::{self, GroupCall};
use super::conv::{Conv, Page};
use super::filter::Verdict;
use super::ids::{MAX_NODE, MsgIdGen};
use super::journal::{CursorRecord, DedupRecord, GroupRecord, Journal, JournalConfig, group_op};
use super::user::{Dedup, Inbox, Presence, Seen};
use super::{
    ConvKey, ImConfig, Input, Origin, Output, PartitionId, Reply, Request, partition_of_conv,
    partition_of_user,
};
use crate::idmap::IdMap;
use crate::jwt::JwtVerifier;
use crate::log::{self, Log, LogError, Record};
use crate::{code, link};

/// PULL `limit` when the request says 0.
pub const DEFAULT_PULL_LIMIT: usize = 50;
/// Most messages one PULL returns.
pub const MAX_PULL_LIMIT: usize = 200;
/// Most conversations one SYNC returns (also when the request says 0).
pub const MAX_SYNC_CONVS: usize = 1000;
/// Group ids stay below 2^53 so JavaScript clients hold them exactly.
pub const MAX_GROUP_ID: u64 = (1 << 53) - 1;
/// Candidate group ids tried per `group.create` (each hits this partition with probability
/// 1/partitions, so running out is vanishingly rare).
const GROUP_ID_TRIES: u32 = 1 << 16;

/// A group: its name and its conversation (whose readers are exactly its members).
#[derive(Debug)]
struct Group {
    name: String,
    conv: Conv,
    /// Its members as fan-out needs them; built at the first message after a membership change.
    fanout: Option<GroupFanout>,
}

impl Group {
    fn new(name: String, conv: Conv) -> Self {
        Self {
            name,
            conv,
            fanout: None,
        }
    }
}

/// A group's members laid out for fan-out, so a message costs no work per member here: the
/// recipient list a Deliver names, and the members of each user partition, shared by every
/// `GroupMsg` sent there.
#[derive(Debug)]
struct GroupFanout {
    /// Every member, ascending.
    recipients: Vec<u64>,
    /// (user partition, its members ascending), partitions ascending.
    by_partition: Vec<(PartitionId, Arc<[u64]>)>,
}

impl GroupFanout {
    fn new(conv: &Conv, partitions: u32) -> Self {
        let recipients: Vec<u64> = conv.readers().collect();
        let mut by_partition: BTreeMap<PartitionId, Vec<u64>> = BTreeMap::new();
        for &uid in &recipients {
            by_partition
                .entry(partition_of_user(uid, partitions))
                .or_default()
                .push(uid);
        }
        Self {
            recipients,
            by_partition: by_partition
                .into_iter()
                .map(|(p, members)| (p, Arc::from(members)))
                .collect(),
        }
    }
}

/// Counters of one partition's state, for the admin endpoint and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub single_convs: usize,
    pub groups: usize,
    pub messages: usize,
    pub inboxes: usize,
    pub dedup_entries: usize,
    pub online_users: usize,
    pub delivered: u64,
    pub undelivered: u64,
}

/// A refusal: result code and message.
type Refusal = (u32, &'static str);

const BAD_CONV_TYPE: Refusal = (
    code::BAD_REQUEST,
    "conv_type must be 1 (single) or 2 (group)",
);
const NO_GROUP: Refusal = (code::NOT_FOUND, "no such group");
const NOT_MEMBER: Refusal = (code::FORBIDDEN, "not a member of the group");
const NO_STORAGE: Refusal = (
    code::BACKEND_UNAVAILABLE,
    "storage unavailable (disk full or failing); retry later",
);

/// What a partition's recovery found beyond the log's own report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    pub log: log::Recovery,
    /// Records of a known kind whose payload did not decode (skipped).
    pub undecodable: u64,
    /// Records of a kind this version does not know (skipped).
    pub unknown_kind: u64,
}

/// One partition's state.
#[derive(Debug)]
pub struct Partition {
    id: PartitionId,
    config: ImConfig,
    /// `None` when `auth_secret` is empty: every token is refused.
    verifier: Option<JwtVerifier>,
    ids: MsgIdGen,
    singles: IdMap<(u64, u64), Conv>,
    groups: IdMap<u64, Group>,
    /// Last group-id counter used (see [`Partition::mint_group_id`]).
    group_counter: u64,
    inboxes: IdMap<u64, Inbox>,
    dedup: Dedup,
    presence: Presence,
    delivered: u64,
    undelivered: u64,
    /// The durable log (`None`: memory only, `backend.data_dir = ""`).
    journal: Option<Journal>,
}

impl Partition {
    /// Partition `id` of `config.partitions`.
    ///
    /// # Panics
    /// If `config.partitions` is not in `1..=1024` or `id >= config.partitions`: the gate's
    /// configuration validates both, so this is an invariant, not input.
    pub fn new(id: PartitionId, config: ImConfig) -> Self {
        assert!(
            (1..=MAX_NODE + 1).contains(&config.partitions) && id < config.partitions,
            "partition {id} of {}: partitions must be 1..=1024",
            config.partitions
        );
        let verifier =
            (!config.auth_secret.is_empty()).then(|| JwtVerifier::new(&config.auth_secret));
        Self {
            id,
            ids: MsgIdGen::new(id),
            verifier,
            singles: IdMap::default(),
            groups: IdMap::default(),
            group_counter: 0,
            inboxes: IdMap::default(),
            dedup: Dedup::new(config.dedup_window_ms),
            presence: Presence::default(),
            delivered: 0,
            undelivered: 0,
            journal: None,
            config,
        }
    }

    /// Partition `id` rebuilt from its log in `dir` (created when missing), journaling from
    /// then on. Inboxes and the message-derived dedup entries are not rebuilt here: they come
    /// from every partition's conversations (see `im::recovery`).
    pub fn open(
        id: PartitionId,
        config: ImConfig,
        dir: &std::path::Path,
        journal: &JournalConfig,
        now_ms: u64,
    ) -> Result<(Self, Replayed), LogError> {
        let mut partition = Self::new(id, config);
        let mut replayed = Replayed::default();
        let mut messages = Vec::new();
        let (log, recovery) = Log::open(dir, journal.log.clone(), |rec| {
            partition.replay(&rec, &mut messages, &mut replayed);
        })?;
        replayed.log = recovery;
        let last_id = messages.iter().map(|&(_, id)| id).max().unwrap_or(0);
        partition.ids = MsgIdGen::resume(id, last_id);
        partition.group_counter = partition
            .groups
            .keys()
            .map(|gid| gid / u64::from(partition.config.partitions))
            .max()
            .unwrap_or(0);
        partition.journal = Some(Journal::new(log, journal.retention, &messages, now_ms));
        Ok((partition, replayed))
    }

    /// Applies one journal record at open (see `journal` for what each kind means).
    fn replay(
        &mut self,
        rec: &Record<'_>,
        messages: &mut Vec<(u64, u64)>,
        replayed: &mut Replayed,
    ) {
        let ok = match rec.kind {
            log::kind::MESSAGE => link::Msg::decode(rec.payload).map(|msg| {
                messages.push((rec.seq, msg.msg_id));
                self.replay_message(msg);
            }),
            log::kind::MEMBERSHIP => {
                GroupRecord::decode(rec.payload).map(|g| self.replay_group(g, rec.seq))
            }
            log::kind::CURSOR => {
                CursorRecord::decode(rec.payload).map(|c| self.replay_cursor(&c, rec.seq))
            }
            log::kind::DEDUP => DedupRecord::decode(rec.payload).map(|d| {
                self.dedup.restore(
                    (d.from, d.client_msg_id),
                    d.msg_id,
                    d.server_time_ms,
                    d.recorded_at,
                );
            }),
            _ => {
                replayed.unknown_kind += 1;
                return;
            }
        };
        if ok.is_err() {
            replayed.undecodable += 1;
        }
    }

    /// A group known by id only (its create record was retired and its snapshot is later in
    /// the log): filled in by that snapshot.
    fn group_for_replay(&mut self, gid: u64) -> &mut Group {
        self.groups
            .entry(gid)
            .or_insert_with(|| Group::new(String::new(), Conv::default()))
    }

    fn replay_message(&mut self, msg: link::Msg) {
        let Some(key) = ConvKey::seen_by(msg.from, msg.conv_type, msg.to) else {
            return;
        };
        let conv = match key {
            ConvKey::Single { low, high } => self
                .singles
                .entry((low, high))
                .or_insert_with(|| Conv::with_readers([low, high])),
            ConvKey::Group(gid) => &mut self.group_for_replay(gid).conv,
        };
        // Ids grow within a partition; anything else is a duplicate from a damaged log.
        if msg.msg_id > conv.latest() {
            conv.push(msg);
        }
    }

    fn replay_group(&mut self, g: GroupRecord, seq: u64) {
        let group = self.group_for_replay(g.group_id);
        match g.op {
            group_op::CREATE => {
                group.name = g.name;
                group
                    .conv
                    .set_readers(g.members.into_iter().map(|u| (u, 0)));
                group.conv.state_since = Some(seq);
            }
            group_op::SNAPSHOT => {
                group.name = g.name;
                let cursors = g.cursors.into_iter().chain(std::iter::repeat(0));
                group.conv.set_readers(g.members.into_iter().zip(cursors));
                group.conv.state_since = Some(seq);
            }
            group_op::JOIN => {
                for uid in g.members {
                    group.conv.add_reader(uid);
                }
                group.conv.state_since.get_or_insert(seq);
            }
            group_op::LEAVE => {
                for uid in g.members {
                    group.conv.remove_reader(uid);
                }
                group.conv.state_since.get_or_insert(seq);
            }
            _ => {}
        }
    }

    fn replay_cursor(&mut self, c: &CursorRecord, seq: u64) {
        let conv = match c.conv() {
            Some(ConvKey::Single { low, high }) => self
                .singles
                .entry((low, high))
                .or_insert_with(|| Conv::with_readers([low, high])),
            Some(ConvKey::Group(gid)) => &mut self.group_for_replay(gid).conv,
            None => return,
        };
        conv.restore_cursor(c.uid, c.read_up_to);
        conv.state_since.get_or_insert(seq);
    }

    /// After every partition opened: each reader's state of each conversation here, for its
    /// user partition's inbox (`InboxSet` entries; `latest_msg_id` 0 are left out).
    pub fn recovered_inboxes(&self) -> Vec<link::UserConv> {
        let mut out = Vec::new();
        let singles = self
            .singles
            .iter()
            .map(|(&(low, high), c)| (ConvKey::Single { low, high }, c));
        let groups = self
            .groups
            .iter()
            .map(|(&gid, g)| (ConvKey::Group(gid), &g.conv));
        for (key, conv) in singles.chain(groups) {
            if conv.latest() == 0 {
                continue;
            }
            out.extend(conv.readers().map(|uid| user_conv(conv, key, uid)));
        }
        out
    }

    /// After every partition opened: the dedup entries the stored messages younger than the
    /// window imply (a crash between storing a message and recording its dedup entry must
    /// not let a resend store it twice), for the senders' partitions.
    pub fn recovered_dedup(&self, now_ms: u64) -> Vec<DedupRecord> {
        let since = now_ms.saturating_sub(self.config.dedup_window_ms);
        let singles = self.singles.values();
        let groups = self.groups.values().map(|g| &g.conv);
        singles
            .chain(groups)
            .flat_map(|conv| {
                let msgs = conv.messages();
                let start = msgs.partition_point(|m| m.server_time_ms < since);
                msgs[start..].iter()
            })
            .filter(|m| m.client_msg_id != 0)
            .map(|m| DedupRecord {
                from: m.from,
                client_msg_id: m.client_msg_id,
                msg_id: m.msg_id,
                server_time_ms: m.server_time_ms,
                recorded_at: m.server_time_ms,
            })
            .collect()
    }

    /// Recovery: applies inbox states computed by the conversations' partitions.
    pub fn restore_inboxes(&mut self, entries: Vec<link::UserConv>) {
        self.apply_inbox_set(entries);
    }

    /// Recovery: remembers dedup entries implied by stored messages.
    pub fn restore_dedup(&mut self, entries: impl IntoIterator<Item = DedupRecord>) {
        for d in entries {
            self.dedup.restore(
                (d.from, d.client_msg_id),
                d.msg_id,
                d.server_time_ms,
                d.recorded_at,
            );
        }
        self.dedup.sort_fifo();
    }

    /// Changes the journal's space limit (a quota; the tests' way to fill a disk).
    pub fn set_space_limit(&mut self, limit: Option<u64>) {
        if let Some(j) = &mut self.journal {
            j.set_space_limit(limit);
        }
    }

    /// The journal, when the partition is durable.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The journal's sync policy; `None` when memory only.
    pub fn sync_policy(&self) -> Option<log::Sync> {
        Some(self.journal.as_ref()?.log().sync_policy())
    }

    /// When the host must call [`Partition::sync_journal`]: `None` when nothing waits (or memory only,
    /// or `backend.sync = "os"`).
    pub fn sync_deadline(&self) -> Option<u64> {
        self.journal.as_ref()?.sync_deadline()
    }

    /// Makes every journal append durable (an `msync`; blocks the calling thread).
    pub fn sync_journal(&mut self) -> Result<(), LogError> {
        match &mut self.journal {
            Some(j) => j.sync(),
            None => Ok(()),
        }
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    pub fn config(&self) -> &ImConfig {
        &self.config
    }

    /// Counters of the state held; walks every conversation (O(conversations)), so for the
    /// admin endpoint, not the message path.
    pub fn stats(&self) -> PartitionStats {
        PartitionStats {
            single_convs: self.singles.len(),
            groups: self.groups.len(),
            messages: self.singles.values().map(Conv::len).sum::<usize>()
                + self.groups.values().map(|g| g.conv.len()).sum::<usize>(),
            inboxes: self.inboxes.len(),
            dedup_entries: self.dedup.len(),
            online_users: self.presence.online_users(),
            delivered: self.delivered,
            undelivered: self.undelivered,
        }
    }

    /// The name of group `gid`, if it lives here.
    pub fn group_name(&self, gid: u64) -> Option<&str> {
        self.groups.get(&gid).map(|g| g.name.as_str())
    }

    /// The online session ids of `uid` (a user of this partition), ascending.
    pub fn online_sessions(&self, uid: u64) -> impl Iterator<Item = u64> + '_ {
        self.presence.sessions(uid)
    }

    /// Handles one input at `now_ms` (unix milliseconds), appending what the host must do.
    pub fn handle(&mut self, input: Input, now_ms: u64, out: &mut Vec<Output>) {
        self.dedup.prune(now_ms);
        if self
            .journal
            .as_mut()
            .is_some_and(|j| j.retention_due(now_ms))
        {
            self.retain(now_ms, out);
        }
        match input {
            Input::Request { origin, request } => self.request(origin, request, now_ms, out),
            Input::Presence(p) => self.presence.apply(&p),
            Input::Report(r) => {
                self.delivered = self.delivered.saturating_add(r.delivered.len() as u64);
                self.undelivered = self.undelivered.saturating_add(r.undelivered.len() as u64);
            }
            Input::Store { origin, send } => {
                let result = self.store(&send, now_ms, out);
                out.push(Output::ToPartition {
                    partition: partition_of_user(send.from, self.config.partitions),
                    input: Input::Stored {
                        origin,
                        from: send.from,
                        client_msg_id: send.client_msg_id,
                        result,
                    },
                });
            }
            Input::Stored {
                origin,
                from,
                client_msg_id,
                result,
            } => {
                let stored =
                    (result.code == code::OK).then_some((result.msg_id, result.server_time_ms));
                self.dedup.finish((from, client_msg_id), stored, now_ms);
                if let (Some((msg_id, server_time_ms)), Some(journal)) = (stored, &mut self.journal)
                {
                    // Best effort: a lost DEDUP record is rebuilt from the stored message at the
                    // next start (within the window), so the answer stays OK.
                    let record = DedupRecord {
                        from,
                        client_msg_id,
                        msg_id,
                        server_time_ms,
                        recorded_at: now_ms,
                    };
                    let _ = journal.append(log::kind::DEDUP, now_ms, &record);
                }
                out.push(Output::Reply {
                    origin,
                    reply: Reply::Send(result),
                });
            }
            Input::GroupMsg {
                group_id,
                msg_id,
                from,
                members,
                notify,
                exclude_session,
            } => {
                let key = (crate::conv::GROUP, group_id);
                let mut updates = Vec::with_capacity(if notify { members.len() } else { 0 });
                for &uid in members.iter() {
                    let unread = u32::from(uid != from);
                    let state = self
                        .inboxes
                        .entry(uid)
                        .or_default()
                        .bump(key, msg_id, unread);
                    if notify {
                        updates.push(link::UserConv {
                            uid,
                            conv: Some(state),
                        });
                    }
                }
                if !updates.is_empty() {
                    out.push(Output::Notify(link::NotifyUsers {
                        updates,
                        exclude_session,
                    }));
                }
            }
            Input::InboxSet { entries } => self.apply_inbox_set(entries),
        }
    }

    /// A run of group messages of `group_id` to the same `members`, without NOTIFY, applied at
    /// once: `msgs` are their (msg_id, from) in order. The inboxes end as if each message's
    /// `GroupMsg` had been handled in turn (latest = the last msg_id, one more unread per
    /// message a member did not send, the group newest), but each member's inbox is reached
    /// once per run instead of once per message: the host holds these bumps for a loop turn
    /// (`backend::embedded`), and a thousand members times hundreds of messages per turn is
    /// what a busy group costs here.
    pub fn bump_group_run(&mut self, group_id: u64, members: &[u64], msgs: &[(u64, u64)]) {
        let Some(&(latest, _)) = msgs.last() else {
            return;
        };
        // Messages per sender; a member's unread grows by the run less its own messages.
        let mut senders: Vec<(u64, u32)> = Vec::new();
        for &(_, from) in msgs {
            match senders.iter_mut().find(|(uid, _)| *uid == from) {
                Some((_, sent)) => *sent += 1,
                None => senders.push((from, 1)),
            }
        }
        let run = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
        let key = (crate::conv::GROUP, group_id);
        for &uid in members {
            let own = senders
                .iter()
                .find(|(from, _)| *from == uid)
                .map_or(0, |(_, sent)| *sent);
            self.inboxes
                .entry(uid)
                .or_default()
                .bump(key, latest, run - own);
        }
    }

    fn apply_inbox_set(&mut self, entries: Vec<link::UserConv>) {
        for entry in entries {
            let Some(state) = entry.conv else { continue };
            let inbox = self.inboxes.entry(entry.uid).or_default();
            inbox.set(state);
            if inbox.is_empty() {
                self.inboxes.remove(&entry.uid);
            }
        }
    }

    /// Retention (checked at most every `RETENTION_CHECK_MS`): re-appends the live state the
    /// retiring segments hold (group snapshots, cursors, dedup entries inside the window), drops
    /// those segments, then forgets their messages and sends the readers their new states.
    /// A failed append or removal leaves everything in place for the next check.
    fn retain(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let Self {
            journal: Some(journal),
            groups,
            singles,
            dedup,
            ..
        } = self
        else {
            return;
        };
        let Some((cut, newest_before)) = journal.retention_cut(now_ms) else {
            return;
        };
        for (&gid, group) in groups.iter_mut() {
            if group.conv.state_since.is_none_or(|s| s >= cut) {
                continue;
            }
            let (members, cursors) = group.conv.cursors().unzip();
            let snapshot = GroupRecord {
                op: group_op::SNAPSHOT,
                group_id: gid,
                name: group.name.clone(),
                members,
                cursors,
            };
            match journal.append(log::kind::MEMBERSHIP, now_ms, &snapshot) {
                Ok(seq) => group.conv.state_since = Some(seq),
                Err(_) => return,
            }
        }
        for (&(low, high), conv) in singles.iter_mut() {
            if conv.state_since.is_none_or(|s| s >= cut) {
                continue;
            }
            let key = ConvKey::Single { low, high };
            let mut first = None;
            let moved: Vec<(u64, u64)> = conv.cursors().filter(|&(_, c)| c > 0).collect();
            for (uid, cursor) in moved {
                match journal.append(
                    log::kind::CURSOR,
                    now_ms,
                    &CursorRecord::new(key, uid, cursor),
                ) {
                    Ok(seq) => {
                        first.get_or_insert(seq);
                    }
                    Err(_) => return,
                }
            }
            conv.state_since = first;
        }
        let live: Vec<DedupRecord> = dedup
            .stored_until(newest_before, now_ms)
            .map(
                |((from, client_msg_id), msg_id, server_time_ms, recorded_at)| DedupRecord {
                    from,
                    client_msg_id,
                    msg_id,
                    server_time_ms,
                    recorded_at,
                },
            )
            .collect();
        for d in &live {
            if journal.append(log::kind::DEDUP, now_ms, d).is_err() {
                return;
            }
        }
        let max_id = match journal.drop_before(cut) {
            Ok(max_id) => max_id,
            Err(err) => {
                tracing::error!(%err, "journal retention failed");
                return;
            }
        };
        if max_id == 0 {
            return;
        }
        let mut states = Vec::new();
        singles.retain(|&(low, high), conv| {
            if conv.drop_through(max_id) {
                let key = ConvKey::Single { low, high };
                states.extend(conv.readers().map(|uid| user_conv(conv, key, uid)));
            }
            conv.len() > 0 || conv.state_since.is_some()
        });
        for (&gid, group) in groups.iter_mut() {
            if group.conv.drop_through(max_id) {
                let key = ConvKey::Group(gid);
                states.extend(
                    group
                        .conv
                        .readers()
                        .map(|uid| user_conv(&group.conv, key, uid)),
                );
            }
        }
        if !states.is_empty() {
            inbox_set(states, self.config.partitions, out);
        }
    }

    fn request(&mut self, origin: Origin, request: Request, now_ms: u64, out: &mut Vec<Output>) {
        let reply = match request {
            Request::Login(login) => Reply::Login(self.login(&login, now_ms)),
            Request::Send(send) => match self.send(origin, send, now_ms, out) {
                Some(result) => Reply::Send(result),
                None => return, // forwarded to the conversation; answered on Stored
            },
            Request::Pull(pull) => Reply::Pull(self.pull(&pull)),
            Request::Read(read) => Reply::Read(self.read(&read, now_ms, out)),
            Request::Sync(sync) => Reply::Sync(self.sync(&sync)),
            Request::Biz(call) => Reply::Biz(self.biz(&call, now_ms, out)),
        };
        out.push(Output::Reply { origin, reply });
    }

    // ---- user partition ---------------------------------------------------------------------

    fn login(&self, login: &link::Login, now_ms: u64) -> link::LoginResult {
        let (code, message) = if login.uid == 0 {
            (code::BAD_REQUEST, "uid 0 is invalid".to_owned())
        } else {
            match &self.verifier {
                None => (
                    code::UNAUTHENTICATED,
                    "backend auth secret not configured".to_owned(),
                ),
                Some(v) => match v.verify(login.uid, &login.token, now_ms / 1000) {
                    Ok(()) => (code::OK, String::new()),
                    Err(e) => (e.code(), e.to_string()),
                },
            }
        };
        link::LoginResult { code, message }
    }

    /// SEND at user(from): `Some(answer)` now, or `None` after forwarding a Store.
    fn send(
        &mut self,
        origin: Origin,
        send: link::Send,
        now_ms: u64,
        out: &mut Vec<Output>,
    ) -> Option<link::SendResult> {
        let conv = match check_send(&send) {
            Ok(conv) => conv,
            Err((code, message)) => return Some(send_refused(code, message)),
        };
        let key = (send.from, send.client_msg_id);
        match self.dedup.check(key, now_ms) {
            Seen::Stored {
                msg_id,
                server_time_ms,
            } => Some(link::SendResult {
                code: code::OK,
                msg_id,
                server_time_ms,
                message: String::new(),
            }),
            Seen::Pending => Some(send_refused(
                code::BACKEND_UNAVAILABLE,
                "retry: this client_msg_id is being stored",
            )),
            Seen::New => {
                let mut send = send;
                if let Some(filter) = &self.config.filter {
                    match filter.check(&send.body) {
                        Verdict::Clean => {}
                        Verdict::Reject => {
                            return Some(send_refused(
                                code::CONTENT_REJECTED,
                                "refused by the content filter",
                            ));
                        }
                        Verdict::Masked(body) => send.body = body.into(),
                    }
                }
                self.dedup.mark_pending(key);
                out.push(Output::ToPartition {
                    partition: partition_of_conv(conv, self.config.partitions),
                    input: Input::Store { origin, send },
                });
                None
            }
        }
    }

    fn sync(&self, sync: &link::Sync) -> link::SyncResult {
        let max_convs = match sync.max_convs {
            0 => MAX_SYNC_CONVS,
            n => (n as usize).min(MAX_SYNC_CONVS),
        };
        let Some(inbox) = self.inboxes.get(&sync.uid) else {
            return link::SyncResult::default();
        };
        let (convs, has_more) = inbox.newest(max_convs, sync.max_bytes as usize);
        link::SyncResult {
            code: code::OK,
            convs,
            total_unread: u32::try_from(inbox.total_unread()).unwrap_or(u32::MAX),
            has_more,
        }
    }

    // ---- conversation partition -------------------------------------------------------------

    /// Store at the conversation's partition: stores and fans out, or refuses.
    fn store(&mut self, send: &link::Send, now_ms: u64, out: &mut Vec<Output>) -> link::SendResult {
        let key = match check_send(send) {
            Ok(key) => key,
            Err((code, message)) => return send_refused(code, message),
        };
        let conv = match key {
            ConvKey::Single { low, high } => self
                .singles
                .entry((low, high))
                .or_insert_with(|| Conv::with_readers([low, high])),
            ConvKey::Group(gid) => match self.groups.get_mut(&gid) {
                None => return send_refused(NO_GROUP.0, NO_GROUP.1),
                Some(g) if !g.conv.is_reader(send.from) => {
                    return send_refused(NOT_MEMBER.0, NOT_MEMBER.1);
                }
                Some(g) => &mut g.conv,
            },
        };
        let msg = link::Msg {
            msg_id: self.ids.next(now_ms),
            conv_type: send.conv_type,
            from: send.from,
            to: send.to,
            content_type: send.content_type,
            body: send.body.clone(),
            server_time_ms: now_ms,
            client_msg_id: send.client_msg_id,
        };
        if let Some(journal) = &mut self.journal
            && journal.append_message(now_ms, &msg).is_err()
        {
            return send_refused(NO_STORAGE.0, NO_STORAGE.1);
        }
        conv.push(msg.clone());
        let result = link::SendResult {
            code: code::OK,
            msg_id: msg.msg_id,
            server_time_ms: now_ms,
            message: String::new(),
        };

        let exclude_session = send.session_id;
        let partitions = self.config.partitions;
        match key {
            ConvKey::Single { .. } => {
                let states: Vec<link::UserConv> = conv
                    .readers()
                    .map(|uid| user_conv(conv, key, uid))
                    .collect();
                let mut recipients = vec![msg.to, msg.from];
                recipients.dedup();
                out.push(Output::Deliver(link::Deliver {
                    msg: Some(msg),
                    recipients,
                    exclude_session,
                }));
                inbox_set(states, partitions, out);
            }
            ConvKey::Group(group_id) => {
                // Read diffusion: the message is stored once; each member's inbox is bumped
                // (latest, +1 unread) by its own partition, and a NOTIFY, when the group is
                // above the push threshold, leaves from there with the member's new state.
                let Some(group) = self.groups.get_mut(&group_id) else {
                    return result; // Invariant: `conv` was borrowed from this group above.
                };
                let fanout = group
                    .fanout
                    .get_or_insert_with(|| GroupFanout::new(&group.conv, partitions));
                let notify = fanout.recipients.len() > self.config.push_threshold as usize;
                let (msg_id, from) = (msg.msg_id, msg.from);
                if !notify {
                    out.push(Output::Deliver(link::Deliver {
                        msg: Some(msg),
                        recipients: fanout.recipients.clone(),
                        exclude_session,
                    }));
                }
                for (partition, members) in &fanout.by_partition {
                    out.push(Output::ToPartition {
                        partition: *partition,
                        input: Input::GroupMsg {
                            group_id,
                            msg_id,
                            from,
                            members: Arc::clone(members),
                            notify,
                            exclude_session,
                        },
                    });
                }
            }
        }
        result
    }

    /// Group membership check for PULL and READ; single chats are open to both parties by
    /// construction (the key is built from the caller's uid).
    fn access(&self, key: ConvKey, uid: u64) -> Result<(), Refusal> {
        if let ConvKey::Group(gid) = key {
            match self.groups.get(&gid) {
                None => return Err(NO_GROUP),
                Some(g) if !g.conv.is_reader(uid) => return Err(NOT_MEMBER),
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn conv(&self, key: ConvKey) -> Option<&Conv> {
        match key {
            ConvKey::Single { low, high } => self.singles.get(&(low, high)),
            ConvKey::Group(gid) => self.groups.get(&gid).map(|g| &g.conv),
        }
    }

    fn pull(&self, pull: &link::Pull) -> link::PullResult {
        let refused = |(code, message): Refusal| link::PullResult {
            code,
            message: message.to_owned(),
            ..Default::default()
        };
        let Some(key) = ConvKey::seen_by(pull.uid, pull.conv_type, pull.conv_id) else {
            return refused(BAD_CONV_TYPE);
        };
        if let Err(refusal) = self.access(key, pull.uid) {
            return refused(refusal);
        }
        let Some(conv) = self.conv(key) else {
            return link::PullResult::default(); // a single chat with no messages yet
        };
        let limit = match pull.limit {
            0 => DEFAULT_PULL_LIMIT,
            n => (n as usize).min(MAX_PULL_LIMIT),
        };
        let page = match pull.before_msg_id {
            0 => Page::After(pull.after_msg_id),
            before => Page::Before(before),
        };
        let (msgs, has_more) = conv.page(page, limit, pull.max_bytes as usize);
        link::PullResult {
            code: code::OK,
            msgs,
            has_more,
            message: String::new(),
        }
    }

    fn read(&mut self, read: &link::Read, now_ms: u64, out: &mut Vec<Output>) -> link::ReadResult {
        let refused = |(code, message): Refusal| link::ReadResult {
            code,
            message: message.to_owned(),
        };
        let Some(key) = ConvKey::seen_by(read.uid, read.conv_type, read.conv_id) else {
            return refused(BAD_CONV_TYPE);
        };
        if let Err(refusal) = self.access(key, read.uid) {
            return refused(refusal);
        }
        let partitions = self.config.partitions;
        let Self {
            singles,
            groups,
            journal,
            ..
        } = self;
        let conv = match key {
            ConvKey::Single { low, high } => singles.get_mut(&(low, high)),
            ConvKey::Group(gid) => groups.get_mut(&gid).map(|g| &mut g.conv),
        };
        let Some(conv) = conv else {
            return link::ReadResult::default(); // nothing to read yet
        };
        let Some(applied) = conv.read_target(read.uid, read.read_up_to) else {
            return link::ReadResult::default(); // moved nothing: OK, nothing sent
        };
        if let Some(journal) = journal {
            match journal.append(
                log::kind::CURSOR,
                now_ms,
                &CursorRecord::new(key, read.uid, applied),
            ) {
                Ok(seq) => {
                    conv.state_since.get_or_insert(seq);
                }
                Err(_) => return refused(NO_STORAGE),
            }
        }
        conv.read(read.uid, applied);
        inbox_set(vec![user_conv(conv, key, read.uid)], partitions, out);
        let recipients = match key {
            ConvKey::Single { .. } if read.conv_id != read.uid => vec![read.conv_id, read.uid],
            _ => vec![read.uid],
        };
        out.push(Output::ReadReceipt(link::ReadReceiptOut {
            conv_type: read.conv_type,
            reader: read.uid,
            peer: read.conv_id,
            read_up_to: applied,
            recipients,
            exclude_session: read.session_id,
        }));
        link::ReadResult::default()
    }

    // ---- BIZ ----------------------------------------------------------------------------------

    fn biz(&mut self, call: &link::Biz, now_ms: u64, out: &mut Vec<Output>) -> link::BizResult {
        if call.uid == 0 {
            return biz::refuse(code::BAD_REQUEST, "uid 0 is invalid");
        }
        let call_uid = call.uid;
        match biz::parse(call) {
            Err(e) => biz::refuse(e.code(), e.to_string()),
            Ok(GroupCall::Create { name, members }) => {
                let Some(group_id) = self.mint_group_id() else {
                    return biz::refuse(code::INTERNAL, "no group id left in this partition");
                };
                let mut conv = Conv::with_readers(members.into_iter().chain([call_uid]));
                let record = GroupRecord {
                    op: group_op::CREATE,
                    group_id,
                    name: name.clone(),
                    members: conv.readers().collect(),
                    cursors: Vec::new(),
                };
                match self.journal_group(&record, now_ms) {
                    Ok(seq) => conv.state_since = seq,
                    Err(()) => return biz::refuse(NO_STORAGE.0, NO_STORAGE.1),
                }
                self.groups.insert(group_id, Group::new(name, conv));
                biz::ok(&biz::Created { group_id })
            }
            Ok(GroupCall::Join(gid)) => {
                let Some(group) = self.groups.get(&gid) else {
                    return biz::refuse(NO_GROUP.0, NO_GROUP.1);
                };
                if !group.conv.is_reader(call_uid)
                    && self
                        .journal_change(group_op::JOIN, gid, call_uid, now_ms)
                        .is_err()
                {
                    return biz::refuse(NO_STORAGE.0, NO_STORAGE.1);
                }
                let Some(group) = self.groups.get_mut(&gid) else {
                    return biz::refuse(NO_GROUP.0, NO_GROUP.1);
                };
                let joined = group.conv.add_reader(call_uid);
                if joined {
                    group.fanout = None;
                }
                if joined && group.conv.latest() != 0 {
                    let state = user_conv(&group.conv, ConvKey::Group(gid), call_uid);
                    inbox_set(vec![state], self.config.partitions, out);
                }
                biz::ok(&biz::Empty {})
            }
            Ok(GroupCall::Leave(gid)) => {
                let Some(group) = self.groups.get(&gid) else {
                    return biz::refuse(NO_GROUP.0, NO_GROUP.1);
                };
                if group.conv.is_reader(call_uid)
                    && self
                        .journal_change(group_op::LEAVE, gid, call_uid, now_ms)
                        .is_err()
                {
                    return biz::refuse(NO_STORAGE.0, NO_STORAGE.1);
                }
                let Some(group) = self.groups.get_mut(&gid) else {
                    return biz::refuse(NO_GROUP.0, NO_GROUP.1);
                };
                let left = group.conv.remove_reader(call_uid);
                if left {
                    group.fanout = None;
                }
                if left && group.conv.latest() != 0 {
                    // latest_msg_id 0: drop the group from the user's inbox.
                    let gone = link::UserConv {
                        uid: call_uid,
                        conv: Some(link::ConvState {
                            conv_type: crate::conv::GROUP,
                            conv_id: gid,
                            latest_msg_id: 0,
                            unread: 0,
                        }),
                    };
                    inbox_set(vec![gone], self.config.partitions, out);
                }
                biz::ok(&biz::Empty {})
            }
            Ok(GroupCall::Members(gid)) => match self.groups.get(&gid) {
                None => biz::refuse(NO_GROUP.0, NO_GROUP.1),
                Some(group) => biz::ok(&biz::Members {
                    members: group.conv.readers().collect(),
                }),
            },
        }
    }

    /// Journals a group record: `Ok(Some(seq))`, `Ok(None)` when memory only, `Err` when the
    /// append failed (the caller refuses and changes nothing).
    fn journal_group(&mut self, record: &GroupRecord, now_ms: u64) -> Result<Option<u64>, ()> {
        match &mut self.journal {
            None => Ok(None),
            Some(j) => j
                .append(log::kind::MEMBERSHIP, now_ms, record)
                .map(Some)
                .map_err(|_| ()),
        }
    }

    /// Journals one member joining or leaving `gid` and notes it in the group's state.
    fn journal_change(&mut self, op: u32, gid: u64, uid: u64, now_ms: u64) -> Result<(), ()> {
        let record = GroupRecord {
            op,
            group_id: gid,
            members: vec![uid],
            ..Default::default()
        };
        if let Some(seq) = self.journal_group(&record, now_ms)?
            && let Some(group) = self.groups.get_mut(&gid)
        {
            group.conv.state_since.get_or_insert(seq);
        }
        Ok(())
    }

    /// A new group id that lives in this partition: `counter * partitions + id` for the next
    /// counter whose id hashes here (`partition_of_conv`), so ids are non-zero, unique across
    /// partitions (the remainder is the partition) and below 2^53. `None` when exhausted.
    fn mint_group_id(&mut self) -> Option<u64> {
        let partitions = u64::from(self.config.partitions);
        for _ in 0..GROUP_ID_TRIES {
            self.group_counter += 1;
            let gid = self
                .group_counter
                .checked_mul(partitions)?
                .checked_add(u64::from(self.id))?;
            if gid > MAX_GROUP_ID {
                return None;
            }
            if partition_of_conv(ConvKey::Group(gid), self.config.partitions) == self.id
                && !self.groups.contains_key(&gid)
            {
                return Some(gid);
            }
        }
        None
    }
}

/// Validates a SEND (at the user partition, and again at the conversation partition) and names
/// its conversation.
fn check_send(send: &link::Send) -> Result<ConvKey, Refusal> {
    if send.client_msg_id == 0 {
        return Err((code::BAD_REQUEST, "client_msg_id must be non-zero"));
    }
    if send.from == 0 {
        return Err((code::BAD_REQUEST, "from must be a uid"));
    }
    if send.to == 0 {
        return Err((code::BAD_REQUEST, "to must be a uid or a group id"));
    }
    ConvKey::seen_by(send.from, send.conv_type, send.to).ok_or(BAD_CONV_TYPE)
}

fn send_refused(code: u32, message: &str) -> link::SendResult {
    link::SendResult {
        code,
        message: message.to_owned(),
        ..Default::default()
    }
}

/// `conv` as `uid` sees it: conv_id is the other party (single) or the group id.
fn user_conv(conv: &Conv, key: ConvKey, uid: u64) -> link::UserConv {
    let (conv_type, conv_id) = match key {
        ConvKey::Single { low, high } => (crate::conv::SINGLE, if uid == low { high } else { low }),
        ConvKey::Group(gid) => (crate::conv::GROUP, gid),
    };
    link::UserConv {
        uid,
        conv: Some(link::ConvState {
            conv_type,
            conv_id,
            latest_msg_id: conv.latest(),
            unread: conv.unread(uid),
        }),
    }
}

/// One `InboxSet` per user partition, entries in uid order.
fn inbox_set(entries: Vec<link::UserConv>, partitions: u32, out: &mut Vec<Output>) {
    if let [entry] = entries.as_slice() {
        // The usual case (a READ): no grouping to do.
        out.push(Output::ToPartition {
            partition: partition_of_user(entry.uid, partitions),
            input: Input::InboxSet { entries },
        });
        return;
    }
    let mut by_partition: BTreeMap<PartitionId, Vec<link::UserConv>> = BTreeMap::new();
    for entry in entries {
        by_partition
            .entry(partition_of_user(entry.uid, partitions))
            .or_default()
            .push(entry);
    }
    out.extend(
        by_partition
            .into_iter()
            .map(|(partition, entries)| Output::ToPartition {
                partition,
                input: Input::InboxSet { entries },
            }),
    );
}
