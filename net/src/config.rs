//! The net config and node config dllama's root sends to each worker, with every C struct it
//! copies onto the wire decoded into typed Rust values.
//!
//! Layouts (little-endian, x86-64 / aarch64 C ABI, no padding anywhere):
//!
//! | struct | bytes | fields |
//! |---|---|---|
//! | `NnSize3D` | 40 | i32 floatType, u32 z, y, x, u64 length, nBytes, nBytesXY |
//! | `NnPointerConfig` | 12 | u32 source, pointerIndex, type |
//! | `NnInvRmsOpConfig` | 8 | f32 epsilon, u32 nColumns |
//! | `NnRmsNormOpConfig` | 8 | u32 invRmsBufferIndex, nColumns |
//! | `NnMatmulOpConfig` | 12 | u32 nExperts, nActiveExperts, activeExpertIndexesBufferIndex |
//! | `NnRopeOpConfig` | 120 | u32 type, isQ, positionPipeIndex, ropeCacheBufferIndex, f32 scalingFactor, low, high, u32 origMaxSeqLen, `NnRopeSlice` (88) |
//! | `NnRopeSlice` | 88 | u32 qDim0, qDimStart, qDimEnd, qShift, kvDim, kvDim0, kvDimStart, sliceDim, seqLen, headDim, nKvHeads, f32 ropeTheta, `NnSize3D` cacheSize |
//! | `NnMultiHeadAttOpConfig` | 48 | 12 × u32 |
//! | `NnMulOpCodeConfig`, `NnScaleOpCodeConfig`, `NnShiftOpCodeConfig` | 4 | one u32 index |
//! | `NnMoeGateOpCodeConfig` | 12 | u32 k, normTopk, indexesBufferIndex |
//! | empty structs (merge add/sum, embedding, silu, gelu, cast, repeat-z, softmax) | 1 | one uninitialised byte |

use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{Reader, put_f32, put_i32, put_string, put_u32, put_u64};
use crate::error::DecodeError;
use crate::limits::*;

/// dllama's `NnFloatType` for a known type (`F_UNK` = -1 is [`Size3D::EMPTY`]'s `None`): the
/// kernels' type, so a size decoded from the wire picks a kernel without conversion.
pub use airllama_kernels::block::FloatType;

macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident, $context:literal { $($(#[$vmeta:meta])* $variant:ident = $value:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Decodes the C enum value; unknown values are an error.
            pub fn from_wire(value: u32) -> Result<Self, DecodeError> {
                match value {
                    $($value => Ok($name::$variant),)+
                    _ => Err(DecodeError::UnknownValue { context: $context, value: value.into() }),
                }
            }

            /// The C enum value.
            pub const fn to_wire(self) -> u32 {
                self as u32
            }

            fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Self::from_wire(r.u32($context)?)
            }
        }
    };
}

wire_enum!(
    /// dllama's `NnOpCode`.
    OpCode, "op code" {
        /// `OP_MERGE_ADD`
        MergeAdd = 0,
        /// `OP_MERGE_SUM`
        MergeSum = 1,
        /// `OP_EMBEDDING`
        Embedding = 2,
        /// `OP_INV_RMS`
        InvRms = 3,
        /// `OP_RMS_NORM`
        RmsNorm = 4,
        /// `OP_MATMUL`
        Matmul = 5,
        /// `OP_ROPE`
        Rope = 6,
        /// `OP_MULTIHEAD_ATT`
        MultiHeadAtt = 7,
        /// `OP_GELU`
        Gelu = 8,
        /// `OP_SILU`
        Silu = 9,
        /// `OP_MUL`
        Mul = 10,
        /// `OP_SCALE`
        Scale = 11,
        /// `OP_CAST`
        Cast = 12,
        /// `OP_REPEAT_Z`
        RepeatZ = 13,
        /// `OP_SHIFT`
        Shift = 14,
        /// `OP_SOFTMAX`
        Softmax = 15,
        /// `OP_MOE_GATE`
        MoeGate = 16,
    }
);

wire_enum!(
    /// dllama's `NnPointerSource`: where an op's input or output lives.
    PointerSource, "pointer source" {
        /// `SRC_PIPE`: a pipe shared by all nodes.
        Pipe = 0,
        /// `SRC_BUFFER`: a buffer private to this node.
        Buffer = 1,
    }
);

wire_enum!(
    /// dllama's `NnPointerType`: how an op addresses its input or output.
    PointerType, "pointer type" {
        /// `PNTR_RAW`: the whole memory.
        Raw = 0,
        /// `PNTR_BATCH`: one row per batch item.
        Batch = 1,
        /// `PNTR_BATCHED_SLICE`: this node's slice of each batch row.
        BatchedSlice = 2,
    }
);

wire_enum!(
    /// dllama's `NnSyncType`.
    SyncType, "sync type" {
        /// `SYNC_WITH_ROOT`: the root sends the whole pipe row to every worker.
        WithRoot = 0,
        /// `SYNC_NODE_SLICES`: every node sends its slice of the row to every other node.
        NodeSlices = 1,
        /// `SYNC_NODE_SLICES_EXCEPT_ROOT`: workers send their slice to the root only.
        NodeSlicesExceptRoot = 2,
    }
);

/// dllama's `NnRopeType`: the kernels' type, so a decoded ROPE op picks its kernel without
/// conversion.
pub use airllama_kernels::ops::RopeKind;

/// dllama's `NnOpQuantType`: `<input>_<weight>_<output>` float types of an op, which picks its
/// kernel. Not on the wire: derived from the op's pointers and weight ([`OpConfig::quant_type`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpQuantType {
    /// `F32_F32_F32`
    F32F32F32,
    /// `F32_Q40_F32`
    F32Q40F32,
    /// `F32_Q40_Q80`
    F32Q40Q80,
    /// `F32_F32_Q80`
    F32F32Q80,
    /// `Q80_Q80_Q80`
    Q80Q80Q80,
    /// `Q80_Q80_F32`
    Q80Q80F32,
    /// `Q80_Q40_F32`
    Q80Q40F32,
    /// `Q80_F32_F32`
    Q80F32F32,
}

