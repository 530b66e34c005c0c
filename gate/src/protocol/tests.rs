//! Codec tests: the byte-exact vectors of `protocol-vectors.json`, streams split at every offset,
//! every header refusal, and a deterministic fuzz loop. Pure: no IO, no clock, no threads.

use bytes::{Bytes, BytesMut};
use prost::Message;
use serde_json::{Map, Value};

use super::{
    Code, DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameError, HEADER_LEN, Header, MAGIC, MsgType,
    VERSION, cmd, encode_frame, encode_frame_into, pb,
};

const VECTORS: &str = include_str!("../../tests/data/protocol-vectors.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("protocol-vectors.json is JSON")
}

fn from_hex(hex: &str) -> Vec<u8> {
    assert_eq!(hex.len() % 2, 0, "odd hex length: {hex}");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The named fields of one vector; every field must be used, so a misspelt or unknown name in
/// the JSON fails the test instead of silently encoding a default.
struct Fields {
    what: String,
    map: Map<String, Value>,
}

impl Fields {
    fn new(what: &str, value: &Value) -> Self {
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("{what}: fields are not an object"))
            .clone();
        Self {
            what: what.to_owned(),
            map,
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    fn u64(&mut self, key: &str) -> u64 {
        self.take(key).map_or(0, |v| {
            v.as_u64()
                .unwrap_or_else(|| panic!("{}.{key} is not a u64: {v}", self.what))
        })
    }

    fn u32(&mut self, key: &str) -> u32 {
        let v = self.u64(key);
        u32::try_from(v).unwrap_or_else(|_| panic!("{}.{key} = {v} is not a u32", self.what))
    }

    fn bool(&mut self, key: &str) -> bool {
        self.take(key).is_some_and(|v| {
            v.as_bool()
                .unwrap_or_else(|| panic!("{}.{key} is not a bool: {v}", self.what))
        })
    }

    fn string(&mut self, key: &str) -> String {
        self.take(key).map_or_else(String::new, |v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{}.{key} is not a string: {v}", self.what))
                .to_owned()
        })
    }

    /// `bytes` fields are written in the vectors as UTF-8 text.
    fn bytes(&mut self, key: &str) -> Bytes {
        Bytes::from(self.string(key))
    }

    fn list(&mut self, key: &str) -> Vec<Value> {
        self.take(key).map_or_else(Vec::new, |v| {
            v.as_array()
                .unwrap_or_else(|| panic!("{}.{key} is not a list: {v}", self.what))
                .clone()
        })
    }

    fn strings(&mut self, key: &str) -> Vec<String> {
        let what = format!("{}.{key}", self.what);
        self.list(key)
            .iter()
            .map(|v| {
                v.as_str()
                    .unwrap_or_else(|| panic!("{what} holds a non-string: {v}"))
                    .to_owned()
            })
            .collect()
    }

    fn u64s(&mut self, key: &str) -> Vec<u64> {
        let what = format!("{}.{key}", self.what);
        self.list(key)
            .iter()
            .map(|v| {
                v.as_u64()
                    .unwrap_or_else(|| panic!("{what} holds a non-u64: {v}"))
            })
            .collect()
    }

    fn nested<T>(&mut self, key: &str, build: impl Fn(&mut Self) -> T) -> Vec<T> {
        let what = format!("{}.{key}", self.what);
        self.list(key)
            .iter()
            .map(|v| {
                let mut f = Fields::new(&what, v);
                let m = build(&mut f);
                f.done();
                m
            })
            .collect()
    }

    fn done(self) {
        assert!(
            self.map.is_empty(),
            "{}: fields not in the message: {:?}",
            self.what,
            self.map.keys().collect::<Vec<_>>()
        );
    }
}

fn conv_update(f: &mut Fields) -> pb::ConvUpdate {
    pb::ConvUpdate {
        conv_type: f.u32("conv_type"),
        conv_id: f.u64("conv_id"),
        latest_msg_id: f.u64("latest_msg_id"),
        unread: f.u32("unread"),
    }
}

fn push_msg(f: &mut Fields) -> pb::PushMsg {
    pb::PushMsg {
        msg_id: f.u64("msg_id"),
        conv_type: f.u32("conv_type"),
        conv_id: f.u64("conv_id"),
        from: f.u64("from"),
        to: f.u64("to"),
        content_type: f.u32("content_type"),
        body: f.bytes("body"),
        server_time_ms: f.u64("server_time_ms"),
        client_msg_id: f.u64("client_msg_id"),
    }
}

/// Builds `M` from the named fields (all of which must be used), checks that it encodes to
/// `hex`, and that `hex` decodes back to it.
fn check_message<M>(what: &str, mut f: Fields, hex: &str, build: impl FnOnce(&mut Fields) -> M)
where
    M: Message + Default + PartialEq + std::fmt::Debug,
{
    let msg = build(&mut f);
    f.done();
    assert_eq!(
        to_hex(&msg.encode_to_vec()),
        hex,
        "{what} encodes to the vector"
    );
    let decoded = M::decode(Bytes::from(from_hex(hex))).expect("vector decodes");
    assert_eq!(decoded, msg, "{what} decodes back to the named fields");
}

/// Builds the named message from `fields` and checks it against `hex`.
fn check_message_vector(name: &str, fields: &Value, hex: &str) {
    let f = Fields::new(name, fields);
    match name {
        "LoginReq" => check_message(name, f, hex, |f| pb::LoginReq {
            uid: f.u64("uid"),
            token: f.string("token"),
            device_id: f.string("device_id"),
            platform: f.u32("platform"),
            client_version: f.string("client_version"),
        }),
        "LoginResp" => check_message(name, f, hex, |f| pb::LoginResp {
            code: f.u32("code"),
            message: f.string("message"),
            heartbeat_secs: f.u32("heartbeat_secs"),
            server_time_ms: f.u64("server_time_ms"),
            session_id: f.u64("session_id"),
            gate_id: f.string("gate_id"),
            max_frame: f.u32("max_frame"),
        }),
        "Kick" => check_message(name, f, hex, |f| pb::Kick {
            reason: f.u32("reason"),
            message: f.string("message"),
            reconnect_to: f.strings("reconnect_to"),
            retry_after_ms: f.u32("retry_after_ms"),
        }),
        "SendReq" => check_message(name, f, hex, |f| pb::SendReq {
            client_msg_id: f.u64("client_msg_id"),
            conv_type: f.u32("conv_type"),
            to: f.u64("to"),
            content_type: f.u32("content_type"),
            body: f.bytes("body"),
        }),
        "SendResp" => check_message(name, f, hex, |f| pb::SendResp {
            code: f.u32("code"),
            msg_id: f.u64("msg_id"),
            server_time_ms: f.u64("server_time_ms"),
            message: f.string("message"),
        }),
        "PushMsg" => check_message(name, f, hex, push_msg),
        "Ack" => check_message(name, f, hex, |f| pb::Ack {
            msg_ids: f.u64s("msg_ids"),
        }),
        "Notify" => check_message(name, f, hex, |f| pb::Notify {
            updates: f.nested("updates", conv_update),
        }),
        "PullReq" => check_message(name, f, hex, |f| pb::PullReq {
            conv_type: f.u32("conv_type"),
            conv_id: f.u64("conv_id"),
            after_msg_id: f.u64("after_msg_id"),
            limit: f.u32("limit"),
            before_msg_id: f.u64("before_msg_id"),
        }),
        "PullResp" => check_message(name, f, hex, |f| pb::PullResp {
            code: f.u32("code"),
            msgs: f.nested("msgs", push_msg),
            has_more: f.bool("has_more"),
        }),
        "ReadReq" => check_message(name, f, hex, |f| pb::ReadReq {
            conv_type: f.u32("conv_type"),
            conv_id: f.u64("conv_id"),
            read_up_to: f.u64("read_up_to"),
        }),
        "ReadReceipt" => check_message(name, f, hex, |f| pb::ReadReceipt {
            conv_type: f.u32("conv_type"),
            conv_id: f.u64("conv_id"),
            reader: f.u64("reader"),
            read_up_to: f.u64("read_up_to"),
        }),
        "SyncResp" => check_message(name, f, hex, |f| pb::SyncResp {
            code: f.u32("code"),
            convs: f.nested("convs", conv_update),
            total_unread: f.u32("total_unread"),
            has_more: f.bool("has_more"),
        }),
        "BizReq" => check_message(name, f, hex, |f| pb::BizReq {
            service: f.string("service"),
            method: f.string("method"),
            payload: f.bytes("payload"),
        }),
        "BizResp" => check_message(name, f, hex, |f| pb::BizResp {
            code: f.u32("code"),
            payload: f.bytes("payload"),
            message: f.string("message"),
        }),
        "BizPush" => check_message(name, f, hex, |f| pb::BizPush {
            topic: f.string("topic"),
            payload: f.bytes("payload"),
        }),
        "Error" => check_message(name, f, hex, |f| pb::Error {
            code: f.u32("code"),
            message: f.string("message"),
        }),
        "Result" => check_message(name, f, hex, |f| pb::Result {
            code: f.u32("code"),
            message: f.string("message"),
        }),
        other => panic!("vector names a message the codec does not know: {other}"),
    }
}

#[test]
fn message_vectors_encode_byte_exact_and_decode_back() {
    let v = vectors();
    let messages = v["messages"].as_array().expect("messages is a list");
    assert!(!messages.is_empty());
    for m in messages {
        let name = m["message"].as_str().expect("message name");
        let hex = m["hex"].as_str().expect("hex");
        check_message_vector(name, &m["fields"], hex);
    }
}

/// Decodes a frame's body as the message PROTOCOL.md names for its cmd and msg_type and encodes
/// the frame again.
fn reencode_as<M: Message + Default>(frame: &Frame) -> Bytes {
    let body = M::decode(frame.body.clone()).expect("frame body decodes as its message");
    encode_frame(frame.cmd, frame.msg_type, frame.log_id, frame.seq, &body)
}

fn reencode(frame: &Frame) -> Bytes {
    use MsgType::{Notify, Request, Response};
    match (frame.cmd, frame.msg_type) {
        (cmd::LOGIN, Request) => reencode_as::<pb::LoginReq>(frame),
        (cmd::LOGIN, Response) => reencode_as::<pb::LoginResp>(frame),
        (cmd::LOGOUT | cmd::PING, Request | Response) | (cmd::SYNC, Request) => {
            reencode_as::<()>(frame)
        }
        (cmd::KICK, Notify) => reencode_as::<pb::Kick>(frame),
        (cmd::SEND, Request) => reencode_as::<pb::SendReq>(frame),
        (cmd::SEND, Response) => reencode_as::<pb::SendResp>(frame),
        (cmd::PUSH, Notify) => reencode_as::<pb::PushMsg>(frame),
        (cmd::ACK, Notify) => reencode_as::<pb::Ack>(frame),
        (cmd::NOTIFY, Notify) => reencode_as::<pb::Notify>(frame),
        (cmd::PULL, Request) => reencode_as::<pb::PullReq>(frame),
        (cmd::PULL, Response) => reencode_as::<pb::PullResp>(frame),
        (cmd::READ, Request) => reencode_as::<pb::ReadReq>(frame),
        (cmd::READ, Response) => reencode_as::<pb::Result>(frame),
        (cmd::READ_RECEIPT, Notify) => reencode_as::<pb::ReadReceipt>(frame),
        (cmd::SYNC, Response) => reencode_as::<pb::SyncResp>(frame),
        (cmd::BIZ, Request) => reencode_as::<pb::BizReq>(frame),
        (cmd::BIZ, Response) => reencode_as::<pb::BizResp>(frame),
        (cmd::BIZ_PUSH, Notify) => reencode_as::<pb::BizPush>(frame),
        (cmd::ERROR, Response | Notify) => reencode_as::<pb::Error>(frame),
        (c, t) => panic!("no body type for cmd {c:#04x} msg_type {t:?}"),
    }
}

#[test]
fn frame_vectors_decode_and_reencode_byte_exact() {
    let v = vectors();
    let frames = v["frames"].as_array().expect("frames is a list");
    assert!(!frames.is_empty());
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for f in frames {
        let what = f["what"].as_str().expect("what");
        let num = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{what}: {k}"));
        let wire = from_hex(f["hex"].as_str().expect("hex"));
        let mut buf = BytesMut::from(&wire[..]);
        let frame = decoder
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .unwrap_or_else(|| panic!("{what}: incomplete"));
        assert!(buf.is_empty(), "{what}: one vector is one whole frame");
        assert_eq!(u64::from(frame.cmd), num("cmd"), "{what}: cmd");
        assert_eq!(frame.msg_type as u64, num("msg_type"), "{what}: msg_type");
        assert_eq!(u64::from(frame.log_id), num("log_id"), "{what}: log_id");
        assert_eq!(u64::from(frame.seq), num("seq"), "{what}: seq");
        assert_eq!(&frame.body[..], &wire[HEADER_LEN..], "{what}: body");
        assert_eq!(
            to_hex(&reencode(&frame)),
            to_hex(&wire),
            "{what}: re-encodes"
        );
    }
}

/// A 22-byte header with arbitrary (possibly invalid) values.
fn header(version: u32, cmd: u8, msg_type: u8, log_id: u32, seq: u32, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC.to_be_bytes());
    h.extend_from_slice(&version.to_be_bytes());
    h.push(cmd);
    h.push(msg_type);
    h.extend_from_slice(&log_id.to_be_bytes());
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Several frames of different cmds: empty bodies, small ones, and a PUSH of a few hundred bytes.
fn sample_frames() -> Vec<Frame> {
    let login = pb::LoginReq {
        uid: 150,
        token: "t".into(),
        device_id: "phone-1".into(),
        platform: 2,
        client_version: "1.0".into(),
    };
    let push = pb::PushMsg {
        msg_id: 1_234_567_890_123,
        conv_type: 2,
        conv_id: 9001,
        from: 7,
        to: 9001,
        content_type: 1,
        body: Bytes::from((0..300u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>()),
        server_time_ms: 1_764_201_600_123,
        client_msg_id: 77,
    };
    let ack = pb::Ack {
        msg_ids: vec![3, 270, 86_942],
    };
    let error = pb::Error {
        code: Code::NotLoggedIn.wire(),
        message: "not logged in".into(),
    };
    let frame = |cmd, msg_type, log_id, seq, body: Vec<u8>| Frame {
        cmd,
        msg_type,
        log_id,
        seq,
        body: Bytes::from(body),
    };
    vec![
        frame(cmd::PING, MsgType::Request, 0x0102_0304, 7, vec![]),
        frame(cmd::LOGIN, MsgType::Request, 9, 1, login.encode_to_vec()),
        frame(cmd::PUSH, MsgType::Notify, 0, 0, push.encode_to_vec()),
        frame(cmd::PING, MsgType::Response, 0x0102_0304, 7, vec![]),
        frame(cmd::ACK, MsgType::Notify, 5, 0, ack.encode_to_vec()),
        frame(
            cmd::ERROR,
            MsgType::Response,
            u32::MAX,
            u32::MAX,
            error.encode_to_vec(),
        ),
        frame(cmd::SYNC, MsgType::Request, 11, 2, vec![]),
    ]
}

/// Frames `frames` by hand (independently of `encode_frame`), back to back.
fn encode_all(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        let len = u32::try_from(f.body.len()).expect("test bodies are small");
        out.extend(header(
            VERSION,
            f.cmd,
            f.msg_type as u8,
            f.log_id,
            f.seq,
            len,
        ));
        out.extend_from_slice(&f.body);
    }
    out
}

/// Feeds `chunks` one after another, decoding after each until the decoder wants more bytes.
/// Checks that `Ok(None)` leaves the buffer untouched. Panics on `Err`.
fn feed<'a>(decoder: &FrameDecoder, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    break;
                }
                Err(e) => panic!("valid stream refused: {e}"),
            }
        }
    }
    assert!(buf.is_empty(), "bytes left over: {}", to_hex(&buf));
    frames
}

