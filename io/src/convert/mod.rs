//! GGUF → dllama `.m` / `.t` conversion for llama-family models.
//!
//! [`ModelPlan::from_gguf`] reads the `llama.*` metadata into a [`ModelHeader`] (the keys and
//! order dllama's `convert-hf.py` writes) and lists the source tensor of every `.m` tensor in
//! dllama's file order: embedding; per layer q, k, v, wo, w1 (gate), w2 (down), w3 (up),
//! attention norm, ffn norm; final norm; classifier (`output.weight`, or the embedding when the
//! model ties them). [`write_model`] then streams tensor by tensor: each source block range is
//! dequantized by its own GGUF type into a small f32 buffer and written as F32 or requantized to
//! Q40 exactly as dllama's converter rounds ([`q40`]), so memory stays at one chunk plus the
//! mapped pages of the current tensor, and the output depends on nothing but the input.
//!
//! q and k rows need no permutation: llama.cpp's `convert_hf_to_gguf.py` applies to HF q/k the
//! same reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2) that dllama's `convert-hf.py`
//! applies (with the kv head count for k), so a GGUF already stores them in the interleaved
//! (Meta) order dllama's llama RoPE expects.
pub mod q40;
pub mod tokenizer;

use std::io::{self, Write};

use airllama_kernels::block::{BLOCK_SIZE, FloatType};

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufHeader, GgufValue, TensorInfo};
use crate::model::{ArchType, HiddenAct, ModelHeader, ModelHeaderError, ModelParams, NormEpsilon};
use crate::tokenizer_file::{TokenizerFile, TokenizerFileError};

pub use tokenizer::tokenizer_from_gguf;

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// The GGUF file is unreadable or malformed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `general.architecture` is not one this converter handles.
    #[error(
        "unsupported architecture {0:?}: only llama-family GGUF files (general.architecture = \"llama\") are converted"
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
    /// What it is in the `.m` file (for messages): `"layer 3 q"`.
    pub label: String,
    /// Output storage type.
    pub float_type: FloatType,
    /// Rows.
    pub rows: u64,
    /// Values per row.
    pub cols: u64,
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

