//! The HTTP API on `router.http_listen`, for an existing backend in any language: `POST /push`
//! (a stored message, or a BIZ_PUSH), `POST /kick`, `GET /online?uid=N` (see [`api`] for the
//! fields and README "HTTP API" for examples).
//!
//! Each connection is a task on the router thread, serving HTTP/1.1 requests one after another
//! (keep-alive). Bounded by construction: at most `router.http_max_conns` connections (more are
//! answered 503 and closed); a request head of at most 8 KiB (431) and a body of at most
//! `router.http_max_body` (413), parsed by [`parse`] before anything is buffered past them; the
//! head and body of each request must arrive within `router.http_timeout_ms` of the connection
//! starting to wait for it (408, then close: slowloris), which is also the keep-alive idle limit
//! and how long a `/push` waits for the backend's answer (504). A request that breaks HTTP
//! framing is answered with its 4xx/5xx and the connection closed; a request that is valid HTTP
//! but a bad API call is answered and the connection kept. Nothing a request does reaches the
//! links unless it was fully validated.
//!
//! [`HttpState`] owns the requests waiting for the backend's answer (`Out::Local`, matched by
//! `Origin::conn`) and the connection count.

pub mod api;
pub mod parse;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use serde_json::json;

use self::api::Command;
use self::parse::{Limits, parse};
use super::hub::LOCAL_ORIGIN;
use super::{Server, Service, now_ms};
use crate::code;
use crate::im::{Origin, Reply};

/// How long a refused connection (503) may take to read its answer.
const REFUSE_WRITE: Duration = Duration::from_secs(1);

/// The HTTP API's state on the router thread.
#[derive(Debug, Default)]
pub struct HttpState {
    next_id: Cell<u64>,
    waiting: RefCell<HashMap<u64, LocalSender<Reply>>>,
    conns: Cell<usize>,
    last_client_msg_id: Cell<u64>,
}

impl HttpState {
    /// The answer to a request the router made itself.
    pub fn answer(&self, origin: Origin, reply: Reply) {
        match self.waiting.borrow_mut().remove(&origin.conn) {
            // A channel of one, used once: try_send cannot find it full.
            Some(tx) => {
                let _ = tx.try_send(reply);
            }
            None => tracing::debug!(
                conn = origin.conn,
                "an answer with no HTTP request waiting (timed out)"
            ),
        }
    }

    fn register(&self) -> (u64, LocalReceiver<Reply>) {
        let id = self.next_id.get().wrapping_add(1).max(1);
        self.next_id.set(id);
        let (tx, rx) = local_channel::new_bounded(1);
        self.waiting.borrow_mut().insert(id, tx);
        (id, rx)
    }

    /// A `client_msg_id` for a push whose caller gave none: unique per router (strictly
    /// increasing) and across restarts while the clock does not go back (`now_ms << 16`).
    fn next_client_msg_id(&self, now_ms: u64) -> u64 {
        let id = (now_ms << 16).max(self.last_client_msg_id.get() + 1);
        self.last_client_msg_id.set(id);
        id
    }
}

/// Counts one connection for as long as it lives.
struct ConnSlot<'a>(&'a Cell<usize>);

impl Drop for ConnSlot<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

pub(crate) async fn accept_loop<S: Service + 'static>(
    server: Rc<Server<S>>,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                let conns = &server.http.conns;
                if conns.get() >= server.settings.http.max_conns {
                    tracing::warn!("HTTP connection refused: router.http_max_conns reached");
                    glommio::spawn_local(async move {
                        let answer = api::error_response(
                            503,
                            "too many HTTP connections (router.http_max_conns)",
                            false,
                        );
                        let _ = with_deadline(REFUSE_WRITE, stream.write_all(&answer)).await;
                        let _ = stream.close().await;
                    })
                    .detach();
                    continue;
                }
                conns.set(conns.get() + 1);
                glommio::spawn_local(serve(Rc::clone(&server), stream)).detach();
            }
            Err(err) => {
                tracing::warn!(%err, "http accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `fut`, or `None` when `within` passed first.
async fn with_deadline<T>(within: Duration, fut: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(within).await;
        None
    })
    .await
}

