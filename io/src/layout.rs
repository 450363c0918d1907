//! The tensor layout table of a `.m` file, and how dllama cuts each tensor between nodes.
//!
//! dllama never stores tensor names or offsets: `loadLlmNetWeight` walks the file from the end
//! of the header, tensor after tensor, in a fixed order decided by the header, and hands each
//! one to the root loader as "root only" (the embedding), "all nodes" (norms, the MoE router),
//! "row matmul slices" or "column matmul slices". Getting that order or a split wrong does not
//! fail loudly: the model just computes garbage, or one node reads another node's bytes.
//!
//! So this module is the one place that derives it. [`ModelLayout::new`] lists every tensor in
//! file order with its role, layer, expert, float type, shape, byte offset and size, and
//! refuses a file whose size differs from what the header implies. [`ModelLayout::node_split`]
//! checks that a node count divides everything dllama divides, and [`NodeSplit`] gives the byte
//! ranges of each node's slice exactly as `splitRowMatmulWeight` / `splitColMatmulWeight` cut
//! them. Weight loading, layer streaming and zero-data movement (each node reading its own
//! slice from its own copy of the file) all read these ranges rather than recomputing them.
//!
//! Shapes follow the memory order: a matrix is `rows` stored rows of `cols` values each, where
//! `rows` is the matmul's output dimension (dllama's `d`) and `cols` its input dimension (`n`).
//! A row split gives each node `rows / N` whole rows, one contiguous range; a column split gives
//! each node `cols / N` values of every row, a strided set of ranges ([`StridedRange`]).
//!
//! ```
//! use airllama_io::layout::{LayoutError, ModelLayout, TensorRole};
//! use airllama_io::model::{ArchType, HiddenAct, ModelParams};
//! use airllama_kernels::block::FloatType;
//!
//! let header = ModelParams {
//!     arch: ArchType::Llama, hidden_act: HiddenAct::Silu, dim: 64, hidden_dim: 128,
//!     n_layers: 2, n_heads: 4, n_kv_heads: 2, weight_type: FloatType::Q40, seq_len: 256,
//!     vocab_size: 32, n_experts: 0, n_active_experts: 0, rope_theta: None,
//!     rope_scaling: None, head_dim: None, norm_epsilon: None, moe_hidden_dim: None,
//! }
//! .to_header()?;
//! // A file of the wrong size is refused, and the error says which size is right.
//! let Err(LayoutError::FileTooShort { expected, .. }) = ModelLayout::new(&header, 0) else {
//!     unreachable!()
//! };
//! let layout = ModelLayout::new(&header, expected)?;
//! let split = layout.node_split(2)?;
//! // wo is [dim, q_dim] = [64, 64] in Q40: rows of 2 blocks (36 bytes); node 1 takes the
//! // second block of every row.
//! let wo = layout.position(TensorRole::Wo, 1, None).unwrap();
//! let slice = split.slice(wo, 1).unwrap();
//! assert_eq!((slice.bytes.rows, slice.bytes.row_stride, slice.bytes.bytes_per_row), (64, 36, 18));
//! assert_eq!(slice.bytes.start, layout.tensors()[wo].offset + 18);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::fmt;
use std::ops::Range;

use airllama_kernels::block::{BLOCK_SIZE, FloatType};
use thiserror::Error;

use crate::model::{ModelConfig, ModelHeader};

/// Most tensors a layout may list. Real models have tens of thousands at most (94 layers × 128
/// experts × 3); the cap keeps a hostile header from making the table much larger than memory
/// allows even when the file size matches.
pub const MAX_TENSORS: u64 = 1 << 20;

/// What a tensor is for. Each role maps to the dllama op that receives it
/// ([`TensorRole::op_name`]) and to the way the root distributes it ([`TensorRole::split`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// Token embedding, F32 `[vocab, dim]`; only the root uses it.
    Embedding,
    /// Query projection `[q_dim, dim]`.
    Q,
    /// Key projection `[kv_dim, dim]`.
    K,
    /// Value projection `[kv_dim, dim]`.
    V,
    /// Attention output projection `[dim, q_dim]`.
    Wo,
    /// MoE router, F32 `[n_experts, dim]`.
    MoeGate,
    /// Feed-forward gate projection `[ffn_dim, dim]` (per expert in MoE models).
    W1,
    /// Feed-forward down projection `[dim, ffn_dim]` (per expert in MoE models).
    W2,
    /// Feed-forward up projection `[ffn_dim, dim]` (per expert in MoE models).
    W3,
    /// Per-head query RMS norm weights, F32 `[head_dim]` (Qwen3).
    QNorm,
    /// Per-head key RMS norm weights, F32 `[head_dim]` (Qwen3).
    KNorm,
    /// RMS norm before attention, F32 `[dim]`.
    AttentionNorm,
    /// RMS norm before the feed-forward block, F32 `[dim]`.
    FfnNorm,
    /// RMS norm after the last layer, F32 `[dim]`.
    FinalNorm,
    /// Output projection to logits `[vocab, dim]`.
    Classifier,
}

