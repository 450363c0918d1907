//! GGUF → dllama `.m` / `.t` conversion for the architectures dllama runs: `llama` (Llama 1-3.x,
//! Mistral, SmolLM2, ...), `qwen3` and `qwen3moe`.
//!
//! [`ModelPlan::from_gguf_file`] reads the `<arch>.*` metadata into a [`ModelHeader`] (the keys
//! and order dllama's `convert-hf.py` writes; Llama 3.1+ RoPE scaling recovered from
//! `rope_freqs.weight` by [`rope::llama3_scaling`]) and lists the source tensor of every `.m`
//! tensor in dllama's file order: embedding; per layer q, k, v, wo, then w1 (gate), w2 (down),
//! w3 (up) — for qwen3moe the router and each expert's three from the 3-D expert tensors —,
//! then the q/k norms (qwen3), attention norm, ffn norm; final norm; classifier
//! (`output.weight`, or the embedding when the model ties them). A GGUF tensor with no place
//! in that list is refused. [`write_model`] then streams tensor by tensor: each source block
//! range is dequantized by its own GGUF type into a small f32 buffer and written as F32 or
//! requantized to Q40 exactly as dllama's converter rounds ([`q40`]), so memory stays at one
//! chunk plus the mapped pages of the current tensor, and the output depends on nothing but
//! the input.
//!
//! q and k rows need no permutation: llama.cpp's `convert_hf_to_gguf.py` applies to llama's
//! HF q/k the same reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2) that dllama's
//! `convert-hf.py` applies (with the kv head count for k), so a llama GGUF already stores them
//! in the interleaved (Meta) order dllama's llama RoPE expects; and neither converter permutes
//! Qwen3's, whose NeoX-style ("falcon") RoPE rotates halves.
pub mod q40;
pub mod rope;
pub mod tokenizer;

use std::io::{self, Write};
use std::sync::Arc;

use airllama_kernels::block::{BLOCK_SIZE, FloatType};

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufHeader, GgufValue, TensorInfo};
use crate::model::{ArchType, HiddenAct, ModelHeader, ModelHeaderError, ModelParams, NormEpsilon};
use crate::tokenizer_file::{TokenizerFile, TokenizerFileError};

