//! The graph builder: the net config and node configs a dllama root sends, built from a model
//! header, and the plan of which weight bytes go to which op of which node.
//!
//! dllama's root builds one [`NetConfig`] (the pipes every node shares) and one [`NodeConfig`]
//! per node (buffers, and segments of ops followed by syncs) in `buildLlmNet`, sends each worker
//! the net config and its node config, then walks the `.m` file and sends each worker its
//! slice of every weight. A C++ worker runs whatever it is sent, so an airllama root must send
//! the same graph byte for byte, and an airllama worker run by a C++ root receives exactly
//! this. [`LlmGraph::build`] mirrors `buildLlmNet` for the LLAMA, QWEN3 and QWEN3_MOE
//! architectures: the same pipes, buffers (names, sizes and order, hence the same indexes),
//! ops (names, layer indexes, pointers, weight sizes, typed op configs) and syncs, as values of
//! `airllama_net`'s codec types; encoding them gives the bytes a C++ root sends.
//! [`WeightPlan`] maps every tensor of `airllama_io`'s layout table to the op and node it is
//! loaded into, with the record header dllama sends and the file bytes that form the data.
//!
//! dllama asserts (or silently computes garbage) when the node count does not divide what it
//! splits; here every such case is a [`GraphError`] before anything is built, and the built
//! configs are re-checked by the codec's own decoder, so a graph that a worker would refuse is
//! never handed out.
//!
//! ```no_run
//! use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
//! use airllama_io::{layout::ModelLayout, model::ModelHeader};
//! let file = std::fs::read("model.m")?;
//! let header = ModelHeader::parse(&file)?;
//! let graph = LlmGraph::build(&header, GraphParams::dllama(2, SyncFloatType::Q80, 0))?;
//! let mut bytes = Vec::new();
//! graph.net.encode(&mut bytes); // what the root sends every worker first
//! graph.nodes[1].encode(&mut bytes); // then worker 0's node config
//! let layout = ModelLayout::new(&header, file.len() as u64)?;
//! let plan = WeightPlan::new(&graph, &layout)?;
//! plan.encode_node_stream(1, &file, &mut bytes)?; // its weight records and the terminator
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod weights;

pub use weights::{WeightLoad, WeightPlan, WeightPlanError};

use airllama_io::model::{ArchType, ModelConfig, ModelHeader};
use airllama_net::{
    BufferConfig, DecodeError, EmptyConfig, FloatType, InvRmsConfig, MatmulConfig, MoeGateConfig,
    MultiHeadAttConfig, NetConfig, NodeConfig, OpConfig, OpParams, PipeConfig, PointerConfig,
    PointerSource, PointerType, RmsNormConfig, RopeConfig, RopeKind, RopeSlice, SegmentConfig,
    Size3D, SyncConfig, SyncType,
};

/// dllama's batch capacity: `nBatches` is fixed at 32 in its apps.
pub const DLLAMA_N_BATCHES: u32 = 32;

/// Most layers a graph is built for. A layer adds two segments, two buffers and at most 34 ops
/// to every node config, so 1024 layers stay inside the wire codec's limits on segments,
/// buffers and ops; the largest models dllama runs have about 126.
pub const MAX_LAYERS: u32 = 1024;

/// The float type of the synchronised activations (dllama's `--buffer-float-type`): it decides
/// the `ZQ` pipe's type and whether the quantizing CAST ops and `q_*` buffers exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncFloatType {
    /// `f32`: activations travel as floats; no quantizing casts.
    F32,
    /// `q80`: activations are quantized to Q80 blocks before matmuls and syncs.
    Q80,
}

impl SyncFloatType {
    /// Parses the `--buffer-float-type` value dllama accepts for a distributed run.
    pub fn from_flag(flag: &str) -> Option<SyncFloatType> {
        match flag {
            "f32" => Some(SyncFloatType::F32),
            "q80" => Some(SyncFloatType::Q80),
            _ => None,
        }
    }

    /// The wire float type.
    pub const fn float_type(self) -> FloatType {
        match self {
            SyncFloatType::F32 => FloatType::F32,
            SyncFloatType::Q80 => FloatType::Q80,
        }
    }
}

/// What the root decides besides the model: node count, batch capacity, sync type, context cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GraphParams {
    /// Nodes including the root (root + workers), at least 1.
    pub n_nodes: u32,
    /// Batch capacity (dllama: [`DLLAMA_N_BATCHES`]).
    pub n_batches: u32,
    /// `--buffer-float-type`.
    pub sync_type: SyncFloatType,
    /// `--max-seq-len` (0 = the model's context length).
    pub max_seq_len: u32,
}