/// How dllama's root hands a tensor to the nodes (`NnRootWeightLoader`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SplitKind {
    /// Only the root loads it (`loadRoot`): the embedding.
    RootOnly,
    /// Every node gets all of it (`loadAll`): norms and the MoE router.
    Replicated,
    /// Each node gets `rows / N` whole rows (`loadRowMatmulSlices`): q, k, v, w1, w3, classifier.
    Rows,
    /// Each node gets `cols / N` values of every row (`loadColMatmulSlices`): wo, w2.
    Columns,
}

impl TensorRole {
    /// The dllama op the weight is loaded into; the name in weight records on the wire.
    pub const fn op_name(self) -> &'static str {
        match self {
            TensorRole::Embedding => "embedding",
            TensorRole::Q => "block_matmul_q",
            TensorRole::K => "block_matmul_k",
            TensorRole::V => "block_matmul_v",
            TensorRole::Wo => "block_matmul_wo",
            TensorRole::MoeGate => "block_moe_gate",
            TensorRole::W1 => "block_matmul_w1",
            TensorRole::W2 => "block_matmul_w2",
            TensorRole::W3 => "block_matmul_w3",
            TensorRole::QNorm => "block_norm_q",
            TensorRole::KNorm => "block_norm_k",
            TensorRole::AttentionNorm => "block_norm_0",
            TensorRole::FfnNorm => "block_norm_1",
            TensorRole::FinalNorm => "final_norm",
            TensorRole::Classifier => "final_matmul_logits",
        }
    }

    /// The role whose weights go to op `name` (inverse of [`TensorRole::op_name`]).
    pub fn from_op_name(name: &str) -> Option<TensorRole> {
        TensorRole::ALL
            .into_iter()
            .find(|role| role.op_name() == name)
    }

    /// Every role.
    pub const ALL: [TensorRole; 15] = [
        TensorRole::Embedding,
        TensorRole::Q,
        TensorRole::K,
        TensorRole::V,
        TensorRole::Wo,
        TensorRole::MoeGate,
        TensorRole::W1,
        TensorRole::W2,
        TensorRole::W3,
        TensorRole::QNorm,
        TensorRole::KNorm,
        TensorRole::AttentionNorm,
        TensorRole::FfnNorm,
        TensorRole::FinalNorm,
        TensorRole::Classifier,
    ];

    /// How the root distributes this tensor.
    pub const fn split(self) -> SplitKind {
        match self {
            TensorRole::Embedding => SplitKind::RootOnly,
            TensorRole::Q | TensorRole::K | TensorRole::V => SplitKind::Rows,
            TensorRole::W1 | TensorRole::W3 | TensorRole::Classifier => SplitKind::Rows,
            TensorRole::Wo | TensorRole::W2 => SplitKind::Columns,
            TensorRole::MoeGate
            | TensorRole::QNorm
            | TensorRole::KNorm
            | TensorRole::AttentionNorm
            | TensorRole::FfnNorm
            | TensorRole::FinalNorm => SplitKind::Replicated,
        }
    }

    /// A short name for listings.
    pub const fn name(self) -> &'static str {
        match self {
            TensorRole::Embedding => "embedding",
            TensorRole::Q => "q",
            TensorRole::K => "k",
            TensorRole::V => "v",
            TensorRole::Wo => "wo",
            TensorRole::MoeGate => "moe_gate",
            TensorRole::W1 => "w1",
            TensorRole::W2 => "w2",
            TensorRole::W3 => "w3",
            TensorRole::QNorm => "q_norm",
            TensorRole::KNorm => "k_norm",
            TensorRole::AttentionNorm => "attn_norm",
            TensorRole::FfnNorm => "ffn_norm",
            TensorRole::FinalNorm => "final_norm",
            TensorRole::Classifier => "classifier",
        }
    }
}