impl OpQuantType {
    /// dllama's `getOpQuantType`; `weight` is `None` for ops without a weight (`F_UNK`, which
    /// then stands for the input type). `None` for combinations dllama rejects.
    pub fn new(input: FloatType, weight: Option<FloatType>, output: FloatType) -> Option<Self> {
        use FloatType::{F32, Q40, Q80};
        Some(match (input, weight, output) {
            (F32, None | Some(F32), F32) => OpQuantType::F32F32F32,
            (F32, Some(Q40), F32) => OpQuantType::F32Q40F32,
            (F32, None | Some(F32), Q80) => OpQuantType::F32F32Q80,
            (F32, Some(Q40), Q80) => OpQuantType::F32Q40Q80,
            (Q80, None | Some(Q80), F32) => OpQuantType::Q80Q80F32,
            (Q80, Some(F32), F32) => OpQuantType::Q80F32F32,
            (Q80, Some(Q40), F32) => OpQuantType::Q80Q40F32,
            (Q80, None | Some(Q80), Q80) => OpQuantType::Q80Q80Q80,
            _ => return None,
        })
    }
}

fn check_index(index: u32, count: usize, context: &'static str) -> Result<(), DecodeError> {
    if (index as usize) < count {
        Ok(())
    } else {
        Err(DecodeError::IndexOutOfRange {
            context,
            index: index.into(),
            count: count as u64,
        })
    }
}

fn check_bool(value: u32, context: &'static str) -> Result<bool, DecodeError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::UnknownValue {
            context,
            value: value.into(),
        }),
    }
}

fn inconsistent<T>(context: &'static str) -> Result<T, DecodeError> {
    Err(DecodeError::Inconsistent { context })
}

/// dllama's `NnSize3D`: a float type and `z × y × x` dimensions with derived byte counts.
/// Only consistent values can exist: the byte counts always match the type and dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Size3D {
    float_type: Option<FloatType>,
    z: u32,
    y: u32,
    x: u32,
    length: u64,
    n_bytes: u64,
    n_bytes_xy: u64,
}

impl Size3D {
    /// Bytes on the wire.
    pub const WIRE_SIZE: usize = 40;

    /// dllama's `size0()`: `F_UNK` and all zeros (ops without weights).
    pub const EMPTY: Size3D = Size3D {
        float_type: None,
        z: 0,
        y: 0,
        x: 0,
        length: 0,
        n_bytes: 0,
        n_bytes_xy: 0,
    };

    /// dllama's `size3D`; `None` when the element count is above [`MAX_ELEMENTS`] or not a
    /// whole number of blocks of a quantized type.
    pub fn new(float_type: FloatType, z: u32, y: u32, x: u32) -> Option<Size3D> {
        let xy = u64::from(y) * u64::from(x);
        let length = xy.checked_mul(u64::from(z))?;
        if length > MAX_ELEMENTS {
            return None;
        }
        Some(Size3D {
            float_type: Some(float_type),
            z,
            y,
            x,
            length,
            n_bytes: float_type.bytes_for(length)?,
            n_bytes_xy: float_type.bytes_for(xy)?,
        })
    }

    /// `size2D(type, y, x)`.
    pub fn new_2d(float_type: FloatType, y: u32, x: u32) -> Option<Size3D> {
        Size3D::new(float_type, 1, y, x)
    }

    /// The element type, `None` for `F_UNK` (the empty size).
    pub fn float_type(&self) -> Option<FloatType> {
        self.float_type
    }
    /// Outer dimension (experts of a MoE matmul).
    pub fn z(&self) -> u32 {
        self.z
    }
    /// Rows.
    pub fn y(&self) -> u32 {
        self.y
    }
    /// Columns.
    pub fn x(&self) -> u32 {
        self.x
    }
    /// `z·y·x`.
    pub fn length(&self) -> u64 {
        self.length
    }
    /// Bytes of the whole tensor.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
    /// Bytes of one `y × x` plane.
    pub fn n_bytes_xy(&self) -> u64 {
        self.n_bytes_xy
    }
    /// True for `size0()`.
    pub fn is_empty(&self) -> bool {
        self.float_type.is_none()
    }
    /// Bytes of one row of `x` values (dllama's `getBytes(floatType, x)`), 0 for the empty size.
    pub fn row_bytes(&self) -> u64 {
        match self.float_type {
            // Cannot fail: x divides a length already proven to be whole blocks only when y·z
            // is 1; check instead of assuming.
            Some(t) => t.bytes_for(self.x.into()).unwrap_or(0),
            None => 0,
        }
    }

    /// Reads and validates a Size3D.
    pub fn decode(r: &mut Reader<'_>, context: &'static str) -> Result<Size3D, DecodeError> {
        let code = r.i32(context)?;
        let z = r.u32(context)?;
        let y = r.u32(context)?;
        let x = r.u32(context)?;
        let length = r.u64(context)?;
        let n_bytes = r.u64(context)?;
        let n_bytes_xy = r.u64(context)?;
        let expected = match code {
            -1 => Size3D::EMPTY,
            0..=3 => {
                let Some(t) = FloatType::from_code(code as u32) else {
                    return Err(DecodeError::UnknownValue {
                        context,
                        value: code.into(),
                    });
                };
                match Size3D::new(t, z, y, x) {
                    Some(s) => s,
                    None => return inconsistent(context),
                }
            }
            _ => {
                return Err(DecodeError::UnknownValue {
                    context,
                    value: code.into(),
                });
            }
        };
        let got = Size3D {
            float_type: expected.float_type,
            z,
            y,
            x,
            length,
            n_bytes,
            n_bytes_xy,
        };
        if got != expected {
            return inconsistent(context);
        }
        Ok(got)
    }

    /// Appends the 40 wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_i32(out, self.float_type.map_or(-1, |t| t.code() as i32));
        put_u32(out, self.z);
        put_u32(out, self.y);
        put_u32(out, self.x);
        put_u64(out, self.length);
        put_u64(out, self.n_bytes);
        put_u64(out, self.n_bytes_xy);
    }
}

