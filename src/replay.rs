//! Golden replay: plays a recorded dllama root (and, in 3-node scenarios, the recorded peer
//! worker) against a live worker over loopback and checks every byte the worker sends.
//!
//! A scenario folder (`../shared/golden/<variant>/<scenario>/`) holds, per worker connection,
//! the bytes that went into a real C++ worker and the bytes it sent back, plus `manifest.json`
//! with the parsed layout of the streams. [`replay`] starts (or is pointed at) a worker, feeds it
//! the recorded input eagerly from a writer thread and, concurrently, compares what it sends with
//! the recording. A worker passes when every connection carries exactly the recorded bytes and is
//! then closed by the worker (EOF).
//!
//! The recording's only address-dependent bytes are in the 3-node handshake (the other worker's
//! host and port); they are rewritten to the port this harness listens on (see the golden
//! README). A mismatch is reported with its stream offset and where it falls in the protocol:
//! which forward (position, batch), which segment and sync, which batch item, and the expected
//! and actual bytes.
//!
//! ```no_run
//! use airllama::replay::{replay, ReplayOptions, Scenario};
//! let scenario = Scenario::load("../shared/golden/llama-q40/2nodes".as_ref())?;
//! let options = ReplayOptions::new(0, "airllama worker --port {port} --nthreads 1");
//! let report = replay(&scenario, &options)?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), airllama::replay::ReplayError>(())
//! ```
use std::fmt;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why a replay could not be run (as opposed to a worker that ran and sent wrong bytes, which
/// is a [`ReplayReport`] that did not pass).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// A scenario file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `manifest.json` is not what this harness expects.
    #[error("{path}: {what}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// The requested worker index is not in the scenario.
    #[error("the scenario has {n_workers} worker(s); worker index {index} does not exist")]
    NoSuchWorker {
        /// The index asked for.
        index: usize,
        /// Workers in the scenario.
        n_workers: usize,
    },
    /// Scenarios with more than two workers are not recorded and not supported.
    #[error("replay supports 1 or 2 workers, the scenario has {0}")]
    TooManyWorkers(usize),
    /// The worker command is empty or has unbalanced quotes.
    #[error("bad worker command {0:?}")]
    BadCommand(String),
    /// The worker process could not be started.
    #[error("cannot start worker `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error from the OS.
        source: std::io::Error,
    },
    /// The worker never listened on its port.
    #[error("the worker did not listen on port {port} within {seconds} s{exited}\n{log}")]
    NotListening {
        /// The port.
        port: u16,
        /// How long we waited.
        seconds: u64,
        /// Set when the worker process exited.
        exited: String,
        /// The worker's output so far.
        log: String,
    },
    /// Another process already listens on the worker's port: a replay against it would test
    /// that process, not the worker this harness starts.
    #[error(
        "port {port} is already in use by another process{owner}: pick another --port, or leave it out for a free one"
    )]
    PortTaken {
        /// The port.
        port: u16,
        /// ` (pid N, name)` when the owner could be found.
        owner: String,
    },
    /// A loopback socket operation failed before the streams started.
    #[error("{what}: {source}")]
    Socket {
        /// What was attempted.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// One recorded connection of a worker: the bytes it received and the bytes it sent.
#[derive(Debug, Clone)]
struct RecordedConnection {
    worker: usize,
    peer: String,
    to_worker: Vec<u8>,
    from_worker: Vec<u8>,
}

/// One forward as the manifest lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLayout {
    /// The control packet's position.
    pub position: u32,
    /// The control packet's batch size.
    pub batch: u32,
    /// Offset of this forward's first output byte in the worker → root stream.
    pub out_offset: usize,
}

/// One sync of the per-batch-item sync plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStep {
    /// Segment index in the node config.
    pub segment: u32,
    /// Index of this sync within its segment.
    pub sync_in_segment: u32,
    /// Pipe name (X, ZQ, LG).
    pub pipe: String,
    /// dllama's sync type name.
    pub sync: String,
    /// Bytes of one node's slice of one batch item.
    pub slice_bytes: usize,
}

