//! A running `airllama worker` fed truncated, oversized, garbage and semantically invalid
//! configs must log what was wrong, drop that session, and then serve a correct session: the
//! recorded `llama-q40/2nodes` replay passes on the same process afterwards.
#[macro_use]
mod golden_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use airllama::replay::{Scenario, free_port, port_is_listening, replay_running};
use airllama_net::{NetConfig, NodeConfig, OpParams, PointerSource};

const ACK: [u8; 4] = 23_571_114u32.to_le_bytes();

fn scenario_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/llama-q40/2nodes"
    ))
}

/// The worker under test; killed on drop.
struct Worker {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    port: u16,
}

impl Worker {
    fn start() -> Worker {
        let port = free_port().expect("free port");
        let mut child = Command::new(env!("CARGO_BIN_EXE_airllama"))
            .args([
                "worker",
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--nthreads",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the worker");
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("log").push(line);
            }
        });
        let t0 = Instant::now();
        while !port_is_listening(port) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the worker never listened"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Worker { child, log, port }
    }

    fn errors(&self) -> Vec<String> {
        self.log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| l.starts_with("error:"))
            .cloned()
            .collect()
    }

    /// Waits until the worker has logged `n` errors; returns the last one.
    fn wait_for_error(&self, n: usize) -> String {
        let t0 = Instant::now();
        loop {
            let errors = self.errors();
            if errors.len() >= n {
                return errors[n - 1].clone();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no error logged; log: {:?}",
                self.log.lock().expect("log")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects as a root of a 2-node cluster, says hello, and returns the socket after the root-ready ACK.
fn hello(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    s.write_all(&[1, 0, 0, 0, 0, 0, 0, 0]).expect("handshake");
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).expect("handshake ACK");
    assert_eq!(ack, ACK);
    s.write_all(&ACK).expect("root ready");
    s
}

/// Sends `bytes` after the hello (ignoring write errors: the worker may hang up early), then
/// requires the worker to close the connection; returns what it sent before closing.
fn send_and_expect_close(port: u16, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = hello(port);
    let _ = s.write_all(bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok()
            || matches!(
                r.as_ref().map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionReset)
            ),
        "the worker did not close the connection: {r:?}"
    );
    got
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn bad_configs_are_logged_and_the_worker_keeps_serving() {
    golden_or_skip!();
    let scenario = Scenario::load(&scenario_dir()).expect("golden scenario");
    let stream = std::fs::read(scenario_dir().join("w0_c0_root.to_worker.bin")).expect("stream");
    let net_at = 12;
    let (net, net_len) = NetConfig::decode_prefix(&stream[net_at..]).expect("golden net config");
    let node_at = net_at + net_len;
    let (node, node_len) =
        NodeConfig::decode_prefix(&stream[node_at..], &net).expect("golden node config");

    let worker = Worker::start();
    let mut n_errors = 0;

    // Truncated: half of the net config, then the root hangs up.
    let got = send_and_expect_close(worker.port, &stream[net_at..net_at + net_len / 2], true);
    assert!(got.is_empty());
    n_errors += 1;
    println!("truncated: {}", worker.wait_for_error(n_errors));

    // Oversized: a net config announcing 2^31 pipes.
    let got = send_and_expect_close(worker.port, &u32s(&[23_571_114, 32, 2, 0x8000_0000]), false);
    assert!(got.is_empty());
    n_errors += 1;
    println!("oversized count: {}", worker.wait_for_error(n_errors));

    // Oversized: a pipe name of 4 GB.
    let mut big_name = u32s(&[23_571_114, 32, 2, 1]);
    big_name.extend_from_slice(&stream[net_at + 16..net_at + 56]);
    big_name.extend_from_slice(&u32s(&[0xffff_fff0]));
    send_and_expect_close(worker.port, &big_name, false);
    n_errors += 1;
    println!("oversized name: {}", worker.wait_for_error(n_errors));

    // Garbage instead of a net config.
    let garbage: Vec<u8> = (0..256u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    send_and_expect_close(worker.port, &garbage, false);
    n_errors += 1;
    println!("garbage: {}", worker.wait_for_error(n_errors));

    // A node config that decodes but cannot run: the first RMS norm reads its inverse RMS from
    // its own input buffer.
    let mut bad = node.clone();
    let target = bad
        .segments
        .iter_mut()
        .flat_map(|s| s.ops.iter_mut())
        .find(|op| {
            matches!(op.params, OpParams::RmsNorm(_)) && op.input.source == PointerSource::Buffer
        })
        .expect("an rms norm op");
    let input_buffer = target.input.index;
    if let OpParams::RmsNorm(c) = &mut target.params {
        c.inv_rms_buffer_index = input_buffer;
    }
    let mut bytes = stream[net_at..node_at].to_vec();
    bad.encode(&mut bytes);
    bytes.extend_from_slice(&stream[node_at + node_len..]);
    let got = send_and_expect_close(worker.port, &bytes, false);
    assert_eq!(
        got,
        [ACK, ACK].concat(),
        "net and node config are ACKed before the graph is built"
    );
    n_errors += 1;
    let error = worker.wait_for_error(n_errors);
    println!("unrunnable graph: {error}");
    assert!(
        error.contains("block_norm"),
        "the error names the op: {error}"
    );

    // After all that, a correct session on the same process is byte-identical.
    let outcomes =
        replay_running(&scenario, 0, worker.port, Duration::from_secs(300)).expect("replay");
    for o in &outcomes {
        assert!(o.failure.is_none(), "after the bad sessions: {o:?}");
    }
    assert_eq!(
        worker.errors().len(),
        n_errors,
        "the good session logged no error"
    );
}
