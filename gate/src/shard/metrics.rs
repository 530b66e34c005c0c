//! One shard's counters for the admin endpoint: plain integers owned by the shard's thread
//! (no atomics, no locks on the message path), copied out whole when the admin thread asks
//! (a `Scrape` over the shard's control socket), and rendered in the Prometheus text format.
//!
//! Owns the counter set, the backend latency histogram (and the bounded table of sampled
//! requests in flight that feeds it) and the text rendering. Never touches IO.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use router::idmap::IdMap;

/// Backend latency buckets, upper bounds in microseconds (Prometheus `le`, in seconds).
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];
/// Requests whose backend latency is being timed at once, per shard; past it new ones are not
/// sampled (the metric is a sample, never a cost on the message path).
const MAX_TIMED: usize = 4096;
/// A timed request without an answer this long is forgotten (its connection went away).
const TIMED_EXPIRY: Duration = Duration::from_secs(60);

/// The kick reasons on the wire (PROTOCOL.md), for the `reason` label.
const KICK_REASONS: [(u32, &str); 7] = [
    (1, "duplicate_login"),
    (2, "draining"),
    (3, "auth_expired"),
    (4, "slow_consumer"),
    (5, "protocol_error"),
    (6, "idle_timeout"),
    (7, "admin"),
];

/// A histogram of durations in fixed buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per bucket of [`LATENCY_BUCKETS_US`] (not cumulative), then one above the last.
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }
}

/// Everything one shard counts. Counters only grow; gauges are filled at scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMetrics {
    pub shard: usize,
    // Gauges.
    pub connections: u64,
    pub sessions: u64,
    pub outbound_bytes: u64,
    /// The backend answers (embedded: always; remote: this shard's link is up).
    pub backend_up: bool,
    // Counters.
    /// LOGIN results by code (index = code; codes above 15 count in 15).
    pub logins: [u64; 16],
    pub frames_in: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    /// PUSH frames queued (first sends; resends are `retries`).
    pub pushes: u64,
    pub acks: u64,
    pub retries: u64,
    pub undelivered: u64,
    /// KICKs by reason (index = the wire reason, 1..=7).
    pub kicks: [u64; 8],
    pub rate_limited: u64,
    pub handoffs_out: u64,
    pub handoffs_in: u64,
    /// TLS handshakes on `gate.tls_listen`: finished, failed (a bad hello or record, rustls'
    /// alert), and not finished by `gate.tls_handshake_timeout_ms`.
    pub tls_handshakes_ok: u64,
    pub tls_handshakes_failed: u64,
    pub tls_handshakes_timed_out: u64,
    pub backend_latency: Histogram,
}

impl ShardMetrics {
    pub fn login(&mut self, code: u32) {
        self.logins[(code as usize).min(15)] += 1;
    }

    pub fn kick(&mut self, reason: u32) {
        if let Some(k) = self.kicks.get_mut(reason as usize) {
            *k += 1;
        }
    }
}

/// Requests being timed: `(connection, seq)` → when it was submitted.
#[derive(Debug, Default)]
pub struct LatencySampler {
    started: IdMap<(u64, u32), Instant>,
}

impl LatencySampler {
    /// Starts timing a request unless the table is full (then stale entries are swept).
    pub fn start(&mut self, conn: u64, seq: u32, now: Instant) {
        if self.started.len() >= MAX_TIMED {
            self.started
                .retain(|_, at| now.saturating_duration_since(*at) < TIMED_EXPIRY);
            if self.started.len() >= MAX_TIMED {
                return;
            }
        }
        self.started.insert((conn, seq), now);
    }

    /// The answer to `(conn, seq)` arrived: its latency, if it was timed.
    pub fn finish(&mut self, conn: u64, seq: u32, now: Instant) -> Option<Duration> {
        let at = self.started.remove(&(conn, seq))?;
        Some(now.saturating_duration_since(at))
    }
}

/// A one-sample-per-shard family: name, type, help, and how to read it.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardMetrics) -> u64,
);