impl SyncStep {
    /// Bytes this sync sends per batch item on a connection of the given kind.
    fn out_bytes(&self, to_root: bool) -> usize {
        match self.sync.as_str() {
            "SYNC_NODE_SLICES" => self.slice_bytes,
            "SYNC_NODE_SLICES_EXCEPT_ROOT" if to_root => self.slice_bytes,
            _ => 0,
        }
    }
}

/// The parsed layout of one worker's streams (from `manifest.json`).
#[derive(Debug, Clone)]
pub struct WorkerLayout {
    /// Every forward, in order.
    pub forwards: Vec<ForwardLayout>,
    /// The syncs of one batch item of one forward, in execution order.
    pub sync_plan: Vec<SyncStep>,
}

/// A recorded scenario folder.
#[derive(Debug, Clone)]
pub struct Scenario {
    dir: PathBuf,
    n_workers: usize,
    connections: Vec<RecordedConnection>,
    layouts: Vec<WorkerLayout>,
}

fn manifest_error(path: &Path, what: impl Into<String>) -> ReplayError {
    ReplayError::Manifest {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ReplayError> {
    std::fs::read(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn get_usize(v: &Value, key: &str, path: &Path) -> Result<usize, ReplayError> {
    v.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| manifest_error(path, format!("missing or invalid number `{key}`")))
}

fn get_str<'a>(v: &'a Value, key: &str, path: &Path) -> Result<&'a str, ReplayError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| manifest_error(path, format!("missing string `{key}`")))
}

impl Scenario {
    /// Reads `manifest.json` and every stream it lists from `dir`.
    pub fn load(dir: &Path) -> Result<Scenario, ReplayError> {
        let manifest_path = dir.join("manifest.json");
        let text = read_file(&manifest_path)?;
        let manifest: Value = serde_json::from_slice(&text)
            .map_err(|e| manifest_error(&manifest_path, format!("not JSON: {e}")))?;
        let path = manifest_path.as_path();
        let n_workers = get_usize(&manifest, "n_workers", path)?;
        let mut connections = Vec::new();
        for c in manifest
            .get("connections")
            .and_then(Value::as_array)
            .ok_or_else(|| manifest_error(path, "missing `connections`"))?
        {
            let worker = get_usize(c, "worker", path)?;
            let peer = get_str(c, "peer", path)?.to_string();
            let mut streams = Vec::new();
            for key in ["to_worker", "from_worker"] {
                let file = c.get(key).map(|f| get_str(f, "file", path)).transpose()?;
                let file = file
                    .ok_or_else(|| manifest_error(path, format!("connection without `{key}`")))?;
                streams.push(read_file(&dir.join(file))?);
            }
            let from_worker = streams.pop().unwrap_or_default();
            let to_worker = streams.pop().unwrap_or_default();
            connections.push(RecordedConnection {
                worker,
                peer,
                to_worker,
                from_worker,
            });
        }
        let layout = manifest
            .get("layout")
            .ok_or_else(|| manifest_error(path, "missing `layout`"))?;
        let mut layouts = Vec::new();
        for w in 0..n_workers {
            let l = layout
                .get(format!("worker{w}"))
                .ok_or_else(|| manifest_error(path, format!("missing `layout.worker{w}`")))?;
            layouts.push(parse_layout(l, path)?);
        }
        Ok(Scenario {
            dir: dir.to_path_buf(),
            n_workers,
            connections,
            layouts,
        })
    }

    /// The folder this scenario was read from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of workers (nodes − 1) in the recording.
    pub fn n_workers(&self) -> usize {
        self.n_workers
    }

    /// The layout of worker `w`'s streams.
    pub fn layout(&self, w: usize) -> Option<&WorkerLayout> {
        self.layouts.get(w)
    }

    fn connection(&self, worker: usize, peer: &str) -> Option<&RecordedConnection> {
        self.connections
            .iter()
            .find(|c| c.worker == worker && c.peer == peer)
    }
}

fn parse_layout(l: &Value, path: &Path) -> Result<WorkerLayout, ReplayError> {
    let mut forwards = Vec::new();
    for f in l
        .get("forwards")
        .and_then(Value::as_array)
        .ok_or_else(|| manifest_error(path, "missing forwards"))?
    {
        forwards.push(ForwardLayout {
            position: get_usize(f, "position", path)? as u32,
            batch: get_usize(f, "batch", path)? as u32,
            out_offset: get_usize(f, "out_offset", path)?,
        });
    }
    let mut sync_plan: Vec<SyncStep> = Vec::new();
    for s in l
        .get("sync_plan_per_batch_item")
        .and_then(Value::as_array)
        .ok_or_else(|| manifest_error(path, "missing sync_plan_per_batch_item"))?
    {
        let segment = get_usize(s, "segment", path)? as u32;
        let sync_in_segment = sync_plan.iter().filter(|p| p.segment == segment).count() as u32;
        sync_plan.push(SyncStep {
            segment,
            sync_in_segment,
            pipe: get_str(s, "pipe", path)?.to_string(),
            sync: get_str(s, "sync", path)?.to_string(),
            slice_bytes: get_usize(s, "slice_bytes", path)?,
        });
    }
    Ok(WorkerLayout {
        forwards,
        sync_plan,
    })
}

/// Which connection of the worker a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Root,
    Peer,
}

