//! The transport under a connection's frames: the first-bytes decision, the HTTP upgrade and
//! the WebSocket layer of a connection task (PROTOCOL.md "Transport").
//!
//! Owns [`Transport`], one per connection: `Undecided` until the first bytes arrive; `Tcp`
//! when they are anything but `GET ` (then this module is never entered again: the TCP path
//! pays one enum check per wake-up); `Http` while a request head arrives, bounded by
//! `gate.http_max_header_bytes` and by `gate.http_header_timeout_ms` from the connection's
//! opening (a deadline on the connection's one wheel entry, like its login deadline);
//! `WebSocket` after a `101`. A plain `GET` of another path is answered from `crate::web` (the
//! demo page, when `gate.web_demo` is on; else 404) and the connection closed. The sans-IO parts
//! are `protocol::ws` and `crate::web`; this is the shell that feeds them the read buffer and
//! queues what they answer. Output framing is the shared part's (`ConnShared::set_websocket`): a
//! static header buffer ahead of each shared frame.
//!
//! Over WebSocket each binary message must be exactly one imgate frame: it is decoded by the
//! same frame decoder and handed to the same session as a TCP frame. Refusals follow
//! PROTOCOL.md: the ERROR named (TOO_LARGE echoing the frame's seq when its header arrived;
//! BAD_REQUEST for a text message), KICK 5 if logged in, then a close frame with the RFC 6455
//! code (1009, 1003, 1002). A ping is answered with a pong (queued within the connection's
//! output limits, so a ping flood ends as a slow consumer), a close frame with a close frame.
//!
//! On the TLS port the sibling `tls` layer sits under all of this: it turns ciphertext from the
//! socket into the plaintext read buffer this module parses, and wraps the out queue's buffers
//! on the way out; nothing here knows.

use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};

use super::{Arrival, Conn, Exit};
use crate::protocol::ws::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_LARGE, CLOSE_TRY_AGAIN_LATER,
    Opcode, Policy, Request, Role, WsDecoder, WsError, WsEvent, close_frame, http_response,
    parse_request, pong_frame, server_header,
};
use crate::protocol::{Code, FrameError, HEADER_LEN, Header, KickReason, MAGIC};
use crate::session::CloseWhy;
use crate::shard::listener::Refusal;

/// The bytes that make a connection HTTP.
const HTTP_GET: &[u8; 4] = b"GET ";

/// What carries a connection's frames.
pub(crate) enum Transport {
    /// Nothing read yet; the first bytes decide. Opened at this instant.
    Undecided {
        opened: Instant,
    },
    /// The binary TCP protocol.
    Tcp,
    /// An HTTP request head is arriving and must be whole by `deadline`.
    Http {
        deadline: Instant,
    },
    WebSocket(Box<WsConn>),
}

impl Transport {
    /// The HTTP header deadline, while one runs.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            Self::Http { deadline } => Some(*deadline),
            _ => None,
        }
    }
}

/// A WebSocket connection's inbound state; crosses shards with the fd on a hand-off.
#[derive(Debug)]
pub(crate) struct WsConn {
    decoder: WsDecoder,
    /// The LOGIN frame a hand-off carried, handled before anything read here.
    replay: Option<Bytes>,
    /// The close code a refusal chose.
    close_code: Option<u16>,
    /// A close frame went out already (answering the client's).
    close_sent: bool,
}

impl WsConn {
    fn new(max_frame: u32) -> Self {
        Self {
            decoder: WsDecoder::new(Role::Server, HEADER_LEN + max_frame as usize),
            replay: None,
            close_code: None,
            close_sent: false,
        }
    }

    /// Bytes the WebSocket frame at the front of `buf` needs in all.
    pub fn frame_len_hint(&self, buf: &[u8]) -> usize {
        self.decoder.frame_len_hint(buf)
    }

    /// The LOGIN frame to hand the owner shard along with this state.
    pub fn carry_login(&mut self, login: Bytes) {
        self.replay = Some(login);
    }

    /// The close frame to send when the connection closes for `why`, unless one went out.
    pub fn final_close(&self, why: CloseWhy) -> Option<Bytes> {
        if self.close_sent {
            return None;
        }
        let code = self.close_code.unwrap_or(match why {
            CloseWhy::Kicked(KickReason::Draining) => CLOSE_GOING_AWAY,
            CloseWhy::Protocol => CLOSE_PROTOCOL_ERROR,
            _ => CLOSE_NORMAL,
        });
        Some(close_frame(code))
    }
}

