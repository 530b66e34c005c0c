//! The part of nats-server's client text protocol the load generator speaks: parsing what the
//! server sends (`INFO`, `MSG`, `PING`, `PONG`, `+OK`, `-ERR`) out of a borrowed read buffer, and
//! the fixed lines it sends (`CONNECT`, `SUB`, `PUB`, `PING`, `PONG`).
//!
//! Owns no connection state and never touches IO or allocates: [`parse_op`] looks at the front of
//! the caller's buffer and says what is there and how many bytes it takes.

/// Longest control line accepted (nats-server's `max_control_line` is 4096; INFO may run longer
/// with many cluster URLs, so allow more).
pub const MAX_LINE: usize = 64 * 1024;

/// Largest MSG payload accepted (nats-server's `max_payload` is 1 MiB by default, 64 MiB at most).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// `CONNECT` without acknowledgements (`verbose` off: no `+OK` per command).
pub const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n";
pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// One server operation at the front of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// A delivered message and its payload, borrowed.
    Msg {
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Info,
    /// `-ERR` with the server's text.
    Err(&'a [u8]),
}

/// Input that cannot be nats protocol; ends the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsError {
    /// No line end within [`MAX_LINE`] bytes.
    LineTooLong,
    /// An operation this client does not know (or `HMSG`, which it never asked for).
    UnknownOp { line_start: [u8; 8] },
    /// A `MSG` line without a valid byte count.
    BadMsgLine,
    /// The payload is not followed by `\r\n`.
    BadPayloadEnd,
}

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LineTooLong => write!(f, "nats control line over {MAX_LINE} bytes"),
            Self::UnknownOp { line_start } => write!(
                f,
                "unknown nats operation {:?}",
                String::from_utf8_lossy(line_start)
            ),
            Self::BadMsgLine => f.write_str("nats MSG line without a valid byte count"),
            Self::BadPayloadEnd => f.write_str("nats MSG payload not followed by CRLF"),
        }
    }
}

impl std::error::Error for NatsError {}

/// The operation at the front of `buf` and the bytes it takes (line, and for MSG the payload and
/// its CRLF); `Ok(None)` while it is incomplete.
pub fn parse_op(buf: &[u8]) -> Result<Option<(Op<'_>, usize)>, NatsError> {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Err(NatsError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line_len = nl + 1;
    let line = strip_cr(&buf[..nl]);
    let word_end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let word = &line[..word_end];
    let op = if word.eq_ignore_ascii_case(b"MSG") {
        let payload_len = msg_len(line).ok_or(NatsError::BadMsgLine)?;
        let total = line_len
            .checked_add(payload_len)
            .and_then(|n| n.checked_add(2))
            .ok_or(NatsError::BadMsgLine)?;
        let Some(end) = buf.get(total - 2..total) else {
            return Ok(None);
        };
        if end != b"\r\n" {
            return Err(NatsError::BadPayloadEnd);
        }
        return Ok(Some((
            Op::Msg {
                payload: &buf[line_len..line_len + payload_len],
            },
            total,
        )));
    } else if word.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if word.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if word.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if word.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if word.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(line[word_end..].trim_ascii())
    } else {
        let mut line_start = [0u8; 8];
        let n = line.len().min(8);
        line_start[..n].copy_from_slice(&line[..n]);
        return Err(NatsError::UnknownOp { line_start });
    };
    Ok(Some((op, line_len)))
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The byte count of `MSG <subject> <sid> [reply-to] <#bytes>`: its last token.
fn msg_len(line: &[u8]) -> Option<usize> {
    let mut tokens = line
        .split(|&b| b == b' ' || b == b'\t')
        .filter(|t| !t.is_empty());
    let count = tokens.clone().count();
    if !(4..=5).contains(&count) {
        return None;
    }
    let last = tokens.nth(count - 1)?;
    if last.is_empty() || last.len() > 10 {
        return None;
    }
    let n = last.iter().try_fold(0usize, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + usize::from(d - b'0'))
    })?;
    (n <= MAX_PAYLOAD).then_some(n)
}

/// `SUB <subject> <sid>\r\n`.
pub fn sub_line(subject: &str, sid: u32) -> Vec<u8> {
    format!("SUB {subject} {sid}\r\n").into_bytes()
}