pub use tokenizer::{VocabOrder, tokenizer_from_gguf};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The GGUF file is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `general.architecture` is not one this converter handles.
    #[error(
        "unsupported architecture {0:?}: general.architecture must be llama, qwen3 or qwen3moe (the architectures dllama runs)"
    )]
    UnsupportedArchitecture(String),
    /// A required metadata key is absent.
    #[error("GGUF metadata lacks {0}")]
    MissingMetadata(&'static str),
    /// A metadata value has the wrong type or an invalid value.
    #[error("GGUF metadata {key}: {reason}")]
    BadMetadata {
        /// The key.
        key: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A model feature dllama's llama architecture cannot express.
    #[error("unsupported model feature: {0}")]
    UnsupportedFeature(String),
    /// The RMS norm epsilon is neither 1e-5 nor 1e-6 (the only values a `.m` header can hold).
    #[error("unsupported RMS norm epsilon {0:e}: a .m header stores only 1e-5 or 1e-6")]
    UnsupportedEpsilon(f64),
    /// The requested output weight type.
    #[error("unsupported output weight type {0:?}: use q40 or f32")]
    UnsupportedWeightType(FloatType),
    /// The tokenizer model is not `gpt2` or `llama`.
    #[error("unsupported tokenizer model {0:?} (gpt2 and llama are supported)")]
    UnsupportedTokenizer(String),
    /// A vocabulary entry cannot be stored.
    #[error("token {id}: {reason}")]
    BadToken {
        /// Token id.
        id: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor the model needs is absent.
    #[error("GGUF has no tensor {0:?}")]
    MissingTensor(String),
    /// A tensor's shape differs from what the metadata implies.
    #[error("tensor {name:?} has dims {found:?}, expected {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Expected ggml dims (row length first).
        expected: Vec<u64>,
        /// Dims in the file.
        found: Vec<u64>,
    },
    /// A tensor type this converter cannot dequantize.
    #[error(
        "tensor {name:?} has type {ty}, which the converter cannot read; supported: {}",
        supported_types()
    )]
    UnsupportedTensorType {
        /// Tensor name.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// A tensor holds NaN or infinity.
    #[error("tensor {0:?} holds a NaN or infinite value")]
    NonFinite(String),
    /// The header values do not form a valid `.m` header.
    #[error("invalid model header")]
    Header(#[from] ModelHeaderError),
    /// The tokenizer does not form a valid `.t` file.
    #[error("invalid tokenizer")]
    Tokenizer(#[from] TokenizerFileError),
    /// The tokenizer's vocabulary and the model's differ in size (dllama's sampler would read
    /// past the logits).
    #[error("the tokenizer has {tokenizer} tokens but the model's vocabulary is {model}")]
    VocabSizeMismatch {
        /// Model vocabulary size.
        model: u32,
        /// Tokenizer vocabulary size.
        tokenizer: usize,
    },
    /// Writing failed.
    #[error("writing output")]
    Io(#[from] io::Error),
}

/// One `.m` tensor and where its values come from.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTensor {
    /// Source GGUF tensor.
    pub source: TensorInfo,
    /// First element read from it (non-zero for one expert of a 3-D expert tensor); the
    /// tensor takes `rows × cols` elements from there.
    pub source_start: u64,
    /// What it is in the `.m` file (for messages): `"layer 3 q"`.
    pub label: String,
    /// Output storage type.
    pub float_type: FloatType,
    /// Rows.
    pub rows: u64,
    /// Values per row.
    pub cols: u64,
    /// For the embedding and the classifier of a relabeled vocabulary ([`VocabOrder`]):
    /// `row_order[r]` is the source row written as row `r`. `None`: rows in source order.
    pub row_order: Option<Arc<[u32]>>,
}

impl PlannedTensor {
    /// Bytes it takes in the `.m` file.
    pub fn out_bytes(&self) -> u64 {
        self.float_type
            .bytes_for(self.rows * self.cols)
            .unwrap_or(0)
    }
}

/// A checked conversion: the `.m` header and every tensor in file order.
#[derive(Clone, Debug)]
pub struct ModelPlan {
    /// The `.m` header.
    pub header: ModelHeader,
    /// Tensors in file order.
    pub tensors: Vec<PlannedTensor>,
    /// Whether the classifier reuses the embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// How token ids (embedding and classifier rows) are numbered against the GGUF's; the
    /// same order [`tokenizer_from_gguf`] gives the `.t` file.
    pub vocab_order: VocabOrder,
}

/// The ggml names of the tensor types the converter reads, for messages.
fn supported_types() -> String {
    GgmlType::DEQUANTIZABLE
        .iter()
        .map(|t| t.name())
        .collect::<Vec<_>>()
        .join(", ")
}

const ARCH: &str = "general.architecture";
/// Llama 3.1+ RoPE factors in llama.cpp's GGUFs.
const ROPE_FREQS: &str = "rope_freqs.weight";

fn get<'a>(g: &'a GgufHeader, key: &'static str) -> Option<&'a GgufValue> {
    g.get(key)
}

fn required_u32(g: &GgufHeader, key: &'static str) -> Result<u32, ConvertError> {
    optional_u32(g, key)?.ok_or(ConvertError::MissingMetadata(key))
}

fn optional_u32(g: &GgufHeader, key: &'static str) -> Result<Option<u32>, ConvertError> {
    match get(g, key) {
        None => Ok(None),
        Some(v) => {
            let n = v.as_u64().ok_or(ConvertError::BadMetadata {
                key,
                reason: "not an unsigned integer",
            })?;
            let n = u32::try_from(n)
                .ok()
                .filter(|&n| n > 0 && n <= i32::MAX as u32)
                .ok_or(ConvertError::BadMetadata {
                    key,
                    reason: "out of range",
                })?;
            Ok(Some(n))
        }
    }
}

fn optional_f64(g: &GgufHeader, key: &'static str) -> Result<Option<f64>, ConvertError> {
    get(g, key)
        .map(|v| {
            v.as_f64().ok_or(ConvertError::BadMetadata {
                key,
                reason: "not a number",
            })
        })
        .transpose()
}

/// Maps a float epsilon to the `.m` code, with a relative tolerance of 1e-4 (GGUF stores f32,
/// so 1e-5 arrives as 9.99999974738e-6).
pub fn norm_epsilon_code(eps: f64) -> Result<NormEpsilon, ConvertError> {
    let close = |target: f64| (eps - target).abs() <= target * 1e-4;
    if close(1e-5) {
        Ok(NormEpsilon::E5)
    } else if close(1e-6) {
        Ok(NormEpsilon::E6)
    } else {
        Err(ConvertError::UnsupportedEpsilon(eps))
    }
}

/// The GGUF architectures the converter reads, with the `.m` architecture each becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceArch {
    /// `llama`: Llama 1/2/3, Mistral, SmolLM2, TinyLlama, ...
    Llama,
    /// `qwen3`: per-head q/k norms, NeoX ("falcon") RoPE.
    Qwen3,
    /// `qwen3moe`: as qwen3 with a router and experts in every layer.
    Qwen3Moe,
}

/// `"<arch>.<suffix>"` as a `&'static str` (the errors name their keys statically).
macro_rules! key {
    ($arch:expr, $suffix:literal) => {
        match $arch {
            SourceArch::Llama => concat!("llama.", $suffix),
            SourceArch::Qwen3 => concat!("qwen3.", $suffix),
            SourceArch::Qwen3Moe => concat!("qwen3moe.", $suffix),
        }
    };
}

/// Largest `rope_freqs.weight` read (a head of 8192 values).
const MAX_ROPE_FACTORS: u64 = 4096;

impl ModelPlan {
    /// Checks the metadata and tensors of a GGUF (`general.architecture` llama, qwen3 or
    /// qwen3moe) and plans the `.m` file.
    ///
    /// A Llama 3.1+ GGUF keeps its RoPE scaling in the data of `rope_freqs.weight`, which a
    /// header alone does not hold: [`ModelPlan::from_gguf_file`] reads it, this function
    /// refuses such a file.
    pub fn from_gguf(g: &GgufHeader, weights: FloatType) -> Result<ModelPlan, ConvertError> {
        Self::plan(g, weights, None)
    }

    /// As [`ModelPlan::from_gguf`], reading `rope_freqs.weight` (when present) to recover the
    /// Llama 3.1 RoPE scaling numbers ([`rope::llama3_scaling`]).
    pub fn from_gguf_file(gguf: &GgufFile, weights: FloatType) -> Result<ModelPlan, ConvertError> {
        let g = gguf.header();
        let factors = match g.tensor(ROPE_FREQS) {
            None => None,
            Some(t) => {
                if t.n_elements > MAX_ROPE_FACTORS || t.dims.len() != 1 {
                    return Err(ConvertError::TensorShape {
                        name: ROPE_FREQS.into(),
                        expected: vec![MAX_ROPE_FACTORS.min(t.n_elements)],
                        found: t.dims.clone(),
                    });
                }
                if !t.ty.can_dequantize() {
                    return Err(ConvertError::UnsupportedTensorType {
                        name: ROPE_FREQS.into(),
                        ty: t.ty,
                    });
                }
                let mut v = vec![0f32; t.n_elements as usize];
                gguf.dequantize_range(t, 0, &mut v)?;
                Some(v)
            }
        };
        Self::plan(g, weights, factors.as_deref())
    }

    fn plan(
        g: &GgufHeader,
        weights: FloatType,
        rope_factors: Option<&[f32]>,
    ) -> Result<ModelPlan, ConvertError> {
        if !matches!(weights, FloatType::Q40 | FloatType::F32) {
            return Err(ConvertError::UnsupportedWeightType(weights));
        }
        let arch_name = get(g, ARCH)
            .ok_or(ConvertError::MissingMetadata(ARCH))?
            .as_str()
            .ok_or(ConvertError::BadMetadata {
                key: ARCH,
                reason: "not a string",
            })?;
        let arch = match arch_name {
            "llama" => SourceArch::Llama,
            "qwen3" => SourceArch::Qwen3,
            "qwen3moe" => SourceArch::Qwen3Moe,
            other => return Err(ConvertError::UnsupportedArchitecture(other.to_string())),
        };
        let dim = required_u32(g, key!(arch, "embedding_length"))?;
        let n_layers = required_u32(g, key!(arch, "block_count"))?;
        let n_heads = required_u32(g, key!(arch, "attention.head_count"))?;
        let n_kv_heads = optional_u32(g, key!(arch, "attention.head_count_kv"))?.unwrap_or(n_heads);
        let seq_len = required_u32(g, key!(arch, "context_length"))?;
        let n_experts = match get(g, key!(arch, "expert_count")) {
            None => 0,
            Some(v) => v.as_u64().ok_or(ConvertError::BadMetadata {
                key: key!(arch, "expert_count"),
                reason: "not an unsigned integer",
            })?,
        };
        // The expert loop of the plan is bounded by the tensors' own sizes, but a count that
        // no tensor could hold is refused before anything is planned.
        if n_experts > 1 << 16 {
            return Err(ConvertError::BadMetadata {
                key: key!(arch, "expert_count"),
                reason: "out of range",
            });
        }
        let n_experts = n_experts as u32;
        let (hidden_dim, moe) = match arch {
            SourceArch::Llama | SourceArch::Qwen3 => {
                if n_experts > 0 {
                    return Err(ConvertError::UnsupportedFeature(format!(
                        "{arch_name} mixture of experts ({n_experts} experts): dllama runs \
                         experts only in the qwen3moe architecture"
                    )));
                }
                (required_u32(g, key!(arch, "feed_forward_length"))?, None)
            }
            SourceArch::Qwen3Moe => {
                if n_experts == 0 {
                    return Err(ConvertError::MissingMetadata("qwen3moe.expert_count"));
                }
                let used = required_u32(g, "qwen3moe.expert_used_count")?;
                if used > n_experts {
                    return Err(ConvertError::BadMetadata {
                        key: "qwen3moe.expert_used_count",
                        reason: "more than qwen3moe.expert_count",
                    });
                }
                if weights != FloatType::Q40 {
                    return Err(ConvertError::UnsupportedFeature(format!(
                        "qwen3moe with {} weights: dllama (and airllama) run mixture-of-experts \
                         layers only with q40 weights and q80 buffers",
                        weights.name()
                    )));
                }
                let moe_hidden = required_u32(g, "qwen3moe.expert_feed_forward_length")?;
                // dllama's converter writes the config's intermediate_size, which its MoE
                // graph never uses; a GGUF without it gets the expert size.
                let hidden = optional_u32(g, "qwen3moe.feed_forward_length")?.unwrap_or(moe_hidden);
                (hidden, Some((used, moe_hidden)))
            }
        };
        if let Some(t) = get(g, key!(arch, "rope.scaling.type")).and_then(GgufValue::as_str)
            && t != "none"
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "RoPE scaling {t:?} (dllama has only Llama 3.1's, which GGUF stores as \
                 rope_freqs.weight)"
            )));
        }

        let key_length = optional_u32(g, key!(arch, "attention.key_length"))?;
        let value_length = optional_u32(g, key!(arch, "attention.value_length"))?;
        if value_length.is_some() && value_length != key_length {
            return Err(ConvertError::UnsupportedFeature(
                "value head size differs from key head size".into(),
            ));
        }
        if key_length.is_none() && !dim.is_multiple_of(n_heads) {
            return Err(ConvertError::BadMetadata {
                key: key!(arch, "attention.head_count"),
                reason: "does not divide the embedding length",
            });
        }
        let head_dim = key_length.unwrap_or(dim / n_heads);
        if let Some(rope_dim) = optional_u32(g, key!(arch, "rope.dimension_count"))?
            && rope_dim != head_dim
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "partial RoPE ({rope_dim} of {head_dim} head dimensions)"
            )));
        }

        let theta_key = key!(arch, "rope.freq_base");
        let theta = optional_f64(g, theta_key)?.unwrap_or(10000.0);
        if !(theta >= 1.0 && theta <= i32::MAX as f64 && (theta - theta.round()).abs() <= 1e-3) {
            return Err(ConvertError::BadMetadata {
                key: theta_key,
                reason: "not a positive integer (a .m header stores rope theta as an integer)",
            });
        }
        let rope_scaling = match (g.tensor(ROPE_FREQS), rope_factors) {
            (None, _) => None,
            (Some(_), _) if arch != SourceArch::Llama => {
                return Err(ConvertError::UnsupportedFeature(format!(
                    "{ROPE_FREQS} in a {arch_name} model (dllama scales only llama RoPE)"
                )));
            }
            (Some(_), None) => {
                return Err(ConvertError::UnsupportedFeature(format!(
                    "{ROPE_FREQS} holds the Llama 3.1 RoPE scaling in its data, which \
                     ModelPlan::from_gguf does not read (use ModelPlan::from_gguf_file)"
                )));
            }
            (Some(_), Some(factors)) => rope::llama3_scaling(factors, theta, head_dim)?,
        };
        let eps_key = key!(arch, "attention.layer_norm_rms_epsilon");
        let eps = optional_f64(g, eps_key)?.ok_or(ConvertError::MissingMetadata(eps_key))?;
        let norm_epsilon = norm_epsilon_code(eps)?;

        let embedding = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ConvertError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = match optional_u32(g, key!(arch, "vocab_size"))? {
            Some(v) => v,
            None => embedding
                .dims
                .get(1)
                .copied()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
        };
        // The tokenizer's relabeling moves the embedding and classifier rows with the tokens.
        let vocab_order = VocabOrder::from_gguf(g)?;
        let row_order: Option<Arc<[u32]>> = if vocab_order.is_identity() {
            None
        } else if vocab_order.len() != vocab_size as usize {
            return Err(ConvertError::VocabSizeMismatch {
                model: vocab_size,
                tokenizer: vocab_order.len(),
            });
        } else {
            Some(
                (0..vocab_size)
                    .map(|id| vocab_order.source_id(id))
                    .collect(),
            )
        };
        let q_dim = u64::from(head_dim) * u64::from(n_heads);
        let kv_dim = u64::from(head_dim) * u64::from(n_kv_heads);
        let ffn64 = u64::from(moe.map_or(hidden_dim, |(_, m)| m));
        let (dim64, vocab64, head64) = (u64::from(dim), u64::from(vocab_size), u64::from(head_dim));

        let mut tensors = Vec::new();
        let mut used = std::collections::HashSet::new();
        // `expert`: Some((e, n)) takes expert e of a 3-D tensor of n experts.
        let mut add = |name: &str,
                       label: String,
                       ft: FloatType,
                       rows: u64,
                       cols: u64,
                       expert: Option<(u64, u64)>,
                       row_order: Option<Arc<[u32]>>|
         -> Result<(), ConvertError> {
            let source = g
                .tensor(name)
                .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
            let expected = match expert {
                Some((_, n)) => vec![cols, rows, n],
                None if rows == 1 => vec![cols],
                None => vec![cols, rows],
            };
            let matches = source.dims == expected || (rows == 1 && source.dims == [cols, 1]);
            if !matches {
                return Err(ConvertError::TensorShape {
                    name: name.to_string(),
                    expected,
                    found: source.dims.clone(),
                });
            }
            if !source.ty.can_dequantize() {
                return Err(ConvertError::UnsupportedTensorType {
                    name: name.to_string(),
                    ty: source.ty,
                });
            }
            if ft == FloatType::Q40 && !cols.is_multiple_of(BLOCK_SIZE as u64) {
                return Err(ConvertError::UnsupportedFeature(format!(
                    "{name}: rows of {cols} values cannot be cut into 32-value Q40 blocks"
                )));
            }
            used.insert(source.name.clone());
            tensors.push(PlannedTensor {
                source: source.clone(),
                source_start: expert.map_or(0, |(e, _)| e * rows * cols),
                label,
                float_type: ft,
                rows,
                cols,
                row_order,
            });
            Ok(())
        };
        add(
            "token_embd.weight",
            "embedding".into(),
            FloatType::F32,
            vocab64,
            dim64,
            None,
            row_order.clone(),
        )?;
        for l in 0..n_layers {
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            let lab = |s: &str| format!("layer {l} {s}");
            add(&b("attn_q"), lab("q"), weights, q_dim, dim64, None, None)?;
            add(&b("attn_k"), lab("k"), weights, kv_dim, dim64, None, None)?;
            add(&b("attn_v"), lab("v"), weights, kv_dim, dim64, None, None)?;
            add(
                &b("attn_output"),
                lab("wo"),
                weights,
                dim64,
                q_dim,
                None,
                None,
            )?;
            if moe.is_some() {
                let n = u64::from(n_experts);
                add(
                    &b("ffn_gate_inp"),
                    lab("moe gate"),
                    FloatType::F32,
                    n,
                    dim64,
                    None,
                    None,
                )?;
                for e in 0..n {
                    let lab = |s: &str| format!("layer {l} expert {e} {s}");
                    let ex = Some((e, n));
                    add(
                        &b("ffn_gate_exps"),
                        lab("w1"),
                        weights,
                        ffn64,
                        dim64,
                        ex,
                        None,
                    )?;
                    add(
                        &b("ffn_down_exps"),
                        lab("w2"),
                        weights,
                        dim64,
                        ffn64,
                        ex,
                        None,
                    )?;
                    add(
                        &b("ffn_up_exps"),
                        lab("w3"),
                        weights,
                        ffn64,
                        dim64,
                        ex,
                        None,
                    )?;
                }
            } else {
                add(&b("ffn_gate"), lab("w1"), weights, ffn64, dim64, None, None)?;
                add(&b("ffn_down"), lab("w2"), weights, dim64, ffn64, None, None)?;
                add(&b("ffn_up"), lab("w3"), weights, ffn64, dim64, None, None)?;
            }
            if arch != SourceArch::Llama {
                add(
                    &b("attn_q_norm"),
                    lab("q norm"),
                    FloatType::F32,
                    1,
                    head64,
                    None,
                    None,
                )?;
                add(
                    &b("attn_k_norm"),
                    lab("k norm"),
                    FloatType::F32,
                    1,
                    head64,
                    None,
                    None,
                )?;
            }
            add(
                &b("attn_norm"),
                lab("attention norm"),
                FloatType::F32,
                1,
                dim64,
                None,
                None,
            )?;
            add(
                &b("ffn_norm"),
                lab("ffn norm"),
                FloatType::F32,
                1,
                dim64,
                None,
                None,
            )?;
        }
        add(
            "output_norm.weight",
            "final norm".into(),
            FloatType::F32,
            1,
            dim64,
            None,
            None,
        )?;
        let tied_embeddings = g.tensor("output.weight").is_none();
        let classifier = if tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        add(
            classifier,
            "classifier".into(),
            weights,
            vocab64,
            dim64,
            None,
            row_order,
        )?;
        // A tensor with no place in the .m file (biases, shared experts, ...) means the model
        // computes something dllama's graph does not: refuse rather than drop it.
        if let Some(extra) = g
            .tensors
            .iter()
            .find(|t| t.name != ROPE_FREQS && !used.contains(&t.name))
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "tensor {:?} has no place in dllama's {arch_name} layout",
                extra.name
            )));
        }

        let (model_arch, n_active_experts, moe_hidden_dim) = match (arch, moe) {
            (SourceArch::Qwen3Moe, Some((used, m))) => (ArchType::Qwen3Moe, used, Some(m)),
            (SourceArch::Qwen3, _) => (ArchType::Qwen3, 0, None),
            _ => (ArchType::Llama, 0, None),
        };
        let params = ModelParams {
            arch: model_arch,
            hidden_act: HiddenAct::Silu,
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            weight_type: weights,
            seq_len,
            vocab_size,
            n_experts,
            n_active_experts,
            rope_theta: Some(theta.round() as u32),
            rope_scaling,
            head_dim: key_length,
            norm_epsilon: Some(norm_epsilon),
            moe_hidden_dim,
        };
        let header = params.to_header()?;
        Ok(ModelPlan {
            header,
            tensors,
            tied_embeddings,
            vocab_order,
        })
    }

    /// Checks that a tokenizer fits this model (same vocabulary size, as dllama needs).
    pub fn check_tokenizer(&self, tokenizer: &TokenizerFile) -> Result<(), ConvertError> {
        let model = self.header.config().vocab_size;
        if tokenizer.vocab.len() != model as usize {
            return Err(ConvertError::VocabSizeMismatch {
                model,
                tokenizer: tokenizer.vocab.len(),
            });
        }
        Ok(())
    }

    /// Size of the `.m` file this plan writes.
    pub fn file_size(&self) -> u64 {
        self.header.header_size()
            + self
                .tensors
                .iter()
                .map(PlannedTensor::out_bytes)
                .sum::<u64>()
    }
}

