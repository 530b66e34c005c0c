//! WebSocket codec and handshake tests: every frame split at every offset, the RFC's own
//! examples, 7/16/64-bit lengths, fragmentation with control frames in between, and every
//! refusal. Pure: no IO, no clock.

use bytes::BytesMut;

use super::codec::{CLOSE_PROTOCOL_ERROR, CLOSE_TOO_LARGE, CLOSE_UNSUPPORTED_DATA};
use super::*;
use crate::protocol::{HEADER_LEN, Header, MsgType, cmd, encode_frame};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const LIMIT: usize = 1024;

fn server() -> WsDecoder {
    WsDecoder::new(Role::Server, LIMIT)
}

/// A client frame with every field chosen.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    write_frame(&mut out, fin, opcode, payload, Some(MASK));
    out
}

/// Every event in `wire`, fed to one decoder in pieces split at `at`.
fn decode_split(decoder: &mut WsDecoder, wire: &[u8], at: usize) -> Vec<WsEvent> {
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    for piece in [&wire[..at], &wire[at..]] {
        buf.extend_from_slice(piece);
        while let Some(event) = decoder.decode(&mut buf).expect("valid input") {
            events.push(event);
        }
    }
    assert!(buf.is_empty(), "everything consumed");
    events
}

fn error_of(decoder: &mut WsDecoder, wire: &[u8]) -> WsError {
    let mut buf = BytesMut::from(wire);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error; {} bytes left", buf.len()),
            Err(e) => return e,
        }
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn rfc_example_masked_hello_decodes() {
    // RFC 6455 5.7: a single-frame masked text "Hello" -- as binary (opcode 2) here.
    let wire = [
        0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let events = decode_split(&mut server(), &wire, wire.len());
    assert_eq!(
        events,
        vec![WsEvent::Message(BytesMut::from(&b"Hello"[..]))]
    );
}

#[test]
fn messages_of_7_16_and_64_bit_lengths_decode_at_every_split() {
    for len in [0, 1, 125, 126, 200, 65_535, 65_536, 70_000] {
        let body = payload(len);
        let wire = frame(true, 2, &body);
        let expected_header = match len {
            0..=125 => 6,
            126..=65_535 => 8,
            _ => 14,
        };
        assert_eq!(wire.len(), expected_header + len, "header size for {len}");
        let offsets: Vec<usize> = if len > 300 {
            vec![
                0,
                1,
                2,
                5,
                9,
                13,
                14,
                wire.len() / 2,
                wire.len() - 1,
                wire.len(),
            ]
        } else {
            (0..=wire.len()).collect()
        };
        for at in offsets {
            let mut decoder = WsDecoder::new(Role::Server, 100_000);
            let events = decode_split(&mut decoder, &wire, at);
            assert_eq!(
                events,
                vec![WsEvent::Message(BytesMut::from(&body[..]))],
                "len {len} split at {at}"
            );
        }
    }
}

#[test]
fn an_unfragmented_message_is_unmasked_in_place_without_a_copy() {
    let body = payload(300);
    let mut buf = frame(true, 2, &body);
    let start = buf.as_ptr() as usize;
    let Some(WsEvent::Message(msg)) = server().decode(&mut buf).expect("valid") else {
        panic!("expected a message");
    };
    assert_eq!(&msg[..], &body[..]);
    assert_eq!(
        msg.as_ptr() as usize,
        start + 8,
        "the message is the read buffer itself"
    );
}

#[test]
fn fragments_are_reassembled_with_control_frames_between_them() {
    let body = payload(600);
    let mut wire = frame(false, 2, &body[..100]);
    wire.extend_from_slice(&frame(true, 9, b"are you there"));
    wire.extend_from_slice(&frame(false, 0, &body[100..400]));
    wire.extend_from_slice(&frame(true, 10, b""));
    wire.extend_from_slice(&frame(true, 0, &body[400..]));
    wire.extend_from_slice(&frame(true, 2, b"next"));
    for at in 0..=wire.len() {
        let events = decode_split(&mut server(), &wire, at);
        assert_eq!(
            events,
            vec![
                WsEvent::Ping(bytes::Bytes::from_static(b"are you there")),
                WsEvent::Pong,
                WsEvent::Message(BytesMut::from(&body[..])),
                WsEvent::Message(BytesMut::from(&b"next"[..])),
            ],
            "split at {at}"
        );
    }
}

#[test]
fn close_frames_carry_their_code() {
    let mut wire = frame(true, 8, b"");
    let mut with_code = 1000u16.to_be_bytes().to_vec();
    with_code.extend_from_slice(b"bye");
    wire.extend_from_slice(&frame(true, 8, &with_code));
    wire.extend_from_slice(&frame(true, 8, &4001u16.to_be_bytes()));
    let events = decode_split(&mut server(), &wire, 3);
    assert_eq!(
        events,
        vec![
            WsEvent::Close { code: None },
            WsEvent::Close { code: Some(1000) },
            WsEvent::Close { code: Some(4001) },
        ]
    );
}

#[test]
fn bad_close_payloads_are_protocol_errors() {
    let mut bad_utf8 = 1000u16.to_be_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    for payload in [
        vec![3u8],
        1005u16.to_be_bytes().to_vec(),
        999u16.to_be_bytes().to_vec(),
        5000u16.to_be_bytes().to_vec(),
        bad_utf8,
    ] {
        let err = error_of(&mut server(), &frame(true, 8, &payload));
        assert_eq!(err, WsError::BadClose, "{payload:?}");
        assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
    }
}

#[test]
fn an_unmasked_client_frame_is_refused_from_its_header() {
    let mut wire = BytesMut::new();
    write_frame(&mut wire, true, 2, b"hello", None);
    let err = error_of(&mut server(), &wire[..2]);
    assert_eq!(err, WsError::Unmasked);
    assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
}

#[test]
fn a_client_refuses_masked_server_frames_and_reads_unmasked_ones() {
    let mut client = WsDecoder::new(Role::Client, LIMIT);
    assert_eq!(
        error_of(&mut client, &frame(true, 2, b"x")),
        WsError::MaskedByServer
    );
    let mut wire = BytesMut::new();
    write_frame(&mut wire, true, 2, b"hello", None);
    let mut client = WsDecoder::new(Role::Client, LIMIT);
    assert_eq!(
        decode_split(&mut client, &wire, 1),
        vec![WsEvent::Message(BytesMut::from(&b"hello"[..]))]
    );
}

#[test]
fn reserved_bits_are_refused() {
    for bit in [0x40u8, 0x20, 0x10] {
        let mut wire = frame(true, 2, b"x");
        wire[0] |= bit;
        assert_eq!(
            error_of(&mut server(), &wire[..1 + 1]),
            WsError::ReservedBits,
            "bit {bit:#x}"
        );
    }
}

#[test]
fn reserved_opcodes_are_refused() {
    for opcode in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let err = error_of(&mut server(), &frame(true, opcode, b"x")[..2]);
        assert_eq!(err, WsError::ReservedOpcode(opcode));
        assert_eq!(err.close_code(), CLOSE_PROTOCOL_ERROR);
    }
}

