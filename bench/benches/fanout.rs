//! Criterion benchmark of a shard's per-recipient fan-out work, on virtual time: one message
//! encoded once as a PUSH frame (`seq = 0`), then for each of 10,000 sessions the same `Bytes`
//! tracked for its ACK (`AckTracker::track`) and queued (a `VecDeque<Bytes>` push, as the
//! connection's outbound queue does), then every session ACKs it. The figure is per delivery:
//! what the shard spends per recipient besides the socket write (which coalesces many frames per
//! `sendmsg`; see the load generator for socket-level numbers).
//!
//! The `outqueue` group isolates the queueing step on the gate's real `OutQueue`, for TCP and
//! WebSocket connections, beside the plain `VecDeque<Bytes>` push the queue was before
//! WebSocket framing existed: TCP must stay at the baseline; WebSocket adds one 2-10 byte
//! header `Bytes` per frame (cut from a per-connection buffer), never a copy of the frame.

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate::delivery::{AckConfig, AckTracker, ConvRef};
use gate::protocol::pb::PushMsg;
use gate::protocol::{MsgType, cmd, encode_frame};
use gate::shard::OutQueue;

const SESSIONS: usize = 10_000;

fn fanout(c: &mut Criterion) {
    let cfg = AckConfig {
        ack_timeout: Duration::from_secs(5),
        max_backoff: Duration::from_secs(30),
        max_retries: 3,
        max_pending: 4096,
    };
    let mut sessions: Vec<(AckTracker, VecDeque<Bytes>)> = (0..SESSIONS)
        .map(|_| (AckTracker::default(), VecDeque::new()))
        .collect();
    let conv = ConvRef {
        conv_type: 2,
        conv_id: 9001,
    };
    let t0 = Instant::now();
    let mut msg_id = 1u64;
    let mut delivered = Vec::with_capacity(1);
    let mut group = c.benchmark_group("fanout");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(SESSIONS as u64));
    group.bench_function("one_message_to_10k_sessions_track_queue_ack", |b| {
        b.iter(|| {
            msg_id += 1;
            let push = PushMsg {
                msg_id,
                conv_type: 2,
                conv_id: 9001,
                from: 7,
                to: 9001,
                content_type: 1,
                body: Bytes::from_static(&[b'x'; 64]),
                server_time_ms: 1_764_201_600_000,
                client_msg_id: msg_id,
            };
            let frame = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push);
            for (acks, queue) in sessions.iter_mut() {
                let _ = acks.track(msg_id, conv, frame.clone(), t0, &cfg);
                queue.push_back(frame.clone());
            }
            for (acks, queue) in sessions.iter_mut() {
                queue.clear();
                delivered.clear();
                acks.ack(&[msg_id], &mut delivered);
            }
            black_box(&delivered);
        })
    });
    group.finish();
}

/// The outbound queue as it was before WebSocket framing (`gate/src/shard/io.rs` at the base
/// of the `ws` branch): the baseline the TCP path is measured against.
#[derive(Default)]
struct QueueBeforeWebSocket {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl QueueBeforeWebSocket {
    fn push(&mut self, frame: Bytes) {
        self.bytes += frame.len();
        self.frames.push_back(frame);
    }

    fn advance(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            if n < front.len() {
                bytes::Buf::advance(front, n);
                return;
            }
            n -= front.len();
            self.frames.pop_front();
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }
}

/// One PUSH queued on 10,000 connections' outbound queues, then every queue written out.
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
    group.bench_function("baseline_before_websocket_push_10k", |b| {
        let mut queues: Vec<QueueBeforeWebSocket> = (0..SESSIONS)
            .map(|_| QueueBeforeWebSocket::default())
            .collect();
        b.iter(|| {
            for queue in queues.iter_mut() {
                queue.push(black_box(frame.clone()));
            }
            for queue in queues.iter_mut() {
                let all = queue.bytes;
                queue.advance(all);
            }
        })
    });
    for (name, websocket) in [("tcp_push_10k", false), ("websocket_push_10k", true)] {
        let mut queues: Vec<OutQueue> = (0..SESSIONS)
            .map(|_| {
                let mut q = OutQueue::default();
                if websocket {
                    q.set_websocket();
                }
                q
            })
            .collect();
        group.bench_function(name, |b| {
            b.iter(|| {
                for queue in queues.iter_mut() {
                    black_box(queue.push(frame.clone()));
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

criterion_group!(benches, fanout, outqueue);
criterion_main!(benches);
