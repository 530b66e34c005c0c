//! Criterion benchmark of a connection's outbound queue (`gate::shard::OutQueue`): one PUSH
//! queued on 10,000 connections' queues, then every queue drained as after a `sendmsg` that
//! took everything. The frame is one `SharedFrame` for every queue; on WebSocket the queue
//! sends it behind the binary-message header the frame carries (one more buffer, never a copy).
//!
//! The gate's allocator (mimalloc) is used, as in the gate; a drained queue keeps its buffer
//! (the gate gives it back when the connection is quiet).

use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate::delivery::OutFrame;
use gate::protocol::pb::PushMsg;
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
    let frame = OutFrame::frame(encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push));
    let mut group = c.benchmark_group("outqueue");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(SESSIONS as u64));
    for (name, websocket) in [("tcp_push_10k", false), ("websocket_push_10k", true)] {
        let mut queues: Vec<OutQueue> = (0..SESSIONS).map(|_| OutQueue::default()).collect();
        if websocket {
            queues.iter_mut().for_each(OutQueue::set_websocket);
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                for queue in queues.iter_mut() {
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
