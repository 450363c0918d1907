//! The graph builder's refusals (each a case where dllama would assert or mis-slice), the
//! parameters that change the graph (sync type, context cap, RoPE scaling), and the weight
//! plan's own checks.
#[macro_use]
mod golden_support;

use std::path::{Path, PathBuf};

use airllama::graph::{
    GraphError, GraphParams, LlmGraph, SyncFloatType, WeightPlan, WeightPlanError,
    check_dllama_root_limits,
};
use airllama_io::layout::ModelLayout;
use airllama_io::model::{ArchType, HiddenAct, ModelHeader, ModelParams, RopeScaling};
use airllama_net::{FloatType, OpParams, PointerType, RopeKind, SyncType};

fn golden() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")).to_path_buf()
}

fn golden_model(variant: &str) -> Vec<u8> {
    let path = golden().join(variant).join("model.m");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden_header(variant: &str) -> ModelHeader {
    ModelHeader::parse(&golden_model(variant)).unwrap()
}

fn build(header: &ModelHeader, n_nodes: u32, sync: SyncFloatType) -> Result<LlmGraph, GraphError> {
    LlmGraph::build(header, GraphParams::dllama(n_nodes, sync, 0))
}

fn llama(dim: u32, heads: u32, kv_heads: u32, weight_type: FloatType) -> ModelParams {
    ModelParams {
        arch: ArchType::Llama,
        hidden_act: HiddenAct::Silu,
        dim,
        hidden_dim: dim * 2,
        n_layers: 2,
        n_heads: heads,
        n_kv_heads: kv_heads,
        weight_type,
        seq_len: 128,
        vocab_size: 480,
        n_experts: 0,
        n_active_experts: 0,
        rope_theta: None,
        rope_scaling: None,
        head_dim: None,
        norm_epsilon: None,
        moe_hidden_dim: None,
    }
}

#[test]
fn node_counts_that_do_not_split_are_refused() {
    golden_or_skip!();
    let q40 = golden_header("llama-q40");
    assert_eq!(
        build(&q40, 0, SyncFloatType::Q80),
        Err(GraphError::ZeroNodes)
    );
    let zero_batches = GraphParams {
        n_batches: 0,
        ..GraphParams::dllama(2, SyncFloatType::Q80, 0)
    };
    assert_eq!(
        LlmGraph::build(&q40, zero_batches),
        Err(GraphError::ZeroBatches)
    );
    assert_eq!(
        build(&q40, 5, SyncFloatType::Q80),
        Err(GraphError::NotDivisible {
            what: "n_heads",
            value: 12,
            n_nodes: 5
        })
    );
    // 4 nodes: 1.5 key/value heads per node (dllama would attend with the wrong heads).
    assert_eq!(
        build(&q40, 4, SyncFloatType::Q80),
        Err(GraphError::NotDivisible {
            what: "n_kv_heads",
            value: 6,
            n_nodes: 4
        })
    );
    // 320 feed-forward rows over 4 nodes = 80 per node: w2's column slice would cut a Q40
    // block; the same shapes in F32 have no blocks to cut.
    let mut shapes = llama(128, 4, 4, FloatType::Q40);
    shapes.hidden_dim = 320;
    let header = shapes.to_header().unwrap();
    assert!(build(&header, 2, SyncFloatType::Q80).is_ok());
    assert_eq!(
        build(&header, 4, SyncFloatType::Q80),
        Err(GraphError::NotBlockAligned {
            what: "ffn_dim per node",
            value: 80
        })
    );
    shapes.weight_type = FloatType::F32;
    assert!(build(&shapes.to_header().unwrap(), 4, SyncFloatType::F32).is_ok());
    // Qwen3: 4 nodes would also cut the k norm's 32-dim heads.
    let qwen = golden_header("qwen3-q40");
    assert_eq!(
        build(&qwen, 4, SyncFloatType::Q80),
        Err(GraphError::NotDivisible {
            what: "n_kv_heads",
            value: 6,
            n_nodes: 4
        })
    );
    // A RoPE pair split between nodes: 12 query dims over 4 nodes → 3 per node.
    let odd = llama(12, 4, 4, FloatType::F32).to_header().unwrap();
    assert_eq!(
        build(&odd, 4, SyncFloatType::F32),
        Err(GraphError::OddRopeSlice {
            what: "q_dim",
            value: 3
        })
    );
    // On 2 nodes every slice is even, but a 3-value head cannot be rotated in pairs: the
    // wire codec's validation, which every built graph passes through, refuses it.
    assert!(matches!(
        build(&odd, 2, SyncFloatType::F32),
        Err(GraphError::Rejected(_))
    ));
}

#[test]
fn dllama_root_limits() {
    golden_or_skip!();
    let q40 = golden_header("llama-q40");
    let c = *q40.config();
    assert!(check_dllama_root_limits(&c, &GraphParams::dllama(6, SyncFloatType::Q80, 0)).is_ok());
    assert_eq!(
        check_dllama_root_limits(&c, &GraphParams::dllama(12, SyncFloatType::Q80, 0)),
        Err(GraphError::MoreNodesThanKvHeads {
            n_nodes: 12,
            n_kv_heads: 6
        })
    );
    assert_eq!(
        check_dllama_root_limits(&c, &GraphParams::dllama(2, SyncFloatType::F32, 0)),
        Err(GraphError::Q40NeedsQ80Sync)
    );
    let f32 = *golden_header("llama-f32").config();
    assert!(check_dllama_root_limits(&f32, &GraphParams::dllama(2, SyncFloatType::F32, 0)).is_ok());
    assert!(check_dllama_root_limits(&f32, &GraphParams::dllama(2, SyncFloatType::Q80, 0)).is_ok());
}

fn op_names(graph: &LlmGraph, node: usize) -> Vec<&str> {
    graph.nodes[node]
        .ops()
        .map(|(_, _, op)| op.name.as_str())
        .collect()
}

#[test]
fn sync_type_decides_the_quantizing_casts() {
    golden_or_skip!();
    let header = golden_header("llama-f32");
    let f32 = build(&header, 2, SyncFloatType::F32).unwrap();
    let q80 = build(&header, 2, SyncFloatType::Q80).unwrap();
    assert_eq!(
        f32.net.pipes[f32.pipes.zq as usize].size.float_type(),
        Some(FloatType::F32)
    );
    assert_eq!(
        q80.net.pipes[q80.pipes.zq as usize].size.float_type(),
        Some(FloatType::Q80)
    );
    let q_buffers = |g: &LlmGraph| -> Vec<String> {
        g.nodes[1]
            .buffers
            .iter()
            .filter(|b| b.name.starts_with("q_"))
            .map(|b| b.name.clone())
            .collect()
    };
    // q_z_slice exists either way (typed by the sync type); the other q_ buffers only for Q80.
    assert_eq!(q_buffers(&f32), ["q_z_slice"]);
    assert_eq!(
        q_buffers(&q80),
        ["q_y", "q_z_slice", "q_d", "q_moe_y", "q_moe_d"]
    );
    let casts = [
        "block_cast_y",
        "block_cast_y3",
        "block_cast_d2",
        "final_cast_y",
    ];
    for name in casts {
        assert!(!op_names(&f32, 1).contains(&name), "{name}");
        assert!(op_names(&q80, 1).contains(&name), "{name}");
    }
    // Same ops otherwise, in the same order.
    let without_casts: Vec<&str> = op_names(&q80, 1)
        .into_iter()
        .filter(|n| !casts.contains(n))
        .collect();
    assert_eq!(without_casts, op_names(&f32, 1));
}

#[test]
fn structure_of_a_node() {
    golden_or_skip!();
    let header = golden_header("qwen3moe-q40");
    let graph = build(&header, 3, SyncFloatType::Q80).unwrap();
    let c = graph.config;
    assert_eq!(graph.net.n_batches, 32);
    assert_eq!(graph.net.pre_syncs, [graph.pipes.position]);
    let names: Vec<&str> = graph.net.pipes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["POS", "TOK", "X", "LG", "ZQ"]);
    for node in &graph.nodes {
        // Start, attention + feed-forward per layer, end.
        assert_eq!(node.segments.len() as u32, 2 + 2 * c.n_layers);
        let first = &node.segments[0];
        assert_eq!(first.syncs[0].sync_type, SyncType::WithRoot);
        assert_eq!(first.ops.len(), usize::from(node.node_index == 0));
        let last = node.segments.last().unwrap();
        assert_eq!(last.syncs[0].sync_type, SyncType::NodeSlicesExceptRoot);
        for segment in &node.segments[1..node.segments.len() - 1] {
            assert_eq!(segment.syncs.len(), 1);
            assert_eq!(segment.syncs[0].pipe_index, graph.pipes.zq);
            assert_eq!(segment.syncs[0].sync_type, SyncType::NodeSlices);
        }
        // Two KV cache buffers per layer after the fixed ones.
        let kv = node
            .buffers
            .iter()
            .filter(|b| b.name == "k" || b.name == "v");
        assert_eq!(kv.count() as u32, 2 * c.n_layers);
        // MoE matmuls carry the experts; everything else is dense.
        for (_, _, op) in node.ops() {
            if let OpParams::Matmul(m) = op.params {
                let expert = matches!(
                    op.name.as_str(),
                    "block_matmul_w1" | "block_matmul_w2" | "block_matmul_w3"
                );
                assert_eq!(m.n_experts, if expert { 4 } else { 0 }, "{}", op.name);
                assert_eq!(op.weight_size.z(), if expert { 4 } else { 1 });
            }
            if op.name == "block_multihead_att" {
                assert_eq!(op.input.pointer_type, PointerType::BatchedSlice);
            }
        }
    }
}

