//! HTTP/1.1 request parsing, sans-IO and bounded: [`parse`] takes the bytes read so far and
//! returns `Ok(None)` (need more), a whole [`Request`] with the bytes it used, or an
//! [`HttpError`] carrying the status to answer before closing.
//!
//! What it accepts: a request line `METHOD SP target SP HTTP/1.x`, CRLF-terminated headers (at
//! most [`MAX_HEADERS`], the whole head at most `Limits::max_head` bytes), and a body framed by
//! `Content-Length` only (at most `Limits::max_body`). `Transfer-Encoding` is refused (501): the
//! API's bodies are small JSON documents. Keep-alive follows HTTP/1.1 (on unless
//! `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`). Never touches IO.

use bytes::Bytes;

/// Headers a request may carry.
pub const MAX_HEADERS: usize = 64;

/// Bounds on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers, with their CRLFs.
    pub max_head: usize,
    /// Body bytes (`Content-Length`).
    pub max_body: usize,
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// What followed `?` in the target ("" when nothing).
    pub query: String,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    pub body: Bytes,
}

/// A request that cannot be served; the connection is answered [`HttpError::status`] and closed
/// (its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {max} bytes")]
    HeadTooLarge { max: usize },
    #[error("more than {max} headers")]
    TooManyHeaders { max: usize },
    #[error("malformed request line")]
    BadRequestLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("malformed header line")]
    BadHeader,
    #[error("invalid Content-Length")]
    BadContentLength,
    #[error("body of {len} bytes is larger than {max}")]
    BodyTooLarge { len: usize, max: usize },
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
}

impl HttpError {
    /// The HTTP status answered for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::BadVersion => 505,
            HttpError::TransferEncoding => 501,
            HttpError::BadRequestLine | HttpError::BadHeader | HttpError::BadContentLength => 400,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The first request in `buf`: `Ok(Some((request, used)))` when it is complete (`used` bytes of
/// `buf` belong to it), `Ok(None)` when more bytes are needed.
pub fn parse(buf: &[u8], limits: Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let window = &buf[..buf.len().min(limits.max_head)];
    let Some(end) = find_head_end(window) else {
        return if buf.len() >= limits.max_head {
            Err(HttpError::HeadTooLarge {
                max: limits.max_head,
            })
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::BadHeader)?;
    let mut lines = head.split("\r\n");
    let line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    if !is_token(method) || !target.starts_with('/') || target.bytes().any(|b| b <= b' ') {
        return Err(HttpError::BadRequestLine);
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HttpError::BadVersion),
    };
    let mut content_length: Option<usize> = None;
    let mut keep_alive = http11;
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders { max: MAX_HEADERS });
        }
        let (name, value) = line.split_once(':').ok_or(HttpError::BadHeader)?;
        if !is_token(name) {
            return Err(HttpError::BadHeader);
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::BadContentLength);
            }
            let len: usize = value.parse().map_err(|_| HttpError::BadContentLength)?;
            if content_length.is_some_and(|l| l != len) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
        }
    }
    let len = content_length.unwrap_or(0);
    if len > limits.max_body {
        return Err(HttpError::BodyTooLarge {
            len,
            max: limits.max_body,
        });
    }
    let body_start = end + 4;
    let Some(body) = buf.get(body_start..body_start + len) else {
        return Ok(None);
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Some((
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            keep_alive,
            body: Bytes::copy_from_slice(body),
        },
        body_start + len,
    )))
}

/// The value of `key` in a query string (`a=1&b=2`); no percent-decoding (the API's parameters
/// are numbers and plain names).
pub fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 256,
        max_body: 64,
    };

    fn whole(bytes: &[u8]) -> (Request, usize) {
        parse(bytes, LIMITS)
            .expect("valid")
            .expect("complete request")
    }

    #[test]
    fn a_post_with_a_body_is_parsed_whatever_the_split() {
        let wire = b"POST /push?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\n\r\n{\"a\":1}GET";
        let (req, used) = whole(wire);
        assert_eq!(used, wire.len() - 3, "the next request's bytes stay");
        assert_eq!(
            (req.method.as_str(), req.path.as_str(), req.query.as_str()),
            ("POST", "/push", "x=1")
        );
        assert_eq!(&req.body[..], b"{\"a\":1}");
        assert!(req.keep_alive);
        for cut in 0..used {
            assert_eq!(parse(&wire[..cut], LIMITS), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let (r, _) = whole(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = whole(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = whole(b"GET / HTTP/1.0\r\nconnection: Keep-Alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn an_oversized_head_is_431_even_before_it_ends() {
        let mut wire = b"GET / HTTP/1.1\r\nX: ".to_vec();
        wire.resize(LIMITS.max_head, b'a');
        assert_eq!(
            parse(&wire, LIMITS).map_err(|e| e.status()),
            Err(431),
            "no terminator within max_head"
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"a:b\r\n");
        }
        many.extend_from_slice(b"\r\n");
        let big = Limits {
            max_head: 4096,
            ..LIMITS
        };
        assert_eq!(
            parse(&many, big),
            Err(HttpError::TooManyHeaders { max: MAX_HEADERS })
        );
    }

    #[test]
    fn an_oversized_body_is_413_before_it_is_read() {
        let wire = b"POST /push HTTP/1.1\r\nContent-Length: 65\r\n\r\n";
        assert_eq!(
            parse(wire, LIMITS),
            Err(HttpError::BodyTooLarge { len: 65, max: 64 })
        );
    }

    #[test]
    fn malformed_requests_get_their_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
            (b"GET nopath HTTP/1.1\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
            ),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        ];
        for (wire, status) in cases {
            assert_eq!(
                parse(wire, LIMITS).map(|_| ()).map_err(|e| e.status()),
                Err(*status),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    #[test]
    fn query_params_are_found_by_name() {
        assert_eq!(query_param("uid=5&x=1", "uid"), Some("5"));
        assert_eq!(query_param("x=1&uid=", "uid"), Some(""));
        assert_eq!(query_param("uidx=5", "uid"), None);
        assert_eq!(query_param("", "uid"), None);
    }
}
