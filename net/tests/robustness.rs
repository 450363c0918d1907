//! Hostile and broken inputs: every malformed message is a typed error (never a panic), and a
//! streaming reader that feeds a decoder exactly the bytes it asks for never reads past the
//! message.

#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

mod common;

use airllama_net::fuzzing;
use airllama_net::{
    ControlPacket, DecodeError, Handshake, NetConfig, NodeConfig, OpParams, PeerAddress, Size3D,
    SyncType, WeightHeader, WeightMessage,
};
use common::{read_golden, seeds};
use proptest::prelude::*;

fn configs() -> (Vec<u8>, NetConfig, NodeConfig) {
    let stream = read_golden("qwen3moe-q40/3nodes/w1_c0_root.to_worker.bin");
    let s = seeds(&stream);
    let (net, used) = NetConfig::decode_prefix(&s.node_config).unwrap();
    let node = NodeConfig::decode(&s.node_config[used..], &net).unwrap();
    (s.node_config, net, node)
}

fn encode_node(node: &NodeConfig) -> Vec<u8> {
    let mut out = Vec::new();
    node.encode(&mut out);
    out
}

#[test]
fn streaming_never_reads_past_a_message() {
    golden_or_skip!();
    let (bytes, net, _) = configs();
    let net_len = {
        let mut v = Vec::new();
        net.encode(&mut v);
        v.len()
    };
    let node_bytes = &bytes[net_len..];
    // Feed exactly what the decoder says is missing, starting from nothing.
    let mut have = 0usize;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match NodeConfig::decode_prefix(&node_bytes[..have], &net) {
            Ok((_, used)) => {
                assert_eq!(used, node_bytes.len());
                assert_eq!(
                    have,
                    node_bytes.len(),
                    "no byte past the message was requested"
                );
                break;
            }
            Err(e) => {
                let needed = e.needed().unwrap_or_else(|| panic!("{e}"));
                assert!(needed > 0);
                have += needed;
                assert!(
                    have <= node_bytes.len(),
                    "decoder asked for bytes past the message"
                );
            }
        }
    }
    assert!(attempts > 100);
}

#[test]
fn malformed_node_configs_are_typed_errors() {
    golden_or_skip!();
    let (_, net, node) = configs();

    let mut bad = node.clone();
    bad.segments[1].syncs[0].pipe_index = 99;
    assert!(matches!(
        NodeConfig::decode(&encode_node(&bad), &net),
        Err(DecodeError::IndexOutOfRange {
            context: "sync pipe index",
            ..
        })
    ));

    let mut bad = node.clone();
    bad.node_index = 3;
    assert!(matches!(
        NodeConfig::decode(&encode_node(&bad), &net),
        Err(DecodeError::IndexOutOfRange {
            context: "nodeIndex",
            ..
        })
    ));

    // An op reading a buffer that does not exist.
    let mut bad = node.clone();
    bad.segments[1].ops[0].input.index = bad.buffers.len() as u32;
    assert!(matches!(
        NodeConfig::decode(&encode_node(&bad), &net),
        Err(DecodeError::IndexOutOfRange { .. })
    ));

    // A matmul whose expert count contradicts its weight.
    let mut bad = node.clone();
    let (s, o) = bad
        .ops()
        .find(|(_, _, op)| matches!(op.params, OpParams::Matmul(m) if m.n_experts > 0))
        .map(|(s, o, _)| (s as usize, o as usize))
        .unwrap();
    if let OpParams::Matmul(m) = &mut bad.segments[s].ops[o].params {
        m.n_experts += 1;
    }
    assert!(matches!(
        NodeConfig::decode(&encode_node(&bad), &net),
        Err(DecodeError::Inconsistent { .. })
    ));

    // The byte layout: patch raw fields at computed offsets.
    let good = encode_node(&node);
    let mut prefix = node.clone();
    prefix.segments.clear();
    let p = encode_node(&prefix).len();
    let op0 = p + 8 + 8 * node.segments[0].syncs.len();
    // segment 0 of worker configs has no ops; find the first segment with ops.
    let first_with_ops = node
        .segments
        .iter()
        .position(|s| !s.ops.is_empty())
        .unwrap();
    let mut upto = node.clone();
    upto.segments.truncate(first_with_ops);
    let seg_at = encode_node(&upto).len();
    let code_at = seg_at + 8 + 8 * node.segments[first_with_ops].syncs.len();
    assert!(code_at >= op0);

    let mut raw = good.clone();
    raw[code_at..code_at + 4].copy_from_slice(&17u32.to_le_bytes());
    assert_eq!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::UnknownValue {
            context: "op code",
            value: 17
        })
    );

    // Weight Size3D nBytes off by one: code(4) index(4) then the Size3D; nBytes at +24.
    let mut raw = good.clone();
    let nbytes_at = code_at + 8 + 24;
    let v = u64::from_le_bytes(raw[nbytes_at..nbytes_at + 8].try_into().unwrap());
    raw[nbytes_at..nbytes_at + 8].copy_from_slice(&(v + 1).to_le_bytes());
    assert!(matches!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::Inconsistent {
            context: "op weight size"
        })
    ));

    // configSize that is not the struct's size (after code, index, Size3D).
    let mut raw = good.clone();
    let size_at = code_at + 8 + Size3D::WIRE_SIZE;
    let v = u32::from_le_bytes(raw[size_at..size_at + 4].try_into().unwrap());
    raw[size_at..size_at + 4].copy_from_slice(&(v + 4).to_le_bytes());
    assert!(matches!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::ConfigSize { .. })
    ));

    // Counts above the limits fail before anything is read for them.
    let mut raw = good.clone();
    raw[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::LimitExceeded {
            context: "nBuffers",
            ..
        })
    ));
    let mut raw = good.clone();
    raw[0] ^= 1;
    assert!(matches!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::BadAck { .. })
    ));
    let mut raw = good.clone();
    raw.push(0);
    assert_eq!(
        NodeConfig::decode(&raw, &net),
        Err(DecodeError::TrailingData {
            context: "node config",
            count: 1
        })
    );
}

