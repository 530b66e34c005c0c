//! `router --config FILE`: the reference IM backend behind the link server, for many gates,
//! until SIGINT or SIGTERM.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// imgate router: the backend side of many gates (link server, route table, HTTP API).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; without it every key takes its default.
    #[arg(long, short, value_name = "FILE")]
    config: Option<String>,
    /// Check the configuration, print the settings it resolves to, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let matches = Args::command()
        .after_help(router::config::keys_help())
        .get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    let config = match &args.config {
        Some(path) => router::config::Config::from_file(path),
        None => Ok(router::config::Config::default()),
    };
    let settings = match config.and_then(|c| c.validate()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("router: configuration refused: {err}");
            return ExitCode::from(2);
        }
    };
    router::logging::init(&settings.log);
    if args.check {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    match router::server::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("router: {err}");
            ExitCode::FAILURE
        }
    }
}