#[test]
fn coalesced_frames_decode_in_order() {
    let frames = sample_frames();
    let wire = encode_all(&frames);
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    assert_eq!(feed(&decoder, [&wire[..]]), frames);
}

#[test]
fn stream_split_at_every_offset_decodes_the_same_frames() {
    let frames = sample_frames();
    let wire = encode_all(&frames);
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for at in 0..=wire.len() {
        let (a, b) = wire.split_at(at);
        assert_eq!(feed(&decoder, [a, b]), frames, "split at {at}");
    }
}

#[test]
fn stream_fed_one_byte_at_a_time_decodes_the_same_frames() {
    let frames = sample_frames();
    let wire = encode_all(&frames);
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    assert_eq!(feed(&decoder, wire.chunks(1)), frames);
}

#[test]
fn encode_frame_into_appends_what_encode_frame_returns() {
    let push = pb::PushMsg {
        msg_id: 5,
        body: Bytes::from_static(b"hi"),
        ..Default::default()
    };
    let mut out = BytesMut::from(&b"prefix"[..]);
    encode_frame_into(&mut out, cmd::PUSH, MsgType::Notify, 0, 0, &push);
    encode_frame_into(&mut out, cmd::PING, MsgType::Request, 1, 2, &());
    let mut want = b"prefix".to_vec();
    want.extend_from_slice(&encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &push));
    want.extend_from_slice(&encode_frame(cmd::PING, MsgType::Request, 1, 2, &()));
    assert_eq!(&out[..], &want[..]);
    let ping = encode_frame(cmd::PING, MsgType::Request, 1, 2, &());
    assert_eq!(ping.len(), HEADER_LEN, "an empty body is a bare header");
    assert_eq!(&ping[18..22], &[0, 0, 0, 0], "length 0");
}

