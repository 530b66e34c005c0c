//! The HTTP/1.1 side of the client port, sans-IO and bounded: [`parse_request`] reads one
//! request head (the connection's first bytes were `GET `) and decides it: a WebSocket upgrade
//! (RFC 6455 4.2) on `/ws` or the configured alias, a plain `GET` of another path (which the
//! shell serves from `crate::web` or answers 404), or an [`HandshakeError`] carrying the HTTP
//! status to answer before closing. [`parse_upgrade`] is the same for callers that serve no
//! pages.
//!
//! What it checks, in order: the head fits `max_head` bytes (431), the request line and headers
//! are well-formed (400), the path is `/ws` or the alias (else a `GET` is handed back as
//! [`Request::Get`] and anything else is 404), it is a valid upgrade — GET, HTTP/1.1,
//! `Host`, `Upgrade: websocket`, `Connection` naming `upgrade`, `Sec-WebSocket-Version: 13`, a
//! `Sec-WebSocket-Key` that is 16 bytes in base64 (400) — and its `Origin`, when it sends one, is
//! allowed (403). A request without `Origin` is not from a browser and is not refused for it:
//! the origin check protects browsers' users from other sites, which always send it.
//! No subprotocol or extension is negotiated. Never touches IO.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use sha1::{Digest, Sha1};

/// RFC 6455 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The path every gate serves WebSocket on (PROTOCOL.md "Transport").
pub const WS_PATH: &str = "/ws";

/// Most header lines in a request head.
const MAX_HEADERS: usize = 64;

/// What the gate serves and allows.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// A path served like `/ws` (`gate.ws_path`); empty: none.
    pub alias: &'a str,
    /// Allowed `Origin` values, compared ignoring ASCII case (`gate.ws_allowed_origins`);
    /// empty: any.
    pub allowed_origins: &'a [String],
    /// Longest request head, request line and headers with their CRLFs
    /// (`gate.http_max_header_bytes`).
    pub max_head: usize,
}

/// An accepted upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Accept` for the client's key.
    pub accept: String,
    /// Bytes of the input the request head took; what follows is WebSocket frames.
    pub used: usize,
}

impl Upgrade {
    /// The `101 Switching Protocols` answer.
    pub fn response(&self) -> Bytes {
        Bytes::from(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            self.accept
        ))
    }
}

/// A whole, well-formed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// A valid WebSocket upgrade on `/ws` or the alias.
    Upgrade(Upgrade),
    /// A `GET` of any other path (`path` without its query): a page, or 404. Either way the
    /// answer is the last thing on the connection.
    Get { path: &'a str },
}

/// A request that is not upgraded; the connection gets [`HandshakeError::response`] and is
/// closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("request head larger than {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("malformed HTTP request")]
    Malformed,
    #[error("no such path")]
    NotFound,
    #[error("not a valid WebSocket upgrade: {0}")]
    BadUpgrade(&'static str),
    #[error("unsupported Sec-WebSocket-Version (13 is)")]
    UnsupportedVersion,
    #[error("origin not allowed")]
    OriginRefused,
}

impl HandshakeError {
    pub fn status(&self) -> u16 {
        match self {
            Self::HeadTooLarge { .. } => 431,
            Self::Malformed | Self::BadUpgrade(_) | Self::UnsupportedVersion => 400,
            Self::NotFound => 404,
            Self::OriginRefused => 403,
        }
    }

    /// The whole HTTP answer (RFC 6455 4.4: a refused version names the one supported).
    pub fn response(&self) -> Bytes {
        let extra = match self {
            Self::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        http_response(self.status(), extra)
    }
}

/// An empty-bodied HTTP/1.1 answer that closes the connection; `extra_headers` are whole lines
/// with their CRLFs.
pub fn http_response(status: u16, extra_headers: &str) -> Bytes {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n{extra_headers}\r\n"
    ))
}

/// `Sec-WebSocket-Accept` for `key`: base64(SHA-1(key ‖ GUID)).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(sha.finalize())
}

/// A client's upgrade request (the client library and tests).
pub fn client_request(host: &str, path: &str, key: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{origin}\r\n"
    )
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a comma-separated header value lists `token` (ASCII case ignored).
fn lists(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The headers an upgrade looks at.
#[derive(Default)]
struct Seen<'a> {
    host: bool,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    version: Option<&'a str>,
    key: Option<&'a str>,
    keys: usize,
    origin: Option<&'a str>,
}

/// [`parse_request`] for a server without pages: a `GET` of another path is
/// [`HandshakeError::NotFound`].
pub fn parse_upgrade(buf: &[u8], policy: &Policy<'_>) -> Result<Option<Upgrade>, HandshakeError> {
    match parse_request(buf, policy)? {
        None => Ok(None),
        Some(Request::Upgrade(upgrade)) => Ok(Some(upgrade)),
        Some(Request::Get { .. }) => Err(HandshakeError::NotFound),
    }
}

/// Decides the request head at the front of `buf` (see the module doc): `Ok(None)` while it is
/// incomplete and within `policy.max_head`.
pub fn parse_request<'b>(
    buf: &'b [u8],
    policy: &Policy<'_>,
) -> Result<Option<Request<'b>>, HandshakeError> {
    let window = &buf[..buf.len().min(policy.max_head)];
    let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() >= policy.max_head {
            Err(HandshakeError::HeadTooLarge {
                max: policy.max_head,
            })
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HandshakeError::Malformed)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().ok_or(HandshakeError::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HandshakeError::Malformed);
    };
    if !is_token(method) || !target.starts_with('/') || target.bytes().any(|b| b <= b' ') {
        return Err(HandshakeError::Malformed);
    }
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Err(HandshakeError::Malformed);
    }
    let mut seen = Seen::default();
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Err(HandshakeError::HeadTooLarge {
                max: policy.max_head,
            });
        }
        let (name, value) = line.split_once(':').ok_or(HandshakeError::Malformed)?;
        if !is_token(name) {
            return Err(HandshakeError::Malformed);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("host") {
            seen.host = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            seen.upgrade_websocket |= lists(value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            seen.connection_upgrade |= lists(value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            seen.version = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            seen.key = Some(value);
            seen.keys += 1;
        } else if name.eq_ignore_ascii_case("origin") {
            seen.origin = Some(value);
        }
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != WS_PATH && (policy.alias.is_empty() || path != policy.alias) {
        return match method {
            "GET" => Ok(Some(Request::Get { path })),
            _ => Err(HandshakeError::NotFound),
        };
    }
    let bad = HandshakeError::BadUpgrade;
    if method != "GET" {
        return Err(bad("the method must be GET"));
    }
    if version != "HTTP/1.1" {
        return Err(bad("HTTP/1.1 is required"));
    }
    if !seen.host {
        return Err(bad("Host is missing"));
    }
    if !seen.upgrade_websocket {
        return Err(bad("Upgrade must name websocket"));
    }
    if !seen.connection_upgrade {
        return Err(bad("Connection must name upgrade"));
    }
    if seen.version != Some("13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = match seen.key {
        Some(key) if seen.keys == 1 => key,
        _ => return Err(bad("exactly one Sec-WebSocket-Key is required")),
    };
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    if !policy.allowed_origins.is_empty()
        && let Some(origin) = seen.origin
        && !policy
            .allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        return Err(HandshakeError::OriginRefused);
    }
    Ok(Some(Request::Upgrade(Upgrade {
        accept: accept_key(key),
        used: end + 4,
    })))
}
