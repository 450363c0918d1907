//! Reliability and security of the worker and the root, probed from outside as an attacker or
//! an unlucky operator would (issue 13), against the release-built `airllama` binary:
//!
//! * a root that stalls at each protocol stage (mid-handshake, before the root-ready ACK,
//!   mid-net-config, mid-node-config, mid-weight-record, mid-weight-data, mid-control-packet,
//!   mid-forward sync) is dropped by a worker started with `--net-timeout` within that time;
//!   the log names the root's address and the stage, and the worker then serves the golden
//!   `llama-q40/2nodes` session byte for byte. Stalled mid-forward (turbo mode) the worker
//!   spends almost no CPU. A root idle between forwards is never dropped.
//! * a root names a worker that accepts but never answers, or that is SIGSTOPped in a live
//!   3-node SmolLM2 cluster (the survivors then serve the next root);
//! * `--allow-root`: other roots are refused unread and logged, a listed root is served, a
//!   named peer outside the list is never contacted, and a forged peer connection is closed
//!   unread while the peer the root named is served;
//! * `--max-memory` refusals are logged by the worker and named by the root;
//! * kill -9 of a worker or a root while it spills weights leaves nothing in `--spill-dir`;
//! * a model file truncated under a streaming root with workers is an error naming the file.
//!
//! The models: the golden recordings in `../shared/golden`, a synthetic `airllama gen-model`
//! model (about 100 MB) and SmolLM2 when `scripts/fetch-smollm2.sh` fetched it (else that test
//! prints SKIPPED). Tests that run clusters or big models take turns (the machine may have two
//! cores, and turbo-mode nodes spin).
#[macro_use]
mod golden_support;

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use airllama::replay::replay_running;

mod reliability_support;
mod smollm2_support;

use reliability_support::{
    ACK, Conn, End, Proc, Worker, dir_entries, golden, golden_2nodes, handshake, open_files_under,
    scratch,
};

/// Tests that run clusters or big models take turns.
fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `airllama inference` arguments: the model and tokenizer, argmax sampling, one thread,
/// `workers` (if any), then `extra`.
fn inference(model: &Path, tokenizer: &Path, workers: &[String], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "inference".into(),
        "--model".into(),
        model.display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--buffer-float-type".into(),
        "q80".into(),
        "--nthreads".into(),
        "1".into(),
        "--temperature".into(),
        "0".into(),
        "--seed".into(),
        "1".into(),
        "--prompt".into(),
        "hello world".into(),
    ];
    if !workers.is_empty() {
        args.push("--workers".into());
        args.extend(workers.iter().cloned());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs a root (`inference`, 8 steps, `--net-timeout` as given) against one worker that must
/// make it fail, and returns the root's stderr after checking that it exited non-zero and named
/// the worker's address. A root that does not exit within `wait` fails the test with its output.
fn root_fails_naming(model: &Path, worker: &str, net_timeout: &str, wait: Duration) -> String {
    let mut root = Proc::spawn(&inference(
        model,
        &golden_tokenizer(),
        &[worker.to_string()],
        &["--steps", "8", "--net-timeout", net_timeout],
    ));
    let status = root
        .wait_exit(wait)
        .unwrap_or_else(|| panic!("the root hangs; output:\n{}", root.log()));
    let stderr = root.stderr();
    println!("root: {stderr}");
    assert!(!status.success(), "{status}");
    assert!(stderr.contains(worker), "{stderr}");
    stderr
}

fn golden_model() -> PathBuf {
    golden("llama-q40/model.m")
}

fn golden_tokenizer() -> PathBuf {
    golden("llama-q40/tokenizer.t")
}

/// A synthetic Q40 model of about 100 MB that splits over 2 nodes (8 KV heads) and uses the
/// golden tokenizer (vocab 288): big enough that loading it takes a few hundred ms and that a
/// forward under a small `--mem-budget` takes tens of ms. Written once per test binary.
fn big_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path = scratch("big_model").join("big.m");
        let out = std::process::Command::new(reliability_support::bin())
            .args([
                "gen-model",
                "--dim",
                "1024",
                "--hidden-dim",
                "2816",
                "--layers",
                "16",
                "--heads",
                "16",
                "--kv-heads",
                "8",
                "--vocab",
                "288",
                "--seq-len",
                "128",
                "--output",
            ])
            .arg(&path)
            .output()
            .expect("run airllama gen-model");
        assert!(
            out.status.success(),
            "gen-model failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    })
}

/// SmolLM2 converted to Q40 once per test binary, or `None` (SKIPPED printed) when absent.
fn smollm2() -> Option<&'static (PathBuf, PathBuf)> {
    static FILES: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let gguf = smollm2_support::gguf()?;
            Some(smollm2_support::convert(&gguf, "reliability_smollm2"))
        })
        .as_ref()
}