/// Values dequantized per step: a multiple of every supported block size, small enough to stay
/// in cache-sized buffers.
const CHUNK: usize = 1 << 16;

/// Bytes around a finished tensor whose mapped pages are released with it (see [`write_model`]).
const RELEASE_MARGIN: u64 = 1 << 20;

/// What [`write_model_report`] did, per source tensor type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConvertReport {
    /// Bytes written (the whole `.m` file).
    pub bytes: u64,
    /// One entry per GGUF tensor type read, in order of first use.
    pub types: Vec<TypeReport>,
}

/// The tensors read from one GGUF tensor type.
#[derive(Clone, Debug, PartialEq)]
pub struct TypeReport {
    /// The source ggml type.
    pub source: GgmlType,
    /// Distinct GGUF tensors of this type read (a tied embedding read twice counts once).
    pub source_tensors: usize,
    /// `.m` tensors written from them (each expert of a 3-D expert tensor counts).
    pub written_f32: usize,
    /// `.m` tensors re-quantized to Q40 from them.
    pub written_q40: usize,
    /// Values read.
    pub values: u64,
    /// Largest `|dequantized Q40 − source|` over the values re-quantized to Q40 (the rounding
    /// the conversion adds on top of the GGUF's own quantization); `None` when none were.
    pub q40_max_abs_error: Option<f32>,
    /// The `.m` tensor where that error occurs.
    pub q40_worst_tensor: Option<String>,
    /// Root mean square of the same differences over all those values.
    pub q40_rms_error: Option<f64>,
    /// Values re-quantized to Q40 and the sum of their squared errors (for the mean).
    q40_values: u64,
    q40_sum_sq: f64,
}

