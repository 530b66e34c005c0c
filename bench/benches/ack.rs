//! Criterion benchmarks of `gate::delivery::AckTracker`, the per-session record of PUSHes
//! awaiting ACK, on virtual time (the tracker never reads the clock; we pass `now`).
//!
//! - `ack/burst64_batched_ack/*`: track 64 PUSHes, then one ACK naming all 64; throughput is
//!   per PUSH (one track plus its share of the ACK). `from_empty` starts each burst from an
//!   empty (unallocated) tracker, as an otherwise idle session does; `warm` keeps one PUSH
//!   pending so the tracker's memory stays allocated.
//! - `ack/steady_1000_pending`: 1,000 PUSHes pending; each iteration tracks one more and ACKs
//!   the oldest (the FIFO head goes dead and is skipped lazily).
//! - `ack/single_in_flight`: track one, ACK it: the tracker allocates and frees its state every
//!   time (the price of an idle session holding nothing).
//! - `ack/fanout_1000_sessions_1024_pending`: fan-out's access pattern, beyond the caches: 1,000
//!   trackers with ~1,024 pending each; one message tracked in every session per iteration, and
//!   batched ACKs of the 64 oldest (per PUSH).
//! - `ack/timeout_resend_1000`: 1,000 PUSHes come due together; one `handle_timeout` resends
//!   them all (per PUSH).
//!
//! A frame names its msg_id, so each message has its own (`OutFrame::push`, one `Rc`). Where a
//! benchmark tracks a message in one session only (`burst64`, `steady`, `single`), the figure
//! includes building that frame and freeing it when its ACK comes, as a single chat's PUSH
//! costs; where many sessions share it (`fanout_1000_sessions`), one frame per message is
//! built, as the gate does per message and shard.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gate::delivery::{AckConfig, AckTracker, ConvRef, OutFrame, SharedFrame};

const CFG: AckConfig = AckConfig {
    ack_timeout: Duration::from_millis(5_000),
    max_backoff: Duration::from_millis(60_000),
    max_retries: 3,
    max_pending: 4_096,
};

const CONV: ConvRef = ConvRef {
    conv_type: 2,
    conv_id: 42,
};

/// The 160-byte PUSH frame of `msg_id`.
fn frame(msg_id: u64, conv: ConvRef) -> SharedFrame {
    OutFrame::push(Bytes::from_static(&[0u8; 160]), msg_id, conv)
}

fn burst(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack/burst64_batched_ack");
    group.throughput(Throughput::Elements(64));
    let mut delivered = Vec::with_capacity(64);

    for (name, keep_one) in [("from_empty", false), ("warm", true)] {
        let t0 = Instant::now();
        let mut t = AckTracker::new();
        if keep_one {
            t.track(frame(0, CONV), t0, &CFG).expect("room");
        }
        let mut now = t0;
        // Msg ids only grow: each burst takes the next 64.
        let mut ids: Vec<u64> = (1..=64).collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                now += Duration::from_micros(1);
                ids.iter_mut().for_each(|id| *id += 64);
                for &id in &ids {
                    t.track(frame(id, CONV), now, &CFG).expect("room");
                }
                delivered.clear();
                t.ack(black_box(&ids), &mut delivered);
                black_box(delivered.len())
            })
        });
        assert_eq!(t.len(), usize::from(keep_one));
    }
    group.finish();
}

fn steady(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack");
    group.throughput(Throughput::Elements(1));
    let t0 = Instant::now();
    let mut now = t0;
    let mut t = AckTracker::new();
    const WINDOW: u64 = 1_000;
    for id in 0..WINDOW {
        t.track(frame(id, CONV), now, &CFG).expect("room");
    }
    let mut next = WINDOW;
    let mut delivered = Vec::with_capacity(1);
    group.bench_function("steady_1000_pending", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            t.track(frame(next, CONV), now, &CFG).expect("room");
            delivered.clear();
            t.ack(&[next - WINDOW], &mut delivered);
            next += 1;
            black_box(delivered.len())
        })
    });
    assert_eq!(t.len(), WINDOW as usize);

    let mut t = AckTracker::new();
    let mut id = 0u64;
    group.bench_function("single_in_flight", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            id += 1;
            t.track(frame(id, CONV), now, &CFG).expect("room");
            delivered.clear();
            t.ack(&[id], &mut delivered);
            black_box(delivered.len())
        })
    });
    assert!(t.is_empty());
    group.finish();
}

/// Fan-out's access pattern: `SESSIONS` trackers with about `WINDOW` PUSHes pending each (24 MB
/// of slots, beyond the caches); each iteration tracks one message in every session, and
/// every 64 iterations each session ACKs its 64 oldest in one batch. Per PUSH.
fn many_sessions(c: &mut Criterion) {
    const SESSIONS: usize = 1_000;
    const WINDOW: u64 = 1_024;
    const BATCH: u64 = 64;
    let mut group = c.benchmark_group("ack");
    group.throughput(Throughput::Elements(SESSIONS as u64));
    let t0 = Instant::now();
    let mut now = t0;
    let mut trackers: Vec<AckTracker> = (0..SESSIONS).map(|_| AckTracker::new()).collect();
    for id in 1..=WINDOW {
        let f = frame(id, CONV);
        for t in &mut trackers {
            t.track(f.clone(), now, &CFG).expect("room");
        }
    }
    let mut next = WINDOW + 1;
    let mut batch: Vec<u64> = Vec::with_capacity(BATCH as usize);
    let mut delivered = Vec::with_capacity(BATCH as usize);
    group.bench_function("fanout_1000_sessions_1024_pending", |b| {
        b.iter(|| {
            now += Duration::from_micros(1);
            // One frame per message, shared by every session.
            let f = frame(next, CONV);
            for t in &mut trackers {
                t.track(f.clone(), now, &CFG).expect("room");
            }
            if next.is_multiple_of(BATCH) {
                batch.clear();
                batch.extend(next - WINDOW - BATCH + 1..=next - WINDOW);
                for t in &mut trackers {
                    delivered.clear();
                    t.ack(&batch, &mut delivered);
                }
            }
            next += 1;
            black_box(delivered.len())
        })
    });
    group.finish();
}

fn timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group("ack");
    group.throughput(Throughput::Elements(1_000));
    let t0 = Instant::now();
    let mut resend = Vec::with_capacity(1_000);
    let mut undelivered = Vec::new();
    group.bench_function("timeout_resend_1000", |b| {
        b.iter_batched_ref(
            || {
                let mut t = AckTracker::new();
                for id in 0..1_000u64 {
                    // Ids arrive out of order across conversations; resends come out sorted.
                    let id = id.wrapping_mul(0x9E37_79B9) % 1_000_003;
                    let conv = ConvRef {
                        conv_type: 1,
                        conv_id: id % 7,
                    };
                    t.track(frame(id, conv), t0, &CFG).expect("room");
                }
                t
            },
            |t| {
                resend.clear();
                let gave_up =
                    t.handle_timeout(t0 + CFG.ack_timeout, &CFG, &mut resend, &mut undelivered);
                black_box((gave_up, resend.len()))
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = burst, steady, many_sessions, timeout
}
criterion_main!(benches);