impl WorkerLayout {
    /// Where byte `offset` of a worker's output stream falls in the protocol, in words.
    fn locate(&self, link: Link, offset: usize) -> String {
        let to_root = link == Link::Root;
        let header = if to_root { 16 } else { 0 };
        if offset < header {
            const ACKS: [&str; 4] = ["handshake", "net config", "node config", "weights"];
            return format!("the ACK after the {}", ACKS[offset / 4]);
        }
        let per_item: usize = self.sync_plan.iter().map(|s| s.out_bytes(to_root)).sum();
        let mut at = header;
        for (index, f) in self.forwards.iter().enumerate() {
            let len = per_item * f.batch as usize;
            if offset < at + len {
                let mut rel = offset - at;
                for s in &self.sync_plan {
                    let sync_len = s.out_bytes(to_root) * f.batch as usize;
                    if rel < sync_len {
                        let slice = s.out_bytes(to_root);
                        return format!(
                            "forward {index} (position {}, batch {}), segment {} sync {} (pipe {}, {}), \
                             batch item {}, byte {} of {slice}",
                            f.position,
                            f.batch,
                            s.segment,
                            s.sync_in_segment,
                            s.pipe,
                            s.sync,
                            rel / slice,
                            rel % slice
                        );
                    }
                    rel -= sync_len;
                }
            }
            at += len;
        }
        format!("after the last forward (stream offset {offset})")
    }
}

/// How to run one replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Which recorded worker to play (`W` in `w<W>_c0_root.*`).
    pub worker_index: usize,
    /// The worker command line; `{port}` is replaced by the port it must listen on. Split on
    /// whitespace, with single and double quotes grouping words (no other shell syntax).
    pub worker_cmd: String,
    /// Extra environment for the worker process (e.g. `AIRLLAMA_ISA=avx2`).
    pub env: Vec<(String, String)>,
    /// The port the worker listens on; `None` picks a free one.
    pub port: Option<u16>,
    /// Longest wait for the worker to listen and for all streams to finish.
    pub timeout: Duration,
}

impl ReplayOptions {
    /// Options with a free port and a 300 s timeout (generous for workers under qemu).
    pub fn new(worker_index: usize, worker_cmd: impl Into<String>) -> ReplayOptions {
        ReplayOptions {
            worker_index,
            worker_cmd: worker_cmd.into(),
            env: Vec::new(),
            port: None,
            timeout: Duration::from_secs(300),
        }
    }
}

