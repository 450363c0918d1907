//! The `.m` model file header: dllama's key/value integers, their defaults and derived values.
//!
//! A `.m` file starts with `i32 magic = 0x0A00ABCD`, `i32 headerSize` (bytes, counting the magic,
//! the size itself and the pairs), then `(i32 key, i32 value)` pairs; the tensors follow back to
//! back (see [`crate::layout`]). dllama's `loadLlmHeader` fills a struct with defaults, overwrites
//! the fields it finds and derives the rest (head dim, q/kv dims, falcon rope for the Qwen3
//! architectures). [`ModelHeader::parse`] does the same, but it checks every size against what
//! remains and rejects values dllama would have cast blindly into nonsense (negative dims, a
//! head count of zero, an unknown architecture), with a typed [`ModelHeaderError`].
//!
//! The header keeps the pairs in file order, so [`ModelHeader::encode`] gives back the exact
//! bytes it was parsed from; [`ModelParams`] is what a converter fills in, and it writes the keys
//! in the order of dllama's `convert-hf.py` + `writer.py`.
use std::fmt;
use std::io::{self, Read, Write};

use airllama_kernels::block::FloatType;
use thiserror::Error;

/// The rotary embedding variant (dllama's `NnRopeType`): the kernels' type, which the graph
/// hands on to the ROPE ops unchanged.
pub use airllama_kernels::ops::RopeKind;

/// The magic number of the current `.m` format.
pub const MODEL_MAGIC: u32 = 0x0A00_ABCD;

/// Magic numbers of dllama's older model formats (the arch code was the magic). dllama refuses
/// them, and so do we, but with a message that says what the file is.
pub const OLD_MODEL_MAGICS: [u32; 2] = [0x00AB_CD00, 0x00AB_CD01];

/// Largest header accepted, in bytes. dllama knows 22 keys (184 bytes with magic and size); a
/// limit well above that lets converters add a few repeated keys while keeping a hostile size
/// field from allocating or reading much.
pub const MAX_HEADER_SIZE: u32 = 4096;

/// Bytes of the fixed prefix: magic and header size.
const PREFIX_SIZE: u32 = 8;

/// One key of the header (dllama's `LlmHeaderKey`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum HeaderKey {
    /// Format version (`VERSION`, 0); dllama stores it and never reads it.
    Version = 0,
    /// Architecture, an [`ArchType`] code (`ARCH_TYPE`, 1).
    ArchType = 1,
    /// Model (embedding) dimension (`DIM`, 2).
    Dim = 2,
    /// Feed-forward hidden dimension of dense models (`HIDDEN_DIM`, 3).
    HiddenDim = 3,
    /// Number of transformer blocks (`N_LAYERS`, 4).
    NLayers = 4,
    /// Query heads (`N_HEADS`, 5).
    NHeads = 5,
    /// Key/value heads (`N_KV_HEADS`, 6).
    NKvHeads = 6,
    /// MoE experts per layer, 0 for dense models (`N_EXPERTS`, 7).
    NExperts = 7,
    /// Experts used per token (`N_ACTIVE_EXPERTS`, 8).
    NActiveExperts = 8,
    /// Vocabulary size (`VOCAB_SIZE`, 9).
    VocabSize = 9,
    /// Context length the model was trained for (`SEQ_LEN`, 10; `max_seq_len` in the converter).
    SeqLen = 10,
    /// A [`HiddenAct`] code (`HIDDEN_ACT`, 11).
    HiddenAct = 11,
    /// RoPE base, an integer (`ROPE_THETA`, 12).
    RopeTheta = 12,
    /// Float type code of the matrices (`WEIGHT_FLOAT_TYPE`, 13).
    WeightFloatType = 13,
    /// Llama 3.1 RoPE scaling factor, an integer (`ROPE_SCALING_FACTOR`, 14).
    RopeScalingFactor = 14,
    /// Llama 3.1 RoPE low-frequency factor (`ROPE_SCALING_LOW_FREQ_FACTOR`, 15).
    RopeScalingLowFreqFactor = 15,
    /// Llama 3.1 RoPE high-frequency factor (`ROPE_SCALING_HIGH_FREQ_FACTORY`, 16, sic).
    RopeScalingHighFreqFactor = 16,
    /// Llama 3.1 RoPE original context length (`ROPE_SCALING_ORIG_MAX_SEQ_LEN`, 17).
    RopeScalingOrigMaxSeqLen = 17,
    /// A [`RopeKind`] code (`ROPE_TYPE`, 18).
    RopeType = 18,
    /// Explicit head dimension; 0 or absent means `dim / n_heads` (`HEAD_DIM`, 19).
    HeadDim = 19,
    /// A [`NormEpsilon`] code: 5 → 1e-5, 6 → 1e-6 (`NORM_EPSILON`, 20).
    NormEpsilon = 20,
    /// Feed-forward hidden dimension of each MoE expert (`MOE_HIDDEN_DIM`, 21).
    MoeHiddenDim = 21,
}

