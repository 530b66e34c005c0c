//! `imgate-bench SCENARIO [OPTIONS]`: parses the command line and runs the scenario from the
//! `bench` library. Exit code: 0 after a clean run, 1 when connections failed during it (protocol
//! errors, KICKs, refusals, timeouts) or messages were lost, 2 when the run could not be carried out.

use std::process::ExitCode;

use bench::chat::{self, ChatArgs};
use bench::connect::{self, ConnectArgs};
use bench::coord::RunError;
use bench::fanout::{self, FanoutArgs};
use bench::idle::{self, IdleArgs};
use bench::report::Report;
use bench::uplink::{self, UplinkArgs};
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
    /// M subscribers and P publishers on one group (gate) or subject (nats); deliveries/s and
    /// latency, at max with a bounded window or at an open-loop --rate.
    Fanout(FanoutArgs),
    /// N pairs of users sending single-chat messages to each other; delivered/s and latency,
    /// at an open-loop --rate or at max with a window per user.
    Chat(ChatArgs),
    /// C connections sending SENDs to offline uids; SendResp/s and send → SendResp latency, at
    /// an open-loop --rate or at max with a window per connection.
    Uplink(UplinkArgs),
    /// Logins/s: rolling bursts of connect, LOGIN, LoginResp, close, at most --concurrency at once.
    Connect(ConnectArgs),
    /// N logged-in connections kept alive by heartbeats; the gate's marginal memory per
    /// connection with --gate-pid.
    Idle(IdleArgs),
}

/// Prints the summary and turns it into the exit code.
fn finish(result: Result<impl Report, RunError>, json: bool) -> ExitCode {
    match result {
        Ok(summary) => {
            for message in summary.error_messages() {
                eprintln!("imgate-bench: error: {message}");
            }
            if json {
                println!("{}", summary.to_json());
            } else {
                println!("{}", summary.to_text());
            }
            if summary.failed() {
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
        Scenario::Chat(args) => finish(chat::run(&args), args.json),
        Scenario::Uplink(args) => finish(uplink::run(&args), args.json),
        Scenario::Connect(args) => finish(connect::run(&args), args.json),
        Scenario::Idle(args) => finish(idle::run(&args), args.json),
    }
}
