//! A bounded GGUF reader (llama.cpp's model container, versions 2 and 3).
//!
//! Layout (little endian): `"GGUF"`, u32 version, u64 tensor count, u64 metadata count; the
//! metadata key/value pairs; one info record per tensor (name, dims, ggml type, offset); padding
//! to `general.alignment` (default 32); the tensor data, each tensor at `data_offset + offset`.
//!
//! [`GgufHeader::parse`] reads everything before the tensor data from a byte slice. Every count
//! and length is checked against the bytes that remain and against fixed limits before anything
//! is allocated, so a hostile file gives a [`GgufError`], never a panic or a huge allocation.
//! [`GgufFile::open`] memory-maps a file, parses its header and hands out each tensor's bytes
//! (checked to lie inside the file) and dequantizes tensors block by block: F32, F16, BF16,
//! Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants Q2_K..Q6_K and Q8_K, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0
//! and MXFP4 ([`GgmlType::DEQUANTIZABLE`]). The other IQ types (IQ1/IQ2/IQ3) are known by name
//! and size but refused: they decode through large code-book tables of ggml's.
use std::fs::File;
use std::path::Path;

use half::{bf16, f16};
use memmap2::Mmap;

/// `"GGUF"` read as a little-endian u32.
pub const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Most metadata pairs accepted.
pub const MAX_METADATA: u64 = 1 << 16;
/// Most tensors accepted.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most elements in one metadata array.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most array elements across all metadata (bounds the memory a header can make us use).
pub const MAX_TOTAL_ARRAY_ELEMENTS: u64 = 1 << 25;
/// Deepest nesting of arrays inside arrays.
pub const MAX_ARRAY_DEPTH: u32 = 3;
/// Longest string accepted (key, value or tensor name).
pub const MAX_STRING_LEN: u64 = 1 << 26;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Why a GGUF file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Opening or mapping the file failed.
    #[error("reading GGUF file")]
    Io(#[from] std::io::Error),
    /// The input ended before `what` could be read.
    #[error("GGUF truncated while reading {what} at offset {offset}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Byte offset where it started.
        offset: usize,
    },
    /// Not a GGUF file.
    #[error("not a GGUF file (magic {0:#010x})")]
    BadMagic(u32),
    /// A GGUF version this reader does not read (1, or big-endian files).
    #[error("unsupported GGUF version {0}")]
    UnsupportedVersion(u32),
    /// A count or length is above this reader's limits.
    #[error("GGUF {what} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// What was counted.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// An unknown metadata value type code.
    #[error("unknown GGUF metadata type {0}")]
    BadValueType(u32),
    /// A bool that is neither 0 nor 1.
    #[error("invalid GGUF bool {0}")]
    BadBool(u8),
    /// A key or tensor name that is not UTF-8.
    #[error("GGUF {0} is not valid UTF-8")]
    BadUtf8(&'static str),
    /// A metadata key appears twice.
    #[error("duplicate GGUF metadata key {0:?}")]
    DuplicateKey(String),
    /// A tensor name appears twice.
    #[error("duplicate GGUF tensor {0:?}")]
    DuplicateTensor(String),
    /// `general.alignment` is not a power-of-two u32.
    #[error("invalid general.alignment")]
    BadAlignment,
    /// A tensor's shape is invalid.
    #[error("tensor {name:?} has invalid shape {dims:?}")]
    BadShape {
        /// Tensor name.
        name: String,
        /// Its dims (ggml order: fastest first).
        dims: Vec<u64>,
    },
    /// A tensor's offset is unaligned or its data runs past the end of the file.
    #[error(
        "tensor {name:?} data [{start}, {end}) is unaligned or outside the file ({file_len} bytes)"
    )]
    BadTensorExtent {
        /// Tensor name.
        name: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset.
        end: u64,
        /// File length.
        file_len: u64,
    },
    /// A tensor type whose block size is unknown to this reader, or that it cannot dequantize.
    #[error("tensor {name:?} has unsupported ggml type {ty}")]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// The type.
        ty: GgmlType,
    },
    /// A requested element range does not fall on block boundaries inside the tensor.
    #[error("element range {start}..{end} is not block-aligned inside tensor {name:?}")]
    BadRange {
        /// Tensor name.
        name: String,
        /// First element.
        start: u64,
        /// One past the last element.
        end: u64,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// A ggml tensor type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// 32-bit floats.
    pub const F32: GgmlType = GgmlType(0);
    /// 16-bit IEEE floats.
    pub const F16: GgmlType = GgmlType(1);
    /// Blocks of 32: f16 scale `d`, 16 bytes of 4-bit codes; value = (code − 8)·d.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// Blocks of 32: f16 scale `d`, f16 minimum `m`, 16 bytes of codes; value = code·d + m.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// Blocks of 32: f16 scale `d`, u32 of fifth bits, 16 bytes of nibbles; value = (q − 16)·d.
    pub const Q5_0: GgmlType = GgmlType(6);
    /// Blocks of 32: f16 `d`, f16 minimum `m`, fifth bits, nibbles; value = q·d + m.
    pub const Q5_1: GgmlType = GgmlType(7);
    /// Blocks of 32: f16 scale `d`, 32 signed bytes; value = q·d.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// 8-bit blocks with scale and sum (an activation type; never in model files).
    pub const Q8_1: GgmlType = GgmlType(9);
    /// K-quant, 2 bits: 256-value super-blocks of 16-value sub-blocks with 4-bit scales/mins.
    pub const Q2_K: GgmlType = GgmlType(10);
    /// K-quant, 3 bits, 6-bit signed sub-block scales.
    pub const Q3_K: GgmlType = GgmlType(11);
    /// K-quant, 4 bits, 6-bit scales and minimums per 32 values.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// K-quant, 5 bits, as Q4_K plus a fifth bit.
    pub const Q5_K: GgmlType = GgmlType(13);
    /// K-quant, 6 bits, 8-bit signed scales per 16 values.
    pub const Q6_K: GgmlType = GgmlType(14);
    /// K-quant, 8 bits, f32 scale (ggml's activation type for K-quant dot products).
    pub const Q8_K: GgmlType = GgmlType(15);
    /// 2.06 bits per weight, lattice code book.
    pub const IQ2_XXS: GgmlType = GgmlType(16);
    /// 2.31 bits per weight, lattice code book.
    pub const IQ2_XS: GgmlType = GgmlType(17);
    /// 3.06 bits per weight, lattice code book.
    pub const IQ3_XXS: GgmlType = GgmlType(18);
    /// 1.56 bits per weight, lattice code book.
    pub const IQ1_S: GgmlType = GgmlType(19);
    /// Blocks of 32: f16 scale, nibbles indexing a fixed non-linear table of 16 levels.
    pub const IQ4_NL: GgmlType = GgmlType(20);
    /// 3.44 bits per weight, lattice code book.
    pub const IQ3_S: GgmlType = GgmlType(21);
    /// 2.5 bits per weight, lattice code book.
    pub const IQ2_S: GgmlType = GgmlType(22);
    /// IQ4_NL levels in 256-value super-blocks with 6-bit sub-block scales.
    pub const IQ4_XS: GgmlType = GgmlType(23);
    /// 8-bit integers.
    pub const I8: GgmlType = GgmlType(24);
    /// 16-bit integers.
    pub const I16: GgmlType = GgmlType(25);
    /// 32-bit integers.
    pub const I32: GgmlType = GgmlType(26);
    /// 64-bit integers.
    pub const I64: GgmlType = GgmlType(27);
    /// 64-bit floats.
    pub const F64: GgmlType = GgmlType(28);
    /// 1.75 bits per weight, lattice code book.
    pub const IQ1_M: GgmlType = GgmlType(29);
    /// bfloat16.
    pub const BF16: GgmlType = GgmlType(30);
    /// Ternary, 1.69 bits per weight (base-3 packed trits).
    pub const TQ1_0: GgmlType = GgmlType(34);
    /// Ternary, 2 bits per weight.
    pub const TQ2_0: GgmlType = GgmlType(35);
    /// OCP microscaling FP4: e8m0 exponent per 32 e2m1 values.
    pub const MXFP4: GgmlType = GgmlType(39);
    /// NVIDIA FP4: e4m3 scale per 16 e2m1 values, 64-value blocks.
    pub const NVFP4: GgmlType = GgmlType(40);
    /// 1-bit blocks of 128.
    pub const Q1_0: GgmlType = GgmlType(41);

    /// `(values per block, bytes per block)` as in ggml's type traits, for the types whose
    /// layout this reader knows; `None` for the rest.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::IQ2_XXS => (256, 66),
            GgmlType::IQ2_XS => (256, 74),
            GgmlType::IQ3_XXS => (256, 98),
            GgmlType::IQ1_S => (256, 50),
            GgmlType::IQ4_NL => (32, 18),
            GgmlType::IQ3_S => (256, 110),
            GgmlType::IQ2_S => (256, 82),
            GgmlType::IQ4_XS => (256, 136),
            GgmlType::IQ1_M => (256, 56),
            GgmlType::TQ1_0 => (256, 54),
            GgmlType::TQ2_0 => (256, 66),
            GgmlType::MXFP4 => (32, 17),
            GgmlType::NVFP4 => (64, 36),
            GgmlType::Q1_0 => (128, 18),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 => (1, 8),
            GgmlType::F64 => (1, 8),
            GgmlType::BF16 => (1, 2),
            _ => return None,
        })
    }

    /// Every type [`dequantize`] handles.
    pub const DEQUANTIZABLE: [GgmlType; 19] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        GgmlType::DEQUANTIZABLE.contains(&self)
    }

    /// ggml's name for the type (`"q4_1"`, `"iq4_nl"`, as in ggml's type traits), or
    /// `"type<N>"` for a code ggml does not define.
    pub fn name(self) -> String {
        let known = match self {
            GgmlType::F32 => "f32",
            GgmlType::F16 => "f16",
            GgmlType::Q4_0 => "q4_0",
            GgmlType::Q4_1 => "q4_1",
            GgmlType::Q5_0 => "q5_0",
            GgmlType::Q5_1 => "q5_1",
            GgmlType::Q8_0 => "q8_0",
            GgmlType::Q8_1 => "q8_1",
            GgmlType::Q2_K => "q2_K",
            GgmlType::Q3_K => "q3_K",
            GgmlType::Q4_K => "q4_K",
            GgmlType::Q5_K => "q5_K",
            GgmlType::Q6_K => "q6_K",
            GgmlType::Q8_K => "q8_K",
            GgmlType::IQ2_XXS => "iq2_xxs",
            GgmlType::IQ2_XS => "iq2_xs",
            GgmlType::IQ3_XXS => "iq3_xxs",
            GgmlType::IQ1_S => "iq1_s",
            GgmlType::IQ4_NL => "iq4_nl",
            GgmlType::IQ3_S => "iq3_s",
            GgmlType::IQ2_S => "iq2_s",
            GgmlType::IQ4_XS => "iq4_xs",
            GgmlType::IQ1_M => "iq1_m",
            GgmlType::TQ1_0 => "tq1_0",
            GgmlType::TQ2_0 => "tq2_0",
            GgmlType::MXFP4 => "mxfp4",
            GgmlType::NVFP4 => "nvfp4",
            GgmlType::Q1_0 => "q1_0",
            // Codes of types ggml has removed: their layouts are gone, but the names stay
            // recognisable in messages.
            GgmlType(4) => "q4_2 (removed from ggml)",
            GgmlType(5) => "q4_3 (removed from ggml)",
            GgmlType(31) => "q4_0_4_4 (removed from ggml)",
            GgmlType(32) => "q4_0_4_8 (removed from ggml)",
            GgmlType(33) => "q4_0_8_8 (removed from ggml)",
            GgmlType(36) => "iq4_nl_4_4 (removed from ggml)",
            GgmlType(37) => "iq4_nl_4_8 (removed from ggml)",
            GgmlType(38) => "iq4_nl_8_8 (removed from ggml)",
            GgmlType::I8 => "i8",
            GgmlType::I16 => "i16",
            GgmlType::I32 => "i32",
            GgmlType::I64 => "i64",
            GgmlType::F64 => "f64",
            GgmlType::BF16 => "bf16",
            _ => return format!("type{}", self.0),
        };
        known.to_string()
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// A GGUF metadata value type code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum GgufValueType {
    /// u8
    U8 = 0,
    /// i8
    I8 = 1,
    /// u16
    U16 = 2,
    /// i16
    I16 = 3,
    /// u32
    U32 = 4,
    /// i32
    I32 = 5,
    /// f32
    F32 = 6,
    /// bool (one byte, 0 or 1)
    Bool = 7,
    /// u64 length + bytes
    String = 8,
    /// u32 element type, u64 count, elements
    Array = 9,
    /// u64
    U64 = 10,
    /// i64
    I64 = 11,
    /// f64
    F64 = 12,
}