impl HeaderKey {
    /// Every key, by code.
    pub const ALL: [HeaderKey; 22] = [
        HeaderKey::Version,
        HeaderKey::ArchType,
        HeaderKey::Dim,
        HeaderKey::HiddenDim,
        HeaderKey::NLayers,
        HeaderKey::NHeads,
        HeaderKey::NKvHeads,
        HeaderKey::NExperts,
        HeaderKey::NActiveExperts,
        HeaderKey::VocabSize,
        HeaderKey::SeqLen,
        HeaderKey::HiddenAct,
        HeaderKey::RopeTheta,
        HeaderKey::WeightFloatType,
        HeaderKey::RopeScalingFactor,
        HeaderKey::RopeScalingLowFreqFactor,
        HeaderKey::RopeScalingHighFreqFactor,
        HeaderKey::RopeScalingOrigMaxSeqLen,
        HeaderKey::RopeType,
        HeaderKey::HeadDim,
        HeaderKey::NormEpsilon,
        HeaderKey::MoeHiddenDim,
    ];

    /// Decodes a key code, `None` for a code dllama does not know.
    pub const fn from_code(code: i32) -> Option<HeaderKey> {
        if code < 0 || code as usize >= HeaderKey::ALL.len() {
            return None;
        }
        Some(HeaderKey::ALL[code as usize])
    }

    /// The integer stored in the file.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// The key's name in dllama's converter (`writer.py`), used in messages and by `inspect`.
    pub const fn name(self) -> &'static str {
        match self {
            HeaderKey::Version => "version",
            HeaderKey::ArchType => "arch_type",
            HeaderKey::Dim => "dim",
            HeaderKey::HiddenDim => "hidden_dim",
            HeaderKey::NLayers => "n_layers",
            HeaderKey::NHeads => "n_heads",
            HeaderKey::NKvHeads => "n_kv_heads",
            HeaderKey::NExperts => "n_experts",
            HeaderKey::NActiveExperts => "n_active_experts",
            HeaderKey::VocabSize => "vocab_size",
            HeaderKey::SeqLen => "max_seq_len",
            HeaderKey::HiddenAct => "hidden_act",
            HeaderKey::RopeTheta => "rope_theta",
            HeaderKey::WeightFloatType => "weights_float_type",
            HeaderKey::RopeScalingFactor => "rope_scaling_factor",
            HeaderKey::RopeScalingLowFreqFactor => "rope_scaling_low_freq_factor",
            HeaderKey::RopeScalingHighFreqFactor => "rope_scaling_high_freq_factory",
            HeaderKey::RopeScalingOrigMaxSeqLen => "rope_scaling_orig_max_seq_len",
            HeaderKey::RopeType => "rope_type",
            HeaderKey::HeadDim => "head_dim",
            HeaderKey::NormEpsilon => "norm_epsilon",
            HeaderKey::MoeHiddenDim => "moe_hidden_dim",
        }
    }
}

impl fmt::Display for HeaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// The model architecture (dllama's `LlmArchType`); it decides the tensor list and the RoPE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchType {
    /// Llama and Mistral (`LLAMA` = 0xABCD00).
    Llama,
    /// Qwen3: per-head q/k RMS norms and falcon RoPE (`QWEN3` = 0xABCD01).
    Qwen3,
    /// Qwen3 MoE: as Qwen3, with a router and experts in every layer (`QWEN3_MOE` = 0xABCD02).
    Qwen3Moe,
}

impl ArchType {
    /// Decodes dllama's code.
    pub const fn from_code(code: i32) -> Option<ArchType> {
        match code {
            0x00AB_CD00 => Some(ArchType::Llama),
            0x00AB_CD01 => Some(ArchType::Qwen3),
            0x00AB_CD02 => Some(ArchType::Qwen3Moe),
            _ => None,
        }
    }

    /// The code stored in the file.
    pub const fn code(self) -> i32 {
        match self {
            ArchType::Llama => 0x00AB_CD00,
            ArchType::Qwen3 => 0x00AB_CD01,
            ArchType::Qwen3Moe => 0x00AB_CD02,
        }
    }

    /// The name dllama prints.
    pub const fn name(self) -> &'static str {
        match self {
            ArchType::Llama => "Llama",
            ArchType::Qwen3 => "Qwen3",
            ArchType::Qwen3Moe => "Qwen3 MoE",
        }
    }

    /// Whether each layer has per-head q/k RMS norms (and dllama forces falcon RoPE).
    pub const fn has_qk_norm(self) -> bool {
        matches!(self, ArchType::Qwen3 | ArchType::Qwen3Moe)
    }
}

/// The feed-forward activation (dllama's `LlmHiddenAct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HiddenAct {
    /// GELU (code 0).
    Gelu,
    /// SiLU (code 1), dllama's default.
    Silu,
}