/// What a connection that the shard cannot take is answered once its first bytes are in
/// `arrival.buffered` (see `listener::refuse`); `None` while more bytes are needed.
pub(crate) fn capacity_answer(arrival: &Arrival, refusal: &Refusal) -> Option<Bytes> {
    let in_websocket = |upgrade: Option<Bytes>| {
        let (header, used) = server_header(Opcode::Binary, refusal.kick.len());
        let close = close_frame(CLOSE_TRY_AGAIN_LATER);
        let mut out = BytesMut::new();
        out.extend_from_slice(&upgrade.unwrap_or_default());
        out.extend_from_slice(&header[..used]);
        out.extend_from_slice(&refusal.kick);
        out.extend_from_slice(&close);
        out.freeze()
    };
    if arrival.websocket.is_some() {
        // Upgraded on the shard that handed it over.
        return Some(in_websocket(None));
    }
    let first = &arrival.buffered;
    let seen = first.len().min(HTTP_GET.len());
    if seen == 0 {
        return None;
    }
    if first[..seen] != HTTP_GET[..seen] {
        return Some(refusal.kick.clone());
    }
    if seen < HTTP_GET.len() {
        return None;
    }
    let policy = Policy {
        alias: &refusal.ws.path,
        allowed_origins: &refusal.ws.allowed_origins,
        max_head: refusal.ws.max_header_bytes,
    };
    match parse_request(first, &policy) {
        Ok(None) => None,
        Ok(Some(Request::Upgrade(upgrade))) => Some(in_websocket(Some(upgrade.response()))),
        // A page costs the full gate nothing it would keep: answered, then closed.
        Ok(Some(Request::Get { path })) => Some(crate::web::answer_get(path, refusal.ws.web_demo)),
        Err(err) => Some(err.response()),
    }
}

