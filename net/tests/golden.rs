//! Decodes every recorded root→worker stream in `../shared/golden` with the codec and checks
//! the result against the layout the recording tool wrote into `manifest.json`, and that every
//! message re-encodes to the recorded bytes.

#[macro_use]
#[path = "../../tests/golden_support/mod.rs"]
mod golden_support;

use std::fs;
use std::path::{Path, PathBuf};

use airllama_net::fuzzing::root_stream;
use airllama_net::{
    ControlPacket, Handshake, NetConfig, NodeConfig, OpParams, SyncPlan, SyncType, decode_ack,
};
use serde_json::Value;

fn golden_root() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).to_path_buf()
}

/// Every scenario folder (`<variant>/<scenario>` with a manifest).
fn scenarios() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = golden_root();
    let variants = fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    for variant in variants.flatten() {
        if !variant.path().is_dir() {
            continue;
        }
        for scenario in fs::read_dir(variant.path()).unwrap().flatten() {
            if scenario.path().join("manifest.json").is_file() {
                out.push(scenario.path());
            }
        }
    }
    out.sort();
    assert!(
        out.len() >= 19,
        "expected the golden scenarios, found {}",
        out.len()
    );
    out
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn sync_name(t: SyncType) -> &'static str {
    match t {
        SyncType::WithRoot => "SYNC_WITH_ROOT",
        SyncType::NodeSlices => "SYNC_NODE_SLICES",
        SyncType::NodeSlicesExceptRoot => "SYNC_NODE_SLICES_EXCEPT_ROOT",
    }
}

