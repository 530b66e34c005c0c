//! `fanout::run` end to end against an in-process gate (one shard, loopback, ephemeral port):
//! every member logs in, the group is created, the publisher sends for one second, and after the
//! drain every message has reached every other member exactly once, with no connection error.

use bench::fanout::{self, FanoutArgs, Target};
use clap::Parser;

const CONFIG: &str = r#"
[gate]
listen = "127.0.0.1:0"
shards = 1
heartbeat_secs = 300

[backend]
push_threshold = 2000

[limits]
msgs_per_sec = 1000000
burst = 1000000

[delivery]
max_pending = 100000
"#;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    fanout: FanoutArgs,
}

#[test]
fn fanout_run_against_a_gate_delivers_every_message_to_every_member() {
    let settings = gate::config::Config::from_toml(CONFIG)
        .expect("config parses")
        .validate()
        .expect("config is valid");
    let handle = gate::start(settings).expect("gate starts");
    let addr = handle.local_addr().to_string();
    let args = Cli::parse_from([
        "test",
        "--addr",
        &addr,
        "--members",
        "40",
        "--publishers",
        "2",
        "--inflight",
        "20",
        "--duration",
        "1",
        "--cpus",
        "0",
    ])
    .fanout;
    let summary = fanout::run(&args).expect("run completes");
    handle.stop();
    assert_eq!(summary.target, Target::Gate);
    assert_eq!(summary.errors, 0, "errors: {:?}", summary.error_messages);
    assert_eq!(summary.connections, 42);
    assert_eq!(summary.recipients, 41, "40 members and the other publisher");
    assert!(summary.published > 0 && summary.delivered > 0);
    assert_eq!(summary.missing(), 0, "{}", summary.to_text());
    assert_eq!(summary.repeats_total, 0);
}
