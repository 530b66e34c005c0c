//! `chat::run` end to end against an in-process gate (one shard, loopback, ephemeral port): 20
//! pairs log in and send single-chat messages to each other for one second, open loop and at max;
//! after the drain every accepted message has reached the partner, every delivery is timed, and
//! no connection failed.

mod common;

use bench::chat::{self, ChatArgs, Summary};
use bench::report::Report;
use clap::Parser;
use common::{assert_json_shape, gate_config, json_number, start_gate};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    chat: ChatArgs,
}

fn run(extra: &[&str]) -> Summary {
    let handle = start_gate(&gate_config(200));
    let addr = handle.local_addr().to_string();
    let mut argv = vec![
        "test",
        "--addr",
        &addr,
        "--pairs",
        "20",
        "--duration",
        "1",
        "--drain",
        "5",
        "--cpus",
        "0",
    ];
    argv.extend_from_slice(extra);
    let args = Cli::parse_from(argv).chat;
    let summary = chat::run(&args).expect("run completes");
    handle.stop();
    summary
}

#[test]
fn chat_at_an_open_loop_rate_delivers_and_times_every_message() {
    let summary = run(&["--rate", "800"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert_eq!(summary.common.connections, 40);
    // 800 msg/s for 1 s over 40 senders: exactly 800 scheduled.
    assert_eq!(summary.end.sent, 800, "{}", summary.to_text());
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.end.repeats, 0);
    assert_eq!(summary.common.latency.count, 800);
    assert!(!summary.failed());
    let json = summary.to_json();
    assert_json_shape(
        &json,
        "chat",
        &[
            "target",
            "pairs",
            "rate",
            "delivered_per_sec",
            "latency_us",
            "p50",
            "p99",
            "p999",
            "max",
            "cpu",
            "sent_total",
            "delivered_total",
            "missing",
            "errors",
        ],
    );
    assert_eq!(json_number(&json, "pairs"), Some(20.0));
    assert_eq!(json_number(&json, "missing"), Some(0.0));
    assert_eq!(json_number(&json, "errors"), Some(0.0));
}

#[test]
fn chat_at_max_keeps_a_window_per_user_and_loses_nothing() {
    let summary = run(&["--inflight", "4"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert!(summary.measured.sent > 0 && summary.measured.delivered > 0);
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.common.latency.count, summary.end.unique());
}

#[test]
fn chat_over_websocket_delivers_and_times_every_message() {
    let summary = run(&["--target", "gate-ws", "--rate", "400"]);
    assert_eq!(
        summary.errors(),
        0,
        "errors: {:?}",
        summary.error_messages()
    );
    assert_eq!(summary.end.sent, 400, "{}", summary.to_text());
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.common.latency.count, 400);
    assert!(summary.to_json().contains("\"target\":\"gate-ws\""));
}