#[test]
fn empty_buffer_and_partial_magic_wait_for_more() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for n in 0..HEADER_LEN {
        let wire = encode_frame(cmd::PING, MsgType::Request, 1, 2, &());
        let mut buf = BytesMut::from(&wire[..n]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "{n} header bytes");
        assert_eq!(buf.len(), n);
    }
}

#[test]
fn bad_magic_is_refused() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut wire = header(VERSION, cmd::PING, 0, 1, 2, 0);
    wire[3] = b'X';
    let err = decoder.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
    assert_eq!(err, FrameError::BadMagic);
    assert_eq!(err.code(), None, "bad magic closes without ERROR");
    assert_eq!(err.header(), None);
}

#[test]
fn bad_magic_is_refused_at_the_first_wrong_byte() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for bytes in [
        &b"G"[..],
        b"X",
        b"\0",
        b"GET ",
        b"GET /ws HTTP/1.1\r\n",
        b"IX",
        b"IMX",
        b"IMGX",
        b"imgw",
    ] {
        let mut buf = BytesMut::from(bytes);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(FrameError::BadMagic),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for prefix in [&b"I"[..], b"IM", b"IMG", b"IMGW"] {
        assert_eq!(decoder.decode(&mut BytesMut::from(prefix)), Ok(None));
    }
}