impl ConvertReport {
    fn entry(&mut self, ty: GgmlType) -> &mut TypeReport {
        let i = match self.types.iter().position(|t| t.source == ty) {
            Some(i) => i,
            None => {
                self.types.push(TypeReport {
                    source: ty,
                    source_tensors: 0,
                    written_f32: 0,
                    written_q40: 0,
                    values: 0,
                    q40_max_abs_error: None,
                    q40_worst_tensor: None,
                    q40_rms_error: None,
                    q40_values: 0,
                    q40_sum_sq: 0.0,
                });
                self.types.len() - 1
            }
        };
        &mut self.types[i]
    }
}

/// The source element ranges of a planned tensor in output order: the whole tensor, or one
/// range per run of consecutive source rows when its rows are reordered.
fn source_runs(t: &PlannedTensor) -> Vec<(u64, u64)> {
    let Some(order) = &t.row_order else {
        return vec![(t.source_start, t.rows * t.cols)];
    };
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &row in order.iter() {
        let start = t.source_start + u64::from(row) * t.cols;
        match runs.last_mut() {
            Some((s, n)) if *s + *n == start => *n += t.cols,
            _ => runs.push((start, t.cols)),
        }
    }
    runs
}

/// Writes the `.m` file for `plan` from `gguf` to `out`, tensor by tensor. `progress` gets the
/// number of bytes written so far and the tensor being written. Returns the bytes written.
pub fn write_model<W: Write>(
    gguf: &GgufFile,
    plan: &ModelPlan,
    out: &mut W,
    progress: &mut dyn FnMut(u64, &PlannedTensor),
) -> Result<u64, ConvertError> {
    Ok(write_model_report(gguf, plan, out, progress)?.bytes)
}

