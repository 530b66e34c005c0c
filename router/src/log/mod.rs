//! A segmented append-only log on memmap2: the durable foundation of the reference backend
//! (issue 7). One [`Log`] per backend partition owns one directory; nothing else writes there
//! and no lock is shared. The reference backend's use of it (record encodings, replay,
//! retention of live state) is `crate::im::journal`.
//!
//! **Owns**: the directory's segment files, the mapping of the active (last) segment, the next
//! sequence number and the per-segment metadata retention decides on. **Never**: interprets a
//! payload (the backend encodes its messages, memberships, cursors and dedup entries and picks a
//! [`kind`]), reads the clock (`ts_ms` and `now_ms` are passed in), spawns or locks.
//!
//! Layout: `record` (the format and the recovery scanner, sans-IO, on byte slices), `segment`
//! (one file: reserve, map, trim — the thin IO part), this module (the log: open and replay,
//! append, sync, roll, retention), `tests` (files in temp dirs, a randomized model test).
//!
//! # On-disk format (version 1, little-endian)
//!
//! A directory of segments named `{base_seq:020}.log`, where `base_seq` is the sequence number
//! of the segment's first record (the next sequence number when it was created). Sequence
//! numbers start at 1 and grow by one per append over the whole log, never reused.
//!
//! Segment: a 16-byte header, then records back to back, each starting at a multiple of 8,
//! then zeros up to the file's length (space reserved with `posix_fallocate` at creation;
//! sealed segments are trimmed to their data).
//!
//! | offset | size | segment header |
//! |-------:|-----:|----------------|
//! | 0      | 8    | magic `b"IMGLOG\0\x01"` (the last byte is the format version) |
//! | 8      | 8    | `base_seq` (u64), equal to the name |
//!
//! | offset | size | record header (32 bytes) |
//! |-------:|-----:|--------------------------|
//! | 0      | 8    | `seq` (u64) |
//! | 8      | 8    | `ts_ms` (u64): the caller's time at append, for age-based retention |
//! | 16     | 4    | `len` (u32): payload bytes |
//! | 20     | 1    | `kind` (u8, never 0; see [`kind`]) |
//! | 21     | 3    | reserved, written 0, ignored on read |
//! | 24     | 4    | CRC32 (IEEE, `crc32fast`) of the payload |
//! | 28     | 4    | CRC32 of header bytes 0..28 |
//! | 32     | len  | payload, then zero padding to a multiple of 8 |
//!
//! # Recovery
//!
//! [`Log::open`] replays every segment in name order and hands each good record to a callback,
//! in sequence order. A record is *good* when its header checksum holds, its payload fits, its
//! payload checksum holds and its `seq` is the one expected: one past the last good record (or
//! the segment's base, when larger: retention leaves gaps). Then:
//! - **Tail**: everything after the last good record of a segment — a partial record, a header
//!   whose payload never landed, zero-filled preallocated space — is the tail. Non-zero bytes
//!   there are a *torn tail*: reported ([`TornTail`]) and truncated (zeroed in place), so later
//!   appends never sit before stale bytes.
//! - **Corruption**: bad bytes *followed by* a good record are reported ([`Corruption`]) and
//!   skipped; the rest loads. Resynchronisation: a header whose own checksum holds is trusted
//!   for its length, so a bad payload is skipped exactly. A header that fails its checksum (or
//!   is zeros) says nothing, so the scanner tries each following 8-aligned offset (jumping over
//!   zero runs) for a record with both checksums good and a plausible `seq`: at least the one
//!   expected and ahead of it by at most the skipped bytes / 32 (no record is shorter).
//!   The bound keeps a record-shaped payload from posing as a resync point with a far-off seq.
//! - The next sequence number is one past the last good record (or the active segment's base,
//!   if later): ids keep growing after a restart.
//!
//! # Sync policy
//!
//! [`Log::append`] copies the record into the mapping and returns: it is then in the page
//! cache and survives a *process* crash (SIGKILL, panic), not a power loss or kernel crash.
//! [`Log::sync`] `msync`s the appended range (data reaches the device; the file's size and
//! directory entry were made durable when the segment was created, under `Always` and
//! `Interval`). [`Sync`] says when the owner calls it; [`Log::sync_deadline`] tells it:
//! - `Always`: after every batch of appends, before acknowledging any of them (group commit:
//!   one `msync` per batch). An acknowledged record survives a power loss.
//! - `Interval(ms)`: at the latest `ms` after the first unsynced append. A power loss loses at
//!   most the last `ms` of acknowledged records; a process crash loses nothing.
//! - `Os`: never explicitly; the kernel writes back when it likes. Survives a process crash,
//!   not a power loss.
//!
//! # Disk trouble
//!
//! Space is reserved when a segment is created (`posix_fallocate` of the full segment size), so
//! a store into the mapping never meets a full disk (which would be a SIGBUS). A failure to
//! create, reserve, map or sync returns [`LogError::Io`] with the operation; the log is left as
//! it was (a half-created segment file is removed) and the next append tries again, so writes
//! resume when space returns. [`Options::space_limit`] caps the bytes the log may reserve: a
//! quota, and the fault-injection hook the tests use to simulate ENOSPC without root.
//!
//! # Retention
//!
//! [`Log::retain`] drops whole sealed segments (never the active one), oldest first, that are
//! older than `max_age_ms` (by their newest record's `ts_ms`) or while the log is above
//! `max_bytes` — except those the caller's predicate keeps (segments holding cursors in use or
//! dedup entries younger than 24 h). Dropping a middle segment leaves a gap in the sequence
//! numbers; replay does not mind.

