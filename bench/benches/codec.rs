//! Criterion benchmarks of the client frame codec (`gate::protocol`), on fixed in-memory inputs.
//!
//! What each figure means:
//! - `codec/decode_1000_coalesced`: one call sequence of `FrameDecoder::decode` over a buffer
//!   holding 1,000 frames as one big read would deliver them (alternating PING requests with an
//!   empty body and PUSH notifies with a 64-byte message body, 1,000 frames in all). Reported as
//!   frames/s (`Throughput::Elements(1000)`); the time is per 1,000 frames. Bodies are split off
//!   the read buffer, not copied or parsed. Filling the buffer is setup and is not timed.
//! - `codec/encode_push_into_reused`: `encode_frame_into` of one PUSH frame (`PushMsg` with a
//!   64-byte body) into a `BytesMut` that is cleared and reused, as a writer appending to its
//!   output buffer would. Frames/s; the time is per frame.
//! - `codec/encode_push_to_bytes`: `encode_frame` of the same PUSH into a freshly allocated
//!   `Bytes`, the fan-out path (encode once, share with every recipient). Frames/s; includes the
//!   allocation.
//! - `codec/decode_push_body`: `PushMsg::decode` of that PUSH body with prost, from `Bytes`, so
//!   the `body` field shares the buffer instead of being copied. Messages/s.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use gate::protocol::{
    DEFAULT_MAX_FRAME, FrameDecoder, MsgType, cmd, encode_frame, encode_frame_into, pb,
};
use prost::Message;

const FRAMES: usize = 1_000;

fn push_msg() -> pb::PushMsg {
    pb::PushMsg {
        msg_id: 1_234_567_890_123,
        conv_type: 1,
        conv_id: 7,
        from: 7,
        to: 42,
        content_type: 1,
        body: Bytes::from(vec![b'x'; 64]),
        server_time_ms: 1_764_201_600_123,
        client_msg_id: 11_400_714_819_323_198_485,
    }
}

/// 1,000 frames back to back: PING requests and PUSH notifies, alternating.
fn coalesced_stream() -> Bytes {
    let push = push_msg();
    let mut out = BytesMut::new();
    for i in 0..FRAMES {
        let seq = u32::try_from(i).expect("small");
        if i % 2 == 0 {
            encode_frame_into(&mut out, cmd::PING, MsgType::Request, seq, seq, &());
        } else {
            encode_frame_into(&mut out, cmd::PUSH, MsgType::Notify, seq, 0, &push);
        }
    }
    out.freeze()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let stream = coalesced_stream();
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("decode_1000_coalesced", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&stream[..]),
            |buf| {
                let mut n = 0usize;
                while let Ok(Some(frame)) = decoder.decode(buf) {
                    n += black_box(frame).body.len();
                }
                assert!(buf.is_empty(), "every frame decoded");
                n
            },
            BatchSize::SmallInput,
        );
    });

    let push = push_msg();
    g.throughput(Throughput::Elements(1));
    let mut out = BytesMut::with_capacity(256);
    g.bench_function("encode_push_into_reused", |b| {
        b.iter(|| {
            out.clear();
            encode_frame_into(
                &mut out,
                cmd::PUSH,
                MsgType::Notify,
                black_box(9),
                0,
                black_box(&push),
            );
            black_box(out.len())
        });
    });

    g.bench_function("encode_push_to_bytes", |b| {
        b.iter(|| {
            encode_frame(
                cmd::PUSH,
                MsgType::Notify,
                black_box(9),
                0,
                black_box(&push),
            )
        });
    });

    let body = Bytes::from(push.encode_to_vec());
    g.bench_function("decode_push_body", |b| {
        b.iter(|| pb::PushMsg::decode(black_box(body.clone())).expect("valid PushMsg"));
    });

    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
