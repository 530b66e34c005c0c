//! Criterion benchmarks of the load generator's own receive path, so that the tool's cost per
//! delivery is measured, not guessed (at 10 M deliveries/s the tool's core is the first to run
//! out in the fan-out comparison).
//!
//! - `loadgen/receive_1000_pushes`: `GateHandler::feed` over one read holding 1,000 PUSH
//!   frames as the gate writes them to a fan-out member (`PushMsg` of a group message with a
//!   64-byte body whose first 8 bytes are the send stamp; msg_ids consecutive above 5,000,000;
//!   stamps shared by runs of 16 messages, as a send batch has): split each frame, read its id,
//!   sender and stamp, record the latency, append the ACK frames (64 ids each). Elements/s; the
//!   time is per 1,000 PUSHes. A fresh handler per iteration (setup, not timed), so no PUSH is
//!   taken for a resend.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gate::protocol::{MsgType, cmd, encode_frame_into, pb};

use bench::drive::{Handler, Received};
use bench::gate_conn::{GateConfig, GateHandler, Measure};
use bench::latency::Latency;

const PUSHES: u64 = 1_000;
const FIRST_ID: u64 = 5_000_000;
const GROUP: u64 = 9_000_001;

fn read_of_pushes() -> Vec<u8> {
    let mut out = BytesMut::new();
    for i in 0..PUSHES {
        let mut body = vec![b'x'; 64];
        let stamp = 1_000_000_000 + (i / 16) * 50_000;
        body[..8].copy_from_slice(&stamp.to_le_bytes());
        let push = pb::PushMsg {
            msg_id: FIRST_ID + i,
            conv_type: 2,
            conv_id: GROUP,
            from: 1_000_000,
            to: GROUP,
            content_type: 1,
            body: Bytes::from(body),
            server_time_ms: 1_764_201_600_123,
            client_msg_id: 0,
        };
        encode_frame_into(&mut out, cmd::PUSH, MsgType::Notify, 0, 0, &push);
    }
    out.to_vec()
}

fn member() -> GateHandler {
    GateHandler::new(
        &GateConfig {
            uid: 1_000_001,
            sends: None,
            pulls: None,
            measure: Measure::Delivery,
            inflight: 0,
            cmid_seed: 1,
        },
        b"",
    )
}

fn loadgen(c: &mut Criterion) {
    let mut g = c.benchmark_group("loadgen");
    g.measurement_time(Duration::from_secs(3));
    let read = read_of_pushes();
    let mut latency = Latency::new();
    g.throughput(Throughput::Elements(PUSHES));
    g.bench_function("receive_1000_pushes", |b| {
        b.iter_batched_ref(
            || (member(), Vec::with_capacity(16 * 1024)),
            |(handler, out)| {
                let mut rx = Received {
                    now_ns: 1_002_000_000,
                    latency: &mut latency,
                };
                let used = handler.feed(black_box(&read), out, &mut rx);
                black_box((used.ok(), out.len()))
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, loadgen);
criterion_main!(benches);
