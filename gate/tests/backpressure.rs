//! A flood of pipelined requests across shards with tiny backend channels: every request is
//! answered — accepted, or refused BACKEND_UNAVAILABLE, never silence — nothing deadlocks, and
//! the gate serves normally afterwards.

mod support;

use std::collections::HashMap;

use gate::client::expect_response;
use gate::protocol::{cmd, pb};
use router::im::{ConvKey, partition_of_conv};
use support::im::{SINGLE, client_msg_id, send_req, send_text, take_push, uids_on};
use support::{TestGate, WAIT};

const BACKEND_UNAVAILABLE: u32 = 5;
const PARTITIONS: u32 = 64;

#[test]
fn pipelined_flood_through_full_backend_channels_is_answered_and_the_gate_recovers() {
    let gate = TestGate::start_with(|c| {
        c.backend.queue = 16;
        c.limits.msgs_per_sec = 100_000;
        c.limits.burst = 100_000;
    });
    // A sender on each shard, writing to and pulling from conversations hosted on the other
    // shard, so SEND's store hop and PULL's first hop both cross a channel.
    let senders = [uids_on(0, 5000, 1)[0], uids_on(1, 5000, 1)[0]];
    let peers: Vec<Vec<u64>> = (0..2)
        .map(|side| {
            uids_on(1 - side, 6000, 400)
                .into_iter()
                .filter(|&peer| {
                    let conv = ConvKey::single(senders[side], peer);
                    partition_of_conv(conv, PARTITIONS) % 2 != side as u32
                })
                .take(20)
                .collect()
        })
        .collect();
    let mut clients: Vec<_> = senders.iter().map(|&uid| gate.login(uid, "d").0).collect();
    const FLOOD: usize = 1500;
    let mut asked: Vec<HashMap<u32, u8>> = vec![HashMap::new(); 2];
    for i in 0..FLOOD {
        for (side, client) in clients.iter_mut().enumerate() {
            let to = peers[side][i % peers[side].len()];
            let send = send_req(SINGLE, to, client_msg_id(), b"flood");
            let seq = client.request(cmd::SEND, &send).expect("send SEND");
            asked[side].insert(seq, cmd::SEND);
            let pull = pb::PullReq {
                conv_type: SINGLE,
                conv_id: to,
                limit: 1,
                ..Default::default()
            };
            let seq = client.request(cmd::PULL, &pull).expect("send PULL");
            asked[side].insert(seq, cmd::PULL);
        }
    }
    let mut codes: HashMap<(u8, u32), usize> = HashMap::new();
    for (side, client) in clients.iter_mut().enumerate() {
        for (&seq, &command) in &asked[side] {
            let frame = client
                .recv_response(seq, WAIT)
                .expect("every request is answered");
            let code = match command {
                cmd::SEND => {
                    expect_response::<pb::SendResp>(&frame, cmd::SEND)
                        .expect("SendResp")
                        .code
                }
                _ => {
                    expect_response::<pb::PullResp>(&frame, cmd::PULL)
                        .expect("PullResp")
                        .code
                }
            };
            assert!(
                code == 0 || code == BACKEND_UNAVAILABLE,
                "{command:#x} answered code {code}"
            );
            *codes.entry((command, code)).or_default() += 1;
        }
    }
    eprintln!("flood answers (cmd, code) -> count: {codes:?}");
    assert_eq!(codes.values().sum::<usize>(), 4 * FLOOD);
    assert!(
        codes.get(&(cmd::SEND, 0)).copied().unwrap_or(0) > 0,
        "the backend took no SEND"
    );

    // Afterwards: a fresh pair chats normally across shards.
    let (a, b) = (uids_on(0, 7000, 1)[0], uids_on(1, 7000, 1)[0]);
    let (mut alice, _) = gate.login(a, "d");
    let (mut bob, _) = gate.login(b, "d");
    let sent = send_text(&mut alice, SINGLE, b, "still here");
    let push = take_push(&mut bob);
    assert_eq!((push.msg_id, push.from), (sent.msg_id, a));
    gate.stop();
}
