//! Worker time per forward, airllama against a C++ dllama worker, measured from outside the
//! worker and identically for both.
//!
//! A recorded 2-node session (a golden scenario, or one recorded with
//! `../shared/tools/golden_replay.py record`) holds every byte the C++ root sent. This bench
//! starts a worker process, connects to it as the root and writes the whole recording eagerly,
//! so the worker never waits for the root: the time between the end of one forward's output
//! (located with the manifest's layout) and the end of the next is the worker's own time for
//! that forward (control packet, compute, syncs over loopback). Weight loading is left out.
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
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use airllama::replay::{Scenario, free_port, port_is_listening};

/// A worker under test: a label and a command line with `{port}`.
struct WorkerCommand {
    name: String,
    command: String,
}

/// One scenario's recorded root stream, expected worker stream and forward boundaries.
struct Recording {
    name: String,
    to_worker: Vec<u8>,
    from_worker: Vec<u8>,
    /// Batch size of each forward.
    batches: Vec<u32>,
    /// Output offsets: `ends[0]` is where forward 0's output starts, `ends[i + 1]` where
    /// forward `i`'s ends.
    ends: Vec<usize>,
}

type BenchResult<T> = Result<T, String>;

fn load_recording(dir: &Path) -> BenchResult<Recording> {
    let scenario = Scenario::load(dir).map_err(|e| e.to_string())?;
    if scenario.n_workers() != 1 {
        return Err(format!(
            "{}: only 2-node scenarios (one worker) are timed",
            dir.display()
        ));
    }
    let layout = scenario
        .layout(0)
        .ok_or_else(|| format!("{}: no layout for worker 0", dir.display()))?;
    let read = |file: &str| {
        std::fs::read(dir.join(file)).map_err(|e| format!("{}/{file}: {e}", dir.display()))
    };
    let to_worker = read("w0_c0_root.to_worker.bin")?;
    let from_worker = read("w0_c0_root.from_worker.bin")?;
    let mut ends: Vec<usize> = layout.forwards.iter().map(|f| f.out_offset).collect();
    ends.push(from_worker.len());
    if ends.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!(
            "{}: forward output offsets are not increasing",
            dir.display()
        ));
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
        batches: layout.forwards.iter().map(|f| f.batch).collect(),
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

/// Plays `rec` against a fresh worker; returns each forward's duration.
fn time_session(rec: &Recording, command: &str) -> BenchResult<Vec<Duration>> {
    let port = free_port().map_err(|e| e.to_string())?;
    let _worker = start_worker(command, port)?;
    let sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    let mut wsock = sock.try_clone().map_err(|e| format!("clone socket: {e}"))?;
    let mut rsock = sock;
    let _ = rsock.set_read_timeout(Some(Duration::from_secs(600)));
    thread::scope(|s| {
        let writer = s.spawn(move || wsock.write_all(&rec.to_worker));
        let expect = &rec.from_worker;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        let mut stamps = Vec::with_capacity(rec.ends.len());
        let mut next = 0usize;
        while got < expect.len() {
            let n = match rsock.read(&mut buf) {
                Ok(0) => return Err(format!("EOF after {got} of {} bytes", expect.len())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read after {got} bytes: {e}")),
            };
            let now = Instant::now();
            let take = n.min(expect.len() - got);
            if buf[..take] != expect[got..got + take] || take < n {
                let at = got
                    + (0..take)
                        .find(|&i| buf[i] != expect[got + i])
                        .unwrap_or(take);
                return Err(format!(
                    "the worker's bytes differ from the recording at {at}"
                ));
            }
            got += n;
            while next < rec.ends.len() && got >= rec.ends[next] {
                stamps.push(now);
                next += 1;
            }
        }
        let _ = rsock.shutdown(Shutdown::Both);
        match writer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write: {e}")),
            Err(_) => return Err("writer thread panicked".to_string()),
        }
        Ok(stamps.windows(2).map(|w| w[1] - w[0]).collect())
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
                for (d, &batch) in forwards.iter().zip(&rec.batches) {
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
                rec.batches.len(),
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
