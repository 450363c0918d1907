//! `airllama replay`: play a recorded golden dllama session against a worker and compare every
//! byte it sends (see `airllama::replay`).
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use airllama::replay::{ReplayOptions, Scenario, replay};

/// Flags of this subcommand.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario folder, e.g. ../shared/golden/llama-q40/2nodes.
    pub scenario_dir: PathBuf,
    /// Which recorded worker to play (W in w<W>_c0_root.*).
    #[arg(long, default_value_t = 0)]
    pub worker_index: usize,
    /// Threads of the worker this command starts (ignored with --worker-cmd).
    #[arg(long, default_value_t = 1)]
    pub nthreads: usize,
    /// Command that starts the worker under test; `{port}` is replaced by its port. Without it,
    /// this executable's own `worker` subcommand is started.
    #[arg(long)]
    pub worker_cmd: Option<String>,
    /// Port for the worker (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds to wait for the whole session.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the worker's output even when the replay passes.
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the subcommand: exit 0 only when every byte matched.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(&args.scenario_dir)
        .with_context(|| format!("loading scenario {}", args.scenario_dir.display()))?;
    let worker_cmd = match args.worker_cmd {
        Some(cmd) => cmd,
        None => {
            let exe = std::env::current_exe().context("locating this executable")?;
            format!(
                "'{}' worker --host 127.0.0.1 --port {{port}} --nthreads {}",
                exe.display(),
                args.nthreads
            )
        }
    };
    let mut options = ReplayOptions::new(args.worker_index, worker_cmd);
    options.port = args.port;
    options.timeout = Duration::from_secs(args.timeout);
    let report = replay(&scenario, &options)?;
    // A closed stdout (e.g. piped into `head`) must not turn a verdict into a panic.
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{report}");
    if args.verbose && report.passed() {
        let _ = write!(out, "{}", report.worker_log);
    }
    let verdict = if report.passed() {
        "replay OK"
    } else {
        "replay FAILED"
    };
    let _ = writeln!(out, "{verdict}");
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
