//! Binding the node config to kernels, once: every op becomes an [`OpPlan`] with its validated
//! shapes and resolved [`View`]s, so the forward pass does no lookups and no shape checks.
//!
//! The checks mirror dllama's `init*Forward` asserts and add the ones dllama leaves to luck:
//! every row any op reads or writes is proven to lie inside its pipe or buffer, every pair of
//! slots an op borrows at once is distinct (unless the op is written to run in place), and
//! every index into a cache or weight is bounded by the sizes in the config.
use airllama_kernels::block::{BLOCK_SIZE, FloatType};
use airllama_net::{
    NetConfig, NodeConfig, OpConfig, OpParams, PointerConfig, PointerSource, PointerType, RopeKind,
    Size3D,
};

use super::ExecutorError;

/// Where a pointer config leads, in elements of its slot's type (`f32` values or Q80 blocks).
///
/// Row `r` (`0..z*y`, z-major as dllama numbers its per-row pointers) is the slot's elements
/// `offset + r * stride .. offset + r * stride + len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct View {
    /// Index into the executor's slots (pipes first, then buffers).
    pub slot: usize,
    /// Element type of the slot.
    pub float_type: FloatType,
    /// First element of row 0.
    pub offset: usize,
    /// Elements from one row to the next.
    pub stride: usize,
    /// Elements of one row.
    pub len: usize,
    /// Values of one row (`len`, or `32 * len` for Q80).
    pub x: usize,
    /// Rows per z plane (`nBatches` for batch pointers).
    pub y: usize,
    /// z planes (MoE experts).
    pub z: usize,
    /// dllama's `hasPointerContinuousMemory` (raw and batch pointers).
    pub contiguous: bool,
}

impl View {
    /// Rows in all planes.
    pub fn rows(&self) -> usize {
        self.z * self.y
    }

    /// The element range of row `r`.
    pub fn row(&self, r: usize) -> std::ops::Range<usize> {
        let start = self.offset + r * self.stride;
        start..start + self.len
    }
}

/// Elements of the slot's storage type that hold `values` values.
fn elements(float_type: FloatType, values: usize) -> Option<usize> {
    match float_type {
        FloatType::F32 => Some(values),
        FloatType::Q80 if values.is_multiple_of(BLOCK_SIZE) => Some(values / BLOCK_SIZE),
        _ => None,
    }
}

/// What the executor knows of a pipe or buffer.
#[derive(Clone, Debug)]
pub(crate) struct SlotInfo {
    /// Name from the config (for errors).
    pub name: String,
    /// Its size.
    pub size: Size3D,
    /// Its element type.
    pub float_type: FloatType,
    /// Elements of that type it holds.
    pub elements: usize,
}

/// How an op's MATMUL picks its weights.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Experts {
    /// Experts in the weight (z of the weight size).
    pub n_experts: usize,
    /// Experts used per batch item (z of input and output).
    pub n_active: usize,
    /// Slot of the F32 buffer with the active expert indexes (`nActive` per batch item).
    pub indexes: usize,
}