impl Conn {
    /// Input of a connection not (yet) known to be TCP; `Some` ends the loop.
    pub(super) fn process_transport(&mut self, now: Instant) -> Option<Exit> {
        let exit = loop {
            match &self.transport {
                Transport::Tcp => return self.process_frames(now),
                Transport::Undecided { opened } => {
                    let seen = self.rbuf.len().min(HTTP_GET.len());
                    if seen == 0 {
                        return None;
                    }
                    if self.rbuf[..seen] != HTTP_GET[..seen] {
                        self.transport = Transport::Tcp;
                        continue;
                    }
                    if seen < HTTP_GET.len() {
                        return None;
                    }
                    let deadline = *opened + self.shard.settings.ws.header_timeout;
                    self.transport = Transport::Http { deadline };
                }
                Transport::Http { .. } => match self.process_http() {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(exit) => break Some(exit),
                },
                Transport::WebSocket(_) => break self.process_websocket(now),
            }
        };
        if exit.is_none() && self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
        }
        exit
    }

    /// The request head: `Ok(true)` once upgraded, `Ok(false)` while it is incomplete, `Err`
    /// with the exit after queueing the HTTP refusal.
    fn process_http(&mut self) -> Result<bool, Exit> {
        let ws = &self.shard.settings.ws;
        let policy = Policy {
            alias: &ws.path,
            allowed_origins: &ws.allowed_origins,
            max_head: ws.max_header_bytes,
        };
        match parse_request(&self.rbuf, &policy) {
            Ok(None) => Ok(false),
            Ok(Some(Request::Get { path })) => {
                let answer = crate::web::answer_get(path, ws.web_demo);
                self.shard.queue_raw_last(&self.shared, answer);
                // HTTP/1.1 with `connection: close`: the exchange is over, like a peer's close.
                Err(Exit::Close(CloseWhy::PeerClosed))
            }
            Ok(Some(Request::Upgrade(upgrade))) => {
                self.rbuf.advance(upgrade.used);
                self.shard.queue_raw_last(&self.shared, upgrade.response());
                self.shared.set_websocket();
                let max_frame = self.shard.settings.max_frame;
                self.transport = Transport::WebSocket(Box::new(WsConn::new(max_frame)));
                Ok(true)
            }
            Err(err) => {
                tracing::debug!(shard = self.shard.index, %err, "HTTP request refused");
                self.shard.queue_raw_last(&self.shared, err.response());
                Err(Exit::Close(CloseWhy::Protocol))
            }
        }
    }

    /// The HTTP header deadline passed: 408 and close.
    pub(super) fn transport_timeout(&mut self, now: Instant) -> Option<Exit> {
        let deadline = self.transport.deadline()?;
        if now < deadline {
            return None;
        }
        self.shard
            .queue_raw_last(&self.shared, http_response(408, ""));
        Some(Exit::Close(CloseWhy::LoginTimeout))
    }

    /// Every complete WebSocket event in the read buffer.
    fn process_websocket(&mut self, now: Instant) -> Option<Exit> {
        loop {
            let Transport::WebSocket(ws) = &mut self.transport else {
                return None;
            };
            if let Some(login) = ws.replay.take() {
                if let Some(exit) = self.process_message(BytesMut::from(login), now) {
                    return Some(exit);
                }
                continue;
            }
            match ws.decoder.decode(&mut self.rbuf) {
                Ok(None) => return None,
                Ok(Some(WsEvent::Message(message))) => {
                    if let Some(exit) = self.process_message(message, now) {
                        return Some(exit);
                    }
                }
                Ok(Some(WsEvent::Ping(payload))) => {
                    self.shard.queue_raw(&self.shared, pong_frame(&payload));
                }
                Ok(Some(WsEvent::Pong)) => {}
                Ok(Some(WsEvent::Close { code })) => {
                    // The close handshake: echo the client's code, then close the TCP side.
                    ws.close_sent = true;
                    let reply = close_frame(code.unwrap_or(CLOSE_NORMAL));
                    self.shard.queue_raw_last(&self.shared, reply);
                    return Some(Exit::Close(CloseWhy::PeerClosed));
                }
                Err(err) => {
                    ws.close_code = Some(err.close_code());
                    return self.refuse_websocket(&err);
                }
            }
        }
    }

    /// One binary message: exactly one imgate frame, or a protocol error.
    fn process_message(&mut self, mut message: BytesMut, now: Instant) -> Option<Exit> {
        let refusal = match self.decoder.decode(&mut message) {
            Ok(Some(frame)) if message.is_empty() => return self.process_frame(frame, now),
            Ok(_) => {
                tracing::debug!(shard = self.shard.index, "message is not exactly one frame");
                self.session.handle_transport_error(None)
            }
            Err(err) => {
                tracing::debug!(shard = self.shard.index, %err, "protocol error");
                if let (Transport::WebSocket(ws), FrameError::TooLarge { .. }) =
                    (&mut self.transport, &err)
                {
                    ws.close_code = Some(CLOSE_TOO_LARGE);
                }
                self.session.handle_frame_error(&err)
            }
        };
        if let Transport::WebSocket(ws) = &mut self.transport {
            ws.close_code.get_or_insert(CLOSE_PROTOCOL_ERROR);
        }
        self.apply(refusal)
            .or(Some(Exit::Close(CloseWhy::Protocol)))
    }

    /// A WebSocket-level violation: the ERROR PROTOCOL.md names, KICK 5 if logged in, close.
    fn refuse_websocket(&mut self, err: &WsError) -> Option<Exit> {
        tracing::debug!(shard = self.shard.index, %err, "WebSocket protocol error");
        let message = err.to_string();
        let action = match err {
            WsError::TooLarge {
                head: Some(head), ..
            } if head[..4] == MAGIC.to_be_bytes() => match Header::parse(head) {
                Some(header) => self.session.handle_frame_error(&FrameError::TooLarge {
                    header,
                    max: self.shard.settings.max_frame,
                }),
                None => self
                    .session
                    .handle_transport_error(Some((Code::TooLarge, &message))),
            },
            WsError::TooLarge { .. } => self
                .session
                .handle_transport_error(Some((Code::TooLarge, &message))),
            WsError::Text => self
                .session
                .handle_transport_error(Some((Code::BadRequest, &message))),
            _ => self.session.handle_transport_error(None),
        };
        self.apply(action).or(Some(Exit::Close(CloseWhy::Protocol)))
    }
}
