//! File-level tests of the log in temp dirs, and a randomized test against an in-memory model.

use std::path::{Path, PathBuf};

use super::*;
use crate::testutil::TempDir;

/// xorshift64*: deterministic randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

type Seen = Vec<(u64, u64, u8, Vec<u8>)>;

fn opts(segment_bytes: u64) -> Options {
    Options {
        segment_bytes,
        ..Options::default()
    }
}

fn open(dir: &Path, o: Options) -> (Log, Recovery, Seen) {
    let mut seen = Vec::new();
    let (log, rec) = Log::open(dir, o, |r| {
        seen.push((r.seq, r.ts_ms, r.kind, r.payload.to_vec()))
    })
    .expect("open");
    (log, rec, seen)
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 ^ seq.wrapping_mul(31)) as u8)
        .collect()
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(segment_name(base))
}

#[test]
fn appended_records_read_back_after_reopen() {
    let tmp = TempDir::new("reopen");
    let (mut log, rec, seen) = open(tmp.path(), opts(1 << 16));
    assert_eq!((rec.records, seen.len(), log.next_seq()), (0, 0, 1));
    for i in 0..100u64 {
        let seq = log
            .append(kind::MESSAGE, 1_000 + i, &payload(i + 1, i as usize))
            .expect("append");
        assert_eq!(seq, i + 1);
    }
    log.sync().expect("sync");
    drop(log);
    let (log, rec, seen) = open(tmp.path(), opts(1 << 16));
    assert_eq!(rec.records, 100);
    assert!(rec.corrupt.is_empty() && rec.torn.is_empty());
    for (i, (seq, ts, kind, p)) in seen.iter().enumerate() {
        let i = i as u64;
        assert_eq!((*seq, *ts, *kind), (i + 1, 1_000 + i, kind::MESSAGE));
        assert_eq!(p, &payload(i + 1, i as usize));
    }
    assert_eq!(log.next_seq(), 101);
}

#[test]
fn segments_roll_at_their_size_and_are_named_by_first_seq() {
    let tmp = TempDir::new("roll");
    let (mut log, _, _) = open(tmp.path(), opts(4096));
    for i in 1..=200u64 {
        log.append(kind::MESSAGE, i, &payload(i, 100))
            .expect("append");
    }
    let segs: Vec<SegmentInfo> = log.segments().cloned().collect();
    assert!(segs.len() > 5, "{} segments", segs.len());
    assert_eq!(segs[0].base_seq, 1);
    for pair in segs.windows(2) {
        assert_eq!(pair[0].last_seq.map(|s| s + 1), Some(pair[1].base_seq));
        assert!(segs[0].bytes <= 4096);
        assert!(segment_path(tmp.path(), pair[1].base_seq).exists());
    }
    drop(log);
    let (log, rec, seen) = open(tmp.path(), opts(4096));
    assert_eq!(rec.segments, segs.len());
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    assert_eq!(log.next_seq(), 201);
}

#[test]
fn a_record_too_large_or_of_kind_zero_is_refused() {
    let tmp = TempDir::new("large");
    let (mut log, _, _) = open(tmp.path(), opts(4096));
    let max = log.max_payload();
    assert!(matches!(
        log.append(1, 0, &vec![0; max + 1]),
        Err(LogError::TooLarge { .. })
    ));
    assert!(matches!(log.append(0, 0, b"x"), Err(LogError::ZeroKind)));
    assert_eq!(log.append(1, 0, &vec![7; max]).expect("max fits"), 1);
    assert_eq!(log.append(1, 0, &vec![7; max]).expect("rolls"), 2);
}

