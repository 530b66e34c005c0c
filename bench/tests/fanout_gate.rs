//! `fanout::run` end to end against an in-process gate (one shard, loopback, ephemeral port):
//! every member logs in, the group is created, the publishers send for one second, and after the
//! drain every message has reached every other member exactly once, with no connection error —
//! at max (closed window), at an open-loop rate (PUSH path, timed), and for a group above the
//! gate's push threshold (NOTIFY + PULL path, timed to the pull).

mod common;

use bench::fanout::{self, FanoutArgs, Summary, Target};
use bench::report::Report;
use clap::Parser;
use common::{assert_json_shape, gate_config, json_number, start_gate};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fanout: FanoutArgs,
}

/// Runs fanout against a fresh gate with `push_threshold`, with the small-scale options plus
/// `extra`.
fn run(push_threshold: u32, members: &str, extra: &[&str]) -> Summary {
    let handle = start_gate(&gate_config(push_threshold));
    let addr = handle.local_addr().to_string();
    let mut argv = vec![
        "test",
        "--addr",
        &addr,
        "--members",
        members,
        "--duration",
        "1",
        "--drain",
        "5",
        "--cpus",
        "0",
    ];
    argv.extend_from_slice(extra);
    let args = Cli::parse_from(argv).fanout;
    let summary = fanout::run(&args).expect("run completes");
    handle.stop();
    summary
}

const KEYS: &[&str] = &[
    "target",
    "path",
    "rate",
    "deliveries_per_sec",
    "latency_us",
    "p50",
    "p90",
    "p99",
    "p999",
    "max",
    "cpu",
    "published_total",
    "delivered_total",
    "pulled_total",
    "missing",
    "errors",
];

#[test]
fn fanout_run_against_a_gate_delivers_every_message_to_every_member() {
    let summary = run(2000, "40", &["--publishers", "2", "--inflight", "20"]);
    assert_eq!(summary.target, Target::Gate);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert_eq!(summary.common.connections, 42);
    assert_eq!(summary.recipients, 41, "40 members and the other publisher");
    assert!(summary.measured.sent > 0 && summary.measured.delivered > 0);
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.end.repeats, 0);
    assert_eq!(summary.path(), "push");
    assert!(!summary.failed());
    // Closed loop: latency from the actual send, one sample per delivery.
    assert_eq!(summary.common.latency.count, summary.end.unique());
}

#[test]
fn fanout_at_an_open_loop_rate_times_every_push_from_its_scheduled_send() {
    let summary = run(2000, "20", &["--rate", "500", "--json"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    // 500 msg/s for 1 s: exactly 500 scheduled, each to 20 members.
    assert_eq!(summary.end.sent, 500, "{}", summary.to_text());
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.path(), "push");
    assert_eq!(summary.common.latency.count, 500 * 20);
    assert!(summary.common.latency.p50_us > 0.0);
    let json = summary.to_json();
    assert_json_shape(&json, "fanout", KEYS);
    assert!(json.contains("\"path\":\"push\""), "{json}");
    assert_eq!(json_number(&json, "rate"), Some(500.0));
    assert_eq!(json_number(&json, "missing"), Some(0.0));
    assert_eq!(json_number(&json, "count"), Some(10_000.0));
}

#[test]
fn fanout_to_a_group_above_the_push_threshold_pulls_after_notify() {
    // 20 members + 1 publisher > 10: the gate sends NOTIFY, members PULL.
    let summary = run(10, "20", &["--rate", "200"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert_eq!(summary.end.sent, 200, "{}", summary.to_text());
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.path(), "notify_pull", "{}", summary.to_text());
    assert!(summary.end.notifies > 0);
    assert_eq!(summary.end.pulled, 200 * 20);
    assert_eq!(summary.common.latency.count, 200 * 20);
    let json = summary.to_json();
    assert_json_shape(&json, "fanout", KEYS);
    assert!(json.contains("\"path\":\"notify_pull\""), "{json}");
}