#[test]
fn unsupported_version_is_refused_with_code_and_echoes_header() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for version in [0, 2, u32::MAX] {
        let wire = header(version, cmd::LOGIN, 0, 0xAABB_CCDD, 41, 10);
        let err = decoder
            .decode(&mut BytesMut::from(&wire[..]))
            .expect_err("refused from the header alone");
        assert!(
            matches!(err, FrameError::UnsupportedVersion { .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), Some(Code::UnsupportedVersion));
        let h = err.header().expect("header kept");
        assert_eq!((h.version, h.log_id, h.seq), (version, 0xAABB_CCDD, 41));
        assert_eq!((h.cmd, h.msg_type, h.len), (cmd::LOGIN, 0, 10));
    }
}

#[test]
fn unsupported_version_is_reported_before_msg_type_and_length() {
    // Another version may define other msg_types and sizes: the version decides the answer.
    let decoder = FrameDecoder::new(1024);
    let wire = header(2, cmd::LOGIN, 9, 1, 2, u32::MAX);
    let err = decoder.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
    assert_eq!(err.code(), Some(Code::UnsupportedVersion));
}

#[test]
fn bad_msg_type_is_refused_without_code() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    for msg_type in [3, 4, 0x80, 255] {
        let wire = header(VERSION, cmd::PING, msg_type, 3, 4, 0);
        let err = decoder.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
        assert!(matches!(err, FrameError::BadMsgType { .. }), "{err:?}");
        assert_eq!(err.code(), None, "bad msg_type closes without ERROR");
        assert_eq!(err.header().map(|h| h.msg_type), Some(msg_type));
    }
}

