//! `imgate-bench SCENARIO [OPTIONS]`: parses the command line and runs the scenario from the
//! `bench` library. Exit code: 0 after a clean run, 1 when connections failed during it (protocol
//! errors, KICKs, refusals, timeouts), 2 when the run could not be carried out.

use std::process::ExitCode;

use bench::connect::{self, ConnectArgs};
use bench::fanout::{self, FanoutArgs};
use bench::harness::RunError;
use bench::idle::{self, IdleArgs};
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// imgate's load generator.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// M subscribers and P publishers on one group (gate) or subject (nats); deliveries/s at max
    /// with a bounded window in flight.
    Fanout(FanoutArgs),
    /// Logins/s: rolling bursts of connect, LOGIN, LoginResp, close, at most --concurrency at once.
    Connect(ConnectArgs),
    /// N logged-in connections kept alive by heartbeats; the gate's marginal memory per
    /// connection with --gate-pid.
    Idle(IdleArgs),
}

/// What every scenario's summary offers the binary.
trait Report {
    fn text(&self) -> String;
    fn json(&self) -> String;
    /// Connections or attempts that failed during the run.
    fn failures(&self) -> u64;
    fn error_messages(&self) -> &[String];
}

impl Report for fanout::Summary {
    fn text(&self) -> String {
        self.to_text()
    }
    fn json(&self) -> String {
        self.to_json()
    }
    fn failures(&self) -> u64 {
        self.errors
    }
    fn error_messages(&self) -> &[String] {
        &self.error_messages
    }
}

impl Report for connect::Summary {
    fn text(&self) -> String {
        self.to_text()
    }
    fn json(&self) -> String {
        self.to_json()
    }
    fn failures(&self) -> u64 {
        self.failures.total()
    }
    fn error_messages(&self) -> &[String] {
        &self.error_messages
    }
}

impl Report for idle::Summary {
    fn text(&self) -> String {
        self.to_text()
    }
    fn json(&self) -> String {
        self.to_json()
    }
    fn failures(&self) -> u64 {
        self.failures.total()
    }
    fn error_messages(&self) -> &[String] {
        &self.error_messages
    }
}

fn finish(result: Result<impl Report, RunError>, json: bool) -> ExitCode {
    match result {
        Ok(summary) => {
            for message in summary.error_messages() {
                eprintln!("imgate-bench: error: {message}");
            }
            if json {
                println!("{}", summary.json());
            } else {
                println!("{}", summary.text());
            }
            if summary.failures() > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("imgate-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().scenario {
        Scenario::Fanout(args) => finish(fanout::run(&args), args.json),
        Scenario::Connect(args) => finish(connect::run(&args), args.json),
        Scenario::Idle(args) => finish(idle::run(&args), args.json),
    }
}