#[test]
fn slice_syncs_must_divide_between_nodes() {
    golden_or_skip!();
    let (_, mut net, node) = configs();
    // ZQ rows are 612 bytes for 3 nodes; with 5 nodes they would not divide.
    net.n_nodes = 5;
    assert!(matches!(
        airllama_net::SyncPlan::new(&net, &node),
        Err(DecodeError::Inconsistent { .. })
    ));
    let syncs = node.segments.iter().flat_map(|s| &s.syncs);
    assert!(syncs.clone().any(|s| s.sync_type == SyncType::NodeSlices));
}

#[test]
fn weight_records_are_checked_before_their_data() {
    golden_or_skip!();
    let (_, _, node) = configs();
    let (_, _, op) = node
        .ops()
        .find(|(_, _, op)| op.weight_size.n_bytes() > 0)
        .unwrap();
    let ok = WeightHeader {
        name: op.name.clone(),
        op_index: op.index,
        offset: 0,
        n_bytes: op.weight_size.n_bytes(),
    };
    assert!(node.check_weight(&ok).is_ok());
    let too_big = WeightHeader {
        n_bytes: ok.n_bytes + 1,
        ..ok.clone()
    };
    assert!(matches!(
        node.check_weight(&too_big),
        Err(DecodeError::LimitExceeded { .. })
    ));
    let overflow = WeightHeader {
        offset: u64::MAX,
        ..ok.clone()
    };
    assert!(matches!(
        node.check_weight(&overflow),
        Err(DecodeError::LimitExceeded { .. })
    ));
    let unknown = WeightHeader {
        name: "nope".into(),
        ..ok.clone()
    };
    assert!(matches!(
        node.check_weight(&unknown),
        Err(DecodeError::Inconsistent { .. })
    ));
    let wrong_layer = WeightHeader {
        op_index: 999,
        ..ok.clone()
    };
    assert!(node.check_weight(&wrong_layer).is_err());

    // Header round trip and the terminator.
    let mut bytes = Vec::new();
    WeightMessage::Record(ok.clone()).encode(&mut bytes);
    assert_eq!(
        WeightMessage::decode_prefix(&bytes).unwrap(),
        (WeightMessage::Record(ok), bytes.len())
    );
    assert_eq!(
        WeightMessage::decode_prefix(&[0; 4]).unwrap(),
        (WeightMessage::End, 4)
    );
    // A name length over the limit is refused before its bytes are awaited.
    assert!(matches!(
        WeightMessage::decode_prefix(&0x1000u32.to_le_bytes()),
        Err(DecodeError::LimitExceeded { .. })
    ));
}

