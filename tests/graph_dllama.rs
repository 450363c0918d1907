//! The graph builder against dllama's own `buildLlmNet` on shapes the golden recordings do not
//! cover: Llama 3.1 8B shapes with Llama 3.1 RoPE scaling and a capped context on 1, 2, 4 and 8
//! nodes, a GELU model with F32 weights and a key/value head count of 3 on 3 nodes, Qwen3 4B
//! shapes on 1, 2 and 4 nodes, Qwen3 30B-A3B MoE shapes (128 experts) on 2 and 4 nodes, with Q80
//! and F32 sync. Every node config is compared, the root's included.
//!
//! `graph_dllama_x86.bin` was written by a small C++ program linked against the x86 build of
//! dllama (kept outside this repository): for each case it writes a `.m` header, loads it with
//! dllama's `loadLlmHeader(path, maxSeqLen, syncType)`, calls `buildLlmNet(header, nNodes, 32)`
//! and serialises the net config and every node config as `NnRootConfigWriter` sends them.
//! Layout (u32 little-endian): case count; per case nNodes, sync float type, max seq len,
//! header length + header bytes, net config length + bytes, then per node length + bytes.
//!
//! Bytes dllama leaves uninitialised (1-byte empty op configs, the unset falcon RoPE slice
//! fields) hold stack garbage in this reference (some are non-zero): there we check that we emit
//! 0 and that nothing else differs; every other byte must be equal.
use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
use airllama_io::layout::{LayoutError, ModelLayout};
use airllama_io::model::ModelHeader;
use airllama_net::{NodeConfig, SyncPlan};

mod graph_support;
use graph_support::{undefined_bytes, zero_undefined};

const REFERENCE: &[u8] = include_bytes!("graph_dllama_x86.bin");

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn u32(&mut self) -> u32 {
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        u32::from_le_bytes(head.try_into().unwrap())
    }
    fn bytes(&mut self) -> &'a [u8] {
        let n = self.u32() as usize;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Case<'a> {
    n_nodes: u32,
    sync: SyncFloatType,
    max_seq_len: u32,
    header: &'a [u8],
    net: &'a [u8],
    nodes: Vec<&'a [u8]>,
}

fn cases() -> Vec<Case<'static>> {
    let mut r = Cursor(REFERENCE);
    let n = r.u32();
    let cases = (0..n)
        .map(|_| {
            let n_nodes = r.u32();
            let sync = match r.u32() {
                0 => SyncFloatType::F32,
                3 => SyncFloatType::Q80,
                other => panic!("sync type {other}"),
            };
            let max_seq_len = r.u32();
            let header = r.bytes();
            let net = r.bytes();
            let nodes = (0..n_nodes).map(|_| r.bytes()).collect();
            Case {
                n_nodes,
                sync,
                max_seq_len,
                header,
                net,
                nodes,
            }
        })
        .collect::<Vec<_>>();
    assert!(r.0.is_empty(), "trailing reference bytes");
    assert_eq!(cases.len(), 13);
    cases
}

/// A layout for a header without its weights: the layout table only needs the file size, which
/// it reports when given a wrong one.
fn layout_without_weights(header: &ModelHeader) -> ModelLayout {
    let size = match ModelLayout::new(header, 0) {
        Err(LayoutError::FileTooShort { expected, .. }) => expected,
        other => panic!("{other:?}"),
    };
    ModelLayout::new(header, size).unwrap()
}

#[test]
fn configs_equal_dllamas_build_llm_net() {
    let mut undefined_compared = 0;
    let mut undefined_nonzero = 0;
    for (i, case) in cases().iter().enumerate() {
        let header = ModelHeader::parse(case.header).unwrap();
        let params = GraphParams::dllama(case.n_nodes, case.sync, case.max_seq_len);
        let graph = LlmGraph::build(&header, params).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let mut net = Vec::new();
        graph.net.encode(&mut net);
        assert_eq!(net, case.net, "case {i}: net config");
        assert_eq!(graph.nodes.len(), case.nodes.len());
        for (node, reference) in graph.nodes.iter().zip(&case.nodes) {
            let what = format!(
                "case {i} ({:?}) node {}",
                header.config().arch,
                node.node_index
            );
            let mut ours = Vec::new();
            node.encode(&mut ours);
            assert_eq!(ours.len(), reference.len(), "{what}: length");
            let (empty, rope) = undefined_bytes(node);
            for (at, (a, b)) in ours.iter().zip(reference.iter()).enumerate() {
                if empty.contains(&at) || rope.contains(&at) {
                    undefined_compared += 1;
                    assert_eq!(*a, 0, "{what}: we emit 0 at undefined byte {at}");
                    if *b != 0 {
                        undefined_nonzero += 1;
                    }
                    continue;
                }
                assert_eq!(a, b, "{what}: byte {at}");
            }
            // The reference decodes with the wire codec to what we built, up to the undefined
            // bytes.
            let mut decoded = NodeConfig::decode(reference, &graph.net).unwrap();
            SyncPlan::new(&graph.net, &decoded).unwrap();
            zero_undefined(&mut decoded);
            assert_eq!(&decoded, node, "{what}");
        }

        // The weight plan of the same model covers every weighted op of every node exactly
        // once (WeightPlan::new checks it), in dllama's order.
        let layout = layout_without_weights(&header);
        let plan = WeightPlan::new(&graph, &layout).unwrap_or_else(|e| panic!("case {i}: {e}"));
        let c = graph.config;
        let per_layer = 4
            + 3 * c.n_experts.max(1)
            + u32::from(c.n_experts > 0)
            + 2
            + if c.arch.has_qk_norm() { 2 } else { 0 };
        for node in 0..case.n_nodes {
            let root_extra = u32::from(node == 0);
            assert_eq!(
                plan.node_loads(node).count() as u32,
                c.n_layers * per_layer + 2 + root_extra,
                "case {i} node {node}"
            );
        }
    }
    // The reference program's stack leaves garbage in some of them (unlike the recordings of
    // dllama itself, where they were 0): they are uninitialised, so only count them.
    assert!(undefined_compared > 0);
    eprintln!(
        "{undefined_compared} undefined bytes, {undefined_nonzero} non-zero in the reference"
    );
}
