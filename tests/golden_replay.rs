//! Golden replay: every recorded x86 dllama session in `../shared/golden` played against the
//! release-built `airllama worker`, which must send back exactly the recorded bytes.
//!
//! One test per (variant, scenario, worker index, thread count). Each scenario needs the
//! instruction set whose summation order it was recorded with: the F32 `2nodes` / `3nodes`
//! folders the AVX-512 order, `llama-f32/2nodes-avx2` the AVX2 order (the worker is started with
//! `AIRLLAMA_ISA=avx2`), everything else AVX2 + FMA + F16C or better. On a CPU without it the
//! test prints what it skipped and why. The aarch64 folders run from `scripts/test.sh` under
//! qemu-aarch64.
#[macro_use]
mod golden_support;

use std::path::PathBuf;
use std::time::Duration;

use airllama::replay::{ReplayOptions, Scenario, replay};
use airllama_kernels::backend::{Backend, Isa};

fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
}

/// The instruction set a scenario's bytes need, and the `AIRLLAMA_ISA` limit to run it with.
fn requirement(scenario: &str) -> (Isa, Option<&'static str>) {
    match scenario {
        "llama-f32/2nodes-avx2" => (Isa::Avx2, Some("avx2")),
        "llama-f32/2nodes" | "llama-f32/3nodes" => (Isa::Avx512, None),
        _ => (Isa::Avx2, None),
    }
}

fn replay_case(scenario: &str, worker_index: usize, nthreads: usize) {
    replay_case_with(scenario, worker_index, nthreads, false);
}

/// With `with_model`, the worker also holds its own copy of the model (`--model`, for
/// `--shared-storage` roots): a C++ root, which never waits in silence for a greeting, must see
/// exactly the same bytes.
fn replay_case_with(scenario: &str, worker_index: usize, nthreads: usize, with_model: bool) {
    golden_or_skip!();
    let (isa, limit) = requirement(scenario);
    if Backend::new(isa).is_none() {
        println!(
            "SKIPPED {scenario} worker {worker_index}: this CPU lacks {isa}, which the recording's bytes need"
        );
        return;
    }
    let dir = golden_dir().join(scenario);
    let scenario_data =
        Scenario::load(&dir).unwrap_or_else(|e| panic!("golden scenario {}: {e}", dir.display()));
    let bin = env!("CARGO_BIN_EXE_airllama");
    let mut cmd = format!("'{bin}' worker --host 127.0.0.1 --port {{port}} --nthreads {nthreads}");
    if with_model {
        let variant = scenario.split('/').next().unwrap_or_default();
        let model = golden_dir().join(variant).join("model.m");
        cmd.push_str(&format!(" --model '{}'", model.display()));
    }
    let mut options = ReplayOptions::new(worker_index, cmd);
    options.timeout = Duration::from_secs(600);
    if let Some(l) = limit {
        options
            .env
            .push(("AIRLLAMA_ISA".to_string(), l.to_string()));
    }
    let report = replay(&scenario_data, &options).unwrap_or_else(|e| panic!("{scenario}: {e}"));
    assert!(
        report.passed(),
        "{scenario} worker {worker_index}, {nthreads} thread(s):\n{report}"
    );
}

macro_rules! golden {
    ($($name:ident: $scenario:literal, $worker:literal, $threads:literal;)*) => {
        $(
            #[test]
            fn $name() {
                replay_case($scenario, $worker, $threads);
            }
        )*
    };
}

