//! Criterion benchmark of a shard's per-recipient fan-out work, on virtual time: one message
//! encoded once as a PUSH frame (`seq = 0`, one `SharedFrame`), then for each of 10,000 sessions
//! the same frame tracked for its ACK (`AckTracker::track`) and queued on the connection's
//! outbound queue (`OutQueue::push`), then every queue drained as after a `sendmsg` and every
//! session ACKs it. The figure is per delivery:
//! what the shard spends per recipient besides the socket write (which coalesces many frames per
//! `sendmsg`; see the load generator for socket-level numbers).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gate::delivery::{AckConfig, AckTracker, ConvRef, OutFrame};
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
    let mut sessions: Vec<(AckTracker, OutQueue)> = (0..SESSIONS)
        .map(|_| (AckTracker::default(), OutQueue::default()))
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
            let frame = OutFrame::push(
                encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push),
                msg_id,
                conv,
            );
            for (acks, queue) in sessions.iter_mut() {
                let _ = acks.track(frame.clone(), t0, &cfg);
                queue.push(frame.clone());
            }
            for (acks, queue) in sessions.iter_mut() {
                // As after a sendmsg that took everything.
                queue.advance(queue.bytes());
                delivered.clear();
                acks.ack(&[msg_id], &mut delivered);
            }
            black_box(&delivered);
        })
    });
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
