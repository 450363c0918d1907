//! Zero-data movement (`--shared-storage` root, `airllama worker --model`): workers load their
//! slices from their own copy of the model, verified record by record against the root's.
//!
//! * every golden model on 2 and 3 nodes: the same tokens as the classic weight transfer and as
//!   the C++ root's recording (where this CPU has the recording's instruction set), with the
//!   workers all resident and under a memory budget below two layers of their slice;
//! * SmolLM2-135M on 3 nodes behind counting TCP proxies (the worker link included): the same
//!   text as the classic run, under 1 MiB reaching each worker before the first forward, under
//!   2 MiB from the root in the whole session, and forwards that move exactly the classic
//!   run's activations;
//! * a mixed cluster: a replayed C++ dllama worker receives exactly its recorded bytes while an
//!   airllama worker beside it loads from its own file;
//! * refusals (an edited, a truncated, a missing and another model's file) name the worker,
//!   the file and what differs, and the worker serves the next root.
//!
//! Golden models live in `../shared/golden`; SmolLM2 comes from `scripts/fetch-smollm2.sh`.
//! Each is skipped with a printed reason when absent.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use airllama::root::{RootError, RootEvent};
use airllama::streaming::StreamingOptions;
use airllama_kernels::backend::{Backend, Isa};

mod shared_storage_support;
mod smollm2_support;

use shared_storage_support::*;

/// The recording whose tokens a `n_nodes` run of `v` reproduces on this CPU, if any (as in
/// `root_replay.rs`: llama-f32's batched matmuls follow the SIMD width, so its 3-node
/// recording needs AVX-512 and its 2-node one has an AVX2 twin; the Q40 ones need AVX2).
fn recording_for(v: &Variant, n_nodes: usize) -> Option<Recording> {
    let avx512 = Backend::new(Isa::Avx512).is_some();
    let scenario = match (v.name, n_nodes) {
        ("llama-f32", 2) if !avx512 => "2nodes-avx2",
        ("llama-f32", 3) if !avx512 => {
            println!(
                "{}: no golden token check on 3 nodes: this CPU lacks AVX-512",
                v.name
            );
            return None;
        }
        (_, 2) => "2nodes",
        _ => "3nodes",
    };
    let scenario = format!("{}/{scenario}", v.name);
    if Backend::new(Isa::Avx2).is_none() {
        println!("{scenario}: no golden token check: this CPU lacks the recording's AVX2");
        return None;
    }
    Some(Recording::load(&scenario))
}