impl fmt::Display for TensorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// What it is.
    pub role: TensorRole,
    /// Layer, which is also the op index on the wire (0 for the embedding, final norm and
    /// classifier, as in dllama).
    pub layer: u32,
    /// Expert index of MoE w1/w2/w3.
    pub expert: Option<u32>,
    /// Storage type.
    pub float_type: FloatType,
    /// Stored rows (the matmul output dimension; 1 for vectors).
    pub rows: u32,
    /// Values per row (the matmul input dimension).
    pub cols: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

impl TensorEntry {
    /// Bytes of one stored row (0 for a tensor without rows, which no layout lists).
    pub fn row_bytes(&self) -> u64 {
        self.size.checked_div(u64::from(self.rows)).unwrap_or(0)
    }

    /// The tensor's bytes in the file.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.size
    }

    /// How the root distributes it.
    pub fn split(&self) -> SplitKind {
        self.role.split()
    }
}

/// A set of equally long, equally spaced byte ranges: `rows` ranges of `bytes_per_row` bytes,
/// the first at `start`, each `row_stride` bytes after the previous. A contiguous range is one
/// row. A column slice of a row-major matrix is one range per matrix row; listing them one by
/// one would make the table as long as the model has rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StridedRange {
    /// Offset of the first byte.
    pub start: u64,
    /// Distance between the starts of consecutive rows.
    pub row_stride: u64,
    /// Bytes taken from each row.
    pub bytes_per_row: u64,
    /// Number of rows.
    pub rows: u64,
}

impl StridedRange {
    /// One contiguous range.
    pub const fn contiguous(start: u64, len: u64) -> StridedRange {
        StridedRange {
            start,
            row_stride: len,
            bytes_per_row: len,
            rows: 1,
        }
    }

    /// A strided set, folded into one contiguous range when the rows touch.
    pub const fn strided(start: u64, row_stride: u64, bytes_per_row: u64, rows: u64) -> Self {
        if row_stride == bytes_per_row || rows <= 1 {
            StridedRange::contiguous(start, bytes_per_row.saturating_mul(rows))
        } else {
            StridedRange {
                start,
                row_stride,
                bytes_per_row,
                rows,
            }
        }
    }

    /// Total bytes selected (saturating: ranges from a layout never come near `u64::MAX`).
    pub const fn total_bytes(&self) -> u64 {
        self.bytes_per_row.saturating_mul(self.rows)
    }

    /// Whether it is a single range.
    pub const fn is_contiguous(&self) -> bool {
        self.rows <= 1
    }

    /// One past the last selected byte (the start if nothing is selected). Saturating, so a
    /// hand-built range that would pass `u64::MAX` reads as ending there and fails any bounds
    /// check instead of wrapping.
    pub const fn end(&self) -> u64 {
        if self.rows == 0 {
            self.start
        } else {
            self.start
                .saturating_add((self.rows - 1).saturating_mul(self.row_stride))
                .saturating_add(self.bytes_per_row)
        }
    }

    /// The ranges, in order (saturating like [`StridedRange::end`]).
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        (0..self.rows).map(move |r| {
            let s = self.start.saturating_add(r.saturating_mul(self.row_stride));
            s..s.saturating_add(self.bytes_per_row)
        })
    }

    /// Appends the selected bytes of `file` to `out`, rows concatenated (what dllama's splitters
    /// copy into the buffer they send). `None` when the ranges run past `file`.
    pub fn gather_into(&self, file: &[u8], out: &mut Vec<u8>) -> Option<()> {
        // `end` saturates, so a range past u64::MAX fails here too.
        if self.end() > file.len() as u64 {
            return None;
        }
        if self.bytes_per_row == 0 {
            return Some(());
        }
        out.reserve(usize::try_from(self.total_bytes()).ok()?);
        for r in self.ranges() {
            out.extend_from_slice(file.get(r.start as usize..r.end as usize)?);
        }
        Some(())
    }
}

impl fmt::Display for StridedRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_contiguous() {
            write!(f, "[{}, {})", self.start, self.end())
        } else {
            write!(
                f,
                "{} rows × {} B from {} every {} B",
                self.rows, self.bytes_per_row, self.start, self.row_stride
            )
        }
    }
}