impl HiddenAct {
    /// Decodes dllama's code.
    pub const fn from_code(code: i32) -> Option<HiddenAct> {
        match code {
            0 => Some(HiddenAct::Gelu),
            1 => Some(HiddenAct::Silu),
            _ => None,
        }
    }

    /// The code stored in the file.
    pub const fn code(self) -> i32 {
        match self {
            HiddenAct::Gelu => 0,
            HiddenAct::Silu => 1,
        }
    }

    /// The name dllama prints.
    pub const fn name(self) -> &'static str {
        match self {
            HiddenAct::Gelu => "Gelu",
            HiddenAct::Silu => "Silu",
        }
    }
}

/// The RMS norm epsilon. The file stores an exponent code, and dllama accepts only two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NormEpsilon {
    /// 1e-5 (code 5), dllama's default.
    E5,
    /// 1e-6 (code 6).
    E6,
}

impl NormEpsilon {
    /// Decodes the code (5 or 6).
    pub const fn from_code(code: i32) -> Option<NormEpsilon> {
        match code {
            5 => Some(NormEpsilon::E5),
            6 => Some(NormEpsilon::E6),
            _ => None,
        }
    }

    /// The code stored in the file.
    pub const fn code(self) -> i32 {
        match self {
            NormEpsilon::E5 => 5,
            NormEpsilon::E6 => 6,
        }
    }

    /// The epsilon as the `f32` dllama puts in INV_RMS op configs.
    pub const fn value(self) -> f32 {
        match self {
            NormEpsilon::E5 => 1e-5,
            NormEpsilon::E6 => 1e-6,
        }
    }
}

/// Everything the header says about the model, with dllama's defaults applied and its derived
/// values computed. Only a validated [`ModelHeader`] hands one out, so the invariants listed on
/// the fields hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelConfig {
    /// Format version as stored (default 0).
    pub version: i32,
    /// Architecture.
    pub arch: ArchType,
    /// Feed-forward activation (default SiLU).
    pub hidden_act: HiddenAct,
    /// Model dimension, > 0.
    pub dim: u32,
    /// Dense feed-forward dimension (may be 0 for MoE models, which use `moe_hidden_dim`).
    pub hidden_dim: u32,
    /// Expert feed-forward dimension (default 0; > 0 for MoE models).
    pub moe_hidden_dim: u32,
    /// Transformer blocks, > 0.
    pub n_layers: u32,
    /// Query heads, > 0.
    pub n_heads: u32,
    /// Key/value heads, > 0, divides `n_heads`.
    pub n_kv_heads: u32,
    /// Experts per layer: 0 for dense models, > 0 exactly when `arch` is Qwen3 MoE.
    pub n_experts: u32,
    /// Experts used per token: in `1..=n_experts` for MoE models; dense models may store any
    /// value, which dllama (and airllama) ignores.
    pub n_active_experts: u32,
    /// Vocabulary size, > 0.
    pub vocab_size: u32,
    /// Context length used for inference (`orig_seq_len`, or less after
    /// [`ModelConfig::with_max_seq_len`]), > 0.
    pub seq_len: u32,
    /// Context length stored in the file.
    pub orig_seq_len: u32,
    /// Head dimension: the explicit key, or `dim / n_heads`; > 0.
    pub head_dim: u32,
    /// `head_dim * n_heads`.
    pub q_dim: u32,
    /// `head_dim * n_kv_heads`.
    pub kv_dim: u32,
    /// RoPE variant (falcon for the Qwen3 architectures whatever the file says).
    pub rope_type: RopeKind,
    /// RoPE base (default 10000), an integer in the file.
    pub rope_theta: f32,
    /// Llama 3.1 scaling factor (default 1).
    pub rope_scaling_factor: f32,
    /// Llama 3.1 low-frequency factor (default 0).
    pub rope_scaling_low_freq_factor: f32,
    /// Llama 3.1 high-frequency factor (default 0).
    pub rope_scaling_high_freq_factor: f32,
    /// Llama 3.1 original context length (default 0).
    pub rope_scaling_orig_max_seq_len: u32,
    /// RMS norm epsilon (default 1e-5).
    pub norm_epsilon: NormEpsilon,
    /// Float type of every matrix but the embedding and the MoE router (those are F32).
    pub weight_type: FloatType,
}

impl ModelConfig {
    /// Whether the layers hold a router and experts instead of one feed-forward block. dllama's
    /// weight loader decides this by `n_experts > 0`; validation ties it to the Qwen3 MoE arch.
    pub const fn is_moe(&self) -> bool {
        self.n_experts > 0
    }

    /// Experts per layer as the loader iterates them: `n_experts`, or 1 for dense models.
    pub const fn n_experts_or_1(&self) -> u32 {
        if self.n_experts > 0 {
            self.n_experts
        } else {
            1
        }
    }

    /// The feed-forward dimension of w1/w2/w3: `moe_hidden_dim` for Qwen3 MoE, else
    /// `hidden_dim` (dllama's `ffDim` in `buildLlmNet`).
    pub const fn ffn_dim(&self) -> u32 {
        match self.arch {
            ArchType::Qwen3Moe => self.moe_hidden_dim,
            _ => self.hidden_dim,
        }
    }