/// The Prometheus text exposition of every shard's metrics (format 0.0.4): one family per
/// metric, `shard` label on every sample.
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(4096 + shards.len() * 4096);
    let mut family = |name: &str, kind: &str, help: &str, samples: &mut dyn FnMut(&mut String)| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        samples(&mut out);
    };
    let simple: [Family; 13] = [
        (
            "imgate_connections",
            "gauge",
            "Open client connections.",
            |m| m.connections,
        ),
        ("imgate_sessions", "gauge", "Logged-in sessions.", |m| {
            m.sessions
        }),
        (
            "imgate_outbound_queue_bytes",
            "gauge",
            "Bytes queued for clients and not yet written.",
            |m| m.outbound_bytes,
        ),
        (
            "imgate_backend_up",
            "gauge",
            "1 when the backend answers (embedded: always; remote: the shard's link is up).",
            |m| u64::from(m.backend_up),
        ),
        (
            "imgate_frames_in_total",
            "counter",
            "Client frames received.",
            |m| m.frames_in,
        ),
        (
            "imgate_bytes_in_total",
            "counter",
            "Bytes received from clients.",
            |m| m.bytes_in,
        ),
        (
            "imgate_frames_out_total",
            "counter",
            "Frames queued for clients.",
            |m| m.frames_out,
        ),
        (
            "imgate_bytes_out_total",
            "counter",
            "Bytes written to clients.",
            |m| m.bytes_out,
        ),
        (
            "imgate_pushes_total",
            "counter",
            "PUSH frames sent (first sends).",
            |m| m.pushes,
        ),
        (
            "imgate_acks_total",
            "counter",
            "PUSHes acknowledged by clients.",
            |m| m.acks,
        ),
        (
            "imgate_push_retries_total",
            "counter",
            "PUSH resends after an ack timeout.",
            |m| m.retries,
        ),
        (
            "imgate_undelivered_total",
            "counter",
            "PUSHes reported undelivered to the backend.",
            |m| m.undelivered,
        ),
        (
            "imgate_rate_limited_total",
            "counter",
            "Requests answered RATE_LIMITED.",
            |m| m.rate_limited,
        ),
    ];
    for (name, kind, help, get) in simple {
        family(name, kind, help, &mut |out| {
            for m in shards {
                let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", m.shard, get(m));
            }
        });
    }
    family(
        "imgate_handoffs_total",
        "counter",
        "Connections handed to their owner shard, by direction.",
        &mut |out| {
            for m in shards {
                let _ = writeln!(
                    out,
                    "imgate_handoffs_total{{shard=\"{}\",direction=\"out\"}} {}",
                    m.shard, m.handoffs_out
                );
                let _ = writeln!(
                    out,
                    "imgate_handoffs_total{{shard=\"{}\",direction=\"in\"}} {}",
                    m.shard, m.handoffs_in
                );
            }
        },
    );
    family(
        "imgate_tls_handshakes_total",
        "counter",
        "TLS handshakes on gate.tls_listen, by result (ok, failed, timeout).",
        &mut |out| {
            for m in shards {
                for (result, n) in [
                    ("ok", m.tls_handshakes_ok),
                    ("failed", m.tls_handshakes_failed),
                    ("timeout", m.tls_handshakes_timed_out),
                ] {
                    let _ = writeln!(
                        out,
                        "imgate_tls_handshakes_total{{shard=\"{}\",result=\"{result}\"}} {n}",
                        m.shard
                    );
                }
            }
        },
    );
    family(
        "imgate_logins_total",
        "counter",
        "LOGIN results, by LoginResp code (0 = accepted).",
        &mut |out| {
            for m in shards {
                for (code, &n) in m.logins.iter().enumerate() {
                    if n > 0 || code == 0 {
                        let _ = writeln!(
                            out,
                            "imgate_logins_total{{shard=\"{}\",code=\"{code}\"}} {n}",
                            m.shard
                        );
                    }
                }
            }
        },
    );
    family(
        "imgate_kicks_total",
        "counter",
        "KICKs sent, by reason.",
        &mut |out| {
            for m in shards {
                for (reason, name) in KICK_REASONS {
                    let _ = writeln!(
                        out,
                        "imgate_kicks_total{{shard=\"{}\",reason=\"{name}\"}} {}",
                        m.shard, m.kicks[reason as usize]
                    );
                }
            }
        },
    );
    family(
        "imgate_backend_latency_seconds",
        "histogram",
        "Time from a request's submission to the backend to its answer (sampled).",
        &mut |out| {
            for m in shards {
                let h = &m.backend_latency;
                let mut cumulative = 0;
                for (i, le) in LATENCY_BUCKETS_US.iter().enumerate() {
                    cumulative += h.buckets[i];
                    let _ = writeln!(
                        out,
                        "imgate_backend_latency_seconds_bucket{{shard=\"{}\",le=\"{}\"}} {cumulative}",
                        m.shard,
                        seconds(*le)
                    );
                }
                cumulative += h.buckets[LATENCY_BUCKETS_US.len()];
                let _ = writeln!(
                    out,
                    "imgate_backend_latency_seconds_bucket{{shard=\"{}\",le=\"+Inf\"}} {cumulative}",
                    m.shard
                );
                let _ = writeln!(
                    out,
                    "imgate_backend_latency_seconds_sum{{shard=\"{}\"}} {}",
                    m.shard,
                    seconds(h.sum_us)
                );
                let _ = writeln!(
                    out,
                    "imgate_backend_latency_seconds_count{{shard=\"{}\"}} {}",
                    m.shard, h.count
                );
            }
        },
    );
    out
}

/// Microseconds as decimal seconds, exactly (`1500` → `0.0015`).
fn seconds(us: u64) -> String {
    let (whole, frac) = (us / 1_000_000, us % 1_000_000);
    if frac == 0 {
        return format!("{whole}");
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_micros(51));
        h.record(Duration::from_secs(10));
        assert_eq!(h.buckets[0], 1, "50 µs is in le=0.00005");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(
            h.buckets[LATENCY_BUCKETS_US.len()],
            1,
            "above the last bucket"
        );
        assert_eq!((h.count, h.sum_us), (3, 10_000_101));
        assert_eq!(seconds(1500), "0.0015");
        assert_eq!(seconds(5_000_000), "5");
    }

    #[test]
    fn the_sampler_is_bounded_and_sweeps_stale_entries() {
        let mut s = LatencySampler::default();
        let t0 = Instant::now();
        for i in 0..MAX_TIMED as u32 + 10 {
            s.start(1, i, t0);
        }
        assert_eq!(s.started.len(), MAX_TIMED);
        assert_eq!(
            s.finish(1, 0, t0 + Duration::from_millis(3)),
            Some(Duration::from_millis(3))
        );
        assert_eq!(s.finish(1, 0, t0), None, "finished once");
        s.start(1, u32::MAX, t0);
        assert_eq!(s.started.len(), MAX_TIMED, "full again");
        s.start(2, 0, t0 + TIMED_EXPIRY * 2);
        assert_eq!(s.started.len(), 1, "the stale ones were swept to make room");
    }
}
