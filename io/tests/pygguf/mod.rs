//! Runs the Python helpers in `io/tests/py/` with an interpreter that has the PyPI `gguf`
//! package and numpy: `$AIRLLAMA_PYTHON`, else `<repo>/.cache/venv/bin/python3`, else
//! `python3`. Tests that need one print `SKIPPED: <reason>` and return when none is found.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An interpreter that imports `gguf` and `numpy`, or why there is none.
pub fn python() -> Result<PathBuf, String> {
    static FOUND: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let mut candidates: Vec<PathBuf> = Vec::new();
            if let Some(p) = std::env::var_os("AIRLLAMA_PYTHON") {
                candidates.push(p.into());
            }
            candidates.push(repo_root().join(".cache/venv/bin/python3"));
            candidates.push("python3".into());
            let mut tried = Vec::new();
            for c in candidates {
                match Command::new(&c).args(["-c", "import gguf, numpy"]).output() {
                    Ok(out) if out.status.success() => return Ok(c),
                    Ok(out) => tried.push(format!(
                        "{}: {}",
                        c.display(),
                        String::from_utf8_lossy(&out.stderr)
                            .lines()
                            .last()
                            .unwrap_or("import failed")
                    )),
                    Err(e) => tried.push(format!("{}: {e}", c.display())),
                }
            }
            Err(format!(
                "no Python with the PyPI packages gguf and numpy ({}); create one with \
                 `python3 -m venv .cache/venv && .cache/venv/bin/pip install gguf numpy`",
                tried.join("; ")
            ))
        })
        .clone()
}

/// Runs `io/tests/py/<script>` with `args`; panics with its output when it fails. `Err` (with
/// the reason) when no suitable interpreter exists.
pub fn run_script(script: &str, args: &[&str]) -> Result<String, String> {
    let py = python()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(script);
    let out = Command::new(&py)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {} failed:\n{stdout}\n{}",
        py.display(),
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}