/// dllama's `NnPointerConfig`: which pipe or buffer an op reads or writes, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PointerConfig {
    /// Pipe or buffer.
    pub source: PointerSource,
    /// Index into the net config's pipes or the node config's buffers (checked on decode).
    pub index: u32,
    /// Addressing mode.
    pub pointer_type: PointerType,
}

impl PointerConfig {
    /// Bytes on the wire.
    pub const WIRE_SIZE: usize = 12;

    fn decode(r: &mut Reader<'_>, bounds: &Bounds) -> Result<Self, DecodeError> {
        let source = PointerSource::read(r)?;
        let index = r.u32("pointer index")?;
        let pointer_type = PointerType::read(r)?;
        match source {
            PointerSource::Pipe => check_index(index, bounds.n_pipes, "pointer pipe index")?,
            PointerSource::Buffer => check_index(index, bounds.n_buffers, "pointer buffer index")?,
        }
        Ok(PointerConfig {
            source,
            index,
            pointer_type,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.source.to_wire());
        put_u32(out, self.index);
        put_u32(out, self.pointer_type.to_wire());
    }
}

/// What the rest of the config declares, for range checks of indexes inside op configs.
#[derive(Clone, Copy, Debug)]
struct Bounds<'a> {
    n_pipes: usize,
    n_buffers: usize,
    buffers: &'a [BufferConfig],
}

/// A pipe: memory every node has, synchronised over the network (dllama's `NnPipeConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeConfig {
    /// Name (`POS`, `TOK`, `X`, `LG`, `ZQ` in dllama's LLM net).
    pub name: String,
    /// Shape: `nBatches` rows of `x` values.
    pub size: Size3D,
}

/// A buffer: memory private to one node (dllama's `NnBufferConfig`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferConfig {
    /// Name (`x`, `q`, `k`, `rope_cache`, …).
    pub name: String,
    /// Shape.
    pub size: Size3D,
}

/// dllama's `NnSyncConfig`: after a segment's ops, exchange rows of a pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncConfig {
    /// The pipe to synchronise (checked against the net config).
    pub pipe_index: u32,
    /// Who sends what.
    pub sync_type: SyncType,
}

/// The config byte of an op whose C struct is empty (`sizeof` 1, never initialised by dllama).
/// The byte is kept only so that re-encoding gives back the received bytes; nothing may depend
/// on it. `None` when the root sent a config size of 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EmptyConfig {
    /// The raw byte, if one was sent.
    pub raw: Option<u8>,
}

impl EmptyConfig {
    /// What dllama sends: one byte (we send 0).
    pub const DLLAMA: EmptyConfig = EmptyConfig { raw: Some(0) };
}

/// `NnInvRmsOpConfig`: per-row inverse RMS of the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvRmsConfig {
    /// Added to the mean square before the square root.
    pub epsilon: f32,
    /// Number of independent groups per row (1, or heads per node for Qwen3's q/k norms).
    pub n_columns: u32,
}

/// `NnRmsNormOpConfig`: scale by a previously computed inverse RMS and the norm weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RmsNormConfig {
    /// Buffer holding the inverse RMS values (checked).
    pub inv_rms_buffer_index: u32,
    /// Groups per row; must match the inverse-RMS op that filled the buffer.
    pub n_columns: u32,
}

/// `NnMatmulOpConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulConfig {
    /// Experts stacked along the weight's z (0 for a dense matmul).
    pub n_experts: u32,
    /// Experts used per token (0 for a dense matmul).
    pub n_active_experts: u32,
    /// Buffer with the chosen expert indexes (always a valid buffer index in dllama's nets).
    pub active_expert_indexes_buffer_index: u32,
}

/// dllama's `NnRopeSlice` without its trailing cache size (that is [`RopeConfig::cache_size`]
/// here): the kernels' type, so the executor fills the cache from a decoded slice as it is.
pub use airllama_kernels::ops::RopeSlice;

/// `NnRopeOpConfig`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    /// Pairing scheme.
    pub rope_type: RopeKind,
    /// Query (true) or key (false) rotation (`isQ`, 0 or 1 on the wire).
    pub is_q: bool,
    /// Pipe with the positions (checked).
    pub position_pipe_index: u32,
    /// Buffer holding the cos/sin cache (checked, and at least `cache_size` bytes).
    pub rope_cache_buffer_index: u32,
    /// Llama 3.1 scaling factor (1.0 = none).
    pub rope_scaling_factor: f32,
    /// Llama 3.1 low frequency factor.
    pub rope_scaling_low_freq_factor: f32,
    /// Llama 3.1 high frequency factor.
    pub rope_scaling_high_freq_factor: f32,
    /// Llama 3.1 original context length.
    pub rope_scaling_orig_max_seq_len: u32,
    /// This node's slice.
    pub slice: RopeSlice,
    /// Shape of the rope cache buffer (`NnRopeSlice::cacheSize`, the slice's last field on the
    /// wire): `seq_len × slice_dim` (llama) or `seq_len × head_dim` (falcon) `f32`s.
    pub cache_size: Size3D,
}

/// `NnMultiHeadAttOpConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MultiHeadAttConfig {
    /// Query heads in the model (non-zero).
    pub n_heads: u32,
    /// Query heads on this node (non-zero, at most `n_heads`).
    pub n_heads0: u32,
    /// Key/value heads in the model (non-zero, divides `n_heads`).
    pub n_kv_heads: u32,
    /// Dimensions per head (non-zero).
    pub head_dim: u32,
    /// Context length (non-zero).
    pub seq_len: u32,
    /// Query dimensions on this node.
    pub q_slice_d0: u32,
    /// Key/value dimensions on this node.
    pub kv_dim0: u32,
    /// Pipe with the positions (checked).
    pub position_pipe_index: u32,
    /// Query buffer (checked).
    pub query_buffer_index: u32,
    /// Key cache buffer (checked).
    pub key_cache_buffer_index: u32,
    /// Value cache buffer (checked).
    pub value_cache_buffer_index: u32,
    /// Attention scores buffer (checked).
    pub att_buffer_index: u32,
}