impl GraphParams {
    /// The parameters dllama's root uses: batch capacity 32.
    pub const fn dllama(n_nodes: u32, sync_type: SyncFloatType, max_seq_len: u32) -> GraphParams {
        GraphParams {
            n_nodes,
            n_batches: DLLAMA_N_BATCHES,
            sync_type,
            max_seq_len,
        }
    }
}

/// Why a graph cannot be built for this model and these parameters. Each variant is a case
/// where dllama would assert, throw, or send slices that do not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Zero nodes.
    #[error("the node count must be at least 1")]
    ZeroNodes,
    /// Zero batch capacity.
    #[error("the batch capacity must be at least 1")]
    ZeroBatches,
    /// A dimension split between nodes does not divide by the node count.
    #[error("{what} = {value} does not divide by {n_nodes} nodes")]
    NotDivisible {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The node count.
        n_nodes: u32,
    },
    /// A node's share of q or kv dimensions is odd, which would split a RoPE pair.
    #[error("{what} per node = {value} is odd: RoPE rotates pairs")]
    OddRopeSlice {
        /// `q_dim` or `kv_dim`.
        what: &'static str,
        /// The per-node value.
        value: u32,
    },
    /// Fewer query than key/value dimensions (dllama's rope slicer asserts `qDim >= kvDim`).
    #[error("q_dim {q_dim} is smaller than kv_dim {kv_dim}")]
    QDimBelowKvDim {
        /// Query dimensions.
        q_dim: u32,
        /// Key/value dimensions.
        kv_dim: u32,
    },
    /// A quantized matmul slice would cut a 32-value block.
    #[error("{what} = {value} values is not a whole number of blocks of the weight type")]
    NotBlockAligned {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: u32,
    },
    /// A pipe, buffer or weight shape is not representable: above dllama's 32-bit element
    /// count, or not whole blocks of its quantized type.
    #[error("{what}: shape not representable (too large, or not whole blocks of its type)")]
    Shape {
        /// The pipe, buffer or op.
        what: &'static str,
    },
    /// A count above what the wire codec accepts (see [`MAX_LAYERS`] and
    /// `airllama_net::limits`); checked before anything is built, so a hostile header cannot
    /// make the builder allocate without bound.
    #[error("{what} = {value} exceeds the limit {limit}")]
    TooLarge {
        /// Which count.
        what: &'static str,
        /// Its value.
        value: u32,
        /// The limit.
        limit: u32,
    },
    /// More nodes than key/value heads: a node's key/value slice would be part of a head.
    /// dllama's root refuses this before building (see [`check_dllama_root_limits`]).
    #[error("{n_nodes} nodes but only {n_kv_heads} key/value heads")]
    MoreNodesThanKvHeads {
        /// The node count.
        n_nodes: u32,
        /// Key/value heads.
        n_kv_heads: u32,
    },
    /// Q40 weights with F32 sync: dllama's CPU ops have no F32 × Q40 matmul, and its root
    /// refuses this before building (see [`check_dllama_root_limits`]).
    #[error("Q40 weights need the q80 buffer float type")]
    Q40NeedsQ80Sync,
    /// The built config does not pass the wire codec's validation (a bug in this builder or a
    /// model outside what the codec accepts).
    #[error("the built node config fails the codec's validation: {0}")]
    Rejected(#[from] DecodeError),
}

/// The checks dllama's root (`runInferenceApp`) makes before `buildLlmNet`: at most one node
/// per key/value head, and Q80 sync for Q40 weights. [`LlmGraph::build`] does not apply them,
/// because dllama's builder itself accepts such configs; a root should call this first.
pub fn check_dllama_root_limits(
    config: &ModelConfig,
    params: &GraphParams,
) -> Result<(), GraphError> {
    if params.n_nodes > config.n_kv_heads {
        return Err(GraphError::MoreNodesThanKvHeads {
            n_nodes: params.n_nodes,
            n_kv_heads: config.n_kv_heads,
        });
    }
    if config.weight_type == FloatType::Q40 && params.sync_type != SyncFloatType::Q80 {
        return Err(GraphError::Q40NeedsQ80Sync);
    }
    Ok(())
}

/// Indexes of the five pipes of dllama's LLM net, in the order it adds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LlmPipes {
    /// `POS`: the position of each batch item (filled from the control packet).
    pub position: u32,
    /// `TOK`: token ids (the root's embedding input).
    pub token: u32,
    /// `X`: the embedded batch the root sends every worker.
    pub x: u32,
    /// `LG`: logits, each node's vocabulary slice collected at the root.
    pub logits: u32,
    /// `ZQ`: the per-layer sync pipe (`dim × nNodes` values per row, each node's slice).
    pub zq: u32,
}

/// The graph of one model on one cluster: what the root sends and what every node runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmGraph {
    /// The model with `--max-seq-len` applied.
    pub config: ModelConfig,
    /// The parameters it was built with.
    pub params: GraphParams,
    /// The net config (identical for every node).
    pub net: NetConfig,
    /// One node config per node; index = node index (0 = root).
    pub nodes: Vec<NodeConfig>,
    /// Which pipe is which.
    pub pipes: LlmPipes,
}