#[test]
fn max_seq_len_caps_caches_and_attention() {
    golden_or_skip!();
    let header = golden_header("llama-q40");
    let capped = LlmGraph::build(&header, GraphParams::dllama(2, SyncFloatType::Q80, 64)).unwrap();
    let uncapped =
        LlmGraph::build(&header, GraphParams::dllama(2, SyncFloatType::Q80, 1000)).unwrap();
    assert_eq!(capped.config.seq_len, 64);
    assert_eq!(uncapped.config.seq_len, 256);
    assert_eq!(capped.nodes[1].seq_len(), Some(64));
    assert_eq!(uncapped.nodes[1].seq_len(), Some(256));
    let buffer = |g: &LlmGraph, name: &str| {
        g.nodes[1]
            .buffers
            .iter()
            .find(|b| b.name == name)
            .unwrap()
            .size
    };
    assert_eq!(buffer(&capped, "k").y(), 64);
    assert_eq!(buffer(&capped, "rope_cache").y(), 64);
    // 6 query heads per node × 64 positions per batch row.
    assert_eq!(buffer(&capped, "att").x(), 6 * 64);
    assert_eq!(buffer(&uncapped, "att").x(), 6 * 256);
}

#[test]
fn llama31_rope_and_gelu_header() {
    let mut params = llama(256, 8, 4, FloatType::Q40);
    params.hidden_act = HiddenAct::Gelu;
    params.rope_theta = Some(500_000);
    params.rope_scaling = Some(RopeScaling {
        factor: 8,
        low_freq_factor: 1,
        high_freq_factor: 4,
        orig_max_seq_len: 8192,
        rope_type: RopeKind::Llama31,
    });
    let header = params.to_header().unwrap();
    let graph = build(&header, 4, SyncFloatType::Q80).unwrap();
    for node in &graph.nodes {
        let i = node.node_index;
        let ropes: Vec<_> = node
            .ops()
            .filter_map(|(_, _, op)| match op.params {
                OpParams::Rope(r) => Some(r),
                _ => None,
            })
            .collect();
        assert_eq!(ropes.len(), 4);
        for r in ropes {
            assert_eq!(r.rope_type, RopeKind::Llama31);
            assert_eq!(
                (
                    r.rope_scaling_factor,
                    r.rope_scaling_low_freq_factor,
                    r.rope_scaling_high_freq_factor,
                    r.rope_scaling_orig_max_seq_len
                ),
                (8.0, 1.0, 4.0, 8192)
            );
            assert_eq!(r.slice.rope_theta, 500_000.0);
            // 64 query and 32 key/value dims per node: this node's window [32i, 64i + 64).
            assert_eq!(r.slice.kv_dim_start, 32 * i);
            assert_eq!(r.slice.q_dim_start, 64 * i);
            assert_eq!(r.slice.q_dim_end, 64 * i + 64);
            assert_eq!(r.slice.q_shift, 32 * i);
            assert_eq!(r.slice.slice_dim, 32 * i + 64);
        }
        // dllama's LLM net uses SiLU whatever the header says.
        let act = node.find_op("block_act", 0).unwrap().2;
        assert!(matches!(act.params, OpParams::Silu(_)));
    }
}

