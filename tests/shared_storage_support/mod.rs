//! Helpers of `tests/shared_storage.rs`: the golden models and recordings, per-test temporary
//! folders, root sessions run under a deadline, in-process and spawned workers, a counting TCP
//! proxy, and a replayed C++ dllama worker.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
use airllama::replay::port_is_listening;
use airllama::root::{Root, RootError, RootEvent, RootOptions, Step, generate};
use airllama::sampler::Sampler;
use airllama::streaming::StreamingOptions;
use airllama::tokenizer::Tokenizer;
use airllama::worker::{WorkerOptions, serve_session};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::Backend;
use airllama_net::PeerAddress;
use airllama_net::transport::Listener;
use serde_json::Value;

/// The longest any one root session, worker session or socket read may take.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The golden scenarios' prompt and step count (`../shared/golden/README.md`).
pub const GOLDEN_PROMPT: &str = "hello world abc, the quick brown fox jumps over a log";
pub const GOLDEN_STEPS: u32 = 48;

pub fn golden_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
}

/// A golden model: its files and `--buffer-float-type`.
#[derive(Clone, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub model: PathBuf,
    pub tokenizer: PathBuf,
    pub sync_type: SyncFloatType,
}

/// The golden variant `name`, or `None` with a printed SKIPPED line when the folder is absent.
pub fn variant(name: &'static str) -> Option<Variant> {
    let dir = golden_dir().join(name);
    if !dir.join("model.m").exists() {
        println!("SKIPPED: {} is absent", dir.join("model.m").display());
        return None;
    }
    let sync_type = if name == "llama-f32" {
        SyncFloatType::F32
    } else {
        SyncFloatType::Q80
    };
    Some(Variant {
        name,
        model: dir.join("model.m"),
        tokenizer: dir.join("tokenizer.t"),
        sync_type,
    })
}

/// A folder under the system temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "airllama-shared-storage-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A fresh subfolder.
    pub fn sub(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `f` on a thread and returns its result, failing the test if it takes over [`TIMEOUT`]
/// (the thread is then left behind; the test process ends anyway).
pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(value) => {
            let _ = handle.join();
            value
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no result within {TIMEOUT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => panic!("{what}: the thread ended without a result"),
        },
    }
}

/// The error and its sources, as the CLI prints them.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

pub fn loopback(ports: &[u16]) -> Vec<PeerAddress> {
    ports
        .iter()
        .map(|&port| PeerAddress {
            host: "127.0.0.1".into(),
            port,
        })
        .collect()
}

/// Root options for `model` over `workers`; `cache_dir` set means `--shared-storage`.
pub fn root_options(
    model: &Path,
    sync_type: SyncFloatType,
    workers: &[u16],
    shared_storage: Option<PathBuf>,
) -> RootOptions {
    RootOptions {
        model: model.to_path_buf(),
        workers: loopback(workers),
        sync_type,
        max_seq_len: 256,
        n_threads: 1,
        turbo: false,
        backend: Backend::detect(),
        max_memory: u64::MAX,
        shared_storage: shared_storage.is_some(),
        cache_dir: shared_storage,
        net_timeout: None,
    }
}

/// What one root session gave.
#[derive(Debug)]
pub struct Session {
    /// Every sampled token (temperature 0: argmax).
    pub picks: Vec<u32>,
    pub text: String,
    pub events: Vec<RootEvent>,
    /// `counters` read right after `Root::open` returned (the weights are loaded, no forward
    /// has run).
    pub after_open: Vec<u64>,
}