/// Values per block of a type (dllama's `getBlockSize`).
fn block_values(t: FloatType) -> u32 {
    match t {
        FloatType::Q40 | FloatType::Q80 => 32,
        FloatType::F32 | FloatType::F16 => 1,
    }
}

fn size3(t: FloatType, z: u32, y: u32, x: u32, what: &'static str) -> Result<Size3D, GraphError> {
    Size3D::new(t, z, y, x).ok_or(GraphError::Shape { what })
}

fn size2(t: FloatType, y: u32, x: u32, what: &'static str) -> Result<Size3D, GraphError> {
    size3(t, 1, y, x, what)
}

fn mul(a: u32, b: u32, what: &'static str) -> Result<u32, GraphError> {
    a.checked_mul(b).ok_or(GraphError::Shape { what })
}

const fn pointer(source: PointerSource, index: u32, pointer_type: PointerType) -> PointerConfig {
    PointerConfig {
        source,
        index,
        pointer_type,
    }
}

/// dllama's `pointerBatchConfig(SRC_PIPE, i)`.
const fn pipe_batch(index: u32) -> PointerConfig {
    pointer(PointerSource::Pipe, index, PointerType::Batch)
}
/// dllama's `pointerBatchedSliceConfig(SRC_PIPE, i)`.
const fn pipe_slice(index: u32) -> PointerConfig {
    pointer(PointerSource::Pipe, index, PointerType::BatchedSlice)
}
/// dllama's `pointerBatchConfig(SRC_BUFFER, i)`.
const fn buf_batch(index: u32) -> PointerConfig {
    pointer(PointerSource::Buffer, index, PointerType::Batch)
}
/// dllama's `pointerBatchedSliceConfig(SRC_BUFFER, i)`.
const fn buf_slice(index: u32) -> PointerConfig {
    pointer(PointerSource::Buffer, index, PointerType::BatchedSlice)
}
/// dllama's `pointerRawConfig(SRC_BUFFER, i)`.
const fn buf_raw(index: u32) -> PointerConfig {
    pointer(PointerSource::Buffer, index, PointerType::Raw)
}

/// The config byte dllama sends for ops whose C config struct is empty.
const EMPTY: EmptyConfig = EmptyConfig::DLLAMA;

/// Ops of one segment, appended in execution order, then its syncs.
#[derive(Default)]
struct Segment(SegmentConfig);

impl Segment {
    fn op(
        &mut self,
        name: &str,
        index: u32,
        input: PointerConfig,
        output: PointerConfig,
        weight_size: Size3D,
        params: OpParams,
    ) {
        self.0.ops.push(OpConfig {
            name: name.into(),
            index,
            weight_size,
            input,
            output,
            params,
        });
    }

    fn sync(&mut self, pipe_index: u32, sync_type: SyncType) {
        self.0.syncs.push(SyncConfig {
            pipe_index,
            sync_type,
        });
    }
}

/// Buffers of one node; an added buffer's index is its position, as in dllama's builder.
#[derive(Default)]
struct Buffers(Vec<BufferConfig>);

impl Buffers {
    fn add(&mut self, name: &str, size: Size3D) -> u32 {
        self.0.push(BufferConfig {
            name: name.into(),
            size,
        });
        // At most 23 fixed buffers plus two per layer (n_layers <= MAX_LAYERS).
        (self.0.len() - 1) as u32
    }
}

/// The per-node split of every sliced dimension (dllama's `slice*` results).
#[derive(Clone, Copy, Debug)]
struct Slices {
    /// Query rows per node (`qSlice.d0`, also `woSlice.n0`).
    q_d0: u32,
    /// Key/value rows per node (`kSlice.d0`, `vSlice.d0`, `kvCacheSlice.kvDim0`).
    kv_d0: u32,
    /// Feed-forward rows per node (`w1Slice.d0`, `w3Slice.d0`, `w2Slice.n0`).
    ff_d0: u32,
    /// Vocabulary rows per node (`wclsSlice.d0`).
    vocab_d0: u32,
    /// Query heads per node.
    n_heads0: u32,
}