    /// Caps the inference context like dllama's `--max-seq-len` (0 = no cap); `orig_seq_len`
    /// keeps the file's value.
    pub const fn with_max_seq_len(mut self, max_seq_len: u32) -> ModelConfig {
        if max_seq_len > 0 && self.seq_len > max_seq_len {
            self.seq_len = max_seq_len;
        }
        self
    }
}

/// Why a `.m` header was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ModelHeaderError {
    /// Fewer bytes than the header needs (the magic, the size, or the pairs it announces).
    #[error("model file is shorter than its header: needs {needed} bytes, has {available}")]
    Truncated {
        /// Bytes the header needs.
        needed: u64,
        /// Bytes there are.
        available: u64,
    },
    /// One of dllama's old formats, which stored the architecture code as the magic.
    #[error(
        "old model format (magic {magic:#x}): dllama's 0xABCD00 / 0xABCD01 formats are not \
         supported, convert the model again with a current converter"
    )]
    OldFormat {
        /// The magic found.
        magic: u32,
    },
    /// Not a `.m` file.
    #[error("unsupported magic number {magic:#x} (a .m model file starts with 0xA00ABCD)")]
    UnsupportedMagic {
        /// The magic found.
        magic: u32,
    },
    /// The header size is not 8 plus a whole number of pairs, or above [`MAX_HEADER_SIZE`].
    #[error("invalid header size {size}: must be 8 + 8·k bytes and at most {MAX_HEADER_SIZE}")]
    InvalidHeaderSize {
        /// The size field, as stored.
        size: i32,
    },
    /// A key dllama does not know (dllama refuses it too).
    #[error("unknown header key {key} at byte {offset}")]
    UnknownKey {
        /// The key code.
        key: i32,
        /// Byte offset of the pair in the file.
        offset: u64,
    },
    /// A value that cannot mean anything for its key (negative dimension, unknown code).
    #[error("invalid value {value} for header key {key}")]
    InvalidValue {
        /// The key.
        key: HeaderKey,
        /// The value.
        value: i32,
    },
    /// The weight float type key is absent (or -1, dllama's `F_UNK`).
    #[error("model does not specify its weight float type")]
    MissingWeightType,
    /// A weight float type code that is not F32, F16, Q40 or Q80.
    #[error("unsupported weight float type code {code}")]
    UnsupportedWeightType {
        /// The code.
        code: i32,
    },
    /// A norm epsilon code other than 5 (1e-5) or 6 (1e-6).
    #[error("unsupported norm epsilon code {code} (5 = 1e-5 and 6 = 1e-6 are supported)")]
    UnsupportedEpsilon {
        /// The code.
        code: i32,
    },
    /// A dimension that must be positive is zero (or absent).
    #[error("{field} is zero")]
    ZeroDim {
        /// Which one.
        field: &'static str,
    },
    /// Dimensions that contradict each other.
    #[error("inconsistent dimensions: {reason}")]
    InconsistentDims {
        /// What does not fit.
        reason: &'static str,
    },
}

/// Why reading a header from a stream failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReadModelHeaderError {
    /// The stream failed or ended early.
    #[error("cannot read the model header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid header.
    #[error(transparent)]
    Format(#[from] ModelHeaderError),
}

/// A parsed, validated `.m` header: the pairs in file order and the [`ModelConfig`] they give.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelHeader {
    pairs: Vec<(HeaderKey, i32)>,
    config: ModelConfig,
}

fn read_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Checks the 8-byte prefix and returns the header size it announces.
fn parse_prefix(prefix: &[u8]) -> Result<u32, ModelHeaderError> {
    let available = prefix.len() as u64;
    let magic = read_i32(prefix, 0).ok_or(ModelHeaderError::Truncated {
        needed: 4,
        available,
    })? as u32;
    if OLD_MODEL_MAGICS.contains(&magic) {
        return Err(ModelHeaderError::OldFormat { magic });
    }
    if magic != MODEL_MAGIC {
        return Err(ModelHeaderError::UnsupportedMagic { magic });
    }
    let size = read_i32(prefix, 4).ok_or(ModelHeaderError::Truncated {
        needed: 8,
        available,
    })?;
    let valid = size >= PREFIX_SIZE as i32
        && size as u32 <= MAX_HEADER_SIZE
        && (size as u32 - PREFIX_SIZE).is_multiple_of(8);
    if !valid {
        return Err(ModelHeaderError::InvalidHeaderSize { size });
    }
    Ok(size as u32)
}