impl GgufValueType {
    fn from_code(code: u32) -> Result<GgufValueType> {
        use GgufValueType::*;
        Ok(match code {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return Err(GgufError::BadValueType(code)),
        })
    }

    /// Fewest bytes one value of this type occupies (bounds array counts before allocating).
    fn min_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 | String => 8,
            Array => 12,
        }
    }
}

/// A metadata value. Strings are kept as bytes: the spec says UTF-8, but token strings are
/// checked where they are used.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// u8
    U8(u8),
    /// i8
    I8(i8),
    /// u16
    U16(u16),
    /// i16
    I16(i16),
    /// u32
    U32(u32),
    /// i32
    I32(i32),
    /// f32
    F32(f32),
    /// bool
    Bool(bool),
    /// string bytes
    String(Vec<u8>),
    /// array
    Array(GgufArray),
    /// u64
    U64(u64),
    /// i64
    I64(i64),
    /// f64
    F64(f64),
}

/// A metadata array, stored compactly by element type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    /// u8 elements
    U8(Vec<u8>),
    /// i8 elements
    I8(Vec<i8>),
    /// u16 elements
    U16(Vec<u16>),
    /// i16 elements
    I16(Vec<i16>),
    /// u32 elements
    U32(Vec<u32>),
    /// i32 elements
    I32(Vec<i32>),
    /// f32 elements
    F32(Vec<f32>),
    /// bool elements
    Bool(Vec<bool>),
    /// string elements
    String(Vec<Vec<u8>>),
    /// nested arrays
    Array(Vec<GgufArray>),
    /// u64 elements
    U64(Vec<u64>),
    /// i64 elements
    I64(Vec<i64>),
    /// f64 elements
    F64(Vec<f64>),
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as i64 when the element type is an integer type (u64 above i64::MAX gives
    /// `None`).
    pub fn to_i64s(&self) -> Option<Vec<i64>> {
        Some(match self {
            GgufArray::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
            GgufArray::U64(v) => v
                .iter()
                .map(|&x| i64::try_from(x).ok())
                .collect::<Option<_>>()?,
            GgufArray::I64(v) => v.clone(),
            _ => return None,
        })
    }

    /// The elements as f32 when the element type is f32 or f64.
    pub fn to_f32s(&self) -> Option<Vec<f32>> {
        match self {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }
}

impl GgufValue {
    /// The value as u64 if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as f64 if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as string bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            GgufValue::String(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a UTF-8 string.
    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (contiguous), then rows, ...
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset from the start of the tensor data.
    pub offset: u64,
    /// Number of elements (product of `dims`).
    pub n_elements: u64,
    /// Size of the data in bytes (`None` for types whose layout is unknown).
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// Row length (`dims[0]`).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (all dims after the first multiplied).
    pub fn n_rows(&self) -> u64 {
        self.dims.iter().skip(1).product()
    }
}

/// Everything in a GGUF file before the tensor data.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor descriptions in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of the tensor data.
    pub alignment: u64,
    /// Absolute offset of the tensor data (end of the header, padded to `alignment`).
    pub data_offset: u64,
}