/// `NnMoeGateOpCodeConfig`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MoeGateConfig {
    /// Experts chosen per token (1..=[`MAX_EXPERTS`]).
    pub k: u32,
    /// Renormalise the chosen weights (`normTopk`, 0 or 1 on the wire).
    pub norm_topk: bool,
    /// Buffer receiving the chosen expert indexes (checked).
    pub indexes_buffer_index: u32,
}

/// The typed config of one op: the op code and its C struct, decoded.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OpParams {
    /// `OP_MERGE_ADD`
    MergeAdd(EmptyConfig),
    /// `OP_MERGE_SUM`
    MergeSum(EmptyConfig),
    /// `OP_EMBEDDING`
    Embedding(EmptyConfig),
    /// `OP_INV_RMS`
    InvRms(InvRmsConfig),
    /// `OP_RMS_NORM`
    RmsNorm(RmsNormConfig),
    /// `OP_MATMUL`
    Matmul(MatmulConfig),
    /// `OP_ROPE`
    Rope(RopeConfig),
    /// `OP_MULTIHEAD_ATT`
    MultiHeadAtt(MultiHeadAttConfig),
    /// `OP_GELU`
    Gelu(EmptyConfig),
    /// `OP_SILU`
    Silu(EmptyConfig),
    /// `OP_MUL`: multiply by another buffer (`multiplierBufferIndex`, checked).
    Mul {
        /// The multiplier buffer.
        multiplier_buffer_index: u32,
    },
    /// `OP_SCALE`: scale rows by a per-row factor (`scaleBufferIndex`, checked).
    Scale {
        /// The scale buffer.
        scale_buffer_index: u32,
    },
    /// `OP_CAST`
    Cast(EmptyConfig),
    /// `OP_REPEAT_Z`
    RepeatZ(EmptyConfig),
    /// `OP_SHIFT`: copy rows into the KV cache at the positions of a pipe (checked).
    Shift {
        /// The position pipe.
        index_pipe_index: u32,
    },
    /// `OP_SOFTMAX`
    Softmax(EmptyConfig),
    /// `OP_MOE_GATE`
    MoeGate(MoeGateConfig),
}

impl OpParams {
    /// The op code.
    pub fn code(&self) -> OpCode {
        match self {
            OpParams::MergeAdd(_) => OpCode::MergeAdd,
            OpParams::MergeSum(_) => OpCode::MergeSum,
            OpParams::Embedding(_) => OpCode::Embedding,
            OpParams::InvRms(_) => OpCode::InvRms,
            OpParams::RmsNorm(_) => OpCode::RmsNorm,
            OpParams::Matmul(_) => OpCode::Matmul,
            OpParams::Rope(_) => OpCode::Rope,
            OpParams::MultiHeadAtt(_) => OpCode::MultiHeadAtt,
            OpParams::Gelu(_) => OpCode::Gelu,
            OpParams::Silu(_) => OpCode::Silu,
            OpParams::Mul { .. } => OpCode::Mul,
            OpParams::Scale { .. } => OpCode::Scale,
            OpParams::Cast(_) => OpCode::Cast,
            OpParams::RepeatZ(_) => OpCode::RepeatZ,
            OpParams::Shift { .. } => OpCode::Shift,
            OpParams::Softmax(_) => OpCode::Softmax,
            OpParams::MoeGate(_) => OpCode::MoeGate,
        }
    }

    /// `sizeof` the op code's C struct; `None` for empty structs, which may be sent as 0 or 1
    /// bytes.
    pub fn struct_size(code: OpCode) -> Option<u32> {
        match code {
            OpCode::InvRms | OpCode::RmsNorm => Some(8),
            OpCode::Matmul | OpCode::MoeGate => Some(12),
            OpCode::Rope => Some(120),
            OpCode::MultiHeadAtt => Some(48),
            OpCode::Mul | OpCode::Scale | OpCode::Shift => Some(4),
            OpCode::MergeAdd
            | OpCode::MergeSum
            | OpCode::Embedding
            | OpCode::Gelu
            | OpCode::Silu
            | OpCode::Cast
            | OpCode::RepeatZ
            | OpCode::Softmax => None,
        }
    }

    /// Bytes this config occupies on the wire (`configSize`).
    pub fn config_size(&self) -> u32 {
        match self {
            OpParams::MergeAdd(e)
            | OpParams::MergeSum(e)
            | OpParams::Embedding(e)
            | OpParams::Gelu(e)
            | OpParams::Silu(e)
            | OpParams::Cast(e)
            | OpParams::RepeatZ(e)
            | OpParams::Softmax(e) => u32::from(e.raw.is_some()),
            other => OpParams::struct_size(other.code()).unwrap_or(0),
        }
    }