impl ModelHeader {
    /// Parses the header at the start of `bytes` (the whole file, a memory map, or just the
    /// header). Bytes after the header are not looked at; [`crate::layout::ModelLayout`] checks
    /// them against the tensor sizes.
    pub fn parse(bytes: &[u8]) -> Result<ModelHeader, ModelHeaderError> {
        let size = parse_prefix(bytes)? as usize;
        if bytes.len() < size {
            return Err(ModelHeaderError::Truncated {
                needed: size as u64,
                available: bytes.len() as u64,
            });
        }
        let mut pairs = Vec::with_capacity((size - PREFIX_SIZE as usize) / 8);
        let mut at = PREFIX_SIZE as usize;
        while at < size {
            // `size` <= bytes.len() and (size - 8) % 8 == 0, so both reads are in bounds.
            let (Some(code), Some(value)) = (read_i32(bytes, at), read_i32(bytes, at + 4)) else {
                return Err(ModelHeaderError::Truncated {
                    needed: size as u64,
                    available: bytes.len() as u64,
                });
            };
            let key = HeaderKey::from_code(code).ok_or(ModelHeaderError::UnknownKey {
                key: code,
                offset: at as u64,
            })?;
            pairs.push((key, value));
            at += 8;
        }
        ModelHeader::from_pairs(pairs)
    }

    /// Reads exactly the header bytes from `reader` (8 bytes, then at most
    /// [`MAX_HEADER_SIZE`] − 8 more) and parses them; the reader is left at the first tensor.
    pub fn read_from<R: Read>(reader: &mut R) -> Result<ModelHeader, ReadModelHeaderError> {
        let mut bytes = vec![0u8; PREFIX_SIZE as usize];
        reader.read_exact(&mut bytes)?;
        let size = parse_prefix(&bytes)? as usize;
        bytes.resize(size, 0);
        reader.read_exact(&mut bytes[PREFIX_SIZE as usize..])?;
        Ok(ModelHeader::parse(&bytes)?)
    }

    /// Validates key/value pairs (in file order) and derives the config. A key given twice
    /// takes its last value, as in dllama.
    pub fn from_pairs(pairs: Vec<(HeaderKey, i32)>) -> Result<ModelHeader, ModelHeaderError> {
        if pairs.len() > (MAX_HEADER_SIZE - PREFIX_SIZE) as usize / 8 {
            return Err(ModelHeaderError::InvalidHeaderSize {
                size: i32::try_from(pairs.len().saturating_mul(8).saturating_add(8))
                    .unwrap_or(i32::MAX),
            });
        }
        let config = derive_config(&pairs)?;
        Ok(ModelHeader { pairs, config })
    }