impl ModelPlan {
    /// Checks the metadata and tensors of a llama-family GGUF and plans the `.m` file.
    pub fn from_gguf(g: &GgufHeader, weights: FloatType) -> Result<ModelPlan, ConvertError> {
        if !matches!(weights, FloatType::Q40 | FloatType::F32) {
            return Err(ConvertError::UnsupportedWeightType(weights));
        }
        let arch = get(g, ARCH)
            .ok_or(ConvertError::MissingMetadata(ARCH))?
            .as_str()
            .ok_or(ConvertError::BadMetadata {
                key: ARCH,
                reason: "not a string",
            })?;
        if arch != "llama" {
            return Err(ConvertError::UnsupportedArchitecture(arch.to_string()));
        }
        let dim = required_u32(g, "llama.embedding_length")?;
        let hidden_dim = required_u32(g, "llama.feed_forward_length")?;
        let n_layers = required_u32(g, "llama.block_count")?;
        let n_heads = required_u32(g, "llama.attention.head_count")?;
        let n_kv_heads = optional_u32(g, "llama.attention.head_count_kv")?.unwrap_or(n_heads);
        let seq_len = required_u32(g, "llama.context_length")?;
        if let Some(n) = get(g, "llama.expert_count").and_then(GgufValue::as_u64)
            && n > 0
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "llama mixture of experts ({n} experts)"
            )));
        }
        if let Some(t) = get(g, "llama.rope.scaling.type").and_then(GgufValue::as_str)
            && t != "none"
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "RoPE scaling {t:?}"
            )));
        }
        if g.tensor("rope_freqs.weight").is_some() {
            return Err(ConvertError::UnsupportedFeature(
                "per-frequency RoPE factors (rope_freqs.weight, Llama 3.1 scaling): the GGUF \
                 does not keep the scaling parameters a .m header needs"
                    .into(),
            ));
        }

        let key_length = optional_u32(g, "llama.attention.key_length")?;
        let value_length = optional_u32(g, "llama.attention.value_length")?;
        if value_length.is_some() && value_length != key_length {
            return Err(ConvertError::UnsupportedFeature(
                "value head size differs from key head size".into(),
            ));
        }
        if key_length.is_none() && !dim.is_multiple_of(n_heads) {
            return Err(ConvertError::BadMetadata {
                key: "llama.attention.head_count",
                reason: "does not divide the embedding length",
            });
        }
        let head_dim = key_length.unwrap_or(dim / n_heads);
        if let Some(rope_dim) = optional_u32(g, "llama.rope.dimension_count")?
            && rope_dim != head_dim
        {
            return Err(ConvertError::UnsupportedFeature(format!(
                "partial RoPE ({rope_dim} of {head_dim} head dimensions)"
            )));
        }

        let theta = optional_f64(g, "llama.rope.freq_base")?.unwrap_or(10000.0);
        if !(theta >= 1.0 && theta <= i32::MAX as f64 && (theta - theta.round()).abs() <= 1e-3) {
            return Err(ConvertError::BadMetadata {
                key: "llama.rope.freq_base",
                reason: "not a positive integer (a .m header stores rope theta as an integer)",
            });
        }
        const EPS: &str = "llama.attention.layer_norm_rms_epsilon";
        let eps = optional_f64(g, EPS)?.ok_or(ConvertError::MissingMetadata(EPS))?;
        let norm_epsilon = norm_epsilon_code(eps)?;

        let embedding = g
            .tensor("token_embd.weight")
            .ok_or_else(|| ConvertError::MissingTensor("token_embd.weight".into()))?;
        let vocab_size = match optional_u32(g, "llama.vocab_size")? {
            Some(v) => v,
            None => embedding
                .dims
                .get(1)
                .copied()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(0),
        };
        let q_dim = u64::from(head_dim) * u64::from(n_heads);
        let kv_dim = u64::from(head_dim) * u64::from(n_kv_heads);
        let (dim64, hidden64, vocab64) =
            (u64::from(dim), u64::from(hidden_dim), u64::from(vocab_size));

        let mut tensors = Vec::new();
        let mut add = |name: &str,
                       label: String,
                       ft: FloatType,
                       rows: u64,
                       cols: u64|
         -> Result<(), ConvertError> {
            let source = g
                .tensor(name)
                .ok_or_else(|| ConvertError::MissingTensor(name.to_string()))?;
            let expected = if rows == 1 {
                vec![cols]
            } else {
                vec![cols, rows]
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
            tensors.push(PlannedTensor {
                source: source.clone(),
                label,
                float_type: ft,
                rows,
                cols,
            });
            Ok(())
        };
        add(
            "token_embd.weight",
            "embedding".into(),
            FloatType::F32,
            vocab64,
            dim64,
        )?;
        for l in 0..n_layers {
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            let lab = |s: &str| format!("layer {l} {s}");
            add(&b("attn_q"), lab("q"), weights, q_dim, dim64)?;
            add(&b("attn_k"), lab("k"), weights, kv_dim, dim64)?;
            add(&b("attn_v"), lab("v"), weights, kv_dim, dim64)?;
            add(&b("attn_output"), lab("wo"), weights, dim64, q_dim)?;
            add(&b("ffn_gate"), lab("w1"), weights, hidden64, dim64)?;
            add(&b("ffn_down"), lab("w2"), weights, dim64, hidden64)?;
            add(&b("ffn_up"), lab("w3"), weights, hidden64, dim64)?;
            add(
                &b("attn_norm"),
                lab("attention norm"),
                FloatType::F32,
                1,
                dim64,
            )?;
            add(&b("ffn_norm"), lab("ffn norm"), FloatType::F32, 1, dim64)?;
        }
        add(
            "output_norm.weight",
            "final norm".into(),
            FloatType::F32,
            1,
            dim64,
        )?;
        let tied_embeddings = g.tensor("output.weight").is_none();
        let classifier = if tied_embeddings {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        add(classifier, "classifier".into(), weights, vocab64, dim64)?;

        let params = ModelParams {
            arch: ArchType::Llama,
            hidden_act: HiddenAct::Silu,
            dim,
            hidden_dim,
            n_layers,
            n_heads,
            n_kv_heads,
            weight_type: weights,
            seq_len,
            vocab_size,
            n_experts: 0,
            n_active_experts: 0,
            rope_theta: Some(theta.round() as u32),
            rope_scaling: None,
            head_dim: key_length,
            norm_epsilon: Some(norm_epsilon),
            moe_hidden_dim: None,
        };
        let header = params.to_header()?;
        Ok(ModelPlan {
            header,
            tensors,
            tied_embeddings,
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

/// Writes the `.m` file for `plan` from `gguf` to `out`, tensor by tensor. `progress` gets the
/// number of bytes written so far and the tensor being written. Returns the bytes written.
pub fn write_model<W: Write>(
    gguf: &GgufFile,
    plan: &ModelPlan,
    out: &mut W,
    progress: &mut dyn FnMut(u64, &PlannedTensor),
) -> Result<u64, ConvertError> {
    plan.header.write_to(out)?;
    let mut written = plan.header.header_size();
    let mut values = vec![0f32; CHUNK];
    let mut bytes: Vec<u8> = Vec::with_capacity(CHUNK * 4);
    for t in &plan.tensors {
        progress(written, t);
        let total = t.source.n_elements;
        let mut start = 0u64;
        while start < total {
            let n = (total - start).min(CHUNK as u64) as usize;
            let chunk = &mut values[..n];
            gguf.dequantize_range(&t.source, start, chunk)?;
            if chunk.iter().any(|v| !v.is_finite()) {
                return Err(ConvertError::NonFinite(t.source.name.clone()));
            }
            bytes.clear();
            match t.float_type {
                FloatType::Q40 => q40::quantize_q40_into(chunk, &mut bytes),
                _ => {
                    for v in chunk.iter() {
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            out.write_all(&bytes)?;
            written += bytes.len() as u64;
            // Drop the source pages of this chunk already (a big embedding would otherwise stay
            // mapped until its end).
            if let (Ok(range), Some((block, size))) = (
                gguf.header().tensor_range(&t.source, gguf.file_len()),
                t.source.ty.block_layout(),
            ) {
                let from = range.start + start / block * size;
                let to = range.start + (start + n as u64) / block * size;
                gguf.release(from.saturating_sub(RELEASE_MARGIN)..to);
            }
            start += n as u64;
        }
        if let Ok(range) = gguf.header().tensor_range(&t.source, gguf.file_len()) {
            // Page faults map neighbouring cached pages too ("fault-around"), and the GGUF's
            // tensor order differs from dllama's, so release a margin around the tensor as well:
            // that catches the spill into neighbours that were already released.
            gguf.release(
                range.start.saturating_sub(RELEASE_MARGIN)
                    ..range.end.saturating_add(RELEASE_MARGIN),
            );
        }
    }
    if let Some(last) = plan.tensors.last() {
        progress(written, last);
    }
    Ok(written)
}