    fn decode(
        code: OpCode,
        bytes: &[u8],
        bounds: &Bounds<'_>,
        weight: &Size3D,
    ) -> Result<OpParams, DecodeError> {
        let got = bytes.len() as u32;
        let Some(expected) = OpParams::struct_size(code) else {
            let empty = match bytes {
                [] => EmptyConfig { raw: None },
                [b] => EmptyConfig { raw: Some(*b) },
                _ => {
                    return Err(DecodeError::ConfigSize {
                        context: "empty op config",
                        got,
                        expected: 1,
                    });
                }
            };
            return Ok(match code {
                OpCode::MergeAdd => OpParams::MergeAdd(empty),
                OpCode::MergeSum => OpParams::MergeSum(empty),
                OpCode::Embedding => OpParams::Embedding(empty),
                OpCode::Gelu => OpParams::Gelu(empty),
                OpCode::Silu => OpParams::Silu(empty),
                OpCode::Cast => OpParams::Cast(empty),
                OpCode::RepeatZ => OpParams::RepeatZ(empty),
                _ => OpParams::Softmax(empty),
            });
        };
        if got != expected {
            return Err(DecodeError::ConfigSize {
                context: "op config",
                got,
                expected,
            });
        }
        let mut r = Reader::new(bytes);
        let params = match code {
            OpCode::InvRms => {
                let epsilon = r.f32("inv rms epsilon")?;
                let n_columns = r.u32("inv rms nColumns")?;
                if !epsilon.is_finite() || epsilon < 0.0 {
                    return inconsistent("inv rms epsilon");
                }
                if n_columns == 0 {
                    return inconsistent("inv rms nColumns");
                }
                OpParams::InvRms(InvRmsConfig { epsilon, n_columns })
            }
            OpCode::RmsNorm => {
                let inv_rms_buffer_index = r.u32("rms norm invRmsBufferIndex")?;
                let n_columns = r.u32("rms norm nColumns")?;
                check_index(
                    inv_rms_buffer_index,
                    bounds.n_buffers,
                    "rms norm invRmsBufferIndex",
                )?;
                if n_columns == 0 {
                    return inconsistent("rms norm nColumns");
                }
                OpParams::RmsNorm(RmsNormConfig {
                    inv_rms_buffer_index,
                    n_columns,
                })
            }
            OpCode::Matmul => {
                let n_experts = r.count(MAX_EXPERTS, "matmul nExperts")?;
                let n_active_experts = r.u32("matmul nActiveExperts")?;
                let active_expert_indexes_buffer_index =
                    r.u32("matmul activeExpertIndexesBufferIndex")?;
                check_index(
                    active_expert_indexes_buffer_index,
                    bounds.n_buffers,
                    "matmul activeExpertIndexesBufferIndex",
                )?;
                if n_experts == 0 {
                    if n_active_experts != 0 || weight.z() != 1 {
                        return inconsistent("dense matmul nActiveExperts / weight z");
                    }
                } else if n_active_experts == 0
                    || n_active_experts > n_experts
                    || weight.z() != n_experts
                {
                    return inconsistent("moe matmul nActiveExperts / weight z");
                }
                OpParams::Matmul(MatmulConfig {
                    n_experts,
                    n_active_experts,
                    active_expert_indexes_buffer_index,
                })
            }
            OpCode::Rope => OpParams::Rope(decode_rope(&mut r, bounds)?),
            OpCode::MultiHeadAtt => {
                let mut f = [0u32; 12];
                for v in f.iter_mut() {
                    *v = r.u32("multihead att config")?;
                }
                let [
                    n_heads,
                    n_heads0,
                    n_kv_heads,
                    head_dim,
                    seq_len,
                    q_slice_d0,
                    kv_dim0,
                    position_pipe_index,
                    query_buffer_index,
                    key_cache_buffer_index,
                    value_cache_buffer_index,
                    att_buffer_index,
                ] = f;
                if n_heads == 0
                    || n_kv_heads == 0
                    || head_dim == 0
                    || seq_len == 0
                    || n_heads0 == 0
                    || n_heads0 > n_heads
                    || !n_heads.is_multiple_of(n_kv_heads)
                {
                    return inconsistent("multihead att heads / dims");
                }
                check_index(
                    position_pipe_index,
                    bounds.n_pipes,
                    "multihead att positionPipeIndex",
                )?;
                for index in [
                    query_buffer_index,
                    key_cache_buffer_index,
                    value_cache_buffer_index,
                    att_buffer_index,
                ] {
                    check_index(index, bounds.n_buffers, "multihead att buffer index")?;
                }
                OpParams::MultiHeadAtt(MultiHeadAttConfig {
                    n_heads,
                    n_heads0,
                    n_kv_heads,
                    head_dim,
                    seq_len,
                    q_slice_d0,
                    kv_dim0,
                    position_pipe_index,
                    query_buffer_index,
                    key_cache_buffer_index,
                    value_cache_buffer_index,
                    att_buffer_index,
                })
            }
            OpCode::Mul => {
                let multiplier_buffer_index = r.u32("mul multiplierBufferIndex")?;
                check_index(
                    multiplier_buffer_index,
                    bounds.n_buffers,
                    "mul multiplierBufferIndex",
                )?;
                OpParams::Mul {
                    multiplier_buffer_index,
                }
            }
            OpCode::Scale => {
                let scale_buffer_index = r.u32("scale scaleBufferIndex")?;
                check_index(
                    scale_buffer_index,
                    bounds.n_buffers,
                    "scale scaleBufferIndex",
                )?;
                OpParams::Scale { scale_buffer_index }
            }
            OpCode::Shift => {
                let index_pipe_index = r.u32("shift indexPipeIndex")?;
                check_index(index_pipe_index, bounds.n_pipes, "shift indexPipeIndex")?;
                OpParams::Shift { index_pipe_index }
            }
            OpCode::MoeGate => {
                let k = r.u32("moe gate k")?;
                let norm_topk = check_bool(r.u32("moe gate normTopk")?, "moe gate normTopk")?;
                let indexes_buffer_index = r.u32("moe gate indexesBufferIndex")?;
                if k == 0 || k > MAX_EXPERTS {
                    return inconsistent("moe gate k");
                }
                check_index(
                    indexes_buffer_index,
                    bounds.n_buffers,
                    "moe gate indexesBufferIndex",
                )?;
                OpParams::MoeGate(MoeGateConfig {
                    k,
                    norm_topk,
                    indexes_buffer_index,
                })
            }
            // Empty structs returned above.
            _ => return inconsistent("op config"),
        };
        r.finish("op config")?;
        Ok(params)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            OpParams::MergeAdd(e)
            | OpParams::MergeSum(e)
            | OpParams::Embedding(e)
            | OpParams::Gelu(e)
            | OpParams::Silu(e)
            | OpParams::Cast(e)
            | OpParams::RepeatZ(e)
            | OpParams::Softmax(e) => out.extend(e.raw),
            OpParams::InvRms(c) => {
                put_f32(out, c.epsilon);
                put_u32(out, c.n_columns);
            }
            OpParams::RmsNorm(c) => {
                put_u32(out, c.inv_rms_buffer_index);
                put_u32(out, c.n_columns);
            }
            OpParams::Matmul(c) => {
                put_u32(out, c.n_experts);
                put_u32(out, c.n_active_experts);
                put_u32(out, c.active_expert_indexes_buffer_index);
            }
            OpParams::Rope(c) => {
                put_u32(out, c.rope_type.code());
                put_u32(out, u32::from(c.is_q));
                put_u32(out, c.position_pipe_index);
                put_u32(out, c.rope_cache_buffer_index);
                put_f32(out, c.rope_scaling_factor);
                put_f32(out, c.rope_scaling_low_freq_factor);
                put_f32(out, c.rope_scaling_high_freq_factor);
                put_u32(out, c.rope_scaling_orig_max_seq_len);
                let s = &c.slice;
                for v in [
                    s.q_dim0,
                    s.q_dim_start,
                    s.q_dim_end,
                    s.q_shift,
                    s.kv_dim,
                    s.kv_dim0,
                    s.kv_dim_start,
                    s.slice_dim,
                    s.seq_len,
                    s.head_dim,
                    s.n_kv_heads,
                ] {
                    put_u32(out, v);
                }
                put_f32(out, s.rope_theta);
                c.cache_size.encode(out);
            }
            OpParams::MultiHeadAtt(c) => {
                for v in [
                    c.n_heads,
                    c.n_heads0,
                    c.n_kv_heads,
                    c.head_dim,
                    c.seq_len,
                    c.q_slice_d0,
                    c.kv_dim0,
                    c.position_pipe_index,
                    c.query_buffer_index,
                    c.key_cache_buffer_index,
                    c.value_cache_buffer_index,
                    c.att_buffer_index,
                ] {
                    put_u32(out, v);
                }
            }
            OpParams::Mul {
                multiplier_buffer_index: i,
            }
            | OpParams::Scale {
                scale_buffer_index: i,
            }
            | OpParams::Shift {
                index_pipe_index: i,
            } => put_u32(out, *i),
            OpParams::MoeGate(c) => {
                put_u32(out, c.k);
                put_u32(out, u32::from(c.norm_topk));
                put_u32(out, c.indexes_buffer_index);
            }
        }
    }
}

