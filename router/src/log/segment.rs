//! One segment file: create (reserve with `posix_fallocate`, map, write the header), open and
//! replay through the sans-IO scanner, append into the mapping, `msync`, trim. The thin IO part
//! of the log: every decision about bytes is in `record`.
//!
//! Invariants: `pos` is the end of the last good record (where the next one goes), aligned;
//! `synced <= pos`; bytes of the mapping after `pos` are zero. The mapping covers the whole
//! file, whose blocks are reserved, so a store into it never meets a full disk.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::record::{self, Record, SEGMENT_HEADER};
use super::{Corruption, LogError, Options, Recovery, Sync, TornTail, segment_name};

#[derive(Debug)]
pub(super) struct Segment {
    path: PathBuf,
    file: File,
    /// `None` only while being trimmed or when the file is too short to hold a header.
    map: Option<MmapMut>,
    len: u64,
    pos: usize,
    synced: usize,
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// Reserves `len` bytes of blocks for `file` (extending it): ENOSPC shows up here, not as a
/// SIGBUS on a later store into the mapping.
fn reserve(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: a plain syscall on an open descriptor; it returns an errno value, not -1.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn map(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the log owns its directory (module doc): no other process or handle truncates or
    // writes this file while it is mapped; `trim` drops the mapping before shrinking it.
    unsafe { MmapMut::map_mut(file) }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io("sync dir", dir))
}

impl Segment {
    /// Creates the segment for `base_seq` in `dir`, reserving `opts.segment_bytes` unless that
    /// would take the log (`reserved` bytes now) past `opts.space_limit`. On error, nothing is
    /// left behind.
    pub(super) fn create(
        dir: &Path,
        base_seq: u64,
        opts: &Options,
        reserved: u64,
    ) -> Result<Self, LogError> {
        let path = dir.join(segment_name(base_seq));
        if opts
            .space_limit
            .is_some_and(|limit| reserved + opts.segment_bytes > limit)
        {
            return Err(LogError::Io {
                op: "reserve",
                path,
                source: no_space(),
            });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(LogError::io("create", &path))?;
        let made = (|| {
            reserve(&file, opts.segment_bytes).map_err(LogError::io("reserve", &path))?;
            let mut map = map(&file).map_err(LogError::io("mmap", &path))?;
            record::encode_segment_header(base_seq, &mut map[..]);
            if opts.sync != Sync::Os {
                map.flush_range(0, SEGMENT_HEADER)
                    .map_err(LogError::io("msync", &path))?;
                file.sync_all().map_err(LogError::io("fsync", &path))?;
                sync_dir(dir)?;
            }
            Ok(map)
        })();
        match made {
            Ok(map) => Ok(Self {
                path,
                file,
                map: Some(map),
                len: opts.segment_bytes,
                pos: SEGMENT_HEADER,
                synced: SEGMENT_HEADER,
            }),
            Err(e) => {
                drop(file);
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Opens an existing segment. For the active one, `grow_to` asks to extend it to that many
    /// reserved bytes first (best effort: a full disk leaves it as it is, and it rolls sooner).
    pub(super) fn open(path: &Path, grow_to: Option<u64>) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(LogError::io("open", path))?;
        let mut len = file.metadata().map_err(LogError::io("stat", path))?.len();
        if let Some(target) = grow_to.filter(|&t| t > len)
            && reserve(&file, target).is_ok()
        {
            len = target;
        }
        let map = if len >= SEGMENT_HEADER as u64 {
            Some(map(&file).map_err(LogError::io("mmap", path))?)
        } else {
            None
        };
        let path = path.to_path_buf();
        Ok(Self {
            path,
            file,
            map,
            len,
            pos: SEGMENT_HEADER,
            synced: SEGMENT_HEADER,
        })
    }

    /// Replays this segment's good records from `next_seq` on into `f`, recording corruption
    /// and torn tails in `recovery` and truncating a torn tail (zeroed in place, so nothing stale
    /// sits after a later append). Returns the seq expected after it.
    pub(super) fn replay(
        &mut self,
        base_seq: u64,
        next_seq: u64,
        recovery: &mut Recovery,
        mut f: impl FnMut(Record<'_>),
    ) -> Result<u64, LogError> {
        let Some(map) = self.map.as_mut() else {
            recovery.corrupt.push(Corruption {
                segment: base_seq,
                offset: 0,
                len: self.len,
                seq: None,
            });
            return Ok(next_seq);
        };
        if record::decode_segment_header(map) != Some(base_seq) {
            recovery.corrupt.push(Corruption {
                segment: base_seq,
                offset: 0,
                len: SEGMENT_HEADER as u64,
                seq: None,
            });
            record::encode_segment_header(base_seq, &mut map[..]);
        }
        let report = record::scan(map, SEGMENT_HEADER, next_seq, |_, rec| f(rec));
        for c in report.corrupt {
            recovery.corrupt.push(Corruption {
                segment: base_seq,
                offset: c.range.start as u64,
                len: c.range.len() as u64,
                seq: c.seq,
            });
        }
        if report.torn > 0 {
            let end = report.valid_end;
            recovery.torn.push(TornTail {
                segment: base_seq,
                offset: end as u64,
                len: report.torn as u64,
            });
            map[end..end + report.torn].fill(0);
            map.flush().map_err(LogError::io("msync", &self.path))?;
        }
        self.pos = report.valid_end;
        self.synced = report.valid_end;
        Ok(report.next_seq)
    }

    /// Whether a record of `len` bytes fits after the last one.
    pub(super) fn fits(&self, len: usize) -> bool {
        self.map.as_ref().is_some_and(|m| self.pos + len <= m.len())
    }

    /// Appends `rec` (the caller checked [`Segment::fits`]).
    pub(super) fn push(&mut self, rec: &Record<'_>) {
        let map = self.map.as_mut().expect("push only after fits");
        self.pos += record::encode_into(rec, &mut map[self.pos..]);
    }

    /// `msync`s what was appended since the last sync.
    pub(super) fn sync(&mut self) -> Result<(), LogError> {
        if let Some(map) = &self.map
            && self.pos > self.synced
        {
            map.flush_range(self.synced, self.pos - self.synced)
                .map_err(LogError::io("msync", &self.path))?;
        }
        self.synced = self.pos;
        Ok(())
    }

    /// Unmaps and shortens the file to its data (best effort: on failure it keeps its zeros).
    pub(super) fn trim(&mut self) {
        self.map = None;
        if self.file.set_len(self.pos as u64).is_ok() {
            self.len = self.pos as u64;
        }
    }

    /// Grows an empty active segment to `target` reserved bytes, within `limit` given the
    /// log's other files (`others` bytes).
    pub(super) fn grow(
        &mut self,
        target: u64,
        others: u64,
        limit: Option<u64>,
    ) -> Result<(), LogError> {
        if limit.is_some_and(|l| others + target > l) {
            return Err(LogError::Io {
                op: "reserve",
                path: self.path.clone(),
                source: no_space(),
            });
        }
        reserve(&self.file, target).map_err(LogError::io("reserve", &self.path))?;
        self.len = target;
        self.map = None;
        let mut map = map(&self.file).map_err(LogError::io("mmap", &self.path))?;
        if record::decode_segment_header(&map).is_none() {
            let base = super::parse_segment_name(
                self.path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default(),
            )
            .unwrap_or_default();
            record::encode_segment_header(base, &mut map[..]);
        }
        self.map = Some(map);
        Ok(())
    }

    pub(super) fn file_len(&self) -> u64 {
        self.len
    }
}
