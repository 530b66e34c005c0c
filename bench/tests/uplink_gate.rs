//! `uplink::run` end to end against an in-process gate (one shard, loopback, ephemeral port): 20
//! connections send SENDs to offline uids for one second; every SEND is answered and timed. With
//! a gate whose per-connection limit is below the rate, RATE_LIMITED answers are counted apart
//! and are not errors.

mod common;

use bench::report::Report;
use bench::uplink::{self, Summary, UplinkArgs};
use clap::Parser;
use common::{assert_json_shape, gate_config, json_number, start_gate};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    uplink: UplinkArgs,
}

fn run(config: &str, extra: &[&str]) -> Summary {
    let handle = start_gate(config);
    let addr = handle.local_addr().to_string();
    let mut argv = vec![
        "test",
        "--addr",
        &addr,
        "--duration",
        "1",
        "--drain",
        "5",
        "--cpus",
        "0",
    ];
    argv.extend_from_slice(extra);
    let args = Cli::parse_from(argv).uplink;
    let summary = uplink::run(&args).expect("run completes");
    handle.stop();
    summary
}

#[test]
fn uplink_at_an_open_loop_rate_times_every_send_response() {
    let summary = run(
        &gate_config(200),
        &["--connections", "20", "--rate", "1000"],
    );
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert_eq!(summary.common.connections, 20);
    assert_eq!(summary.end.sent, 1000, "{}", summary.to_text());
    assert_eq!(summary.end.answered, 1000, "{}", summary.to_text());
    assert_eq!(summary.end.rate_limited, 0);
    assert_eq!(summary.missing(), 0);
    assert_eq!(
        summary.end.delivered, 0,
        "offline sinks: nothing is pushed back"
    );
    assert_eq!(summary.common.latency.count, 1000);
    assert!(!summary.failed());
    let json = summary.to_json();
    assert_json_shape(
        &json,
        "uplink",
        &[
            "conns",
            "rate",
            "responses_per_sec",
            "ok_per_sec",
            "latency_us",
            "p50",
            "p99",
            "p999",
            "max",
            "cpu",
            "sent_total",
            "answered_total",
            "rate_limited",
            "refused",
            "missing",
            "errors",
        ],
    );
    assert_eq!(json_number(&json, "answered_total"), Some(1000.0));
    assert_eq!(json_number(&json, "count"), Some(1000.0));
}

#[test]
fn uplink_at_max_counts_rate_limited_answers_apart() {
    // 20 requests per second per connection with a burst of 20: a closed loop at max runs into
    // the limit within the second.
    let config = gate_config(200)
        .replace("msgs_per_sec = 1000000", "msgs_per_sec = 20")
        .replace("burst = 1000000", "burst = 20");
    let summary = run(&config, &["--connections", "2", "--inflight", "4"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert!(summary.end.rate_limited > 0, "{}", summary.to_text());
    assert!(summary.end.answered >= 40, "{}", summary.to_text());
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.common.latency.count, summary.end.responses());
    assert!(
        !summary.failed(),
        "rate limiting alone does not fail the run"
    );
}
