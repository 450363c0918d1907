//! `airllama replay`: play a recorded golden dllama session against a worker and compare every
//! byte it sends (see `airllama::replay`).
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use airllama::replay::{ReplayOptions, Scenario, replay};
use airllama_kernels::backend::{Backend, Isa};

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
    /// Port for the worker (default: a free one). A port another process already listens on
    /// is refused (the session would be played against that process).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seconds to wait for the whole session.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Print the worker's output even when the replay passes.
    #[arg(long)]
    pub verbose: bool,
}

/// The instruction set a recording's bytes follow, from its manifest's `recorded_with`
/// (`None` when the text names none).
fn recorded_isa(recorded_with: &str) -> Option<Isa> {
    if recorded_with.contains("aarch64") {
        return Some(if recorded_with.contains("dotprod") {
            Isa::NeonDotprod
        } else {
            Isa::Neon
        });
    }
    if recorded_with.contains("AVX-512") {
        Some(Isa::Avx512)
    } else if recorded_with.contains("avx2") || recorded_with.contains("AVX2") {
        Some(Isa::Avx2)
    } else {
        None
    }
}

fn is_arm(isa: Isa) -> bool {
    matches!(isa, Isa::Neon | Isa::NeonDotprod)
}

/// For a failed replay: where the recording was made when that differs from the worker's
/// kernels, since the bytes follow each instruction set's summation order and a recording from
/// another one fails for that reason alone. `worker` is `None` for a `--worker-cmd` worker.
fn isa_note(scenario_dir: &std::path::Path, worker: Option<Isa>) -> Option<String> {
    let text = std::fs::read(scenario_dir.join("manifest.json")).ok()?;
    let manifest: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let recorded_with = manifest.get("recorded_with")?.as_str()?;
    let recorded = recorded_isa(recorded_with)?;
    let host_arm = cfg!(target_arch = "aarch64");
    let note = match worker {
        Some(isa) if is_arm(recorded) != is_arm(isa) => format!(
            "this recording was made on {} ({recorded_with}), and this worker runs {isa} \
             kernels on another architecture: replay it with a {} worker (--worker-cmd, e.g. \
             under qemu-aarch64)",
            recorded.name(),
            if is_arm(recorded) {
                "aarch64"
            } else {
                "x86-64"
            }
        ),
        Some(isa) if isa != recorded => format!(
            "this recording was made with {} kernels ({recorded_with}) and this worker runs \
             {isa}: the bytes follow each instruction set's summation order (an F32 recording \
             needs the same ISA; Q40 recordings of x86 need AVX2 or better). AIRLLAMA_ISA \
             limits airllama's kernels, e.g. AIRLLAMA_ISA=avx2 for an AVX2-only recording",
            recorded.name()
        ),
        Some(_) => return None,
        None if is_arm(recorded) != host_arm => format!(
            "this recording was made on {} ({recorded_with}); its worker must run that \
             architecture's kernels",
            recorded.name()
        ),
        None => format!(
            "this recording was made with {} kernels ({recorded_with}); a worker with other \
             kernels sends other bytes (AIRLLAMA_ISA limits an airllama worker's kernels)",
            recorded.name()
        ),
    };
    Some(note)
}

/// Runs the subcommand: exit 0 only when every byte matched.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let scenario = Scenario::load(&args.scenario_dir)
        .with_context(|| format!("loading scenario {}", args.scenario_dir.display()))?;
    let own_worker = args.worker_cmd.is_none();
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
    // A closed stdout (e.g. piped into `head`) ends the process quietly (see `output`).
    let mut text = report.to_string();
    if args.verbose && report.passed() {
        text.push_str(&report.worker_log);
    }
    if !report.passed() {
        // The worker this command starts inherits AIRLLAMA_ISA, so its kernels are ours.
        let worker = own_worker.then(|| Backend::detect().isa());
        if let Some(note) = isa_note(&args.scenario_dir, worker) {
            text.push_str(&format!("note: {note}\n"));
        }
    }
    text.push_str(if report.passed() {
        "replay OK\n"
    } else {
        "replay FAILED\n"
    });
    super::output::write_out(&text);
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