fn decode_rope(r: &mut Reader<'_>, bounds: &Bounds<'_>) -> Result<RopeConfig, DecodeError> {
    let code = r.u32("rope type")?;
    let rope_type = RopeKind::from_code(code).ok_or(DecodeError::UnknownValue {
        context: "rope type",
        value: code.into(),
    })?;
    let is_q = check_bool(r.u32("rope isQ")?, "rope isQ")?;
    let position_pipe_index = r.u32("rope positionPipeIndex")?;
    let rope_cache_buffer_index = r.u32("rope ropeCacheBufferIndex")?;
    let rope_scaling_factor = r.f32("rope scaling factor")?;
    let rope_scaling_low_freq_factor = r.f32("rope low freq factor")?;
    let rope_scaling_high_freq_factor = r.f32("rope high freq factor")?;
    let rope_scaling_orig_max_seq_len = r.u32("rope orig max seq len")?;
    let mut f = [0u32; 11];
    for v in f.iter_mut() {
        *v = r.u32("rope slice")?;
    }
    let [
        q_dim0,
        q_dim_start,
        q_dim_end,
        q_shift,
        kv_dim,
        kv_dim0,
        kv_dim_start,
        slice_dim,
        seq_len,
        head_dim,
        n_kv_heads,
    ] = f;
    let rope_theta = r.f32("rope theta")?;
    let cache_size = Size3D::decode(r, "rope cache size")?;
    check_index(
        position_pipe_index,
        bounds.n_pipes,
        "rope positionPipeIndex",
    )?;
    check_index(
        rope_cache_buffer_index,
        bounds.n_buffers,
        "rope ropeCacheBufferIndex",
    )?;
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || seq_len == 0
        || !q_dim0.is_multiple_of(2)
        || !kv_dim0.is_multiple_of(2)
    {
        return inconsistent("rope slice dims");
    }
    if !rope_theta.is_finite() || rope_theta <= 0.0 {
        return inconsistent("rope theta");
    }
    let cache_columns = match rope_type {
        RopeKind::Llama | RopeKind::Llama31 => {
            // The cache covers [kvDimStart, qDimEnd) of this node; dllama asserts this.
            if q_dim_end < kv_dim_start
                || q_dim_end - kv_dim_start != slice_dim
                || !slice_dim.is_multiple_of(2)
                || q_dim_start < kv_dim_start
                || q_dim_start - kv_dim_start != q_shift
                || q_dim_end.checked_sub(q_dim_start) != Some(q_dim0)
            {
                return inconsistent("llama rope slice");
            }
            slice_dim
        }
        RopeKind::Falcon => head_dim,
    };
    if Size3D::new_2d(FloatType::F32, seq_len, cache_columns) != Some(cache_size) {
        return inconsistent("rope cache size");
    }
    if let Some(buffer) = bounds.buffers.get(rope_cache_buffer_index as usize)
        && buffer.size.n_bytes() < cache_size.n_bytes()
    {
        return inconsistent("rope cache buffer smaller than the cache");
    }
    Ok(RopeConfig {
        rope_type,
        is_q,
        position_pipe_index,
        rope_cache_buffer_index,
        rope_scaling_factor,
        rope_scaling_low_freq_factor,
        rope_scaling_high_freq_factor,
        rope_scaling_orig_max_seq_len,
        slice: RopeSlice {
            q_dim0,
            q_dim_start,
            q_dim_end,
            q_shift,
            kv_dim,
            kv_dim0,
            kv_dim_start,
            slice_dim,
            seq_len,
            head_dim,
            n_kv_heads,
            rope_theta,
        },
        cache_size,
    })
}

/// One op of a segment (dllama's `NnOpConfig`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpConfig {
    /// Name; weight records address the op by (name, index).
    pub name: String,
    /// Layer index (dllama's `index`).
    pub index: u32,
    /// Weight shape, [`Size3D::EMPTY`] when the op has no weight.
    pub weight_size: Size3D,
    /// Input.
    pub input: PointerConfig,
    /// Output.
    pub output: PointerConfig,
    /// Op code and typed config.
    pub params: OpParams,
}

impl OpConfig {
    /// The op code.
    pub fn code(&self) -> OpCode {
        self.params.code()
    }