#[test]
fn weight_plan_checks() {
    golden_or_skip!();
    let bytes = golden_model("llama-q40");
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let graph = build(&header, 2, SyncFloatType::Q80).unwrap();
    let plan = WeightPlan::new(&graph, &layout).unwrap();

    // dllama's order: per tensor the root, then the worker (the embedding is root-only).
    let order: Vec<(u32, &str)> = plan
        .loads()
        .iter()
        .take(5)
        .map(|l| (l.node, l.header.name.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            (0, "embedding"),
            (0, "block_matmul_q"),
            (1, "block_matmul_q"),
            (0, "block_matmul_k"),
            (1, "block_matmul_k")
        ]
    );
    // Every byte of the file after the header goes somewhere; split tensors are shared out.
    let total: u64 = plan.loads().iter().map(|l| l.header.n_bytes).sum();
    let replicated: u64 = plan
        .node_loads(1)
        .filter(|l| l.header.name.contains("norm"))
        .map(|l| l.header.n_bytes)
        .sum();
    assert_eq!(
        total,
        bytes.len() as u64 - header.header_size() + replicated
    );

    // A layout of another model is refused.
    let other = golden_model("qwen3-q40");
    let other_header = ModelHeader::parse(&other).unwrap();
    let other_layout = ModelLayout::new(&other_header, other.len() as u64).unwrap();
    assert_eq!(
        WeightPlan::new(&graph, &other_layout),
        Err(WeightPlanError::ModelMismatch)
    );
    // A graph whose op lost its weight, or whose weight is larger than the tensor slices.
    let mut missing = graph.clone();
    missing.nodes[1].segments[1]
        .ops
        .retain(|op| op.name != "block_matmul_k");
    assert!(matches!(
        WeightPlan::new(&missing, &layout),
        Err(WeightPlanError::NoOp {
            node: 1,
            name: "block_matmul_k",
            index: 0,
            ..
        })
    ));
    let mut larger = graph.clone();
    let norm = larger.nodes[1].segments[3]
        .ops
        .iter_mut()
        .find(|op| op.name == "block_norm_0")
        .unwrap();
    norm.weight_size = airllama_net::Size3D::new_2d(FloatType::F32, 1, 384).unwrap();
    assert!(matches!(
        WeightPlan::new(&larger, &layout),
        Err(WeightPlanError::Coverage {
            node: 1,
            index: 1,
            expected: 1536,
            at: 768,
            ..
        })
    ));

    // Streams exist for workers only, and need the whole file.
    let mut out = Vec::new();
    assert!(matches!(
        plan.encode_node_stream(0, &bytes, &mut out),
        Err(WeightPlanError::NotAWorker { node: 0, .. })
    ));
    assert!(matches!(
        plan.encode_node_stream(2, &bytes, &mut out),
        Err(WeightPlanError::NotAWorker { node: 2, .. })
    ));
    assert!(matches!(
        plan.encode_node_stream(1, &bytes[..bytes.len() - 1], &mut out),
        Err(WeightPlanError::FileTooShort { .. })
    ));
}