/// Why a layout or a node split was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// The file ends before the last tensor does.
    #[error(
        "model file is shorter than its header implies: tensors end at byte {expected}, the file has {actual} bytes"
    )]
    FileTooShort {
        /// Size the header implies.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// Bytes follow the last tensor.
    #[error(
        "model file is longer than its header implies: tensors end at byte {expected}, the file has {actual} bytes"
    )]
    FileTooLong {
        /// Size the header implies.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// The header implies sizes beyond `u64`, or more than [`MAX_TENSORS`] tensors.
    #[error("the header implies a model too large to describe")]
    TooLarge,
    /// A quantized tensor whose rows are not whole blocks of 32 values.
    #[error(
        "{role} rows hold {cols} values, not a multiple of the {block}-value blocks of {float_type:?}"
    )]
    RowNotBlockAligned {
        /// Which tensor.
        role: TensorRole,
        /// Values per row.
        cols: u32,
        /// Block size.
        block: u32,
        /// Its float type.
        float_type: FloatType,
    },
    /// Zero nodes.
    #[error("the node count must be at least 1")]
    ZeroNodes,
    /// A dimension dllama splits between nodes does not divide by the node count.
    #[error("{what} = {value} does not divide by {n_nodes} nodes")]
    NotDivisible {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The node count.
        n_nodes: u32,
    },
    /// A column slice would cut a quantized block in two.
    #[error(
        "{role} column slice of {slice_cols} values over {n_nodes} nodes is not a whole number of {block}-value blocks"
    )]
    SliceNotBlockAligned {
        /// Which tensor.
        role: TensorRole,
        /// Values per row in one node's slice.
        slice_cols: u32,
        /// Block size.
        block: u32,
        /// The node count.
        n_nodes: u32,
    },
    /// A node's slice of q or kv would split a RoPE pair (dllama asserts both are even).
    #[error("{what} per node = {value} is odd: RoPE needs pairs ({n_nodes} nodes)")]
    OddRopeSlice {
        /// `q_dim` or `kv_dim`.
        what: &'static str,
        /// The per-node value.
        value: u64,
        /// The node count.
        n_nodes: u32,
    },
}

/// Values per storage block: 32 for the quantized types, 1 otherwise (dllama's `getBlockSize`).
pub const fn block_values(float_type: FloatType) -> u32 {
    match float_type {
        FloatType::Q40 | FloatType::Q80 => BLOCK_SIZE as u32,
        FloatType::F32 | FloatType::F16 => 1,
    }
}

/// One tensor to be listed: role, shape, type.
#[derive(Clone, Copy)]
struct Spec {
    role: TensorRole,
    rows: u32,
    cols: u32,
    float_type: FloatType,
}

impl Spec {
    fn bytes(&self) -> Result<u64, LayoutError> {
        let block = block_values(self.float_type);
        if !self.cols.is_multiple_of(block) {
            return Err(LayoutError::RowNotBlockAligned {
                role: self.role,
                cols: self.cols,
                block,
                float_type: self.float_type,
            });
        }
        let row = self
            .float_type
            .bytes_for(u64::from(self.cols))
            .ok_or(LayoutError::TooLarge)?;
        row.checked_mul(u64::from(self.rows))
            .ok_or(LayoutError::TooLarge)
    }
}

/// The tensors of one layer in file order, with the expert index of each.
fn layer_specs(c: &ModelConfig) -> Vec<(Spec, Option<u32>)> {
    let w = c.weight_type;
    let spec = |role, rows, cols, float_type| Spec {
        role,
        rows,
        cols,
        float_type,
    };
    let ffn = c.ffn_dim();
    let mut out = vec![
        (spec(TensorRole::Q, c.q_dim, c.dim, w), None),
        (spec(TensorRole::K, c.kv_dim, c.dim, w), None),
        (spec(TensorRole::V, c.kv_dim, c.dim, w), None),
        (spec(TensorRole::Wo, c.dim, c.q_dim, w), None),
    ];
    let experts = c.n_experts_or_1();
    if c.is_moe() {
        out.push((
            spec(TensorRole::MoeGate, c.n_experts, c.dim, FloatType::F32),
            None,
        ));
    }
    // Only the expert loop's length is data-dependent; the caller bounds it before calling.
    for e in 0..experts {
        let expert = c.is_moe().then_some(e);
        out.push((spec(TensorRole::W1, ffn, c.dim, w), expert));
        out.push((spec(TensorRole::W2, c.dim, ffn, w), expert));
        out.push((spec(TensorRole::W3, ffn, c.dim, w), expert));
    }
    if c.arch.has_qk_norm() {
        out.push((spec(TensorRole::QNorm, 1, c.head_dim, FloatType::F32), None));
        out.push((spec(TensorRole::KNorm, 1, c.head_dim, FloatType::F32), None));
    }
    out.push((
        spec(TensorRole::AttentionNorm, 1, c.dim, FloatType::F32),
        None,
    ));
    out.push((spec(TensorRole::FfnNorm, 1, c.dim, FloatType::F32), None));
    out
}

