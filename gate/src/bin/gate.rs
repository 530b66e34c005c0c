//! `gate --config FILE`: loads the configuration and runs the gate until SIGINT or SIGTERM.
//! `gate doctor --config FILE`: checks this host against the configuration and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// imgate: a thread-per-core IM gateway.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// TOML configuration file; without it every key takes its default.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<String>,
    /// Check the configuration, print the settings it resolves to, and exit.
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Check this host against the configuration: open-file and memlock limits, io_uring,
    /// cores, the sysctls of tuning/99-imgate.conf. One line per check (ok / warn / FAIL);
    /// exits 1 when something would keep the gate from its configured capacity. The limits are
    /// this process's: run it as the service runs (same user and limits), e.g. the unit's
    /// ExecStartPre.
    Doctor {
        /// Read /proc from under this directory instead of / (tests); skips the io_uring probe.
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

fn main() -> ExitCode {
    let matches = Args::command()
        .after_help(gate::config::keys_help())
        .get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(err) => err.exit(),
    };
    let config = match &args.config {
        Some(path) => gate::config::Config::from_file(path),
        None => Ok(gate::config::Config::default()),
    };
    if let Some(Command::Doctor { root }) = &args.command {
        return doctor(config, args.config.as_deref(), root);
    }
    let settings = match config.and_then(|c| c.validate()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("gate: configuration refused: {err}");
            return ExitCode::from(2);
        }
    };
    router::logging::init(&settings.log);
    if args.check {
        println!("{settings:#?}");
        return ExitCode::SUCCESS;
    }
    match gate::run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gate: {err}");
            ExitCode::FAILURE
        }
    }
}

fn doctor(
    config: Result<gate::config::Config, gate::config::ConfigError>,
    path: Option<&str>,
    root: &std::path::Path,
) -> ExitCode {
    use gate::doctor::{Level, diagnose};
    let source = path.unwrap_or("(no --config: defaults)");
    let probe = root == std::path::Path::new("/");
    let findings = diagnose(config, source, root, probe);
    for finding in &findings {
        println!("{finding}");
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
    println!(
        "doctor: {} ok, {warned} warn, {failed} FAIL",
        findings.len() - failed - warned
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