/// Runs the golden prompt on `v` over `n_workers` in-process workers. `shared`: the root runs
/// with `--shared-storage` and the workers hold the model (under `streaming` if given), else
/// the classic transfer to workers without a model. Checks that the shared-storage root saw
/// every worker load locally; returns the tokens and the workers' logs.
fn golden_run(
    v: &Variant,
    n_workers: usize,
    shared: bool,
    streaming: Option<&StreamingOptions>,
    tmp: &TempDir,
) -> (Vec<u32>, Vec<Vec<String>>) {
    let workers: Vec<ThreadWorker> = (0..n_workers)
        .map(|w| {
            let model = shared.then(|| v.model.clone());
            let cache = shared.then(|| tmp.sub(&format!("worker{w}-cache")));
            ThreadWorker::start(model, streaming.cloned(), cache)
        })
        .collect();
    let ports: Vec<u16> = workers.iter().map(|w| w.port).collect();
    let cache = shared.then(|| tmp.sub("root-cache"));
    let options = root_options(&v.model, v.sync_type, &ports, cache);
    let session = run_root(
        options,
        &v.tokenizer,
        GOLDEN_PROMPT,
        GOLDEN_STEPS,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{} on {} nodes: {}", v.name, n_workers + 1, chain(&e)));
    let mut logs = Vec::new();
    for w in workers {
        let (result, log) = w.finish();
        assert_eq!(
            result,
            Ok(12),
            "the worker ran every forward:\n{}",
            log.join("\n")
        );
        logs.push(log);
    }
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let loaded_locally = session
        .events
        .iter()
        .filter(|e| matches!(e, RootEvent::LoadedLocally { .. }))
        .count();
    if shared {
        assert!(
            session.events.contains(&RootEvent::SharedStorage {
                local: addresses,
                classic: Vec::new(),
            }),
            "every worker greets: {:?}",
            session.events
        );
        assert_eq!(loaded_locally, n_workers, "{:?}", session.events);
        for log in &logs {
            assert!(
                log.iter().any(|l| l.starts_with("weights loaded from")),
                "{}",
                log.join("\n")
            );
        }
    } else {
        assert_eq!(loaded_locally, 0);
    }
    (session.picks, logs)
}

/// Shared storage gives the classic transfer's tokens, and the recording's, on 2 and 3 nodes;
/// `streamed`: with the workers under a budget below two layers of their slice, streaming.
fn tokens_case(name: &'static str, streamed: bool) {
    let Some(v) = variant(name) else {
        return;
    };
    let tmp = TempDir::new(&format!(
        "{name}-{}",
        if streamed { "streamed" } else { "tokens" }
    ));
    for n_workers in [1, 2] {
        let n_nodes = n_workers + 1;
        let streaming = streamed.then(|| {
            let mut s = StreamingOptions::new(budget_below_two_layers(&v.model, n_nodes as u64));
            s.spill_dir = tmp.sub(&format!("spill{n_nodes}"));
            s.verbose = true;
            s
        });
        let (classic, _) = golden_run(&v, n_workers, false, None, &tmp);
        let (shared, logs) = golden_run(&v, n_workers, true, streaming.as_ref(), &tmp);
        assert_eq!(
            shared, classic,
            "{name} on {n_nodes} nodes: shared storage sampled other tokens than the transfer"
        );
        if let Some(recording) = recording_for(&v, n_nodes) {
            recording.check_picks(&shared, &format!("{name} on {n_nodes} nodes"));
        }
        if let Some(s) = &streaming {
            let left: Vec<_> = std::fs::read_dir(&s.spill_dir).unwrap().collect();
            assert!(left.is_empty(), "spill files left: {left:?}");
            for log in &logs {
                let text = log.join("\n");
                assert!(
                    text.contains("through 1 slot(s)") && text.contains("from the slice cache"),
                    "{name} on {n_nodes} nodes: the worker does not stream its layers:\n{text}"
                );
                let forwards: Vec<&String> = log
                    .iter()
                    .filter(|l| l.starts_with("forward at position"))
                    .collect();
                assert!(
                    !forwards.is_empty() && forwards.iter().all(|l| !l.contains("streamed 0 ")),
                    "{name} on {n_nodes} nodes: forwards without streamed units:\n{text}"
                );
            }
        }
        println!("{name} on {n_nodes} nodes (streamed: {streamed}): {shared:?}");
    }
}

#[test]
fn llama_q40_tokens_equal_the_transfer() {
    tokens_case("llama-q40", false);
}

#[test]
fn llama_f32_tokens_equal_the_transfer() {
    tokens_case("llama-f32", false);
}

#[test]
fn qwen3_q40_tokens_equal_the_transfer() {
    tokens_case("qwen3-q40", false);
}

#[test]
fn qwen3moe_q40_tokens_equal_the_transfer() {
    tokens_case("qwen3moe-q40", false);
}

#[test]
fn llama_q40_streamed_workers_tokens_equal_the_transfer() {
    tokens_case("llama-q40", true);
}

#[test]
fn llama_f32_streamed_workers_tokens_equal_the_transfer() {
    tokens_case("llama-f32", true);
}

#[test]
fn qwen3_q40_streamed_workers_tokens_equal_the_transfer() {
    tokens_case("qwen3-q40", true);
}

#[test]
fn qwen3moe_q40_streamed_workers_tokens_equal_the_transfer() {
    tokens_case("qwen3moe-q40", true);
}

/// SmolLM2 converted once per test binary; `None` (printed) when the GGUF is absent.
fn smollm2() -> Option<&'static (PathBuf, PathBuf)> {
    static FILES: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let gguf = smollm2_support::gguf()?;
            Some(smollm2_support::convert(&gguf, "shared_storage_smollm2"))
        })
        .as_ref()
}

