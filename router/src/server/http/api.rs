//! The HTTP API's requests as typed commands, sans-IO: [`command`] turns a parsed request into
//! a [`Command`] or an [`ApiError`] (the status and a JSON error to answer), and [`response`]
//! writes an answer. Checks every field a backend sends before anything is stored or pushed,
//! including that the client frame it would become fits the gates' `max_frame` (413).
//!
//! | request | body / query | answer |
//! |---|---|---|
//! | `POST /push` | `recipients`, `conv_type`, `conv_id`, `from`, `content_type`, `body` (base64), optional `client_msg_id` | `{"msg_id", "server_time_ms"}` |
//! | `POST /push` | `recipients`, `topic`, `payload` (a string, sent as its UTF-8 bytes; any other JSON value is sent as its compact text) | `{"links", "skipped_links"}` |
//! | `POST /kick` | `uid`, optional `device`, optional `reason` (`"revoked"` → KICK 3; default KICK 7), optional `message` | `{"kicked"}` |
//! | `GET /online?uid=N` | | `{"uid", "sessions": [{"gate", "shard", "device", "session", "since_ms"}]}` |

use base64::Engine;
use bytes::Bytes;
use prost::Message;
use serde::Deserialize;

use super::parse::{Request, query_param};
use crate::link;

/// Recipients one `/push` may name.
pub const MAX_RECIPIENTS: usize = 10_000;
/// A varint field (tag and a u64 at its longest) the client PushMsg has and `link::Msg` lacks
/// (`conv_id`).
const CONV_ID_FIELD_MAX: usize = 11;

/// KICK reasons (PROTOCOL.md).
pub const KICK_AUTH_REVOKED: u32 = 3;
pub const KICK_ADMIN: u32 = 7;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Store `send` like a SEND and PUSH it to `recipients`. `send.client_msg_id` is 0 when the
    /// caller left it to the router.
    Push {
        send: link::Send,
        recipients: Vec<u64>,
    },
    /// BIZ_PUSH, not stored.
    BizPush(link::BizPushUsers),
    Kick {
        uid: u64,
        device: String,
        reason: u32,
        message: String,
    },
    Online {
        uid: u64,
    },
}

/// A request refused; answered with [`ApiError::status`] and `{"error": <Display>}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("no such path: {path}")]
    NotFound { path: String },
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("body is not the expected JSON: {0}")]
    BadJson(String),
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the {what} would be {len} bytes, above the gates' max_frame {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BadJson(_) | ApiError::Invalid { .. } => 400,
            ApiError::TooLarge { .. } => 413,
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> ApiError {
    ApiError::Invalid { field, reason }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushJson {
    recipients: Vec<u64>,
    conv_type: Option<u32>,
    conv_id: Option<u64>,
    from: Option<u64>,
    content_type: Option<u32>,
    body: Option<String>,
    client_msg_id: Option<u64>,
    topic: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KickJson {
    uid: u64,
    device: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))
}

/// The command `req` asks for. `max_frame` is the gates' client `max_frame`: a PUSH or
/// BIZ_PUSH body above it is refused (413) before anything is stored.
pub fn command(req: &Request, max_frame: usize) -> Result<Command, ApiError> {
    let allow = match req.path.as_str() {
        "/push" | "/kick" => "POST",
        "/online" => "GET",
        _ => {
            return Err(ApiError::NotFound {
                path: req.path.clone(),
            });
        }
    };
    if req.method != allow {
        return Err(ApiError::MethodNotAllowed { allow });
    }
    match req.path.as_str() {
        "/push" => push(json(&req.body)?, max_frame),
        "/kick" => kick(json(&req.body)?),
        _ => {
            let uid = query_param(&req.query, "uid")
                .ok_or_else(|| invalid("uid", "missing (GET /online?uid=N)"))?;
            let uid = uid
                .parse::<u64>()
                .ok()
                .filter(|&u| u != 0)
                .ok_or_else(|| invalid("uid", "must be a non-zero integer"))?;
            Ok(Command::Online { uid })
        }
    }
}