    /// The pairs in file order.
    pub fn pairs(&self) -> &[(HeaderKey, i32)] {
        &self.pairs
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Header size in bytes (where the first tensor starts): 8 + 8 per pair.
    pub fn header_size(&self) -> u64 {
        u64::from(PREFIX_SIZE) + 8 * self.pairs.len() as u64
    }

    /// The header's bytes: magic, size, then the pairs in order (dllama's `writeHeader`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_size() as usize);
        out.extend_from_slice(&MODEL_MAGIC.to_le_bytes());
        // At most MAX_HEADER_SIZE (checked in from_pairs), so it fits an i32.
        out.extend_from_slice(&(self.header_size() as i32).to_le_bytes());
        for &(key, value) in &self.pairs {
            out.extend_from_slice(&key.code().to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// Writes [`ModelHeader::encode`]'s bytes.
    pub fn write_to<W: Write>(&self, writer: &mut W) -> io::Result<()> {
        writer.write_all(&self.encode())
    }
}

/// A non-negative value as `u32`, or [`ModelHeaderError::InvalidValue`].
fn unsigned(key: HeaderKey, value: i32) -> Result<u32, ModelHeaderError> {
    u32::try_from(value).map_err(|_| ModelHeaderError::InvalidValue { key, value })
}

fn derive_config(pairs: &[(HeaderKey, i32)]) -> Result<ModelConfig, ModelHeaderError> {
    // dllama's defaults (loadLlmHeader); arch has no default there (0 is no valid arch), so an
    // absent arch key is an error below.
    let mut arch: Option<ArchType> = None;
    let mut weight_type: Option<FloatType> = None;
    let mut c = ModelConfig {
        version: 0,
        arch: ArchType::Llama,
        hidden_act: HiddenAct::Silu,
        dim: 0,
        hidden_dim: 0,
        moe_hidden_dim: 0,
        n_layers: 0,
        n_heads: 0,
        n_kv_heads: 0,
        n_experts: 0,
        n_active_experts: 0,
        vocab_size: 0,
        seq_len: 0,
        orig_seq_len: 0,
        head_dim: 0,
        q_dim: 0,
        kv_dim: 0,
        rope_type: RopeKind::Llama,
        rope_theta: 10000.0,
        rope_scaling_factor: 1.0,
        rope_scaling_low_freq_factor: 0.0,
        rope_scaling_high_freq_factor: 0.0,
        rope_scaling_orig_max_seq_len: 0,
        norm_epsilon: NormEpsilon::E5,
        weight_type: FloatType::F32,
    };
    for &(key, value) in pairs {
        let invalid = ModelHeaderError::InvalidValue { key, value };
        match key {
            HeaderKey::Version => c.version = value,
            HeaderKey::ArchType => arch = Some(ArchType::from_code(value).ok_or(invalid)?),
            HeaderKey::Dim => c.dim = unsigned(key, value)?,
            HeaderKey::HiddenDim => c.hidden_dim = unsigned(key, value)?,
            HeaderKey::NLayers => c.n_layers = unsigned(key, value)?,
            HeaderKey::NHeads => c.n_heads = unsigned(key, value)?,
            HeaderKey::NKvHeads => c.n_kv_heads = unsigned(key, value)?,
            HeaderKey::NExperts => c.n_experts = unsigned(key, value)?,
            HeaderKey::NActiveExperts => c.n_active_experts = unsigned(key, value)?,
            HeaderKey::VocabSize => c.vocab_size = unsigned(key, value)?,
            HeaderKey::SeqLen => c.orig_seq_len = unsigned(key, value)?,
            HeaderKey::HiddenAct => c.hidden_act = HiddenAct::from_code(value).ok_or(invalid)?,
            HeaderKey::RopeTheta => c.rope_theta = value as f32,
            HeaderKey::WeightFloatType => {
                weight_type = match value {
                    -1 => None,
                    _ => Some(
                        u32::try_from(value)
                            .ok()
                            .and_then(FloatType::from_code)
                            .ok_or(ModelHeaderError::UnsupportedWeightType { code: value })?,
                    ),
                }
            }
            HeaderKey::RopeScalingFactor => c.rope_scaling_factor = value as f32,
            HeaderKey::RopeScalingLowFreqFactor => c.rope_scaling_low_freq_factor = value as f32,
            HeaderKey::RopeScalingHighFreqFactor => c.rope_scaling_high_freq_factor = value as f32,
            HeaderKey::RopeScalingOrigMaxSeqLen => {
                c.rope_scaling_orig_max_seq_len = unsigned(key, value)?
            }
            HeaderKey::RopeType => {
                c.rope_type = u32::try_from(value)
                    .ok()
                    .and_then(RopeKind::from_code)
                    .ok_or(invalid)?
            }
            HeaderKey::HeadDim => c.head_dim = unsigned(key, value)?,
            HeaderKey::NormEpsilon => {
                c.norm_epsilon = NormEpsilon::from_code(value)
                    .ok_or(ModelHeaderError::UnsupportedEpsilon { code: value })?
            }
            HeaderKey::MoeHiddenDim => c.moe_hidden_dim = unsigned(key, value)?,
        }
    }
    c.weight_type = weight_type.ok_or(ModelHeaderError::MissingWeightType)?;
    c.arch = arch.ok_or(ModelHeaderError::InvalidValue {
        key: HeaderKey::ArchType,
        value: 0,
    })?;
    c.seq_len = c.orig_seq_len;

    let zero = |field: &'static str, v: u32| {
        if v == 0 {
            Err(ModelHeaderError::ZeroDim { field })
        } else {
            Ok(())
        }
    };
    zero("dim", c.dim)?;
    zero("n_layers", c.n_layers)?;
    zero("n_heads", c.n_heads)?;
    zero("n_kv_heads", c.n_kv_heads)?;
    zero("vocab_size", c.vocab_size)?;
    zero("seq_len", c.seq_len)?;
    let inconsistent = |reason: &'static str| ModelHeaderError::InconsistentDims { reason };

    if c.head_dim == 0 {
        if !c.dim.is_multiple_of(c.n_heads) {
            return Err(inconsistent(
                "dim is not a multiple of n_heads and no head_dim is given",
            ));
        }
        c.head_dim = c.dim / c.n_heads;
    }
    if !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return Err(inconsistent("n_heads is not a multiple of n_kv_heads"));
    }
    c.q_dim = c
        .head_dim
        .checked_mul(c.n_heads)
        .ok_or(inconsistent("head_dim * n_heads overflows"))?;
    c.kv_dim = c.head_dim * c.n_kv_heads; // n_kv_heads <= n_heads, so no overflow.

    match c.arch {
        ArchType::Qwen3Moe => {
            zero("n_experts", c.n_experts)?;
            zero("n_active_experts", c.n_active_experts)?;
            zero("moe_hidden_dim", c.moe_hidden_dim)?;
            if c.n_active_experts > c.n_experts {
                return Err(inconsistent("n_active_experts is larger than n_experts"));
            }
        }
        ArchType::Llama | ArchType::Qwen3 => {
            zero("hidden_dim", c.hidden_dim)?;
            if c.n_experts != 0 {
                return Err(inconsistent(
                    "n_experts > 0 needs the Qwen3 MoE architecture",
                ));
            }
        }
    }
    if c.arch.has_qk_norm() {
        c.rope_type = RopeKind::Falcon;
    }
    Ok(c)
}

/// Llama 3.1 RoPE scaling as a converter writes it (integers, like dllama's `convert-hf.py`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeScaling {
    /// `rope_scaling_factor`.
    pub factor: u32,
    /// `rope_scaling_low_freq_factor`.
    pub low_freq_factor: u32,
    /// `rope_scaling_high_freq_factory`.
    pub high_freq_factor: u32,
    /// `rope_scaling_orig_max_seq_len`.
    pub orig_max_seq_len: u32,
    /// `rope_type` written with them (Llama 3.1 in practice).
    pub rope_type: RopeKind,
}