/// Bytes that reached each worker of a 3-node session, counted by the proxies.
struct Traffic {
    text: String,
    picks: Vec<u32>,
    /// From the root, up to the end of the load (no forward has run).
    root_before_first_forward: Vec<u64>,
    /// From the root, the whole session.
    root_total: Vec<u64>,
    /// From the other worker, up to the end of the load and in the whole session.
    peer_before_first_forward: Vec<u64>,
    peer_total: Vec<u64>,
}

impl Traffic {
    fn before_first_forward(&self, w: usize) -> u64 {
        self.root_before_first_forward[w] + self.peer_before_first_forward[w]
    }

    fn total(&self, w: usize) -> u64 {
        self.root_total[w] + self.peer_total[w]
    }
}

/// Per worker of a 3-node cluster, from two proxies' `[from root, from peers, to peers]`:
/// (from the root, from the other worker). Worker 0 connects to worker 1's proxy, so what
/// reaches worker 0 over their link is that proxy's "to peers".
fn per_worker(p0: [u64; 3], p1: [u64; 3]) -> [(u64, u64); 2] {
    [(p0[0], p0[1] + p1[2]), (p1[0], p1[1] + p0[2])]
}

/// SmolLM2 on 3 nodes, 32 positions at temperature 0, each worker behind a counting proxy
/// whose address is the one the root lists (so the worker link goes through it too).
fn smollm2_session(model: &Path, tokenizer: &Path, shared: bool, tmp: &TempDir) -> Traffic {
    let workers: Vec<ThreadWorker> = (0..2)
        .map(|w| {
            let model = shared.then(|| model.to_path_buf());
            ThreadWorker::start(model, None, Some(tmp.sub(&format!("worker{w}"))))
        })
        .collect();
    let proxies: Vec<CountingProxy> = workers
        .iter()
        .map(|w| CountingProxy::start(w.port))
        .collect();
    let ports: Vec<u16> = proxies.iter().map(|p| p.port).collect();
    let cache = shared.then(|| tmp.sub("root-cache"));
    let options = root_options(model, airllama::graph::SyncFloatType::Q80, &ports, cache);
    let counters = proxies.iter().flat_map(|p| p.counters().all()).collect();
    let prompt = "The capital of France is";
    let session = run_root(options, tokenizer, prompt, 32, counters)
        .unwrap_or_else(|e| panic!("SmolLM2 session: {}", chain(&e)));
    for w in workers {
        let (result, log) = w.finish();
        assert!(result.is_ok(), "{result:?}:\n{}", log.join("\n"));
        let loaded = log.iter().any(|l| l.starts_with("weights loaded from"));
        assert_eq!(loaded, shared, "{}", log.join("\n"));
    }
    let a = &session.after_open;
    let before = per_worker([a[0], a[1], a[2]], [a[3], a[4], a[5]]);
    let total = per_worker(
        proxies[0].counters().values(),
        proxies[1].counters().values(),
    );
    Traffic {
        text: session.text,
        picks: session.picks,
        root_before_first_forward: before.iter().map(|b| b.0).collect(),
        peer_before_first_forward: before.iter().map(|b| b.1).collect(),
        root_total: total.iter().map(|t| t.0).collect(),
        peer_total: total.iter().map(|t| t.1).collect(),
    }
}

