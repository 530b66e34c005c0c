//! Opening the reference backend's data directory: every partition rebuilt from its log, then
//! the state that crosses partitions rebuilt in one pass, before anything is served.
//!
//! Owns the directory's layout and guard rails:
//! - `LOCK`: held with `flock` while a process uses the directory, so a second gate or router
//!   pointed at it is refused instead of interleaving appends;
//! - `partitions`: the partition count, written when the directory is created. Data is placed
//!   by partition (`partition_of_user`, `partition_of_conv`), so another count would strand
//!   every message: a mismatch is refused with both numbers. The *shard* count may change
//!   freely (partitions move between shards; nothing is re-hashed);
//! - `p0000/` … : one log per partition (`crate::log`), owned by that partition alone.
//!
//! Recovery: each partition replays its own log (messages, memberships, cursors, dedup
//! records). Then, in this thread with every partition in hand, the derived state is sent where
//! it lives: every reader's (latest, unread) of every conversation to the reader's user
//! partition (inboxes are never journaled: they are a function of the conversations), in
//! ascending `latest_msg_id` so SYNC's newest-first order comes back; and a dedup entry for
//! every stored message younger than the window to its sender's partition (a crash between
//! storing a message and journaling its dedup record must not let a resend store it twice).

use std::fs::{self, File};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::journal::{DedupRecord, JournalConfig};
use super::{ImConfig, Partition, PartitionId, Replayed, partition_of_user};
use crate::link;
use crate::log::LogError;

/// Where and how the reference backend keeps its data (`backend.data_dir` and friends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub dir: PathBuf,
    pub journal: JournalConfig,
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("backend.data_dir {dir}: {op}: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "backend.data_dir {dir} is in use by another process (its LOCK is held); stop it or use another directory"
    )]
    Locked { dir: PathBuf },
    #[error(
        "backend.data_dir {dir} was created with backend.partitions = {found}, but the configuration says {configured}: data is placed by partition, so the count is fixed for the life of the data (set it back to {found})"
    )]
    Partitions {
        dir: PathBuf,
        found: u32,
        configured: u32,
    },
    #[error("backend.data_dir {dir}: the partitions file says {text:?}, not a partition count")]
    BadMeta { dir: PathBuf, text: String },
    #[error("partition {partition}: {source}")]
    Log {
        partition: PartitionId,
        #[source]
        source: LogError,
    },
}

/// An open data directory: holds its lock until dropped (keep it as long as the partitions).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

impl DataDirLock {
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// What opening a data directory gives: the partitions, rebuilt and journaling, in id order.
#[derive(Debug)]
pub struct Opened {
    pub partitions: Vec<Partition>,
    pub lock: DataDirLock,
    /// Per partition, what its log's recovery found.
    pub replayed: Vec<Replayed>,
}

impl Opened {
    /// Records replayed, over all partitions.
    pub fn records(&self) -> u64 {
        self.replayed.iter().map(|r| r.log.records).sum()
    }
}

/// The directory of partition `p`'s log.
pub fn partition_dir(dir: &Path, p: PartitionId) -> PathBuf {
    dir.join(format!("p{p:04}"))
}

/// Opens (creating if needed) `storage.dir` for `config.partitions` partitions at `now_ms`:
/// lock, check the partition count, replay every log, rebuild inboxes and dedup (module doc).
pub fn open(storage: &Storage, config: &ImConfig, now_ms: u64) -> Result<Opened, RecoveryError> {
    let dir = storage.dir.clone();
    let io = |op: &'static str| {
        let dir = dir.clone();
        move |source| RecoveryError::Io { dir, op, source }
    };
    fs::create_dir_all(&dir).map_err(io("create"))?;
    let lock = lock(&dir)?;
    check_partitions(&dir, config.partitions)?;