fn push(p: PushJson, max_frame: usize) -> Result<Command, ApiError> {
    if p.recipients.is_empty() {
        return Err(invalid("recipients", "must name at least one uid"));
    }
    if p.recipients.len() > MAX_RECIPIENTS {
        return Err(invalid("recipients", "at most 10000 uids"));
    }
    if p.recipients.contains(&0) {
        return Err(invalid("recipients", "uid 0 is invalid"));
    }
    let mut recipients = p.recipients;
    recipients.sort_unstable();
    recipients.dedup();
    let stored = p.conv_type.is_some()
        || p.conv_id.is_some()
        || p.from.is_some()
        || p.content_type.is_some()
        || p.body.is_some()
        || p.client_msg_id.is_some();
    match (p.topic, p.payload) {
        (Some(_), _) | (_, Some(_)) if stored => Err(invalid(
            "topic",
            "a push is either a message (conv_type, conv_id, from, content_type, body) or a BIZ_PUSH (topic, payload), not both",
        )),
        (Some(topic), payload) => {
            if topic.is_empty() {
                return Err(invalid("topic", "must not be empty"));
            }
            let payload = match payload {
                None => Bytes::new(),
                Some(serde_json::Value::String(s)) => Bytes::from(s),
                Some(other) => Bytes::from(other.to_string()),
            };
            let push = link::BizPushUsers {
                topic,
                payload,
                recipients: Vec::new(),
            };
            // Without recipients, exactly the client's BizPush body.
            let len = push.encoded_len();
            if len > max_frame {
                return Err(ApiError::TooLarge {
                    what: "BIZ_PUSH",
                    len,
                    max: max_frame,
                });
            }
            Ok(Command::BizPush(link::BizPushUsers { recipients, ..push }))
        }
        (None, Some(_)) => Err(invalid("topic", "a payload needs a topic")),
        (None, None) => {
            let conv_type = p.conv_type.ok_or_else(|| invalid("conv_type", "missing"))?;
            if conv_type != crate::conv::SINGLE && conv_type != crate::conv::GROUP {
                return Err(invalid("conv_type", "must be 1 (single) or 2 (group)"));
            }
            let to = p
                .conv_id
                .filter(|&c| c != 0)
                .ok_or_else(|| invalid("conv_id", "must be a non-zero uid or group id"))?;
            let from = p
                .from
                .filter(|&f| f != 0)
                .ok_or_else(|| invalid("from", "must be a non-zero uid"))?;
            let content_type = p
                .content_type
                .ok_or_else(|| invalid("content_type", "missing"))?;
            let body = p.body.ok_or_else(|| invalid("body", "missing"))?;
            let body = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| invalid("body", "must be standard base64"))?;
            if p.client_msg_id == Some(0) {
                return Err(invalid("client_msg_id", "must be non-zero when given"));
            }
            let send = link::Send {
                from,
                client_msg_id: p.client_msg_id.unwrap_or(0),
                conv_type,
                to,
                content_type,
                body: Bytes::from(body),
                session_id: 0,
                log_id: 0,
            };
            let len = push_len_bound(&send);
            if len > max_frame {
                return Err(ApiError::TooLarge {
                    what: "PUSH",
                    len,
                    max: max_frame,
                });
            }
            Ok(Command::Push { send, recipients })
        }
    }
}

/// An upper bound of the client PushMsg body `send` becomes: the stored `link::Msg` with its
/// not yet known numbers at their longest, plus `conv_id`.
pub fn push_len_bound(send: &link::Send) -> usize {
    let msg = link::Msg {
        msg_id: u64::MAX,
        conv_type: send.conv_type,
        from: send.from,
        to: send.to,
        content_type: send.content_type,
        body: send.body.clone(),
        server_time_ms: u64::MAX,
        client_msg_id: u64::MAX,
    };
    msg.encoded_len() + CONV_ID_FIELD_MAX
}

