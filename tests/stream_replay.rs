//! Golden replays with layer streaming: the worker gets `--mem-budget` below two layers of its
//! slice, so it spills the weights the C++ root sends to `--spill-dir` and streams every layer
//! back through a one-slot ring each forward. The bytes it sends back must still be exactly the
//! recorded ones. Scenarios need the instruction set their bytes were recorded with (see
//! `golden_replay.rs`); a CPU without it skips them.
#[macro_use]
mod golden_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use airllama::replay::{ReplayOptions, Scenario, replay};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::{Backend, Isa};

fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
}

/// A budget of 1.5 times one layer of a worker's slice (a node holds about `1 / n_nodes` of
/// each layer), plus the read alignment slack: one ring slot fits, two do not.
fn budget(variant: &str, n_nodes: u64) -> u64 {
    let path = golden_dir().join(variant).join("model.m");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    let slice = (layer.end - layer.start) / n_nodes;
    slice * 3 / 2 + 3 * 4096
}

fn spill_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_replay");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn replay_streamed(scenario: &str, n_nodes: u64, worker_index: usize, isa: Isa) {
    if Backend::new(isa).is_none() {
        println!("SKIPPED {scenario}: this CPU lacks {isa}, which the recording's bytes need");
        return;
    }
    let variant = scenario.split('/').next().unwrap();
    let dir = golden_dir().join(scenario);
    let data = Scenario::load(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let bin = env!("CARGO_BIN_EXE_airllama");
    let cmd = format!(
        "'{bin}' worker --host 127.0.0.1 --port {{port}} --nthreads 2 --mem-budget {} --spill-dir '{}' --verbose",
        budget(variant, n_nodes),
        spill_dir().display()
    );
    let mut options = ReplayOptions::new(worker_index, cmd);
    options.timeout = Duration::from_secs(600);
    let report = replay(&data, &options).unwrap_or_else(|e| panic!("{scenario}: {e}"));
    assert!(report.passed(), "{scenario} (streamed):\n{report}");
    // The worker really streamed: one slot, every forward reading its layers back.
    let log = &report.worker_log;
    assert!(log.contains("through 1 slot(s)"), "{log}");
    let forwards = log
        .lines()
        .filter(|l| l.starts_with("forward at position"))
        .count();
    assert!(forwards > 0, "{log}");
    assert!(
        log.lines()
            .filter(|l| l.starts_with("forward at position"))
            .all(|l| !l.contains("streamed 0 units")),
        "{log}"
    );
}

#[test]
fn llama_q40_2nodes_streamed() {
    golden_or_skip!();
    replay_streamed("llama-q40/2nodes", 2, 0, Isa::Avx2);
}

#[test]
fn llama_q40_3nodes_worker1_streamed() {
    golden_or_skip!();
    replay_streamed("llama-q40/3nodes", 3, 1, Isa::Avx2);
}

#[test]
fn llama_q40_2nodes_long_streamed() {
    golden_or_skip!();
    replay_streamed("llama-q40/2nodes-long", 2, 0, Isa::Avx2);
}

#[test]
fn llama_f32_2nodes_streamed() {
    golden_or_skip!();
    replay_streamed("llama-f32/2nodes", 2, 0, Isa::Avx512);
}

#[test]
fn qwen3_q40_3nodes_streamed() {
    golden_or_skip!();
    replay_streamed("qwen3-q40/3nodes", 3, 0, Isa::Avx2);
}

#[test]
fn qwen3moe_q40_2nodes_long_streamed() {
    golden_or_skip!();
    replay_streamed("qwen3moe-q40/2nodes-long", 2, 0, Isa::Avx2);
}