/// What a converter knows about a model. [`ModelParams::to_header`] writes the keys in the
/// order dllama's `convert-hf.py` builds its params dict (optional keys only when set), which
/// `writer.py` then writes as they come.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelParams {
    /// `arch_type`.
    pub arch: ArchType,
    /// `hidden_act`.
    pub hidden_act: HiddenAct,
    /// `dim`.
    pub dim: u32,
    /// `hidden_dim`.
    pub hidden_dim: u32,
    /// `n_layers`.
    pub n_layers: u32,
    /// `n_heads`.
    pub n_heads: u32,
    /// `n_kv_heads`.
    pub n_kv_heads: u32,
    /// `weights_float_type`.
    pub weight_type: FloatType,
    /// `max_seq_len`.
    pub seq_len: u32,
    /// `vocab_size`.
    pub vocab_size: u32,
    /// `n_experts` (0 for dense models).
    pub n_experts: u32,
    /// `n_active_experts` (0 for dense models).
    pub n_active_experts: u32,
    /// `rope_theta`, when the source model gives one.
    pub rope_theta: Option<u32>,
    /// Llama 3.1 RoPE scaling, when the source model has it.
    pub rope_scaling: Option<RopeScaling>,
    /// `head_dim`, when the source model gives one.
    pub head_dim: Option<u32>,
    /// `norm_epsilon`, when the source model gives one.
    pub norm_epsilon: Option<NormEpsilon>,
    /// `moe_hidden_dim`, when the source model gives one.
    pub moe_hidden_dim: Option<u32>,
}