golden! {
    llama_q40_2nodes_w0_t1: "llama-q40/2nodes", 0, 1;
    llama_q40_2nodes_w0_t2: "llama-q40/2nodes", 0, 2;
    llama_q40_3nodes_w0_t1: "llama-q40/3nodes", 0, 1;
    llama_q40_3nodes_w0_t2: "llama-q40/3nodes", 0, 2;
    llama_q40_3nodes_w1_t1: "llama-q40/3nodes", 1, 1;
    llama_q40_3nodes_w1_t2: "llama-q40/3nodes", 1, 2;
    llama_q40_2nodes_long_w0_t1: "llama-q40/2nodes-long", 0, 1;
    llama_q40_2nodes_long_w0_t2: "llama-q40/2nodes-long", 0, 2;
    llama_f32_2nodes_w0_t1: "llama-f32/2nodes", 0, 1;
    llama_f32_2nodes_w0_t2: "llama-f32/2nodes", 0, 2;
    llama_f32_2nodes_avx2_w0_t1: "llama-f32/2nodes-avx2", 0, 1;
    llama_f32_2nodes_avx2_w0_t2: "llama-f32/2nodes-avx2", 0, 2;
    llama_f32_2nodes_batch1_w0_t1: "llama-f32/2nodes-batch1", 0, 1;
    llama_f32_2nodes_batch1_w0_t2: "llama-f32/2nodes-batch1", 0, 2;
    llama_f32_3nodes_w0_t1: "llama-f32/3nodes", 0, 1;
    llama_f32_3nodes_w0_t2: "llama-f32/3nodes", 0, 2;
    llama_f32_3nodes_w1_t1: "llama-f32/3nodes", 1, 1;
    llama_f32_3nodes_w1_t2: "llama-f32/3nodes", 1, 2;
    qwen3_q40_2nodes_w0_t1: "qwen3-q40/2nodes", 0, 1;
    qwen3_q40_2nodes_w0_t2: "qwen3-q40/2nodes", 0, 2;
    qwen3_q40_3nodes_w0_t1: "qwen3-q40/3nodes", 0, 1;
    qwen3_q40_3nodes_w0_t2: "qwen3-q40/3nodes", 0, 2;
    qwen3_q40_3nodes_w1_t1: "qwen3-q40/3nodes", 1, 1;
    qwen3_q40_3nodes_w1_t2: "qwen3-q40/3nodes", 1, 2;
    qwen3moe_q40_2nodes_w0_t1: "qwen3moe-q40/2nodes", 0, 1;
    qwen3moe_q40_2nodes_w0_t2: "qwen3moe-q40/2nodes", 0, 2;
    qwen3moe_q40_3nodes_w0_t1: "qwen3moe-q40/3nodes", 0, 1;
    qwen3moe_q40_3nodes_w0_t2: "qwen3moe-q40/3nodes", 0, 2;
    qwen3moe_q40_3nodes_w1_t1: "qwen3moe-q40/3nodes", 1, 1;
    qwen3moe_q40_3nodes_w1_t2: "qwen3moe-q40/3nodes", 1, 2;
    qwen3moe_q40_2nodes_long_w0_t1: "qwen3moe-q40/2nodes-long", 0, 1;
    qwen3moe_q40_2nodes_long_w0_t2: "qwen3moe-q40/2nodes-long", 0, 2;
}

/// A worker holding its own copy of the model (`--model`) serves a C++ root as if it had none.
#[test]
fn a_worker_with_a_model_serves_a_cpp_root_byte_exactly() {
    for (scenario, worker) in [
        ("llama-q40/3nodes", 1),
        ("qwen3moe-q40/2nodes", 0),
        ("llama-f32/2nodes-avx2", 0),
    ] {
        replay_case_with(scenario, worker, 1, true);
    }
}

/// Every x86 scenario folder in the golden set has a test above (a new recording must not be
/// silently left out).
#[test]
fn every_x86_scenario_is_covered() {
    golden_or_skip!();
    let listed = include_str!("golden_replay.rs");
    let mut missing = Vec::new();
    for variant in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let variant = variant.expect("dir entry").path();
        if !variant.is_dir() {
            continue;
        }
        for scenario in std::fs::read_dir(&variant).expect("variant dir") {
            let scenario = scenario.expect("dir entry").path();
            let name = format!(
                "{}/{}",
                variant.file_name().unwrap_or_default().to_string_lossy(),
                scenario.file_name().unwrap_or_default().to_string_lossy()
            );
            if scenario.join("manifest.json").is_file()
                && !name.contains("neon")
                && !listed.contains(&format!("\"{name}\""))
            {
                missing.push(name);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "golden scenarios without a replay test: {missing:?}"
    );
}