/// One `PUB <subject> <len>\r\n<payload>\r\n`, to be copied as it is for every publish.
pub fn pub_message(subject: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// A `PUB` built once and appended per publish with the send timestamp written over the first
/// 8 bytes of its payload (no allocation per message).
#[derive(Debug, Clone)]
pub struct PubTemplate {
    message: Vec<u8>,
    payload_at: usize,
}

impl PubTemplate {
    pub fn new(subject: &str, payload: &[u8]) -> Self {
        let message = pub_message(subject, payload);
        let payload_at = message.len() - payload.len() - 2;
        Self {
            message,
            payload_at,
        }
    }

    /// Appends one `PUB` whose payload starts with `stamp_ns`.
    pub fn put(&self, out: &mut Vec<u8>, stamp_ns: u64) {
        let at = out.len() + self.payload_at;
        out.extend_from_slice(&self.message);
        let end = out.len() - 2;
        crate::latency::put_stamp(&mut out[at..end], stamp_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server stream: INFO, two MSGs (one with a reply subject, one with a payload holding
    /// CRLF and spaces), PING, +OK, an empty MSG, -ERR.
    fn stream() -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(b"INFO {\"server_id\":\"X\",\"max_payload\":1048576}\r\n");
        s.extend_from_slice(b"MSG bench 1 64\r\n");
        s.extend_from_slice(&[b'x'; 64]);
        s.extend_from_slice(b"\r\nMSG bench 1 _INBOX.abc 7\r\na b\r\nc \r\n");
        s.extend_from_slice(b"PING\r\n+OK\r\nmsg bench 22 0\r\n\r\n");
        s.extend_from_slice(b"-ERR 'Slow Consumer'\r\n");
        s
    }

    fn expected() -> Vec<String> {
        [
            "Info",
            "Msg(64)",
            "Msg(7)",
            "Ping",
            "Ok",
            "Msg(0)",
            "Err(\"'Slow Consumer'\")",
        ]
        .map(String::from)
        .to_vec()
    }

    fn show(op: Op<'_>) -> String {
        match op {
            Op::Err(text) => format!("Err({:?})", String::from_utf8_lossy(text)),
            Op::Msg { payload } => format!("Msg({})", payload.len()),
            other => format!("{other:?}"),
        }
    }

    /// Drives `parse_op` the way a connection does: bytes arrive in pieces, what is not
    /// consumed is carried to the next read.
    fn parse_pieces(pieces: &[&[u8]]) -> Vec<String> {
        let mut carry = Vec::new();
        let mut seen = Vec::new();
        for piece in pieces {
            carry.extend_from_slice(piece);
            let mut at = 0;
            while let Some((op, n)) = parse_op(&carry[at..]).expect("valid stream") {
                seen.push(show(op));
                at += n;
            }
            carry.drain(..at);
        }
        assert!(carry.is_empty(), "everything consumed");
        seen
    }

    #[test]
    fn msg_parser_handles_a_stream_split_at_every_offset() {
        let s = stream();
        assert_eq!(parse_pieces(&[&s]), expected());
        for cut in 0..=s.len() {
            assert_eq!(
                parse_pieces(&[&s[..cut], &s[cut..]]),
                expected(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn msg_parser_handles_one_byte_at_a_time() {
        let s = stream();
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(parse_pieces(&bytes), expected());
    }

    #[test]
    fn msg_parser_refuses_garbage() {
        assert_eq!(
            parse_op(b"MSG bench 1\r\n"),
            Err(NatsError::BadMsgLine),
            "no byte count"
        );
        assert_eq!(parse_op(b"MSG a 1 x2\r\n"), Err(NatsError::BadMsgLine));
        assert_eq!(
            parse_op(b"MSG a 1 2\r\nabXY"),
            Err(NatsError::BadPayloadEnd)
        );
        assert!(matches!(
            parse_op(b"HMSG a 1 2 4\r\n"),
            Err(NatsError::UnknownOp { .. })
        ));
        assert_eq!(parse_op(&vec![b'I'; MAX_LINE]), Err(NatsError::LineTooLong));
        assert_eq!(parse_op(&vec![b'I'; MAX_LINE - 1]), Ok(None));
        assert_eq!(
            parse_op(b"MSG a 1 99999999999\r\n"),
            Err(NatsError::BadMsgLine)
        );
    }

    #[test]
    fn pub_message_is_a_pub_line_and_the_payload() {
        assert_eq!(pub_message("bench", b"hi"), b"PUB bench 2\r\nhi\r\n");
        assert_eq!(sub_line("bench", 7), b"SUB bench 7\r\n");
    }

    #[test]
    fn pub_template_stamps_the_payload_and_the_msg_carries_it_back() {
        let template = PubTemplate::new("u.7", &[b'x'; 10]);
        let mut out = b"PING\r\n".to_vec();
        template.put(&mut out, 0x0102_0304_0506_0708);
        assert_eq!(&out[..6], b"PING\r\n");
        assert_eq!(&out[6..18], b"PUB u.7 10\r\n");
        assert_eq!(&out[18..26], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&out[26..], b"xx\r\n");
        // The server relays the payload as it is: the MSG gives the stamp back.
        let mut msg = b"MSG u.7 1 10\r\n".to_vec();
        msg.extend_from_slice(&out[18..]);
        let Some((Op::Msg { payload }, n)) = parse_op(&msg).expect("valid") else {
            panic!("a MSG");
        };
        assert_eq!(n, msg.len());
        assert_eq!(
            crate::latency::read_stamp(payload),
            Some(0x0102_0304_0506_0708)
        );
    }
}
