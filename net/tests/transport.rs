//! The socket transport between a root and a worker in one process, over loopback TCP.

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use airllama_net::transport::{ControlReader, Listener, NetError, Network};
use airllama_net::{
    ControlPacket, NetConfig, NodeConfig, PeerAddress, PipeConfig, SegmentConfig, Size3D,
    SyncConfig, SyncPlan, SyncType,
};

/// One pipe of `x` F32 values, synced three ways in one segment, on 2 nodes.
fn configs(x: u32, node_index: u32) -> (NetConfig, NodeConfig) {
    let net = NetConfig {
        n_batches: 1,
        n_nodes: 2,
        pipes: vec![PipeConfig {
            name: "P".into(),
            size: Size3D::new_2d(airllama_net::FloatType::F32, 1, x).unwrap(),
        }],
        pre_syncs: vec![],
    };
    let syncs = [
        SyncType::WithRoot,
        SyncType::NodeSlices,
        SyncType::NodeSlicesExceptRoot,
    ]
    .map(|sync_type| SyncConfig {
        pipe_index: 0,
        sync_type,
    })
    .to_vec();
    let node = NodeConfig {
        node_index,
        buffers: vec![],
        segments: vec![SegmentConfig { syncs, ops: vec![] }],
    };
    (net, node)
}

fn listener() -> (Listener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (Listener::from_std(l), port)
}

fn worker_address(port: u16) -> Vec<PeerAddress> {
    vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }]
}

/// Fills `pipe` with a pattern that depends on the node and the sync.
fn pattern(node: u32, sync: u32, pipe: &mut [u8]) {
    for (i, b) in pipe.iter_mut().enumerate() {
        *b = (i as u32)
            .wrapping_mul(31)
            .wrapping_add(node * 7 + sync * 101) as u8;
    }
}

/// Runs the three syncs of [`configs`] on one node; returns the pipe after each sync.
fn run_syncs(network: &mut Network, node_index: u32, x: u32) -> Vec<Vec<u8>> {
    let (net, node) = configs(x, node_index);
    let plan = SyncPlan::new(&net, &node).unwrap();
    let mut after = Vec::new();
    for (k, sync) in plan.syncs().iter().enumerate() {
        let mut pipe = vec![0u8; x as usize * 4];
        pattern(node_index, k as u32, &mut pipe);
        for step in plan.steps_of(*sync, 1) {
            network.sync_step(&step, &mut pipe).unwrap();
        }
        after.push(pipe);
    }
    after
}

/// Both nodes write 32 MiB slices to each other at once with blocking sockets, about what the
/// send and receive buffers of a loopback pair can hold at most (4 MiB + 32 MiB here, a few MiB
/// usually), where dllama's write-everything-then-read stalls. The exchange must finish with
/// the right bytes in the right places.
#[test]
fn large_slices_do_not_deadlock_and_land_in_place() {
    let x = 16 << 20; // 64 MiB rows: 32 MiB slices.
    let (listener, port) = listener();
    let worker = thread::spawn(move || {
        let mut session = listener.accept_root().unwrap();
        assert_eq!(session.handshake.node_index(), 1);
        assert!(!session.network.is_turbo());
        run_syncs(&mut session.network, 1, x)
    });
    let mut root = Network::connect_to_workers(&worker_address(port)).unwrap();
    // dllama resets the counters before inference; the handshake bytes are not counted.
    root.reset_stats();
    let root_after = run_syncs(&mut root, 0, x);
    let worker_after = worker.join().unwrap();

    let bytes = x as usize * 4;
    let half = bytes / 2;
    let mut root_sent = vec![vec![0u8; bytes]; 3];
    let mut worker_sent = vec![vec![0u8; bytes]; 3];
    for k in 0..3 {
        pattern(0, k as u32, &mut root_sent[k]);
        pattern(1, k as u32, &mut worker_sent[k]);
    }
    // WITH_ROOT: the worker got the root's whole row; the root kept its own.
    assert!(worker_after[0] == root_sent[0]);
    assert!(root_after[0] == root_sent[0]);
    // NODE_SLICES: each has its own slice and the other's.
    assert!(root_after[1][..half] == root_sent[1][..half]);
    assert!(root_after[1][half..] == worker_sent[1][half..]);
    assert!(worker_after[1][..half] == root_sent[1][..half]);
    assert!(worker_after[1][half..] == worker_sent[1][half..]);
    // EXCEPT_ROOT: only the root receives.
    assert!(root_after[2][half..] == worker_sent[2][half..]);
    assert!(worker_after[2] == worker_sent[2]);
    // Counters: per connection, what the plan says.
    let (net, node) = configs(x, 0);
    let plan = SyncPlan::new(&net, &node).unwrap();
    let (sent, received) = plan.forward_bytes(1, 0).unwrap();
    assert_eq!(root.stats(), vec![(sent, received)]);
    assert_eq!(
        (sent, received),
        (bytes as u64 + half as u64, 2 * half as u64)
    );
}

