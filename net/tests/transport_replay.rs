//! Runs the socket transport as a worker against the recorded C++ sessions: a fake root (and
//! a fake peer worker for 3 nodes) sends the recorded input eagerly over real loopback TCP;
//! the worker side uses `Listener`, `WorkerSession`, `ControlReader` and the `SyncPlan`, and
//! instead of computing puts the recorded output slices into its pipes. Every byte the worker
//! sends must equal the recording, in order, and every weight record must land at its op.

#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use airllama_net::SyncPlan;
use airllama_net::fuzzing::root_stream;
use airllama_net::transport::{ControlReader, Listener, NetError};

fn golden(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).join(rel)
}

/// The worker side: one whole session on `listener`, sending `own_output` (the recorded
/// from_worker stream of the root connection, without its 16 ACK bytes) slice by slice.
/// Returns the weights as received, per (segment, op).
/// `inputs[c]` is what connection `c` is expected to deliver from the first control packet on
/// (the root stream then has an 8-byte control packet before each forward's data).
fn serve_one_session(
    listener: &Listener,
    own_output: &[u8],
    inputs: &[&[u8]],
) -> Result<Vec<Vec<Vec<u8>>>, NetError> {
    let mut session = listener.accept_root()?;
    let net = session.read_net_config()?;
    let node = session.read_node_config(&net)?;
    let mut weights: Vec<Vec<Vec<u8>>> = node
        .segments
        .iter()
        .map(|s| {
            s.ops
                .iter()
                .map(|op| vec![0u8; op.weight_size.n_bytes() as usize])
                .collect()
        })
        .collect();
    while let Some((_, target)) = session.next_weight(&node)? {
        let w = &mut weights[target.segment as usize][target.op as usize];
        let at = target.offset as usize;
        session.read_weight_data(&mut w[at..at + target.n_bytes as usize])?;
    }
    let plan = SyncPlan::new(&net, &node).unwrap();
    let mut pipes: Vec<Vec<u8>> = net
        .pipes
        .iter()
        .map(|p| vec![0u8; p.size.n_bytes() as usize])
        .collect();
    let mut control = ControlReader::new(true);
    let mut cursor = 0usize;
    let mut in_cursor = vec![0usize; inputs.len()];
    loop {
        let packet = control.next(&mut session.network, &net, &node)?;
        assert_eq!(
            &inputs[0][in_cursor[0]..in_cursor[0] + 8],
            packet.to_bytes()
        );
        in_cursor[0] += 8;
        if packet.is_stop() {
            break;
        }
        assert!(session.network.is_turbo(), "turbo after a forward packet");
        for step in plan.forward(packet.batch_size).unwrap() {
            let (offset, len, to) = step.sends();
            let pipe = &mut pipes[step.sync.pipe_index as usize];
            if !to.is_empty() && len > 0 {
                let (offset, len) = (offset as usize, len as usize);
                pipe[offset..offset + len].copy_from_slice(&own_output[cursor..cursor + len]);
                cursor += len;
            }
            session.network.sync_step(&step, pipe)?;
            for t in step.receives() {
                let c = t.connection as usize;
                let (offset, len) = (t.offset as usize, t.len as usize);
                assert!(
                    pipe[offset..offset + len] == inputs[c][in_cursor[c]..in_cursor[c] + len],
                    "received bytes of connection {c} misplaced"
                );
                in_cursor[c] += len;
            }
        }
    }
    assert_eq!(
        cursor,
        own_output.len(),
        "the worker sent its whole recorded output"
    );
    for (c, input) in inputs.iter().enumerate() {
        assert_eq!(
            in_cursor[c],
            input.len(),
            "connection {c} input fully consumed"
        );
    }
    Ok(weights)
}

fn read_to_end(mut s: TcpStream, first_four: Option<mpsc::Sender<()>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let mut signal = first_four;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() >= 4
            && let Some(tx) = signal.take()
        {
            let _ = tx.send(());
        }
    }
}