/// One connection: requests one after another until it closes, breaks framing, or idles.
async fn serve<S: Service + 'static>(server: Rc<Server<S>>, mut stream: TcpStream) {
    let _slot = ConnSlot(&server.http.conns);
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let http = server.settings.http;
    let limits = Limits {
        max_head: http.max_head,
        max_body: http.max_body,
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let deadline = Instant::now() + http.timeout;
        let parsed = loop {
            match parse(&buf, limits) {
                Ok(None) => {}
                done => break done,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match with_deadline(left, stream.read(&mut chunk)).await {
                None => {
                    if !buf.is_empty() {
                        tracing::debug!(?peer, "HTTP request not complete in time");
                        let answer = api::error_response(
                            408,
                            "the request did not arrive within router.http_timeout_ms",
                            false,
                        );
                        let _ = with_deadline(http.timeout, stream.write_all(&answer)).await;
                    }
                    let _ = stream.close().await;
                    return;
                }
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        };
        let (request, used) = match parsed {
            Ok(Some(done)) => done,
            Ok(None) => unreachable!("the parse loop ends only on a request or an error"),
            Err(err) => {
                tracing::debug!(?peer, %err, "bad HTTP request");
                let answer = api::error_response(err.status(), &err.to_string(), false);
                let _ = with_deadline(http.timeout, stream.write_all(&answer)).await;
                let _ = stream.close().await;
                return;
            }
        };
        buf.drain(..used);
        let (status, body) = handle(&server, &request).await;
        tracing::debug!(?peer, method = %request.method, path = %request.path, status, "HTTP");
        let answer = api::response(status, &body, request.keep_alive);
        match with_deadline(http.timeout, stream.write_all(&answer)).await {
            Some(Ok(())) if request.keep_alive => {}
            _ => {
                let _ = stream.close().await;
                return;
            }
        }
    }
}

/// The HTTP status for a backend result code.
fn status_of(code: u32) -> u16 {
    match code {
        code::BAD_REQUEST => 400,
        code::FORBIDDEN => 403,
        code::NOT_FOUND => 404,
        code::TOO_LARGE => 413,
        code::BACKEND_UNAVAILABLE => 503,
        _ => 500,
    }
}

async fn handle<S: Service + 'static>(
    server: &Server<S>,
    request: &parse::Request,
) -> (u16, serde_json::Value) {
    let http = server.settings.http;
    let command = match api::command(request, http.client_max_frame) {
        Ok(command) => command,
        Err(err) => return (err.status(), json!({ "error": err.to_string() })),
    };
    match command {
        Command::Online { uid } => {
            let hub = server.hub.borrow();
            let sessions: Vec<serde_json::Value> = hub
                .routes(uid)
                .iter()
                .map(|r| {
                    json!({
                        "gate": hub.gate_name(r.gate).unwrap_or_default(),
                        "shard": r.shard,
                        "device": &*r.device_id,
                        "session": r.session_id,
                        "since_ms": r.since_ms,
                    })
                })
                .collect();
            (200, json!({ "uid": uid, "sessions": sessions }))
        }
        Command::Kick {
            uid,
            device,
            reason,
            message,
        } => {
            let kicked = server.hub.borrow_mut().kick(uid, &device, reason, &message);
            server.flush();
            (200, json!({ "kicked": kicked, "reason": reason }))
        }
        Command::BizPush(push) => {
            let (links, skipped) = server.hub.borrow_mut().biz_push(push);
            server.flush();
            (200, json!({ "links": links, "skipped_links": skipped }))
        }
        Command::Push {
            mut send,
            recipients,
        } => {
            let now = now_ms();
            if send.client_msg_id == 0 {
                send.client_msg_id = server.http.next_client_msg_id(now);
            }
            let client_msg_id = send.client_msg_id;
            let (id, answer) = server.http.register();
            let origin = Origin {
                shard: LOCAL_ORIGIN,
                conn: id,
                seq: 0,
                log_id: 0,
            };
            server
                .hub
                .borrow_mut()
                .submit_push(origin, send, recipients, now);
            server.flush();
            match with_deadline(http.timeout, answer.recv()).await.flatten() {
                Some(Reply::Send(r)) if r.code == code::OK => (
                    200,
                    json!({
                        "msg_id": r.msg_id,
                        "server_time_ms": r.server_time_ms,
                        "client_msg_id": client_msg_id,
                    }),
                ),
                Some(Reply::Send(r)) => (
                    status_of(r.code),
                    json!({ "error": r.message, "code": r.code }),
                ),
                Some(other) => {
                    tracing::error!(?other, "a push answered with another request's answer");
                    (
                        500,
                        json!({ "error": "the backend gave an unexpected answer" }),
                    )
                }
                None => {
                    server.http.waiting.borrow_mut().remove(&id);
                    server.hub.borrow_mut().cancel_push(id);
                    (
                        504,
                        json!({ "error": "the backend did not answer within router.http_timeout_ms" }),
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_client_msg_ids_only_grow() {
        let state = HttpState::default();
        let a = state.next_client_msg_id(1_000);
        let b = state.next_client_msg_id(1_000);
        let c = state.next_client_msg_id(999);
        assert!(a != 0 && a < b && b < c, "{a} {b} {c}");
        assert!(state.next_client_msg_id(2_000) > c);
    }
}
