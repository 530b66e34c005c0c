//! A small blocking client of the wire protocol in `shared/PROTOCOL.md`, over one
//! `std::net::TcpStream`: the integration tests drive the gate with it, and tools (the chat CLI)
//! build on it.
//!
//! [`chat`] is the `imgate-chat` command-line client: a sans-IO chat core and the blocking shell
//! that drives it over a [`Client`] (the shell, not `Client`, runs a stdin reader thread).
//!
//! [`Client`] owns one connection: the stream, its read buffer, the frame decoder (whose limit is
//! 65536 until a successful LOGIN announces the gate's `max_frame`), the next request `seq`, and a
//! bounded backlog of frames that arrived while a caller waited for a particular response.
//!
//! Invariants and policies:
//! - Every wait has a deadline: `recv_*` and `wait_closed` take a timeout, and the convenience
//!   calls (`login`, `ping`, `logout`, `call`) use [`Client::call_timeout`]. Nothing blocks
//!   forever on the gate, except a write into a full socket buffer, bounded by the write timeout
//!   set at connect.
//! - Frames are returned in arrival order. [`Client::recv_response`] keeps the frames it skips in
//!   the backlog (at most [`BACKLOG_CAP`]), and [`Client::recv_frame`] returns them first. When
//!   the backlog is full, `recv_response` stops reading and returns
//!   [`ClientError::BacklogFull`] (nothing is dropped): the caller drains it with `recv_frame`.
//! - A PING *request* from the gate is answered at once with an empty response echoing its `seq`
//!   and `log_id`, and not returned, unless [`Client::set_auto_pong`] turned that off.
//! - End of stream and a reset from the gate are both [`ClientError::Closed`], reported after
//!   every complete frame received before them; so is a request of `login`, `ping`, `logout` or
//!   `call` that cannot be written because the gate is gone (the raw `send_*` and `request`
//!   return the `io::Error` as it is).
//! - Bytes from the network end as a frame or a typed error, never a panic. After a
//!   [`ClientError::Frame`] the stream is out of step and every later read repeats that error.
//!
//! - Over TLS ([`Client::connect_tls`], [`Client::connect_wss`]) the same bytes travel inside a
//!   rustls `ClientConnection` over the same `TcpStream` (`rustls::StreamOwned`), trusting only
//!   the root certificate given; the handshake is finished (or failed) before `connect_*`
//!   returns. A TCP close without `close_notify` is an end of stream like any other.
//! - Over WebSocket ([`Client::connect_ws`]) every frame sent is one masked binary message and
//!   every binary message received is unwrapped into the same frame stream; the gate's pings
//!   are answered, and its close frame ends the stream like a TCP close (its code is kept:
//!   [`Client::ws_close_code`]). [`Client::send_raw`] writes bytes as they are on both
//!   transports (tests use it for malformed WebSocket frames).
//!
//! It never spawns a thread and keeps no state beyond this one connection.

pub mod chat;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;

use crate::protocol::ws::{
    Opcode, Role, WsDecoder, WsError, WsEvent, accept_key, client_frame, client_request,
    write_frame,
};
use crate::protocol::{
    DEFAULT_MAX_FRAME, Frame, FrameDecoder, FrameError, HEADER_LEN, MsgType, cmd, encode_frame, pb,
};

/// Most frames [`Client::recv_response`] keeps aside while it looks for a response.
pub const BACKLOG_CAP: usize = 4096;

