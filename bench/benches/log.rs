//! Criterion benchmarks of `router::log::Log::append`, the durable log's write path, under
//! `Sync::Os` (the record is copied into the mapped segment; the kernel writes it back).
//!
//! - `log/append_os/64B`, `log/append_os/1KiB`: one append per iteration into 64 MiB segments,
//!   rolls included (a roll reserves and maps a new segment). Throughput is per record. Between
//!   timed batches, segments beyond 256 MiB are dropped (untimed), so the run stays bounded on
//!   disk. The log lives in a directory under `std::env::temp_dir()`, removed at the end.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = append_os
}
criterion_main!(benches);