/// Panic-free little-endian cursor over untrusted bytes.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    array_budget: u64,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos,
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let len = self.u64(what)?;
        check_limit(what, len, MAX_STRING_LEN)?;
        self.take(len, what)
    }

    fn utf8(&mut self, what: &'static str) -> Result<String> {
        let b = self.string(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| GgufError::BadUtf8(what))
    }

    fn value(&mut self, ty: GgufValueType, depth: u32) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(self.array::<1>("u8")?[0]),
            T::I8 => GgufValue::I8(self.array::<1>("i8")?[0] as i8),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array("u16")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array("i16")?)),
            T::U32 => GgufValue::U32(self.u32("u32")?),
            T::I32 => GgufValue::I32(self.u32("i32")? as i32),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array("f32")?)),
            T::Bool => GgufValue::Bool(self.bool()?),
            T::String => GgufValue::String(self.string("string value")?.to_vec()),
            T::Array => GgufValue::Array(self.array_value(depth)?),
            T::U64 => GgufValue::U64(self.u64("u64")?),
            T::I64 => GgufValue::I64(self.u64("i64")? as i64),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array("f64")?)),
        })
    }

    fn bool(&mut self) -> Result<bool> {
        match self.array::<1>("bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(GgufError::BadBool(b)),
        }
    }

    fn array_value(&mut self, depth: u32) -> Result<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(GgufError::LimitExceeded {
                what: "array nesting depth",
                value: u64::from(depth) + 1,
                limit: u64::from(MAX_ARRAY_DEPTH),
            });
        }
        let elem = GgufValueType::from_code(self.u32("array type")?)?;
        let n = self.u64("array length")?;
        check_limit("array length", n, MAX_ARRAY_LEN)?;
        if n.saturating_mul(elem.min_size()) > self.remaining() {
            return Err(GgufError::Truncated {
                what: "array elements",
                offset: self.pos,
            });
        }
        if n > self.array_budget {
            return Err(GgufError::LimitExceeded {
                what: "total metadata array elements",
                value: MAX_TOTAL_ARRAY_ELEMENTS - self.array_budget + n,
                limit: MAX_TOTAL_ARRAY_ELEMENTS,
            });
        }
        self.array_budget -= n;
        let n = n as usize;
        macro_rules! fixed {
            ($variant:ident, $t:ty) => {{
                let bytes = self.take((n * size_of::<$t>()) as u64, "array elements")?;
                GgufArray::$variant(
                    bytes
                        .chunks_exact(size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                )
            }};
        }
        use GgufValueType as T;
        Ok(match elem {
            T::U8 => GgufArray::U8(self.take(n as u64, "array elements")?.to_vec()),
            T::I8 => fixed!(I8, i8),
            T::U16 => fixed!(U16, u16),
            T::I16 => fixed!(I16, i16),
            T::U32 => fixed!(U32, u32),
            T::I32 => fixed!(I32, i32),
            T::F32 => fixed!(F32, f32),
            T::U64 => fixed!(U64, u64),
            T::I64 => fixed!(I64, i64),
            T::F64 => fixed!(F64, f64),
            T::Bool => GgufArray::Bool((0..n).map(|_| self.bool()).collect::<Result<_>>()?),
            T::String => GgufArray::String(
                (0..n)
                    .map(|_| self.string("string element").map(<[u8]>::to_vec))
                    .collect::<Result<_>>()?,
            ),
            T::Array => GgufArray::Array(
                (0..n)
                    .map(|_| self.array_value(depth + 1))
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

fn check_limit(what: &'static str, value: u64, limit: u64) -> Result<()> {
    if value > limit {
        return Err(GgufError::LimitExceeded { what, value, limit });
    }
    Ok(())
}

impl GgufHeader {
    /// Parses the header from the start of `data`. `data` may be the whole file or only its
    /// beginning; tensor extents are checked separately ([`GgufHeader::check_extents`]).
    pub fn parse(data: &[u8]) -> Result<GgufHeader> {
        let mut r = Reader {
            data,
            pos: 0,
            array_budget: MAX_TOTAL_ARRAY_ELEMENTS,
        };
        let magic = r.u32("magic")?;
        if magic != GGUF_MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        check_limit("tensor count", n_tensors, MAX_TENSORS)?;
        let n_kv = r.u64("metadata count")?;
        check_limit("metadata count", n_kv, MAX_METADATA)?;
        // A pair takes at least 13 bytes, a tensor info at least 24: reject impossible counts
        // before reserving room for them.
        if n_kv
            .saturating_mul(13)
            .saturating_add(n_tensors.saturating_mul(24))
            > r.remaining()
        {
            return Err(GgufError::Truncated {
                what: "metadata and tensor infos",
                offset: r.pos,
            });
        }

        let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv as usize);
        let mut keys = std::collections::HashSet::new();
        for _ in 0..n_kv {
            let key = r.utf8("metadata key")?;
            let ty = GgufValueType::from_code(r.u32("metadata type")?)?;
            let value = r.value(ty, 0)?;
            if !keys.insert(key.clone()) {
                return Err(GgufError::DuplicateKey(key));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some(_) => return Err(GgufError::BadAlignment),
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = r.utf8("tensor name")?;
            let n_dims = r.u32("tensor dims")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::BadShape {
                    name,
                    dims: Vec::new(),
                });
            }
            let dims = (0..n_dims)
                .map(|_| r.u64("tensor dim"))
                .collect::<Result<Vec<_>>>()?;
            let ty = GgmlType(r.u32("tensor type")?);
            let offset = r.u64("tensor offset")?;
            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n > 0 && n <= i64::MAX as u64)
                .ok_or_else(|| GgufError::BadShape {
                    name: name.clone(),
                    dims: dims.clone(),
                })?;
            let n_bytes = match ty.block_layout() {
                Some((block, size)) => {
                    if !dims[0].is_multiple_of(block) {
                        return Err(GgufError::BadShape { name, dims });
                    }
                    Some((n_elements / block).checked_mul(size).ok_or_else(|| {
                        GgufError::BadShape {
                            name: name.clone(),
                            dims: dims.clone(),
                        }
                    })?)
                }
                None => None,
            };
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::BadTensorExtent {
                    name,
                    start: offset,
                    end: offset,
                    file_len: data.len() as u64,
                });
            }
            if !names.insert(name.clone()) {
                return Err(GgufError::DuplicateTensor(name));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                n_elements,
                n_bytes,
            });
        }
        let data_offset = (r.pos as u64).div_ceil(alignment) * alignment;
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Looks up a metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Looks up a tensor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Absolute byte range of a tensor's data, checked against a file of `file_len` bytes.
    pub fn tensor_range(&self, info: &TensorInfo, file_len: u64) -> Result<std::ops::Range<u64>> {
        let n_bytes = info
            .n_bytes
            .ok_or_else(|| GgufError::UnsupportedTensorType {
                name: info.name.clone(),
                ty: info.ty,
            })?;
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => Ok(start..end),
            _ => Err(GgufError::BadTensorExtent {
                name: info.name.clone(),
                start: start.unwrap_or(u64::MAX),
                end: end.unwrap_or(u64::MAX),
                file_len,
            }),
        }
    }

    /// Checks that every tensor of known layout lies inside a file of `file_len` bytes.
    pub fn check_extents(&self, file_len: u64) -> Result<()> {
        for t in &self.tensors {
            if t.n_bytes.is_some() {
                self.tensor_range(t, file_len)?;
            }
        }
        Ok(())
    }
}

