//! `imgate-chat --uid N [--addr HOST:PORT] [--token T] [--device D]`: the command-line chat
//! client. Parses the arguments and runs `gate::client::chat::run`; all the logic lives there.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = gate::client::chat::Args::parse();
    ExitCode::from(gate::client::chat::run(&args).code())
}