#[test]
fn smollm2_three_nodes_moves_only_activations() {
    let Some((model, tokenizer)) = smollm2() else {
        return;
    };
    let tmp = TempDir::new("smollm2");
    let classic = smollm2_session(model, tokenizer, false, &tmp);
    let shared = smollm2_session(model, tokenizer, true, &tmp);
    println!("The capital of France is{}", shared.text);
    println!("bytes reaching each worker (from the root + from the other worker):");
    for (what, t) in [("classic", &classic), ("zero-data", &shared)] {
        for w in 0..2 {
            println!(
                "{what:>9} worker {w}: before the first forward {:>9} + {:>7} = {:>9}; whole session {:>9} + {:>7} = {:>9}",
                t.root_before_first_forward[w],
                t.peer_before_first_forward[w],
                t.before_first_forward(w),
                t.root_total[w],
                t.peer_total[w],
                t.total(w)
            );
        }
    }
    assert_eq!(
        shared.picks, classic.picks,
        "tokens differ from the classic run"
    );
    assert_eq!(shared.text, classic.text);
    assert!(
        shared.text.split_whitespace().count() >= 8,
        "{:?}",
        shared.text
    );
    const MIB: u64 = 1 << 20;
    for w in 0..2 {
        // The proxies see what the transfer moves: the weights (tens of MB) in the classic run.
        assert!(classic.root_before_first_forward[w] > 10 * MIB, "{w}");
        assert!(
            shared.before_first_forward(w) < MIB,
            "worker {w} received {} bytes before the first forward",
            shared.before_first_forward(w)
        );
        assert!(
            shared.root_total[w] < 2 * MIB,
            "worker {w} received {} bytes from the root in the session",
            shared.root_total[w]
        );
        // The forwards move the same activations either way: only the load shrank.
        for (what, s, c) in [
            (
                "from the root",
                shared.root_total[w] - shared.root_before_first_forward[w],
                classic.root_total[w] - classic.root_before_first_forward[w],
            ),
            (
                "from the other worker",
                shared.peer_total[w] - shared.peer_before_first_forward[w],
                classic.peer_total[w] - classic.peer_before_first_forward[w],
            ),
        ] {
            assert_eq!(
                s, c,
                "worker {w}: forward traffic {what}, zero-data vs classic"
            );
        }
        assert_eq!(
            shared.peer_before_first_forward[w], 0,
            "the worker link before a forward"
        );
    }
}

/// A `--shared-storage` root with a replayed C++ worker 0 (llama-q40/3nodes) and an airllama
/// worker 1 holding the model: worker 0 gets exactly the recorded bytes (the classic transfer,
/// nothing extra), worker 1 loads locally and sends worker 0 exactly what the C++ worker 1
/// sent it, and the root samples the C++ root's tokens.
#[test]
fn mixed_cluster_replayed_dllama_worker_and_airllama_worker() {
    let Some(v) = variant("llama-q40") else {
        return;
    };
    if Backend::new(Isa::Avx2).is_none() {
        println!("SKIPPED: this CPU lacks AVX2, which llama-q40/3nodes' bytes need");
        return;
    }
    let recording = Recording::load("llama-q40/3nodes");
    let tmp = TempDir::new("mixed");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port0 = listener.local_addr().unwrap().port();
    let replayed = replayed_worker0(listener, recording.dir());
    let worker1 = ThreadWorker::start(Some(v.model.clone()), None, Some(tmp.sub("worker1")));
    let port1 = worker1.port;
    let options = root_options(
        &v.model,
        v.sync_type,
        &[port0, port1],
        Some(tmp.sub("root-cache")),
    );
    let session = run_root(
        options,
        &v.tokenizer,
        GOLDEN_PROMPT,
        GOLDEN_STEPS,
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("mixed cluster: {}", chain(&e)));
    let (result, log) = worker1.finish();
    assert_eq!(result, Ok(12), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.starts_with("weights loaded from")),
        "{}",
        log.join("\n")
    );
    assert!(
        session.events.contains(&RootEvent::SharedStorage {
            local: vec![format!("127.0.0.1:{port1}")],
            classic: vec![format!("127.0.0.1:{port0}")],
        }),
        "{:?}",
        session.events
    );
    let got = replayed
        .recv_timeout(TIMEOUT)
        .expect("the replayed worker ends");
    let expected = expected_worker0_stream(recording.dir(), port1);
    if let Some(at) = first_difference(&got.from_root, &expected) {
        panic!(
            "the replayed C++ worker received other bytes than recorded from byte {at} ({} received, {} recorded)",
            got.from_root.len(),
            expected.len()
        );
    }
    let link = std::fs::read(recording.dir().join("w1_c1_worker0.from_worker.bin")).unwrap();
    if let Some(at) = first_difference(&got.from_worker1, &link) {
        panic!(
            "worker 1 sent the replayed worker 0 other bytes than the C++ worker 1 from byte {at} ({} sent, {} recorded)",
            got.from_worker1.len(),
            link.len()
        );
    }
    recording.check_picks(&session.picks, "mixed cluster");
}