/// A memory-mapped GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    header: GgufHeader,
    map: Mmap,
}

impl GgufFile {
    /// Maps and parses a GGUF file; every tensor of known layout is checked to lie inside it.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let file = File::open(path)?;
        // SAFETY: the map is read-only and private to this reader. Another process truncating
        // or rewriting the file while it is mapped could change the bytes or raise SIGBUS; that
        // is the usual contract of memory-mapped model files (llama.cpp and dllama map theirs
        // the same way), and every length read from the bytes is still bounds-checked.
        let map = unsafe { Mmap::map(&file)? };
        let header = GgufHeader::parse(&map)?;
        header.check_extents(map.len() as u64)?;
        Ok(GgufFile { header, map })
    }

    /// The parsed header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// Total file size.
    pub fn file_len(&self) -> u64 {
        self.map.len() as u64
    }

    /// A tensor's raw bytes.
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8]> {
        let range = self.header.tensor_range(info, self.file_len())?;
        Ok(&self.map[range.start as usize..range.end as usize])
    }

    /// Dequantizes elements `start..start + out.len()` of a tensor into `out`. Both ends must
    /// fall on block boundaries of the tensor's type.
    pub fn dequantize_range(&self, info: &TensorInfo, start: u64, out: &mut [f32]) -> Result<()> {
        let data = self.tensor_data(info)?;
        let bad_range = || GgufError::BadRange {
            name: info.name.clone(),
            start,
            end: start.saturating_add(out.len() as u64),
        };
        let (block, size) =
            info.ty
                .block_layout()
                .ok_or_else(|| GgufError::UnsupportedTensorType {
                    name: info.name.clone(),
                    ty: info.ty,
                })?;
        let end = start.checked_add(out.len() as u64).ok_or_else(bad_range)?;
        if !start.is_multiple_of(block) || !end.is_multiple_of(block) || end > info.n_elements {
            return Err(bad_range());
        }
        let bytes = &data[(start / block * size) as usize..(end / block * size) as usize];
        dequantize(info.ty, bytes, out).map_err(|ty| GgufError::UnsupportedTensorType {
            name: info.name.clone(),
            ty,
        })
    }

    /// Tells the kernel the mapped pages of a byte range are no longer needed, so a streaming
    /// reader's resident memory stays near one tensor instead of the whole file.
    pub fn release(&self, range: std::ops::Range<u64>) {
        let len = self.map.len() as u64;
        let start = range.start.min(len);
        let end = range.end.min(len);
        let page = 4096;
        let start = start.div_ceil(page) * page;
        if end > start {
            // SAFETY: the mapping is a read-only shared map of a file: MADV_DONTNEED only drops
            // the resident pages, which the kernel reads back from the file on the next access.
            // No byte of the mapping changes and no reference into it is invalidated.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start as usize,
                    (end - start) as usize,
                )
            };
        }
    }
}

