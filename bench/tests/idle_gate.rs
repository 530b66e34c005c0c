//! `idle::run` end to end against an in-process gate (one shard, JWT auth, a 1 s heartbeat,
//! loopback, ephemeral port): 50 connections log in, send and answer PINGs for a couple of
//! seconds, and none fails; the gate's memory is read through `--gate-pid` = this process (the
//! gate is in-process, so the figure includes the tool and is not asserted).

use bench::idle::{self, IdleArgs};
use clap::Parser;

const CONFIG: &str = r#"
[gate]
listen = "127.0.0.1:0"
shards = 1
heartbeat_secs = 1

[auth]
mode = "jwt"
secret = "bench-test-secret"

[backend]
data_dir = ""

[admin]
listen = ""
"#;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    idle: IdleArgs,
}

fn start_gate() -> gate::GateHandle {
    let settings = gate::config::Config::from_toml(CONFIG)
        .expect("config parses")
        .validate()
        .expect("config is valid");
    gate::start(settings).expect("gate starts")
}

#[test]
fn idle_run_with_a_wrong_secret_counts_every_connection_as_refused() {
    let gate = start_gate();
    let addr = gate.local_addr().to_string();
    let args = Cli::parse_from([
        "test",
        "--addr",
        &addr,
        "--jwt-secret",
        "not-the-secret",
        "--connections",
        "20",
        "--settle",
        "0",
        "--duration",
        "1",
        "--cpus",
        "0",
    ])
    .idle;
    let summary = idle::run(&args).expect("run completes");
    gate.stop();
    assert_eq!(summary.logged_in, 0, "{}", summary.to_text());
    assert_eq!(
        summary.failures.get(bench::login::FailureKind::Refused),
        20,
        "{}",
        summary.to_text()
    );
    assert_eq!(summary.gate_bytes_per_conn(), None, "no --gate-pid");
}

#[test]
fn idle_run_holds_every_connection_with_heartbeats() {
    let gate = start_gate();
    let addr = gate.local_addr().to_string();
    let pid = std::process::id().to_string();
    let args = Cli::parse_from([
        "test",
        "--addr",
        &addr,
        "--jwt-secret",
        "bench-test-secret",
        "--connections",
        "50",
        "--sources",
        "3",
        "--settle",
        "1",
        // Longer than the 3 x 1 s idle deadline: connections that did not PING would be kicked.
        "--duration",
        "4",
        "--setup-timeout",
        "20",
        "--cpus",
        "0",
        "--gate-pid",
        &pid,
    ])
    .idle;
    let summary = idle::run(&args).expect("run completes");
    gate.stop();
    eprintln!("{}", summary.to_text());
    assert_eq!(
        summary.failures.total(),
        0,
        "{:?}\n{}",
        summary.error_messages,
        summary.to_text()
    );
    assert_eq!(summary.logged_in, 50, "{}", summary.to_text());
    assert_eq!(summary.logged_in_end, 50, "{}", summary.to_text());
    assert_eq!(summary.heartbeat_secs, 1);
    assert!(summary.pings_sent >= 50, "{}", summary.to_text());
    assert!(summary.gate_bytes_per_conn().is_some());
    let json: serde_json::Value =
        serde_json::from_str(&summary.to_json()).expect("one JSON object");
    assert_eq!(json["scenario"], "idle");
    for key in [
        "connections",
        "logged_in",
        "failures",
        "kicks",
        "pings_sent",
        "tool_cpu",
        "tool_rss_bytes",
        "gate_rss0_bytes",
        "gate_rssn_bytes",
        "gate_bytes_per_conn",
        "gate_kib_per_conn",
    ] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }
}
