//! `imgate-bench SCENARIO [OPTIONS]`: parses the command line and runs the scenario from the
//! `bench` library. Exit code: 0 after a clean run, 1 when connections failed during it (protocol
//! errors, KICKs, refusals), 2 when the run could not be carried out.

use std::process::ExitCode;

use bench::fanout::{self, FanoutArgs};
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
}

fn main() -> ExitCode {
    let Scenario::Fanout(args) = Cli::parse().scenario;
    match fanout::run(&args) {
        Ok(summary) => {
            for message in &summary.error_messages {
                eprintln!("imgate-bench: error: {message}");
            }
            if args.json {
                println!("{}", summary.to_json());
            } else {
                println!("{}", summary.to_text());
            }
            if summary.errors > 0 {
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