// ---------------------------------------------------------------------------------------------
// A root that stalls at each protocol stage.
// ---------------------------------------------------------------------------------------------

/// One stall: the root sends the golden stream up to `cut` and then nothing.
struct Stall {
    /// The stage the worker's log must name.
    stage: &'static str,
    /// Root → worker bytes sent before the stall.
    cut: usize,
    /// Worker → root bytes it owes for what it got (ACKs, forward output) before it waits.
    owed: usize,
    /// `--net-timeout` seconds.
    timeout: u64,
    /// Mid-forward (turbo mode): the worker's CPU time is measured over this part of the stall.
    cpu_window: Option<Duration>,
}

fn stalled_root(case: Stall) {
    let g = golden_2nodes();
    let timeout = Duration::from_secs(case.timeout);
    let worker = Worker::start(&["--net-timeout", &case.timeout.to_string()]);
    let mut root = Conn::connect(worker.port);
    root.send(&g.to_worker[..case.cut]);
    root.flush()
        .expect("the worker reads every byte sent before the stall");
    assert!(
        root.wait_received(case.owed, Duration::from_secs(30)),
        "{}: the worker sent {} of the {} bytes it owes before the stall; log:\n{}",
        case.stage,
        root.received_len(),
        case.owed,
        worker.proc.log()
    );
    // Now the worker waits for bytes that never come.
    let stalled_at = Instant::now();
    if let Some(window) = case.cpu_window {
        thread::sleep(Duration::from_millis(200));
        let before = worker.proc.cpu_time();
        thread::sleep(window);
        let spent = worker.proc.cpu_time().saturating_sub(before);
        assert!(
            root.ended().is_none(),
            "{}: dropped before the CPU window ended ({:?})",
            case.stage,
            root.ended()
        );
        println!(
            "{}: worker CPU time over {window:?} of the stall: {spent:?}",
            case.stage
        );
        assert!(
            spent < window / 10,
            "{}: the stalled worker spent {spent:?} of CPU in {window:?} (spinning?)",
            case.stage
        );
        let log = worker.proc.log();
        assert!(
            log.contains("network in non-blocking (turbo) mode"),
            "{}: expected the stall in turbo mode; log:\n{log}",
            case.stage
        );
    }
    let end = root
        .wait_end(timeout + Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "{}: the worker never dropped the stalled root; log:\n{}",
                case.stage,
                worker.proc.log()
            )
        });
    let waited = end.at().saturating_duration_since(stalled_at);
    println!(
        "{}: dropped after {waited:?} (--net-timeout {})",
        case.stage, case.timeout
    );
    assert!(
        waited + Duration::from_millis(150) >= timeout
            && waited <= timeout + Duration::from_secs(2),
        "{}: dropped after {waited:?}, expected about {timeout:?}",
        case.stage
    );
    assert!(
        root.received() == g.from_worker[..case.owed],
        "{}: the worker sent other bytes than the recording's before the stall",
        case.stage
    );
    let error = worker.wait_error(1, Duration::from_secs(5)).text;
    println!("{}: {error}", case.stage);
    let who = format!("node 0 at {} (connection 0)", root.local);
    let what = format!(
        "sent nothing for {} s during {} (--net-timeout)",
        case.timeout, case.stage
    );
    assert!(
        error.contains(&who) && error.contains(&what),
        "{}: the log line must name {who:?} and {what:?}: {error}",
        case.stage
    );
    assert!(
        error.ends_with("session dropped, waiting for a root"),
        "{error}"
    );
    worker.assert_serves_golden(case.stage);
    assert_eq!(worker.errors().len(), 1, "the good session logged no error");
}