#[test]
fn length_above_max_frame_is_refused_from_the_header_alone() {
    for max in [0, 1024, DEFAULT_MAX_FRAME] {
        let decoder = FrameDecoder::new(max);
        for len in [max + 1, max + 2, u32::MAX] {
            // Only the 22 header bytes are buffered: no body byte is waited for.
            let wire = header(VERSION, cmd::SEND, 0, 7, 8, len);
            let err = decoder.decode(&mut BytesMut::from(&wire[..])).unwrap_err();
            assert_eq!(
                err,
                FrameError::TooLarge {
                    header: Header::parse(&wire).expect("22 bytes"),
                    max
                }
            );
            assert_eq!(err.code(), Some(Code::TooLarge));
            let h = err.header().expect("header kept");
            assert_eq!((h.log_id, h.seq, h.len), (7, 8, len));
            assert_eq!(
                decoder.frame_len_hint(&wire),
                HEADER_LEN,
                "never sized to a refused body"
            );
        }
        // A header announcing exactly max_frame is accepted and waits for its body.
        let wire = header(VERSION, cmd::SEND, 0, 7, 8, max);
        let mut buf = BytesMut::from(&wire[..]);
        if max == 0 {
            assert!(decoder.decode(&mut buf).expect("accepted").is_some());
        } else {
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert_eq!(buf.len(), HEADER_LEN);
        }
    }
}