/// The outcome of one connection.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// Name of the connection (`root`, `peer worker1`, …).
    pub name: String,
    /// Bytes we sent to the worker.
    pub sent: usize,
    /// Bytes the worker sent that matched (all of them when the stream passed).
    pub received: usize,
    /// Bytes expected.
    pub expected: usize,
    /// `None` when the stream matched exactly and ended with EOF.
    pub failure: Option<String>,
}

/// The outcome of a whole replay.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// One entry per connection.
    pub streams: Vec<StreamOutcome>,
    /// The worker's output (stdout and stderr), for diagnosis.
    pub worker_log: String,
}

impl ReplayReport {
    /// True when every stream matched the recording byte for byte.
    pub fn passed(&self) -> bool {
        self.streams.iter().all(|s| s.failure.is_none())
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.streams {
            writeln!(
                f,
                "{:<13} sent {:>9}  received {:>9} / {:>9}  {}",
                s.name,
                s.sent,
                s.received,
                s.expected,
                s.failure.as_deref().unwrap_or("OK")
            )?;
        }
        if !self.passed() {
            let tail: Vec<&str> = self.worker_log.lines().rev().take(30).collect();
            writeln!(f, "--- last lines of the worker's output ---")?;
            for line in tail.iter().rev() {
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Splits a command line into words: whitespace separates, quotes group.
fn split_command(cmd: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in cmd.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() { None } else { Some(words) }
}

/// True when something listens on TCP `port` (IPv4, any address), read from `/proc/net/tcp`.
/// Connecting to find out is not an option: the worker would take the probe for its root.
pub fn port_is_listening(port: u16) -> bool {
    !listening_inodes(port).is_empty()
}

/// The socket inodes listening on TCP `port` (IPv4 and IPv6, any address), from
/// `/proc/net/tcp{,6}`.
fn listening_inodes(port: u16) -> Vec<u64> {
    let want = format!("{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            if *state == "0A"
                && local.rsplit(':').next() == Some(want.as_str())
                && let Ok(inode) = inode.parse::<u64>()
            {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// The socket inodes open in process `pid` and its descendants (a `--worker-cmd` may be a
/// wrapper: a shell, `env`, `taskset`), from `/proc/<pid>/fd`.
fn process_tree_sockets(pid: u32) -> Vec<u64> {
    let mut pids = vec![pid];
    let mut i = 0;
    // Children of each process found so far, from every process's parent pid.
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p = e.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // The command name is in parentheses and may hold spaces: the fields after it.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?.parse::<u32>().ok()?;
            Some((p, ppid))
        })
        .collect();
    while let Some(&parent) = pids.get(i) {
        for &(p, ppid) in &all {
            if ppid == parent && !pids.contains(&p) {
                pids.push(p);
            }
        }
        i += 1;
    }
    let mut sockets = Vec::new();
    for p in pids {
        for fd in std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                sockets.push(inode);
            }
        }
    }
    sockets
}

/// Who listens on `port`: ` (pid N, name)` when a process's open sockets show it (only
/// processes this user may inspect), else empty.
fn port_owner(port: u16) -> String {
    let inodes = listening_inodes(port);
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let owns = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|t| {
                inodes
                    .iter()
                    .any(|i| t.to_str() == Some(format!("socket:[{i}]").as_str()))
            });
        if owns {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return format!(" (pid {pid}, {})", name.trim());
        }
    }
    String::new()
}

/// True when the listening socket on `port` belongs to process `pid` (or a descendant).
fn listening_in(port: u16, pid: u32) -> bool {
    let inodes = listening_inodes(port);
    !inodes.is_empty() && {
        let own = process_tree_sockets(pid);
        inodes.iter().any(|i| own.contains(i))
    }
}

/// A port that was free a moment ago (the OS picks it; the socket is closed again).
pub fn free_port() -> Result<u16, ReplayError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|source| ReplayError::Socket {
        what: "bind a free port",
        source,
    })?;
    let port = l
        .local_addr()
        .map_err(|source| ReplayError::Socket {
            what: "read a bound port",
            source,
        })?
        .port();
    Ok(port)
}