/// [`write_model`], returning what was read and how much the Q40 re-quantization rounded.
pub fn write_model_report<W: Write>(
    gguf: &GgufFile,
    plan: &ModelPlan,
    out: &mut W,
    progress: &mut dyn FnMut(u64, &PlannedTensor),
) -> Result<ConvertReport, ConvertError> {
    plan.header.write_to(out)?;
    let mut report = ConvertReport::default();
    let mut seen = std::collections::HashSet::new();
    let mut written = plan.header.header_size();
    let mut values = vec![0f32; CHUNK];
    let mut bytes: Vec<u8> = Vec::with_capacity(CHUNK * 4);
    for t in &plan.tensors {
        progress(written, t);
        let block_bytes = t.source.ty.block_layout();
        let source_range = gguf.header().tensor_range(&t.source, gguf.file_len()).ok();
        // File bytes of elements `from..to` of the source (block-aligned by construction).
        let bytes_of = |from: u64, to: u64| -> Option<std::ops::Range<u64>> {
            let (range, (block, size)) = (source_range.clone()?, block_bytes?);
            Some(range.start + from / block * size..range.start + to / block * size)
        };
        let (mut max_error, mut sum_sq) = (0f32, 0f64);
        // Runs start on row boundaries and rows hold whole source blocks (and whole Q40
        // blocks for a Q40 output, which the plan checks), so every chunk does too.
        for (run_start, run_len) in source_runs(t) {
            let mut start = 0u64;
            while start < run_len {
                let n = (run_len - start).min(CHUNK as u64) as usize;
                let from = run_start + start;
                let chunk = &mut values[..n];
                gguf.dequantize_range(&t.source, from, chunk)?;
                if chunk.iter().any(|v| !v.is_finite()) {
                    return Err(ConvertError::NonFinite(t.source.name.clone()));
                }
                bytes.clear();
                match t.float_type {
                    FloatType::Q40 => {
                        q40::quantize_q40_into(chunk, &mut bytes);
                        let (max, sq) = q40::rounding_error(chunk, &bytes);
                        max_error = max_error.max(max);
                        sum_sq += sq;
                    }
                    _ => {
                        for v in chunk.iter() {
                            bytes.extend_from_slice(&v.to_le_bytes());
                        }
                    }
                }
                out.write_all(&bytes)?;
                written += bytes.len() as u64;
                // Drop the source pages of this chunk already (a big embedding would otherwise
                // stay mapped until its end).
                if let Some(r) = bytes_of(from, from + n as u64) {
                    gguf.release(r.start.saturating_sub(RELEASE_MARGIN)..r.end);
                }
                start += n as u64;
            }
        }
        if let Some(r) = bytes_of(t.source_start, t.source_start + t.rows * t.cols) {
            // Page faults map neighbouring cached pages too ("fault-around"), and the GGUF's
            // tensor order differs from dllama's, so release a margin around the tensor as well:
            // that catches the spill into neighbours that were already released.
            gguf.release(
                r.start.saturating_sub(RELEASE_MARGIN)..r.end.saturating_add(RELEASE_MARGIN),
            );
        }
        let first_read = seen.insert(t.source.name.clone());
        let entry = report.entry(t.source.ty);
        if first_read {
            entry.source_tensors += 1;
        }
        entry.values += t.rows * t.cols;
        if t.float_type == FloatType::Q40 {
            entry.written_q40 += 1;
            entry.q40_values += t.rows * t.cols;
            entry.q40_sum_sq += sum_sq;
            entry.q40_rms_error = Some((entry.q40_sum_sq / entry.q40_values as f64).sqrt());
            if entry.q40_max_abs_error.is_none_or(|e| max_error > e) {
                entry.q40_max_abs_error = Some(max_error);
                entry.q40_worst_tensor = Some(t.label.clone());
            }
        } else {
            entry.written_f32 += 1;
        }
    }
    if let Some(last) = plan.tensors.last() {
        progress(written, last);
    }
    report.bytes = written;
    Ok(report)
}