#[test]
fn length_of_exactly_max_frame_decodes_once_the_body_arrives() {
    for max in [1024, DEFAULT_MAX_FRAME] {
        let decoder = FrameDecoder::new(max);
        let body: Vec<u8> = (0..max).map(|i| (i % 256) as u8).collect();
        let mut wire = header(VERSION, cmd::BIZ, 0, 1, 2, max);
        wire.extend_from_slice(&body);
        let total = HEADER_LEN + max as usize;
        assert_eq!(decoder.frame_len_hint(&wire), total);
        let mut buf = BytesMut::from(&wire[..total - 1]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "one body byte missing");
        assert_eq!(buf.len(), total - 1);
        buf.extend_from_slice(&wire[total - 1..]);
        let frame = decoder
            .decode(&mut buf)
            .expect("accepted")
            .expect("complete");
        assert_eq!(frame.body.len(), max as usize);
        assert_eq!(&frame.body[..], &body[..]);
        assert!(buf.is_empty());
    }
}

#[test]
fn unknown_command_decodes_as_a_frame() {
    let decoder = FrameDecoder::new(DEFAULT_MAX_FRAME);
    let mut wire = header(VERSION, 0x55, 0, 21, 22, 3);
    wire.extend_from_slice(b"\x08\x01\x10");
    let mut buf = BytesMut::from(&wire[..]);
    let frame = decoder
        .decode(&mut buf)
        .expect("a frame")
        .expect("complete");
    assert_eq!(
        frame,
        Frame {
            cmd: 0x55,
            msg_type: MsgType::Request,
            log_id: 21,
            seq: 22,
            body: Bytes::from_static(b"\x08\x01\x10"),
        }
    );
    assert!(buf.is_empty());
}

