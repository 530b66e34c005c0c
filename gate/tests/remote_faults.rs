//! Faults on the link: a backend that accepts the handshake and never answers (every SEND gets
//! BACKEND_UNAVAILABLE at `backend.timeout_ms`, the client stays), and peers that send the
//! router garbage, a wrong version or an oversized frame (refused and closed; the gates' links
//! keep working).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gate::config::BackendKind;
use router::link::frame::{DEFAULT_MAX_FRAME, FrameDecoder, encode_batch};
use router::link::link_msg::Body;
use router::link::{self, Batch, LinkMsg};
use support::im::{self, SINGLE, take_push};
use support::{TestGate, WAIT, assert_alive};

/// Reads one link frame from a blocking socket; `None` when the peer closed first.
fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Batch> {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(batch) = decoder.decode(buf).expect("a valid frame") {
            return Some(batch);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A backend that completes every handshake and then reads and ignores everything.
fn silent_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let linked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&linked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let count = Arc::clone(&count);
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                if read_frame(&mut stream, &mut buf).is_none() {
                    return;
                }
                let welcome = LinkMsg::event(Body::Welcome(link::Welcome {
                    version: 1,
                    backend_id: "silent".into(),
                    capabilities: 0,
                    heartbeat_ms: 60_000,
                    max_frame: DEFAULT_MAX_FRAME as u32,
                }));
                let frame = encode_batch(&[welcome], DEFAULT_MAX_FRAME).expect("encode");
                if stream.write_all(&frame).is_err() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    (addr, linked)
}

fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT * 2;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_backend_that_never_answers_gets_backend_unavailable_at_the_timeout() {
    let (addr, linked) = silent_backend();
    let gate = TestGate::start_with(|c| {
        c.backend.kind = BackendKind::Remote;
        c.backend.addr = addr.to_string();
        c.backend.timeout_ms = 300;
    });
    wait_for("both shards linked", || linked.load(Ordering::SeqCst) == 2);
    let (mut client, _) = gate.login(7, "pc");
    for i in 0..3 {
        let req = im::send_req(SINGLE, 8, im::client_msg_id(), format!("m{i}").as_bytes());
        let asked = Instant::now();
        let resp = im::send(&mut client, &req);
        let took = asked.elapsed();
        assert_eq!(resp.code, 5, "BACKEND_UNAVAILABLE: {resp:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_millis(1300),
            "answered at the timeout (300 ms), not {took:?}"
        );
    }
    assert_alive(&mut client);
    gate.stop();
}

/// Bytes, then what the router does: `Some(refused code)` or `None` for a close with nothing.
fn poke(router: SocketAddr, bytes: &[u8]) -> Option<u32> {
    let mut stream = TcpStream::connect(router).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut buf = BytesMut::new();
    let batch = read_frame(&mut stream, &mut buf)?;
    let code = match batch.msgs.first().and_then(|m| m.body.as_ref()) {
        Some(Body::Refused(r)) => r.code,
        other => panic!("expected Refused, got {other:?}"),
    };
    let mut rest = [0u8; 16];
    assert_eq!(stream.read(&mut rest).ok(), Some(0), "closed after Refused");
    Some(code)
}

#[test]
fn garbage_wrong_versions_and_oversized_frames_are_refused_and_other_links_keep_working() {
    let mut config = router::config::Config::default();
    config.backend.data_dir = String::new();
    config.router.listen = "127.0.0.1:0".into();
    config.router.http_listen = String::new();
    let router = router::server::start(config.validate().expect("valid")).expect("router starts");
    let gate = TestGate::start_with(|c| {
        c.backend.kind = BackendKind::Remote;
        c.backend.addr = router.link_addr().to_string();
    });
    wait_for("both shards linked", || router.stats().links == 2);

    let hello = |version| {
        LinkMsg::event(Body::Hello(link::Hello {
            version,
            gate_id: "intruder".into(),
            shard: 0,
            shards: 1,
            capabilities: 0,
            heartbeat_ms: 1000,
            max_frame: DEFAULT_MAX_FRAME as u32,
        }))
    };
    let v2 = encode_batch(&[hello(2)], DEFAULT_MAX_FRAME).expect("encode");
    assert_eq!(poke(router.link_addr(), &v2), Some(1), "wrong version");
    let heartbeat = LinkMsg::event(Body::Heartbeat(link::Heartbeat {}));
    let not_hello = encode_batch(&[heartbeat], DEFAULT_MAX_FRAME).expect("encode");
    assert_eq!(poke(router.link_addr(), &not_hello), Some(3), "no Hello");
    assert_eq!(
        poke(
            router.link_addr(),
            &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]
        ),
        None,
        "garbage"
    );
    assert_eq!(
        poke(router.link_addr(), &u32::MAX.to_be_bytes()),
        None,
        "oversized"
    );
    assert_eq!(router.stats().links, 2, "the gate's links are untouched");

    // The gate's links still carry chat.
    let (mut a, _) = gate.login(1, "pc");
    let (mut b, _) = gate.login(2, "pc");
    wait_for("both sessions routed", || router.stats().sessions == 2);
    let sent = im::send_text(&mut a, SINGLE, 2, "still here");
    assert_eq!(take_push(&mut b).msg_id, sent.msg_id);
    gate.stop();
    router.stop();
}
