//! Worker time per forward, airllama against a C++ dllama worker, measured from outside the
//! worker and identically for both.
//!
//! A recorded 2-node session (a golden scenario, or one recorded with
//! `../shared/tools/golden_replay.py record`) holds every byte the C++ root sent. This bench
//! starts a worker process, connects to it as the root and writes the whole recording eagerly,
//! so the worker never waits for the root: the time between the end of one forward's output
//! (located with the manifest's layout) and the end of the next is the worker's own time for
//! that forward (control packet, compute, syncs over loopback). Weight loading is left out.
//! The end of a forward is stamped by the kernel when the byte arrives on the socket
//! (`SO_TIMESTAMPNS`; the bench reads exactly up to each forward's last byte), so the time does
//! not depend on when this process's reader thread gets a CPU on a loaded machine.
//! Every byte the worker sends is compared with the recording, so a wrong worker fails the
//! bench instead of producing a number.
//!
//! Workers run one after the other, round after round (A, B, A, B, ...), because the machine
//! this runs on is shared and its load drifts. For each worker and batch size the bench prints
//! the median over all forwards of all rounds and the minimum of the per-round medians.
//!
//! Configuration (environment):
//! * `AIRLLAMA_BENCH_WORKERS`: `name=command` entries separated by `;`, `{port}` replaced by
//!   the port; default: `airllama=<target>/release/airllama worker --port {port} --nthreads 1`.
//!   Add `dllama=/path/to/dllama worker --port {port} --nthreads 1` to compare (this bench
//!   never builds dllama; `scripts/bench-worker.sh` fills this in).
//! * `AIRLLAMA_BENCH_SCENARIOS`: 2-node scenario folders separated by `;`; default: the golden
//!   `llama-q40/2nodes`.
//! * `AIRLLAMA_BENCH_ROUNDS`: rounds (default 5; 1 when run as a test by `cargo test`).
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use airllama::replay::{free_port, port_is_listening};
use serde_json::Value;

/// A worker under test: a label and a command line with `{port}`.
struct WorkerCommand {
    name: String,
    command: String,
}

/// One forward of a recording.
struct Forward {
    /// Batch size.
    batch: u32,
    /// The root's bytes for this forward (control packet and every root slice it syncs).
    input: std::ops::Range<usize>,
}

/// One scenario's recorded root stream, expected worker stream and forward boundaries.
struct Recording {
    name: String,
    to_worker: Vec<u8>,
    from_worker: Vec<u8>,
    forwards: Vec<Forward>,
    /// Output offsets: `ends[0]` is where forward 0's output starts, `ends[i + 1]` where
    /// forward `i`'s ends.
    ends: Vec<usize>,
}

type BenchResult<T> = Result<T, String>;

/// Reads a 2-node scenario: the worker's two streams and, from `manifest.json`'s layout, where
/// each forward's input and output lie in them.
fn load_recording(dir: &Path) -> BenchResult<Recording> {
    let at = |what: &str| format!("{}: {what}", dir.display());
    let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| at(&format!("{file}: {e}")));
    let manifest: Value = serde_json::from_slice(&read("manifest.json")?)
        .map_err(|e| at(&format!("manifest.json: {e}")))?;
    if manifest.get("n_workers").and_then(Value::as_u64) != Some(1) {
        return Err(at("only 2-node scenarios (one worker) are timed"));
    }
    let to_worker = read("w0_c0_root.to_worker.bin")?;
    let from_worker = read("w0_c0_root.from_worker.bin")?;
    let listed = manifest
        .pointer("/layout/worker0/forwards")
        .and_then(Value::as_array)
        .ok_or_else(|| at("manifest has no layout.worker0.forwards"))?;
    let number = |f: &Value, key: &str| {
        f.get(key)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| at(&format!("a forward without `{key}`")))
    };
    let mut forwards = Vec::with_capacity(listed.len());
    let mut ends = Vec::with_capacity(listed.len() + 1);
    for f in listed {
        let start = number(f, "offset")?;
        let end = start
            .checked_add(number(f, "in_bytes")?)
            .filter(|&e| e <= to_worker.len())
            .ok_or_else(|| at("a forward's input lies outside the root stream"))?;
        if forwards
            .last()
            .is_some_and(|p: &Forward| p.input.end != start)
        {
            return Err(at("forward inputs are not contiguous"));
        }
        forwards.push(Forward {
            batch: u32::try_from(number(f, "batch")?).map_err(|_| at("batch out of range"))?,
            input: start..end,
        });
        ends.push(number(f, "out_offset")?);
    }
    ends.push(from_worker.len());
    if forwards.is_empty() || ends.windows(2).any(|w| w[0] >= w[1]) {
        return Err(at("no forwards, or forward outputs out of order"));
    }
    let name = dir
        .iter()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    Ok(Recording {
        name,
        to_worker,
        from_worker,
        forwards,
        ends,
    })
}

