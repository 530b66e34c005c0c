//! Criterion benchmarks of `gate::delivery::TimerWheel`, the shard's timer store, on virtual
//! time (the wheel never reads the clock; we pass `now`).
//!
//! - `insert_cancel/*`: one insert plus one cancel per iteration with 1M live timers spread over
//!   an hour: `immediate` cancels the timer just inserted (hot), `fifo` cancels the oldest one
//!   (cold entries, the ack-timeout pattern).
//! - `insert_expire/*`: inserts a batch of timers, then advances time through them and drains
//!   every expiry; throughput is per timer (one insert plus one expiry).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate::delivery::{TimerId, TimerWheel};

const LIVE: usize = 1_000_000;
const BATCH: u64 = 100_000;

/// Deterministic xorshift64*, so every run sees the same deadlines.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Offsets in ms in `1..=span_ms`, precomputed so the timed loop does not pay for the PRNG.
fn offsets(seed: u64, n: usize, span_ms: u64) -> Vec<Duration> {
    let mut rng = XorShift(seed);
    (0..n)
        .map(|_| Duration::from_millis(1 + rng.next() % span_ms))
        .collect()
}

fn insert_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel/insert_cancel");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let hour = 3_600_000;
    let offs = offsets(1, 1 << 16, hour);

    let mut wheel = TimerWheel::with_capacity(t0, LIVE + 1);
    for (i, d) in offsets(2, LIVE, hour).into_iter().enumerate() {
        let _ = wheel.insert(t0 + d, i as u64);
    }
    let mut i = 0usize;
    group.bench_function("immediate_1M_live", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let id = wheel.insert(t0 + offs[i % offs.len()], i as u64);
            black_box(wheel.cancel(black_box(id)))
        })
    });
    drop(wheel);

    let mut wheel = TimerWheel::with_capacity(t0, LIVE + 1);
    let mut ring: VecDeque<TimerId> = offsets(3, LIVE, hour)
        .into_iter()
        .enumerate()
        .map(|(i, d)| wheel.insert(t0 + d, i as u64))
        .collect();
    let mut i = 0usize;
    group.bench_function("fifo_1M_live", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            ring.push_back(wheel.insert(t0 + offs[i % offs.len()], i as u64));
            let oldest = ring.pop_front().expect("ring holds LIVE ids");
            black_box(wheel.cancel(oldest))
        })
    });
    assert_eq!(wheel.len(), LIVE);
    group.finish();
}

/// Inserts `BATCH` timers spread over `span_ms` after the current virtual time, then steps time
/// by `step_ms` until all expired.
fn insert_expire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wheel/insert_expire");
    group.throughput(Throughput::Elements(BATCH));
    for (name, span_ms, step_ms) in [
        ("100k_over_10s_step_1ms", 10_000, 1),
        ("100k_over_1h_step_1s", 3_600_000, 1_000),
        ("100k_over_1h_one_jump", 3_600_000, 3_600_000),
    ] {
        let t0 = Instant::now();
        let offs = offsets(4, BATCH as usize, span_ms);
        let mut wheel = TimerWheel::with_capacity(t0, BATCH as usize);
        let mut now = t0;
        group.bench_function(name, |b| {
            b.iter(|| {
                for (i, d) in offs.iter().enumerate() {
                    let _ = wheel.insert(now + *d, i as u64);
                }
                let end = now + Duration::from_millis(span_ms);
                let mut fired = 0u64;
                while now < end {
                    now += Duration::from_millis(step_ms);
                    while let Some((_, v)) = wheel.poll_expired(now) {
                        fired += 1;
                        black_box(v);
                    }
                }
                debug_assert_eq!(fired, BATCH);
                fired
            })
        });
        assert!(wheel.is_empty());
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = insert_cancel, insert_expire
}
criterion_main!(benches);