/// Turbo mode: on after a forward packet, back to blocking after the idle CPU time limit
/// passes without a packet; the stop packet ends the loop. A root that vanishes mid-forward
/// is a `Closed` error naming the root.
#[test]
fn turbo_switches_like_dllama_and_errors_name_the_peer() {
    let (listener, port) = listener();
    let worker = thread::spawn(move || {
        let (net, node) = configs(1024, 1);
        let mut session = listener.accept_root().unwrap();
        // dllama: 10000 attempts and 1 s of CPU time; shortened so that the test does not
        // depend on how busy the machine is.
        let mut control = ControlReader::new(true)
            .with_idle_limit(Duration::ZERO)
            .with_read_attempts(10);
        let first = control.next(&mut session.network, &net, &node).unwrap();
        assert_eq!(
            first,
            ControlPacket {
                position: 5,
                batch_size: 1
            }
        );
        assert!(session.network.is_turbo(), "turbo after a forward packet");
        let stop = control.next(&mut session.network, &net, &node).unwrap();
        assert!(stop.is_stop());
        assert!(
            !session.network.is_turbo(),
            "blocking again after the idle limit"
        );

        // Second session on the same listener: the root disappears during a forward.
        let mut session = listener.accept_root().unwrap();
        let mut control = ControlReader::new(false);
        let packet = control.next(&mut session.network, &net, &node).unwrap();
        assert!(!session.network.is_turbo(), "turbo disabled");
        let plan = SyncPlan::new(&net, &node).unwrap();
        let mut pipe = vec![0u8; 4096];
        let mut result = Ok(());
        for step in plan.forward(packet.batch_size).unwrap() {
            result = session.network.sync_step(&step, &mut pipe);
            if result.is_err() {
                break;
            }
        }
        match result {
            Err(NetError::Closed { peer, .. }) | Err(NetError::Io { peer, .. }) => {
                assert_eq!((peer.connection, peer.node), (0, 0));
                // Errors name the other end's address too.
                assert!(peer.addr.is_some_and(|a| a.ip().is_loopback()));
            }
            other => panic!("expected a closed connection, got {other:?}"),
        }
    });

    let mut root = Network::connect_to_workers(&worker_address(port)).unwrap();
    root.write_all(
        &ControlPacket {
            position: 5,
            batch_size: 1,
        }
        .to_bytes(),
    )
    .unwrap();
    // Let the worker give up spinning.
    thread::sleep(Duration::from_millis(1000));
    root.write_all(
        &ControlPacket {
            position: 5,
            batch_size: 0,
        }
        .to_bytes(),
    )
    .unwrap();
    drop(root);

    let mut root = Network::connect_to_workers(&worker_address(port)).unwrap();
    root.write_all(
        &ControlPacket {
            position: 0,
            batch_size: 1,
        }
        .to_bytes(),
    )
    .unwrap();
    drop(root);
    worker.join().unwrap();
}

/// A root waiting on two workers when both stop sending: one stalled, the other alive but
/// waiting on the stalled one. The live one gives up on its own time-out and hangs up; the
/// root's time-out must name the stalled worker, not the first connection that owed bytes.
#[test]
fn a_time_out_names_the_stalled_worker_not_the_one_that_gave_up() {
    let (l1, p1) = listener();
    let (l2, p2) = listener();
    let alive = thread::spawn(move || {
        let session = l1.accept_root().unwrap();
        // Waits "for its peer", then gives up and closes its connections.
        thread::sleep(Duration::from_millis(1500));
        drop(session);
    });
    let stalled = thread::spawn(move || {
        let session = l2.accept_root().unwrap();
        // Never sends; keeps its connections open past the root's time-out and grace.
        thread::sleep(Duration::from_millis(4000));
        drop(session);
    });
    let workers = [p1, p2].map(|port| PeerAddress {
        host: "127.0.0.1".into(),
        port,
    });
    let mut root = Network::connect_to_workers(&workers).unwrap();
    root.set_timeout(Some(Duration::from_secs(1))).unwrap();
    let (mut from_1, mut from_2) = ([0u8; 64], [0u8; 64]);
    let started = std::time::Instant::now();
    let result = root.exchange(None, &mut [(0, &mut from_1[..]), (1, &mut from_2[..])]);
    let took = started.elapsed();
    match result {
        Err(NetError::TimedOut { peer, .. }) => {
            assert_eq!((peer.connection, peer.node), (1, 2), "named {peer}");
        }
        other => panic!("expected a time-out, got {other:?}"),
    }
    // The time-out (1 s), then at most the grace (the time-out again).
    assert!(took < Duration::from_millis(2500), "took {took:?}");
    alive.join().unwrap();
    stalled.join().unwrap();
}
