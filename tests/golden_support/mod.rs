//! Where the recorded C++ dllama sessions live, and how a test that needs them skips without
//! them.
//!
//! The recordings (`golden/`, about 46 MB of small random-weight models and the byte streams a
//! C++ `dllama` worker received and sent) are not in the repository: they sit in a `shared`
//! folder beside it (`../shared/golden`), which the project's CI machines and development
//! sandboxes carry. A plain clone from a forge has no such folder, and its tests that need the
//! recordings print one `SKIPPED` line each instead of failing (or, worse, waiting for a worker
//! that will never be contacted).
//!
//! In CI (`CI` set) a missing folder is a failure, not a skip, so the wire-compatibility tests
//! can never silently drop out of a green run.
//!
//! This file is shared by the test targets of every crate (`#[path]`-included from `io/tests`
//! and `net/tests`), so it finds the repository from the including crate's manifest directory.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

/// The repository root: the nearest ancestor of the including crate's manifest directory that
/// holds the workspace's `Cargo.lock`.
fn repository() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|p| p.join("Cargo.lock").is_file())
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The golden folder's path, whether or not it exists: `../shared/golden` beside the
/// repository.
pub fn golden_path() -> PathBuf {
    let repository = repository();
    match repository.parent() {
        Some(beside) => beside.join("shared/golden"),
        None => repository.join("../shared/golden"),
    }
}

/// The golden folder when it is there. Otherwise prints one `SKIPPED` line naming the test
/// and where the recordings come from, and returns `None` (in CI: panics instead). The line is
/// written straight to stderr, past the test harness's capture, so a plain `cargo test` shows
/// which tests skipped and why.
pub fn golden() -> Option<PathBuf> {
    let dir = golden_path();
    if dir.is_dir() {
        return Some(dir);
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: the recorded dllama sessions are missing at {} (CI must have ../shared beside the repository)",
            dir.display()
        );
    }
    // Once per test: a property test asks once per case.
    static SKIPPED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if skipped.contains(&test) {
        return None;
    }
    skipped.push(test.clone());
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs the recorded dllama sessions at {} (../shared/golden beside the \
         repository, which a clone does not have; see README, Tests)",
        dir.display()
    );
    None
}

/// `golden()` or return from the test: `let dir = golden_or_skip!();` (the module is declared
/// with `#[macro_use]`).
macro_rules! golden_or_skip {
    () => {
        match golden_support::golden() {
            Some(dir) => dir,
            None => return,
        }
    };
}