/// Opens a root with `options`, runs `prompt` at temperature 0 to position `steps` and sends
/// the stop packet, under [`within`]. `counters` are snapshot when the root is open.
pub fn run_root(
    options: RootOptions,
    tokenizer: &Path,
    prompt: &str,
    steps: u32,
    counters: Vec<Arc<AtomicU64>>,
) -> Result<Session, RootError> {
    let (tokenizer, prompt) = (tokenizer.to_path_buf(), prompt.to_string());
    within("root session", move || {
        let tokenizer = Tokenizer::load(&tokenizer).expect("tokenizer");
        let mut events = Vec::new();
        let mut root = Root::open(&options, &mut |e| events.push(e))?;
        let after_open = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        let prompt = tokenizer.encode(&prompt, true, true).expect("encode");
        let mut sampler =
            Sampler::new(options.backend, tokenizer.vocab_size(), 0.0, 0.9, 7).expect("sampler");
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
        )?;
        root.finish()?;
        let text = tokenizer.decode_all(&picks).unwrap_or_default();
        Ok(Session {
            picks,
            text,
            events,
            after_open,
        })
    })
}

/// The golden scenario whose tokens a run on this machine must reproduce.
pub struct Recording {
    name: String,
    dir: PathBuf,
    input_tokens: Vec<u32>,
    n_prompt_tokens: usize,
    stdout: Vec<Vec<u8>>,
}

