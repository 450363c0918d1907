//! The `airllama` command: a drop-in distributed-llama worker and root, a model converter and
//! inspection tools.
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Debug, Parser)]
#[command(
    name = "airllama",
    version,
    about = "Zero-copy LLM inference, drop-in for distributed-llama"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a .m model file's header and tensor layout (and each node's slices).
    Inspect(cli::inspect::Args),
    /// Convert a model to dllama's .m / .t formats.
    Convert(cli::convert::Args),
    /// Serve a dllama root as a worker node (drop-in for `dllama worker`).
    Worker(cli::worker::Args),
    /// Replay a recorded golden session against a worker and compare every byte.
    Replay(cli::replay::Args),
    /// Run one prompt as a dllama root (drop-in for `dllama inference`).
    Inference(cli::inference::Args),
    /// Chat over stdin as a dllama root (drop-in for `dllama chat`).
    Chat(cli::chat::Args),
    /// Serve an OpenAI-compatible HTTP API (and a chat page) as a dllama root.
    Api(cli::api::Args),
    /// Write a synthetic model (random weights of a chosen shape) for tests and benchmarks.
    GenModel(cli::gen_model::Args),
    /// Measure decode speed on this machine (resident or under --mem-budget) and the disk.
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    // `airllama … | head`: a closed stdout ends the process quietly, never with a panic.
    cli::output::install_broken_pipe_hook();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cli::inspect::run(args),
        Command::Convert(args) => cli::convert::run(args),
        Command::Worker(args) => cli::worker::run(args),
        Command::Replay(args) => cli::replay::run(args),
        Command::Inference(args) => cli::inference::run(args),
        Command::Chat(args) => cli::chat::run(args),
        Command::Api(args) => cli::api::run(args),
        Command::GenModel(args) => cli::gen_model::run(args),
        Command::Bench(args) => cli::bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Library errors already name their cause in their own
/// message (a worker log prints only that), so a cause whose text is already shown is skipped
/// instead of being printed twice.
fn render_error(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
