//! Helpers of `tests/reliability.rs`: spawned `airllama` processes (killed on drop) with their
//! output captured line by line, the golden `llama-q40` streams and the offsets of their
//! protocol stages, root (and peer) connections driven by hand, and readers of `/proc`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use airllama::replay::{Scenario, free_port, port_is_listening, replay_running};
use serde_json::Value;

/// dllama's ACK word.
pub const ACK: [u8; 4] = 23_571_114u32.to_le_bytes();

/// The `airllama` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_airllama")
}

/// `../shared/golden/<rel>`.
pub fn golden(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")).join(rel)
}

/// An empty directory for one test under the cargo test temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("reliability")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// One captured output line.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the pump read it.
    pub at: Instant,
    /// From stderr (else stdout).
    pub stderr: bool,
    /// The text.
    pub text: String,
}

/// A spawned `airllama` process; SIGKILLed and reaped on drop (a stopped one too).
#[derive(Debug)]
pub struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    status: Option<ExitStatus>,
    /// What it was started as, for messages.
    pub what: String,
}

impl Proc {
    /// Starts `airllama args...` with stdout and stderr captured.
    pub fn spawn(args: &[String]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start airllama");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for (pipe, stderr) in [(out, false), (err, true)] {
            let sink = Arc::clone(&lines);
            thread::spawn(move || {
                for text in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let line = Line {
                        at: Instant::now(),
                        stderr,
                        text,
                    };
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
        }
        Proc {
            child,
            lines,
            status: None,
            what: format!("airllama {}", args.join(" ")),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every line so far, one per line (stderr lines prefixed `[stderr] `).
    pub fn log(&self) -> String {
        self.lines()
            .iter()
            .map(|l| {
                if l.stderr {
                    format!("[stderr] {}\n", l.text)
                } else {
                    format!("{}\n", l.text)
                }
            })
            .collect()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.lines()
            .iter()
            .filter(|l| l.stderr)
            .map(|l| format!("{}\n", l.text))
            .collect()
    }

    /// Waits up to `timeout` for a line matching `pred`; the first such line.
    pub fn wait_line(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<Line> {
        let started = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(&l.text)) {
                return Some(l);
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.status {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
                // Let the pumps read the last lines.
                thread::sleep(Duration::from_millis(50));
                return Some(s);
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (the process has not been reaped, so the pid is still its own).
    pub fn signal(&self, signal: i32) {
        assert!(self.status.is_none(), "{} already exited", self.what);
        // SAFETY: kill(2) only sends a signal to our own child, which has not been reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.child.id());
    }

    /// User + system CPU time so far (`/proc/<pid>/stat`).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid()).expect("read /proc/<pid>/stat")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of process `pid` (fields 14 and 15 of `/proc/<pid>/stat`).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// The files process `pid` holds open whose link names a path under `dir` (an unlinked
/// file reads `<path> (deleted)`), with the bytes allocated to each.
pub fn open_files_under(pid: u32, dir: &Path) -> Vec<(String, u64)> {
    let prefix = dir.to_string_lossy().into_owned();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with(&prefix) {
            // metadata() follows the magic link, to the file itself even when unlinked.
            let allocated = std::fs::metadata(fd.path()).map_or(0, |m| m.blocks() * 512);
            found.push((target, allocated));
        }
    }
    found
}

/// The entries of `dir`.
pub fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// An `airllama worker` on a free loopback port.
#[derive(Debug)]
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// Its port.
    pub port: u16,
}

impl Worker {
    /// Starts `airllama worker --host 127.0.0.1 --port P --nthreads 1 <extra>` and waits until
    /// it listens.
    pub fn start(extra: &[&str]) -> Worker {
        let port = free_port().expect("a free port");
        let mut args: Vec<String> = [
            "worker",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--nthreads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut proc = Proc::spawn(&args);
        let started = Instant::now();
        while !port_is_listening(port) {
            if let Some(status) = proc.wait_exit(Duration::ZERO) {
                panic!("{} exited ({status}):\n{}", proc.what, proc.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the worker never listened:\n{}",
                proc.log()
            );
            thread::sleep(Duration::from_millis(10));
        }
        Worker { proc, port }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The lines it logged starting with `error:`.
    pub fn errors(&self) -> Vec<Line> {
        self.proc
            .lines()
            .into_iter()
            .filter(|l| l.text.starts_with("error:"))
            .collect()
    }

    /// Waits up to `timeout` for its `n`-th error line.
    pub fn wait_error(&self, n: usize, timeout: Duration) -> Line {
        let started = Instant::now();
        loop {
            if let Some(l) = self.errors().into_iter().nth(n - 1) {
                return l;
            }
            assert!(
                started.elapsed() < timeout,
                "no error #{n} within {timeout:?}; log:\n{}",
                self.proc.log()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Plays the golden `llama-q40/2nodes` root against this worker and requires every byte
    /// it sends back to match the recording.
    pub fn assert_serves_golden(&self, why: &str) {
        let scenario = golden_2nodes();
        let outcomes = replay_running(&scenario.scenario, 0, self.port, Duration::from_secs(60))
            .expect("replay");
        for o in &outcomes {
            assert!(
                o.failure.is_none(),
                "{why}: the golden replay failed: {o:?}\nworker log:\n{}",
                self.proc.log()
            );
        }
    }
}

/// The golden `llama-q40/2nodes` recording and the offsets of its protocol stages.
#[derive(Debug)]
pub struct Golden2 {
    /// For [`replay_running`].
    pub scenario: Scenario,
    /// Root → worker bytes.
    pub to_worker: Vec<u8>,
    /// Worker → root bytes.
    pub from_worker: Vec<u8>,
    /// Offset of the root-ready ACK.
    pub root_ready_at: usize,
    /// Offset and length of the net config.
    pub net_config: (usize, usize),
    /// Offset and length of the node config.
    pub node_config: (usize, usize),
    /// The first weight record: offset of its header and of its data, its data bytes.
    pub first_record: (usize, usize, usize),
    /// Per forward: offset of its control packet in `to_worker`, of its output in
    /// `from_worker`, and its batch size.
    pub forwards: Vec<(usize, usize, usize)>,
    /// Root → worker bytes of one batch item's X row (F32, dim 192).
    pub x_row_bytes: usize,
    /// Bytes of one node's slice of one batch item of a ZQ sync.
    pub zq_slice_bytes: usize,
}

fn num(v: &Value, path: &[&str]) -> usize {
    let mut cur = v;
    for key in path {
        cur = &cur[*key];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("manifest.json: no number at {path:?}")) as usize
}

/// Loads [`Golden2`] (once per test binary).
pub fn golden_2nodes() -> &'static Golden2 {
    static G: std::sync::OnceLock<Golden2> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        let dir = golden("llama-q40/2nodes");
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
                .expect("manifest JSON");
        let l = &manifest["layout"]["worker0"];
        let record = &l["weights"]["records"][0];
        let forwards = l["forwards"]
            .as_array()
            .expect("forwards")
            .iter()
            .map(|f| {
                (
                    num(f, &["offset"]),
                    num(f, &["out_offset"]),
                    num(f, &["batch"]),
                )
            })
            .collect();
        let plan = l["sync_plan_per_batch_item"].as_array().expect("sync plan");
        let x = plan.first().expect("X sync");
        let zq = plan.get(1).expect("ZQ sync");
        assert_eq!(x["pipe"], "X");
        assert_eq!(zq["pipe"], "ZQ");
        Golden2 {
            scenario: Scenario::load(&dir).expect("golden scenario"),
            to_worker: std::fs::read(dir.join("w0_c0_root.to_worker.bin")).expect("stream"),
            from_worker: std::fs::read(dir.join("w0_c0_root.from_worker.bin")).expect("stream"),
            root_ready_at: num(l, &["root_ready_ack_offset"]),
            net_config: (
                num(l, &["net_config", "offset"]),
                num(l, &["net_config", "length"]),
            ),
            node_config: (
                num(l, &["node_config", "offset"]),
                num(l, &["node_config", "length"]),
            ),
            first_record: (
                num(record, &["record_offset"]),
                num(record, &["data_offset"]),
                num(record, &["nBytes"]),
            ),
            forwards,
            x_row_bytes: num(x, &["pipe_batch_bytes"]),
            zq_slice_bytes: num(zq, &["slice_bytes"]),
        }
    })
}

/// How a hand-driven connection ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The worker closed it (EOF).
    Eof(Instant),
    /// The worker reset it (closed with our bytes unread).
    Reset(Instant),
    /// Another read error.
    Error(Instant, String),
}

impl End {
    /// When it ended.
    pub fn at(&self) -> Instant {
        match self {
            End::Eof(t) | End::Reset(t) | End::Error(t, _) => *t,
        }
    }
}

/// A connection to a worker driven by hand: a reader thread collects whatever the worker
/// sends until it closes; writes go through writer threads (so two connections can be fed
/// at once without deadlock).
#[derive(Debug)]
pub struct Conn {
    sock: TcpStream,
    /// Our end's address (what the worker logs).
    pub local: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    end: Arc<Mutex<Option<End>>>,
    writers: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Conn {
    /// Connects to `127.0.0.1:port` from the default source address.
    pub fn connect(port: u16) -> Conn {
        Conn::wrap(TcpStream::connect(("127.0.0.1", port)).expect("connect to the worker"))
    }

    /// Connects to `127.0.0.1:port` from `source` (any 127/8 address works on Linux loopback).
    pub fn connect_from(source: Ipv4Addr, port: u16) -> Conn {
        Conn::wrap(connect_bound(source, port).expect("connect from a chosen address"))
    }

    fn wrap(sock: TcpStream) -> Conn {
        let _ = sock.set_nodelay(true);
        let local = sock.local_addr().expect("local address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let end = Arc::new(Mutex::new(None));
        let mut rsock = sock.try_clone().expect("clone the socket");
        let (sink, done) = (Arc::clone(&received), Arc::clone(&end));
        thread::spawn(move || {
            let _ = rsock.set_read_timeout(Some(Duration::from_millis(100)));
            let started = Instant::now();
            let mut buf = vec![0u8; 1 << 16];
            let finished = loop {
                match rsock.read(&mut buf) {
                    Ok(0) => break End::Eof(Instant::now()),
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        if started.elapsed() > Duration::from_secs(300) {
                            break End::Error(Instant::now(), "reader gave up".into());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        break End::Reset(Instant::now());
                    }
                    Err(e) => break End::Error(Instant::now(), e.to_string()),
                }
            };
            *done.lock().unwrap_or_else(|e| e.into_inner()) = Some(finished);
        });
        Conn {
            sock,
            local,
            received,
            end,
            writers: Vec::new(),
        }
    }

    /// Queues `bytes` to be written (in order with earlier calls: one writer at a time).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.flush();
        let mut w = self.sock.try_clone().expect("clone the socket");
        let bytes = bytes.to_vec();
        self.writers.push(thread::spawn(move || {
            w.set_write_timeout(Some(Duration::from_secs(60)))?;
            w.write_all(&bytes)
        }));
    }

    /// Waits for the queued writes; their outcome (an error when the worker hung up first).
    pub fn flush(&mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        for w in self.writers.drain(..) {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("writer panicked")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    /// What the worker sent so far.
    pub fn received(&self) -> Vec<u8> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many bytes the worker sent so far.
    pub fn received_len(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Waits until the worker has sent at least `n` bytes; false if it closed or the time ran
    /// out first.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.received_len() >= n {
                return true;
            }
            if self.ended().is_some() || started.elapsed() > timeout {
                return self.received_len() >= n;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// How the connection ended, if it did.
    pub fn ended(&self) -> Option<End> {
        self.end.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `timeout` for the worker to close the connection.
    pub fn wait_end(&self, timeout: Duration) -> Option<End> {
        let started = Instant::now();
        loop {
            if let Some(e) = self.ended() {
                return Some(e);
            }
            if started.elapsed() > timeout {
                return None;
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
        let _ = self.flush();
    }
}

/// A TCP connection to `127.0.0.1:port` whose source address is `source` (std cannot bind
/// before connecting).
pub fn connect_bound(source: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = core::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) with constant arguments; the descriptor is checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket this function just created and owns; from here on the stream
    // closes it (also on the error paths below).
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let local = sockaddr(source, 0);
    // SAFETY: `local` is a live sockaddr_in of `len` bytes; `fd` is an open socket.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let remote = sockaddr(Ipv4Addr::LOCALHOST, port);
    // SAFETY: as for bind: a live sockaddr_in of `len` bytes and an open socket.
    if unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

/// Little-endian u32 words.
pub fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A dllama handshake: `n_workers`, `worker_index`, then each other worker's host and port.
pub fn handshake(n_workers: u32, worker_index: u32, peers: &[(&str, u16)]) -> Vec<u8> {
    let mut out = u32s(&[n_workers, worker_index]);
    for (host, port) in peers {
        out.extend_from_slice(&(host.len() as u32 + 1).to_le_bytes());
        out.extend_from_slice(host.as_bytes());
        out.push(0);
        out.extend_from_slice(&u32::from(*port).to_le_bytes());
    }
    out
}
