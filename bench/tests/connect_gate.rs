//! `connect::run` end to end against an in-process gate (one shard, JWT auth, loopback,
//! ephemeral port): rolling logins for one second over several source addresses, closed by RST
//! or by LOGOUT, with no failure; and a wrong secret shows as refusals. Figures are not asserted.

use bench::connect::{self, ConnectArgs};
use bench::login::FailureKind;
use clap::Parser;

const SECRET: &str = "bench-test-secret";

const CONFIG: &str = r#"
[gate]
listen = "127.0.0.1:0"
shards = 1

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
    connect: ConnectArgs,
}

fn start_gate() -> gate::GateHandle {
    let settings = gate::config::Config::from_toml(CONFIG)
        .expect("config parses")
        .validate()
        .expect("config is valid");
    gate::start(settings).expect("gate starts")
}

fn args(addr: &str, secret: &str, extra: &[&str]) -> ConnectArgs {
    let pid = std::process::id().to_string();
    let mut argv = vec![
        "test",
        "--addr",
        addr,
        "--jwt-secret",
        secret,
        "--concurrency",
        "20",
        "--uids",
        "200",
        "--sources",
        "4",
        "--duration",
        "1",
        "--timeout",
        "5",
        "--cpus",
        "0",
        "--gate-pid",
        &pid,
    ];
    argv.extend_from_slice(extra);
    Cli::parse_from(argv).connect
}

#[test]
fn connect_run_logs_in_repeatedly_without_failures() {
    let gate = start_gate();
    let addr = gate.local_addr().to_string();
    for close in ["reset", "logout"] {
        let summary =
            connect::run(&args(&addr, SECRET, &["--close", close])).expect("run completes");
        eprintln!("{}", summary.to_text());
        assert_eq!(
            summary.failures.total(),
            0,
            "close {close}: {:?}\n{}",
            summary.error_messages,
            summary.to_text()
        );
        assert!(summary.logins > 0, "close {close}: {}", summary.to_text());
        assert_eq!(summary.latency.count, summary.logins);
        assert!(summary.gate_us_per_login.is_some());
        let json: serde_json::Value =
            serde_json::from_str(&summary.to_json()).expect("one JSON object");
        assert_eq!(json["scenario"], "connect");
        assert_eq!(json["close"], close);
        for key in [
            "logins_per_sec",
            "logins",
            "failures",
            "failures_connect",
            "failures_timeout",
            "failures_refused",
            "failures_kicked",
            "latency_us",
            "gate_cpu",
            "gate_cpu_us_per_login",
            "tool_cpu",
        ] {
            assert!(json.get(key).is_some(), "{key} missing: {json}");
        }
    }
    gate.stop();
}

#[test]
fn connect_run_with_a_wrong_secret_counts_refused_logins() {
    let gate = start_gate();
    let addr = gate.local_addr().to_string();
    let summary =
        connect::run(&args(&addr, "not-the-secret", &["--logins", "30"])).expect("run completes");
    gate.stop();
    assert_eq!(summary.logins, 0, "{}", summary.to_text());
    assert_eq!(
        summary.failures.get(FailureKind::Refused),
        30,
        "{}",
        summary.to_text()
    );
    assert_eq!(summary.failures.total(), 30);
    assert!(
        summary.error_messages[0].contains("code 2"),
        "{:?}",
        summary.error_messages
    );
}