mod record;
mod segment;
#[cfg(test)]
mod tests;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use record::{ALIGN, RECORD_HEADER, Record, SEGMENT_HEADER, record_len};
use segment::Segment;

/// Record kinds the reference backend will write (the log itself only requires `kind != 0`).
/// 1..=63 are reserved for the reference backend; 64..=255 are free for other users.
pub mod kind {
    /// A stored message (single chat or group), with its msg_id and conversation.
    pub const MESSAGE: u8 = 1;
    /// A group membership change (create, join, leave).
    pub const MEMBERSHIP: u8 = 2;
    /// A delivered or read cursor moving forward.
    pub const CURSOR: u8 = 3;
    /// A sender-keyed dedup entry `(uid, client_msg_id) -> msg_id`.
    pub const DEDUP: u8 = 4;
    /// A snapshot of live state re-appended so older segments can be retired.
    pub const CHECKPOINT: u8 = 5;
}

/// When the owner of a [`Log`] calls [`Log::sync`] (see the module doc for what each promises).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// After every batch of appends, before acknowledging: survives a power loss.
    Always,
    /// At most this many milliseconds after the first unsynced append.
    Interval(u64),
    /// Never explicitly: survives a process crash, not a power loss.
    Os,
}

/// How a log is opened. Defaults: 64 MiB segments, `Sync::Os`, no space limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Bytes reserved per segment; a segment rolls when the next record does not fit.
    pub segment_bytes: u64,
    pub sync: Sync,
    /// At most this many bytes of segment files (a reservation beyond fails with ENOSPC).
    pub space_limit: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
            sync: Sync::Os,
            space_limit: None,
        }
    }
}

/// Smallest allowed [`Options::segment_bytes`].
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// What [`Log::retain`] may drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the log's files at or below this many bytes (the active segment always stays).
    pub max_bytes: Option<u64>,
    /// Drop segments whose newest record is older than this.
    pub max_age_ms: Option<u64>,
}

/// One segment as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The sequence number it was created for; also its file name.
    pub base_seq: u64,
    /// Good records in it.
    pub records: u64,
    /// The last good record's seq, `None` when it holds none.
    pub last_seq: Option<u64>,
    /// The smallest and largest `ts_ms` of its records (0 when it holds none).
    pub oldest_ms: u64,
    pub newest_ms: u64,
    /// Bytes of its file.
    pub bytes: u64,
}