/// Every tensor of a `.m` file, in file order, covering the file from the end of the header to
/// its last byte.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelLayout {
    config: ModelConfig,
    header_size: u64,
    file_size: u64,
    tensors: Vec<TensorEntry>,
    /// Index of each layer's first tensor, plus one past the last layer's tensors.
    layer_starts: Vec<usize>,
}

impl ModelLayout {
    /// Lists the tensors `header` implies and checks they end exactly at `file_size`.
    ///
    /// Sizes are computed and compared before anything is allocated, and the number of tensors
    /// is capped by [`MAX_TENSORS`], so a hostile header cannot make this allocate much.
    pub fn new(header: &ModelHeader, file_size: u64) -> Result<ModelLayout, LayoutError> {
        let c = *header.config();
        let header_size = header.header_size();
        let embedding = Spec {
            role: TensorRole::Embedding,
            rows: c.vocab_size,
            cols: c.dim,
            float_type: FloatType::F32,
        };
        let final_norm = Spec {
            role: TensorRole::FinalNorm,
            rows: 1,
            cols: c.dim,
            float_type: FloatType::F32,
        };
        let classifier = Spec {
            role: TensorRole::Classifier,
            rows: c.vocab_size,
            cols: c.dim,
            float_type: c.weight_type,
        };

        // Tensors per layer: 4 attention + router + 3 per expert + 2 qk norms + 2 norms.
        let per_layer_count = 4 + u64::from(c.is_moe()) + 3 * u64::from(c.n_experts_or_1()) + 4;
        let count = u64::from(c.n_layers)
            .checked_mul(per_layer_count)
            .and_then(|n| n.checked_add(3))
            .filter(|&n| n <= MAX_TENSORS)
            .ok_or(LayoutError::TooLarge)?;

        let specs = layer_specs(&c);
        let mut layer_bytes = 0u64;
        for (spec, _) in &specs {
            layer_bytes = layer_bytes
                .checked_add(spec.bytes()?)
                .ok_or(LayoutError::TooLarge)?;
        }
        let expected = [embedding.bytes()?, final_norm.bytes()?, classifier.bytes()?]
            .into_iter()
            .try_fold(header_size, u64::checked_add)
            .and_then(|s| s.checked_add(layer_bytes.checked_mul(u64::from(c.n_layers))?))
            .ok_or(LayoutError::TooLarge)?;
        if file_size < expected {
            return Err(LayoutError::FileTooShort {
                expected,
                actual: file_size,
            });
        }
        if file_size > expected {
            return Err(LayoutError::FileTooLong {
                expected,
                actual: file_size,
            });
        }

        let mut tensors = Vec::with_capacity(count as usize);
        let mut layer_starts = Vec::with_capacity(c.n_layers as usize + 1);
        let mut offset = header_size;
        // All sizes were summed with overflow checks above, so these additions cannot overflow.
        let mut push = |spec: &Spec, layer: u32, expert: Option<u32>| -> Result<(), LayoutError> {
            let size = spec.bytes()?;
            tensors.push(TensorEntry {
                role: spec.role,
                layer,
                expert,
                float_type: spec.float_type,
                rows: spec.rows,
                cols: spec.cols,
                offset,
                size,
            });
            offset += size;
            Ok(())
        };
        push(&embedding, 0, None)?;
        for layer in 0..c.n_layers {
            layer_starts.push(1 + layer as usize * specs.len());
            for (spec, expert) in &specs {
                push(spec, layer, *expert)?;
            }
        }
        layer_starts.push(1 + c.n_layers as usize * specs.len());
        push(&final_norm, 0, None)?;
        push(&classifier, 0, None)?;
        debug_assert_eq!(offset, file_size);
        Ok(ModelLayout {
            config: c,
            header_size,
            file_size,
            tensors,
            layer_starts,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Where the first tensor starts.
    pub fn header_size(&self) -> u64 {
        self.header_size
    }

    /// The file size, which is where the last tensor ends.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Every tensor, in file order (which is also the order dllama's root sends them).
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }

    /// The tensors of one layer, in file order.
    pub fn layer_tensors(&self, layer: u32) -> Option<&[TensorEntry]> {
        let l = layer as usize;
        let (&start, &end) = (self.layer_starts.get(l)?, self.layer_starts.get(l + 1)?);
        self.tensors.get(start..end)
    }

    /// The bytes of one layer: what a layer streamer reads in one go.
    pub fn layer_range(&self, layer: u32) -> Option<Range<u64>> {
        let t = self.layer_tensors(layer)?;
        Some(t.first()?.offset..t.last()?.range().end)
    }

    /// The index (into [`ModelLayout::tensors`]) of the tensor with this role, layer and expert.
    pub fn position(&self, role: TensorRole, layer: u32, expert: Option<u32>) -> Option<usize> {
        let candidates = match role {
            TensorRole::Embedding => 0..1,
            TensorRole::FinalNorm | TensorRole::Classifier => {
                self.tensors.len() - 2..self.tensors.len()
            }
            _ => {
                let l = layer as usize;
                *self.layer_starts.get(l)?..*self.layer_starts.get(l + 1)?
            }
        };
        candidates.into_iter().find(|&i| {
            let t = &self.tensors[i];
            t.role == role && t.layer == layer && t.expert == expert
        })
    }

    /// The tensor with this role, layer and expert.
    pub fn find(&self, role: TensorRole, layer: u32, expert: Option<u32>) -> Option<&TensorEntry> {
        self.position(role, layer, expert).map(|i| &self.tensors[i])
    }

    /// Checks that `n_nodes` divides everything dllama divides between nodes, and returns the
    /// per-node slices.
    ///
    /// dllama asserts (and would otherwise compute wrong slices or crash) that: the query and
    /// key/value head counts divide (attention heads are split; a node's query heads need their
    /// key/value heads local); `q_dim`, `kv_dim`, the feed-forward dimension and the vocabulary
    /// divide (row splits of q, k, v, w1, w3, classifier; column splits of wo, w2); each node's
    /// q and kv slice is even (RoPE pairs); and for quantized weights each column slice is whole
    /// 32-value blocks (row slices are whole rows, already block-aligned).
    pub fn node_split(&self, n_nodes: u32) -> Result<NodeSplit<'_>, LayoutError> {
        if n_nodes == 0 {
            return Err(LayoutError::ZeroNodes);
        }
        let c = &self.config;
        let divides = |what: &'static str, value: u32| {
            if value.is_multiple_of(n_nodes) {
                Ok(())
            } else {
                Err(LayoutError::NotDivisible {
                    what,
                    value: value.into(),
                    n_nodes,
                })
            }
        };
        divides("n_heads", c.n_heads)?;
        divides("n_kv_heads", c.n_kv_heads)?;
        divides("q_dim", c.q_dim)?;
        divides("kv_dim", c.kv_dim)?;
        divides("ffn_dim", c.ffn_dim())?;
        divides("vocab_size", c.vocab_size)?;
        for (what, dim) in [("q_dim", c.q_dim), ("kv_dim", c.kv_dim)] {
            let per_node = dim / n_nodes;
            if !per_node.is_multiple_of(2) {
                return Err(LayoutError::OddRopeSlice {
                    what,
                    value: per_node.into(),
                    n_nodes,
                });
            }
        }
        let block = block_values(c.weight_type);
        for (role, cols) in [(TensorRole::Wo, c.q_dim), (TensorRole::W2, c.ffn_dim())] {
            let slice_cols = cols / n_nodes;
            if !slice_cols.is_multiple_of(block) {
                return Err(LayoutError::SliceNotBlockAligned {
                    role,
                    slice_cols,
                    block,
                    n_nodes,
                });
            }
        }
        Ok(NodeSplit {
            layout: self,
            n_nodes,
        })
    }
}

