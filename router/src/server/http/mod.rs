//! The HTTP API on `router.http_listen` — not built yet (issue 8, part 5: `POST /push`,
//! `POST /kick`, `GET /online`). Until it is, every connection is answered
//! `501 Not Implemented` and closed, so a caller gets a clear answer rather than a reset.
//!
//! [`Waiters`] is where the answers to requests the router makes itself (`Out::Local`, e.g. the
//! stored message of a `POST /push`) will be matched to their HTTP request.

use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::net::TcpListener;

use super::{Server, Service};
use crate::im::{Origin, Reply};

const NOT_IMPLEMENTED: &[u8] = b"HTTP/1.1 501 Not Implemented\r\ncontent-type: text/plain\r\n\
content-length: 40\r\nconnection: close\r\n\r\nthe router's HTTP API is not built yet.\n";

/// HTTP requests waiting for the backend's answer (none until the API exists).
#[derive(Debug, Default)]
pub struct Waiters {}

impl Waiters {
    /// The answer to a request the router made itself.
    pub fn answer(&self, origin: Origin, _reply: Reply) {
        tracing::debug!(conn = origin.conn, "an answer with no HTTP request waiting");
    }
}

pub(crate) async fn accept_loop<S: Service + 'static>(
    _server: Rc<Server<S>>,
    listener: TcpListener,
) {
    loop {
        match listener.accept().await {
            Ok(mut stream) => {
                glommio::spawn_local(async move {
                    let _ = stream.write_all(NOT_IMPLEMENTED).await;
                    let _ = stream.close().await;
                })
                .detach();
            }
            Err(err) => {
                tracing::warn!(%err, "http accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_placeholder_answer_has_the_length_it_announces() {
        let text = std::str::from_utf8(super::NOT_IMPLEMENTED).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }
}