    /// The op's `<input>_<weight>_<output>` type, from the float types of the pipes or buffers
    /// its pointers name (`buffers` = the node config's). An error when a pointer is out of range
    /// or dllama has no such combination.
    pub fn quant_type(
        &self,
        net: &NetConfig,
        buffers: &[BufferConfig],
    ) -> Result<OpQuantType, DecodeError> {
        let float_type = |p: &PointerConfig| {
            let size = match p.source {
                PointerSource::Pipe => net.pipes.get(p.index as usize).map(|x| x.size),
                PointerSource::Buffer => buffers.get(p.index as usize).map(|x| x.size),
            };
            size.and_then(|s| s.float_type())
                .ok_or(DecodeError::Inconsistent {
                    context: "op pointer float type",
                })
        };
        let input = float_type(&self.input)?;
        let output = float_type(&self.output)?;
        OpQuantType::new(input, self.weight_size.float_type(), output).ok_or(
            DecodeError::Inconsistent {
                context: "op quant type (input/weight/output float types)",
            },
        )
    }

    fn decode(r: &mut Reader<'_>, bounds: &Bounds<'_>) -> Result<OpConfig, DecodeError> {
        let code = OpCode::read(r)?;
        let index = r.u32("op index")?;
        let weight_size = Size3D::decode(r, "op weight size")?;
        let config_size = r.count(MAX_OP_CONFIG_SIZE, "op configSize")?;
        let name = r.string(MAX_NAME_LEN, "op name")?;
        let input = PointerConfig::decode(r, bounds)?;
        let output = PointerConfig::decode(r, bounds)?;
        let config = r.take(config_size as usize, "op config")?;
        let params = OpParams::decode(code, config, bounds, &weight_size)?;
        Ok(OpConfig {
            name,
            index,
            weight_size,
            input,
            output,
            params,
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.code().to_wire());
        put_u32(out, self.index);
        self.weight_size.encode(out);
        put_u32(out, self.params.config_size());
        put_string(out, &self.name);
        self.input.encode(out);
        self.output.encode(out);
        self.params.encode(out);
    }
}

/// One segment: ops run in order, then the syncs (dllama's `NnSegmentConfig`).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct SegmentConfig {
    /// Syncs run after the ops.
    pub syncs: Vec<SyncConfig>,
    /// Ops.
    pub ops: Vec<OpConfig>,
}

/// dllama's `NnNetConfig`: what all nodes share. On the wire it starts with an ACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Batch capacity (`nBatches`, 1..=[`MAX_BATCHES`]).
    pub n_batches: u32,
    /// Nodes including the root (1..=[`MAX_NODES`]).
    pub n_nodes: u32,
    /// Pipes (known float type, at least `n_batches` rows each).
    pub pipes: Vec<PipeConfig>,
    /// Pipes synchronised before a forward (indexes checked). dllama lists POS here but never
    /// sends it: workers fill positions from the control packet.
    pub pre_syncs: Vec<u32>,
}

impl NetConfig {
    /// Decodes a whole net config message (ACK included); trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<NetConfig, DecodeError> {
        let (config, used) = NetConfig::decode_prefix(bytes)?;
        Reader::new(bytes.get(used..).unwrap_or(&[])).finish("net config")?;
        Ok(config)
    }

    /// Decodes a net config from the start of `bytes`; returns it and the bytes it used.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(NetConfig, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        r.ack("net config ACK")?;
        let n_batches = r.count(MAX_BATCHES, "nBatches")?;
        let n_nodes = r.count(MAX_NODES, "nNodes")?;
        if n_batches == 0 {
            return inconsistent("nBatches");
        }
        if n_nodes == 0 {
            return inconsistent("nNodes");
        }
        let n_pipes = r.count(MAX_PIPES, "nPipes")?;
        let mut pipes = Vec::new();
        for _ in 0..n_pipes {
            let size = Size3D::decode(&mut r, "pipe size")?;
            let name = r.string(MAX_NAME_LEN, "pipe name")?;
            if size.is_empty()
                || size.n_bytes() < u64::from(n_batches).saturating_mul(size.row_bytes())
            {
                return inconsistent("pipe size");
            }
            pipes.push(PipeConfig { name, size });
        }
        let n_pre_syncs = r.count(MAX_PRE_SYNCS, "nPreSyncs")?;
        let mut pre_syncs = Vec::new();
        for _ in 0..n_pre_syncs {
            let pipe = r.u32("pre-sync pipe index")?;
            check_index(pipe, pipes.len(), "pre-sync pipe index")?;
            pre_syncs.push(pipe);
        }
        Ok((
            NetConfig {
                n_batches,
                n_nodes,
                pipes,
                pre_syncs,
            },
            r.position(),
        ))
    }

    /// Appends the message (ACK included) as dllama's `NnRootConfigWriter::writeNet` sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, crate::codec::ACK);
        put_u32(out, self.n_batches);
        put_u32(out, self.n_nodes);
        put_u32(out, self.pipes.len() as u32);
        for pipe in &self.pipes {
            pipe.size.encode(out);
            put_string(out, &pipe.name);
        }
        put_u32(out, self.pre_syncs.len() as u32);
        for &p in &self.pre_syncs {
            put_u32(out, p);
        }
    }
}

/// dllama's `NnNodeConfig`: one node's buffers and segments. On the wire it starts with an ACK.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// This node (0 = root; checked `< n_nodes`).
    pub node_index: u32,
    /// Buffers (known float type).
    pub buffers: Vec<BufferConfig>,
    /// Segments in execution order.
    pub segments: Vec<SegmentConfig>,
}

/// Where a weight record goes: the op it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightTarget {
    /// Segment of the op.
    pub segment: u32,
    /// Position of the op in its segment.
    pub op: u32,
    /// Byte offset into the op's weight.
    pub offset: u64,
    /// Bytes of data that follow the record header.
    pub n_bytes: u64,
}

impl NodeConfig {
    /// Decodes a whole node config message (ACK included), validated against `net`; trailing
    /// bytes are an error.
    pub fn decode(bytes: &[u8], net: &NetConfig) -> Result<NodeConfig, DecodeError> {
        let (config, used) = NodeConfig::decode_prefix(bytes, net)?;
        Reader::new(bytes.get(used..).unwrap_or(&[])).finish("node config")?;
        Ok(config)
    }

