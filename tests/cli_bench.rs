//! `airllama bench` on a small synthetic Q40 llama: every report line parses, a run under a
//! budget below two layers streams (reports the bytes it read and where the time went), a
//! resident run reads nothing, and a budget below one layer fails naming the size needed.
//! Timings are parsed but never compared with anything.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use airllama::streaming::synthetic;
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::block::FloatType;

const SHAPE: synthetic::LlamaShape = synthetic::LlamaShape {
    dim: 256,
    hidden_dim: 512,
    n_layers: 5,
    n_heads: 8,
    n_kv_heads: 4,
    vocab_size: 512,
    seq_len: 64,
};

/// The model (written once per test, each in its own file) and one layer's bytes.
fn model(name: &str) -> (PathBuf, u64) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    synthetic::write_model(&path, &SHAPE.params(FloatType::Q40), 5).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    (path, layer.end - layer.start)
}

fn bench(model: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airllama"))
        .arg("bench")
        .arg("--model")
        .arg(model)
        .args(["--nthreads", "2", "--tokens", "3"])
        .args(extra)
        .output()
        .unwrap()
}

/// The report's `key: value` lines, by key; fails on a line of any other form.
fn report(out: &Output) -> HashMap<String, String> {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("not a `key: value` line: {line:?}"));
            (key.to_string(), value.to_string())
        })
        .collect()
}

/// The number right after `label` in `text` (`label` ends with a space).
fn number_after(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text:?}"))
        + label.len();
    let token: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    token
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in {text:?}"))
}

/// The lines every run prints, with their numbers parsed.
fn check_common(r: &HashMap<String, String>) {
    let model = &r["model"];
    assert!(model.contains("dim 256") && model.contains("5 layers") && model.contains("q40"));
    assert!(r["cpu"].contains("2 thread(s)"));
    assert!(number_after(&r["load"], "") >= 0.0);
    let decode = &r["decode"];
    assert!(decode.starts_with("3 tokens in "), "{decode}");
    assert!(number_after(decode, "s, ") > 0.0);
    assert!(decode.ends_with(" tokens/s"));
    let per = &r["ms/token"];
    for label in ["median ", "mean ", "min ", "max "] {
        assert!(number_after(per, label) >= 0.0);
    }
}

#[test]
fn resident_run_reads_no_weights() {
    let (path, _) = model("resident.m");
    let r = report(&bench(&path, &[]));
    check_common(&r);
    assert_eq!(r["layer streaming"], "off, every weight resident");
    for key in ["bytes read", "read", "time", "disk", "disk use"] {
        assert!(!r.contains_key(key), "a resident run reported {key:?}");
    }
}

#[test]
fn streamed_run_reports_its_reads_and_the_disk() {
    let (path, layer) = model("streamed.m");
    // Below two layers: one ring slot, everything but what fits beside it streams.
    let budget = (layer * 3 / 2 + 3 * 4096).to_string();
    let r = report(&bench(
        &path,
        &[
            "--mem-budget",
            &budget,
            "--disk",
            "--disk-seconds",
            "0.2",
            "--verbose",
        ],
    ));
    check_common(&r);
    let plan = &r["layer streaming"];
    assert!(number_after(plan, "resident, ") >= f64::from(SHAPE.n_layers));
    assert!(plan.contains("slot(s)"), "{plan}");
    let bytes = number_after(&r["bytes read"], "");
    // Each timed step reads at least every layer.
    assert!(
        bytes >= (3 * SHAPE.n_layers as u64 * layer) as f64,
        "{bytes}"
    );
    let read = &r["read"];
    assert!(number_after(read, "") > 0.0);
    assert!(number_after(read, "decode, ") > 0.0);
    let time = &r["time"];
    for label in ["compute ", "I/O wait ", "in flight "] {
        assert!(number_after(time, label) >= 0.0);
    }
    assert!(number_after(&r["disk"], "") > 0.0);
    assert!(number_after(&r["disk use"], "read at ") >= 0.0);
    // --verbose: one line per timed step, with its streaming statistics.
    for step in 1..=3 {
        assert!(r[&format!("step {step}")].contains("streamed "));
    }
}

#[test]
fn budget_below_one_layer_names_the_size_needed() {
    let (path, layer) = model("small-budget.m");
    let out = bench(&path, &["--mem-budget", &(layer / 2).to_string()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot hold the largest layer") && stderr.contains("bytes"),
        "{stderr}"
    );
}

#[test]
fn steps_past_the_context_are_refused() {
    let (path, _) = model("context.m");
    let out = bench(&path, &["--max-seq-len", "3"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("context length is 3"), "{stderr}");
    // Nothing was loaded or run.
    assert!(out.stdout.is_empty());
}

/// `--prompt-tokens` times batched prompt forwards (llama-bench's pp) and reports them, in text
/// and JSON; a batch larger than one forward takes is refused with a sentence saying so.
#[test]
fn prompt_forwards_are_timed_and_reported() {
    let (path, _) = model("prompt.m");
    let r = report(&bench(
        &path,
        &["--prompt-tokens", "4", "--prompt-rounds", "2"],
    ));
    check_common(&r);
    let prompt = &r["prompt"];
    assert!(
        prompt.starts_with("4 tokens per forward, 2 forwards: median "),
        "{prompt}"
    );
    assert!(number_after(prompt, "median ") > 0.0);
    assert!(number_after(prompt, "best ") > 0.0);

    let out = bench(
        &path,
        &["--prompt-tokens", "4", "--prompt-rounds", "3", "--json"],
    );
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["prompt"]["tokens"], 4);
    assert_eq!(json["prompt"]["rounds"], 3);
    assert_eq!(
        json["prompt"]["ms_per_forward"].as_array().unwrap().len(),
        3
    );
    assert!(json["prompt"]["tokens_per_s"].as_f64().unwrap() > 0.0);

    let out = bench(&path, &["--prompt-tokens", "33"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("more than one forward takes"), "{stderr}");
}