#[test]
fn control_frames_must_be_whole_and_short() {
    assert_eq!(
        error_of(&mut server(), &frame(false, 9, b"x")),
        WsError::BadControlFrame
    );
    assert_eq!(
        error_of(&mut server(), &frame(true, 9, &payload(126))[..4]),
        WsError::BadControlFrame
    );
    assert_eq!(
        error_of(&mut server(), &frame(true, 8, &payload(200))),
        WsError::BadControlFrame
    );
}

#[test]
fn fragmentation_out_of_order_is_refused() {
    assert_eq!(
        error_of(&mut server(), &frame(true, 0, b"x")),
        WsError::UnexpectedContinuation
    );
    let mut wire = frame(false, 2, b"a");
    wire.extend_from_slice(&frame(true, 2, b"b"));
    assert_eq!(error_of(&mut server(), &wire), WsError::UnfinishedMessage);
    let mut wire = frame(false, 2, b"a");
    wire.extend_from_slice(&frame(true, 1, b"b"));
    assert_eq!(error_of(&mut server(), &wire), WsError::UnfinishedMessage);
}

#[test]
fn text_messages_are_refused_with_1003_from_the_header() {
    for fin in [true, false] {
        let err = error_of(&mut server(), &frame(fin, 1, b"hello")[..2]);
        assert_eq!(err, WsError::Text);
        assert_eq!(err.close_code(), CLOSE_UNSUPPORTED_DATA);
    }
}

