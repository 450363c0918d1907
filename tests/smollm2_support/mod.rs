//! SmolLM2-135M-Instruct for the root tests: the Q4_1 GGUF that `scripts/fetch-smollm2.sh`
//! downloads, converted to Q40 by `airllama convert gguf` as a user would.
use std::path::{Path, PathBuf};
use std::process::Command;

/// The GGUF in `$AIRLLAMA_CACHE` (default `.cache/models` in the repository), or `None` with a
/// printed SKIPPED line when it is absent.
pub fn gguf() -> Option<PathBuf> {
    let cache = std::env::var_os("AIRLLAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.cache/models")));
    let path = cache.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        println!(
            "SKIPPED: {} is absent (run scripts/fetch-smollm2.sh)",
            path.display()
        );
        None
    }
}

/// Converts `gguf` with `airllama convert gguf --weights q40` into `dir` under the cargo test
/// temporary directory; returns (model, tokenizer).
pub fn convert(gguf: &Path, dir: &str) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("smollm2-q40.m");
    let tokenizer = dir.join("smollm2.t");
    let status = Command::new(env!("CARGO_BIN_EXE_airllama"))
        .args(["convert", "gguf"])
        .arg(gguf)
        .arg(&model)
        .arg(&tokenizer)
        .args(["--weights", "q40", "--quiet"])
        .status()
        .expect("run airllama convert");
    assert!(status.success(), "airllama convert gguf failed");
    (model, tokenizer)
}