impl SegmentInfo {
    fn empty(base_seq: u64, bytes: u64) -> Self {
        Self {
            base_seq,
            records: 0,
            last_seq: None,
            oldest_ms: 0,
            newest_ms: 0,
            bytes,
        }
    }

    fn note(&mut self, rec: &Record<'_>) {
        if self.records == 0 {
            self.oldest_ms = rec.ts_ms;
            self.newest_ms = rec.ts_ms;
        }
        self.oldest_ms = self.oldest_ms.min(rec.ts_ms);
        self.newest_ms = self.newest_ms.max(rec.ts_ms);
        self.records += 1;
        self.last_seq = Some(rec.seq);
    }
}

/// Bad bytes skipped at open: they were followed by good records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    /// The segment's `base_seq`.
    pub segment: u64,
    /// Byte offset in the segment file, and length of the skipped range.
    pub offset: u64,
    pub len: u64,
    /// The seq the first bad record's header named, when that header's checksum held.
    pub seq: Option<u64>,
}

/// A torn tail truncated at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    /// Where the good data ended, and how many bytes after it were not zero.
    pub offset: u64,
    pub len: u64,
}

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// Good records replayed.
    pub records: u64,
    pub corrupt: Vec<Corruption>,
    pub torn: Vec<TornTail>,
}

/// The log's one error type. `Io` leaves the log consistent and usable.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("record of {len} bytes cannot fit a segment (at most {max})")]
    TooLarge { len: usize, max: usize },
    #[error("record kind 0 is reserved")]
    ZeroKind,
    #[error("segment_bytes {got} is below {min} or above 4 GiB")]
    SegmentBytes { got: u64, min: u64 },
}

impl LogError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| Self::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this is a full disk (or the space limit).
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}

/// A segmented append-only log over one directory. See the module doc.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    opts: Options,
    /// Sealed segments, oldest first.
    sealed: Vec<SegmentInfo>,
    active: Segment,
    active_info: SegmentInfo,
    next_seq: u64,
    /// `ts_ms` of the first append not yet synced.
    dirty_since: Option<u64>,
}

