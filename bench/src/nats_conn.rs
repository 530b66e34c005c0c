//! The nats-server side of every scenario that has one: a connection `SUB`s its subject (if it
//! receives) and counts and times the `MSG`s, and `PUB`s to its destination subject (if it
//! sends). `verbose` is off, so the server acknowledges nothing; closed-loop windows are bounded
//! by deliveries counted (see the scenarios).
//!
//! [`NatsHandler`] is sans-IO: it turns bytes into counts and latencies (the timestamp at the
//! front of each payload), answers the server's PING, and appends publishes to the caller's
//! output buffer.

use std::net::SocketAddr;

use crate::coord::Counts;
use crate::drive::{self, Handler, Pacer, Received};
use crate::exec::{Conn, ConnError, Event, Exec};
use crate::latency::read_stamp;
use crate::nats::{CONNECT, Op, PING, PONG, PubTemplate, parse_op, sub_line};

/// One nats connection's protocol state.
pub struct NatsHandler {
    counts: Counts,
    pongs: u64,
    /// Senders only: one complete `PUB` with its payload.
    publish: Option<PubTemplate>,
}

impl NatsHandler {
    pub fn new(publish: Option<PubTemplate>) -> Self {
        Self {
            counts: Counts::default(),
            pongs: 0,
            publish,
        }
    }
}

impl Handler for NatsHandler {
    fn feed(
        &mut self,
        buf: &[u8],
        out: &mut Vec<u8>,
        rx: &mut Received<'_>,
    ) -> Result<usize, ConnError> {
        let mut at = 0;
        while let Some((op, n)) = parse_op(&buf[at..]).map_err(ConnError::Nats)? {
            match op {
                Op::Msg { payload } => {
                    self.counts.delivered += 1;
                    if let Some(stamp) = read_stamp(payload) {
                        rx.latency.record(stamp, rx.now_ns);
                    }
                }
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

    fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    fn acks_pending(&self) -> bool {
        false
    }

    fn flush_acks(&mut self, _out: &mut Vec<u8>) {}

    fn can_send(&self) -> u64 {
        if self.publish.is_some() { u64::MAX } else { 0 }
    }

    fn put_send(&mut self, out: &mut Vec<u8>, stamp_ns: u64) {
        if let Some(template) = &self.publish {
            template.put(out, stamp_ns);
        }
    }
}

/// One nats connection: CONNECT (and `SUB subscribe`), a PING whose PONG says the server has
/// processed them, then send (with `pacer` and `publish`) or receive until the run is over.
pub async fn conn<P: Pacer<NatsHandler>>(
    exec: &Exec,
    addr: SocketAddr,
    subscribe: Option<&str>,
    publish: Option<PubTemplate>,
    pacer: Option<P>,
) -> Result<(), ConnError> {
    let mut conn = Conn::connect(exec, addr).await?;
    let mut h = NatsHandler::new(publish);
    conn.out.extend_from_slice(CONNECT);
    if let Some(subject) = subscribe {
        conn.out.extend_from_slice(&sub_line(subject, 1));
    }
    conn.out.extend_from_slice(PING);
    conn.flush_out().await?;
    while h.pongs == 0 {
        if conn.next_event(exec, &mut h, |_, _| false).await? == Event::Eof {
            return Err(ConnError::Closed);
        }
        conn.flush_out().await?;
    }
    drive::run(exec, &mut conn, &mut h, pacer).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latency::Latency;

    #[test]
    fn msgs_are_counted_and_timed_pings_answered_and_err_ends_the_connection() {
        let mut h = NatsHandler::new(None);
        let mut latency = Latency::new();
        let mut rx = Received {
            now_ns: 5_000_000,
            latency: &mut latency,
        };
        let mut out = Vec::new();
        let mut input = b"INFO {}\r\nMSG u.1 1 8\r\n".to_vec();
        input.extend_from_slice(&4_000_000u64.to_le_bytes());
        input.extend_from_slice(b"\r\nPING\r\nMSG u.1 1 3\r\nab");
        let used = h.feed(&input, &mut out, &mut rx).expect("valid");
        assert_eq!(
            &input[used..],
            b"MSG u.1 1 3\r\nab",
            "the partial MSG is left"
        );
        assert_eq!(out, PONG);
        assert_eq!(h.take_counts().delivered, 1);
        assert_eq!(h.can_send(), 0);
        assert!(matches!(
            h.feed(b"-ERR 'Slow Consumer'\r\n", &mut out, &mut rx),
            Err(ConnError::NatsErr(text)) if text == "'Slow Consumer'"
        ));
        assert_eq!(latency.count(), 1);
        assert!((latency.summary().max_us - 1_000.0).abs() < 1.0);
    }

    #[test]
    fn sender_appends_whole_stamped_pub_messages() {
        let mut h = NatsHandler::new(Some(PubTemplate::new("u.2", &[b'x'; 8])));
        let mut out = Vec::new();
        h.put_send(&mut out, 1);
        h.put_send(&mut out, 2);
        let mut want = b"PUB u.2 8\r\n".to_vec();
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(b"\r\nPUB u.2 8\r\n");
        want.extend_from_slice(&2u64.to_le_bytes());
        want.extend_from_slice(b"\r\n");
        assert_eq!(out, want);
    }
}