#[test]
fn stall_before_the_handshake_silent_connection() {
    golden_or_skip!();
    stalled_root(Stall {
        stage: "handshake",
        cut: 0,
        owed: 0,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_handshake() {
    golden_or_skip!();
    stalled_root(Stall {
        stage: "handshake",
        cut: 4,
        owed: 0,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_after_the_handshake_before_the_root_ready_ack() {
    golden_or_skip!();
    let g = golden_2nodes();
    stalled_root(Stall {
        stage: "reading root-ready ACK",
        cut: g.root_ready_at,
        owed: 4,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_net_config() {
    golden_or_skip!();
    let (at, len) = golden_2nodes().net_config;
    stalled_root(Stall {
        stage: "net config",
        cut: at + len / 2,
        owed: 4,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_node_config() {
    golden_or_skip!();
    let (at, len) = golden_2nodes().node_config;
    stalled_root(Stall {
        stage: "node config",
        cut: at + len / 2,
        owed: 8,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_weight_record_header() {
    golden_or_skip!();
    let (header_at, _, _) = golden_2nodes().first_record;
    stalled_root(Stall {
        stage: "weight record header",
        cut: header_at + 6,
        owed: 12,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_weight_data() {
    golden_or_skip!();
    let (_, data_at, len) = golden_2nodes().first_record;
    stalled_root(Stall {
        stage: "weight data",
        cut: data_at + len / 2,
        owed: 12,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_first_control_packet() {
    golden_or_skip!();
    let (at, out_at, _) = golden_2nodes().forwards[0];
    stalled_root(Stall {
        stage: "control packet",
        cut: at + 4,
        owed: out_at,
        timeout: 1,
        cpu_window: None,
    });
}

#[test]
fn stall_mid_control_packet_in_turbo_mode_costs_no_cpu() {
    golden_or_skip!();
    // The second forward's packet: turbo mode is on since the first.
    let (at, out_at, _) = golden_2nodes().forwards[1];
    stalled_root(Stall {
        stage: "control packet",
        cut: at + 4,
        owed: out_at,
        timeout: 3,
        cpu_window: Some(Duration::from_secs(2)),
    });
}

#[test]
fn stall_mid_forward_sync_in_turbo_mode_costs_no_cpu() {
    golden_or_skip!();
    // Forward 0 (batch 32): the control packet, every X row, then half of the root's slice of
    // batch item 0 of the first ZQ sync. The worker has sent its own slice of that item.
    let g = golden_2nodes();
    let (at, out_at, batch) = g.forwards[0];
    stalled_root(Stall {
        stage: "sync",
        cut: at + 8 + batch * g.x_row_bytes + g.zq_slice_bytes / 2,
        owed: out_at + g.zq_slice_bytes,
        timeout: 3,
        cpu_window: Some(Duration::from_secs(2)),
    });
}

/// Waiting for the next control packet is idleness, never a stall: a root that pauses
/// between forwards for longer than `--net-timeout` still gets every byte of its session.
#[test]
fn a_root_idle_between_forwards_is_not_dropped() {
    golden_or_skip!();
    let g = golden_2nodes();
    let worker = Worker::start(&["--net-timeout", "1"]);
    let mut root = Conn::connect(worker.port);
    let (at, out_at, _) = g.forwards[3];
    root.send(&g.to_worker[..at]);
    assert!(
        root.wait_received(out_at, Duration::from_secs(30)),
        "forwards 0..3 did not complete; log:\n{}",
        worker.proc.log()
    );
    let before = worker.proc.cpu_time();
    thread::sleep(Duration::from_millis(2500));
    let spent = worker.proc.cpu_time().saturating_sub(before);
    assert!(
        root.ended().is_none(),
        "dropped while idle between forwards; log:\n{}",
        worker.proc.log()
    );
    // dllama's turbo mode spins for about 1 s of CPU time waiting for the next packet, then
    // blocks: bounded, unlike a stall mid-message, which must not spin at all.
    println!("worker CPU time over 2.5 s idle between forwards: {spent:?}");
    assert!(
        spent < Duration::from_millis(1600),
        "idle between forwards the worker spent {spent:?} of CPU"
    );
    root.send(&g.to_worker[at..]);
    root.flush().expect("the rest of the session");
    let end = root.wait_end(Duration::from_secs(30));
    assert!(matches!(end, Some(End::Eof(_))), "{end:?}");
    assert!(
        root.received() == g.from_worker,
        "after the pause the worker's bytes differ from the recording ({} of {} bytes)",
        root.received_len(),
        g.from_worker.len()
    );
    assert!(worker.errors().is_empty(), "{}", worker.proc.log());
}

/// The root side of `--net-timeout`: a "worker" that accepts (the kernel completes the TCP
/// handshake) but never answers is named instead of waited for forever.
#[test]
fn a_root_names_a_worker_that_accepts_but_never_answers() {
    golden_or_skip!();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let started = Instant::now();
    let mut root = Proc::spawn(&inference(
        &golden_model(),
        &golden_tokenizer(),
        std::slice::from_ref(&address),
        &["--steps", "8", "--net-timeout", "1"],
    ));
    let status = root
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the root hangs; output:\n{}", root.log()));
    let took = started.elapsed();
    let stderr = root.stderr();
    println!("after {took:?}: {stderr}");
    assert!(!status.success(), "{status}");
    assert!(
        took < Duration::from_secs(6),
        "took {took:?} with --net-timeout 1"
    );
    assert!(
        stderr.contains(&address) && stderr.contains("sent nothing for 1 s"),
        "the error must name {address} and the time-out: {stderr}"
    );
    drop(listener);
}

/// A root given the same worker twice: the worker takes the second connection as another
/// root (dllama cannot tell them apart); everything gives up within the time-out, the root
/// names the worker, and the worker then serves a correct session.
#[test]
fn a_root_given_the_same_worker_twice_fails_in_time() {
    golden_or_skip!();
    let worker = Worker::start(&["--net-timeout", "1"]);
    let address = worker.address();
    let started = Instant::now();
    let mut root = Proc::spawn(&inference(
        &golden_model(),
        &golden_tokenizer(),
        &[address.clone(), address.clone()],
        &["--steps", "8", "--net-timeout", "1"],
    ));
    let status = root
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the root hangs; output:\n{}", root.log()));
    let took = started.elapsed();
    let stderr = root.stderr();
    println!("after {took:?}: {stderr}");
    assert!(!status.success(), "{status}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(stderr.contains(&address), "{stderr}");
    // Let the worker give up on whatever it was doing, then serve.
    thread::sleep(Duration::from_millis(1500));
    worker.assert_serves_golden("after a root listed it twice");
}

// ---------------------------------------------------------------------------------------------
// A SIGSTOPped worker in a live 3-node SmolLM2 cluster.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_sigstopped_worker_is_named_by_the_root_and_the_others_serve_the_next_root() {
    let Some((model, tokenizer)) = smollm2() else {
        return;
    };
    let _turn = heavy();
    let w1 = Worker::start(&["--net-timeout", "2"]);
    let mut w2 = Worker::start(&["--net-timeout", "2"]);
    let mut root = Proc::spawn(&inference(
        model,
        tokenizer,
        &[w1.address(), w2.address()],
        &["--steps", "64", "--net-timeout", "2"],
    ));
    root.wait_line(Duration::from_secs(120), |l| l.starts_with("🔶 Pred"))
        .unwrap_or_else(|| panic!("no token; root:\n{}", root.log()));
    w2.proc.signal(libc::SIGSTOP);
    let stopped_at = Instant::now();
    // Nobody spins while they wait for the stopped worker.
    thread::sleep(Duration::from_millis(300));
    let (w1_before, root_before) = (w1.proc.cpu_time(), root.cpu_time());
    thread::sleep(Duration::from_millis(1200));
    let w1_spent = w1.proc.cpu_time().saturating_sub(w1_before);
    let root_spent = root.cpu_time().saturating_sub(root_before);
    println!("CPU over 1.2 s of the stall: worker 1 {w1_spent:?}, root {root_spent:?}");
    assert!(
        root_spent < Duration::from_millis(250),
        "the root spent {root_spent:?}"
    );
    let status = root.wait_exit(Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the root did not give up on the stopped worker; output:\n{}",
            root.log()
        )
    });
    let took = stopped_at.elapsed();
    let stderr = root.stderr();
    println!("root exited ({status}) {took:?} after the SIGSTOP: {stderr}");
    assert!(!status.success(), "{status}");
    assert!(
        took <= Duration::from_secs(2 + 4),
        "the root took {took:?} with --net-timeout 2"
    );
    let named = format!("node 2 at {}", w2.address());
    assert!(
        stderr.contains(&named) && !stderr.contains(&w1.address()),
        "the root's error must name the stopped worker ({named}), not the other one: {stderr}"
    );
    // The worker that kept running gave up on the session too. Stopped mid-forward, it waited
    // for its peer in a sync without spinning; if the stop came while it already waited for the
    // next control packet, dllama's turbo mode spins for about 1 s of CPU time before blocking.
    let e1 = w1.wait_error(1, Duration::from_secs(10)).text;
    println!("worker 1: {e1}");
    let w1_limit = if e1.contains("during sync") {
        assert!(
            e1.contains(&named),
            "worker 1 must name the stopped peer ({named}): {e1}"
        );
        Duration::from_millis(250)
    } else {
        Duration::from_millis(1300)
    };
    assert!(
        w1_spent < w1_limit,
        "worker 1 spent {w1_spent:?} while waiting ({e1})"
    );
    w1.assert_serves_golden("worker 1 after its peer was stopped");
    // The stopped one, once continued, notices the dead session and serves too.
    w2.proc.signal(libc::SIGCONT);
    let e2 = w2.wait_error(1, Duration::from_secs(10)).text;
    println!("worker 2 after SIGCONT: {e2}");
    w2.assert_serves_golden("worker 2 after SIGSTOP/SIGCONT");
    assert!(w2.proc.wait_exit(Duration::ZERO).is_none());
}

// ---------------------------------------------------------------------------------------------
// --allow-root.
// ---------------------------------------------------------------------------------------------

#[test]
fn allow_root_refuses_a_root_outside_the_list() {
    golden_or_skip!();
    let worker = Worker::start(&["--allow-root", "10.99.0.0/16"]);
    root_fails_naming(
        &golden_model(),
        &worker.address(),
        "5",
        Duration::from_secs(20),
    );
    let error = worker.wait_error(1, Duration::from_secs(5)).text;
    println!("worker: {error}");
    assert!(
        error.contains("connection from 127.0.0.1:")
            && error.contains("refused: not in --allow-root"),
        "{error}"
    );
    // A hand-made root: closed without a byte in reply (its handshake was never read).
    let mut raw = Conn::connect(worker.port);
    raw.send(&handshake(1, 0, &[]));
    let end = raw.wait_end(Duration::from_secs(5));
    assert!(
        matches!(end, Some(End::Eof(_) | End::Reset(_))),
        "not closed: {end:?}"
    );
    assert!(raw.received().is_empty(), "the refused root got bytes");
    let error = worker.wait_error(2, Duration::from_secs(5)).text;
    assert!(
        error.contains(&format!("connection from {} refused", raw.local)),
        "{error}"
    );
}

#[test]
fn allow_root_serves_a_listed_root() {
    golden_or_skip!();
    let worker = Worker::start(&["--allow-root", "127.0.0.1"]);
    worker.assert_serves_golden("--allow-root 127.0.0.1");
    let mut root = Proc::spawn(&inference(
        &golden_model(),
        &golden_tokenizer(),
        &[worker.address()],
        &["--steps", "8", "--net-timeout", "10"],
    ));
    let status = root
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the root hangs; output:\n{}", root.log()));
    assert!(status.success(), "{status}: {}", root.log());
    assert!(worker.errors().is_empty(), "{}", worker.proc.log());
}

/// The peers a root names must be allowed too: a worker told to connect to a host outside its
/// list refuses before connecting (the handshake cannot aim it at arbitrary machines).
#[test]
fn allow_root_refuses_a_named_peer_outside_the_list() {
    golden_or_skip!();
    let worker = Worker::start(&["--allow-root", "127.0.0.1", "--net-timeout", "5"]);
    let trap = TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    trap.set_nonblocking(true).expect("nonblocking");
    let trap_port = trap.local_addr().expect("addr").port();
    let mut root = Conn::connect(worker.port);
    // Worker 0 of 2 connects to worker 1, named here as 127.0.0.2.
    root.send(&handshake(2, 0, &[("127.0.0.2", trap_port)]));
    assert!(root.wait_received(4, Duration::from_secs(5)), "no ACK");
    root.send(&ACK);
    let end = root.wait_end(Duration::from_secs(5));
    assert!(end.is_some(), "the session was not dropped");
    let error = worker.wait_error(1, Duration::from_secs(5)).text;
    println!("worker: {error}");
    assert!(
        error.contains(&format!("127.0.0.2:{trap_port}"))
            && error.contains("named the peer worker")
            && error.contains("outside --allow-root")
            && error.contains("node 0 at 127.0.0.1:"),
        "{error}"
    );
    thread::sleep(Duration::from_millis(100));
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the worker connected to the peer outside its list"
    );
    worker.assert_serves_golden("after the refused peer");
}

/// A forged peer: a root whose handshake makes this worker (index 1 of 2) wait for worker 0
/// at 127.0.0.2. A connection from 127.0.0.1 (perhaps the real root's, which a forged
/// handshake would otherwise capture) is closed unread and the worker keeps waiting; the
/// connection from 127.0.0.2 is its peer, and the recorded 3-node session then runs byte for
/// byte on both links.
#[test]
fn a_forged_peer_is_closed_unread_and_the_named_peer_is_served() {
    golden_or_skip!();
    let dir = golden("llama-q40/3nodes");
    let read = |name: &str| std::fs::read(dir.join(name)).expect("golden stream");
    let mut root_stream = read("w1_c0_root.to_worker.bin");
    let root_expect = read("w1_c0_root.from_worker.bin");
    let peer_stream = read("w1_c1_worker0.to_worker.bin");
    let peer_expect = read("w1_c1_worker0.from_worker.bin");
    // Bytes 8..26: the one other worker, 127.0.0.1:29100 as recorded; name 127.0.0.2.
    assert_eq!(&root_stream[8..22], b"\x0a\x00\x00\x00127.0.0.1\0");
    root_stream[12..22].copy_from_slice(b"127.0.0.2\0");
    let peer_port = u32::from_le_bytes(root_stream[22..26].try_into().expect("4 bytes"));
    let hello_len = 26 + 4; // handshake and root-ready ACK

    let worker = Worker::start(&["--allow-root", "127.0.0.0/8", "--net-timeout", "10"]);
    let mut root = Conn::connect(worker.port);
    root.send(&root_stream[..hello_len]);
    assert!(root.wait_received(4, Duration::from_secs(5)), "no ACK");

    let mut intruder = Conn::connect_from(Ipv4Addr::new(127, 0, 0, 1), worker.port);
    intruder.send(&peer_stream[..4096]);
    let end = intruder.wait_end(Duration::from_secs(5));
    assert!(
        matches!(end, Some(End::Eof(_) | End::Reset(_))),
        "the connection from 127.0.0.1 was not closed: {end:?}; log:\n{}",
        worker.proc.log()
    );
    assert!(intruder.received().is_empty(), "the intruder got bytes");
    thread::sleep(Duration::from_millis(300));
    assert!(root.ended().is_none(), "the session was dropped");
    assert!(worker.errors().is_empty(), "{}", worker.proc.log());
    assert!(
        !worker.proc.log().contains("network initialised"),
        "the intruder was taken as the peer:\n{}",
        worker.proc.log()
    );

    let mut peer = Conn::connect_from(Ipv4Addr::new(127, 0, 0, 2), worker.port);
    worker
        .proc
        .wait_line(Duration::from_secs(5), |l| l == "network initialised")
        .unwrap_or_else(|| panic!("the named peer was not accepted:\n{}", worker.proc.log()));
    assert!(
        worker
            .proc
            .log()
            .contains(&format!("peer worker 127.0.0.2:{peer_port} accepted")),
        "{}",
        worker.proc.log()
    );
    // The worker now waits for the net config.
    thread::sleep(Duration::from_millis(300));
    assert!(root.ended().is_none() && peer.ended().is_none());
    assert_eq!(root.received_len(), 4, "only the handshake ACK so far");

    root.send(&root_stream[hello_len..]);
    peer.send(&peer_stream);
    let (root_end, peer_end) = (
        root.wait_end(Duration::from_secs(60)),
        peer.wait_end(Duration::from_secs(60)),
    );
    assert!(matches!(root_end, Some(End::Eof(_))), "{root_end:?}");
    assert!(matches!(peer_end, Some(End::Eof(_))), "{peer_end:?}");
    assert!(
        root.received() == root_expect,
        "root link: {} of {} bytes, or different bytes",
        root.received_len(),
        root_expect.len()
    );
    assert!(
        peer.received() == peer_expect,
        "peer link: {} of {} bytes, or different bytes",
        peer.received_len(),
        peer_expect.len()
    );
    assert!(worker.errors().is_empty(), "{}", worker.proc.log());
}

// ---------------------------------------------------------------------------------------------
// --max-memory.
// ---------------------------------------------------------------------------------------------

#[test]
fn max_memory_refusals_are_logged_and_named() {
    golden_or_skip!();
    const REFUSAL: &str = "more than the 65536 bytes allowed (--max-memory";
    let g = golden_2nodes();
    let worker = Worker::start(&["--max-memory", "64K"]);
    // The golden root: the configs are ACKed, then the graph is refused before allocating.
    let outcomes =
        replay_running(&g.scenario, 0, worker.port, Duration::from_secs(30)).expect("replay");
    let root = &outcomes[0];
    assert!(root.failure.is_some(), "the session ran: {root:?}");
    assert_eq!(root.received, 12, "three ACKs, then the worker hangs up");
    let error = worker.wait_error(1, Duration::from_secs(5)).text;
    println!("worker: {error}");
    assert!(error.contains(REFUSAL), "{error}");

    // A real root against it names the worker.
    root_fails_naming(
        &golden_model(),
        &worker.address(),
        "5",
        Duration::from_secs(20),
    );
    assert!(
        worker
            .wait_error(2, Duration::from_secs(5))
            .text
            .contains(REFUSAL)
    );

    // The root's own limit.
    let mut root = Proc::spawn(&inference(
        &golden_model(),
        &golden_tokenizer(),
        &[],
        &["--steps", "8", "--max-memory", "64K"],
    ));
    let status = root
        .wait_exit(Duration::from_secs(20))
        .expect("the root hangs");
    let stderr = root.stderr();
    println!("root --max-memory 64K: {stderr}");
    assert!(!status.success());
    assert!(stderr.contains(REFUSAL), "{stderr}");

    // A limit the session fits in changes nothing.
    let roomy = Worker::start(&["--max-memory", "16M"]);
    roomy.assert_serves_golden("--max-memory 16M");
}

// ---------------------------------------------------------------------------------------------
// kill -9 while loading leaves no file.
// ---------------------------------------------------------------------------------------------

/// Waits until process `pid` holds an open file under `dir` with at least `bytes` allocated
/// (the spill being written); returns its link text.
fn wait_for_spill(pid: u32, dir: &Path, bytes: u64, done: impl Fn() -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Some((link, _)) = open_files_under(pid, dir)
            .into_iter()
            .find(|(_, allocated)| *allocated >= bytes)
        {
            return link;
        }
        assert!(
            !done(),
            "loading ended before {bytes} bytes were spilled: the model is too small to interrupt"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no spill file under {} was written",
            dir.display()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn kill_9_of_a_worker_while_it_spills_leaves_no_file() {
    golden_or_skip!();
    let _turn = heavy();
    let model = big_model();
    let spill = scratch("kill9_worker");
    let spill_arg = spill.display().to_string();
    let mut worker = Worker::start(&[
        "--mem-budget",
        "8M",
        "--spill-dir",
        &spill_arg,
        "--net-timeout",
        "10",
    ]);
    let mut root = Proc::spawn(&inference(
        model,
        &golden_tokenizer(),
        &[worker.address()],
        &["--steps", "8", "--net-timeout", "10"],
    ));
    let link = wait_for_spill(worker.proc.pid(), &spill, 4 << 20, || {
        worker.proc.log().contains("weights loaded")
    });
    println!("spilling into {link}");
    assert!(
        link.ends_with("(deleted)"),
        "the spill file has a name: {link}"
    );
    worker.proc.signal(libc::SIGKILL);
    let status = worker
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        dir_entries(&spill).is_empty(),
        "left in --spill-dir: {:?}",
        dir_entries(&spill)
    );
    let status = root
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the root hangs; output:\n{}", root.log()));
    let stderr = root.stderr();
    println!("root: {stderr}");
    assert!(!status.success());
    assert!(stderr.contains(&worker.address()), "{stderr}");
}

/// A worker that cannot create its spill file refuses the session; the root's error names that
/// worker and says where the cause is, not only "Broken pipe while sending weights" (issue 13).
#[test]
fn a_worker_that_cannot_spill_is_named_with_where_to_look() {
    golden_or_skip!();
    let _turn = heavy();
    let model = big_model();
    // A directory below a regular file: no one, not even root, can create it.
    let blocker = scratch("unspillable").join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let missing = blocker.join("no-such-dir");
    let worker = Worker::start(&[
        "--mem-budget",
        "8M",
        "--spill-dir",
        &missing.display().to_string(),
        "--net-timeout",
        "10",
    ]);
    let stderr = root_fails_naming(model, &worker.address(), "10", Duration::from_secs(60));
    assert!(stderr.contains("its log says why"), "{stderr}");
    // The worker's own log names the directory it could not write.
    let log = worker.proc.log();
    assert!(log.contains("no-such-dir"), "worker log: {log}");
}

#[test]
fn kill_9_of_a_root_while_it_spills_leaves_no_file() {
    golden_or_skip!();
    let _turn = heavy();
    let model = big_model();
    let spill = scratch("kill9_root");
    let worker = Worker::start(&["--net-timeout", "10"]);
    let mut root = Proc::spawn(&inference(
        model,
        &golden_tokenizer(),
        &[worker.address()],
        &[
            "--steps",
            "8",
            "--net-timeout",
            "10",
            "--mem-budget",
            "8M",
            "--spill-dir",
            &spill.display().to_string(),
        ],
    ));
    let link = wait_for_spill(root.pid(), &spill, 4 << 20, || {
        root.log().contains("Weights loaded")
    });
    println!("spilling into {link}");
    assert!(
        link.ends_with("(deleted)"),
        "the spill file has a name: {link}"
    );
    root.signal(libc::SIGKILL);
    let status = root.wait_exit(Duration::from_secs(10)).expect("killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(
        dir_entries(&spill).is_empty(),
        "left in --spill-dir: {:?}",
        dir_entries(&spill)
    );
    // The worker noticed and serves the next root.
    let error = worker.wait_error(1, Duration::from_secs(10)).text;
    println!("worker: {error}");
    worker.assert_serves_golden("after its root was killed");
}

// ---------------------------------------------------------------------------------------------
// A model file truncated during a run.
// ---------------------------------------------------------------------------------------------

#[test]
fn a_model_truncated_under_a_streaming_root_is_an_error_naming_it() {
    golden_or_skip!();
    let _turn = heavy();
    let dir = scratch("truncated");
    let model = dir.join("copy.m");
    std::fs::copy(big_model(), &model).expect("copy the model");
    let spill = dir.join("spill");
    std::fs::create_dir_all(&spill).expect("spill dir");
    let worker = Worker::start(&["--net-timeout", "10"]);
    let mut root = Proc::spawn(&inference(
        &model,
        &golden_tokenizer(),
        &[worker.address()],
        &[
            "--steps",
            "64",
            "--net-timeout",
            "10",
            "--mem-budget",
            "8M",
            "--spill-dir",
            &spill.display().to_string(),
        ],
    ));
    root.wait_line(Duration::from_secs(60), |l| l.starts_with("🔶 Pred"))
        .unwrap_or_else(|| panic!("no token; root:\n{}", root.log()));
    // Keep only the header: every embedding row is now past the end of the file, so a read
    // through the map would raise SIGBUS.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&model)
        .and_then(|f| f.set_len(4096))
        .expect("truncate the model");
    let status = root
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the root kept running; output:\n{}", root.log()));
    let stderr = root.stderr();
    println!("root ({status}): {stderr}");
    assert_eq!(status.signal(), None, "killed by a signal: {}", root.log());
    assert!(!status.success());
    assert!(
        stderr.contains(&model.display().to_string())
            && stderr.contains("shrank")
            && stderr.contains("4096"),
        "the error must name the file and its sizes: {stderr}"
    );
    drop(worker);
}