/// Dequantizes whole blocks of `ty` from `bytes` into `out` (as ggml's `dequantize_row_*`).
///
/// `out.len()` must be `bytes.len() / block_bytes * block_values`; returns `Err(ty)` for a type
/// it cannot dequantize ([`GgmlType::DEQUANTIZABLE`] lists the others). The arithmetic matches
/// ggml's reference C and the PyPI `gguf` package's `gguf.quants.dequantize` bit for bit:
/// Q4_0 `(q - 8) * d`, Q4_1 `q * d + m`, Q8_0 `q * d`, all in f32 with the f16 scales widened
/// exactly; the 5-bit, K, IQ4, TQ and MXFP4 types are in `gguf_quants`, one function each.
pub fn dequantize(
    ty: GgmlType,
    bytes: &[u8],
    out: &mut [f32],
) -> std::result::Result<(), GgmlType> {
    let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = h(c);
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = h(b);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let d = h(b);
                let m = h(&b[2..]);
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 0x0f) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = h(b);
                for j in 0..32 {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q5_0 => crate::gguf_quants::q5_0(bytes, out),
        GgmlType::Q5_1 => crate::gguf_quants::q5_1(bytes, out),
        GgmlType::Q2_K => crate::gguf_quants::q2_k(bytes, out),
        GgmlType::Q3_K => crate::gguf_quants::q3_k(bytes, out),
        GgmlType::Q4_K => crate::gguf_quants::q4_k(bytes, out),
        GgmlType::Q5_K => crate::gguf_quants::q5_k(bytes, out),
        GgmlType::Q6_K => crate::gguf_quants::q6_k(bytes, out),
        GgmlType::Q8_K => crate::gguf_quants::q8_k(bytes, out),
        GgmlType::IQ4_NL => crate::gguf_quants::iq4_nl(bytes, out),
        GgmlType::IQ4_XS => crate::gguf_quants::iq4_xs(bytes, out),
        GgmlType::TQ1_0 => crate::gguf_quants::tq1_0(bytes, out),
        GgmlType::TQ2_0 => crate::gguf_quants::tq2_0(bytes, out),
        GgmlType::MXFP4 => crate::gguf_quants::mxfp4(bytes, out),
        other => return Err(other),
    }
    Ok(())
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
}