fn segment_name(base_seq: u64) -> String {
    format!("{base_seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Log {
    /// Opens (creating if needed) the log in `dir`, replaying every good record into `replay` in
    /// sequence order; see "Recovery" in the module doc.
    pub fn open(
        dir: impl AsRef<Path>,
        opts: Options,
        mut replay: impl FnMut(Record<'_>),
    ) -> Result<(Self, Recovery), LogError> {
        let dir = dir.as_ref().to_path_buf();
        if !(MIN_SEGMENT_BYTES..=u64::from(u32::MAX)).contains(&opts.segment_bytes) {
            return Err(LogError::SegmentBytes {
                got: opts.segment_bytes,
                min: MIN_SEGMENT_BYTES,
            });
        }
        fs::create_dir_all(&dir).map_err(LogError::io("create dir", &dir))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(&dir).map_err(LogError::io("list", &dir))? {
            let entry = entry.map_err(LogError::io("list", &dir))?;
            if let Some(base) = entry.file_name().to_str().and_then(parse_segment_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();

        let mut recovery = Recovery {
            segments: bases.len(),
            ..Default::default()
        };
        let mut sealed = Vec::new();
        let mut next_seq = 1u64;
        let mut active = None;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment_name(base));
            let is_last = i + 1 == bases.len();
            // The active segment grows back to a full reservation, within the space limit.
            let others: u64 = sealed.iter().map(|s: &SegmentInfo| s.bytes).sum();
            let grow = is_last
                && opts
                    .space_limit
                    .is_none_or(|limit| others + opts.segment_bytes <= limit);
            let mut seg = Segment::open(&path, grow.then_some(opts.segment_bytes))?;
            let mut info = SegmentInfo::empty(base, seg.file_len());
            let found = seg.replay(base, next_seq.max(base), &mut recovery, |rec| {
                info.note(&rec);
                replay(rec);
            })?;
            info.bytes = seg.file_len();
            recovery.records += info.records;
            next_seq = found;
            if is_last {
                active = Some((seg, info));
            } else {
                sealed.push(info);
            }
        }
        let (active, active_info, next_seq) = match active {
            Some((seg, info)) => {
                let next = next_seq.max(info.base_seq);
                (seg, info, next)
            }
            None => {
                let seg = Segment::create(&dir, 1, &opts, 0)?;
                let info = SegmentInfo::empty(1, seg.file_len());
                (seg, info, 1)
            }
        };
        let log = Self {
            dir,
            opts,
            sealed,
            active,
            active_info,
            next_seq,
            dirty_since: None,
        };
        Ok((log, recovery))
    }

    /// The largest payload one record may carry with this log's segment size.
    pub fn max_payload(&self) -> usize {
        max_payload(self.opts.segment_bytes)
    }

    /// Appends one record into the mapping and returns its sequence number. Not yet synced: see
    /// [`Log::sync_deadline`]. Rolls to a new segment when this one is full; an error (a full
    /// disk, say) leaves the log as it was.
    pub fn append(&mut self, kind: u8, ts_ms: u64, payload: &[u8]) -> Result<u64, LogError> {
        if kind == 0 {
            return Err(LogError::ZeroKind);
        }
        let max = self.max_payload();
        if payload.len() > max {
            return Err(LogError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let len = record_len(payload.len());
        if !self.active.fits(len) {
            self.roll()?;
            if !self.active.fits(len) {
                return Err(LogError::TooLarge {
                    len: payload.len(),
                    max,
                });
            }
        }
        let rec = Record {
            seq: self.next_seq,
            ts_ms,
            kind,
            payload,
        };
        self.active.push(&rec);
        self.active_info.note(&rec);
        self.next_seq += 1;
        self.dirty_since.get_or_insert(ts_ms);
        Ok(rec.seq)
    }

    /// When the owner should call [`Log::sync`] under its policy: `None` when nothing is
    /// pending (or under `Sync::Os`). Times are the `ts_ms` passed to `append`.
    pub fn sync_deadline(&self) -> Option<u64> {
        let since = self.dirty_since?;
        match self.opts.sync {
            Sync::Always => Some(since),
            Sync::Interval(ms) => Some(since.saturating_add(ms)),
            Sync::Os => None,
        }
    }

    /// Makes every appended record durable (`msync` of the unsynced range of the active
    /// segment; sealed segments were synced when they rolled, unless under `Sync::Os`).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.active.sync()?;
        self.dirty_since = None;
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        if self.active_info.records == 0 {
            // An empty active segment (reopened short, or its reservation failed): grow it
            // rather than create a second file for the same base.
            let target = self.opts.segment_bytes.max(self.active.file_len());
            let others = self.disk_bytes() - self.active.file_len();
            return self.active.grow(target, others, self.opts.space_limit);
        }
        if self.opts.sync != Sync::Os {
            self.sync()?;
        }
        let reserved = self.disk_bytes();
        let next = Segment::create(&self.dir, self.next_seq, &self.opts, reserved)?;
        let mut old = std::mem::replace(&mut self.active, next);
        // Trimming is tidiness (the zeros after the data already mark its end): a failure keeps
        // the file at its reserved size and the log consistent.
        old.trim();
        let mut info = std::mem::replace(
            &mut self.active_info,
            SegmentInfo::empty(self.next_seq, self.active.file_len()),
        );
        info.bytes = old.file_len();
        self.sealed.push(info);
        Ok(())
    }

    /// Drops sealed segments by `policy` at `now_ms`, oldest first, unless `keep` says a
    /// segment must stay. Returns what was dropped. A failed removal stops there with an error;
    /// the segments before it are gone, the rest stay listed.
    pub fn retain(
        &mut self,
        now_ms: u64,
        policy: &Retention,
        mut keep: impl FnMut(&SegmentInfo) -> bool,
    ) -> Result<Vec<SegmentInfo>, LogError> {
        let mut total = self.disk_bytes();
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < self.sealed.len() {
            let info = &self.sealed[i];
            let over = policy.max_bytes.is_some_and(|max| total > max);
            let old = policy
                .max_age_ms
                .is_some_and(|age| now_ms.saturating_sub(info.newest_ms) > age);
            if (over || old) && !keep(info) {
                let path = self.dir.join(segment_name(info.base_seq));
                fs::remove_file(&path).map_err(LogError::io("remove", &path))?;
                total -= info.bytes;
                dropped.push(self.sealed.remove(i));
            } else {
                i += 1;
            }
        }
        if !dropped.is_empty() && self.opts.sync != Sync::Os {
            segment::sync_dir(&self.dir)?;
        }
        Ok(dropped)
    }

    /// Where [`Log::drop_before`] would cut under `policy` at `now_ms`: the `base_seq` of the
    /// first segment that stays when sealed segments go oldest first and *in order* (a prefix:
    /// the first segment the policy keeps stops the cut). `None` when nothing would go. The
    /// reference backend re-appends the live state held before the cut, then drops the prefix.
    pub fn retention_cut(&self, now_ms: u64, policy: &Retention) -> Option<u64> {
        let mut total = self.disk_bytes();
        let mut cut = None;
        for info in &self.sealed {
            let over = policy.max_bytes.is_some_and(|max| total > max);
            let old = policy
                .max_age_ms
                .is_some_and(|age| now_ms.saturating_sub(info.newest_ms) > age);
            if !(over || old) {
                break;
            }
            total -= info.bytes;
            cut = Some(info.base_seq);
        }
        // The segment after the last one going: the next sealed one, or the active one.
        let last_going = cut?;
        self.segments()
            .map(|s| s.base_seq)
            .find(|&base| base > last_going)
    }

    /// Drops every sealed segment whose `base_seq` is below `cut` (never the active one),
    /// oldest first. Returns what was dropped; a failed removal stops there with an error (the
    /// segments before it are gone, the rest stay listed).
    pub fn drop_before(&mut self, cut: u64) -> Result<Vec<SegmentInfo>, LogError> {
        let mut dropped = Vec::new();
        while self.sealed.first().is_some_and(|s| s.base_seq < cut) {
            let path = self.dir.join(segment_name(self.sealed[0].base_seq));
            fs::remove_file(&path).map_err(LogError::io("remove", &path))?;
            dropped.push(self.sealed.remove(0));
        }
        if !dropped.is_empty() && self.opts.sync != Sync::Os {
            segment::sync_dir(&self.dir)?;
        }
        Ok(dropped)
    }

    /// The `base_seq` of the active segment (where the next append lands unless it rolls).
    pub fn active_base(&self) -> u64 {
        self.active_info.base_seq
    }

    /// Whether appends are waiting for [`Log::sync`] (under any policy).
    pub fn is_dirty(&self) -> bool {
        self.dirty_since.is_some()
    }

    /// The sync policy the log was opened with.
    pub fn sync_policy(&self) -> Sync {
        self.opts.sync
    }

    /// The sequence number the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Every segment, oldest first, the active one last.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> {
        self.sealed.iter().chain(std::iter::once(&self.active_info))
    }

    /// Bytes of all segment files (reserved space included).
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.file_len()
    }

    /// Changes the space limit (the disk came back, or the quota changed).
    pub fn set_space_limit(&mut self, limit: Option<u64>) {
        self.opts.space_limit = limit;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn max_payload(segment_bytes: u64) -> usize {
    let room = segment_bytes as usize - SEGMENT_HEADER;
    room / ALIGN * ALIGN - RECORD_HEADER
}