/// The worker process; killed and reaped on drop.
struct WorkerProcess {
    child: Child,
    log: Arc<Mutex<Vec<u8>>>,
    pumps: Vec<JoinHandle<()>>,
}

impl WorkerProcess {
    fn start(options: &ReplayOptions, port: u16) -> Result<WorkerProcess, ReplayError> {
        let cmd = options.worker_cmd.replace("{port}", &port.to_string());
        let words = split_command(&cmd).ok_or_else(|| ReplayError::BadCommand(cmd.clone()))?;
        let mut command = Command::new(&words[0]);
        command
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &options.env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|source| ReplayError::Spawn {
            command: cmd.clone(),
            source,
        })?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut pumps = Vec::new();
        let out: Option<Box<dyn Read + Send>> = child.stdout.take().map(|s| Box::new(s) as _);
        let err: Option<Box<dyn Read + Send>> = child.stderr.take().map(|s| Box::new(s) as _);
        for mut pipe in [out, err].into_iter().flatten() {
            let log = Arc::clone(&log);
            pumps.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut l) = log.lock() {
                        l.extend_from_slice(&buf[..n]);
                    }
                }
            }));
        }
        Ok(WorkerProcess { child, log, pumps })
    }

    fn log(&self) -> String {
        self.log
            .lock()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(" (the worker exited: {status})")),
            _ => None,
        }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        self.log()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the other-worker list of a root → worker stream's handshake with `127.0.0.1:port`.