/// `call_timeout` of a new client.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Write timeout of the socket: a gate that stops reading cannot block a writer for longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// `LoginReq.platform` this client reports: `5`, other.
const PLATFORM_OTHER: u32 = 5;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("no answer before the deadline")]
    Timeout,
    #[error("the gate closed the connection")]
    Closed,
    #[error("the gate sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("undecodable body: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The gate answered the request with ERROR (cmd 0x7F).
    #[error("refused by the gate with ERROR code {code}: {message}")]
    Refused { code: u32, message: String },
    /// A response that is neither the expected command nor ERROR, or a non-empty body where the
    /// protocol says empty.
    #[error("unexpected frame: cmd {cmd:#04x}, {msg_type:?}, seq {seq}, {body_len} body bytes")]
    Unexpected {
        cmd: u8,
        msg_type: MsgType,
        seq: u32,
        body_len: usize,
    },
    #[error("{cap} unrelated frames are waiting; drain them with recv_frame")]
    BacklogFull { cap: usize },
    #[error("the gate sent a bad WebSocket frame: {0}")]
    WebSocket(#[from] WsError),
    /// A WebSocket message that is not exactly one frame (PROTOCOL.md "Transport").
    #[error("a WebSocket message of {len} bytes is not exactly one frame")]
    NotOneFrame { len: usize },
    /// The upgrade was answered with another status than 101 (0: not HTTP at all).
    #[error("WebSocket upgrade refused with HTTP status {status}")]
    UpgradeRefused { status: u16 },
    #[error("WebSocket upgrade answered with a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] crate::tls::TlsConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is not a server name for TLS")]
    BadServerName(String),
}

impl ClientError {
    fn unexpected(frame: &Frame) -> Self {
        Self::Unexpected {
            cmd: frame.cmd,
            msg_type: frame.msg_type,
            seq: frame.seq,
            body_len: frame.body.len(),
        }
    }
}

/// Decodes the protobuf body of `frame` as `M`.
pub fn decode_body<M: Message + Default>(frame: &Frame) -> Result<M, ClientError> {
    Ok(M::decode(frame.body.clone())?)
}

/// A `log_id` derived from `seq`, distinct from it, so a response that echoes the wrong field is
/// noticed (Knuth's multiplicative hash).
pub fn log_id_for(seq: u32) -> u32 {
    seq.wrapping_mul(0x9E37_79B1)
}

/// One blocking connection to a gate (see the module doc).
pub struct Client {
    wire: Wire,
    buf: BytesMut,
    decoder: FrameDecoder,
    next_seq: u32,
    backlog: VecDeque<Frame>,
    eof: bool,
    auto_pong: bool,
    call_timeout: Duration,
    /// `Some` when frames travel over WebSocket.
    ws: Option<Box<WsTransport>>,
}

/// What carries the client's bytes: the socket itself, or TLS over it.
enum Wire {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Wire {
    /// The TCP socket under either.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(stream) => stream,
            Self::Tls(tls) => tls.get_ref(),
        }
    }

    /// Writes all of `bytes` (through TLS: encrypted and flushed to the socket).
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(stream) => stream.write_all(bytes),
            Self::Tls(tls) => {
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(stream) => stream.read(buf),
            Self::Tls(tls) => tls.read(buf),
        }
    }
}

/// The client side of a WebSocket connection.
struct WsTransport {
    decoder: WsDecoder,
    /// Bytes read and not yet unwrapped.
    raw: BytesMut,
    /// The gate's close frame code, once it came.
    close_code: Option<u16>,
    /// Mask keys (xorshift32; RFC 6455 wants them unpredictable to proxies, which a test and
    /// tool client can live without).
    mask_state: u32,
}

impl WsTransport {
    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_be_bytes()
    }
}

/// How long [`Client::connect_ws`] waits for the 101.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest upgrade answer read.
const MAX_UPGRADE_RESPONSE: usize = 4096;

impl Client {
    /// Connects with TCP_NODELAY.
    pub fn connect(addr: SocketAddr) -> io::Result<Self> {
        Self::from_stream(TcpStream::connect(addr)?)
    }

    /// Wraps a connected stream (sets TCP_NODELAY and the write timeout).
    pub fn from_stream(stream: TcpStream) -> io::Result<Self> {
        Self::from_wire(Wire::Plain(stream))
    }

    fn from_wire(wire: Wire) -> io::Result<Self> {
        wire.tcp().set_nodelay(true)?;
        wire.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok(Self {
            wire,
            buf: BytesMut::with_capacity(READ_CHUNK),
            decoder: FrameDecoder::new(DEFAULT_MAX_FRAME),
            next_seq: 1,
            backlog: VecDeque::new(),
            eof: false,
            auto_pong: true,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            ws: None,
        })
    }

