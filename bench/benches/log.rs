//! Criterion benchmarks of `router::log::Log::append`, the durable log's write path, under
//! `Sync::Os` (the record is copied into the mapped segment; the kernel writes it back).
//!
//! - `log/append_os/64B`, `log/append_os/1KiB`: one append per iteration into 64 MiB segments,
//!   rolls included (a roll reserves and maps a new segment). Throughput is per record. Between
//!   timed batches, segments beyond 256 MiB are dropped (untimed), so the run stays bounded on
//!   disk. The log lives in a directory under `std::env::temp_dir()`, removed at the end.
//!   `backend.sync = "interval"` costs the same per append (its msync is once per interval).
//! - `log/append_always/each_64B`: append + `msync` per record (`backend.sync = "always"` with
//!   one message per cascade); `log/append_always/batch64_64B`: 64 appends then one `msync`
//!   (a group commit). Throughput is per record; the figure is the temp dir's device.
//! - `log/recover/1M_64B`: `Log::open` of a log of one million 64-byte records (replay with
//!   checksums, the callback counts). Throughput is per record.
//! - `backend/recover/1M_messages`: `router::im::recovery::open` of a data directory of 16
//!   partitions holding one million single-chat messages of 32-byte bodies among 10,000 users
//!   (replay, decode, conversations rebuilt, inboxes and dedup rebuilt across partitions).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use router::im::journal::JournalConfig;
use router::im::recovery::{self, Storage};
use router::im::{ImConfig, Input, Output, Request, route};
use router::log::{Log, Options, Retention, Sync, kind};

const SEGMENT_BYTES: u64 = 64 << 20;
const KEEP_BYTES: u64 = 256 << 20;
/// Appends between untimed retention passes.
const BATCH: u64 = 16_384;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imgate-bench-log-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn append_os(c: &mut Criterion) {
    let mut g = c.benchmark_group("log/append_os");
    for (name, len) in [("64B", 64usize), ("1KiB", 1024)] {
        let dir = temp_dir(name);
        let opts = Options {
            segment_bytes: SEGMENT_BYTES,
            sync: Sync::Os,
            space_limit: None,
        };
        let (mut log, _) = Log::open(&dir, opts, |_| {}).expect("open the bench log");
        let payload = vec![0x5Au8; len];
        let keep = Retention {
            max_bytes: Some(KEEP_BYTES),
            max_age_ms: None,
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let n = BATCH.min(iters - done);
                    let t0 = Instant::now();
                    for i in 0..n {
                        black_box(log.append(kind::MESSAGE, i, &payload).expect("append"));
                    }
                    spent += t0.elapsed();
                    done += n;
                    log.retain(0, &keep, |_| false).expect("retain");
                }
                spent
            });
        });
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

fn append_always(c: &mut Criterion) {
    let mut g = c.benchmark_group("log/append_always");
    for (name, batch) in [("each_64B", 1u64), ("batch64_64B", 64)] {
        let dir = temp_dir(name);
        let opts = Options {
            segment_bytes: SEGMENT_BYTES,
            sync: Sync::Always,
            space_limit: None,
        };
        let (mut log, _) = Log::open(&dir, opts, |_| {}).expect("open the bench log");
        let payload = vec![0x5Au8; 64];
        let keep = Retention {
            max_bytes: Some(KEEP_BYTES),
            max_age_ms: None,
        };
        g.throughput(Throughput::Elements(1));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for i in 0..iters {
                    black_box(log.append(kind::MESSAGE, i, &payload).expect("append"));
                    if (i + 1) % batch == 0 {
                        log.sync().expect("sync");
                    }
                }
                log.sync().expect("sync");
                let spent = t0.elapsed();
                log.retain(0, &keep, |_| false).expect("retain");
                spent
            });
        });
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

const MILLION: u64 = 1_000_000;

fn recover_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("log/recover");
    g.sample_size(10);
    let dir = temp_dir("recover");
    let opts = Options {
        segment_bytes: SEGMENT_BYTES,
        sync: Sync::Os,
        space_limit: None,
    };
    {
        let (mut log, _) = Log::open(&dir, opts.clone(), |_| {}).expect("open");
        let payload = vec![0x5Au8; 64];
        for i in 0..MILLION {
            log.append(kind::MESSAGE, i, &payload).expect("append");
        }
    }
    g.throughput(Throughput::Elements(MILLION));
    g.bench_function("1M_64B", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let (log, rec) = Log::open(&dir, opts.clone(), |_| n += 1).expect("reopen");
            assert_eq!(n, MILLION);
            black_box((log, rec));
        });
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn recover_backend(c: &mut Criterion) {
    const PARTITIONS: u32 = 16;
    const USERS: u64 = 10_000;
    let mut g = c.benchmark_group("backend/recover");
    g.sample_size(10);
    let dir = temp_dir("backend");
    let storage = Storage {
        dir: dir.clone(),
        journal: JournalConfig {
            log: Options {
                segment_bytes: SEGMENT_BYTES,
                sync: Sync::Os,
                space_limit: None,
            },
            retention: Retention::default(),
        },
    };
    let config = ImConfig {
        partitions: PARTITIONS,
        push_threshold: 200,
        dedup_window_ms: router::im::DEDUP_WINDOW_MS,
        auth_secret: Vec::new(),
        filter: None,
    };
    let now = 1_760_000_000_000u64;
    {
        let mut opened = recovery::open(&storage, &config, now).expect("open");
        let mut work = std::collections::VecDeque::new();
        let mut out = Vec::new();
        for i in 0..MILLION {
            let from = 1 + i % USERS;
            let send = router::link::Send {
                from,
                client_msg_id: i + 1,
                conv_type: router::conv::SINGLE,
                to: 1 + (i * 7919 + 13) % USERS,
                content_type: 1,
                body: bytes::Bytes::from_static(&[0x41; 32]),
                session_id: from,
                log_id: 0,
            };
            let request = Request::Send(send);
            let p = route(&request, PARTITIONS);
            work.push_back((
                p,
                Input::Request {
                    origin: Default::default(),
                    request,
                },
            ));
            while let Some((p, input)) = work.pop_front() {
                opened.partitions[p as usize].handle(input, now + i / 1000, &mut out);
                for o in out.drain(..) {
                    if let Output::ToPartition { partition, input } = o {
                        work.push_back((partition, input));
                    }
                }
            }
        }
    }
    g.throughput(Throughput::Elements(MILLION));
    g.bench_function("1M_messages", |b| {
        b.iter(|| {
            let opened = recovery::open(&storage, &config, now + MILLION).expect("reopen");
            assert!(opened.records() >= MILLION);
            black_box(opened);
        });
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = append_os, append_always, recover_log, recover_backend
}
criterion_main!(benches);