/// The kernel an op is bound to, with everything its forward needs.
#[derive(Clone, Debug)]
pub(crate) enum Kernel {
    /// MERGE_ADD, F32 input: add the `slices` input slices of each row into the output row.
    MergeAddF32 { slices: usize },
    /// MERGE_ADD, Q80 input.
    MergeAddQ80 { slices: usize },
    /// MERGE_SUM: sum the z planes of the input into the output.
    MergeSum,
    /// EMBEDDING: copy (F32 output) or quantize (Q80 output) the token's weight row.
    Embedding { quantize: bool, vocab: usize },
    /// INV_RMS of `columns` columns of `col_size` values per row.
    InvRms {
        epsilon: f32,
        columns: usize,
        col_size: usize,
    },
    /// RMS_NORM with an F32 input.
    RmsNormF32 {
        inv_rms: usize,
        inv_rms_stride: usize,
        columns: usize,
        col_size: usize,
        in_place: bool,
    },
    /// RMS_NORM with a Q80 input (one column).
    RmsNormQ80 { inv_rms: usize },
    /// MATMUL with F32 weights and input.
    MatmulF32 {
        n: usize,
        d: usize,
        experts: Option<Experts>,
    },
    /// MATMUL with Q40 weights and Q80 input.
    MatmulQ40 {
        n: usize,
        d: usize,
        experts: Option<Experts>,
    },
    /// ROPE, in place.
    Rope {
        falcon: bool,
        dim0: usize,
        head_dim: usize,
        shift: usize,
        slice_dim: usize,
        cache: usize,
        positions: usize,
        seq_len: usize,
    },
    /// MULTIHEAD_ATT.
    MultiHeadAtt {
        n_heads: usize,
        n_heads0: usize,
        n_kv_heads: usize,
        head_dim: usize,
        seq_len: usize,
        q_slice_d0: usize,
        kv_dim0: usize,
        positions: usize,
        query: usize,
        key_cache: usize,
        value_cache: usize,
        att: usize,
    },
    /// GELU in place.
    Gelu,
    /// SILU in place.
    Silu,
    /// MUL by a buffer with rows of the output's width.
    Mul { multiplier: usize, in_place: bool },
    /// SCALE each row by one value of a buffer.
    Scale { scale: usize, in_place: bool },
    /// CAST between equal types: a byte copy.
    CastCopy,
    /// CAST F32 → Q80.
    CastQuantize,
    /// CAST Q80 → F32.
    CastDequantize,
    /// REPEAT_Z F32 → Q80: quantize into plane 0, copy into the others.
    RepeatZ,
    /// SHIFT: copy each batch row into the raw output at `position * x`.
    Shift { positions: usize },
    /// SOFTMAX of each row, in place.
    Softmax,
    /// MOE_GATE: top-k of each row into the output planes and the index buffer.
    MoeGate {
        k: usize,
        norm_topk: bool,
        indexes: usize,
    },
}

/// One op, bound to its kernel.
#[derive(Debug)]
pub(crate) struct OpPlan {
    /// Name from the config.
    pub name: String,
    /// Layer index from the config.
    pub layer: u32,
    /// Input.
    pub input: View,
    /// Output.
    pub output: View,
    /// Weight shape (bytes are held by the executor).
    pub weight_size: Size3D,
    /// Kernel and its bound parameters.
    pub kernel: Kernel,
    /// For ROPE: the config needed to fill the rope cache once, before the first forward.
    pub rope_init: Option<airllama_net::RopeConfig>,
}

/// Context for validation errors.
pub(crate) struct Binder<'a> {
    pub net: &'a NetConfig,
    pub node: &'a NodeConfig,
    pub slots: &'a [SlotInfo],
}

fn bad(op: &OpConfig, what: impl Into<String>) -> ExecutorError {
    ExecutorError::BadOp {
        op: op.name.clone(),
        layer: op.index,
        what: what.into(),
    }
}