#[test]
fn torn_tail_at_every_byte_of_the_last_record_is_truncated() {
    let tmp = TempDir::new("torn");
    let last_len = 40usize;
    let (mut log, _, _) = open(tmp.path(), opts(4096));
    for i in 1..=4u64 {
        log.append(kind::CURSOR, i, &payload(i, 24))
            .expect("append");
    }
    drop(log);
    let path = segment_path(tmp.path(), 1);
    let clean = std::fs::read(&path).expect("read");
    let start = SEGMENT_HEADER + 4 * record_len(24);
    // The full bytes of a fifth record, written into a scratch log.
    let mut fifth = vec![0u8; record_len(last_len)];
    record::encode_into(
        &Record {
            seq: 5,
            ts_ms: 5,
            kind: kind::CURSOR,
            payload: &payload(5, last_len),
        },
        &mut fifth,
    );
    for cut in 0..fifth.len() {
        let mut bytes = clean.clone();
        bytes[start..start + cut].copy_from_slice(&fifth[..cut]);
        std::fs::write(&path, &bytes).expect("write");
        let (mut log, rec, seen) = open(tmp.path(), opts(4096));
        assert_eq!(seen.len(), 4, "cut {cut}");
        assert!(rec.corrupt.is_empty(), "cut {cut}");
        assert_eq!(
            rec.torn.len(),
            usize::from(fifth[..cut].iter().any(|&b| b != 0)),
            "cut {cut}"
        );
        assert_eq!(log.next_seq(), 5, "cut {cut}");
        // The next append lands where the torn record was, and reads back.
        log.append(kind::CURSOR, 9, b"after").expect("append");
        drop(log);
        let (_, rec, seen) = open(tmp.path(), opts(4096));
        assert!(rec.torn.is_empty() && rec.corrupt.is_empty(), "cut {cut}");
        assert_eq!(
            seen.last().map(|s| (s.0, s.3.clone())),
            Some((5, b"after".to_vec()))
        );
    }
    // The whole record present: five records.
    let mut bytes = clean;
    bytes[start..start + fifth.len()].copy_from_slice(&fifth);
    std::fs::write(&path, &bytes).expect("write");
    let (_, _, seen) = open(tmp.path(), opts(4096));
    assert_eq!(seen.len(), 5);
}

#[test]
fn flipped_byte_mid_segment_is_reported_skipped_and_the_rest_loaded() {
    let tmp = TempDir::new("flip");
    let (mut log, _, _) = open(tmp.path(), opts(1 << 16));
    for i in 1..=50u64 {
        log.append(kind::MESSAGE, i, &payload(i, 64))
            .expect("append");
    }
    drop(log);
    let path = segment_path(tmp.path(), 1);
    let mut bytes = std::fs::read(&path).expect("read");
    let rl = record_len(64);
    bytes[SEGMENT_HEADER + 19 * rl + 40] ^= 0x55; // payload of seq 20
    bytes[SEGMENT_HEADER + 29 * rl + 3] ^= 0x55; // header of seq 30
    std::fs::write(&path, &bytes).expect("write");
    let (mut log, rec, seen) = open(tmp.path(), opts(1 << 16));
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    let want: Vec<u64> = (1..=50).filter(|s| *s != 20 && *s != 30).collect();
    assert_eq!(seqs, want);
    assert_eq!(rec.corrupt.len(), 2);
    assert_eq!(rec.corrupt[0].seq, Some(20));
    assert_eq!(rec.corrupt[0].offset, (SEGMENT_HEADER + 19 * rl) as u64);
    assert_eq!(rec.corrupt[1].seq, None);
    assert_eq!(log.next_seq(), 51);
    assert_eq!(log.append(kind::MESSAGE, 0, b"x").expect("append"), 51);
}

#[test]
fn retention_drops_old_and_oversized_segments_unless_kept() {
    let tmp = TempDir::new("retain");
    let (mut log, _, _) = open(tmp.path(), opts(4096));
    for i in 1..=300u64 {
        log.append(kind::MESSAGE, i * 10, &payload(i, 100))
            .expect("append");
    }
    let before: Vec<SegmentInfo> = log.segments().cloned().collect();
    let n = before.len();
    assert!(n >= 6);
    // Age: segments whose newest record is older than now - 1000 go, except the second.
    let now = before[3].newest_ms + 1000;
    let keep_base = before[1].base_seq;
    let policy = Retention {
        max_age_ms: Some(1000),
        max_bytes: None,
    };
    let dropped = log
        .retain(now, &policy, |s| s.base_seq == keep_base)
        .expect("retain");
    assert_eq!(
        dropped.iter().map(|s| s.base_seq).collect::<Vec<_>>(),
        vec![before[0].base_seq, before[2].base_seq]
    );
    assert!(!segment_path(tmp.path(), before[0].base_seq).exists());
    assert!(segment_path(tmp.path(), keep_base).exists());
    // Size: down to the budget, oldest first; the active segment stays.
    let policy = Retention {
        max_bytes: Some(0),
        max_age_ms: None,
    };
    log.retain(now, &policy, |_| false).expect("retain");
    assert_eq!(log.segments().count(), 1);
    assert_eq!(log.disk_bytes(), 4096);
    drop(log);
    let (log, rec, seen) = open(tmp.path(), opts(4096));
    assert_eq!(rec.segments, 1);
    assert_eq!(seen.first().map(|s| s.0), before.last().map(|s| s.base_seq));
    assert_eq!(log.next_seq(), 301);
}

