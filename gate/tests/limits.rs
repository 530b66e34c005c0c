//! Limits (`[limits]`): the request rate per connection, devices per uid, connections per gate.

mod support;

use gate::client::{ClientError, decode_body};
use gate::protocol::{MsgType, cmd, pb};
use support::{TestGate, WAIT, assert_alive};

const RATE_LIMITED: u32 = 4;

#[test]
fn requests_above_the_rate_get_rate_limited_and_the_connection_stays() {
    let gate = TestGate::start_with(|c| {
        c.limits.msgs_per_sec = 1;
        c.limits.burst = 3;
    });
    // LOGIN spends one of the three tokens.
    let (mut client, _) = gate.login(11, "d");
    let seqs: Vec<u32> = (0..4)
        .map(|_| client.request(cmd::SYNC, &()).expect("send SYNC"))
        .collect();
    let mut codes = Vec::new();
    for seq in seqs {
        let frame = client.recv_response(seq, WAIT).expect("SYNC answered");
        let resp: pb::SyncResp = decode_body(&frame).expect("SyncResp");
        codes.push(resp.code);
    }
    // Two tokens left after LOGIN: two answered, two refused (no token comes back in time at
    // 1 a second unless the machine stalls for a second, which would only make this pass more).
    assert_eq!(
        codes.iter().filter(|&&c| c == RATE_LIMITED).count(),
        2,
        "{codes:?}"
    );
    assert_eq!(&codes[..2], &[0, 0], "{codes:?}");
    // PINGs never count, and the connection stays.
    for _ in 0..10 {
        assert_alive(&mut client);
    }
    gate.stop();
}

#[test]
fn a_new_device_beyond_the_limit_gets_code_4_and_a_known_one_still_logs_in() {
    let gate = TestGate::start_with(|c| c.limits.devices_per_uid = 2);
    let (mut phone, _) = gate.login(21, "phone");
    let (_laptop, _) = gate.login(21, "laptop");
    let mut tablet = gate.connect();
    let resp = tablet.login(21, "dev", "tablet").expect("LOGIN answered");
    assert_eq!(resp.code, RATE_LIMITED, "{resp:?}");
    assert_alive(&mut tablet); // refused but open until the login deadline
    // Reusing a device_id is never refused: it replaces (and kicks) the old session.
    let (_phone2, resp) = gate.login(21, "phone");
    assert_eq!(resp.code, 0);
    support::assert_kicked(&mut phone, 1);
    gate.stop();
}

#[test]
fn connections_beyond_the_gate_limit_get_kick_2_with_the_peers() {
    let gate = TestGate::start_with(|c| {
        c.limits.max_connections = 2; // one per shard
        c.gate.peers = vec!["127.0.0.2:7000".into(), "127.0.0.3:7000".into()];
    });
    // Three connections on two shards of one each: at least one is turned away.
    let mut clients: Vec<_> = (0..3).map(|_| gate.connect()).collect();
    let mut refused = 0;
    for client in &mut clients {
        let seq = client.request(cmd::PING, &()).expect("send PING");
        match client.recv_frame(WAIT) {
            Ok(f) if f.cmd == cmd::PING && f.msg_type == MsgType::Response && f.seq == seq => {}
            Ok(f) if f.cmd == cmd::KICK => {
                let kick: pb::Kick = decode_body(&f).expect("Kick");
                assert_eq!(kick.reason, 2);
                assert_eq!(kick.reconnect_to, ["127.0.0.2:7000", "127.0.0.3:7000"]);
                assert!((1000..=5000).contains(&kick.retry_after_ms), "{kick:?}");
                assert!(matches!(client.recv_frame(WAIT), Err(ClientError::Closed)));
                refused += 1;
            }
            other => panic!("expected a PING answer or KICK 2, got {other:?}"),
        }
    }
    assert!(refused >= 1, "three connections fit a gate limited to two");
    gate.stop();
}
