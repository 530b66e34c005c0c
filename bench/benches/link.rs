//! Criterion benchmarks of the link codec (`router::link::frame`), on fixed in-memory inputs.
//!
//! What each figure means:
//! - `link/encode_256_sends`: one loop turn's worth of uplink: 256 `Send` requests (64-byte
//!   bodies) pushed through a `FrameEncoder` into a reused `BytesMut` and the frame closed, as a
//!   gate shard's link writer does. Messages/s; the time is per 256 messages.
//! - `link/decode_256_sends`: `FrameDecoder::decode` of that frame from a buffer refilled from a
//!   copy (the copy is setup, not timed), as the router's link reader does. Messages/s.
//! - `link/encode_256_delivers`: the downlink: 256 `Deliver`s (64-byte body, 8 recipients each).
//! - `link/decode_256_delivers`: decoding them.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use router::link::frame::{DEFAULT_MAX_FRAME, FrameDecoder, FrameEncoder};
use router::link::{self, LinkMsg, link_msg::Body};

const MSGS: usize = 256;

fn sends() -> Vec<LinkMsg> {
    (0..MSGS as u64)
        .map(|i| {
            LinkMsg::request(
                i + 1,
                Body::Send(link::Send {
                    from: 1_000 + i,
                    client_msg_id: 11_400_714_819_323_198_485 ^ i,
                    conv_type: 1,
                    to: 2_000 + i,
                    content_type: 1,
                    body: Bytes::from(vec![b'x'; 64]),
                    session_id: (i << 10) | 1,
                    log_id: i as u32,
                }),
            )
        })
        .collect()
}

fn delivers() -> Vec<LinkMsg> {
    (0..MSGS as u64)
        .map(|i| {
            LinkMsg::event(Body::Deliver(link::Deliver {
                msg: Some(link::Msg {
                    msg_id: 1_234_567_890_123 + i,
                    conv_type: 2,
                    from: 7,
                    to: 99,
                    content_type: 1,
                    body: Bytes::from(vec![b'x'; 64]),
                    server_time_ms: 1_764_201_600_123,
                    client_msg_id: i,
                }),
                recipients: (0..8).map(|r| 10_000 + r * 17 + i).collect(),
                exclude_session: 1025,
            }))
        })
        .collect()
}

fn encode(msgs: &[LinkMsg], out: &mut BytesMut) {
    let mut encoder = FrameEncoder::new(DEFAULT_MAX_FRAME);
    for msg in msgs {
        encoder.push(msg, out).expect("fits");
    }
    encoder.finish(out);
}

fn bench_link(c: &mut Criterion) {
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Elements(MSGS as u64));
    group.measurement_time(Duration::from_secs(3));
    for (name, msgs) in [("sends", sends()), ("delivers", delivers())] {
        let mut out = BytesMut::with_capacity(64 << 10);
        group.bench_function(format!("encode_{MSGS}_{name}"), |b| {
            b.iter(|| {
                out.clear();
                encode(black_box(&msgs), &mut out);
                black_box(out.len())
            })
        });
        let mut frame = BytesMut::new();
        encode(&msgs, &mut frame);
        let frame = frame.freeze();
        let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
        group.bench_function(format!("decode_{MSGS}_{name}"), |b| {
            b.iter_batched(
                || BytesMut::from(&frame[..]),
                |mut buf| {
                    let batch = decoder.decode(&mut buf).expect("valid").expect("whole");
                    black_box(batch.msgs.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench_link);
criterion_main!(benches);