#[test]
fn retention_cut_is_a_prefix_and_drop_before_removes_exactly_it() {
    let tmp = TempDir::new("cut");
    let (mut log, _, _) = open(tmp.path(), opts(4096));
    for i in 1..=300u64 {
        log.append(kind::MESSAGE, i * 10, &payload(i, 100))
            .expect("append");
    }
    let before: Vec<SegmentInfo> = log.segments().cloned().collect();
    assert!(before.len() >= 6);
    let age = Retention {
        max_age_ms: Some(1000),
        max_bytes: None,
    };
    // Nothing old enough yet.
    assert_eq!(log.retention_cut(before[0].newest_ms + 1000, &age), None);
    // The first three are older than the age: the cut is the fourth's base.
    let now = before[2].newest_ms + 1001;
    assert_eq!(log.retention_cut(now, &age), Some(before[3].base_seq));
    let dropped = log.drop_before(before[3].base_seq).expect("drop");
    assert_eq!(dropped.len(), 3);
    assert!(!segment_path(tmp.path(), before[2].base_seq).exists());
    assert!(segment_path(tmp.path(), before[3].base_seq).exists());
    // By size the cut never passes the active segment.
    let all = Retention {
        max_bytes: Some(0),
        max_age_ms: None,
    };
    assert_eq!(log.retention_cut(now, &all), Some(log.active_base()));
    log.drop_before(u64::MAX).expect("drop");
    assert_eq!(log.segments().count(), 1, "the active segment stays");
    assert_eq!(log.retention_cut(now, &all), None);
}

