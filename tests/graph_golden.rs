//! The graph builder against every recorded C++ root in `../shared/golden`: for each scenario,
//! the configs built from `model.m`'s header and the manifest's flags (nodes,
//! `--buffer-float-type`, `--max-seq-len`) must encode to exactly the net config and node config
//! bytes the root sent each worker, and the weight plan must give exactly the weight records
//! (headers, data read from `model.m` through the layout table, order, terminator) it sent.
//!
//! Bytes dllama never initialises are compared as the README says: the 1-byte configs of ops
//! with an empty C struct are what our encoder emits (0) and must be recorded as 0 (at the
//! offsets the manifest lists); the unset falcon RoPE slice fields are 0 in x86 recordings and
//! must match there, while the aarch64 recordings hold stack garbage in them, so those bytes
//! alone are skipped for `*-neon*` scenarios.
#[macro_use]
mod golden_support;

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_net::{NetConfig, NodeConfig, OpParams, SyncPlan};
use serde_json::Value;

mod graph_support;
use graph_support::{undefined_bytes, zero_undefined};

fn golden() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")).to_path_buf()
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn span(v: &Value) -> Range<usize> {
    let offset = num(&v["offset"]) as usize;
    offset..offset + num(&v["length"]) as usize
}

/// The value of `--flag` in a command line.
fn flag<'a>(command: &'a str, name: &str) -> Option<&'a str> {
    let mut words = command.split_whitespace();
    words.find(|w| *w == name)?;
    words.next()
}

/// The scenarios of each variant, as the golden README lists them.
const SCENARIOS: [(&str, &[&str]); 4] = [
    (
        "llama-q40",
        &[
            "2nodes",
            "3nodes",
            "2nodes-neon",
            "2nodes-neon-dotprod",
            "2nodes-long",
        ],
    ),
    (
        "llama-f32",
        &[
            "2nodes",
            "3nodes",
            "2nodes-batch1",
            "2nodes-avx2",
            "2nodes-neon",
            "2nodes-neon-dotprod",
        ],
    ),
    (
        "qwen3-q40",
        &["2nodes", "3nodes", "2nodes-neon", "2nodes-neon-dotprod"],
    ),
    (
        "qwen3moe-q40",
        &["2nodes", "3nodes", "2nodes-neon", "2nodes-long"],
    ),
];

