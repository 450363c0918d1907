//! Root replay: the airllama root runs every recorded x86 scenario of `../shared/golden` with
//! the scenario's prompt and flags, against
//!
//! * recorded workers: local listeners that answer with the recorded `from_worker` bytes; every
//!   byte the root sends must equal the recorded `to_worker` stream (the other workers' ports in
//!   the 3-node handshakes aside: the listeners' ports replace the recording proxy's), and the
//!   sampled tokens must be the ones the C++ root sampled;
//! * real `airllama worker` processes: the sampled tokens must be the C++ root's.
//!
//! Both also run with the root under a `--mem-budget` below two layers of its slice (streamed
//! through a spill file): the bytes sent, and so the tokens, must not change.
//!
//! dllama's root feeds `inputTokens[nInputTokens]` (one past the prompt) at the last prompt
//! position; airllama feeds the last prompt token. Where the two are the same id (every scenario
//! but `llama-f32/2nodes-batch1`, checked from `input_tokens_by_position`) the whole session is
//! byte-identical through [`generate`], the code path `airllama inference` runs. In
//! `2nodes-batch1` dllama fed id 0 instead of `a` (97) at position 1: there the test checks that
//! the streams agree up to that forward's X row, that our row is the embedding row of 97 and the
//! recorded one the embedding row of 0, and then, driving [`Root::forward`] with dllama's
//! token at that one position, that everything else is byte-identical too.
#[macro_use]
mod golden_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootOptions, Step, generate, prefill};
use airllama::sampler::Sampler;
use airllama::streaming::StreamingOptions;
use airllama::tokenizer::Tokenizer;
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::{Backend, Isa};
use airllama_net::PeerAddress;
use serde_json::Value;

fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
}

/// The instruction set whose summation order a scenario's root-side bytes were computed with.
fn requirement(scenario: &str) -> Isa {
    match scenario {
        "llama-f32/2nodes-avx2" => Isa::Avx2,
        "llama-f32/2nodes" | "llama-f32/3nodes" => Isa::Avx512,
        _ => Isa::Avx2,
    }
}

/// What the test needs from a scenario folder.
struct Golden {
    dir: PathBuf,
    prompt: String,
    steps: u32,
    sync_type: SyncFloatType,
    max_seq_len: u32,
    n_workers: usize,
    input_tokens: Vec<u32>,
    n_prompt_tokens: usize,
    /// `(offset, position, batch)` of every forward's control packet in worker 0's stream.
    forwards: Vec<(usize, u32, u32)>,
    /// `(file, offset, length, meaning)` of the address-dependent bytes.
    address_bytes: Vec<(String, usize, usize, String)>,
    /// The root's stdout lines.
    stdout: Vec<Vec<u8>>,
    dim: usize,
}