fn value_type(v: &GgufValue) -> GgufValueType {
    match v {
        GgufValue::U8(_) => GgufValueType::U8,
        GgufValue::I8(_) => GgufValueType::I8,
        GgufValue::U16(_) => GgufValueType::U16,
        GgufValue::I16(_) => GgufValueType::I16,
        GgufValue::U32(_) => GgufValueType::U32,
        GgufValue::I32(_) => GgufValueType::I32,
        GgufValue::F32(_) => GgufValueType::F32,
        GgufValue::Bool(_) => GgufValueType::Bool,
        GgufValue::String(_) => GgufValueType::String,
        GgufValue::Array(_) => GgufValueType::Array,
        GgufValue::U64(_) => GgufValueType::U64,
        GgufValue::I64(_) => GgufValueType::I64,
        GgufValue::F64(_) => GgufValueType::F64,
    }
}

fn encode_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => encode_string(out, s),
        GgufValue::Array(a) => encode_array(out, a),
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn encode_array(out: &mut Vec<u8>, a: &GgufArray) {
    macro_rules! fixed {
        ($ty:expr, $v:expr) => {{
            out.extend_from_slice(&($ty as u32).to_le_bytes());
            out.extend_from_slice(&($v.len() as u64).to_le_bytes());
            for x in $v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    use GgufValueType as T;
    match a {
        GgufArray::U8(v) => fixed!(T::U8, v),
        GgufArray::I8(v) => fixed!(T::I8, v),
        GgufArray::U16(v) => fixed!(T::U16, v),
        GgufArray::I16(v) => fixed!(T::I16, v),
        GgufArray::U32(v) => fixed!(T::U32, v),
        GgufArray::I32(v) => fixed!(T::I32, v),
        GgufArray::F32(v) => fixed!(T::F32, v),
        GgufArray::U64(v) => fixed!(T::U64, v),
        GgufArray::I64(v) => fixed!(T::I64, v),
        GgufArray::F64(v) => fixed!(T::F64, v),
        GgufArray::Bool(v) => fixed!(T::Bool, v.iter().map(|&b| u8::from(b))),
        GgufArray::String(v) => {
            out.extend_from_slice(&(T::String as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                encode_string(out, s);
            }
        }
        GgufArray::Array(v) => {
            out.extend_from_slice(&(T::Array as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for inner in v {
                encode_array(out, inner);
            }
        }
    }
}

impl GgufHeader {
    /// Encodes the header (up to and including the zero padding before the tensor data).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            encode_string(&mut out, key.as_bytes());
            out.extend_from_slice(&(value_type(value) as u32).to_le_bytes());
            encode_value(&mut out, value);
        }
        for t in &self.tensors {
            encode_string(&mut out, t.name.as_bytes());
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&t.ty.0.to_le_bytes());
            out.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = (out.len() as u64).div_ceil(self.alignment) * self.alignment;
        out.resize(padded as usize, 0);
        out
    }
}

/// Fuzz oracle for the GGUF reader: any input either fails with an error or parses to a header
/// whose encoding parses back to the same header (arrays compared after re-encoding, since NaN
/// floats are not equal to themselves), with the data offset aligned and every tensor of known
/// layout either inside the input or reported as outside it. Tensors that lie inside are
/// dequantized when small. Panics only when an invariant breaks.
pub fn fuzz_header(data: &[u8]) {
    let Ok(header) = GgufHeader::parse(data) else {
        return;
    };
    assert!(header.alignment.is_power_of_two());
    assert_eq!(header.data_offset % header.alignment, 0);
    let encoded = header.encode();
    assert_eq!(
        encoded.len() as u64,
        header.data_offset,
        "encoded length differs from data offset"
    );
    let again = GgufHeader::parse(&encoded).expect("an encoded header must parse");
    assert_eq!(again.encode(), encoded, "re-encoding differs");
    assert_eq!(again.tensors, header.tensors);
    let file_len = data.len() as u64;
    let mut out = Vec::new();
    for t in &header.tensors {
        let Ok(range) = header.tensor_range(t, file_len) else {
            continue;
        };
        assert!(range.end <= file_len);
        if t.ty.can_dequantize() && t.n_elements <= 1 << 16 {
            out.clear();
            out.resize(t.n_elements as usize, 0f32);
            let bytes = &data[range.start as usize..range.end as usize];
            dequantize(t.ty, bytes, &mut out).expect("a dequantizable type");
        }
    }
}