/// Checks everything dllama's slicers assert for `n` nodes and returns the slices.
fn slices(c: &ModelConfig, n: u32, weight: FloatType) -> Result<Slices, GraphError> {
    let divide = |what: &'static str, value: u32| {
        if value.is_multiple_of(n) {
            Ok(value / n)
        } else {
            Err(GraphError::NotDivisible {
                what,
                value,
                n_nodes: n,
            })
        }
    };
    let n_heads0 = divide("n_heads", c.n_heads)?;
    // dllama's attention maps a node's query head to `local head / (n_heads / n_kv_heads)` in
    // the node's own key/value slice: that is only right when every node holds whole
    // key/value heads. dllama's builder does not check it (its root only refuses more nodes
    // than key/value heads); a split head would compute wrong attention silently.
    divide("n_kv_heads", c.n_kv_heads)?;
    let q_d0 = divide("q_dim", c.q_dim)?;
    let kv_d0 = divide("kv_dim", c.kv_dim)?;
    let ff_d0 = divide("ffn_dim", c.ffn_dim())?;
    let vocab_d0 = divide("vocab_size", c.vocab_size)?;
    if c.q_dim < c.kv_dim {
        return Err(GraphError::QDimBelowKvDim {
            q_dim: c.q_dim,
            kv_dim: c.kv_dim,
        });
    }
    // Whole query and key/value heads per node (the divisions above) also give Qwen3's per-head
    // q/k norms whole heads, which dllama asserts.
    for (what, value) in [("q_dim", q_d0), ("kv_dim", kv_d0)] {
        if !value.is_multiple_of(2) {
            return Err(GraphError::OddRopeSlice { what, value });
        }
    }
    // Row slices keep whole rows of `dim` values; column slices cut every row of q_dim and
    // ffn_dim values (dllama's splitters assert whole blocks for both).
    let block = block_values(weight);
    for (what, value) in [
        ("dim", c.dim),
        ("q_dim per node", q_d0),
        ("ffn_dim per node", ff_d0),
    ] {
        if !value.is_multiple_of(block) {
            return Err(GraphError::NotBlockAligned { what, value });
        }
    }
    Ok(Slices {
        q_d0,
        kv_d0,
        ff_d0,
        vocab_d0,
        n_heads0,
    })
}

impl LlmGraph {
    /// Builds the net config and every node config as dllama's `buildLlmNet` does, from the
    /// header (with `params.max_seq_len` applied like dllama's `--max-seq-len`).
    pub fn build(header: &ModelHeader, params: GraphParams) -> Result<LlmGraph, GraphError> {
        LlmGraph::from_config(header.config().with_max_seq_len(params.max_seq_len), params)
    }

    /// As [`LlmGraph::build`], from a config whose `seq_len` is already the context to use.
    /// A config made by hand is checked for the relations a parsed header guarantees
    /// (`q_dim = head_dim · n_heads`, `kv_dim = head_dim · n_kv_heads`, `head_dim > 0`).
    pub fn from_config(config: ModelConfig, params: GraphParams) -> Result<LlmGraph, GraphError> {
        let n = params.n_nodes;
        if n == 0 {
            return Err(GraphError::ZeroNodes);
        }
        if params.n_batches == 0 {
            return Err(GraphError::ZeroBatches);
        }
        for (what, value, limit) in [
            ("nodes", n, airllama_net::limits::MAX_NODES),
            (
                "batch capacity",
                params.n_batches,
                airllama_net::limits::MAX_BATCHES,
            ),
            ("layers", config.n_layers, MAX_LAYERS),
            (
                "experts",
                config.n_experts,
                airllama_net::limits::MAX_EXPERTS,
            ),
        ] {
            if value > limit {
                return Err(GraphError::TooLarge { what, value, limit });
            }
        }
        // A config from `ModelHeader` holds these; one built by hand may not.
        let heads_consistent = config.head_dim > 0
            && config.n_heads.checked_mul(config.head_dim) == Some(config.q_dim)
            && config.n_kv_heads.checked_mul(config.head_dim) == Some(config.kv_dim);
        if !heads_consistent {
            return Err(GraphError::Shape {
                what: "head_dim × heads (q_dim, kv_dim)",
            });
        }
        let weight = config.weight_type;
        let s = slices(&config, n, weight)?;
        let c = &config;
        let nb = params.n_batches;
        let sync = params.sync_type.float_type();

        let pipe = |name: &str, size| PipeConfig {
            name: name.into(),
            size,
        };
        let pipes = LlmPipes {
            position: 0,
            token: 1,
            x: 2,
            logits: 3,
            zq: 4,
        };
        let net = NetConfig {
            n_batches: nb,
            n_nodes: n,
            pipes: vec![
                pipe("POS", size2(FloatType::F32, nb, 1, "POS pipe")?),
                pipe("TOK", size2(FloatType::F32, nb, 1, "TOK pipe")?),
                pipe("X", size2(FloatType::F32, nb, c.dim, "X pipe")?),
                pipe("LG", size2(FloatType::F32, nb, c.vocab_size, "LG pipe")?),
                pipe("ZQ", size2(sync, nb, mul(c.dim, n, "ZQ pipe")?, "ZQ pipe")?),
            ],
            pre_syncs: vec![pipes.position],
        };

        let nodes = (0..n)
            .map(|node| build_node(c, &params, &s, pipes, node))
            .collect::<Result<Vec<_>, _>>()?;
        let graph = LlmGraph {
            config,
            params,
            net,
            nodes,
            pipes,
        };
        graph.check()?;
        Ok(graph)
    }