fn load(scenario: &str) -> Golden {
    let dir = golden_dir().join(scenario);
    let path = dir.join("manifest.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m: Value = serde_json::from_slice(&text).expect("manifest is JSON");
    let root_cmd = m["commands"]["root"].as_str().expect("root command");
    let max_seq_len = root_cmd
        .split_whitespace()
        .skip_while(|w| *w != "--max-seq-len")
        .nth(1)
        .map(|v| v.parse().expect("--max-seq-len value"))
        .unwrap_or(0);
    let tokens = |v: &Value| -> Vec<u32> {
        v.as_array()
            .expect("token list")
            .iter()
            .map(|t| t.as_u64().expect("token id") as u32)
            .collect()
    };
    let forwards = m["layout"]["worker0"]["forwards"]
        .as_array()
        .expect("forwards")
        .iter()
        .map(|f| {
            (
                f["offset"].as_u64().unwrap() as usize,
                f["position"].as_u64().unwrap() as u32,
                f["batch"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let address_bytes = m["address_dependent_bytes"]
        .as_array()
        .expect("address_dependent_bytes")
        .iter()
        .map(|a| {
            (
                a["file"].as_str().unwrap().to_string(),
                a["offset"].as_u64().unwrap() as usize,
                a["length"].as_u64().unwrap() as usize,
                a["meaning"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let stdout = std::fs::read(dir.join("root_stdout.txt")).expect("root_stdout.txt");
    let stdout = stdout.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    let x_pipe = &m["layout"]["worker0"]["net"]["pipes"][2];
    assert_eq!(x_pipe["name"], "X");
    let dim = x_pipe["x"].as_u64().expect("X pipe width") as usize;
    Golden {
        prompt: m["prompt"].as_str().expect("prompt").to_string(),
        steps: m["steps"].as_u64().expect("steps") as u32,
        sync_type: SyncFloatType::from_flag(m["buffer_float_type"].as_str().unwrap())
            .expect("sync type"),
        max_seq_len,
        n_workers: m["n_workers"].as_u64().expect("n_workers") as usize,
        input_tokens: tokens(&m["input_tokens_by_position"]),
        n_prompt_tokens: m["n_prompt_tokens"].as_u64().unwrap() as usize,
        forwards,
        address_bytes,
        stdout,
        dim,
        dir,
    }
}

fn options(g: &Golden, workers: Vec<PeerAddress>, backend: Backend) -> RootOptions {
    RootOptions {
        model: g.dir.parent().unwrap().join("model.m"),
        workers,
        sync_type: g.sync_type,
        max_seq_len: g.max_seq_len,
        n_threads: 1,
        turbo: true,
        backend,
        max_memory: u64::MAX,
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
    }
}

/// How the root picks the token of the last prompt position.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// airllama's [`generate`]: the last prompt token.
    Generate,
    /// The id dllama's root fed there (from the recording).
    Dllama,
}

/// Runs the scenario's prompt on an open root; returns every sampled token.
fn run_root(g: &Golden, mut root: Root, backend: Backend, feed: Feed) -> Vec<u32> {
    let tokenizer =
        Tokenizer::load(&g.dir.parent().unwrap().join("tokenizer.t")).expect("golden tokenizer");
    let prompt = tokenizer.encode(&g.prompt, true, true).expect("encode");
    assert_eq!(prompt.len(), g.n_prompt_tokens, "prompt token count");
    assert_eq!(
        &prompt[..prompt.len() - 1],
        &g.input_tokens[..prompt.len() - 1],
        "prefill tokens"
    );
    let mut sampler = Sampler::new(backend, tokenizer.vocab_size(), 0.0, 0.9, 7).expect("sampler");
    let mut picks = Vec::new();
    match feed {
        Feed::Generate => {
            let mut sample = |l: &mut [f32]| sampler.sample(l).map_err(|e| e.to_string());
            let mut on_step = |s: Step| {
                if let Step::Pred { token, .. } = s {
                    picks.push(token);
                }
            };
            generate(&mut root, &prompt, g.steps, &mut sample, &mut on_step).expect("generate");
        }
        Feed::Dllama => {
            let mut pos = prefill(&mut root, 0, &prompt, &mut |_| {}).expect("prefill");
            let mut token = g.input_tokens[pos as usize];
            while pos < g.steps.min(root.seq_len()) {
                root.forward(pos, &[token]).expect("forward");
                token = sampler.sample(root.logits_mut().unwrap()).unwrap();
                picks.push(token);
                pos += 1;
            }
        }
    }
    root.finish().expect("stop packet");
    picks
}

/// Checks the picks against the recording: every pick but the last was fed back (and so is in
/// `input_tokens_by_position`); the last one is compared with the root's last printed piece.
fn check_picks(g: &Golden, scenario: &str, picks: &[u32]) {
    let fed_back = &g.input_tokens[g.n_prompt_tokens..];
    assert_eq!(
        &picks[..picks.len() - 1],
        fed_back,
        "{scenario}: sampled tokens differ from the C++ root's"
    );
    let pred_lines: Vec<&Vec<u8>> = g
        .stdout
        .iter()
        .filter(|l| l.starts_with("🔶".as_bytes()))
        .collect();
    assert_eq!(
        pred_lines.len(),
        picks.len(),
        "{scenario}: prediction count"
    );
    let last = pred_lines.last().unwrap();
    let printed = &last[last.windows(2).rposition(|w| w == b"| ").unwrap() + 2..];
    let tokenizer = Tokenizer::load(&g.dir.parent().unwrap().join("tokenizer.t")).unwrap();
    let piece = tokenizer.piece(*picks.last().unwrap()).unwrap();
    if printed != b"~" {
        assert!(
            printed.ends_with(piece),
            "{scenario}: last printed piece {printed:?} does not end with our last token's {piece:?}"
        );
    }
}

/// A recorded worker: accepts the root, sends the recorded bytes, returns all it received.
fn recorded_worker(listener: TcpListener, reply: Vec<u8>) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("root connects");
        let mut writer = stream.try_clone().expect("clone");
        let send = std::thread::spawn(move || writer.write_all(&reply));
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("read root stream");
        send.join().unwrap().expect("send recorded worker bytes");
        got
    })
}

/// The recorded stream with the handshake's other-worker ports replaced by the listeners'.
fn expected_stream(g: &Golden, w: usize, ports: &[u16]) -> Vec<u8> {
    let file = format!("w{w}_c0_root.to_worker.bin");
    let mut bytes = std::fs::read(g.dir.join(&file)).expect("to_worker stream");
    let others: Vec<u16> = (0..ports.len())
        .filter(|&i| i != w)
        .map(|i| ports[i])
        .collect();
    let mut k = 0;
    for (f, offset, len, meaning) in &g.address_bytes {
        if *f == file && meaning.contains("port") {
            assert_eq!(*len, 4);
            bytes[*offset..offset + 4].copy_from_slice(&u32::from(others[k]).to_le_bytes());
            k += 1;
        }
    }
    bytes
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn describe(g: &Golden, offset: usize) -> String {
    match g.forwards.iter().rev().find(|f| f.0 <= offset) {
        Some((at, position, batch)) => format!(
            "byte {offset}: forward at position {position} (batch {batch}), {} bytes after its control packet",
            offset - at
        ),
        None => format!("byte {offset}: before the first forward (handshake, configs or weights)"),
    }
}

/// The embedding row of `token` in the scenario's F32 embedding (the first tensor).
fn embedding_row(g: &Golden, token: u32) -> Vec<u8> {
    let file = std::fs::read(g.dir.parent().unwrap().join("model.m")).unwrap();
    let header_size = u32::from_le_bytes(file[4..8].try_into().unwrap()) as usize;
    let row = g.dim * 4;
    let start = header_size + token as usize * row;
    file[start..start + row].to_vec()
}

fn backend_for(scenario: &str) -> Option<Backend> {
    let isa = requirement(scenario);
    if Backend::new(isa).is_none() {
        println!("SKIPPED {scenario}: this CPU lacks {isa}, which the recording's bytes need");
        return None;
    }
    Some(if isa == Isa::Avx2 && scenario.ends_with("-avx2") {
        Backend::new(Isa::Avx2).unwrap()
    } else {
        Backend::detect()
    })
}

/// A recorded-workers run: the scenario, what each listener received, what it should have
/// received, and the root's sampled tokens.
type Replayed = (Golden, Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<u32>);

fn replay_recorded(
    scenario: &str,
    feed: Feed,
    threads: usize,
    streaming: Option<&StreamingOptions>,
) -> Option<Replayed> {
    let backend = backend_for(scenario)?;
    let g = load(scenario);
    let listeners: Vec<TcpListener> = (0..g.n_workers)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let workers = ports
        .iter()
        .map(|&port| PeerAddress {
            host: "127.0.0.1".into(),
            port,
        })
        .collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(w, l)| {
            let reply = std::fs::read(g.dir.join(format!("w{w}_c0_root.from_worker.bin")))
                .expect("from_worker stream");
            recorded_worker(l, reply)
        })
        .collect();
    let mut root_options = options(&g, workers, backend);
    root_options.n_threads = threads;
    let root = Root::open_streaming(&root_options, streaming, &mut |_| {}).expect("root opens");
    if streaming.is_some() {
        check_streams(&g, &root);
    }
    let picks = run_root(&g, root, backend, feed);
    let got: Vec<Vec<u8>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let expected: Vec<Vec<u8>> = (0..g.n_workers)
        .map(|w| expected_stream(&g, w, &ports))
        .collect();
    Some((g, got, expected, picks))
}

fn recorded_case(scenario: &str) {
    recorded_case_threads(scenario, 1);
}

/// [`recorded_case`] with the root running `threads` threads per op (the recordings' root ran
/// one; the bytes must not depend on it).
fn recorded_case_threads(scenario: &str, threads: usize) {
    recorded_case_with(scenario, threads, None);
}

/// [`recorded_case`], the root under `streaming`; returns the sampled tokens.
fn recorded_case_with(
    scenario: &str,
    threads: usize,
    streaming: Option<&StreamingOptions>,
) -> Option<Vec<u32>> {
    let (g, got, expected, picks) = replay_recorded(scenario, Feed::Generate, threads, streaming)?;
    let n = g.n_prompt_tokens;
    let ours_last = {
        let t = Tokenizer::load(&g.dir.parent().unwrap().join("tokenizer.t")).unwrap();
        *t.encode(&g.prompt, true, true).unwrap().last().unwrap()
    };
    let dllama_last = g.input_tokens[n - 1];
    if ours_last == dllama_last {
        for w in 0..g.n_workers {
            if let Some(at) = first_difference(&got[w], &expected[w]) {
                panic!(
                    "{scenario} worker {w}: root stream ({} bytes) differs from the recording ({} bytes) at {}",
                    got[w].len(),
                    expected[w].len(),
                    describe(&g, at)
                );
            }
        }
        check_picks(&g, scenario, &picks);
        return Some(picks);
    }
    // The one explained difference: the X row of the last prompt position.
    let (offset, _, batch) = *g
        .forwards
        .iter()
        .find(|f| f.1 as usize == n - 1)
        .expect("forward at the last prompt position");
    assert_eq!(batch, 1);
    let row = offset + 8..offset + 8 + g.dim * 4;
    for w in 0..g.n_workers {
        assert_eq!(
            got[w].len(),
            expected[w].len(),
            "{scenario} worker {w}: length"
        );
        assert_eq!(
            first_difference(&got[w][..row.start], &expected[w][..row.start]),
            None,
            "{scenario} worker {w}: streams differ before the last prompt position"
        );
        assert_eq!(&got[w][row.clone()], &embedding_row(&g, ours_last)[..]);
        assert_eq!(
            &expected[w][row.clone()],
            &embedding_row(&g, dllama_last)[..]
        );
    }
    println!(
        "{scenario}: dllama fed token {dllama_last} at position {}, airllama the last prompt token {ours_last}; streams equal up to that X row",
        n - 1
    );
    // With dllama's token at that position the whole session is byte-identical.
    let (g, got, expected, picks) =
        replay_recorded(scenario, Feed::Dllama, threads, streaming).unwrap();
    for w in 0..g.n_workers {
        if let Some(at) = first_difference(&got[w], &expected[w]) {
            panic!(
                "{scenario} worker {w} (dllama's feed): root stream differs at {}",
                describe(&g, at)
            );
        }
    }
    check_picks(&g, scenario, &picks);
    Some(picks)
}

/// A running `airllama worker`; killed on drop.
struct WorkerProcess(Child);

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `airllama worker` on a free port and waits until it listens.
fn spawn_worker(isa_limit: Option<&str>) -> (WorkerProcess, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airllama"));
    cmd.args(["worker", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--nthreads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(l) = isa_limit {
        cmd.env("AIRLLAMA_ISA", l);
    }
    let mut child = cmd.spawn().expect("spawn airllama worker");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut sent = false;
        for line in lines.by_ref().map_while(Result::ok) {
            if !sent && line.contains("listening on") {
                let _ = tx.send(());
                sent = true;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("worker started listening");
    (WorkerProcess(child), port)
}

fn real_workers_case(scenario: &str) {
    real_workers_case_with(scenario, None);
}

/// [`real_workers_case`], the root under `streaming`.
fn real_workers_case_with(scenario: &str, streaming: Option<&StreamingOptions>) {
    let Some(backend) = backend_for(scenario) else {
        return;
    };
    let g = load(scenario);
    let limit = scenario.ends_with("-avx2").then_some("avx2");
    let procs: Vec<(WorkerProcess, u16)> = (0..g.n_workers).map(|_| spawn_worker(limit)).collect();
    let workers = procs
        .iter()
        .map(|(_, port)| PeerAddress {
            host: "127.0.0.1".into(),
            port: *port,
        })
        .collect();
    let root = Root::open_streaming(&options(&g, workers, backend), streaming, &mut |_| {})
        .expect("root opens");
    if streaming.is_some() {
        check_streams(&g, &root);
    }
    let picks = run_root(&g, root, backend, Feed::Dllama);
    check_picks(&g, scenario, &picks);
    drop(procs);
}

/// The root's slice of one layer of the scenario's model (a node holds about `1 / n_nodes`
/// of each layer) and the scenario's layer count.
fn root_layer_slice(g: &Golden) -> (u64, u32) {
    let bytes = std::fs::read(g.dir.parent().unwrap().join("model.m")).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    let n_nodes = g.n_workers as u64 + 1;
    (
        (layer.end - layer.start) / n_nodes,
        header.config().n_layers,
    )
}

/// `--mem-budget` below two layers of the root's slice (1.5 layers plus the spill file's
/// alignment slack: one ring slot fits, two do not), spilling to a fresh folder of its own
/// (`tag`) so a test can check what is left there.
fn streaming_options(g: &Golden, tag: &str) -> StreamingOptions {
    let (slice, _) = root_layer_slice(g);
    let budget = slice * 3 / 2 + 3 * 4096;
    assert!(budget < 2 * slice, "the budget must be below two layers");
    let mut s = StreamingOptions::new(budget);
    s.spill_dir = spill_dir(tag);
    s
}

fn spill_dir(tag: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("root_replay_spill")
        .join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The root really streams: one ring slot, every layer read back each forward.
fn check_streams(g: &Golden, root: &Root) {
    let s = root
        .streamer()
        .expect("the budget is below the root's weights");
    let (_, n_layers) = root_layer_slice(g);
    assert_eq!(s.plan().n_slots, 1, "{}", s.describe());
    assert!(
        s.n_streamed_units() >= n_layers as usize,
        "{}",
        s.describe()
    );
}

/// Entries left in `dir` (spill files not removed).
fn left_in(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

/// This process's open file descriptors on files under `dir` (unlinked ones included: the
/// kernel names them `<path> (deleted)`).
fn open_fds_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Recorded workers, the root under a budget below two layers: the streams are the recorded
/// ones and the tokens those of the same root without a budget; no spill file is left.
fn recorded_case_streamed(scenario: &str) {
    if backend_for(scenario).is_none() {
        return;
    }
    let g = load(scenario);
    let tag = scenario.replace('/', "-");
    let streaming = streaming_options(&g, &tag);
    let resident = recorded_case_with(scenario, 1, None).expect("runs");
    let streamed = recorded_case_with(scenario, 1, Some(&streaming)).expect("runs");
    assert_eq!(
        streamed, resident,
        "{scenario}: tokens differ under --mem-budget"
    );
    assert_eq!(left_in(&streaming.spill_dir), Vec::<PathBuf>::new());
}

#[test]
fn llama_q40_2nodes_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("llama-q40/2nodes");
}

#[test]
fn llama_q40_3nodes_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("llama-q40/3nodes");
}

#[test]
fn llama_f32_3nodes_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("llama-f32/3nodes");
}

#[test]
fn qwen3_q40_2nodes_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("qwen3-q40/2nodes");
}

#[test]
fn qwen3moe_q40_3nodes_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("qwen3moe-q40/3nodes");
}

#[test]
fn qwen3moe_q40_2nodes_long_root_streamed() {
    golden_or_skip!();
    recorded_case_streamed("qwen3moe-q40/2nodes-long");
}

/// The root's spill file is unlinked as soon as the weights are in it and its space is held
/// by the root alone: dropped with the root, and never left behind by a root that failed to
/// start.
#[test]
fn root_spill_file_goes_with_the_root() {
    golden_or_skip!();
    let scenario = "llama-q40/2nodes";
    let Some(backend) = backend_for(scenario) else {
        return;
    };
    let g = load(scenario);
    let streaming = streaming_options(&g, "lifetime");
    let dir = streaming.spill_dir.clone();

    // A worker that hangs up at once: the root fails after creating its spill file.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hang_up = std::thread::spawn(move || drop(listener.accept()));
    let workers = vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }];
    let failed = Root::open_streaming(
        &options(&g, workers, backend),
        Some(&streaming),
        &mut |_| {},
    );
    hang_up.join().unwrap();
    assert!(failed.is_err(), "a worker that hung up");
    assert_eq!(left_in(&dir), Vec::<PathBuf>::new());
    assert_eq!(open_fds_under(&dir), 0);

    // A root that started: the file is unlinked but open until the root goes.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let reply = std::fs::read(g.dir.join("w0_c0_root.from_worker.bin")).unwrap();
    let worker = recorded_worker(listener, reply);
    let workers = vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }];
    let root = Root::open_streaming(
        &options(&g, workers, backend),
        Some(&streaming),
        &mut |_| {},
    )
    .expect("root opens");
    check_streams(&g, &root);
    assert_eq!(left_in(&dir), Vec::<PathBuf>::new(), "unlinked once open");
    // (The reader may hold it twice: a direct and a buffered descriptor.)
    assert!(open_fds_under(&dir) > 0, "held open by the root");
    let picks = run_root(&g, root, backend, Feed::Generate);
    check_picks(&g, scenario, &picks);
    worker.join().unwrap();
    assert_eq!(open_fds_under(&dir), 0, "closed with the root");
}

/// Real `airllama worker`s (all resident), the root under a budget below two layers.
#[test]
fn llama_q40_3nodes_real_root_streamed() {
    golden_or_skip!();
    let scenario = "llama-q40/3nodes";
    let Some(g) = backend_for(scenario).map(|_| load(scenario)) else {
        return;
    };
    let streaming = streaming_options(&g, "real-llama-q40-3nodes");
    real_workers_case_with(scenario, Some(&streaming));
    assert_eq!(left_in(&streaming.spill_dir), Vec::<PathBuf>::new());
}

#[test]
fn qwen3moe_q40_2nodes_real_root_streamed() {
    golden_or_skip!();
    let scenario = "qwen3moe-q40/2nodes";
    let Some(g) = backend_for(scenario).map(|_| load(scenario)) else {
        return;
    };
    let streaming = streaming_options(&g, "real-qwen3moe-q40-2nodes");
    real_workers_case_with(scenario, Some(&streaming));
    assert_eq!(left_in(&streaming.spill_dir), Vec::<PathBuf>::new());
}

macro_rules! cases {
    ($($recorded:ident, $real:ident: $scenario:literal;)*) => {
        $(
            #[test]
            fn $recorded() {
                golden_or_skip!();
                recorded_case($scenario);
            }
            #[test]
            fn $real() {
                golden_or_skip!();
                real_workers_case($scenario);
            }
        )*
    };
}

cases! {
    llama_q40_2nodes, llama_q40_2nodes_real: "llama-q40/2nodes";
    llama_q40_3nodes, llama_q40_3nodes_real: "llama-q40/3nodes";
    llama_q40_2nodes_long, llama_q40_2nodes_long_real: "llama-q40/2nodes-long";
    llama_f32_2nodes, llama_f32_2nodes_real: "llama-f32/2nodes";
    llama_f32_3nodes, llama_f32_3nodes_real: "llama-f32/3nodes";
    llama_f32_2nodes_batch1, llama_f32_2nodes_batch1_real: "llama-f32/2nodes-batch1";
    llama_f32_2nodes_avx2, llama_f32_2nodes_avx2_real: "llama-f32/2nodes-avx2";
    qwen3_q40_2nodes, qwen3_q40_2nodes_real: "qwen3-q40/2nodes";
    qwen3_q40_3nodes, qwen3_q40_3nodes_real: "qwen3-q40/3nodes";
    qwen3moe_q40_2nodes, qwen3moe_q40_2nodes_real: "qwen3moe-q40/2nodes";
    qwen3moe_q40_3nodes, qwen3moe_q40_3nodes_real: "qwen3moe-q40/3nodes";
    qwen3moe_q40_2nodes_long, qwen3moe_q40_2nodes_long_real: "qwen3moe-q40/2nodes-long";
}

#[test]
fn llama_q40_3nodes_root_2_threads() {
    golden_or_skip!();
    recorded_case_threads("llama-q40/3nodes", 2);
}

#[test]
fn qwen3moe_q40_2nodes_long_root_2_threads() {
    golden_or_skip!();
    recorded_case_threads("qwen3moe-q40/2nodes-long", 2);
}

#[test]
fn llama_f32_3nodes_root_2_threads() {
    golden_or_skip!();
    recorded_case_threads("llama-f32/3nodes", 2);
}

/// The CLI end to end: `airllama inference` with the recorded root command's flags against
/// real workers prints the C++ root's prompt line, one line per forward and the same pieces.
#[test]
fn cli_inference_matches_root_stdout() {
    golden_or_skip!();
    cli_inference_case(&[]);
}

/// [`cli_inference_matches_root_stdout`] with `--mem-budget` below two layers of the root's
/// slice and `--spill-dir`: the root streams (and says so), prints the same, leaves no file.
#[test]
fn cli_inference_with_mem_budget_matches_root_stdout() {
    golden_or_skip!();
    let g = load("llama-q40/3nodes");
    let s = streaming_options(&g, "cli");
    let stdout = cli_inference_case(&[
        "--mem-budget".into(),
        s.mem_budget.to_string(),
        "--spill-dir".into(),
        s.spill_dir.display().to_string(),
        "--verbose".into(),
    ]);
    assert!(stdout.contains("💾 layer streaming:"), "{stdout}");
    assert!(stdout.contains("through 1 slot(s)"), "{stdout}");
    assert_eq!(left_in(&s.spill_dir), Vec::<PathBuf>::new());
}

/// Runs `airllama inference` with the recorded root command's flags and `extra` against real
/// workers, checks its output against the recorded root's; returns the output.
fn cli_inference_case(extra: &[String]) -> String {
    let scenario = "llama-q40/3nodes";
    let g = load(scenario);
    let procs: Vec<(WorkerProcess, u16)> = (0..g.n_workers).map(|_| spawn_worker(None)).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_airllama"));
    cmd.arg("inference")
        .arg("--model")
        .arg(g.dir.parent().unwrap().join("model.m"))
        .arg("--tokenizer")
        .arg(g.dir.parent().unwrap().join("tokenizer.t"))
        .args(["--buffer-float-type", "q80", "--prompt", &g.prompt])
        .args(["--steps", "48", "--nthreads", "1", "--temperature", "0"])
        .args(["--seed", "7", "--max-seq-len", "256"])
        .args(extra)
        .arg("--workers");
    for (_, port) in &procs {
        cmd.arg(format!("127.0.0.1:{port}"));
    }
    let out = cmd.output().expect("run airllama inference");
    assert!(
        out.status.success(),
        "airllama inference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&[u8]> = out.stdout.split(|&b| b == b'\n').collect();
    let pick = |lines: &[&[u8]], mark: &str| -> Vec<Vec<u8>> {
        lines
            .iter()
            .filter(|l| l.starts_with(mark.as_bytes()))
            .map(|l| l[l.windows(2).rposition(|w| w == b"| ").unwrap() + 2..].to_vec())
            .collect()
    };
    let theirs: Vec<&[u8]> = g.stdout.iter().map(Vec::as_slice).collect();
    assert!(ours.contains(&g.prompt.as_bytes()), "prompt line");
    assert_eq!(pick(&ours, "🔷️"), pick(&theirs, "🔷️"), "eval lines");
    // Valid UTF-8 pieces are printed the same; dllama prints raw invalid bytes where airllama
    // prints U+FFFD or holds the bytes back ("~").
    let (a, b) = (pick(&ours, "🔶"), pick(&theirs, "🔶"));
    assert_eq!(a.len(), b.len(), "prediction lines");
    for (x, y) in a.iter().zip(&b) {
        if std::str::from_utf8(y).is_ok() && !y.contains(&0xef) {
            assert_eq!(x, y, "piece");
        }
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Evaluation") && text.contains("tokens/s") && text.contains("sent/tok"));
    drop(procs);
    text.into_owned()
}