#[test]
fn unknown_protobuf_fields_are_ignored() {
    let login = pb::LoginReq {
        uid: 150,
        token: "t".into(),
        device_id: "d1".into(),
        platform: 3,
        client_version: "2.0".into(),
    };
    let mut body = login.encode_to_vec();
    // Field 99, varint 1: tag (99 << 3) | 0 = 792 = 0x98 0x06.
    body.extend_from_slice(&[0x98, 0x06, 0x01]);
    // Field 99 again, length-delimited "xyz": tag (99 << 3) | 2 = 794 = 0x9a 0x06.
    body.extend_from_slice(&[0x9a, 0x06, 0x03, b'x', b'y', b'z']);
    // Field 100, fixed64, between known fields is fine too.
    body.extend_from_slice(&[0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(pb::LoginReq::decode(&body[..]), Ok(login.clone()));

    // The same through a frame.
    let mut wire = header(VERSION, cmd::LOGIN, 0, 1, 1, body.len() as u32);
    wire.extend_from_slice(&body);
    let frame = FrameDecoder::new(DEFAULT_MAX_FRAME)
        .decode(&mut BytesMut::from(&wire[..]))
        .expect("a frame")
        .expect("complete");
    assert_eq!(pb::LoginReq::decode(frame.body), Ok(login));
}

/// xorshift64*: deterministic, dependency-free randomness for the fuzz loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`; `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// How a fuzz run ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// The input ran out while the decoder waited for more.
    Pending(Vec<Frame>),
    /// The decoder refused the stream after these frames.
    Refused(Vec<Frame>, FrameError),
}

/// Feeds `wire` in random chunks, decoding until `Err` or `Ok(None)` after each, and checks the
/// decoder's invariants on every step. With `hinted`, reads are sized like a reader that trusts
/// `frame_len_hint`: it never asks for more than the frame at the front needs.
fn fuzz_drive(decoder: &FrameDecoder, wire: &[u8], rng: &mut Rng, hinted: bool) -> Outcome {
    let limit = HEADER_LEN + decoder.max_frame() as usize;
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let mut n = 1 + rng.below(rest.len().min(2 * limit));
        if hinted {
            let want = decoder.frame_len_hint(&buf) - buf.len();
            n = n.min(want);
        }
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        if hinted {
            assert!(
                buf.len() <= limit,
                "a hinted reader buffered {} bytes",
                buf.len()
            );
        }
        loop {
            let before = buf.clone();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= decoder.max_frame() as usize);
                    assert_eq!(before.len() - buf.len(), HEADER_LEN + frame.body.len());
                    assert_eq!(
                        &before[HEADER_LEN..HEADER_LEN + frame.body.len()],
                        &frame.body[..]
                    );
                    frames.push(frame);
                }
                Ok(None) => {
                    assert_eq!(buf, before, "Ok(None) consumed bytes");
                    let hint = decoder.frame_len_hint(&buf);
                    assert!(hint <= limit, "hint {hint} above {limit}");
                    assert!(
                        buf.len() < hint,
                        "Ok(None) with {} bytes buffered for a frame of {hint}",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    assert_eq!(buf, before, "Err consumed bytes");
                    match &e {
                        FrameError::BadMagic => assert!(e.header().is_none()),
                        _ => assert!(e.header().is_some()),
                    }
                    return Outcome::Refused(frames, e);
                }
            }
        }
    }
    Outcome::Pending(frames)
}

fn random_frame(rng: &mut Rng, max: u32) -> Frame {
    let len = match rng.below(4) {
        0 => 0,
        1 => max as usize,
        _ => rng.below(max as usize + 1),
    };
    Frame {
        cmd: rng.byte(),
        msg_type: MsgType::from_wire(rng.below(3) as u8).expect("0..3"),
        log_id: rng.next() as u32,
        seq: rng.next() as u32,
        body: Bytes::from(rng.bytes(len)),
    }
}