    let mut partitions = Vec::with_capacity(config.partitions as usize);
    let mut replayed = Vec::with_capacity(config.partitions as usize);
    for p in 0..config.partitions {
        let (partition, report) = Partition::open(
            p,
            config.clone(),
            &partition_dir(&dir, p),
            &storage.journal,
            now_ms,
        )
        .map_err(|source| RecoveryError::Log {
            partition: p,
            source,
        })?;
        for c in &report.log.corrupt {
            tracing::warn!(
                partition = p,
                segment = c.segment,
                offset = c.offset,
                len = c.len,
                "corrupted bytes in the log skipped; the rest was loaded"
            );
        }
        for t in &report.log.torn {
            tracing::warn!(
                partition = p,
                segment = t.segment,
                offset = t.offset,
                len = t.len,
                "torn tail truncated (a write cut short by a crash)"
            );
        }
        if report.undecodable + report.unknown_kind > 0 {
            tracing::warn!(
                partition = p,
                undecodable = report.undecodable,
                unknown_kind = report.unknown_kind,
                "log records skipped"
            );
        }
        partitions.push(partition);
        replayed.push(report);
    }
    rebuild(&mut partitions, config.partitions, now_ms);
    Ok(Opened {
        partitions,
        lock,
        replayed,
    })
}

/// Sends the derived state where it lives (module doc).
fn rebuild(partitions: &mut [Partition], count: u32, now_ms: u64) {
    let mut inboxes: Vec<link::UserConv> = partitions
        .iter()
        .flat_map(Partition::recovered_inboxes)
        .collect();
    inboxes.sort_by_key(|e| e.conv.as_ref().map_or(0, |c| c.latest_msg_id));
    let mut by_partition: Vec<Vec<link::UserConv>> = vec![Vec::new(); partitions.len()];
    for entry in inboxes {
        by_partition[partition_of_user(entry.uid, count) as usize].push(entry);
    }
    let mut dedup: Vec<Vec<DedupRecord>> = vec![Vec::new(); partitions.len()];
    for p in partitions.iter() {
        for d in p.recovered_dedup(now_ms) {
            dedup[partition_of_user(d.from, count) as usize].push(d);
        }
    }
    for ((p, inbox), dedup) in partitions.iter_mut().zip(by_partition).zip(dedup) {
        p.restore_inboxes(inbox);
        p.restore_dedup(dedup);
    }
}

fn lock(dir: &Path) -> Result<DataDirLock, RecoveryError> {
    let path = dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| RecoveryError::Io {
            dir: dir.to_path_buf(),
            op: "open LOCK",
            source,
        })?;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(RecoveryError::Locked {
                dir: dir.to_path_buf(),
            });
        }
        return Err(RecoveryError::Io {
            dir: dir.to_path_buf(),
            op: "lock",
            source: err,
        });
    }
    Ok(DataDirLock {
        _file: file,
        dir: dir.to_path_buf(),
    })
}

/// Reads the recorded partition count, or records `configured` in a new directory.
fn check_partitions(dir: &Path, configured: u32) -> Result<(), RecoveryError> {
    let path = dir.join("partitions");
    let io = |op: &'static str| {
        let dir = dir.to_path_buf();
        move |source| RecoveryError::Io { dir, op, source }
    };
    match fs::read_to_string(&path) {
        Ok(text) => {
            let found: u32 = text.trim().parse().map_err(|_| RecoveryError::BadMeta {
                dir: dir.to_path_buf(),
                text: text.clone(),
            })?;
            if found != configured {
                return Err(RecoveryError::Partitions {
                    dir: dir.to_path_buf(),
                    found,
                    configured,
                });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Written whole (temp file, fsync, rename, fsync of the directory), so a crash
            // leaves either no file or the right one.
            let tmp = dir.join("partitions.tmp");
            let mut f = File::create(&tmp).map_err(io("write partitions"))?;
            writeln!(f, "{configured}").map_err(io("write partitions"))?;
            f.sync_all().map_err(io("sync partitions"))?;
            fs::rename(&tmp, &path).map_err(io("rename partitions"))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync directory"))?;
            Ok(())
        }
        Err(e) => Err(io("read partitions")(e)),
    }
}