impl Recording {
    pub fn load(scenario: &str) -> Recording {
        let dir = golden_dir().join(scenario);
        let text = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
        let m: Value = serde_json::from_slice(&text).expect("manifest is JSON");
        let input_tokens = m["input_tokens_by_position"]
            .as_array()
            .expect("input_tokens_by_position")
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let stdout = std::fs::read(dir.join("root_stdout.txt")).expect("root_stdout.txt");
        Recording {
            name: scenario.to_string(),
            input_tokens,
            n_prompt_tokens: m["n_prompt_tokens"].as_u64().unwrap() as usize,
            stdout: stdout.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect(),
            dir,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The picks are the C++ root's: all but the last were fed back to the workers (so they
    /// are in `input_tokens_by_position`); the last is the root's last printed piece.
    pub fn check_picks(&self, picks: &[u32], what: &str) {
        let scenario = &self.name;
        let fed_back = &self.input_tokens[self.n_prompt_tokens..];
        assert_eq!(
            &picks[..picks.len() - 1],
            fed_back,
            "{what}: sampled tokens differ from the C++ root's in {scenario}"
        );
        let preds: Vec<&Vec<u8>> = self
            .stdout
            .iter()
            .filter(|l| l.starts_with("🔶".as_bytes()))
            .collect();
        assert_eq!(preds.len(), picks.len(), "{what}: prediction count");
        let last = preds.last().unwrap();
        let printed = &last[last.windows(2).rposition(|w| w == b"| ").unwrap() + 2..];
        let tokenizer = Tokenizer::load(&self.dir.parent().unwrap().join("tokenizer.t")).unwrap();
        let piece = tokenizer.piece(*picks.last().unwrap()).unwrap();
        assert!(
            printed == b"~" || printed.ends_with(piece),
            "{what}: the last printed piece {printed:?} of {scenario} is not our {piece:?}"
        );
    }
}

/// One node's slice of one layer of `model` over `n_nodes` nodes: 1.5 of it plus the read
/// alignment slack is a budget that holds one ring slot and not two.
pub fn budget_below_two_layers(model: &Path, n_nodes: u64) -> u64 {
    let bytes = std::fs::read(model).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    let slice = (layer.end - layer.start) / n_nodes;
    slice * 3 / 2 + 3 * 4096
}

/// A byte in the middle of `node`'s slice of the first matrix of layer `layer` (its first
/// layer tensor with more than one row), and the words the worker's refusal uses for it
/// (`tensor q of layer 1`).
pub fn byte_in_slice(
    model: &Path,
    sync_type: SyncFloatType,
    n_nodes: u32,
    node: u32,
    layer: u32,
) -> (u64, String) {
    let bytes = std::fs::read(model).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let graph = LlmGraph::build(&header, GraphParams::dllama(n_nodes, sync_type, 0)).unwrap();
    let plan = WeightPlan::new(&graph, &layout).unwrap();
    let load = plan
        .node_loads(node)
        .find(|l| {
            let t = &layout.tensors()[l.tensor];
            t.layer == layer && t.rows > 1
        })
        .expect("a matrix of that layer in the node's slice");
    let t = &layout.tensors()[load.tensor];
    let ranges: Vec<_> = load.bytes.ranges().collect();
    let range = &ranges[ranges.len() / 2];
    let offset = range.start + (range.end - range.start) / 2;
    assert!(t.offset <= offset && offset < t.offset + t.size);
    (offset, format!("tensor {} of layer {}", t.role, t.layer))
}

/// An in-process `airllama worker` serving one session on a free loopback port.
pub struct ThreadWorker {
    pub port: u16,
    done: mpsc::Receiver<(Result<u64, String>, Vec<String>)>,
}

impl ThreadWorker {
    pub fn start(
        model: Option<PathBuf>,
        streaming: Option<StreamingOptions>,
        cache_dir: Option<PathBuf>,
    ) -> ThreadWorker {
        let listener = Listener::bind("127.0.0.1", 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let options = WorkerOptions {
            host: "127.0.0.1".into(),
            port,
            n_threads: 1,
            turbo: false,
            backend: Backend::detect(),
            max_memory: u64::MAX,
            streaming,
            model,
            cache_dir,
            net_timeout: None,
            allow: Default::default(),
        };
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let result = serve_session(&listener, &options, &mut |l| log.push(l.to_string()))
                .map_err(|e| e.to_string());
            let _ = tx.send((result, log));
        });
        ThreadWorker { port, done }
    }

    /// Waits for the session to end: the forwards run (or the error) and the log lines.
    pub fn finish(self) -> (Result<u64, String>, Vec<String>) {
        self.done
            .recv_timeout(TIMEOUT)
            .expect("the worker session ends in time")
    }
}

/// A spawned `airllama worker --model M` process (serving session after session); killed on
/// drop. Its output goes to `worker.log` in `dir`.
pub struct WorkerProcess {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl WorkerProcess {
    pub fn spawn(model: &Path, dir: &Path) -> WorkerProcess {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join(format!("worker-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_airllama"))
            .args(["worker", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--nthreads", "1", "--net-turbo", "0", "--model"])
            .arg(model)
            .arg("--cache-dir")
            .arg(dir)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn airllama worker");
        let worker = WorkerProcess { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_is_listening(port) {
            assert!(
                Instant::now() < deadline,
                "the worker does not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        worker
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of a worker: every accepted connection is connected to the worker and
/// pumped both ways, and the bytes are counted. The first connection is the root's (a root
/// connects to every worker before the workers link up); later ones come from peer workers.
pub struct CountingProxy {
    pub port: u16,
    counters: ProxyCounters,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

/// What a [`CountingProxy`] counted.
#[derive(Clone, Default)]
pub struct ProxyCounters {
    /// Root → worker.
    pub from_root: Arc<AtomicU64>,
    /// Peer workers → worker.
    pub from_peers: Arc<AtomicU64>,
    /// Worker → the peer workers that connected through the proxy.
    pub to_peers: Arc<AtomicU64>,
}

impl ProxyCounters {
    /// All three: from the root, from peers, to peers.
    pub fn all(&self) -> Vec<Arc<AtomicU64>> {
        vec![
            self.from_root.clone(),
            self.from_peers.clone(),
            self.to_peers.clone(),
        ]
    }

    /// The current values, in [`ProxyCounters::all`]'s order.
    pub fn values(&self) -> [u64; 3] {
        [&self.from_root, &self.from_peers, &self.to_peers].map(|c| c.load(Ordering::SeqCst))
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, counter: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Counted before they are passed on: whatever the receiver does with them (an
                // answer the test then waits for) happens after the count, never before.
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).is_err() {
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = to.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

impl CountingProxy {
    pub fn start(worker_port: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let counters = ProxyCounters::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, stopped) = (counters.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut accepted = 0;
            while !stopped.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => return,
                };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", worker_port)) else {
                    continue;
                };
                for s in [&client, &upstream] {
                    s.set_nonblocking(false).unwrap();
                    s.set_nodelay(true).unwrap();
                }
                let (inward, outward) = match accepted {
                    0 => (c.from_root.clone(), Arc::new(AtomicU64::new(0))),
                    _ => (c.from_peers.clone(), c.to_peers.clone()),
                };
                accepted += 1;
                let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                std::thread::spawn(move || pump(client, upstream, inward));
                std::thread::spawn(move || pump(u2, c2, outward));
            }
        });
        CountingProxy {
            port,
            counters,
            stop,
            accept: Some(accept),
        }
    }

    pub fn counters(&self) -> &ProxyCounters {
        &self.counters
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// What a replayed C++ worker 0 of a 3-node recording received: from the root, and from
/// worker 1 over their link.
pub struct Replayed {
    pub from_root: Vec<u8>,
    pub from_worker1: Vec<u8>,
}

fn read_file(dir: &Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Plays the C++ dllama worker 0 of the 3-node recording in `scenario` on `listener`, as the
/// C++ worker does: nothing is written before the root's handshake has arrived; then the
/// recorded replies go out (eagerly: the recorded inputs do not depend on them); after the
/// root-ready ACK it connects to the worker-1 port the handshake names and plays its side of
/// the recorded worker link. Returns what it received.
pub fn replayed_worker0(listener: TcpListener, scenario: &Path) -> mpsc::Receiver<Replayed> {
    let m: Value = serde_json::from_slice(&read_file(scenario, "manifest.json")).unwrap();
    let ready_at = m["layout"]["worker0"]["root_ready_ack_offset"]
        .as_u64()
        .expect("root_ready_ack_offset") as usize;
    let to_root = read_file(scenario, "w0_c0_root.from_worker.bin");
    let to_worker1 = read_file(scenario, "w1_c1_worker0.to_worker.bin");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let mut root = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the root never connected");
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        root.set_nonblocking(false).unwrap();
        root.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut from_root = vec![0u8; ready_at + 4];
        root.read_exact(&mut from_root[..ready_at])
            .expect("the root's handshake");
        let mut writer = root.try_clone().unwrap();
        let replies = std::thread::spawn(move || writer.write_all(&to_root));
        root.read_exact(&mut from_root[ready_at..])
            .expect("the root-ready ACK");
        // The handshake's one other-worker entry ends with worker 1's port.
        let port = u32::from_le_bytes(from_root[ready_at - 4..ready_at].try_into().unwrap());
        let link = TcpStream::connect(("127.0.0.1", port as u16)).expect("connect to worker 1");
        link.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut link_writer = link.try_clone().unwrap();
        let link_out = std::thread::spawn(move || link_writer.write_all(&to_worker1));
        let link_in = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut link = link;
            let _ = link.read_to_end(&mut got);
            got
        });
        let _ = root.read_to_end(&mut from_root);
        let _ = replies.join();
        let _ = link_out.join();
        let from_worker1 = link_in.join().unwrap();
        let _ = tx.send(Replayed {
            from_root,
            from_worker1,
        });
    });
    rx
}

/// `w0_c0_root.to_worker.bin` of `scenario` with the other worker's port replaced by `port`.
pub fn expected_worker0_stream(scenario: &Path, port: u16) -> Vec<u8> {
    let file = "w0_c0_root.to_worker.bin";
    let mut bytes = read_file(scenario, file);
    let m: Value = serde_json::from_slice(&read_file(scenario, "manifest.json")).unwrap();
    let mut replaced = 0;
    for a in m["address_dependent_bytes"].as_array().unwrap() {
        if a["file"] == file && a["meaning"].as_str().unwrap().contains("port") {
            let at = a["offset"].as_u64().unwrap() as usize;
            bytes[at..at + 4].copy_from_slice(&u32::from(port).to_le_bytes());
            replaced += 1;
        }
    }
    assert_eq!(replaced, 1, "one port in worker 0's handshake");
    bytes
}

pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}