    /// Connects to the gate's TLS port (`gate.tls_listen`) and finishes the handshake,
    /// checking the gate's certificate for `server_name` against `root_cert` (PEM: the gate's
    /// self-signed certificate, or the CA that signed it). Frames then travel inside TLS.
    pub fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        root_cert: &[u8],
    ) -> Result<Self, ClientError> {
        let config = crate::tls::client_config(root_cert)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
            .map_err(|_| ClientError::BadServerName(server_name.into()))?;
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(UPGRADE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let deadline = Instant::now() + UPGRADE_TIMEOUT;
        while conn.is_handshaking() {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            if let Err(err) = conn.complete_io(&mut stream) {
                return Err(handshake_error(err));
            }
        }
        Ok(Self::from_wire(Wire::Tls(Box::new(
            rustls::StreamOwned::new(conn, stream),
        )))?)
    }

    /// [`Client::connect_tls`], then the WebSocket upgrade on `path` (`wss://`).
    pub fn connect_wss(
        addr: SocketAddr,
        server_name: &str,
        root_cert: &[u8],
        path: &str,
    ) -> Result<Self, ClientError> {
        Self::connect_tls(addr, server_name, root_cert)?.upgrade(server_name, path)
    }

    /// Connects and upgrades to WebSocket on `path` (e.g. `/ws`); every frame then travels as
    /// one binary message. Checks the 101 and its `Sec-WebSocket-Accept`.
    pub fn connect_ws(addr: SocketAddr, path: &str) -> Result<Self, ClientError> {
        Self::from_stream(TcpStream::connect(addr)?)?.upgrade(&addr.to_string(), path)
    }

    /// The WebSocket upgrade on `path`, with `host` as the `Host` header.
    fn upgrade(self, host: &str, path: &str) -> Result<Self, ClientError> {
        let mut client = self;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9E37_79B9, |d| d.subsec_nanos())
            | 1;
        let mut key_bytes = [0u8; 16];
        for (i, chunk) in key_bytes.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&seed.rotate_left(i as u32 * 8).to_be_bytes());
        }
        let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key_bytes);
        let request = client_request(host, path, &key, None);
        client.wire.send(request.as_bytes())?;
        let deadline = Instant::now() + UPGRADE_TIMEOUT;
        let head_end = loop {
            if let Some(at) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if client.eof || client.buf.len() > MAX_UPGRADE_RESPONSE {
                return Err(ClientError::UpgradeRefused {
                    status: http_status(&client.buf),
                });
            }
            client.fill(deadline)?;
        };
        let head = client.buf.split_to(head_end);
        let status = http_status(&head);
        if status != 101 {
            return Err(ClientError::UpgradeRefused { status });
        }
        let want = format!("sec-websocket-accept: {}", accept_key(&key));
        let accepted = String::from_utf8_lossy(&head)
            .split("\r\n")
            .any(|line| line.eq_ignore_ascii_case(&want));
        if !accepted {
            return Err(ClientError::BadAccept);
        }
        let raw = client.buf.split();
        client.ws = Some(Box::new(WsTransport {
            decoder: WsDecoder::new(Role::Client, HEADER_LEN + MAX_WS_MESSAGE_BODY),
            raw,
            close_code: None,
            mask_state: seed,
        }));
        client.unwrap_ws()?;
        Ok(client)
    }

    /// The status code of the gate's WebSocket close frame, once one arrived.
    pub fn ws_close_code(&self) -> Option<u16> {
        self.ws.as_ref().and_then(|ws| ws.close_code)
    }

    /// Sends `payload` as one masked binary WebSocket message (a WebSocket client only; on TCP
    /// the payload is written as it is).
    pub fn send_ws_message(&mut self, payload: &[u8]) -> io::Result<()> {
        match self.ws.as_deref_mut() {
            Some(ws) => {
                let frame = client_frame(payload, ws.next_mask());
                self.wire.send(&frame)
            }
            None => self.wire.send(payload),
        }
    }

    /// The underlying TCP stream (under TLS too), e.g. for `local_addr` or `shutdown`.
    pub fn stream(&self) -> &TcpStream {
        self.wire.tcp()
    }

    /// The largest body accepted from the gate: 65536 until a LOGIN succeeds, then the gate's.
    pub fn max_frame(&self) -> u32 {
        self.decoder.max_frame()
    }

    /// The deadline of `login`, `ping`, `logout` and `call`.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Whether PING requests from the gate are answered automatically (default on). When off
    /// they are returned like any other frame.
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Frames kept aside by `recv_response`, not yet returned by `recv_frame`.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Takes a fresh request `seq` (1, 2, ...; never 0, which notify frames carry).
    pub fn next_seq(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        seq
    }

    /// Encodes and writes one frame with every header field chosen by the caller.
    pub fn send_frame(
        &mut self,
        cmd: u8,
        msg_type: MsgType,
        log_id: u32,
        seq: u32,
        body: &impl Message,
    ) -> io::Result<()> {
        let frame = encode_frame(cmd, msg_type, log_id, seq, body);
        self.send_ws_message(&frame)
    }

    /// Writes bytes as they are (malformed frames, partial frames; on WebSocket, the caller's
    /// own WebSocket frames; on TLS, inside the TLS stream).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.send(bytes)
    }

    /// Sends a request with a fresh `seq` and `log_id_for(seq)`; returns the `seq`.
    pub fn request(&mut self, cmd: u8, body: &impl Message) -> io::Result<u32> {
        let seq = self.next_seq();
        self.send_frame(cmd, MsgType::Request, log_id_for(seq), seq, body)?;
        Ok(seq)
    }

    /// Sends a notify frame (`seq` 0, `log_id` 0).
    pub fn notify(&mut self, cmd: u8, body: &impl Message) -> io::Result<()> {
        self.send_frame(cmd, MsgType::Notify, 0, 0, body)
    }

    /// The next frame: first the backlog, then the socket, waiting at most `timeout`.
    pub fn recv_frame(&mut self, timeout: Duration) -> Result<Frame, ClientError> {
        if let Some(frame) = self.backlog.pop_front() {
            return Ok(frame);
        }
        self.read_frame(Instant::now() + timeout)
    }

    /// The response (`msg_type` 1) with this `seq`, whatever its cmd (ERROR included), waiting
    /// at most `timeout`. Other frames go to the backlog, in order.
    pub fn recv_response(&mut self, seq: u32, timeout: Duration) -> Result<Frame, ClientError> {
        let is_it = |f: &Frame| f.msg_type == MsgType::Response && f.seq == seq;
        let kept = self.backlog.iter().position(is_it);
        if let Some(frame) = kept.and_then(|at| self.backlog.remove(at)) {
            return Ok(frame);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.backlog.len() >= BACKLOG_CAP {
                return Err(ClientError::BacklogFull { cap: BACKLOG_CAP });
            }
            let frame = self.read_frame(deadline)?;
            if is_it(&frame) {
                return Ok(frame);
            }
            self.backlog.push_back(frame);
        }
    }

    /// Sends a request and decodes its response as `R`. An ERROR answer is
    /// [`ClientError::Refused`]; any other cmd is [`ClientError::Unexpected`].
    pub fn call<R: Message + Default>(
        &mut self,
        cmd: u8,
        body: &impl Message,
    ) -> Result<R, ClientError> {
        let seq = self.request(cmd, body).map_err(write_error)?;
        let frame = self.recv_response(seq, self.call_timeout)?;
        expect_response(&frame, cmd)
    }

    /// LOGIN with platform "other" and this crate's version. Any `LoginResp` is `Ok`, refusals
    /// included: look at `code`. A successful one sets [`Client::max_frame`].
    pub fn login(
        &mut self,
        uid: u64,
        token: &str,
        device_id: &str,
    ) -> Result<pb::LoginResp, ClientError> {
        self.login_with(&pb::LoginReq {
            uid,
            token: token.into(),
            device_id: device_id.into(),
            platform: PLATFORM_OTHER,
            client_version: env!("CARGO_PKG_VERSION").into(),
        })
    }

    /// LOGIN with a request built by the caller; see [`Client::login`].
    pub fn login_with(&mut self, req: &pb::LoginReq) -> Result<pb::LoginResp, ClientError> {
        let resp: pb::LoginResp = self.call(cmd::LOGIN, req)?;
        if resp.code == 0 && resp.max_frame != 0 {
            self.decoder = FrameDecoder::new(resp.max_frame);
        }
        Ok(resp)
    }

    /// PING; `Ok` once the empty response arrives.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.empty_call(cmd::PING)
    }

    /// LOGOUT; `Ok` once the empty response arrives. The gate closes next: see
    /// [`Client::wait_closed`].
    pub fn logout(&mut self) -> Result<(), ClientError> {
        self.empty_call(cmd::LOGOUT)
    }

    /// Reads until the gate closes, at most `timeout`; returns the frames received before the
    /// end of the stream, the backlog first. `Timeout` if the connection is still open.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<Frame>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut frames: Vec<Frame> = self.backlog.drain(..).collect();
        loop {
            match self.read_frame(deadline) {
                Ok(frame) => frames.push(frame),
                Err(ClientError::Closed) => return Ok(frames),
                Err(e) => return Err(e),
            }
        }
    }

    fn empty_call(&mut self, cmd: u8) -> Result<(), ClientError> {
        let seq = self.request(cmd, &()).map_err(write_error)?;
        let frame = self.recv_response(seq, self.call_timeout)?;
        if frame.cmd == cmd::ERROR {
            return Err(refusal(&frame));
        }
        if frame.cmd != cmd || !frame.body.is_empty() {
            return Err(ClientError::unexpected(&frame));
        }
        Ok(())
    }

    /// The next frame from the socket (never the backlog), answering gate PINGs on the way.
    fn read_frame(&mut self, deadline: Instant) -> Result<Frame, ClientError> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf)? {
                if self.auto_pong && frame.cmd == cmd::PING && frame.msg_type == MsgType::Request {
                    self.pong(&frame)?;
                    continue;
                }
                return Ok(frame);
            }
            if self.eof {
                return Err(ClientError::Closed);
            }
            self.fill(deadline)?;
        }
    }

    fn pong(&mut self, ping: &Frame) -> Result<(), ClientError> {
        match self.send_frame(cmd::PING, MsgType::Response, ping.log_id, ping.seq, &()) {
            Ok(()) => Ok(()),
            // The gate is gone; the next read reports it as `Closed`.
            Err(e) if peer_gone(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// One read into the buffer; `Timeout` once `deadline` has passed.
    fn fill(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ClientError::Timeout);
        }
        self.wire.tcp().set_read_timeout(Some(remaining))?;
        let into = match self.ws.as_deref_mut() {
            Some(ws) => &mut ws.raw,
            None => &mut self.buf,
        };
        let start = into.len();
        into.resize(start + READ_CHUNK, 0);
        let read = self.wire.read(&mut into[start..]);
        let n = *read.as_ref().unwrap_or(&0);
        into.truncate(start + n);
        if n > 0 && self.ws.is_some() {
            self.unwrap_ws()?;
        }
        match read {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            // Spurious wakeups and the read timeout: the caller loops and rechecks the deadline.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // TLS: the gate closed the socket without close_notify (after a hand-off failure,
            // say); an end of stream all the same.
            Err(e) if peer_gone(&e) || e.kind() == io::ErrorKind::UnexpectedEof => self.eof = true,
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// A failed TLS handshake: rustls' own verdict (a bad certificate, an alert) rather than its
/// io wrapper; the read timeout is [`ClientError::Timeout`], a closed socket `Closed`.
fn handshake_error(err: io::Error) -> ClientError {
    let kind = err.kind();
    if matches!(kind, io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        return ClientError::Timeout;
    }
    if peer_gone(&err) || kind == io::ErrorKind::UnexpectedEof {
        return ClientError::Closed;
    }
    if err
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
    {
        if let Some(Ok(tls)) = err.into_inner().map(|e| e.downcast::<rustls::Error>()) {
            return ClientError::Tls(*tls);
        }
        return ClientError::Io(kind.into());
    }
    ClientError::Io(err)
}

/// Largest message body a WebSocket client accepts: the gate's largest `max_frame`.
const MAX_WS_MESSAGE_BODY: usize = 16 << 20;

impl Client {
    /// Moves every whole binary message read so far into the frame buffer, answering pings;
    /// the gate's close frame is answered and ends the stream.
    fn unwrap_ws(&mut self) -> Result<(), ClientError> {
        let Some(ws) = self.ws.as_deref_mut() else {
            return Ok(());
        };
        loop {
            match ws.decoder.decode(&mut ws.raw)? {
                None => return Ok(()),
                Some(WsEvent::Message(message)) => {
                    // Exactly one frame per binary message: a message holding two frames, or
                    // part of one, is the gate's error however the bytes would join up.
                    match self.decoder.peek(&message) {
                        Ok(Some((_, total))) if total == message.len() => {}
                        _ => return Err(ClientError::NotOneFrame { len: message.len() }),
                    }
                    self.buf.extend_from_slice(&message);
                }
                Some(WsEvent::Ping(payload)) => {
                    let mut pong = BytesMut::new();
                    write_frame(
                        &mut pong,
                        true,
                        Opcode::Pong as u8,
                        &payload,
                        Some(ws.next_mask()),
                    );
                    let _ = self.wire.send(&pong);
                }
                Some(WsEvent::Pong) => {}
                Some(WsEvent::Close { code }) => {
                    ws.close_code = Some(code.unwrap_or(1005));
                    let mut close = BytesMut::new();
                    let payload = code.map(u16::to_be_bytes);
                    let payload = payload.as_ref().map_or(&[][..], |p| &p[..]);
                    write_frame(
                        &mut close,
                        true,
                        Opcode::Close as u8,
                        payload,
                        Some(ws.next_mask()),
                    );
                    let _ = self.wire.send(&close);
                    ws.raw.clear();
                    self.eof = true;
                    return Ok(());
                }
            }
        }
    }
}

/// The status code of an HTTP response head (0 when it is not one).
fn http_status(head: &[u8]) -> u16 {
    head.strip_prefix(b"HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Decodes `frame` as the response to a `cmd` request: ERROR becomes [`ClientError::Refused`].
pub fn expect_response<R: Message + Default>(frame: &Frame, cmd: u8) -> Result<R, ClientError> {
    if frame.msg_type != MsgType::Response {
        return Err(ClientError::unexpected(frame));
    }
    if frame.cmd == cmd::ERROR {
        return Err(refusal(frame));
    }
    if frame.cmd != cmd {
        return Err(ClientError::unexpected(frame));
    }
    decode_body(frame)
}

/// An ERROR frame as [`ClientError::Refused`] (or `Decode` if its body does not decode).
fn refusal(frame: &Frame) -> ClientError {
    match decode_body::<pb::Error>(frame) {
        Ok(e) => ClientError::Refused {
            code: e.code,
            message: e.message,
        },
        Err(e) => e,
    }
}

/// A failed request write: `Closed` when the gate is gone (what it sent before is still
/// readable), else `Io`.
fn write_error(e: io::Error) -> ClientError {
    if peer_gone(&e) {
        ClientError::Closed
    } else {
        ClientError::Io(e)
    }
}

fn peer_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    //! The client against a scripted peer on a loopback socket: no gate involved.

    use std::net::TcpListener;
    use std::thread;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A client connected to a peer thread that runs `script` on its end of the connection.
    fn pair(script: impl FnOnce(TcpStream) + Send + 'static) -> (Client, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let peer = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            script(stream);
        });
        (Client::connect(addr).expect("connect"), peer)
    }

    fn error_body(code: u32) -> pb::Error {
        pb::Error {
            code,
            message: "no".into(),
        }
    }

    #[test]
    fn response_is_found_by_seq_and_skipped_frames_come_back_in_order() {
        let (mut client, peer) = pair(|mut s| {
            let mut out = Vec::new();
            out.extend_from_slice(&encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &()));
            out.extend_from_slice(&encode_frame(cmd::PING, MsgType::Response, 5, 2, &()));
            out.extend_from_slice(&encode_frame(cmd::PING, MsgType::Response, 6, 1, &()));
            // Written in two pieces cut mid-header.
            s.write_all(&out[..30]).expect("write");
            s.flush().expect("flush");
            s.write_all(&out[30..]).expect("write");
        });
        let frame = client.recv_response(1, T).expect("response to seq 1");
        assert_eq!((frame.cmd, frame.log_id), (cmd::PING, 6));
        assert_eq!(client.backlog_len(), 2);
        assert_eq!(client.recv_frame(T).expect("first skipped").cmd, cmd::PUSH);
        assert_eq!(client.recv_frame(T).expect("second skipped").seq, 2);
        peer.join().expect("peer");
        assert!(matches!(client.recv_frame(T), Err(ClientError::Closed)));
    }

    #[test]
    fn gate_ping_is_answered_with_its_seq_and_log_id_and_not_returned() {
        let (mut client, peer) = pair(|mut s| {
            s.write_all(&encode_frame(cmd::PING, MsgType::Request, 77, 9, &()))
                .expect("write");
            let mut header = [0u8; crate::protocol::HEADER_LEN];
            s.read_exact(&mut header).expect("pong");
            let h = crate::protocol::Header::parse(&header).expect("header");
            assert_eq!(
                (h.cmd, h.msg_type, h.log_id, h.seq, h.len),
                (cmd::PING, 1, 77, 9, 0)
            );
            s.write_all(&encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &()))
                .expect("write");
        });
        assert_eq!(client.recv_frame(T).expect("kick").cmd, cmd::KICK);
        peer.join().expect("peer");
    }

    #[test]
    fn error_answer_is_refused_with_its_code() {
        let (mut client, peer) = pair(|mut s| {
            let mut header = [0u8; crate::protocol::HEADER_LEN];
            s.read_exact(&mut header).expect("ping");
            let h = crate::protocol::Header::parse(&header).expect("header");
            let err = encode_frame(
                cmd::ERROR,
                MsgType::Response,
                h.log_id,
                h.seq,
                &error_body(8),
            );
            s.write_all(&err).expect("write");
        });
        match client.ping() {
            Err(ClientError::Refused { code: 8, .. }) => {}
            other => panic!("expected a refusal with code 8, got {other:?}"),
        }
        peer.join().expect("peer");
    }

    #[test]
    fn silence_is_a_timeout_and_the_close_comes_after_the_frames_before_it() {
        let (mut client, peer) = pair(|mut s| {
            let mut one = [0u8; 1];
            // Wait for the client's go-ahead, then send one frame and close.
            s.read_exact(&mut one).expect("go");
            s.write_all(&encode_frame(cmd::KICK, MsgType::Notify, 0, 0, &()))
                .expect("write");
        });
        assert!(matches!(
            client.recv_frame(Duration::from_millis(50)),
            Err(ClientError::Timeout)
        ));
        client.send_raw(&[0]).expect("go");
        let frames = client.wait_closed(T).expect("closed");
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].cmd, cmd::KICK);
        peer.join().expect("peer");
    }

    #[test]
    fn oversized_frame_from_the_peer_is_a_frame_error() {
        let (mut client, peer) = pair(|mut s| {
            let mut header = encode_frame(cmd::PUSH, MsgType::Notify, 0, 0, &()).to_vec();
            header[18..22].copy_from_slice(&(DEFAULT_MAX_FRAME + 1).to_be_bytes());
            s.write_all(&header).expect("write");
        });
        assert!(matches!(
            client.recv_frame(T),
            Err(ClientError::Frame(FrameError::TooLarge { .. }))
        ));
        peer.join().expect("peer");
    }
}
