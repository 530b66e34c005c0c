//! WebSocket (RFC 6455) on the client port, sans-IO: the HTTP/1.1 upgrade handshake
//! ([`handshake`]) and the frame codec ([`codec`]). PROTOCOL.md "Transport": over WebSocket every
//! imgate frame travels as exactly one binary message.
//!
//! Owns no connection and never touches IO: the handshake takes the bytes read so far and
//! answers with the bytes to send; the decoder takes a read buffer and returns events (a whole
//! binary message, a ping, a close) or a typed error carrying the close code to send. Outbound,
//! only a frame *header* is ever built ([`codec::server_header`], once per shared frame, see
//! `delivery::frame`): the shell sends it ahead of the frame, so a PUSH fanned out to many
//! WebSocket sessions is never copied into their queues. Because everything here works on byte buffers, the TLS layer (`shard/conn/tls.rs`) sits
//! between the socket and these functions without changing them.
//!
//! Hand-written rather than taken from a crate: the gate needs a validating server-side decoder
//! that unmasks in place inside the connection's own `BytesMut` and a header-only encoder for
//! vectored zero-copy output. tungstenite owns its streams and copies payloads into messages;
//! the sans-IO crates found (websocket-sans-io) leave all validation, reassembly and control
//! frame rules to the caller, which is most of this module anyway.

pub mod codec;
pub mod handshake;

pub use codec::{
    CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_LARGE, CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNSUPPORTED_DATA, MAX_HEADER_LEN, Opcode, Role, SERVER_HEADER_LEN, WsDecoder, WsError,
    WsEvent, apply_mask, client_frame, close_frame, pong_frame, server_header, write_frame,
};
pub use handshake::{
    HandshakeError, Policy, Request, Upgrade, WS_PATH, accept_key, client_request, http_response,
    parse_request, parse_upgrade,
};

#[cfg(test)]
mod tests;