/// A layout for a header without its weights (the layout table reports the size it needs).
fn layout_without_weights(header: &ModelHeader) -> Option<ModelLayout> {
    match ModelLayout::new(header, 0) {
        Err(airllama_io::layout::LayoutError::FileTooShort { expected, .. }) => {
            ModelLayout::new(header, expected).ok()
        }
        _ => None,
    }
}

/// `shape` = (dim, query heads, query heads per key/value head, explicit head_dim).
fn arch_params(
    arch: ArchType,
    shape: (u32, u32, u32, Option<u32>),
    hidden: u32,
    vocab: u32,
    experts: (u32, u32),
    weight_type: FloatType,
) -> ModelParams {
    let (dim, n_heads, kv_div, head_dim) = shape;
    let moe = arch == ArchType::Qwen3Moe;
    ModelParams {
        arch,
        hidden_act: HiddenAct::Silu,
        dim,
        hidden_dim: hidden,
        n_layers: 2,
        n_heads,
        n_kv_heads: (n_heads / kv_div).max(1),
        weight_type,
        seq_len: 64,
        vocab_size: vocab,
        n_experts: if moe { experts.0 } else { 0 },
        n_active_experts: if moe { experts.1.min(experts.0) } else { 0 },
        rope_theta: None,
        rope_scaling: None,
        head_dim,
        norm_epsilon: None,
        moe_hidden_dim: moe.then_some(hidden / 2),
    }
}