#[test]
fn malformed_handshakes_and_control_packets() {
    let hello = Handshake {
        n_workers: 3,
        worker_index: 1,
        peers: vec![
            PeerAddress {
                host: "10.0.0.1".into(),
                port: 9998,
            },
            PeerAddress {
                host: "10.0.0.3".into(),
                port: 9999,
            },
        ],
    };
    assert_eq!(hello.node_index(), 2);
    assert_eq!(hello.peer_node_index(0), 1);
    assert_eq!(hello.peer_node_index(1), 3);
    assert!(!hello.connects_to_peer(0));
    assert!(hello.connects_to_peer(1));
    let mut bytes = Vec::new();
    hello.encode(&mut bytes);
    assert_eq!(Handshake::decode(&bytes).unwrap(), hello);
    for cut in 0..bytes.len() {
        assert!(
            Handshake::decode(&bytes[..cut])
                .unwrap_err()
                .needed()
                .is_some()
        );
    }
    let mut bad = bytes.clone();
    bad[4..8].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        Handshake::decode(&bad),
        Err(DecodeError::IndexOutOfRange { .. })
    ));
    let mut bad = bytes.clone();
    bad[0..4].copy_from_slice(&0u32.to_le_bytes());
    assert!(Handshake::decode(&bad).is_err());
    let mut bad = bytes.clone();
    let port_at = 8 + 4 + 9;
    bad[port_at..port_at + 4].copy_from_slice(&70000u32.to_le_bytes());
    assert!(matches!(
        Handshake::decode(&bad),
        Err(DecodeError::LimitExceeded { .. })
    ));
    let mut bad = bytes.clone();
    bad[8 + 4 + 8] = b'x'; // the host's NUL
    assert!(matches!(
        Handshake::decode(&bad),
        Err(DecodeError::InvalidString { .. })
    ));

    let stop = ControlPacket::decode(&[7, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    assert!(stop.is_stop());
    assert_eq!(stop.position, 7);
    assert!(ControlPacket::decode(&[0; 7]).unwrap_err().needed() == Some(1));
    assert!(matches!(
        ControlPacket::decode(&[0; 9]),
        Err(DecodeError::TrailingData { .. })
    ));
}

fn mutate(seed: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for &(at, x) in flips {
        let i = at % v.len();
        v[i] ^= x | 1;
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Random corruption of a real session never panics the decoders (and anything that still
    /// decodes re-encodes to the same bytes, which the oracles assert).
    #[test]
    fn corrupted_sessions_never_panic(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6), cut in any::<usize>()) {
        if golden_support::golden().is_none() {
            return Ok(());
        }
        let stream = read_golden("qwen3moe-q40/3nodes/w1_c0_root.to_worker.bin");
        let s = seeds(&stream);
        let short = mutate(&s.root_stream, &flips);
        let _ = fuzzing::root_stream(&short);
        let _ = fuzzing::root_stream(&short[..cut % short.len()]);
        let node = mutate(&s.node_config, &flips);
        let _ = fuzzing::node_config(&node);
        let _ = fuzzing::net_config(&mutate(&s.net_config, &flips));
        let _ = fuzzing::handshake(&mutate(&s.handshake, &flips));
        let _ = fuzzing::weight_record(&mutate(&s.weight_records[0], &flips));
        let _ = fuzzing::control_packets(&mutate(&s.control_packets, &flips));
    }

    /// Arbitrary bytes never panic any oracle.
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = fuzzing::handshake(&data);
        let _ = fuzzing::net_config(&data);
        let _ = fuzzing::node_config(&data);
        let _ = fuzzing::weight_record(&data);
        let _ = fuzzing::control_packets(&data);
        let _ = fuzzing::root_stream(&data);
    }
}
