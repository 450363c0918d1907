//! The root's errors name what is wrong: the file, the worker address or the flag.
#[macro_use]
mod golden_support;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootError, RootOptions};
use airllama_kernels::backend::Backend;
use airllama_net::PeerAddress;

fn golden(variant: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")).join(variant)
}

fn options(model: PathBuf, workers: Vec<PeerAddress>) -> RootOptions {
    RootOptions {
        model,
        workers,
        sync_type: SyncFloatType::Q80,
        max_seq_len: 0,
        n_threads: 1,
        turbo: false,
        backend: Backend::detect(),
        max_memory: u64::MAX,
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
    }
}

fn open_err(options: &RootOptions) -> RootError {
    Root::open(options, &mut |_| {}).expect_err("must fail")
}

/// The error and its sources, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[test]
fn a_missing_model_file_is_named() {
    let path = PathBuf::from("/nonexistent/model.m");
    let e = open_err(&options(path, Vec::new()));
    assert!(matches!(e, RootError::OpenModel { .. }), "{e:?}");
    assert!(chain(&e).contains("/nonexistent/model.m"), "{e}");
}

#[test]
fn a_file_that_is_not_a_model_is_named() {
    golden_or_skip!();
    let path = golden("llama-q40").join("tokenizer.t");
    let e = open_err(&options(path.clone(), Vec::new()));
    assert!(matches!(e, RootError::ModelHeader { .. }), "{e:?}");
    assert!(chain(&e).contains(&path.display().to_string()), "{e}");
}

#[test]
fn a_truncated_model_is_refused_before_anything_is_sent() {
    golden_or_skip!();
    let original = std::fs::read(golden("llama-q40").join("model.m")).unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("root_errors");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("truncated.m");
    std::fs::write(&path, &original[..original.len() - 100]).unwrap();
    let e = open_err(&options(path.clone(), Vec::new()));
    assert!(matches!(e, RootError::Layout { .. }), "{e:?}");
    assert!(chain(&e).contains("truncated.m"), "{e}");
}

#[test]
fn an_unreachable_worker_is_named() {
    golden_or_skip!();
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let workers = vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }];
    let e = open_err(&options(golden("llama-q40").join("model.m"), workers));
    assert!(matches!(e, RootError::Connect { .. }), "{e:?}");
    assert!(chain(&e).contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn a_worker_that_hangs_up_is_named() {
    golden_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts, reads nothing, closes: the root's handshake ACK never comes.
    let t = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let workers = vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }];
    let e = open_err(&options(golden("llama-q40").join("model.m"), workers));
    // A root that failed before connecting leaves the thread in accept: wake it, so the test
    // fails on the assertion below instead of hanging.
    let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    t.join().unwrap();
    assert!(chain(&e).contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn more_nodes_than_kv_heads_is_refused_with_the_counts() {
    golden_or_skip!();
    // 6 KV heads: 7 nodes is one too many. The check comes before any connection.
    let workers = (0..6)
        .map(|i| PeerAddress {
            host: "127.0.0.1".into(),
            port: 1 + i,
        })
        .collect();
    let e = open_err(&options(golden("llama-q40").join("model.m"), workers));
    assert!(matches!(e, RootError::Graph { n_nodes: 7, .. }), "{e:?}");
    assert!(chain(&e).contains("7 nodes"), "{e}");
}

#[test]
fn q40_weights_need_q80_buffers() {
    golden_or_skip!();
    let mut o = options(golden("llama-q40").join("model.m"), Vec::new());
    o.sync_type = SyncFloatType::F32;
    let e = open_err(&o);
    assert!(matches!(e, RootError::Graph { .. }), "{e:?}");
    assert!(chain(&e).contains("q80"), "{e}");
}

#[test]
fn forwards_outside_the_graph_are_refused() {
    golden_or_skip!();
    let o = options(golden("llama-q40").join("model.m"), Vec::new());
    let mut root = Root::open(&o, &mut |_| {}).unwrap();
    let too_many = vec![1u32; 33];
    let e = root.forward(0, &too_many).unwrap_err();
    assert!(chain(&e).contains("1..=32"), "{e}");
    let e = root.forward(256, &[1]).unwrap_err();
    assert!(chain(&e).contains("context length 256"), "{e}");
    let e = root.forward(0, &[288]).unwrap_err();
    assert!(chain(&e).contains("token 288"), "{e}");
    root.forward(0, &[1]).unwrap();
    assert_eq!(root.logits_mut().unwrap().len(), 288);
}

fn cli_stderr(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_airllama"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cli_flags_are_named() {
    golden_or_skip!();
    let model = golden("llama-q40").join("model.m");
    let tokenizer = golden("llama-q40").join("tokenizer.t");
    let (m, t) = (model.to_str().unwrap(), tokenizer.to_str().unwrap());
    let base = [
        "inference",
        "--model",
        m,
        "--tokenizer",
        t,
        "--prompt",
        "hi",
    ];
    let e = cli_stderr(&[&base[..], &["--steps", "8", "--workers", "nohost"]].concat());
    assert!(e.contains("nohost"), "{e}");
    let e = cli_stderr(&[&base[..], &["--steps", "8", "--buffer-float-type", "q41"]].concat());
    assert!(e.contains("q41"), "{e}");
    let e = cli_stderr(&[&base[..], &["--steps", "1", "--buffer-float-type", "q80"]].concat());
    assert!(e.contains("--steps"), "{e}");
    let e = cli_stderr(&[
        "inference",
        "--model",
        m,
        "--tokenizer",
        "/nonexistent/t.t",
        "--prompt",
        "hi",
        "--steps",
        "8",
    ]);
    assert!(e.contains("/nonexistent/t.t"), "{e}");
}