#[test]
fn every_root_stream_decodes_and_matches_the_manifest() {
    golden_or_skip!();
    let mut checked = 0;
    for dir in scenarios() {
        let manifest: Value =
            serde_json::from_slice(&fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        let layouts = manifest["layout"].as_object().unwrap();
        for (key, lay) in layouts {
            let w: u32 = key.trim_start_matches("worker").parse().unwrap();
            let what = format!("{} {key}", dir.display());
            let to = fs::read(dir.join(format!("w{w}_c0_root.to_worker.bin"))).unwrap();
            let from = fs::read(dir.join(format!("w{w}_c0_root.from_worker.bin"))).unwrap();
            let got = root_stream(&to).unwrap_or_else(|e| panic!("{what}: {e}"));

            assert_eq!(
                got.handshake_len as u64,
                u(&lay["handshake"]["length"]),
                "{what}"
            );
            let (hello, _) = Handshake::decode_prefix(&to).unwrap();
            assert_eq!(
                u64::from(hello.worker_index),
                u(&lay["handshake"]["worker_index"])
            );
            assert_eq!(
                u64::from(hello.n_workers),
                u(&lay["handshake"]["n_sockets"])
            );
            for (peer, want) in hello
                .peers
                .iter()
                .zip(lay["handshake"]["peers"].as_array().unwrap())
            {
                assert_eq!(peer.host, want["host"].as_str().unwrap());
                assert_eq!(u64::from(peer.port), u(&want["port"]));
            }
            assert_eq!(
                got.net_config_offset as u64,
                u(&lay["net_config"]["offset"]),
                "{what}"
            );
            assert_eq!(
                got.node_config_offset as u64,
                u(&lay["node_config"]["offset"]),
                "{what}"
            );
            assert_eq!(
                (got.node_config_offset - got.net_config_offset) as u64,
                u(&lay["net_config"]["length"])
            );
            assert_eq!(
                (got.weights_offset - got.node_config_offset) as u64,
                u(&lay["node_config"]["length"])
            );
            assert_eq!(
                got.weights_offset as u64,
                u(&lay["weights"]["offset"]),
                "{what}"
            );

            let records = lay["weights"]["records"].as_array().unwrap();
            assert_eq!(got.weight_records.len(), records.len(), "{what}");
            for (g, want) in got.weight_records.iter().zip(records) {
                assert_eq!(g.0 as u64, u(&want["record_offset"]), "{what}");
                assert_eq!(g.1 as u64, u(&want["data_offset"]), "{what}");
                assert_eq!(g.2, u(&want["nBytes"]), "{what}");
            }
            assert_eq!(
                got.inference_offset as u64,
                u(&lay["inference_offset"]),
                "{what}"
            );

            let forwards = lay["forwards"].as_array().unwrap();
            assert_eq!(got.forwards.len(), forwards.len(), "{what}");
            let mut out_at = 16u64;
            for (g, want) in got.forwards.iter().zip(forwards) {
                assert_eq!(g.0 as u64, u(&want["offset"]), "{what}");
                assert_eq!(u64::from(g.1), u(&want["position"]), "{what}");
                assert_eq!(u64::from(g.2), u(&want["batch"]), "{what}");
                assert_eq!(g.3, u(&want["in_bytes"]), "{what}");
                assert_eq!(g.4, u(&want["out_bytes"]), "{what}");
                assert_eq!(out_at, u(&want["out_offset"]), "{what}");
                out_at += g.4;
            }
            let stop = got.stop.unwrap();
            assert_eq!(stop.0 as u64, u(&lay["stop_packet"]["offset"]), "{what}");
            assert_eq!(
                u64::from(stop.1),
                u(&lay["stop_packet"]["position"]),
                "{what}"
            );

            // worker → root: four ACKs, then exactly the planned forward outputs.
            for ack in from.chunks(4).take(4) {
                decode_ack(ack).unwrap();
            }
            assert_eq!(out_at, from.len() as u64, "{what}: from_worker length");

            // The sync plan as the manifest lists it.
            let net =
                NetConfig::decode(&to[got.net_config_offset..got.node_config_offset]).unwrap();
            let node =
                NodeConfig::decode(&to[got.node_config_offset..got.weights_offset], &net).unwrap();
            let plan = SyncPlan::new(&net, &node).unwrap();
            let want_plan = lay["sync_plan_per_batch_item"].as_array().unwrap();
            assert_eq!(plan.syncs().len(), want_plan.len(), "{what}");
            for (s, want) in plan.syncs().iter().zip(want_plan) {
                assert_eq!(u64::from(s.segment), u(&want["segment"]));
                assert_eq!(
                    net.pipes[s.pipe_index as usize].name,
                    want["pipe"].as_str().unwrap()
                );
                assert_eq!(sync_name(s.sync_type), want["sync"].as_str().unwrap());
                assert_eq!(s.row_bytes, u(&want["pipe_batch_bytes"]));
                assert_eq!(s.slice_bytes, u(&want["slice_bytes"]));
            }
            // Every op has a type combination dllama supports.
            for (_, _, op) in node.ops() {
                op.quant_type(&net, &node.buffers)
                    .unwrap_or_else(|e| panic!("{what}: {} {}: {e}", op.name, op.index));
            }
            // One-byte configs of empty structs are kept as received.
            let empties: Vec<u8> = node
                .ops()
                .filter_map(|(_, _, op)| match op.params {
                    OpParams::MergeAdd(e)
                    | OpParams::MergeSum(e)
                    | OpParams::Cast(e)
                    | OpParams::Silu(e)
                    | OpParams::RepeatZ(e)
                    | OpParams::Softmax(e) => e.raw,
                    _ => None,
                })
                .collect();
            let want_empties = lay["one_byte_empty_op_configs"].as_array().unwrap();
            assert_eq!(empties.len(), want_empties.len(), "{what}");
            for (g, want) in empties.iter().zip(want_empties) {
                assert_eq!(u64::from(*g), u(&want["value"]));
                assert_eq!(to[u(&want["offset"]) as usize], *g);
            }

            // Worker ↔ worker links: the plan's per-connection totals equal the recordings.
            if w == 1 {
                let peer_to = fs::metadata(dir.join("w1_c1_worker0.to_worker.bin"))
                    .unwrap()
                    .len();
                let peer_from = fs::metadata(dir.join("w1_c1_worker0.from_worker.bin"))
                    .unwrap()
                    .len();
                // Worker 1 is node 2; its connection 1 leads to node 1 (worker 0).
                let total = got.peer_totals.iter().find(|t| t.0 == 1).unwrap();
                assert_eq!((total.1, total.2), (peer_from, peer_to), "{what}");
            }
            for link in lay["peer_links"].as_array().unwrap() {
                let total = got.peer_totals.iter().find(|t| t.0 == 1).unwrap();
                assert_eq!(total.2, u(&link["to_worker_bytes"]), "{what}");
                assert_eq!(total.1, u(&link["from_worker_bytes"]), "{what}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 23, "checked {checked} worker streams");
}

#[test]
fn forward_control_packets_are_checked_against_the_configs() {
    golden_or_skip!();
    let dir = golden_root().join("llama-q40/2nodes");
    let to = fs::read(dir.join("w0_c0_root.to_worker.bin")).unwrap();
    let got = root_stream(&to).unwrap();
    let net = NetConfig::decode(&to[got.net_config_offset..got.node_config_offset]).unwrap();
    let node = NodeConfig::decode(&to[got.node_config_offset..got.weights_offset], &net).unwrap();
    assert_eq!(node.seq_len(), Some(256));
    let ok = ControlPacket {
        position: 224,
        batch_size: 32,
    };
    assert!(ok.check(&net, &node).is_ok());
    let too_far = ControlPacket {
        position: 225,
        batch_size: 32,
    };
    assert!(too_far.check(&net, &node).is_err());
    let too_big = ControlPacket {
        position: 0,
        batch_size: 33,
    };
    assert!(too_big.check(&net, &node).is_err());
}