/// The worker process; killed and reaped when dropped (it would otherwise wait for the next
/// root forever).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(command: &str, port: u16) -> BenchResult<Worker> {
    let line = command.replace("{port}", &port.to_string());
    let mut words = line.split_whitespace();
    let program = words.next().ok_or("empty worker command")?;
    let child = Command::new(program)
        .args(words)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start `{line}`: {e}"))?;
    let mut worker = Worker(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !port_is_listening(port) {
        if let Ok(Some(status)) = worker.0.try_wait() {
            return Err(format!("`{line}` exited with {status} before listening"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "`{line}` did not listen on port {port} within 30 s"
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(worker)
}

/// Asks the kernel to stamp every received segment of `sock` with its arrival time.
fn enable_rx_timestamps(sock: &TcpStream) -> BenchResult<()> {
    let one: libc::c_int = 1;
    // SAFETY: the descriptor is open for the duration of the call and the option value is a
    // c_int whose size is passed along.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS_NEW,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(format!(
            "SO_TIMESTAMPNS: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `recvmsg` into `buf`: the bytes read and the kernel's arrival time (ns since the epoch) of
/// the last segment they came from, when the kernel gave one.
fn recv_stamped(sock: &TcpStream, buf: &mut [u8]) -> std::io::Result<(usize, Option<i128>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: msg points at one iovec covering `buf` and at `control`, all alive and
    // exclusively borrowed for the call; the kernel writes at most the lengths given.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR/CMSG_NXTHDR stay within
    // msg_controllen and return null at the end.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&raw const msg) };
    while !cmsg.is_null() {
        // SAFETY: cmsg is non-null and points at a complete header inside `control`.
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET
            && header.cmsg_type == libc::SO_TIMESTAMPNS_NEW
            && header.cmsg_len as usize >= std::mem::size_of::<libc::cmsghdr>() + 16
        {
            // SAFETY: a SCM_TIMESTAMPNS_NEW payload is two i64 (seconds, nanoseconds), and the
            // length check above keeps both inside the message; read unaligned to be safe.
            let (secs, nanos) = unsafe {
                let data = libc::CMSG_DATA(cmsg).cast::<i64>();
                (data.read_unaligned(), data.add(1).read_unaligned())
            };
            stamp = Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos));
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(&raw const msg, cmsg) };
    }
    Ok((n as usize, stamp))
}

/// Nanoseconds since the epoch now: the fallback when the kernel gave no stamp.
fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// Reads the worker's output up to offset `target`, comparing it with the recording; returns
/// the arrival time of the segment holding the last byte (kernel stamp, else the read's time).
fn read_until(
    sock: &TcpStream,
    expect: &[u8],
    got: &mut usize,
    target: usize,
    buf: &mut [u8],
) -> BenchResult<i128> {
    let mut last = now_ns();
    while *got < target {
        let want = buf.len().min(target - *got);
        let (n, stamp) = match recv_stamped(sock, &mut buf[..want]) {
            Ok((0, _)) => return Err(format!("EOF after {got} of {} bytes", expect.len())),
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} bytes: {e}")),
        };
        last = stamp.unwrap_or_else(now_ns);
        if let Some(i) = (0..n).find(|&i| buf[i] != expect[*got + i]) {
            return Err(format!(
                "the worker's bytes differ from the recording at {}",
                *got + i
            ));
        }
        *got += n;
    }
    Ok(last)
}

/// Plays `rec` against a fresh worker in lock step, as a root would: the setup (configs and
/// weights), then each forward's input only once the previous forward's output is complete.
/// Returns each forward's time: from handing its input to the writer to the arrival of its
/// last output byte. Nothing else is in flight then, so the stamp cannot be merged with a later
/// segment.
fn time_session(rec: &Recording, command: &str) -> BenchResult<Vec<Duration>> {
    let port = free_port().map_err(|e| e.to_string())?;
    let _worker = start_worker(command, port)?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(600)));
    enable_rx_timestamps(&sock)?;
    let mut wsock = sock.try_clone().map_err(|e| format!("clone socket: {e}"))?;
    let (to_writer, ranges) = std::sync::mpsc::channel::<std::ops::Range<usize>>();
    thread::scope(|s| {
        // A separate writer: a forward's input can exceed the socket buffers while the worker
        // waits for us to read its output.
        let writer = s.spawn(move || -> std::io::Result<()> {
            for range in ranges {
                wsock.write_all(&rec.to_worker[range])?;
            }
            Ok(())
        });
        let result = (|| -> BenchResult<Vec<Duration>> {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0usize;
            let send = |range| {
                to_writer
                    .send(range)
                    .map_err(|_| "the writer stopped".to_string())
            };
            send(0..rec.forwards[0].input.start)?;
            read_until(&sock, &rec.from_worker, &mut got, rec.ends[0], &mut buf)?;
            let mut times = Vec::with_capacity(rec.forwards.len());
            for (i, forward) in rec.forwards.iter().enumerate() {
                let start = now_ns();
                send(forward.input.clone())?;
                let end = read_until(&sock, &rec.from_worker, &mut got, rec.ends[i + 1], &mut buf)?;
                times.push(Duration::from_nanos(
                    u64::try_from(end - start).unwrap_or(0),
                ));
            }
            // The stop packet.
            let last = rec.forwards[rec.forwards.len() - 1].input.end;
            send(last..rec.to_worker.len())?;
            Ok(times)
        })();
        drop(to_writer);
        // On success the writer ends by itself once the stop packet is out; on failure it may
        // be blocked on a worker that stopped reading, and closing the socket releases it.
        if result.is_err() {
            let _ = sock.shutdown(Shutdown::Both);
        }
        let written = writer.join();
        let _ = sock.shutdown(Shutdown::Both);
        let times = result?;
        match written {
            Ok(Ok(())) => Ok(times),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("the writer thread panicked".to_string()),
        }
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn default_airllama() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("release").join("airllama")
}

fn parse_workers(spec: &str) -> BenchResult<Vec<WorkerCommand>> {
    spec.split(';')
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, command) = e
                .split_once('=')
                .ok_or_else(|| format!("worker entry {e:?} is not name=command"))?;
            if !command.contains("{port}") {
                return Err(format!("worker command {command:?} has no {{port}}"));
            }
            Ok(WorkerCommand {
                name: name.trim().to_string(),
                command: command.trim().to_string(),
            })
        })
        .collect()
}