#[test]
fn a_full_disk_fails_appends_without_harm_and_they_resume_when_space_returns() {
    let tmp = TempDir::new("enospc");
    let o = Options {
        space_limit: Some(2 * 4096),
        ..opts(4096)
    };
    let (mut log, _, _) = open(tmp.path(), o.clone());
    let mut acked = Vec::new();
    let mut failed = 0;
    for i in 1..=120u64 {
        match log.append(kind::MESSAGE, i, &payload(i, 100)) {
            Ok(seq) => acked.push(seq),
            Err(e) => {
                assert!(e.is_no_space(), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0 && !acked.is_empty());
    assert_eq!(
        acked,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "no seq burnt by a failure"
    );
    assert!(log.disk_bytes() <= 2 * 4096);
    // Reopen while still full: consistent, every acknowledged record there.
    drop(log);
    let (mut log, rec, seen) = open(tmp.path(), o);
    assert!(rec.corrupt.is_empty() && rec.torn.is_empty());
    assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), acked);
    assert!(log.append(kind::MESSAGE, 0, &payload(0, 100)).is_err());
    // Space returns.
    log.set_space_limit(None);
    let next = log
        .append(kind::MESSAGE, 0, b"back")
        .expect("append after space returns");
    assert_eq!(next, acked.len() as u64 + 1);
    drop(log);
    let (_, _, seen) = open(tmp.path(), opts(4096));
    assert_eq!(seen.last().map(|s| s.0), Some(next));
}

#[test]
fn sync_deadline_follows_the_policy() {
    let tmp = TempDir::new("sync");
    for (sync, want) in [
        (Sync::Always, Some(100)),
        (Sync::Interval(50), Some(150)),
        (Sync::Os, None),
    ] {
        let dir = tmp.path().join(format!("{sync:?}"));
        let (mut log, _) = Log::open(&dir, Options { sync, ..opts(4096) }, |_| {}).expect("open");
        assert_eq!(log.sync_deadline(), None);
        log.append(1, 100, b"a").expect("append");
        log.append(1, 120, b"b").expect("append");
        assert_eq!(log.sync_deadline(), want, "{sync:?}");
        log.sync().expect("sync");
        assert_eq!(log.sync_deadline(), None);
    }
}

/// Random appends, reopens, torn tails and retention against a model: the list of records the
/// log must replay.
#[test]
fn randomized_operations_match_an_in_memory_model() {
    for seed in 1..=6u64 {
        let tmp = TempDir::new("model");
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let o = opts(4096);
        let (mut log, _, _) = open(tmp.path(), o.clone());
        let mut model: Vec<(u64, u64, Vec<u8>)> = Vec::new();
        let mut now = 0u64;
        for step in 0..400 {
            now += rng.below(20);
            match rng.below(20) {
                0 => {
                    drop(log);
                    let (l, rec, seen) = open(tmp.path(), o.clone());
                    assert!(rec.corrupt.is_empty(), "seed {seed} step {step}");
                    assert!(
                        rec.torn.is_empty(),
                        "truncated tails stay gone: seed {seed} step {step}"
                    );
                    let got: Vec<_> = seen.into_iter().map(|s| (s.0, s.1, s.3)).collect();
                    assert_eq!(got, model, "seed {seed} step {step}");
                    log = l;
                }
                1 => {
                    // A torn write after the last record: random non-zero bytes, then reopen.
                    let active = log.segments().last().cloned().expect("active");
                    let used = SEGMENT_HEADER
                        + model
                            .iter()
                            .filter(|m| m.0 >= active.base_seq)
                            .map(|m| record_len(m.2.len()))
                            .sum::<usize>();
                    drop(log);
                    let path = segment_path(tmp.path(), active.base_seq);
                    let mut bytes = std::fs::read(&path).expect("read");
                    let n = (rng.below(60) as usize).min(bytes.len() - used);
                    for b in &mut bytes[used..used + n] {
                        *b = rng.below(255) as u8 + 1;
                    }
                    std::fs::write(&path, &bytes).expect("write");
                    let (l, rec, seen) = open(tmp.path(), o.clone());
                    assert!(rec.corrupt.is_empty(), "seed {seed} step {step}");
                    assert_eq!(
                        rec.torn.len(),
                        usize::from(n > 0),
                        "seed {seed} step {step}"
                    );
                    assert_eq!(seen.len(), model.len(), "seed {seed} step {step}");
                    log = l;
                }
                2 => {
                    let budget = rng.below(5 * 4096);
                    let policy = Retention {
                        max_bytes: Some(budget),
                        max_age_ms: Some(rng.below(2000)),
                    };
                    let keep_odd = rng.below(2) == 0;
                    let dropped = log
                        .retain(now, &policy, |s| keep_odd && s.base_seq % 2 == 1)
                        .expect("retain");
                    for s in dropped {
                        model.retain(|m| !(s.base_seq..=s.last_seq.unwrap_or(0)).contains(&m.0));
                    }
                }
                _ => {
                    let len = rng.below(300) as usize;
                    let p = payload(rng.next(), len);
                    let seq = log.append(kind::MESSAGE, now, &p).expect("append");
                    assert_eq!(Some(seq), model.last().map(|m| m.0 + 1).or(Some(seq)));
                    model.push((seq, now, p));
                }
            }
        }
        drop(log);
        let (_, _, seen) = open(tmp.path(), o);
        let got: Vec<_> = seen.into_iter().map(|s| (s.0, s.1, s.3)).collect();
        assert_eq!(got, model, "seed {seed}");
    }
}

#[test]
fn an_empty_active_segment_grows_in_place_instead_of_rolling() {
    let tmp = TempDir::new("grow");
    let small = Options {
        space_limit: Some(4096),
        ..opts(4096)
    };
    let (log, _, _) = open(tmp.path(), small);
    drop(log);
    // Reopened with larger segments but no room to grow: the empty 4 KiB segment stays.
    let (mut log, _, _) = open(
        tmp.path(),
        Options {
            space_limit: Some(4096),
            ..opts(8192)
        },
    );
    assert_eq!(log.disk_bytes(), 4096);
    let big = vec![3u8; 6000];
    let err = log.append(kind::MESSAGE, 1, &big).expect_err("no room");
    assert!(err.is_no_space(), "{err}");
    log.set_space_limit(None);
    assert_eq!(log.append(kind::MESSAGE, 1, &big).expect("grown"), 1);
    assert_eq!(
        log.segments().count(),
        1,
        "grown in place, not a second file for seq 1"
    );
    assert_eq!(log.disk_bytes(), 8192);
    drop(log);
    let (_, rec, seen) = open(tmp.path(), opts(8192));
    assert_eq!((rec.segments, seen.len()), (1, 1));
    assert_eq!(seen[0].3, big);
}