/// Everything one scenario checks; returns the number of worker streams compared.
fn check_scenario(variant: &str, scenario: &str) -> usize {
    let what = format!("{variant}/{scenario}");
    let dir = golden().join(variant).join(scenario);
    let manifest: Value = serde_json::from_slice(&read(&dir.join("manifest.json"))).unwrap();
    let root_command = manifest["commands"]["root"].as_str().unwrap();
    let n_nodes = num(&manifest["n_nodes"]) as u32;
    let n_workers = num(&manifest["n_workers"]) as u32;
    assert_eq!(n_nodes, n_workers + 1, "{what}");
    let sync_flag = manifest["buffer_float_type"].as_str().unwrap();
    assert_eq!(
        flag(root_command, "--buffer-float-type"),
        Some(sync_flag),
        "{what}"
    );
    let sync = SyncFloatType::from_flag(sync_flag).unwrap();
    let max_seq_len: u32 = flag(root_command, "--max-seq-len").map_or(0, |v| v.parse().unwrap());

    let model = read(&golden().join(variant).join("model.m"));
    let header = ModelHeader::parse(&model).unwrap();
    let graph = LlmGraph::build(&header, GraphParams::dllama(n_nodes, sync, max_seq_len))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(graph.nodes.len(), n_nodes as usize);
    let layout = ModelLayout::new(&header, model.len() as u64).unwrap();
    let plan = WeightPlan::new(&graph, &layout).unwrap_or_else(|e| panic!("{what}: {e}"));
    let aarch64 = scenario.contains("neon");
    let falcon = graph.config.arch.has_qk_norm();

    let mut net_bytes = Vec::new();
    graph.net.encode(&mut net_bytes);

    for w in 0..n_workers {
        let node = w + 1;
        let what = format!("{what} worker {w}");
        let stream = read(&dir.join(format!("w{w}_c0_root.to_worker.bin")));
        let lay = &manifest["layout"][format!("worker{w}")];
        assert_eq!(num(&lay["node_index"]), u64::from(node), "{what}");

        // Net config: fully defined, byte for byte.
        assert_eq!(
            net_bytes,
            stream[span(&lay["net_config"])],
            "{what}: net config"
        );

        // Node config.
        let config = &graph.nodes[node as usize];
        let mut ours = Vec::new();
        config.encode(&mut ours);
        let at = span(&lay["node_config"]);
        let recorded = &stream[at.clone()];
        assert_eq!(ours.len(), recorded.len(), "{what}: node config length");
        let (empty, rope) = undefined_bytes(config);
        for (i, (a, b)) in ours.iter().zip(recorded).enumerate() {
            if rope.contains(&i) && aarch64 {
                continue; // uninitialised stack bytes on the recording build
            }
            assert_eq!(
                a,
                b,
                "{what}: node config byte {i} (stream offset {})",
                at.start + i
            );
        }
        // The empty-config bytes are exactly the ones the manifest lists, all recorded as 0,
        // and we emit 0 there.
        let listed: Vec<(usize, u64)> = lay["one_byte_empty_op_configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (num(&e["offset"]) as usize, num(&e["value"])))
            .collect();
        let found: Vec<(usize, u64)> = empty
            .iter()
            .map(|&i| (at.start + i, u64::from(recorded[i])))
            .collect();
        assert_eq!(found, listed, "{what}: empty op config bytes");
        assert!(empty.iter().all(|&i| ours[i] == 0 && recorded[i] == 0));
        // Falcon rope: 5 unset u32 fields in each of the 2 ROPE ops per layer.
        let rope_bytes = if falcon {
            5 * 4 * 2 * graph.config.n_layers as usize
        } else {
            0
        };
        assert_eq!(rope.len(), rope_bytes, "{what}: unset rope slice bytes");

        // What a worker decodes from the recorded bytes is what we built, except the bytes the
        // aarch64 build leaves as garbage.
        let net = NetConfig::decode(&stream[span(&lay["net_config"])]).unwrap();
        assert_eq!(net, graph.net);
        let mut decoded = NodeConfig::decode(recorded, &net).unwrap();
        zero_undefined(&mut decoded);
        assert_eq!(&decoded, config, "{what}: decoded node config");

        // Weights: the records in order, and the whole stream segment byte for byte.
        let records = lay["weights"]["records"].as_array().unwrap();
        let loads: Vec<_> = plan.node_loads(node).collect();
        assert_eq!(loads.len(), records.len(), "{what}: weight record count");
        assert_eq!(
            loads.len() as u64,
            num(&lay["weights"]["n_records"]),
            "{what}"
        );
        for (load, record) in loads.iter().zip(records) {
            let h = &load.header;
            assert_eq!(h.name, record["name"].as_str().unwrap(), "{what}");
            assert_eq!(u64::from(h.op_index), num(&record["index"]), "{what}");
            assert_eq!(h.offset, num(&record["offset"]), "{what} {}", h.name);
            assert_eq!(h.n_bytes, num(&record["nBytes"]), "{what} {}", h.name);
        }
        let mut weights = Vec::new();
        plan.encode_node_stream(node, &model, &mut weights).unwrap();
        let at = span(&lay["weights"]);
        assert_eq!(
            at.end,
            num(&lay["weights"]["end_marker_offset"]) as usize + 4
        );
        assert!(
            weights == stream[at.clone()],
            "{what}: weight stream differs from byte {:?}",
            weights
                .iter()
                .zip(&stream[at.clone()])
                .position(|(a, b)| a != b)
                .map(|p| at.start + p)
        );
    }

    check_root(&graph, &plan, &what);
    n_workers as usize
}

/// The root's config cannot be compared with a stream: check it is what a worker would accept,
/// that it differs from worker 1's only where dllama makes them differ, and that the plan gives
/// the root the embedding and its own slice of everything else.
fn check_root(graph: &LlmGraph, plan: &WeightPlan, what: &str) {
    let root = &graph.nodes[0];
    let mut bytes = Vec::new();
    root.encode(&mut bytes);
    assert_eq!(
        &NodeConfig::decode(&bytes, &graph.net).unwrap(),
        root,
        "{what}"
    );
    SyncPlan::new(&graph.net, root).unwrap();

    let mut worker = graph.nodes[1].clone();
    let mut root_like = root.clone();
    let embedding = root_like.segments[0].ops.remove(0);
    assert_eq!(embedding.name, "embedding");
    assert!(matches!(embedding.params, OpParams::Embedding(_)));
    worker.node_index = 0;
    // Llama rope slices (and so the rope cache size) depend on the node; align them before
    // comparing the rest.
    for (r, w) in root_like.buffers.iter().zip(worker.buffers.iter_mut()) {
        if r.name == "rope_cache" {
            w.size = r.size;
        }
    }
    for (r, w) in root_like.segments.iter().zip(worker.segments.iter_mut()) {
        for (ro, wo) in r.ops.iter().zip(w.ops.iter_mut()) {
            if let (OpParams::Rope(rc), OpParams::Rope(wc)) = (&ro.params, &mut wo.params) {
                wc.slice = rc.slice;
                wc.cache_size = rc.cache_size;
            }
        }
    }
    assert!(root_like == worker, "{what}: root vs worker config");

    let root_loads: Vec<_> = plan.node_loads(0).collect();
    assert_eq!(root_loads[0].header.name, "embedding");
    assert_eq!(
        root_loads[0].header.n_bytes,
        embedding.weight_size.n_bytes()
    );
    // The root holds one record more than a worker (the embedding), and the same byte count as
    // a worker plus the embedding.
    assert_eq!(root_loads.len(), plan.node_loads(1).count() + 1, "{what}");
    assert_eq!(
        plan.node_bytes(0),
        plan.node_bytes(1) + embedding.weight_size.n_bytes(),
        "{what}"
    );
}

fn check_variant(variant: &str) {
    let (_, scenarios) = SCENARIOS.iter().find(|(v, _)| *v == variant).unwrap();
    let mut streams = 0;
    for scenario in *scenarios {
        streams += check_scenario(variant, scenario);
    }
    assert!(streams >= scenarios.len());
}

#[test]
fn llama_q40_matches_every_recorded_root() {
    golden_or_skip!();
    check_variant("llama-q40");
}

#[test]
fn llama_f32_matches_every_recorded_root() {
    golden_or_skip!();
    check_variant("llama-f32");
}

#[test]
fn qwen3_q40_matches_every_recorded_root() {
    golden_or_skip!();
    check_variant("qwen3-q40");
}

#[test]
fn qwen3moe_q40_matches_every_recorded_root() {
    golden_or_skip!();
    check_variant("qwen3moe-q40");
}

/// The lists above cover every scenario folder on disk, so a new recording is not skipped.
#[test]
fn every_golden_scenario_is_listed() {
    golden_or_skip!();
    let mut on_disk = Vec::new();
    for variant in fs::read_dir(golden()).unwrap().flatten() {
        if !variant.path().is_dir() {
            continue;
        }
        for scenario in fs::read_dir(variant.path()).unwrap().flatten() {
            if scenario.path().join("manifest.json").is_file() {
                on_disk.push(format!(
                    "{}/{}",
                    variant.file_name().to_string_lossy(),
                    scenario.file_name().to_string_lossy()
                ));
            }
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = SCENARIOS
        .iter()
        .flat_map(|(v, s)| s.iter().map(move |s| format!("{v}/{s}")))
        .collect();
    listed.sort();
    assert_eq!(on_disk, listed);
}
