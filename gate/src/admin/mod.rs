//! The admin endpoint (`admin.listen`, default `127.0.0.1:7070`): HTTP/1.1 on its own thread,
//! off the message path — it reaches the shards only through [`GateControl`] (message passing,
//! with timeouts), so a slow scrape can never stall a shard.
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | every shard's counters in the Prometheus text format (`metrics::render`) |
//! | `GET /healthz` | 200 while the process serves this endpoint (liveness) |
//! | `GET /readyz` | 200 when every shard answers and the backend is reachable from each; 503 otherwise, and while draining |
//! | `GET /lsb` | `{"connections", "capacity", "shards", "draining"}`: for least-connections assignment |
//! | `POST /drain` | starts the drain (as SIGTERM does); 202 |
//! | `POST /kick?uid=N[&device=D]` | KICK 7 to that user's sessions (or one device); `{"kicked": n}` |
//!
//! Owns the listening socket and its thread; one request per connection (`connection: close`),
//! connections served one at a time with a 5 s deadline each, request heads capped at 8 KiB
//! and bodies at 4 KiB by the router's bounded parser. Unauthenticated: keep it on loopback or
//! a private network.

pub mod promtext;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use router::server::http::parse::{self, Limits, Request};

use crate::shard::GateControl;
use crate::shard::metrics;

/// How long one admin connection may take, and how long a shard may take to answer.
const IO_DEADLINE: Duration = Duration::from_secs(5);
const SHARD_DEADLINE: Duration = Duration::from_secs(2);
const LIMITS: Limits = Limits {
    max_head: 8192,
    max_body: 4096,
};

/// A running admin endpoint; dropping it stops the thread.
pub struct AdminServer {
    addr: SocketAddr,
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `addr` and serves it on a new thread.
    pub fn start(addr: SocketAddr, control: Arc<GateControl>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let accepting = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("imgate-admin".into())
            .spawn(move || {
                for conn in accepting.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    match conn {
                        Ok(stream) => serve(stream, &control),
                        Err(err) => {
                            tracing::debug!(%err, "admin accept failed");
                            // EMFILE and friends: do not spin.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        Ok(Self {
            addr: local,
            listener,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept (Linux: shutdown of a listening socket ends accept).
        // SAFETY: shutdown on an fd this struct owns.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection: read one request within the deadline, answer, close.
fn serve(mut stream: TcpStream, control: &GateControl) {
    let deadline = Instant::now() + IO_DEADLINE;
    let _ = stream.set_write_timeout(Some(IO_DEADLINE));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let request = loop {
        match parse::parse(&buf, LIMITS) {
            Ok(Some((request, _))) => break request,
            Ok(None) => {}
            Err(err) => {
                let _ = stream.write_all(&text(err.status(), &err.to_string()));
                return;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            let _ = stream.write_all(&text(408, "request not received in time"));
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let _ = stream.write_all(&answer(&request, control));
}

/// The response to `req`.
fn answer(req: &Request, control: &GateControl) -> Vec<u8> {
    let routes: [(&str, &str); 6] = [
        ("/metrics", "GET"),
        ("/healthz", "GET"),
        ("/readyz", "GET"),
        ("/lsb", "GET"),
        ("/drain", "POST"),
        ("/kick", "POST"),
    ];
    let Some(&(_, method)) = routes.iter().find(|(path, _)| *path == req.path) else {
        return text(404, "no such endpoint");
    };
    if req.method != method {
        return response(
            405,
            "text/plain",
            &[("allow", method)],
            "method not allowed\n",
        );
    }
    match req.path.as_str() {
        "/metrics" => match control.scrape(SHARD_DEADLINE) {
            Ok(shards) => response(
                200,
                "text/plain; version=0.0.4",
                &[],
                &metrics::render(&shards),
            ),
            Err(shard) => text(503, &format!("shard {shard} did not answer")),
        },
        "/healthz" => text(200, "ok"),
        "/readyz" => ready(control),
        "/lsb" => match control.scrape(SHARD_DEADLINE) {
            Ok(shards) => {
                let body = serde_json::json!({
                    "connections": shards.iter().map(|m| m.connections).sum::<u64>(),
                    "capacity": control.capacity(),
                    "shards": control.shards(),
                    "draining": control.is_draining(),
                });
                response(200, "application/json", &[], &format!("{body}\n"))
            }
            Err(shard) => text(503, &format!("shard {shard} did not answer")),
        },
        "/drain" => {
            control.drain();
            response(202, "application/json", &[], "{\"draining\":true}\n")
        }
        _ => kick(req, control),
    }
}

fn ready(control: &GateControl) -> Vec<u8> {
    if control.is_draining() {
        return text(503, "draining");
    }
    match control.scrape(SHARD_DEADLINE) {
        Err(shard) => text(503, &format!("shard {shard} did not answer")),
        Ok(shards) => match shards.iter().find(|m| !m.backend_up) {
            Some(m) => text(503, &format!("backend unreachable from shard {}", m.shard)),
            None => text(200, "ready"),
        },
    }
}

fn kick(req: &Request, control: &GateControl) -> Vec<u8> {
    let uid = parse::query_param(&req.query, "uid").and_then(|v| v.parse::<u64>().ok());
    let Some(uid) = uid.filter(|&u| u != 0) else {
        return text(400, "uid=N (a non-zero integer) is required");
    };
    let device = parse::query_param(&req.query, "device").map(str::to_owned);
    match control.kick(uid, device, SHARD_DEADLINE) {
        Some(n) => response(
            200,
            "application/json",
            &[],
            &format!("{}\n", serde_json::json!({ "kicked": n })),
        ),
        None => text(503, "the user's shard did not answer"),
    }
}

fn text(status: u16, body: &str) -> Vec<u8> {
    response(status, "text/plain", &[], &format!("{body}\n"))
}

fn response(status: u16, content_type: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}