fn kick(k: KickJson) -> Result<Command, ApiError> {
    if k.uid == 0 {
        return Err(invalid("uid", "must be a non-zero uid"));
    }
    let reason = match k.reason.as_deref() {
        None | Some("") | Some("admin") => KICK_ADMIN,
        Some("revoked") => KICK_AUTH_REVOKED,
        Some(_) => return Err(invalid("reason", "must be \"revoked\" or left out")),
    };
    let message = k.message.unwrap_or_default();
    if message.len() > 1024 {
        return Err(invalid("message", "at most 1024 bytes"));
    }
    Ok(Command::Kick {
        uid: k.uid,
        device: k.device.unwrap_or_default(),
        reason,
        message,
    })
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A whole HTTP/1.1 response with a JSON body.
pub fn response(status: u16, body: &serde_json::Value, keep_alive: bool) -> Vec<u8> {
    let body = body.to_string();
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
        reason_phrase(status),
        body.len() + 1,
        if keep_alive {
            ""
        } else {
            "connection: close\r\n"
        }
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out.push(b'\n');
    out
}

/// `{"error": message}` with `status`.
pub fn error_response(status: u16, message: &str, keep_alive: bool) -> Vec<u8> {
    response(status, &serde_json::json!({ "error": message }), keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, body: &str) -> Request {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            keep_alive: true,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn status(r: Result<Command, ApiError>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status())
    }

    const MAX: usize = 65_536;

    #[test]
    fn a_message_push_becomes_a_send_with_its_recipients() {
        let c = command(
            &req(
                "POST",
                "/push",
                r#"{"recipients":[7,5,7],"conv_type":1,"conv_id":5,"from":9,"content_type":1,"body":"aGk="}"#,
            ),
            MAX,
        );
        let Ok(Command::Push { send, recipients }) = c else {
            panic!("{c:?}")
        };
        assert_eq!(recipients, [5, 7]);
        assert_eq!((send.from, send.to, send.conv_type), (9, 5, 1));
        assert_eq!(&send.body[..], b"hi");
        assert_eq!(send.client_msg_id, 0, "left to the router");
    }

    #[test]
    fn a_topic_push_becomes_a_biz_push() {
        let c = command(
            &req(
                "POST",
                "/push",
                r#"{"recipients":[5],"topic":"t","payload":{"a":1}}"#,
            ),
            MAX,
        );
        let Ok(Command::BizPush(b)) = c else {
            panic!("{c:?}")
        };
        assert_eq!((b.topic.as_str(), &b.payload[..]), ("t", &b"{\"a\":1}"[..]));
        assert_eq!(b.recipients, [5]);
        let c = command(
            &req(
                "POST",
                "/push",
                r#"{"recipients":[5],"topic":"t","payload":"x"}"#,
            ),
            MAX,
        );
        assert!(matches!(c, Ok(Command::BizPush(b)) if &b.payload[..] == b"x"));
    }

    #[test]
    fn bad_pushes_are_400_and_name_the_field() {
        let cases = [
            (r#"{"recipients":[],"topic":"t"}"#, "recipients"),
            (r#"{"recipients":[0],"topic":"t"}"#, "recipients"),
            (r#"{"recipients":[1],"topic":""}"#, "topic"),
            (r#"{"recipients":[1],"payload":"x"}"#, "topic"),
            (r#"{"recipients":[1],"topic":"t","from":1}"#, "topic"),
            (
                r#"{"recipients":[1],"conv_type":3,"conv_id":1,"from":1,"content_type":1,"body":""}"#,
                "conv_type",
            ),
            (
                r#"{"recipients":[1],"conv_type":1,"conv_id":0,"from":1,"content_type":1,"body":""}"#,
                "conv_id",
            ),
            (
                r#"{"recipients":[1],"conv_type":1,"conv_id":1,"content_type":1,"body":""}"#,
                "from",
            ),
            (
                r#"{"recipients":[1],"conv_type":1,"conv_id":1,"from":1,"body":""}"#,
                "content_type",
            ),
            (
                r#"{"recipients":[1],"conv_type":1,"conv_id":1,"from":1,"content_type":1,"body":"!!"}"#,
                "body",
            ),
            (
                r#"{"recipients":[1],"conv_type":1,"conv_id":1,"from":1,"content_type":1,"body":"","client_msg_id":0}"#,
                "client_msg_id",
            ),
        ];
        for (body, field) in cases {
            let err = command(&req("POST", "/push", body), MAX).expect_err(body);
            assert_eq!(err.status(), 400, "{body}");
            assert!(err.to_string().starts_with(field), "{body}: {err}");
        }
        for body in [
            "",
            "{",
            "[]",
            r#"{"recipients":[1],"nope":1}"#,
            r#"{"recipients":[-1]}"#,
        ] {
            let err = command(&req("POST", "/push", body), MAX).expect_err(body);
            assert!(matches!(err, ApiError::BadJson(_)), "{body}: {err}");
        }
    }

    #[test]
    fn a_push_whose_frame_would_not_fit_is_413() {
        let body = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 1000]);
        let msg = format!(
            r#"{{"recipients":[1],"conv_type":1,"conv_id":2,"from":3,"content_type":1,"body":"{body}"}}"#
        );
        assert_eq!(status(command(&req("POST", "/push", &msg), 1000)), 413);
        assert_eq!(status(command(&req("POST", "/push", &msg), 1100)), 200);
        let biz = format!(
            r#"{{"recipients":[1],"topic":"t","payload":"{}"}}"#,
            "y".repeat(1000)
        );
        assert_eq!(status(command(&req("POST", "/push", &biz), 1000)), 413);
        // tag + len(1) + "t" + tag + len(2) + 1000 bytes.
        assert_eq!(status(command(&req("POST", "/push", &biz), 1006)), 200);
        assert_eq!(status(command(&req("POST", "/push", &biz), 1005)), 413);
    }

    #[test]
    fn kick_reasons_map_to_kick_codes() {
        let kick = |body: &str| command(&req("POST", "/kick", body), MAX);
        assert!(matches!(
            kick(r#"{"uid":5}"#),
            Ok(Command::Kick { uid: 5, reason: 7, ref device, .. }) if device.is_empty()
        ));
        assert!(matches!(
            kick(r#"{"uid":5,"device":"pc","reason":"revoked"}"#),
            Ok(Command::Kick { reason: 3, ref device, .. }) if device == "pc"
        ));
        assert_eq!(status(kick(r#"{"uid":5,"reason":"whim"}"#)), 400);
        assert_eq!(status(kick(r#"{"uid":0}"#)), 400);
        assert_eq!(status(kick(r#"{}"#)), 400);
    }

    #[test]
    fn paths_methods_and_queries_are_checked() {
        assert_eq!(status(command(&req("GET", "/nope", ""), MAX)), 404);
        assert_eq!(status(command(&req("GET", "/push", ""), MAX)), 405);
        assert_eq!(status(command(&req("POST", "/online?uid=1", ""), MAX)), 405);
        assert_eq!(status(command(&req("GET", "/online", ""), MAX)), 400);
        assert_eq!(status(command(&req("GET", "/online?uid=x", ""), MAX)), 400);
        assert_eq!(status(command(&req("GET", "/online?uid=0", ""), MAX)), 400);
        assert_eq!(
            command(&req("GET", "/online?uid=42", ""), MAX),
            Ok(Command::Online { uid: 42 })
        );
    }

    #[test]
    fn responses_announce_their_length() {
        let r = response(200, &serde_json::json!({"a": 1}), false);
        let text = String::from_utf8(r).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
    }
}