fn run() -> BenchResult<()> {
    let as_bench = std::env::args().any(|a| a == "--bench");
    let workers = match std::env::var("AIRLLAMA_BENCH_WORKERS") {
        Ok(spec) => parse_workers(&spec)?,
        Err(_) => {
            let bin = default_airllama();
            if !bin.exists() {
                println!(
                    "worker_vs_dllama: {} not built; build it (cargo build --release) or set \
                     AIRLLAMA_BENCH_WORKERS",
                    bin.display()
                );
                return if as_bench {
                    Err("no worker to time".to_string())
                } else {
                    Ok(())
                };
            }
            vec![WorkerCommand {
                name: "airllama".to_string(),
                command: format!("{} worker --port {{port}} --nthreads 1", bin.display()),
            }]
        }
    };
    let scenarios: Vec<PathBuf> = match std::env::var("AIRLLAMA_BENCH_SCENARIOS") {
        Ok(spec) => spec
            .split(';')
            .filter(|s| !s.trim().is_empty())
            .map(|s| PathBuf::from(s.trim()))
            .collect(),
        Err(_) => vec![PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/golden/llama-q40/2nodes"
        ))],
    };
    let rounds: usize = match std::env::var("AIRLLAMA_BENCH_ROUNDS") {
        Ok(r) => r
            .parse()
            .map_err(|e| format!("AIRLLAMA_BENCH_ROUNDS={r:?}: {e}"))?,
        Err(_) if as_bench => 5,
        Err(_) => 1,
    };
    println!(
        "{:<28} {:<10} {:>5} {:>8} {:>12} {:>14}",
        "scenario", "worker", "batch", "forwards", "median ms", "min-round ms"
    );
    for dir in &scenarios {
        let rec = load_recording(dir)?;
        // (worker, batch) -> per-round lists of forward times in ms.
        let mut times: BTreeMap<(usize, u32), Vec<Vec<f64>>> = BTreeMap::new();
        // Per worker: each round's time for all forwards of the session together, which does
        // not depend on when the reader thread happened to be scheduled between two forwards.
        let mut totals: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
        for round in 0..rounds {
            for (w, worker) in workers.iter().enumerate() {
                let forwards = time_session(&rec, &worker.command)
                    .map_err(|e| format!("{} / {} round {round}: {e}", rec.name, worker.name))?;
                totals[w].push(forwards.iter().map(Duration::as_secs_f64).sum::<f64>() * 1e3);
                for (d, batch) in forwards.iter().zip(rec.forwards.iter().map(|f| f.batch)) {
                    let per_round = times.entry((w, batch)).or_default();
                    per_round.resize_with(round + 1, Vec::new);
                    per_round[round].push(d.as_secs_f64() * 1e3);
                }
            }
        }
        let mut medians: BTreeMap<(usize, u32), f64> = BTreeMap::new();
        for (&(w, batch), per_round) in &times {
            let mut all: Vec<f64> = per_round.iter().flatten().copied().collect();
            let count = all.len();
            let med = median(&mut all);
            let min_round = per_round
                .iter()
                .filter(|r| !r.is_empty())
                .map(|r| median(&mut r.clone()))
                .fold(f64::INFINITY, f64::min);
            medians.insert((w, batch), med);
            println!(
                "{:<28} {:<10} {:>5} {:>8} {:>12.3} {:>14.3}",
                rec.name, workers[w].name, batch, count, med, min_round
            );
        }
        for (w, t) in totals.iter_mut().enumerate() {
            let min = t.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{:<28} {:<10} {:>5} {:>8} {:>12.3} {:>14.3}",
                rec.name,
                workers[w].name,
                "all",
                rec.forwards.len(),
                median(t),
                min
            );
        }
        // Time ratios of the first worker to each other one, per batch size.
        for w in 1..workers.len() {
            for (&(w0, batch), &base) in medians.range((0, 0)..(1, 0)) {
                if let Some(&m) = medians.get(&(w, batch)) {
                    println!(
                        "{:<28} {} / {} at batch {batch}: {:.3}",
                        rec.name,
                        workers[w0].name,
                        workers[w].name,
                        base / m
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("worker_vs_dllama: {e}");
        std::process::exit(1);
    }
}