impl Binder<'_> {
    fn n_pipes(&self) -> usize {
        self.net.pipes.len()
    }

    /// Slot index of buffer `b`.
    fn buffer(&self, op: &OpConfig, b: u32, what: &str) -> Result<usize, ExecutorError> {
        let slot = self.n_pipes() + b as usize;
        if slot >= self.slots.len() {
            return Err(bad(op, format!("{what} buffer index {b} out of range")));
        }
        Ok(slot)
    }

    /// Slot index of pipe `p`.
    fn pipe(&self, op: &OpConfig, p: u32, what: &str) -> Result<usize, ExecutorError> {
        if p as usize >= self.n_pipes() {
            return Err(bad(op, format!("{what} pipe index {p} out of range")));
        }
        Ok(p as usize)
    }

    /// Requires slot `slot` to be F32 with at least `elements` values.
    fn f32_slot(
        &self,
        op: &OpConfig,
        slot: usize,
        elements: usize,
        what: &str,
    ) -> Result<(), ExecutorError> {
        let info = &self.slots[slot];
        if info.float_type != FloatType::F32 {
            return Err(bad(op, format!("{what} ({}) is not F32", info.name)));
        }
        if info.elements < elements {
            return Err(bad(
                op,
                format!(
                    "{what} ({}) holds {} values, needs {elements}",
                    info.name, info.elements
                ),
            ));
        }
        Ok(())
    }

    /// dllama's `resolvePointer`, checked.
    fn resolve(&self, op: &OpConfig, p: &PointerConfig, what: &str) -> Result<View, ExecutorError> {
        let slot = match p.source {
            PointerSource::Pipe => self.pipe(op, p.index, what)?,
            PointerSource::Buffer => self.buffer(op, p.index, what)?,
        };
        let info = &self.slots[slot];
        let ft = info.float_type;
        let unsupported = || {
            bad(
                op,
                format!("{what} ({}) has a type no op reads or writes", info.name),
            )
        };
        let view = match p.pointer_type {
            PointerType::Raw => {
                let values = usize::try_from(info.size.length()).map_err(|_| unsupported())?;
                let len = elements(ft, values).ok_or_else(unsupported)?;
                View {
                    slot,
                    float_type: ft,
                    offset: 0,
                    stride: len,
                    len,
                    x: values,
                    y: 1,
                    z: 1,
                    contiguous: true,
                }
            }
            PointerType::Batch | PointerType::BatchedSlice => {
                let (z, y, x) = (
                    info.size.z() as usize,
                    info.size.y() as usize,
                    info.size.x() as usize,
                );
                if y != self.net.n_batches as usize {
                    return Err(bad(
                        op,
                        format!("{what} ({}) has {y} rows, not nBatches", info.name),
                    ));
                }
                let stride = elements(ft, x).ok_or_else(unsupported)?;
                if p.pointer_type == PointerType::Batch {
                    View {
                        slot,
                        float_type: ft,
                        offset: 0,
                        stride,
                        len: stride,
                        x,
                        y,
                        z,
                        contiguous: true,
                    }
                } else {
                    let n_nodes = self.net.n_nodes as usize;
                    if !x.is_multiple_of(n_nodes) {
                        return Err(bad(
                            op,
                            format!("{what} ({}) width {x} does not divide by nNodes", info.name),
                        ));
                    }
                    let xs = x / n_nodes;
                    let len = elements(ft, xs).ok_or_else(unsupported)?;
                    let offset = len * self.node.node_index as usize;
                    View {
                        slot,
                        float_type: ft,
                        offset,
                        stride,
                        len,
                        x: xs,
                        y,
                        z,
                        contiguous: false,
                    }
                }
            }
        };
        let rows = view.rows();
        if rows == 0 || view.len == 0 {
            return Err(bad(op, format!("{what} ({}) is empty", info.name)));
        }
        let end = (rows - 1)
            .checked_mul(view.stride)
            .and_then(|v| v.checked_add(view.offset))
            .and_then(|v| v.checked_add(view.len));
        if end.is_none_or(|e| e > info.elements) {
            return Err(bad(
                op,
                format!("{what} ({}) rows run past the end", info.name),
            ));
        }
        Ok(view)
    }

    /// Binds one op.
    pub fn bind(&self, op: &OpConfig) -> Result<OpPlan, ExecutorError> {
        let input = self.resolve(op, &op.input, "input")?;
        let output = self.resolve(op, &op.output, "output")?;
        let (it, ot) = (input.float_type, output.float_type);
        let wt = op.weight_size.float_type();
        let batches = self.net.n_batches as usize;
        let same_slot = input.slot == output.slot;
        let in_place = same_slot && input == output;
        // Ops that read their input while other threads write the output need distinct slots;
        // ops written to run in place need the very same view.
        let distinct = || -> Result<(), ExecutorError> {
            if same_slot {
                Err(bad(op, "input and output share a pipe or buffer"))
            } else {
                Ok(())
            }
        };
        let in_place_or_distinct = || -> Result<bool, ExecutorError> {
            if same_slot && !in_place {
                Err(bad(
                    op,
                    "input and output overlap without being the same rows",
                ))
            } else {
                Ok(in_place)
            }
        };
        let no_weight = || -> Result<(), ExecutorError> {
            if op.weight_size.n_bytes() != 0 {
                Err(bad(op, "op takes no weight"))
            } else {
                Ok(())
            }
        };
        let quant = |want_in: FloatType, want_w: Option<FloatType>, want_out: FloatType| {
            it == want_in
                && ot == want_out
                && (wt.is_none() || wt == want_w || (want_w.is_none() && wt == Some(want_in)))
        };
        // Every op but SHIFT (whose output is a raw cache) reads and writes batch rows.
        let shift = matches!(op.params, OpParams::Shift { .. });
        if input.y < batches || (output.y < batches && !shift) {
            return Err(bad(op, "input or output has fewer rows than nBatches"));
        }
        let mut rope_init = None;
        let kernel = match &op.params {
            OpParams::MergeAdd(_) => {
                no_weight()?;
                distinct()?;
                if ot != FloatType::F32 || input.y < batches || output.y < batches || output.x == 0
                {
                    return Err(bad(op, "unsupported merge-add types or shapes"));
                }
                if !input.x.is_multiple_of(output.x) {
                    return Err(bad(op, "input width is not a multiple of the output width"));
                }
                let slices = input.x / output.x;
                match it {
                    FloatType::F32 => Kernel::MergeAddF32 { slices },
                    FloatType::Q80 if output.x.is_multiple_of(BLOCK_SIZE) => {
                        Kernel::MergeAddQ80 { slices }
                    }
                    _ => return Err(bad(op, "unsupported merge-add input type")),
                }
            }
            OpParams::MergeSum(_) => {
                no_weight()?;
                distinct()?;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || output.z != 1
                    || input.x < output.x
                {
                    return Err(bad(op, "unsupported merge-sum types or shapes"));
                }
                Kernel::MergeSum
            }
            OpParams::Embedding(_) => {
                distinct()?;
                if it != FloatType::F32 || input.x != 1 || wt != Some(FloatType::F32) {
                    return Err(bad(op, "unsupported embedding types or shapes"));
                }
                if op.weight_size.x() as usize != output.x {
                    return Err(bad(
                        op,
                        "embedding weight width differs from the output width",
                    ));
                }
                let quantize = match ot {
                    FloatType::F32 => false,
                    FloatType::Q80 => true,
                    _ => return Err(bad(op, "unsupported embedding output type")),
                };
                let vocab = (op.weight_size.length() / op.weight_size.x().max(1) as u64) as usize;
                Kernel::Embedding { quantize, vocab }
            }
            OpParams::InvRms(c) => {
                no_weight()?;
                distinct()?;
                let columns = c.n_columns as usize;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || columns == 0
                    || output.x < columns
                {
                    return Err(bad(op, "unsupported inv-rms types or shapes"));
                }
                Kernel::InvRms {
                    epsilon: c.epsilon,
                    columns,
                    col_size: input.x / columns,
                }
            }
            OpParams::RmsNorm(c) => {
                let inv_rms = self.buffer(op, c.inv_rms_buffer_index, "inv-rms")?;
                let columns = c.n_columns as usize;
                if columns == 0
                    || output.x != input.x
                    || ot != FloatType::F32
                    || wt != Some(FloatType::F32)
                {
                    return Err(bad(op, "unsupported rms-norm types or shapes"));
                }
                if !input.x.is_multiple_of(columns)
                    || op.weight_size.x() as usize != input.x / columns
                {
                    return Err(bad(op, "rms-norm weight width is not the column width"));
                }
                if op.weight_size.length() != u64::from(op.weight_size.x()) {
                    return Err(bad(op, "rms-norm weight is not one row"));
                }
                let inv_stride = self.slots[inv_rms].size.x() as usize;
                if inv_stride < columns {
                    return Err(bad(op, "inv-rms buffer narrower than the columns"));
                }
                self.f32_slot(op, inv_rms, batches * inv_stride, "inv-rms buffer")?;
                if inv_rms == input.slot || inv_rms == output.slot {
                    return Err(bad(op, "inv-rms buffer is the input or output"));
                }
                match it {
                    FloatType::F32 => {
                        let in_place = in_place_or_distinct()?;
                        Kernel::RmsNormF32 {
                            inv_rms,
                            inv_rms_stride: inv_stride,
                            columns,
                            col_size: input.x / columns,
                            in_place,
                        }
                    }
                    FloatType::Q80 if columns == 1 => {
                        distinct()?;
                        Kernel::RmsNormQ80 { inv_rms }
                    }
                    _ => return Err(bad(op, "unsupported rms-norm input type")),
                }
            }
            OpParams::Matmul(c) => {
                distinct()?;
                let n = op.weight_size.y() as usize;
                let d = op.weight_size.x() as usize;
                let active = (c.n_active_experts as usize).max(1);
                let n_experts = (c.n_experts as usize).max(1);
                if input.x != n || output.x != d || input.z != active || output.z != active {
                    return Err(bad(
                        op,
                        "matmul input/output shapes do not match the weight",
                    ));
                }
                if op.weight_size.z() as usize != n_experts
                    || input.y < batches
                    || output.y < batches
                {
                    return Err(bad(op, "matmul expert count or batch rows do not match"));
                }
                let experts = if c.n_active_experts > 0 {
                    let indexes =
                        self.buffer(op, c.active_expert_indexes_buffer_index, "active experts")?;
                    self.f32_slot(op, indexes, batches * active, "active expert buffer")?;
                    if indexes == output.slot || indexes == input.slot {
                        return Err(bad(op, "active expert buffer is the input or output"));
                    }
                    Some(Experts {
                        n_experts,
                        n_active: active,
                        indexes,
                    })
                } else {
                    None
                };
                if quant(FloatType::F32, Some(FloatType::F32), FloatType::F32)
                    && wt == Some(FloatType::F32)
                {
                    Kernel::MatmulF32 { n, d, experts }
                } else if it == FloatType::Q80 && wt == Some(FloatType::Q40) && ot == FloatType::F32
                {
                    Kernel::MatmulQ40 { n, d, experts }
                } else {
                    return Err(bad(
                        op,
                        "unsupported matmul types (dllama has F32·F32 and Q80·Q40)",
                    ));
                }
            }
            OpParams::Rope(c) => {
                no_weight()?;
                if !in_place || it != FloatType::F32 {
                    return Err(bad(op, "rope must run in place on F32 rows"));
                }
                let s = &c.slice;
                let positions = self.pipe(op, c.position_pipe_index, "position")?;
                let cache = self.buffer(op, c.rope_cache_buffer_index, "rope cache")?;
                let head_dim = s.head_dim as usize;
                let seq_len = s.seq_len as usize;
                let dim0 = if c.is_q { s.q_dim0 } else { s.kv_dim0 } as usize;
                if head_dim == 0
                    || !head_dim.is_multiple_of(2)
                    || dim0 == 0
                    || !dim0.is_multiple_of(2)
                    || dim0 > input.len
                    || seq_len == 0
                {
                    return Err(bad(op, "rope dimensions are inconsistent"));
                }
                self.f32_slot(op, positions, batches, "position pipe")?;
                let falcon = c.rope_type == RopeKind::Falcon;
                let (shift, slice_dim) = if falcon {
                    if !dim0.is_multiple_of(head_dim) {
                        return Err(bad(op, "rope dimension is not whole heads"));
                    }
                    (0, head_dim)
                } else {
                    let shift = if c.is_q { s.q_shift as usize } else { 0 };
                    let slice_dim = s.slice_dim as usize;
                    let end = s.q_dim_end.checked_sub(s.kv_dim_start).map(|v| v as usize);
                    if end != Some(slice_dim)
                        || shift + dim0 > slice_dim
                        || !slice_dim.is_multiple_of(2)
                        || !s.kv_dim_start.is_multiple_of(2)
                    {
                        return Err(bad(op, "llama rope slice is inconsistent"));
                    }
                    (shift, slice_dim)
                };
                let cache_len = seq_len
                    .checked_mul(slice_dim)
                    .ok_or_else(|| bad(op, "rope cache too large"))?;
                self.f32_slot(op, cache, cache_len, "rope cache")?;
                if cache == input.slot || positions == input.slot {
                    return Err(bad(op, "rope cache or positions alias the rows"));
                }
                rope_init = Some(*c);
                Kernel::Rope {
                    falcon,
                    dim0,
                    head_dim,
                    shift,
                    slice_dim,
                    cache,
                    positions,
                    seq_len,
                }
            }
            OpParams::MultiHeadAtt(c) => {
                no_weight()?;
                let positions = self.pipe(op, c.position_pipe_index, "position")?;
                let query = self.buffer(op, c.query_buffer_index, "query")?;
                let key_cache = self.buffer(op, c.key_cache_buffer_index, "key cache")?;
                let value_cache = self.buffer(op, c.value_cache_buffer_index, "value cache")?;
                let att = self.buffer(op, c.att_buffer_index, "att")?;
                let (n_heads, n_heads0, n_kv_heads) = (
                    c.n_heads as usize,
                    c.n_heads0 as usize,
                    c.n_kv_heads as usize,
                );
                let (head_dim, seq_len) = (c.head_dim as usize, c.seq_len as usize);
                let (q_slice_d0, kv_dim0) = (c.q_slice_d0 as usize, c.kv_dim0 as usize);
                if n_kv_heads == 0
                    || head_dim == 0
                    || seq_len == 0
                    || n_heads0 == 0
                    || n_heads % n_kv_heads != 0
                {
                    return Err(bad(op, "attention head counts are inconsistent"));
                }
                if ot != FloatType::F32
                    || output.x != q_slice_d0
                    || output.y < batches
                    || output.z != 1
                {
                    return Err(bad(op, "attention output is not qSliceD0 wide"));
                }
                if n_heads0 * head_dim > q_slice_d0 {
                    return Err(bad(op, "attention heads exceed the query slice"));
                }
                let kv_mul = n_heads / n_kv_heads;
                let last_kv_head = (n_heads0 - 1) / kv_mul;
                if (last_kv_head + 1) * head_dim > kv_dim0 {
                    return Err(bad(op, "attention kv heads exceed the kv slice"));
                }
                self.f32_slot(op, positions, batches, "position pipe")?;
                self.f32_slot(op, query, batches * q_slice_d0, "query buffer")?;
                self.f32_slot(op, key_cache, seq_len * kv_dim0, "key cache")?;
                self.f32_slot(op, value_cache, seq_len * kv_dim0, "value cache")?;
                self.f32_slot(op, att, batches * n_heads0 * seq_len, "att buffer")?;
                let borrowed = [output.slot, att, query, key_cache, value_cache, positions];
                for (i, a) in borrowed.iter().enumerate() {
                    if borrowed[i + 1..].contains(a) {
                        return Err(bad(op, "attention buffers alias each other"));
                    }
                }
                Kernel::MultiHeadAtt {
                    n_heads,
                    n_heads0,
                    n_kv_heads,
                    head_dim,
                    seq_len,
                    q_slice_d0,
                    kv_dim0,
                    positions,
                    query,
                    key_cache,
                    value_cache,
                    att,
                }
            }
            OpParams::Gelu(_) | OpParams::Silu(_) => {
                no_weight()?;
                if !in_place || it != FloatType::F32 {
                    return Err(bad(op, "activation must run in place on F32 rows"));
                }
                if matches!(op.params, OpParams::Gelu(_)) {
                    Kernel::Gelu
                } else {
                    Kernel::Silu
                }
            }
            OpParams::Mul {
                multiplier_buffer_index,
            } => {
                no_weight()?;
                let multiplier = self.buffer(op, *multiplier_buffer_index, "multiplier")?;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || input.x != output.x
                    || input.y != output.y
                    || input.z != output.z
                {
                    return Err(bad(op, "unsupported mul types or shapes"));
                }
                let in_place = in_place_or_distinct()?;
                if multiplier == output.slot || multiplier == input.slot {
                    return Err(bad(op, "multiplier aliases the rows"));
                }
                self.f32_slot(op, multiplier, output.x * output.rows(), "multiplier")?;
                Kernel::Mul {
                    multiplier,
                    in_place,
                }
            }
            OpParams::Scale { scale_buffer_index } => {
                no_weight()?;
                let scale = self.buffer(op, *scale_buffer_index, "scale")?;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || input.x != output.x
                    || input.y != output.y
                    || input.z != output.z
                {
                    return Err(bad(op, "unsupported scale types or shapes"));
                }
                let in_place = in_place_or_distinct()?;
                if scale == output.slot || scale == input.slot {
                    return Err(bad(op, "scale buffer aliases the rows"));
                }
                self.f32_slot(op, scale, input.rows(), "scale buffer")?;
                Kernel::Scale { scale, in_place }
            }
            OpParams::Cast(_) => {
                distinct()?;
                if input.x != output.x || input.z != output.z || input.y != output.y {
                    return Err(bad(op, "cast input and output shapes differ"));
                }
                match (it, ot) {
                    (FloatType::F32, FloatType::F32) | (FloatType::Q80, FloatType::Q80) => {
                        Kernel::CastCopy
                    }
                    (FloatType::F32, FloatType::Q80) => Kernel::CastQuantize,
                    (FloatType::Q80, FloatType::F32) => Kernel::CastDequantize,
                    _ => return Err(bad(op, "unsupported cast types")),
                }
            }
            OpParams::RepeatZ(_) => {
                distinct()?;
                if it != FloatType::F32
                    || ot != FloatType::Q80
                    || input.x != output.x
                    || input.y != output.y
                    || input.z != 1
                {
                    return Err(bad(op, "unsupported repeat-z types or shapes"));
                }
                Kernel::RepeatZ
            }
            OpParams::Shift { index_pipe_index } => {
                no_weight()?;
                distinct()?;
                let positions = self.pipe(op, *index_pipe_index, "position")?;
                self.f32_slot(op, positions, batches, "position pipe")?;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || !input.contiguous
                    || !output.contiguous
                    || output.y != 1
                    || output.z != 1
                {
                    return Err(bad(op, "unsupported shift types or shapes"));
                }
                if positions == output.slot || positions == input.slot {
                    return Err(bad(op, "position pipe aliases the rows"));
                }
                Kernel::Shift { positions }
            }
            OpParams::Softmax(_) => {
                no_weight()?;
                if !in_place || it != FloatType::F32 {
                    return Err(bad(op, "softmax must run in place on F32 rows"));
                }
                Kernel::Softmax
            }
            OpParams::MoeGate(c) => {
                no_weight()?;
                distinct()?;
                let k = c.k as usize;
                let indexes = self.buffer(op, c.indexes_buffer_index, "expert indexes")?;
                if !quant(FloatType::F32, None, FloatType::F32)
                    || input.z != 1
                    || k == 0
                    || input.x < k
                    || output.z != k
                    || output.x != 1
                {
                    return Err(bad(op, "unsupported moe-gate types or shapes"));
                }
                self.f32_slot(op, indexes, batches * k, "expert index buffer")?;
                if indexes == output.slot || indexes == input.slot {
                    return Err(bad(op, "expert index buffer aliases the rows"));
                }
                Kernel::MoeGate {
                    k,
                    norm_topk: c.norm_topk,
                    indexes,
                }
            }
            #[allow(unreachable_patterns)]
            _ => return Err(bad(op, "unsupported op")),
        };
        Ok(OpPlan {
            name: op.name.clone(),
            layer: op.index,
            input,
            output,
            weight_size: op.weight_size,
            kernel,
            rope_init,
        })
    }
}
