//! The nats-server side of the fan-out scenario: subscribers `SUB` one subject and count `MSG`s,
//! publishers `PUB` to it. `verbose` is off, so nothing is acknowledged by the server; the
//! in-flight window is bounded by deliveries counted (see `drive`).
//!
//! [`NatsHandler`] is sans-IO: it turns bytes into counts, answers the server's PING, and appends
//! publishes to the caller's output buffer.

use super::ConnSpec;
use super::drive::{self, Handler};
use super::exec::{Conn, ConnError, Event, Exec};
use crate::nats::{CONNECT, Op, PING, PONG, parse_op, pub_message, sub_line};

/// One nats connection's protocol state.
pub struct NatsHandler {
    delivered: u64,
    pongs: u64,
    /// Publishers only: one complete `PUB` with its payload.
    publish: Option<Vec<u8>>,
}

impl NatsHandler {
    pub fn new(publish: Option<Vec<u8>>) -> Self {
        Self {
            delivered: 0,
            pongs: 0,
            publish,
        }
    }
}

impl Handler for NatsHandler {
    fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, ConnError> {
        let mut at = 0;
        while let Some((op, n)) = parse_op(&buf[at..]).map_err(ConnError::Nats)? {
            match op {
                Op::Msg { .. } => self.delivered += 1,
                Op::Ping => out.extend_from_slice(PONG),
                Op::Pong => self.pongs += 1,
                Op::Ok | Op::Info => {}
                Op::Err(text) => {
                    return Err(ConnError::NatsErr(
                        String::from_utf8_lossy(text).into_owned(),
                    ));
                }
            }
            at += n;
        }
        Ok(at)
    }

    fn take_delivered(&mut self) -> (u64, u64) {
        (std::mem::take(&mut self.delivered), 0)
    }

    fn acks_pending(&self) -> bool {
        false
    }

    fn flush_acks(&mut self, _out: &mut Vec<u8>) {}

    fn can_send(&self) -> u64 {
        if self.publish.is_some() { u64::MAX } else { 0 }
    }

    fn put_publish(&mut self, out: &mut Vec<u8>) {
        if let Some(msg) = &self.publish {
            out.extend_from_slice(msg);
        }
    }
}

/// One nats connection: CONNECT (and SUB), a PING whose PONG says the server has processed them,
/// then subscribe or publish until the run is over.
pub async fn conn(exec: &Exec, spec: ConnSpec) -> Result<(), ConnError> {
    let plan = &exec.plan;
    let mut conn = Conn::connect(exec, plan.addr).await?;
    let publish = spec
        .publisher
        .then(|| pub_message(&plan.subject, &plan.payload));
    let mut h = NatsHandler::new(publish);
    conn.out.extend_from_slice(CONNECT);
    if !spec.publisher {
        conn.out.extend_from_slice(&sub_line(&plan.subject, 1));
    }
    conn.out.extend_from_slice(PING);
    conn.flush_out().await?;
    while h.pongs == 0 {
        if conn.next_event(exec, &mut h, |_, _| false).await? == Event::Eof {
            return Err(ConnError::Closed);
        }
        conn.flush_out().await?;
    }
    drive::run(exec, &mut conn, &mut h, spec.publisher).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgs_are_counted_pings_answered_and_err_ends_the_connection() {
        let mut h = NatsHandler::new(None);
        let mut out = Vec::new();
        let input = b"INFO {}\r\nMSG bench 1 3\r\nabc\r\nPING\r\nMSG bench 1 3\r\nab";
        let used = h.feed(input, &mut out).expect("valid");
        assert_eq!(
            &input[used..],
            b"MSG bench 1 3\r\nab",
            "the partial MSG is left"
        );
        assert_eq!(out, PONG);
        assert_eq!(h.take_delivered(), (1, 0));
        assert_eq!(h.can_send(), 0);
        assert!(matches!(
            h.feed(b"-ERR 'Slow Consumer'\r\n", &mut out),
            Err(ConnError::NatsErr(text)) if text == "'Slow Consumer'"
        ));
    }

    #[test]
    fn publisher_appends_whole_pub_messages() {
        let mut h = NatsHandler::new(Some(pub_message("bench", b"hi")));
        let mut out = Vec::new();
        h.put_publish(&mut out);
        h.put_publish(&mut out);
        assert_eq!(out, b"PUB bench 2\r\nhi\r\nPUB bench 2\r\nhi\r\n");
    }
}