impl ModelParams {
    /// The pairs in `convert-hf.py` order, validated into a header.
    pub fn to_header(&self) -> Result<ModelHeader, ModelHeaderError> {
        fn int(key: HeaderKey, v: u32) -> Result<(HeaderKey, i32), ModelHeaderError> {
            i32::try_from(v)
                .map(|value| (key, value))
                .map_err(|_| ModelHeaderError::InvalidValue {
                    key,
                    value: v as i32,
                })
        }
        let mut pairs = vec![
            (HeaderKey::Version, 0),
            (HeaderKey::ArchType, self.arch.code()),
            (HeaderKey::HiddenAct, self.hidden_act.code()),
            int(HeaderKey::Dim, self.dim)?,
            int(HeaderKey::HiddenDim, self.hidden_dim)?,
            int(HeaderKey::NLayers, self.n_layers)?,
            int(HeaderKey::NHeads, self.n_heads)?,
            int(HeaderKey::NKvHeads, self.n_kv_heads)?,
            (HeaderKey::WeightFloatType, self.weight_type.code() as i32),
            int(HeaderKey::SeqLen, self.seq_len)?,
            int(HeaderKey::VocabSize, self.vocab_size)?,
            int(HeaderKey::NExperts, self.n_experts)?,
            int(HeaderKey::NActiveExperts, self.n_active_experts)?,
        ];
        if let Some(theta) = self.rope_theta {
            pairs.push(int(HeaderKey::RopeTheta, theta)?);
        }
        if let Some(s) = self.rope_scaling {
            pairs.push(int(HeaderKey::RopeScalingFactor, s.factor)?);
            pairs.push(int(HeaderKey::RopeScalingLowFreqFactor, s.low_freq_factor)?);
            pairs.push(int(
                HeaderKey::RopeScalingHighFreqFactor,
                s.high_freq_factor,
            )?);
            pairs.push(int(
                HeaderKey::RopeScalingOrigMaxSeqLen,
                s.orig_max_seq_len,
            )?);
            // Codes 0..=2: the cast is exact.
            pairs.push((HeaderKey::RopeType, s.rope_type.code() as i32));
        }
        if let Some(head_dim) = self.head_dim {
            pairs.push(int(HeaderKey::HeadDim, head_dim)?);
        }
        if let Some(eps) = self.norm_epsilon {
            pairs.push((HeaderKey::NormEpsilon, eps.code()));
        }
        if let Some(moe) = self.moe_hidden_dim {
            pairs.push(int(HeaderKey::MoeHiddenDim, moe)?);
        }
        ModelHeader::from_pairs(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ModelParams {
        ModelParams {
            arch: ArchType::Qwen3Moe,
            hidden_act: HiddenAct::Silu,
            dim: 192,
            hidden_dim: 384,
            n_layers: 4,
            n_heads: 12,
            n_kv_heads: 6,
            weight_type: FloatType::Q40,
            seq_len: 256,
            vocab_size: 288,
            n_experts: 4,
            n_active_experts: 2,
            rope_theta: Some(10000),
            rope_scaling: None,
            head_dim: Some(32),
            norm_epsilon: Some(NormEpsilon::E6),
            moe_hidden_dim: Some(192),
        }
    }

    #[test]
    fn params_round_trip() {
        let header = params().to_header().unwrap();
        let bytes = header.encode();
        assert_eq!(bytes.len() as u64, header.header_size());
        let parsed = ModelHeader::parse(&bytes).unwrap();
        assert_eq!(parsed, header);
        let c = parsed.config();
        assert_eq!((c.head_dim, c.q_dim, c.kv_dim), (32, 384, 192));
        assert_eq!(c.rope_type, RopeKind::Falcon);
        assert_eq!(c.norm_epsilon.value(), 1e-6);
        assert_eq!(c.ffn_dim(), 192);
        let read = ModelHeader::read_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(read, header);
    }

    #[test]
    fn defaults_and_derived() {
        let mut p = params();
        p.arch = ArchType::Llama;
        p.n_experts = 0;
        p.n_active_experts = 0;
        p.rope_theta = None;
        p.head_dim = None;
        p.norm_epsilon = None;
        p.moe_hidden_dim = None;
        let h = p.to_header().unwrap();
        let c = h.config();
        assert_eq!((c.head_dim, c.q_dim, c.kv_dim), (16, 192, 96));
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.rope_type, RopeKind::Llama);
        assert_eq!(c.norm_epsilon, NormEpsilon::E5);
        assert_eq!(c.ffn_dim(), 384);
        assert_eq!(c.with_max_seq_len(100).seq_len, 100);
        assert_eq!(c.with_max_seq_len(100).orig_seq_len, 256);
        assert_eq!(c.with_max_seq_len(0).seq_len, 256);
    }

    proptest::proptest! {
        /// Any header the params writer accepts encodes and parses back to itself, the stream
        /// reader agrees, and every config invariant documented on [`ModelConfig`] holds.
        #[test]
        fn encode_parse_round_trip(
            arch in 0usize..3,
            dim in 1u32..4096,
            heads in 1u32..64,
            kv_div in 1u32..8,
            head_dim in proptest::option::of(1u32..256),
            hidden_dim in 0u32..20000,
            experts in (0u32..16, 0u32..16),
            moe_hidden_dim in proptest::option::of(0u32..4096),
            eps in proptest::option::of(proptest::bool::ANY),
            weight in 0u32..4,
            seq_len in 0u32..100_000,
        ) {
            let arch = [ArchType::Llama, ArchType::Qwen3, ArchType::Qwen3Moe][arch];
            let p = ModelParams {
                arch,
                hidden_act: HiddenAct::Silu,
                dim,
                hidden_dim,
                n_layers: 3,
                n_heads: heads,
                n_kv_heads: (heads / kv_div).max(1),
                weight_type: FloatType::from_code(weight).unwrap(),
                seq_len,
                vocab_size: 100,
                n_experts: experts.0,
                n_active_experts: experts.1,
                rope_theta: Some(500_000),
                rope_scaling: None,
                head_dim,
                norm_epsilon: eps.map(|e| if e { NormEpsilon::E5 } else { NormEpsilon::E6 }),
                moe_hidden_dim,
            };
            let Ok(header) = p.to_header() else { return Ok(()) };
            let bytes = header.encode();
            let parsed = ModelHeader::parse(&bytes);
            proptest::prop_assert_eq!(parsed.as_ref(), Ok(&header));
            let read = ModelHeader::read_from(&mut bytes.as_slice()).unwrap();
            proptest::prop_assert_eq!(&read, &header);
            let c = header.config();
            proptest::prop_assert!(c.dim > 0 && c.head_dim > 0 && c.seq_len > 0);
            proptest::prop_assert_eq!(c.q_dim, c.head_dim * c.n_heads);
            proptest::prop_assert_eq!(c.kv_dim, c.head_dim * c.n_kv_heads);
            proptest::prop_assert_eq!(c.n_heads % c.n_kv_heads, 0);
            proptest::prop_assert!(c.ffn_dim() > 0);
            proptest::prop_assert_eq!(c.is_moe(), arch == ArchType::Qwen3Moe);
            if c.is_moe() {
                proptest::prop_assert!((1..=c.n_experts).contains(&c.n_active_experts));
            }
            proptest::prop_assert_eq!(c.rope_type == RopeKind::Falcon, arch.has_qk_norm());
        }
    }

    #[test]
    fn read_from_is_bounded() {
        let mut bytes = MODEL_MAGIC.to_le_bytes().to_vec();
        bytes.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            ModelHeader::read_from(&mut bytes.as_slice()),
            Err(ReadModelHeaderError::Format(
                ModelHeaderError::InvalidHeaderSize { .. }
            ))
        ));
    }
}
