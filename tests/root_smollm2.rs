//! The root on a real model: SmolLM2-135M-Instruct (`scripts/fetch-smollm2.sh`), converted to
//! Q40 with `airllama convert gguf`. Skipped, with a message, when the GGUF is absent.
//!
//! * one node, temperature 0: "The capital of France is" continues with English about France;
//! * three nodes (SmolLM2 has 9 heads and 3 KV heads): the root with two `airllama worker`s
//!   samples the same tokens as the root with two C++ `dllama worker`s (when the dllama binary
//!   is at `/work/ext/dllama/dllama` or `$DLLAMA_BIN`; skipped with a message otherwise).
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use airllama::graph::SyncFloatType;
use airllama::replay::port_is_listening;
use airllama::root::{Root, RootOptions, Step, generate};
use airllama::sampler::Sampler;
use airllama::tokenizer::Tokenizer;
use airllama_kernels::backend::Backend;
use airllama_net::PeerAddress;

mod smollm2_support;

const PROMPT: &str = "The capital of France is";

/// Converts the GGUF once per test binary; returns (model, tokenizer).
fn converted() -> Option<&'static (PathBuf, PathBuf)> {
    static FILES: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let gguf = smollm2_support::gguf()?;
            Some(smollm2_support::convert(&gguf, "root_smollm2"))
        })
        .as_ref()
}

/// Runs the prompt at temperature 0 for `steps` positions; returns the sampled ids and text.
fn run(
    model: &Path,
    tokenizer: &Path,
    workers: Vec<PeerAddress>,
    steps: u32,
) -> (Vec<u32>, String) {
    let backend = Backend::detect();
    let tokenizer = Tokenizer::load(tokenizer).unwrap();
    let options = RootOptions {
        model: model.to_path_buf(),
        workers,
        sync_type: SyncFloatType::Q80,
        max_seq_len: 256,
        n_threads: 1,
        turbo: false,
        backend,
        max_memory: u64::MAX,
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
    };
    let mut root = Root::open(&options, &mut |_| {}).expect("root opens");
    let prompt = tokenizer.encode(PROMPT, true, true).unwrap();
    let mut sampler = Sampler::new(backend, tokenizer.vocab_size(), 0.0, 0.9, 1).unwrap();
    let mut picks = Vec::new();
    generate(
        &mut root,
        &prompt,
        steps,
        &mut |l| sampler.sample(l).map_err(|e| e.to_string()),
        &mut |s| {
            if let Step::Pred { token, .. } = s {
                picks.push(token);
            }
        },
    )
    .expect("generate");
    root.finish().unwrap();
    let text = tokenizer.decode_all(&picks).unwrap();
    (picks, text)
}

#[test]
fn one_node_answers_about_france() {
    let Some((model, tokenizer)) = converted() else {
        return;
    };
    let (_, text) = run(model, tokenizer, Vec::new(), 32);
    println!("{PROMPT}{text}");
    assert!(
        text.contains("France") || text.contains("Paris") || text.contains("French"),
        "not about France: {text:?}"
    );
    let words: Vec<&str> = text.split_whitespace().collect();
    assert!(words.len() >= 10, "too short: {text:?}");
    let english = text
        .chars()
        .filter(|c| {
            c.is_ascii_alphanumeric() || c.is_ascii_whitespace() || c.is_ascii_punctuation()
        })
        .count();
    assert!(
        english * 10 >= text.chars().count() * 9,
        "not English text: {text:?}"
    );
}

/// A worker process, killed on drop.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program worker ...` on a free port (blocking sockets) and waits until the port
/// listens (read from `/proc/net/tcp`: a probe connection would be taken for the root, and
/// dllama's stdout is block-buffered in a pipe).
fn spawn(program: &Path) -> (Worker, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program)
        .args(["worker", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--nthreads", "1", "--net-turbo", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
    let worker = Worker(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !port_is_listening(port) {
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {port}",
            program.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (worker, port)
}

fn addresses(workers: &[(Worker, u16)]) -> Vec<PeerAddress> {
    workers
        .iter()
        .map(|(_, port)| PeerAddress {
            host: "127.0.0.1".into(),
            port: *port,
        })
        .collect()
}

#[test]
fn three_nodes_airllama_workers_match_dllama_workers() {
    let Some((model, tokenizer)) = converted() else {
        return;
    };
    let dllama = std::env::var_os("DLLAMA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/ext/dllama/dllama"));
    let ours = PathBuf::from(env!("CARGO_BIN_EXE_airllama"));
    let steps = 24;
    let airllama_workers: Vec<_> = (0..2).map(|_| spawn(&ours)).collect();
    let (a, text) = run(model, tokenizer, addresses(&airllama_workers), steps);
    drop(airllama_workers);
    println!("3 nodes, airllama workers: {PROMPT}{text}");
    assert!(text.split_whitespace().count() >= 8, "too short: {text:?}");
    if !dllama.exists() {
        println!(
            "SKIPPED the C++ half: no dllama binary at {} (set DLLAMA_BIN)",
            dllama.display()
        );
        return;
    }
    let dllama_workers: Vec<_> = (0..2).map(|_| spawn(&dllama)).collect();
    let (b, _) = run(model, tokenizer, addresses(&dllama_workers), steps);
    drop(dllama_workers);
    assert_eq!(
        a, b,
        "airllama workers and dllama workers sampled different tokens"
    );
}
