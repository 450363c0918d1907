//! The fuzz seed corpora `fuzz/corpus/net_*` are cut from the golden streams by this test
//! (`AIRLLAMA_WRITE_NET_CORPUS=1 cargo test -p airllama-net --test fuzz_corpus` rewrites them).
//! Always: every seed is present and decodes, and every file in those folders (seeds and
//! whatever a fuzzer added) runs through its oracle without a panic.

#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use airllama_net::DecodeError;
use airllama_net::fuzzing;
use common::{read_golden, seeds};

type Oracle = fn(&[u8]) -> Result<usize, DecodeError>;

fn root_stream_len(data: &[u8]) -> Result<usize, DecodeError> {
    fuzzing::root_stream(data).map(|_| data.len())
}

const TARGETS: [(&str, Oracle); 6] = [
    ("net_handshake", fuzzing::handshake),
    ("net_net_config", fuzzing::net_config),
    ("net_node_config", fuzzing::node_config),
    ("net_weight_record", fuzzing::weight_record),
    ("net_control_packets", fuzzing::control_packets),
    ("net_root_stream", root_stream_len),
];

/// (seed name prefix, golden stream) — 2 and 3 nodes, dense and MoE, Q80 and F32 syncs, and an
/// aarch64 recording whose falcon-rope slice fields hold stack garbage.
const SOURCES: [(&str, &str); 4] = [
    (
        "llama-q40-2nodes",
        "llama-q40/2nodes/w0_c0_root.to_worker.bin",
    ),
    (
        "qwen3moe-q40-3nodes-w1",
        "qwen3moe-q40/3nodes/w1_c0_root.to_worker.bin",
    ),
    (
        "qwen3-q40-2nodes-neon",
        "qwen3-q40/2nodes-neon/w0_c0_root.to_worker.bin",
    ),
    (
        "llama-f32-3nodes-w0",
        "llama-f32/3nodes/w0_c0_root.to_worker.bin",
    ),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus")).join(target)
}

fn seed_files() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, (name, path)) in SOURCES.iter().enumerate() {
        let s = seeds(&read_golden(path));
        out.push(("net_handshake", name.to_string(), s.handshake));
        out.push(("net_net_config", name.to_string(), s.net_config));
        out.push(("net_node_config", name.to_string(), s.node_config));
        for (k, w) in s.weight_records.into_iter().enumerate() {
            out.push(("net_weight_record", format!("{name}-{k}"), w));
        }
        out.push(("net_control_packets", name.to_string(), s.control_packets));
        // Three shortened sessions keep the corpora small (< 200 KB in all).
        if i < 3 {
            out.push(("net_root_stream", name.to_string(), s.root_stream));
        }
    }
    out
}

#[test]
fn seed_corpora_are_present_and_decode() {
    golden_or_skip!();
    let write = std::env::var_os("AIRLLAMA_WRITE_NET_CORPUS").is_some();
    let mut total = 0usize;
    for (target, name, bytes) in seed_files() {
        let oracle = TARGETS.iter().find(|t| t.0 == target).unwrap().1;
        let used = oracle(&bytes).unwrap_or_else(|e| panic!("{target}/{name}: {e}"));
        assert_eq!(used, bytes.len(), "{target}/{name}");
        let path = corpus_dir(target).join(&name);
        if write {
            fs::create_dir_all(corpus_dir(target)).unwrap();
            fs::write(&path, &bytes).unwrap();
        }
        let stored = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            stored == bytes,
            "{} is not the seed cut from the golden stream",
            path.display()
        );
        total += bytes.len();
    }
    assert!(total < 200 << 10, "seed corpora are {total} bytes");
}

#[test]
fn every_corpus_file_runs_through_its_oracle() {
    let mut files = 0;
    for (target, oracle) in TARGETS {
        let Ok(dir) = fs::read_dir(corpus_dir(target)) else {
            panic!("missing corpus folder fuzz/corpus/{target}");
        };
        for entry in dir.flatten() {
            let data = fs::read(entry.path()).unwrap();
            // Errors are fine; a panic or a round-trip mismatch fails the test.
            let _ = oracle(&data);
            files += 1;
        }
    }
    assert!(files >= 6);
}