#[test]
fn random_bytes_never_panic_or_overbuffer() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..4000 {
        let max = [0, 1, 64, 300][round % 4];
        let decoder = FrameDecoder::new(max);
        let mut wire = Vec::new();
        // Most random bytes fail on the first byte; give later checks a chance with real
        // magic, and sometimes a real version and a plausible length.
        match rng.below(4) {
            0 => {}
            1 => wire.extend_from_slice(&MAGIC.to_be_bytes()),
            _ => {
                let msg_type = rng.below(4) as u8;
                let len = rng.below(max as usize + 3) as u32;
                let version = if rng.below(8) == 0 {
                    rng.next() as u32
                } else {
                    VERSION
                };
                wire = header(version, rng.byte(), msg_type, rng.next() as u32, 0, len);
            }
        }
        let n = rng.below(2 * (HEADER_LEN + max as usize) + 1);
        wire.extend(rng.bytes(n));
        let hinted = rng.below(2) == 0;
        let _ = fuzz_drive(&decoder, &wire, &mut rng, hinted);
    }
}

#[test]
fn mutated_streams_never_panic_or_overbuffer() {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for round in 0..3000 {
        let max = [16, 64, 300][round % 3];
        let decoder = FrameDecoder::new(max);
        let frames: Vec<Frame> = (0..1 + rng.below(6))
            .map(|_| random_frame(&mut rng, max))
            .collect();
        let mut wire = encode_all(&frames);
        let hinted = rng.below(2) == 0;
        let mutations = rng.below(4);
        if mutations == 0 {
            // Random chunking alone changes nothing.
            assert_eq!(
                fuzz_drive(&decoder, &wire, &mut rng, hinted),
                Outcome::Pending(frames),
                "round {round}"
            );
            continue;
        }
        for _ in 0..mutations {
            match rng.below(4) {
                // Overwrite a byte, often inside a header.
                0 | 1 => {
                    let at = rng.below(wire.len());
                    wire[at] = rng.byte();
                }
                // Insert a byte.
                2 => {
                    let at = rng.below(wire.len() + 1);
                    wire.insert(at, rng.byte());
                }
                // Drop a byte.
                _ => {
                    if wire.len() > 1 {
                        let at = rng.below(wire.len());
                        wire.remove(at);
                    }
                }
            }
        }
        let _ = fuzz_drive(&decoder, &wire, &mut rng, hinted);
    }
}

#[test]
fn ack_ids_decode_packed_unpacked_and_mixed_bodies_alike() {
    let ids = vec![1u64, 300, 1 << 40, u64::MAX, 7];
    let packed = pb::Ack {
        msg_ids: ids.clone(),
    }
    .encode_to_vec();
    assert_eq!(packed[0], 0x0A, "prost packs a repeated integer");
    let decode = |body: &[u8]| {
        let mut got = vec![99];
        super::decode_ack_ids(body, &mut got).map(|()| got)
    };
    let mut want = vec![99];
    want.extend(&ids);
    assert_eq!(decode(&packed), Ok(want.clone()));
    // Unpacked (tag 0x08 per id), and packed followed by an unknown field: the prost path.
    let mut unpacked = Vec::new();
    for &id in &ids {
        unpacked.push(0x08);
        prost::encoding::encode_varint(id, &mut unpacked);
    }
    assert_eq!(decode(&unpacked), Ok(want.clone()));
    let mut extra = packed.clone();
    extra.extend([0x10, 5]);
    assert_eq!(decode(&extra), Ok(want));
    assert_eq!(decode(&[]), Ok(vec![99]));
    // A packed run cut inside a varint, or a length past the end, is an error.
    assert!(decode(&[0x0A, 2, 0x80, 0x80]).is_err());
    assert!(decode(&[0x0A, 5, 1]).is_err());
    // Eleven bytes, or ten that pass 64 bits: an error, as prost says.
    let mut long = vec![0x0A, 11];
    long.extend([0xFF; 10]);
    long.push(0x01);
    assert!(decode(&long).is_err());
    let mut wide = vec![0x0A, 10];
    wide.extend([0xFF; 9]);
    wide.push(0x02);
    assert!(decode(&wide).is_err());
}