#[test]
fn an_oversize_message_is_refused_from_its_header_before_its_payload() {
    let wire = frame(true, 2, &payload(LIMIT + 1));
    // Only the header has arrived: refused at once, no imgate header to echo.
    let err = error_of(&mut server(), &wire[..8]);
    assert_eq!(
        err,
        WsError::TooLarge {
            len: LIMIT as u64 + 1,
            max: LIMIT,
            head: None
        }
    );
    assert_eq!(err.close_code(), CLOSE_TOO_LARGE);
    // A limit of exactly LIMIT is fine.
    let ok = frame(true, 2, &payload(LIMIT));
    assert_eq!(decode_split(&mut server(), &ok, 0).len(), 1);
}

#[test]
fn an_oversize_message_reports_its_imgate_header_when_it_arrived() {
    let imgate = encode_frame(cmd::PING, MsgType::Request, 77, 5, &());
    let mut body = imgate.to_vec();
    body.resize(LIMIT + 10, 0);
    let err = error_of(&mut server(), &frame(true, 2, &body)[..8 + HEADER_LEN]);
    let WsError::TooLarge {
        head: Some(head), ..
    } = err
    else {
        panic!("expected TooLarge with the head, got {err:?}");
    };
    let header = Header::parse(&head).expect("22 bytes");
    assert_eq!((header.seq, header.log_id, header.cmd), (5, 77, cmd::PING));
}

#[test]
fn an_oversize_fragmented_message_is_refused_at_the_fragment_that_passes_the_limit() {
    let imgate = encode_frame(cmd::SEND, MsgType::Request, 9, 3, &());
    let mut first = imgate.to_vec();
    first.resize(600, 1);
    let mut wire = frame(false, 2, &first);
    wire.extend_from_slice(&frame(false, 0, &payload(400)));
    let next = frame(true, 0, &payload(100));
    wire.extend_from_slice(&next[..2]);
    let mut decoder = server();
    let err = error_of(&mut decoder, &wire);
    let WsError::TooLarge { len, max, head } = err else {
        panic!("expected TooLarge, got {err:?}");
    };
    assert_eq!((len, max), (1100, LIMIT));
    let header = Header::parse(&head.expect("first fragment kept")).expect("22 bytes");
    assert_eq!((header.seq, header.log_id), (3, 9));
}

#[test]
fn a_64_bit_length_beyond_any_limit_is_refused() {
    let mut wire = vec![0x82, 0xFF];
    wire.extend_from_slice(&u64::MAX.to_be_bytes());
    wire.extend_from_slice(&MASK);
    assert!(matches!(
        error_of(&mut server(), &wire),
        WsError::TooLarge { len: u64::MAX, .. }
    ));
}

#[test]
fn server_headers_use_the_shortest_length_form() {
    for (len, used, second) in [
        (0usize, 2usize, 0u8),
        (125, 2, 125),
        (126, 4, 126),
        (65_535, 4, 126),
        (65_536, 10, 127),
    ] {
        let (header, n) = server_header(Opcode::Binary, len);
        assert_eq!((n, header[0], header[1]), (used, 0x82, second), "len {len}");
        // A client decodes the header plus payload back.
        let mut wire = BytesMut::from(&header[..n]);
        wire.extend_from_slice(&payload(len));
        let mut client = WsDecoder::new(Role::Client, 100_000);
        assert_eq!(
            decode_split(&mut client, &wire, n),
            vec![WsEvent::Message(BytesMut::from(&payload(len)[..]))]
        );
    }
}

#[test]
fn close_and_pong_frames_are_well_formed() {
    assert_eq!(&close_frame(1002)[..], &[0x88, 0x02, 0x03, 0xEA]);
    assert_eq!(&pong_frame(b"hi")[..], &[0x8A, 0x02, b'h', b'i']);
}