    /// Decodes a node config from the start of `bytes`; returns it and the bytes it used.
    pub fn decode_prefix(
        bytes: &[u8],
        net: &NetConfig,
    ) -> Result<(NodeConfig, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        r.ack("node config ACK")?;
        let node_index = r.u32("nodeIndex")?;
        check_index(node_index, net.n_nodes as usize, "nodeIndex")?;
        let n_buffers = r.count(MAX_BUFFERS, "nBuffers")?;
        let n_segments = r.count(MAX_SEGMENTS, "nSegments")?;
        let mut buffers = Vec::new();
        for _ in 0..n_buffers {
            let size = Size3D::decode(&mut r, "buffer size")?;
            let name = r.string(MAX_NAME_LEN, "buffer name")?;
            if size.is_empty() {
                return inconsistent("buffer size");
            }
            buffers.push(BufferConfig { name, size });
        }
        let bounds = Bounds {
            n_pipes: net.pipes.len(),
            n_buffers: buffers.len(),
            buffers: &buffers,
        };
        let mut segments = Vec::new();
        let mut total_ops = 0u32;
        for _ in 0..n_segments {
            let n_syncs = r.count(MAX_SYNCS_PER_SEGMENT, "nSyncs")?;
            let n_ops = r.count(MAX_OPS_PER_SEGMENT, "nOps")?;
            total_ops += n_ops;
            if total_ops > MAX_OPS {
                return Err(DecodeError::LimitExceeded {
                    context: "ops in node config",
                    value: total_ops.into(),
                    limit: MAX_OPS.into(),
                });
            }
            let mut syncs = Vec::new();
            for _ in 0..n_syncs {
                let pipe_index = r.u32("sync pipe index")?;
                let sync_type = SyncType::read(&mut r)?;
                check_index(pipe_index, net.pipes.len(), "sync pipe index")?;
                syncs.push(SyncConfig {
                    pipe_index,
                    sync_type,
                });
            }
            let mut ops = Vec::new();
            for _ in 0..n_ops {
                ops.push(OpConfig::decode(&mut r, &bounds)?);
            }
            segments.push(SegmentConfig { syncs, ops });
        }
        let config = NodeConfig {
            node_index,
            buffers,
            segments,
        };
        // Every sync must be plannable: this fails on slices that do not divide.
        crate::plan::SyncPlan::new(net, &config)?;
        Ok((config, r.position()))
    }

    /// Appends the message (ACK included) as dllama's `NnRootConfigWriter::writeNode` sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, crate::codec::ACK);
        put_u32(out, self.node_index);
        put_u32(out, self.buffers.len() as u32);
        put_u32(out, self.segments.len() as u32);
        for buffer in &self.buffers {
            buffer.size.encode(out);
            put_string(out, &buffer.name);
        }
        for segment in &self.segments {
            put_u32(out, segment.syncs.len() as u32);
            put_u32(out, segment.ops.len() as u32);
            for sync in &segment.syncs {
                put_u32(out, sync.pipe_index);
                put_u32(out, sync.sync_type.to_wire());
            }
            for op in &segment.ops {
                op.encode(out);
            }
        }
    }

    /// Iterates `(segment, op position, op)` over all ops.
    pub fn ops(&self) -> impl Iterator<Item = (u32, u32, &OpConfig)> {
        self.segments.iter().enumerate().flat_map(|(s, seg)| {
            seg.ops
                .iter()
                .enumerate()
                .map(move |(o, op)| (s as u32, o as u32, op))
        })
    }

    /// The first op named `name` with layer index `index`, as dllama's `loadWeight` finds it.
    pub fn find_op(&self, name: &str, index: u32) -> Option<(u32, u32, &OpConfig)> {
        self.ops()
            .find(|(_, _, op)| op.index == index && op.name == name)
    }

    /// Checks a weight record header against the op it names: the op must exist and
    /// `offset + n_bytes` must fit its weight. Call before reading (or allocating for) the data.
    pub fn check_weight(&self, header: &WeightHeader) -> Result<WeightTarget, DecodeError> {
        let Some((segment, op, config)) = self.find_op(&header.name, header.op_index) else {
            return inconsistent("weight record names no op");
        };
        let end = header.offset.checked_add(header.n_bytes);
        if end.is_none_or(|end| end > config.weight_size.n_bytes()) {
            return Err(DecodeError::LimitExceeded {
                context: "weight record offset + nBytes",
                value: end.unwrap_or(u64::MAX),
                limit: config.weight_size.n_bytes(),
            });
        }
        Ok(WeightTarget {
            segment,
            op,
            offset: header.offset,
            n_bytes: header.n_bytes,
        })
    }

    /// Shortest context length any attention or rope op of this node supports, if it has any.
    /// A forward must satisfy `position + batch <= seq_len`.
    pub fn seq_len(&self) -> Option<u32> {
        self.ops()
            .filter_map(|(_, _, op)| match &op.params {
                OpParams::MultiHeadAtt(c) => Some(c.seq_len),
                OpParams::Rope(c) => Some(c.slice.seq_len),
                _ => None,
            })
            .min()
    }

    /// Bytes this node needs for pipes, buffers, weights and configs (dllama's
    /// `printNodeRequiredMemory`), saturating. Check it against the machine before allocating.
    pub fn required_memory(&self, net: &NetConfig) -> u64 {
        let pipes = net.pipes.iter().map(|p| p.size.n_bytes());
        let buffers = self.buffers.iter().map(|b| b.size.n_bytes());
        let ops = self.ops().map(|(_, _, op)| {
            op.weight_size
                .n_bytes()
                .saturating_add(op.params.config_size().into())
        });
        pipes
            .chain(buffers)
            .chain(ops)
            .fold(0u64, |a, b| a.saturating_add(b))
    }
}

/// The header of a weight record: `u32 nameLen, name+NUL, u32 opIndex, u64 offset, u64 nBytes`;
/// `nBytes` of data follow it on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightHeader {
    /// Op name.
    pub name: String,
    /// Op layer index.
    pub op_index: u32,
    /// Byte offset into the op's weight (expert × slice bytes for MoE experts).
    pub offset: u64,
    /// Bytes of data following the header.
    pub n_bytes: u64,
}