/// One node's part of one tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeSlice {
    /// Index into [`ModelLayout::tensors`].
    pub tensor: usize,
    /// The node (0 = root).
    pub node: u32,
    /// Where its bytes are in the file; concatenated in order they are the node's weight.
    pub bytes: StridedRange,
    /// The `offset` field of dllama's weight record: where this piece goes in the op's weight
    /// buffer. `expert × slice bytes` for MoE experts (the op holds every expert's slice back to
    /// back), else 0. dllama computes it in 32 bits; slices of real models stay far below 4 GiB.
    pub op_offset: u64,
}

/// A layout cut between `n_nodes` nodes, validated by [`ModelLayout::node_split`].
#[derive(Clone, Copy, Debug)]
pub struct NodeSplit<'a> {
    layout: &'a ModelLayout,
    n_nodes: u32,
}

impl<'a> NodeSplit<'a> {
    /// The layout it cuts.
    pub fn layout(&self) -> &'a ModelLayout {
        self.layout
    }

    /// The node count.
    pub fn n_nodes(&self) -> u32 {
        self.n_nodes
    }

    /// Bytes each node holds of tensor `tensor` (dllama's `sliceSize.nBytes` for split
    /// matrices; the whole tensor when replicated; 0 for non-root nodes of the embedding is
    /// not represented here: see [`NodeSplit::slice`]).
    pub fn slice_bytes(&self, tensor: usize) -> Option<u64> {
        let t = self.layout.tensors.get(tensor)?;
        Some(match t.split() {
            SplitKind::RootOnly | SplitKind::Replicated => t.size,
            SplitKind::Rows | SplitKind::Columns => t.size / u64::from(self.n_nodes),
        })
    }

    /// Node `node`'s part of tensor `tensor`, or `None` when that node gets none of it (the
    /// embedding off the root) or the indexes are out of range.
    pub fn slice(&self, tensor: usize, node: u32) -> Option<NodeSlice> {
        if node >= self.n_nodes {
            return None;
        }
        let t = self.layout.tensors.get(tensor)?;
        let n = u64::from(self.n_nodes);
        let i = u64::from(node);
        // node_split checked the divisions; the file size bounds every product below.
        let bytes = match t.split() {
            SplitKind::RootOnly if node == 0 => StridedRange::contiguous(t.offset, t.size),
            SplitKind::RootOnly => return None,
            SplitKind::Replicated => StridedRange::contiguous(t.offset, t.size),
            SplitKind::Rows => {
                let len = t.size / n;
                StridedRange::contiguous(t.offset + i * len, len)
            }
            SplitKind::Columns => {
                let row = t.row_bytes();
                let part = row / n;
                StridedRange::strided(t.offset + i * part, row, part, u64::from(t.rows))
            }
        };
        let op_offset = match (t.split(), t.expert) {
            (SplitKind::Rows | SplitKind::Columns, Some(e)) => u64::from(e) * bytes.total_bytes(),
            _ => 0,
        };
        Some(NodeSlice {
            tensor,
            node,
            bytes,
            op_offset,
        })
    }

    /// Node `node`'s slices of every tensor it receives, in file order: for a worker, exactly
    /// the weight records dllama's root sends it, in the order it sends them.
    pub fn node_slices(&self, node: u32) -> impl Iterator<Item = NodeSlice> + '_ {
        (0..self.layout.tensors.len()).filter_map(move |t| self.slice(t, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_range_folds_and_gathers() {
        let r = StridedRange::strided(2, 4, 4, 3);
        assert!(r.is_contiguous());
        assert_eq!((r.start, r.end(), r.total_bytes()), (2, 14, 12));
        let s = StridedRange::strided(1, 4, 2, 3);
        assert_eq!(s.ranges().collect::<Vec<_>>(), vec![1..3, 5..7, 9..11]);
        let file: Vec<u8> = (0..12).collect();
        let mut out = Vec::new();
        s.gather_into(&file, &mut out).unwrap();
        assert_eq!(out, [1, 2, 5, 6, 9, 10]);
        assert_eq!(
            StridedRange::strided(1, 4, 2, 4).gather_into(&file, &mut out),
            None
        );
    }

    #[test]
    fn op_names_round_trip() {
        for role in TensorRole::ALL {
            assert_eq!(TensorRole::from_op_name(role.op_name()), Some(role));
        }
        assert_eq!(TensorRole::from_op_name("block_rope_q"), None);
    }
}