/// Replays `scenario` for worker `w` against the transport, `sessions` times on one listener.
fn replay(scenario: &str, w: u32, sessions: usize) {
    let dir = golden(scenario);
    let mut to_root = fs::read(dir.join(format!("w{w}_c0_root.to_worker.bin"))).unwrap();
    let from_root = fs::read(dir.join(format!("w{w}_c0_root.from_worker.bin"))).unwrap();
    let layout = root_stream(&to_root).unwrap();
    let three_nodes = dir.join("w1_c1_worker0.to_worker.bin").exists();

    let listener = Listener::from_std(TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();

    // Worker 0 of 3 connects to worker 1: listen for it and put our port in the handshake.
    let peer_listener = (three_nodes && w == 0).then(|| TcpListener::bind("127.0.0.1:0").unwrap());
    if let Some(l) = &peer_listener {
        let port = u32::from(l.local_addr().unwrap().port());
        // One other-worker entry: hostLen at 8, host "127.0.0.1\0" at 12, port at 22.
        to_root[22..26].copy_from_slice(&port.to_le_bytes());
    }

    for _ in 0..sessions {
        let input = to_root.clone();
        let (tx, rx) = mpsc::channel();
        let root = thread::spawn(move || {
            let stream = TcpStream::connect(addr).unwrap();
            let reader = stream.try_clone().unwrap();
            let reading = thread::spawn(move || read_to_end(reader, Some(tx)));
            let mut writer = stream;
            writer.write_all(&input).unwrap();
            reading.join().unwrap()
        });
        let peer = three_nodes.then(|| {
            let (send, expect) = if w == 0 {
                (
                    "w1_c1_worker0.from_worker.bin",
                    "w1_c1_worker0.to_worker.bin",
                )
            } else {
                (
                    "w1_c1_worker0.to_worker.bin",
                    "w1_c1_worker0.from_worker.bin",
                )
            };
            let send = fs::read(dir.join(send)).unwrap();
            let expect = fs::read(dir.join(expect)).unwrap();
            let peer_listener = peer_listener.as_ref().map(|l| l.try_clone().unwrap());
            thread::spawn(move || {
                let stream = match peer_listener {
                    Some(l) => l.accept().unwrap().0,
                    None => {
                        // Connect only once the worker ACKed the handshake, as the real
                        // worker 0 would (earlier, it would be taken for the root).
                        rx.recv().unwrap();
                        TcpStream::connect(addr).unwrap()
                    }
                };
                let reader = stream.try_clone().unwrap();
                let reading = thread::spawn(move || read_to_end(reader, None));
                let mut writer = stream;
                writer.write_all(&send).unwrap();
                let got = reading.join().unwrap();
                assert!(got == expect, "peer link bytes differ");
            })
        });
        let peer_input = if !three_nodes {
            Vec::new()
        } else if w == 0 {
            fs::read(dir.join("w1_c1_worker0.from_worker.bin")).unwrap()
        } else {
            fs::read(dir.join("w1_c1_worker0.to_worker.bin")).unwrap()
        };
        let mut inputs: Vec<&[u8]> = vec![&to_root[layout.inference_offset..]];
        if three_nodes {
            inputs.push(&peer_input);
        }
        let weights = serve_one_session(&listener, &from_root[16..], &inputs).unwrap();
        let got = root.join().unwrap();
        assert_eq!(
            got.len(),
            from_root.len(),
            "{scenario} w{w}: from_worker length"
        );
        assert!(
            got == from_root,
            "{scenario} w{w}: from_worker bytes differ"
        );
        if let Some(p) = peer {
            p.join().unwrap();
        }
        // Every weight record landed in its op's weight at its offset.
        let net = airllama_net::NetConfig::decode(
            &to_root[layout.net_config_offset..layout.node_config_offset],
        )
        .unwrap();
        let node = airllama_net::NodeConfig::decode(
            &to_root[layout.node_config_offset..layout.weights_offset],
            &net,
        )
        .unwrap();
        for &(record, data, n) in &layout.weight_records {
            let (msg, _) = airllama_net::WeightMessage::decode_prefix(&to_root[record..]).unwrap();
            let airllama_net::WeightMessage::Record(h) = msg else {
                panic!()
            };
            let t = node.check_weight(&h).unwrap();
            let w = &weights[t.segment as usize][t.op as usize];
            let at = t.offset as usize;
            assert!(w[at..at + n as usize] == to_root[data..data + n as usize]);
        }
    }
}

#[test]
fn replay_two_nodes_q40_twice_on_one_listener() {
    golden_or_skip!();
    replay("llama-q40/2nodes", 0, 2);
}

#[test]
fn replay_two_nodes_f32_batch1() {
    golden_or_skip!();
    replay("llama-f32/2nodes-batch1", 0, 1);
}

#[test]
fn replay_three_nodes_worker0_connects_to_worker1() {
    golden_or_skip!();
    replay("qwen3moe-q40/3nodes", 0, 1);
}

#[test]
fn replay_three_nodes_worker1_accepts_worker0() {
    golden_or_skip!();
    replay("llama-f32/3nodes", 1, 1);
}

#[test]
fn replay_long_session() {
    golden_or_skip!();
    replay("qwen3moe-q40/2nodes-long", 0, 1);
}

/// Both ends on this transport: the root side ([`Network::connect_to_workers`],
/// `send_configs`, `send_weight`, `finish_weights`, `send_control`, `sync_step` as node 0)
/// replays the recorded root, the worker side the recorded worker; each side checks every byte
/// it receives against the recording.
#[test]
fn root_and_worker_both_on_this_transport() {
    golden_or_skip!();
    use airllama_net::transport::Network;
    use airllama_net::{ControlPacket, NetConfig, NodeConfig, WeightMessage};

    let dir = golden("llama-q40/2nodes");
    let to_worker = fs::read(dir.join("w0_c0_root.to_worker.bin")).unwrap();
    let from_worker = fs::read(dir.join("w0_c0_root.from_worker.bin")).unwrap();
    let layout = root_stream(&to_worker).unwrap();
    let net =
        NetConfig::decode(&to_worker[layout.net_config_offset..layout.node_config_offset]).unwrap();
    let node = NodeConfig::decode(
        &to_worker[layout.node_config_offset..layout.weights_offset],
        &net,
    )
    .unwrap();

    let listener = Listener::from_std(TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let worker_output = from_worker[16..].to_vec();
    let worker_input = to_worker[layout.inference_offset..].to_vec();
    let worker = thread::spawn(move || {
        serve_one_session(&listener, &worker_output, &[&worker_input]).unwrap()
    });

    let mut root = Network::connect_to_workers(&[airllama_net::PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }])
    .unwrap();
    root.send_configs(0, &net, &node).unwrap();
    for &(record, data, n) in &layout.weight_records {
        let (msg, _) = WeightMessage::decode_prefix(&to_worker[record..]).unwrap();
        let WeightMessage::Record(h) = msg else {
            panic!()
        };
        root.send_weight(
            0,
            &h.name,
            h.op_index,
            h.offset,
            &to_worker[data..data + n as usize],
        )
        .unwrap();
    }
    root.finish_weights().unwrap();
    root.set_turbo(true).unwrap();

    // The root's plan: same syncs, node 0.
    let mut root_node = node.clone();
    root_node.node_index = 0;
    let plan = SyncPlan::new(&net, &root_node).unwrap();
    let mut pipes: Vec<Vec<u8>> = net
        .pipes
        .iter()
        .map(|p| vec![0u8; p.size.n_bytes() as usize])
        .collect();
    let mut out_cursor = 16usize;
    for &(offset, position, batch, _, _) in &layout.forwards {
        root.send_control(ControlPacket {
            position,
            batch_size: batch,
        })
        .unwrap();
        let mut in_cursor = offset + 8;
        for step in plan.forward(batch).unwrap() {
            let pipe = &mut pipes[step.sync.pipe_index as usize];
            let (at, len, to) = step.sends();
            if !to.is_empty() && len > 0 {
                let (at, len) = (at as usize, len as usize);
                pipe[at..at + len].copy_from_slice(&to_worker[in_cursor..in_cursor + len]);
                in_cursor += len;
            }
            root.sync_step(&step, pipe).unwrap();
            for t in step.receives() {
                let (at, len) = (t.offset as usize, t.len as usize);
                assert!(pipe[at..at + len] == from_worker[out_cursor..out_cursor + len]);
                out_cursor += len;
            }
        }
    }
    let (_, last_position) = layout.stop.unwrap();
    root.send_control(ControlPacket {
        position: last_position,
        batch_size: 0,
    })
    .unwrap();
    assert_eq!(out_cursor, from_worker.len());
    let weights = worker.join().unwrap();
    assert!(weights.iter().flatten().any(|w| w.iter().any(|&b| b != 0)));
    drop(root);
}

/// Every recorded worker stream (all variants and scenarios, both workers of 3 nodes).
#[test]
fn replay_every_recorded_worker() {
    golden_or_skip!();
    let mut n = 0;
    let root = golden("");
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|v| v.path().is_dir())
        .flat_map(|v| fs::read_dir(v.path()).unwrap().flatten())
        .map(|s| s.path())
        .filter(|s| s.join("manifest.json").is_file())
        .collect();
    dirs.sort();
    for dir in dirs {
        let rel = dir
            .strip_prefix(&root)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for w in 0..2 {
            if dir.join(format!("w{w}_c0_root.to_worker.bin")).exists() {
                replay(&rel, w, 1);
                n += 1;
            }
        }
    }
    assert_eq!(n, 23);
}