/// A worker process holding `model` is refused by a llama-q40 `--shared-storage` root with
/// an error naming the worker, the file and each of `expect`; then it serves a classic root,
/// which samples the recording's tokens.
fn refusal_with(v: &Variant, model: &Path, expect: &[&str], tmp: &TempDir) {
    let worker = WorkerProcess::spawn(model, tmp.path());
    let options = root_options(&v.model, v.sync_type, &[worker.port], Some(tmp.sub("root")));
    let e = run_root(
        options,
        &v.tokenizer,
        GOLDEN_PROMPT,
        GOLDEN_STEPS,
        Vec::new(),
    )
    .expect_err("the worker must refuse");
    let text = chain(&e);
    assert!(
        matches!(&e, RootError::SharedStorage { node: 1, .. }),
        "{text}\n{e:?}"
    );
    let address = format!("127.0.0.1:{}", worker.port);
    let file = model.display().to_string();
    for part in [address.as_str(), file.as_str()].iter().chain(expect) {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    println!("refused as expected: {text}");
    // The worker goes back to serving: a classic root runs the whole prompt on it.
    let options = root_options(&v.model, v.sync_type, &[worker.port], None);
    let session = run_root(
        options,
        &v.tokenizer,
        GOLDEN_PROMPT,
        GOLDEN_STEPS,
        Vec::new(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "classic session after the refusal: {}\n{}",
            chain(&e),
            worker.log()
        )
    });
    match recording_for(v, 2) {
        Some(recording) => recording.check_picks(&session.picks, "classic after a refusal"),
        None => assert_eq!(session.picks.len(), 10),
    }
}

#[test]
fn refuses_a_copy_with_one_changed_byte_naming_the_tensor() {
    let Some(v) = variant("llama-q40") else {
        return;
    };
    let tmp = TempDir::new("edited");
    let (offset, tensor) = byte_in_slice(&v.model, v.sync_type, 2, 1, 1);
    let mut bytes = std::fs::read(&v.model).unwrap();
    bytes[offset as usize] ^= 0xff;
    let copy = tmp.path().join("edited.m");
    std::fs::write(&copy, &bytes).unwrap();
    refusal_with(
        &v,
        &copy,
        &["differs from the root's copy", tensor.as_str()],
        &tmp,
    );
}

#[test]
fn refuses_a_truncated_copy_with_both_sizes() {
    let Some(v) = variant("llama-q40") else {
        return;
    };
    let tmp = TempDir::new("truncated");
    let bytes = std::fs::read(&v.model).unwrap();
    let cut = bytes.len() - 4096;
    let copy = tmp.path().join("truncated.m");
    std::fs::write(&copy, &bytes[..cut]).unwrap();
    // Both sizes (the copy's, and the root's), the word for it, and the first tensor the
    // copy lacks: the classifier is the last tensor of the file.
    let (ours, theirs) = (format!("{cut} bytes"), bytes.len().to_string());
    refusal_with(
        &v,
        &copy,
        &[
            ours.as_str(),
            theirs.as_str(),
            "truncated",
            "the first tensor past its end is classifier",
        ],
        &tmp,
    );
}

#[test]
fn refuses_a_missing_file_naming_its_path() {
    let Some(v) = variant("llama-q40") else {
        return;
    };
    let tmp = TempDir::new("missing");
    let missing = Path::new("/nonexistent/airllama-shared-storage/model.m");
    refusal_with(&v, missing, &["No such file"], &tmp);
}

#[test]
fn refuses_another_model_whose_header_differs() {
    let (Some(v), Some(qwen3)) = (variant("llama-q40"), variant("qwen3-q40")) else {
        return;
    };
    let tmp = TempDir::new("other-model");
    refusal_with(&v, &qwen3.model, &["header differs"], &tmp);
}