/// Returns `None` when the stream's handshake is not a 3-node one (one list entry).
fn rewrite_handshake(stream: &[u8], port: u16) -> Option<Vec<u8>> {
    let u32_at = |at: usize| -> Option<u32> {
        let b = stream.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if u32_at(0)? != 2 {
        return None;
    }
    let host_len = u32_at(8)? as usize;
    let rest_at = 12usize.checked_add(host_len)?.checked_add(4)?;
    let rest = stream.get(rest_at..)?;
    let host = b"127.0.0.1\0";
    let mut out = Vec::with_capacity(stream.len() + host.len());
    out.extend_from_slice(stream.get(..8)?);
    out.extend_from_slice(&(host.len() as u32).to_le_bytes());
    out.extend_from_slice(host);
    out.extend_from_slice(&u32::from(port).to_le_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

/// One live connection: a writer thread sends the recorded input, a reader thread compares.
struct StreamCheck {
    name: String,
    sent_len: usize,
    expected_len: usize,
    writer: JoinHandle<Option<String>>,
    reader: JoinHandle<(usize, Option<String>)>,
}

/// Shared flag the reader of the root stream raises after the first 4 bytes (the handshake ACK).
type FirstBytes = Arc<(Mutex<bool>, std::sync::Condvar)>;

impl StreamCheck {
    #[allow(clippy::too_many_arguments)]
    fn start(
        name: String,
        sock: TcpStream,
        send: Vec<u8>,
        expect: Vec<u8>,
        layout: WorkerLayout,
        link: Link,
        deadline: Instant,
        first: Option<FirstBytes>,
    ) -> Result<StreamCheck, ReplayError> {
        let _ = sock.set_nodelay(true);
        let mut wsock = sock.try_clone().map_err(|source| ReplayError::Socket {
            what: "clone a socket",
            source,
        })?;
        let sent_len = send.len();
        let expected_len = expect.len();
        let writer = thread::spawn(move || match wsock.write_all(&send) {
            Ok(()) => None,
            Err(e) => Some(format!(
                "write failed after the worker stopped reading: {e}"
            )),
        });
        let mut rsock = sock;
        let reader = thread::spawn(move || {
            let result =
                read_and_compare(&mut rsock, &expect, &layout, link, deadline, first.as_ref());
            let _ = rsock.shutdown(Shutdown::Both);
            result
        });
        Ok(StreamCheck {
            name,
            sent_len,
            expected_len,
            writer,
            reader,
        })
    }

    fn finish(self) -> StreamOutcome {
        let (received, mut failure) = self
            .reader
            .join()
            .unwrap_or((0, Some("the reader thread panicked".to_string())));
        let write_failure = self
            .writer
            .join()
            .unwrap_or(Some("the writer thread panicked".to_string()));
        if failure.is_none() {
            failure = write_failure;
        }
        StreamOutcome {
            name: self.name,
            sent: self.sent_len,
            received,
            expected: self.expected_len,
            failure,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads until EOF and requires exactly `expect`. Returns (matching bytes received, failure).
fn read_and_compare(
    sock: &mut TcpStream,
    expect: &[u8],
    layout: &WorkerLayout,
    link: Link,
    deadline: Instant,
    first: Option<&FirstBytes>,
) -> (usize, Option<String>) {
    let mut got: Vec<u8> = Vec::with_capacity(expect.len());
    let mut buf = vec![0u8; 65536];
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut signalled = false;
    loop {
        if Instant::now() > deadline {
            let at = got.len();
            return (
                at,
                Some(format!(
                    "timeout after {at} bytes; next expected byte is in {}",
                    layout.locate(link, at)
                )),
            );
        }
        let n = match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let at = got.len();
                return (
                    at,
                    Some(format!(
                        "read failed after {at} bytes ({}): {e}",
                        layout.locate(link, at)
                    )),
                );
            }
        };
        let start = got.len();
        got.extend_from_slice(&buf[..n]);
        if !signalled && got.len() >= 4 {
            if let Some(pair) = first {
                let (flag, cv) = &**pair;
                if let Ok(mut f) = flag.lock() {
                    *f = true;
                }
                cv.notify_all();
            }
            signalled = true;
        }
        let common = got.len().min(expect.len());
        if let Some(bad) = (start..common).find(|&i| got[i] != expect[i]) {
            let end = (bad + 16).min(common);
            let exp_end = (bad + 16).min(expect.len());
            let msg = format!(
                "byte mismatch at offset {bad}: {}\n    expected {}\n    actual   {}",
                layout.locate(link, bad),
                hex(&expect[bad..exp_end]),
                hex(&got[bad..end]),
            );
            return (bad, Some(msg));
        }
        if got.len() > expect.len() {
            let extra = got.len() - expect.len();
            return (
                expect.len(),
                Some(format!(
                    "the worker sent {extra} byte(s) more than recorded"
                )),
            );
        }
    }
    if got.len() != expect.len() {
        let at = got.len();
        return (
            at,
            Some(format!(
                "EOF after {at} of {} bytes; missing from {}",
                expect.len(),
                layout.locate(link, at)
            )),
        );
    }
    (got.len(), None)
}

fn connect(port: u16) -> Result<TcpStream, ReplayError> {
    TcpStream::connect(("127.0.0.1", port)).map_err(|source| ReplayError::Socket {
        what: "connect to the worker",
        source,
    })
}

/// Runs the recorded session of `options.worker_index` against a worker started with
/// `options.worker_cmd` and compares every byte. The worker process is killed at the end.
pub fn replay(scenario: &Scenario, options: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    check_worker_index(scenario, options.worker_index)?;
    let port = match options.port {
        Some(p) => p,
        None => free_port()?,
    };
    // A port another process holds would have the session played against that process (and
    // the worker started here fail to bind, unseen).
    if port_is_listening(port) {
        return Err(ReplayError::PortTaken {
            port,
            owner: port_owner(port),
        });
    }
    let deadline = Instant::now() + options.timeout;
    let mut worker = WorkerProcess::start(options, port)?;
    let pid = worker.child.id();
    // Listening must be the worker started here (or a process it started): another process
    // may have taken the port since the check above.
    while !listening_in(port, pid) {
        let exited = worker.exited();
        if exited.is_some() || Instant::now() > deadline {
            let seconds = options.timeout.as_secs();
            return Err(ReplayError::NotListening {
                port,
                seconds,
                exited: exited.unwrap_or_default(),
                log: worker.stop(),
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
    let streams = replay_running(scenario, options.worker_index, port, options.timeout);
    let worker_log = worker.stop();
    Ok(ReplayReport {
        streams: streams?,
        worker_log,
    })
}

fn check_worker_index(scenario: &Scenario, w: usize) -> Result<(), ReplayError> {
    let n_workers = scenario.n_workers;
    if w >= n_workers {
        return Err(ReplayError::NoSuchWorker {
            index: w,
            n_workers,
        });
    }
    if n_workers > 2 {
        return Err(ReplayError::TooManyWorkers(n_workers));
    }
    Ok(())
}

/// Plays worker `w`'s recorded session against a worker already listening on `127.0.0.1:port`
/// (which keeps running afterwards) and returns the outcome of each connection.
pub fn replay_running(
    scenario: &Scenario,
    w: usize,
    port: u16,
    timeout: Duration,
) -> Result<Vec<StreamOutcome>, ReplayError> {
    check_worker_index(scenario, w)?;
    let n_workers = scenario.n_workers;
    let manifest = scenario.dir.join("manifest.json");
    let root = scenario
        .connection(w, "root")
        .ok_or_else(|| manifest_error(&manifest, format!("no root connection for worker {w}")))?;
    let layout = scenario.layouts[w].clone();
    let deadline = Instant::now() + timeout;

    // 3 nodes, worker 0: we play worker 1 and listen for worker 0 to connect to us.
    let mut peer_listener = None;
    let mut to_worker = root.to_worker.clone();
    if n_workers == 2 {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|source| ReplayError::Socket {
            what: "listen for the worker's peer link",
            source,
        })?;
        let peer_port = listener
            .local_addr()
            .map_err(|source| ReplayError::Socket {
                what: "read the peer listener's port",
                source,
            })?
            .port();
        to_worker = rewrite_handshake(&to_worker, peer_port)
            .ok_or_else(|| manifest_error(&manifest, "the root stream has no 3-node handshake"))?;
        if w == 0 {
            peer_listener = Some(listener);
        }
    }

    let first: FirstBytes = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let mut checks = Vec::new();
    let root_sock = connect(port)?;
    checks.push(StreamCheck::start(
        "root".to_string(),
        root_sock,
        to_worker,
        root.from_worker.clone(),
        layout.clone(),
        Link::Root,
        deadline,
        Some(Arc::clone(&first)),
    )?);

    let mut setup_failure = None;
    if n_workers == 2 {
        let link = scenario
            .connection(1, "worker0")
            .ok_or_else(|| manifest_error(&manifest, "no worker0 → worker1 link recorded"))?;
        if let Some(listener) = peer_listener.take() {
            // Worker 0 connects to "worker 1" (us) after the root-ready ACK.
            match accept_until(&listener, deadline) {
                Ok(sock) => checks.push(StreamCheck::start(
                    "peer worker1".to_string(),
                    sock,
                    link.from_worker.clone(),
                    link.to_worker.clone(),
                    layout.clone(),
                    Link::Peer,
                    deadline,
                    None,
                )?),
                Err(e) => {
                    setup_failure = Some(format!("worker 0 never connected to its peer: {e}"))
                }
            }
        } else {
            // Connect as worker 0 only after the root connection was accepted and acked.
            let acked = wait_flag(&first, deadline);
            if acked {
                let sock = connect(port)?;
                checks.push(StreamCheck::start(
                    "peer worker0".to_string(),
                    sock,
                    link.to_worker.clone(),
                    link.from_worker.clone(),
                    layout.clone(),
                    Link::Peer,
                    deadline,
                    None,
                )?);
            } else {
                setup_failure = Some(
                    "no handshake ACK from the worker; the peer link was not opened".to_string(),
                );
            }
        }
    }

    let mut streams: Vec<StreamOutcome> = checks.into_iter().map(StreamCheck::finish).collect();
    if let Some(f) = setup_failure {
        streams.push(StreamOutcome {
            name: "peer".to_string(),
            sent: 0,
            received: 0,
            expected: 0,
            failure: Some(f),
        });
    }
    Ok(streams)
}

fn wait_flag(flag: &FirstBytes, deadline: Instant) -> bool {
    let (lock, cv) = &**flag;
    let Ok(mut done) = lock.lock() else {
        return false;
    };
    while !*done {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        match cv.wait_timeout(done, deadline - now) {
            Ok((guard, _)) => done = guard,
            Err(_) => return false,
        }
    }
    true
}

fn accept_until(listener: &TcpListener, deadline: Instant) -> std::io::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    loop {
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false)?;
                return Ok(sock);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out",
                    ));
                }
                thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_commands() {
        assert_eq!(
            split_command("qemu-aarch64 -L '/usr/x y' w --port 1").unwrap(),
            vec!["qemu-aarch64", "-L", "/usr/x y", "w", "--port", "1"]
        );
        assert_eq!(split_command("a \"\" b").unwrap(), vec!["a", "", "b"]);
        assert!(split_command("a 'b").is_none());
        assert!(split_command("  ").is_none());
    }

    #[test]
    fn rewrites_the_three_node_handshake() {
        let mut s = Vec::new();
        for v in [2u32, 0, 10] {
            s.extend_from_slice(&v.to_le_bytes());
        }
        s.extend_from_slice(b"127.0.0.1\0");
        s.extend_from_slice(&29101u32.to_le_bytes());
        s.extend_from_slice(&[0xaa, 0xaa, 0x67, 0x01]);
        let out = rewrite_handshake(&s, 4242).unwrap();
        assert_eq!(out.len(), s.len());
        assert_eq!(&out[22..26], &4242u32.to_le_bytes());
        assert_eq!(&out[26..], &s[26..]);
        assert!(rewrite_handshake(&s[..10], 1).is_none());
    }

    #[test]
    fn locates_offsets() {
        let step = |segment, pipe: &str, sync: &str, slice_bytes| SyncStep {
            segment,
            sync_in_segment: 0,
            pipe: pipe.to_string(),
            sync: sync.to_string(),
            slice_bytes,
        };
        let layout = WorkerLayout {
            forwards: vec![
                ForwardLayout {
                    position: 0,
                    batch: 2,
                    out_offset: 16,
                },
                ForwardLayout {
                    position: 2,
                    batch: 1,
                    out_offset: 16 + 2 * 14,
                },
            ],
            sync_plan: vec![
                step(0, "X", "SYNC_WITH_ROOT", 8),
                step(1, "ZQ", "SYNC_NODE_SLICES", 4),
                step(2, "LG", "SYNC_NODE_SLICES_EXCEPT_ROOT", 10),
            ],
        };
        assert_eq!(layout.locate(Link::Root, 5), "the ACK after the net config");
        assert!(
            layout
                .locate(Link::Root, 16 + 5)
                .starts_with("forward 0 (position 0, batch 2), segment 1 sync 0")
        );
        assert!(
            layout
                .locate(Link::Root, 16 + 5)
                .ends_with("batch item 1, byte 1 of 4")
        );
        assert!(
            layout
                .locate(Link::Root, 16 + 8 + 12)
                .contains("segment 2 sync 0 (pipe LG")
        );
        assert!(
            layout
                .locate(Link::Root, 16 + 28 + 4)
                .starts_with("forward 1 (position 2")
        );
        assert!(
            layout
                .locate(Link::Peer, 4)
                .starts_with("forward 0 (position 0, batch 2), segment 1")
        );
        assert!(layout.locate(Link::Peer, 8).starts_with("forward 1"));
    }
}