/// Whatever the header and node count, building never panics; a graph that builds validates
/// with the codec (inside `build`), and whenever the layout table accepts the node count the
/// weight plan covers every weighted op of every node.
fn check_any(params: ModelParams, n_nodes: u32, sync: SyncFloatType) {
    let Ok(header) = params.to_header() else {
        return;
    };
    let Ok(graph) = build(&header, n_nodes, sync) else {
        return;
    };
    assert_eq!(graph.nodes.len() as u32, n_nodes);
    let Some(layout) = layout_without_weights(&header) else {
        return;
    };
    if layout.node_split(n_nodes).is_ok() {
        let plan = WeightPlan::new(&graph, &layout).unwrap();
        assert!(plan.node_bytes(0) > 0);
    }
}

fn arch() -> impl proptest::strategy::Strategy<Value = ArchType> {
    proptest::sample::select(vec![ArchType::Llama, ArchType::Qwen3, ArchType::Qwen3Moe])
}

fn weight() -> impl proptest::strategy::Strategy<Value = FloatType> {
    proptest::sample::select(vec![FloatType::F32, FloatType::Q40])
}

fn sync() -> impl proptest::strategy::Strategy<Value = SyncFloatType> {
    proptest::sample::select(vec![SyncFloatType::F32, SyncFloatType::Q80])
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(128))]

    /// Arbitrary small shapes: mostly refusals, which must be typed errors.
    #[test]
    fn arbitrary_shapes_never_panic(
        arch in arch(), dim in 1u32..600, n_heads in 1u32..20, kv_div in 1u32..5,
        head_dim in proptest::option::of(1u32..80), hidden in 1u32..1200, vocab in 1u32..700,
        experts in (1u32..9, 1u32..4), weight in weight(), n_nodes in 0u32..10, sync in sync(),
    ) {
        check_any(
            arch_params(arch, (dim, n_heads, kv_div, head_dim), hidden, vocab, experts, weight),
            n_nodes,
            sync,
        );
    }

    /// Shapes like real models (power-of-two heads, block-aligned dims): mostly graphs that
    /// build, which must validate and get a complete weight plan.
    #[test]
    fn aligned_shapes_build_and_plan(
        arch in arch(), heads_log in 0u32..5, kv_log in 0u32..3, head_dim_log in 3u32..7,
        hidden_blocks in 1u32..24, vocab_blocks in 1u32..40, experts in (1u32..9, 1u32..4),
        weight in weight(), nodes_log in 0u32..4, sync in sync(),
    ) {
        let n_heads = 1 << heads_log;
        let head_dim = 1 << head_dim_log;
        let n_nodes = 1 << nodes_log;
        let dim = (n_heads * head_dim).max(32);
        let params = arch_params(
            arch, (dim, n_heads, 1 << kv_log, Some(head_dim)), 64 * hidden_blocks,
            32 * vocab_blocks, experts, weight,
        );
        check_any(params, n_nodes, sync);
    }
}

#[test]
fn hand_made_configs_are_checked() {
    golden_or_skip!();
    let header = golden_header("qwen3-q40");
    let params = GraphParams::dllama(2, SyncFloatType::Q80, 0);
    let good = *header.config();
    assert!(LlmGraph::from_config(good, params).is_ok());
    type Edit = fn(&mut airllama_io::model::ModelConfig);
    let edits: [(&str, Edit); 3] = [
        ("head_dim 0", |c| c.head_dim = 0),
        ("q_dim 100", |c| c.q_dim = 100),
        ("kv_dim 100", |c| c.kv_dim = 100),
    ];
    for (what, edit) in edits {
        let mut c = good;
        edit(&mut c);
        assert!(
            matches!(
                LlmGraph::from_config(c, params),
                Err(GraphError::Shape { .. })
            ),
            "{what}"
        );
    }
}