#[test]
fn masking_eight_at_a_time_matches_the_definition() {
    for len in 0..40 {
        let original = payload(len);
        let mut fast = original.clone();
        apply_mask(&mut fast, MASK);
        let slow: Vec<u8> = original
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[i % 4])
            .collect();
        assert_eq!(fast, slow, "len {len}");
    }
}

#[test]
fn frame_len_hint_sizes_the_next_frame() {
    let decoder = server();
    let wire = frame(true, 2, &payload(300));
    assert_eq!(decoder.frame_len_hint(&wire[..1]), 2);
    assert_eq!(decoder.frame_len_hint(&wire[..8]), 308);
    assert_eq!(
        decoder.frame_len_hint(&frame(true, 2, &payload(5000))[..8]),
        8 + LIMIT
    );
}

// ---- handshake ----

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn policy() -> Policy<'static> {
    Policy {
        alias: "",
        allowed_origins: &[],
        max_head: 8192,
    }
}

fn request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gate\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn rfc_example_key_gives_the_rfc_accept() {
    assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn a_valid_upgrade_is_accepted_whatever_the_split_and_leaves_what_follows() {
    let mut wire = request("/ws?token=1", "").into_bytes();
    let head_len = wire.len();
    wire.extend_from_slice(&frame(true, 2, b"x"));
    for at in 0..head_len {
        assert_eq!(parse_upgrade(&wire[..at], &policy()), Ok(None), "at {at}");
    }
    let upgrade = parse_upgrade(&wire, &policy())
        .expect("valid")
        .expect("complete");
    assert_eq!(upgrade.used, head_len);
    assert_eq!(upgrade.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let response = String::from_utf8(upgrade.response().to_vec()).expect("ASCII");
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    assert!(response.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(response.ends_with("\r\n\r\n"));
}

#[test]
fn the_alias_is_served_and_other_paths_are_not_found() {
    let aliased = Policy {
        alias: "/chat",
        ..policy()
    };
    assert!(matches!(
        parse_upgrade(request("/chat", "").as_bytes(), &aliased),
        Ok(Some(_))
    ));
    assert!(matches!(
        parse_upgrade(request("/ws", "").as_bytes(), &aliased),
        Ok(Some(_))
    ));
    for path in ["/chat", "/", "/ws/", "/wss", "/index.html"] {
        let err = parse_upgrade(request(path, "").as_bytes(), &policy()).unwrap_err();
        assert_eq!((err.clone(), err.status()), (HandshakeError::NotFound, 404));
    }
    let plain = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(
        parse_upgrade(plain, &policy()),
        Err(HandshakeError::NotFound)
    );
}

#[test]
fn a_get_of_another_path_is_handed_back_with_its_path_without_the_query() {
    let wire = b"GET /imgate.js?v=2 HTTP/1.1\r\nHost: x\r\n\r\n";
    for at in 0..wire.len() {
        assert_eq!(parse_request(&wire[..at], &policy()), Ok(None), "at {at}");
    }
    assert_eq!(
        parse_request(wire, &policy()),
        Ok(Some(Request::Get { path: "/imgate.js" }))
    );
    // Even with upgrade headers: only /ws and the alias upgrade.
    assert_eq!(
        parse_request(request("/", "").as_bytes(), &policy()),
        Ok(Some(Request::Get { path: "/" }))
    );
    assert!(matches!(
        parse_request(request("/ws", "").as_bytes(), &policy()),
        Ok(Some(Request::Upgrade(_)))
    ));
    // The head is checked before the path.
    let bad = b"GET / HTTP/1.1\r\nno colon\r\n\r\n";
    assert_eq!(
        parse_request(bad, &policy()),
        Err(HandshakeError::Malformed)
    );
}

#[test]
fn bad_upgrades_get_400() {
    let base = request("/ws", "");
    let cases: Vec<(String, &str)> = vec![
        (base.replace("HTTP/1.1", "HTTP/1.0"), "HTTP/1.0"),
        (base.replace("Host: gate\r\n", ""), "no Host"),
        (base.replace("Upgrade: websocket\r\n", ""), "no Upgrade"),
        (
            base.replace("Upgrade: websocket", "Upgrade: h2c"),
            "Upgrade h2c",
        ),
        (
            base.replace("Connection: keep-alive, Upgrade", "Connection: keep-alive"),
            "Connection without upgrade",
        ),
        (base.replace(KEY, "c2hvcnQ="), "key of 5 bytes"),
        (base.replace(KEY, "not base64!"), "key not base64"),
        (
            base.replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            "no key",
        ),
        (
            request("/ws", &format!("Sec-WebSocket-Key: {KEY}\r\n")),
            "two keys",
        ),
    ];
    for (wire, what) in cases {
        let err = parse_upgrade(wire.as_bytes(), &policy()).unwrap_err();
        assert!(
            matches!(err, HandshakeError::BadUpgrade(_)),
            "{what}: {err:?}"
        );
        assert_eq!(err.status(), 400, "{what}");
    }
    for version in ["8", "14", ""] {
        let wire = base.replace(
            "Sec-WebSocket-Version: 13",
            &format!("Sec-WebSocket-Version: {version}"),
        );
        let err = parse_upgrade(wire.as_bytes(), &policy()).unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion);
        let response = String::from_utf8(err.response().to_vec()).expect("ASCII");
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
        assert!(
            response.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{response}"
        );
    }
}

#[test]
fn malformed_http_gets_400() {
    for wire in [
        &b"GET /ws\r\n\r\n"[..],
        b"GET  /ws HTTP/1.1\r\n\r\n",
        b"GET ws HTTP/1.1\r\n\r\n",
        b"GET /ws HTTP/2\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nbad name: x\r\n\r\n",
        b"GET /w\xffs HTTP/1.1\r\n\r\n",
    ] {
        let err = parse_upgrade(wire, &policy()).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::Malformed,
            "{:?}",
            String::from_utf8_lossy(wire)
        );
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn a_head_over_the_limit_gets_431() {
    let small = Policy {
        max_head: 128,
        ..policy()
    };
    let long = request("/ws", &format!("X-Pad: {}\r\n", "a".repeat(200)));
    assert_eq!(
        parse_upgrade(long.as_bytes(), &small),
        Err(HandshakeError::HeadTooLarge { max: 128 })
    );
    // Still incomplete but already at the limit: refused without waiting for more.
    assert_eq!(
        parse_upgrade(&long.as_bytes()[..128], &small),
        Err(HandshakeError::HeadTooLarge { max: 128 })
    );
    assert_eq!(parse_upgrade(&long.as_bytes()[..127], &small), Ok(None));
    let many = request("/ws", &"X-A: 1\r\n".repeat(70));
    assert_eq!(
        parse_upgrade(many.as_bytes(), &policy()).map_err(|e| e.status()),
        Err(431)
    );
}

#[test]
fn origins_are_checked_against_the_allowed_list() {
    let allowed = ["https://chat.example".to_string()];
    let strict = Policy {
        allowed_origins: &allowed,
        ..policy()
    };
    let from = |origin: &str| request("/ws", &format!("Origin: {origin}\r\n"));
    assert!(matches!(
        parse_upgrade(from("https://chat.example").as_bytes(), &strict),
        Ok(Some(_))
    ));
    assert!(matches!(
        parse_upgrade(from("HTTPS://Chat.Example").as_bytes(), &strict),
        Ok(Some(_))
    ));
    let err = parse_upgrade(from("https://evil.example").as_bytes(), &strict).unwrap_err();
    assert_eq!(
        (err.clone(), err.status()),
        (HandshakeError::OriginRefused, 403)
    );
    // No Origin: not a browser, not refused. An empty list allows any origin.
    assert!(matches!(
        parse_upgrade(request("/ws", "").as_bytes(), &strict),
        Ok(Some(_))
    ));
    assert!(matches!(
        parse_upgrade(from("https://evil.example").as_bytes(), &policy()),
        Ok(Some(_))
    ));
}

#[test]
fn the_client_request_is_accepted() {
    let wire = client_request("127.0.0.1:7000", "/ws", KEY, Some("https://a"));
    assert!(matches!(
        parse_upgrade(wire.as_bytes(), &policy()),
        Ok(Some(_))
    ));
}
