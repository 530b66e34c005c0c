//! Criterion benchmark of a connection's outbound queue (`gate::shard::OutQueue`): one PUSH
//! queued on 10,000 connections' queues, then every queue drained as after a `sendmsg` that
//! took everything. On TCP the frame is queued as it is; on WebSocket it is preceded by its
//! binary-message header, a static `Bytes` (`gate::protocol::ws::binary_header`), as
//! `ConnShared::push` does: one more buffer per frame, never a copy of the frame.
//!
//! The gate's allocator (mimalloc) is used, as in the gate: the figures are mostly allocation
//! (a drained queue frees its buffer, the next push allocates it again).

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate::protocol::pb::PushMsg;
use gate::protocol::ws::binary_header;
use gate::protocol::{MsgType, cmd, encode_frame};
use gate::shard::OutQueue;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SESSIONS: usize = 10_000;

fn outqueue(c: &mut Criterion) {
    let push = PushMsg {
        msg_id: 1,
        conv_type: 2,
        conv_id: 9001,
        from: 7,
        to: 9001,
        content_type: 1,
        body: Bytes::from_static(&[b'x'; 64]),
        server_time_ms: 1_764_201_600_000,
        client_msg_id: 1,
    };
    let frame = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push);
    let mut group = c.benchmark_group("outqueue");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(SESSIONS as u64));
    for (name, websocket) in [("tcp_push_10k", false), ("websocket_push_10k", true)] {
        let mut queues: Vec<OutQueue> = (0..SESSIONS).map(|_| OutQueue::default()).collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                for queue in queues.iter_mut() {
                    if black_box(websocket) {
                        queue.push(binary_header(frame.len()));
                    }
                    queue.push(frame.clone());
                }
                for queue in queues.iter_mut() {
                    // As after a sendmsg that took everything.
                    queue.advance(queue.bytes());
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, outqueue);
criterion_main!(benches);