    /// Re-checks every node config with the wire codec's decoder (the validation a worker
    /// applies to what it receives) and that decoding gives back the same config.
    pub fn check(&self) -> Result<(), DecodeError> {
        let mut bytes = Vec::new();
        self.net.encode(&mut bytes);
        if NetConfig::decode(&bytes)? != self.net {
            return Err(DecodeError::Inconsistent {
                context: "net config does not survive a round trip",
            });
        }
        for node in &self.nodes {
            bytes.clear();
            node.encode(&mut bytes);
            if NodeConfig::decode(&bytes, &self.net)? != *node {
                return Err(DecodeError::Inconsistent {
                    context: "node config does not survive a round trip",
                });
            }
        }
        Ok(())
    }
}

/// One node's config: `buildLlmNet`'s loop body for `node_index`.
fn build_node(
    c: &ModelConfig,
    params: &GraphParams,
    s: &Slices,
    pipes: LlmPipes,
    node_index: u32,
) -> Result<NodeConfig, GraphError> {
    let nb = params.n_batches;
    let n = params.n_nodes;
    let sync = params.sync_type.float_type();
    let quantized_sync = params.sync_type != SyncFloatType::F32;
    let weight = c.weight_type;
    let f32 = FloatType::F32;
    let is_moe = c.arch == ArchType::Qwen3Moe;
    let qk_norm = c.arch.has_qk_norm();
    let n_experts_or_1 = c.n_experts.max(1);
    let n_active_or_1 = c.n_active_experts.max(1);
    let (n_q_norm_columns, n_k_norm_columns) = if qk_norm {
        (s.q_d0 / c.head_dim, s.kv_d0 / c.head_dim)
    } else {
        (1, 1)
    };
    let n_inv_columns = n_q_norm_columns.max(n_k_norm_columns);

    // sliceRope: llama types cover this node's [kvDimStart, qDimEnd); falcon keeps one head's
    // worth of frequencies and leaves the start/end fields unset (0). The checks above (whole
    // even per-node dims, q_dim >= kv_dim, node_index < n) are the ones `new` repeats.
    let rope_type = c.rope_type;
    let rope_slice = RopeSlice::new(
        rope_type,
        c.q_dim,
        c.kv_dim,
        c.n_kv_heads,
        n,
        c.seq_len,
        c.head_dim,
        c.rope_theta,
        node_index,
    )
    .map_err(|_| GraphError::Shape { what: "rope slice" })?;
    let rope_cache_columns = match rope_type {
        RopeKind::Llama | RopeKind::Llama31 => rope_slice.slice_dim,
        RopeKind::Falcon => c.head_dim,
    };
    let rope_cache_size = size2(f32, c.seq_len, rope_cache_columns, "rope cache")?;

    let mut b = Buffers::default();
    let x = b.add("x", size2(f32, nb, c.dim, "x buffer")?);
    let y = b.add("y", size2(f32, nb, c.dim, "y buffer")?);
    let yq = if quantized_sync {
        b.add("q_y", size2(sync, nb, c.dim, "q_y buffer")?)
    } else {
        y
    };
    let z = b.add("z", size2(f32, nb, c.q_dim, "z buffer")?);
    let zq_slice = b.add(
        "q_z_slice",
        size2(sync, nb, c.q_dim / n, "q_z_slice buffer")?,
    );
    let q = b.add("q", size2(f32, nb, s.q_d0, "q buffer")?);
    let k_temp = b.add("k_temp", size2(f32, nb, s.kv_d0, "k_temp buffer")?);
    let v_temp = b.add("v_temp", size2(f32, nb, s.kv_d0, "v_temp buffer")?);
    let inv_rms = b.add("inv_rms", size2(f32, nb, n_inv_columns, "inv_rms buffer")?);
    let rope_cache = b.add("rope_cache", rope_cache_size);
    let att_columns = mul(s.n_heads0, c.seq_len, "att buffer")?;
    let att = b.add("att", size2(f32, nb, att_columns, "att buffer")?);
    let logits_slice = b.add("lg", size2(f32, nb, c.vocab_size / n, "lg buffer")?);
    // Dense feed-forward.
    let d = b.add("d", size2(f32, nb, s.ff_d0, "d buffer")?);
    let dq = if quantized_sync {
        b.add("q_d", size2(sync, nb, s.ff_d0, "q_d buffer")?)
    } else {
        d
    };
    let l = b.add("l", size2(f32, nb, s.ff_d0, "l buffer")?);
    // MoE (dllama adds these for dense models too, with one expert).
    let moe_gt = b.add("gt", size2(f32, nb, n_experts_or_1, "gt buffer")?);
    let moe_expert_indexes = b.add(
        "act_exp_ix",
        size2(f32, nb, n_active_or_1, "act_exp_ix buffer")?,
    );
    let moe_y = b.add(
        "moe_y",
        size3(f32, n_active_or_1, nb, c.dim, "moe_y buffer")?,
    );
    let moe_yq = if quantized_sync {
        b.add(
            "q_moe_y",
            size3(sync, n_active_or_1, nb, c.dim, "q_moe_y buffer")?,
        )
    } else {
        moe_y
    };
    let moe_d = b.add(
        "moe_d",
        size3(f32, n_active_or_1, nb, s.ff_d0, "moe_d buffer")?,
    );
    let moe_dq = if quantized_sync {
        b.add(
            "q_moe_d",
            size3(sync, n_active_or_1, nb, s.ff_d0, "q_moe_d buffer")?,
        )
    } else {
        moe_d
    };
    let moe_l = b.add(
        "moe_l",
        size3(f32, n_active_or_1, nb, s.ff_d0, "moe_l buffer")?,
    );
    let moe_s = b.add("moe_s", size3(f32, n_active_or_1, nb, 1, "moe_s buffer")?);

    let rms_norm_size = size2(f32, 1, c.dim, "rms norm weight")?;
    let qk_norm_size = size2(f32, 1, c.head_dim, "q/k norm weight")?;
    let key_size = size2(f32, c.seq_len, s.kv_d0, "k cache buffer")?;
    // dllama's `NnMatmulOpConfig{0, 0, moeExpertIndexesBufferIndex}` of every dense matmul.
    let dense = OpParams::Matmul(MatmulConfig {
        n_experts: 0,
        n_active_experts: 0,
        active_expert_indexes_buffer_index: moe_expert_indexes,
    });
    let inv_rms_params = |n_columns| {
        OpParams::InvRms(InvRmsConfig {
            epsilon: c.norm_epsilon.value(),
            n_columns,
        })
    };
    let rms_norm_params = |n_columns| {
        OpParams::RmsNorm(RmsNormConfig {
            inv_rms_buffer_index: inv_rms,
            n_columns,
        })
    };
    let rope_params = |is_q| {
        OpParams::Rope(RopeConfig {
            rope_type,
            is_q,
            position_pipe_index: pipes.position,
            rope_cache_buffer_index: rope_cache,
            rope_scaling_factor: c.rope_scaling_factor,
            rope_scaling_low_freq_factor: c.rope_scaling_low_freq_factor,
            rope_scaling_high_freq_factor: c.rope_scaling_high_freq_factor,
            rope_scaling_orig_max_seq_len: c.rope_scaling_orig_max_seq_len,
            slice: rope_slice,
            cache_size: rope_cache_size,
        })
    };
    let none = Size3D::EMPTY;
    let mut segments = Vec::new();

    let mut start = Segment::default();
    if node_index == 0 {
        start.op(
            "embedding",
            0,
            pipe_batch(pipes.token),
            pipe_batch(pipes.x),
            size2(f32, c.vocab_size, c.dim, "embedding weight")?,
            OpParams::Embedding(EMPTY),
        );
    }
    start.sync(pipes.x, SyncType::WithRoot);
    segments.push(start.0);

    for layer in 0..c.n_layers {
        let k_cache = b.add("k", key_size);
        let v_cache = b.add("v", key_size);
        let mut att_seg = Segment::default();
        let a = &mut att_seg;
        if layer == 0 {
            a.op(
                "block_cast_x",
                layer,
                pipe_batch(pipes.x),
                buf_batch(x),
                none,
                OpParams::Cast(EMPTY),
            );
        } else {
            a.op(
                "block_merge_add",
                layer,
                pipe_batch(pipes.zq),
                buf_batch(x),
                none,
                OpParams::MergeAdd(EMPTY),
            );
        }
        let inv_rms_ptr = buf_batch(inv_rms);
        a.op(
            "block_norm_pre_0",
            layer,
            buf_batch(x),
            inv_rms_ptr,
            none,
            inv_rms_params(1),
        );
        a.op(
            "block_norm_0",
            layer,
            buf_batch(x),
            buf_batch(y),
            rms_norm_size,
            rms_norm_params(1),
        );
        if y != yq {
            a.op(
                "block_cast_y",
                layer,
                buf_batch(y),
                buf_batch(yq),
                none,
                OpParams::Cast(EMPTY),
            );
        }
        for (name, out, rows) in [
            ("block_matmul_q", q, s.q_d0),
            ("block_matmul_k", k_temp, s.kv_d0),
            ("block_matmul_v", v_temp, s.kv_d0),
        ] {
            a.op(
                name,
                layer,
                buf_batch(yq),
                buf_batch(out),
                size2(weight, c.dim, rows, "q/k/v weight")?,
                dense,
            );
        }
        if qk_norm {
            for (pre, norm, buffer, n_columns) in [
                ("block_norm_pre_q", "block_norm_q", q, n_q_norm_columns),
                ("block_norm_pre_k", "block_norm_k", k_temp, n_k_norm_columns),
            ] {
                a.op(
                    pre,
                    layer,
                    buf_batch(buffer),
                    inv_rms_ptr,
                    none,
                    inv_rms_params(n_columns),
                );
                a.op(
                    norm,
                    layer,
                    buf_batch(buffer),
                    buf_batch(buffer),
                    qk_norm_size,
                    rms_norm_params(n_columns),
                );
            }
        }
        a.op(
            "block_rope_q",
            layer,
            buf_batch(q),
            buf_batch(q),
            none,
            rope_params(true),
        );
        a.op(
            "block_rope_k",
            layer,
            buf_batch(k_temp),
            buf_batch(k_temp),
            none,
            rope_params(false),
        );
        let shift = OpParams::Shift {
            index_pipe_index: pipes.position,
        };
        a.op(
            "block_shift_k",
            layer,
            buf_batch(k_temp),
            buf_raw(k_cache),
            none,
            shift,
        );
        a.op(
            "block_shift_v",
            layer,
            buf_batch(v_temp),
            buf_raw(v_cache),
            none,
            shift,
        );
        a.op(
            "block_multihead_att",
            layer,
            buf_slice(z),
            buf_slice(z),
            none,
            OpParams::MultiHeadAtt(MultiHeadAttConfig {
                n_heads: c.n_heads,
                n_heads0: s.n_heads0,
                n_kv_heads: c.n_kv_heads,
                head_dim: c.head_dim,
                seq_len: c.seq_len,
                q_slice_d0: s.q_d0,
                kv_dim0: s.kv_d0,
                position_pipe_index: pipes.position,
                query_buffer_index: q,
                key_cache_buffer_index: k_cache,
                value_cache_buffer_index: v_cache,
                att_buffer_index: att,
            }),
        );
        a.op(
            "block_cast_y2",
            layer,
            buf_slice(z),
            buf_batch(zq_slice),
            none,
            OpParams::Cast(EMPTY),
        );
        a.op(
            "block_matmul_wo",
            layer,
            buf_batch(zq_slice),
            buf_batch(y),
            size2(weight, s.q_d0, c.dim, "wo weight")?,
            dense,
        );
        a.op(
            "block_cast_d",
            layer,
            buf_batch(y),
            pipe_slice(pipes.zq),
            none,
            OpParams::Cast(EMPTY),
        );
        a.sync(pipes.zq, SyncType::NodeSlices);

        let mut ff_seg = Segment::default();
        let f = &mut ff_seg;
        f.op(
            "block_merge_add2",
            layer,
            pipe_batch(pipes.zq),
            buf_batch(x),
            none,
            OpParams::MergeAdd(EMPTY),
        );
        f.op(
            "block_norm_pre_1",
            layer,
            buf_batch(x),
            inv_rms_ptr,
            none,
            inv_rms_params(1),
        );
        f.op(
            "block_norm_1",
            layer,
            buf_batch(x),
            buf_batch(y),
            rms_norm_size,
            rms_norm_params(1),
        );
        if is_moe {
            let experts = MatmulConfig {
                n_experts: c.n_experts,
                n_active_experts: c.n_active_experts,
                active_expert_indexes_buffer_index: moe_expert_indexes,
            };
            f.op(
                "block_moe_y_repeat",
                layer,
                buf_batch(y),
                buf_batch(moe_yq),
                none,
                OpParams::RepeatZ(EMPTY),
            );
            f.op(
                "block_moe_gate",
                layer,
                buf_batch(y),
                buf_batch(moe_gt),
                size2(f32, c.dim, c.n_experts, "moe gate weight")?,
                dense,
            );
            f.op(
                "block_moe_softmax",
                layer,
                buf_batch(moe_gt),
                buf_batch(moe_gt),
                none,
                OpParams::Softmax(EMPTY),
            );
            f.op(
                "block_moe_gate2",
                layer,
                buf_batch(moe_gt),
                buf_batch(moe_s),
                none,
                OpParams::MoeGate(MoeGateConfig {
                    k: c.n_active_experts,
                    norm_topk: true,
                    indexes_buffer_index: moe_expert_indexes,
                }),
            );
            let up = size3(weight, c.n_experts, c.dim, s.ff_d0, "moe w1/w3 weight")?;
            f.op(
                "block_matmul_w1",
                layer,
                buf_batch(moe_yq),
                buf_batch(moe_d),
                up,
                OpParams::Matmul(experts),
            );
            f.op(
                "block_matmul_w3",
                layer,
                buf_batch(moe_yq),
                buf_batch(moe_l),
                up,
                OpParams::Matmul(experts),
            );
            // dllama's LLM net always uses SiLU here, whatever the header's hidden_act.
            f.op(
                "block_act",
                layer,
                buf_batch(moe_d),
                buf_batch(moe_d),
                none,
                OpParams::Silu(EMPTY),
            );
            f.op(
                "block_mul",
                layer,
                buf_batch(moe_d),
                buf_batch(moe_d),
                none,
                OpParams::Mul {
                    multiplier_buffer_index: moe_l,
                },
            );
            if moe_d != moe_dq {
                f.op(
                    "block_cast_d2",
                    layer,
                    buf_batch(moe_d),
                    buf_batch(moe_dq),
                    none,
                    OpParams::Cast(EMPTY),
                );
            }
            f.op(
                "block_matmul_w2",
                layer,
                buf_batch(moe_dq),
                buf_batch(moe_y),
                size3(weight, c.n_experts, s.ff_d0, c.dim, "moe w2 weight")?,
                OpParams::Matmul(experts),
            );
            f.op(
                "block_moe_scale",
                layer,
                buf_batch(moe_y),
                buf_batch(moe_y),
                none,
                OpParams::Scale {
                    scale_buffer_index: moe_s,
                },
            );
            f.op(
                "block_moe_merge_sum",
                layer,
                buf_batch(moe_y),
                buf_batch(y),
                none,
                OpParams::MergeSum(EMPTY),
            );
        } else {
            if y != yq {
                f.op(
                    "block_cast_y3",
                    layer,
                    buf_batch(y),
                    buf_batch(yq),
                    none,
                    OpParams::Cast(EMPTY),
                );
            }
            let up = size2(weight, c.dim, s.ff_d0, "w1/w3 weight")?;
            f.op(
                "block_matmul_w1",
                layer,
                buf_batch(yq),
                buf_batch(d),
                up,
                dense,
            );
            f.op(
                "block_matmul_w3",
                layer,
                buf_batch(yq),
                buf_batch(l),
                up,
                dense,
            );
            // dllama's LLM net always uses SiLU here, whatever the header's hidden_act.
            f.op(
                "block_act",
                layer,
                buf_batch(d),
                buf_batch(d),
                none,
                OpParams::Silu(EMPTY),
            );
            f.op(
                "block_mul",
                layer,
                buf_batch(d),
                buf_batch(d),
                none,
                OpParams::Mul {
                    multiplier_buffer_index: l,
                },
            );
            if d != dq {
                f.op(
                    "block_cast_d2",
                    layer,
                    buf_batch(d),
                    buf_batch(dq),
                    none,
                    OpParams::Cast(EMPTY),
                );
            }
            f.op(
                "block_matmul_w2",
                layer,
                buf_batch(dq),
                buf_batch(y),
                size2(weight, s.ff_d0, c.dim, "w2 weight")?,
                dense,
            );
        }
        f.op(
            "block_cast_d3",
            layer,
            buf_batch(y),
            pipe_slice(pipes.zq),
            none,
            OpParams::Cast(EMPTY),
        );
        f.sync(pipes.zq, SyncType::NodeSlices);
        segments.push(att_seg.0);
        segments.push(ff_seg.0);
    }

    let mut end = Segment::default();
    end.op(
        "final_merge_add",
        0,
        pipe_batch(pipes.zq),
        buf_batch(x),
        none,
        OpParams::MergeAdd(EMPTY),
    );
    end.op(
        "final_norm_pre",
        0,
        buf_batch(x),
        buf_batch(inv_rms),
        none,
        inv_rms_params(1),
    );
    end.op(
        "final_norm",
        0,
        buf_batch(x),
        buf_batch(y),
        rms_norm_size,
        rms_norm_params(1),
    );
    if y != yq {
        end.op(
            "final_cast_y",
            0,
            buf_batch(y),
            buf_batch(yq),
            none,
            OpParams::Cast(EMPTY),
        );
    }
    // dllama passes a zero-initialised matmul config here: expert index buffer 0, not
    // `act_exp_ix` as everywhere else.
    end.op(
        "final_matmul_logits",
        0,
        buf_batch(yq),
        buf_batch(logits_slice),
        size2(weight, c.dim, s.vocab_d0, "classifier weight")?,
        OpParams::Matmul(MatmulConfig {
            n_experts: 0,
            n_active_experts: 0,
            active_expert_indexes_buffer_index: 0,
        }),
    );
    end.op(
        "final_cast_logits",
        0,
        buf_batch(logits_slice),
        pipe_slice(pipes.logits),
        none,
        OpParams::Cast(EMPTY),
    );
    end.sync(pipes.logits, SyncType::NodeSlicesExceptRoot);
    segments.push(end.0);

    Ok(NodeConfig {
        node_index,
        buffers: b.0,
        segments,
    })
}
