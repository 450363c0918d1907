//! SOFTMAX and MULTIHEAD_ATT over the KV cache.
use core::ops::Range;

use crate::backend::Backend;

/// Softmax in place (dllama `softmax_F32`).
///
/// AVX2: vector max over the first `len - len % 8` values (`horizontalMax_avx2`), scalar max
/// over the rest; `expf_avx2` on 8 lanes with a vector running sum reduced by
/// `horizontalSum_avx2`, glibc `expf` on the tail added after it; a zero sum becomes 1e-6;
/// values multiplied by `1 / sum`. NEON: the same with 4 lanes, `vmaxvq_f32`, `expf_neon`, and
/// the tail divided by the sum instead of multiplied by its inverse. Scalar: one running sum,
/// every value divided by the sum.
///
/// Not split: the executor (`softmaxForward_F32_F32`) gives thread `t` the batch items
/// `t, t + nThreads, …` and calls this on each whole row (`output.x` values).
pub fn softmax(backend: Backend, x: &mut [f32]) {
    dispatch!(backend, softmax(x))
}

/// The shape of one MULTIHEAD_ATT call (dllama `NnMultiHeadAttOpConfig` plus the position).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads of the whole model (`nHeads`).
    pub n_heads: usize,
    /// Key/value heads of the whole model (`nKvHeads`); `n_heads` must be a multiple.
    pub n_kv_heads: usize,
    /// Values per head (`headDim`).
    pub head_dim: usize,
    /// Values per cache row of this node (`kvDim0`).
    pub kv_dim0: usize,
    /// Rows of the cache and stride of the attention buffer per head (`seqLen`).
    pub seq_len: usize,
    /// The position of this batch item: keys and values `0..=pos` are attended.
    pub pos: usize,
}

/// Multi-head attention for heads `heads` of one batch item (dllama `multiheadAtt_F32`).
///
/// For each head `h` (query rows `q[h · headDim ..]`, cache column `(h / kvMul) · headDim` with
/// `kvMul = nHeads / nKvHeads`; `h` counts this node's heads): scores
/// `dot(q_h, k_t) / sqrtf(headDim)` for `t ≤ pos`, [`softmax`] over them, then
/// `y_h = Σ_t a_t · v_t` accumulated in `t` order from zero. The dot product is dllama's
/// `dotProduct_F32` (AVX2: 8 FMA lanes + `horizontalSum_avx2`; NEON: 4 unfused lanes +
/// `vaddvq_f32`; scalar: in order); the weighted sum `y[i] += a · v[i]` is one FMA per value on
/// AVX2 and NEON builds (g++ contraction), unfused on scalar. dllama asserts
/// `headDim % 8 == 0` (AVX2) / `% 4` (NEON); other head sizes are handled as zero-padded lanes.
///
/// Executor (`multiHeadAttForward_F32_F32`): for each batch item with position `pos`, split the
/// node's head range `0..nHeads0` with `split_range` into `heads` and pass:
/// `y = output_row[heads.start · headDim .. heads.end · headDim]`,
/// `q = query_row` (the item's whole `qSliceD0` query values),
/// `att = att_buffer[item · nHeads0 · seqLen ..][heads.start · seqLen .. heads.end · seqLen]`,
/// and the node's whole key and value caches (`seqLen · kvDim0` values each).
///
/// # Panics
/// If a buffer is too short for the heads, positions or shape given, `n_kv_heads` is zero or
/// does not divide `n_heads`, or `pos >= seq_len`.
#[allow(clippy::too_many_arguments)] // the buffers of dllama's op, each with its own role
pub fn multihead_attention(
    backend: Backend,
    heads: Range<usize>,
    shape: &AttentionShape,
    y: &mut [f32],
    q: &[f32],
    att: &mut [f32],
    key_cache: &[f32],
    value_cache: &[f32],
) {
    let n_heads = heads.end.saturating_sub(heads.start);
    let hd = shape.head_dim;
    assert!(shape.n_kv_heads != 0, "multihead_attention: zero kv heads");
    assert_eq!(
        shape.n_heads % shape.n_kv_heads,
        0,
        "multihead_attention: head ratio"
    );
    assert!(
        shape.pos < shape.seq_len,
        "multihead_attention: position out of range"
    );
    assert_eq!(y.len(), n_heads * hd, "multihead_attention: output length");
    assert_eq!(
        att.len(),
        n_heads * shape.seq_len,
        "multihead_attention: att length"
    );
    assert!(
        q.len() >= heads.end * hd,
        "multihead_attention: query too short"
    );
    let kv_mul = shape.n_heads / shape.n_kv_heads;
    let last_kv_head = (heads.end.max(1) - 1) / kv_mul;
    let cache_needed = shape.pos * shape.kv_dim0 + (last_kv_head + 1) * hd;
    assert!(
        n_heads == 0 || (key_cache.len() >= cache_needed && value_cache.len() >= cache_needed),
        "multihead_attention: cache too short"
    );
    assert!(
        shape.kv_dim0 >= hd || shape.pos == 0,
        "multihead_attention: kv row narrower than a head"
    );
    let root = crate::ops::math::sqrt(hd as u32 as f32);
    for (k, h) in heads.enumerate() {
        let q_h = &q[h * hd..(h + 1) * hd];
        let kv_off = (h / kv_mul) * hd;
        let att_h = &mut att[k * shape.seq_len..k * shape.seq_len + shape.pos + 1];
        let y_h = &mut y[k * hd..(k + 1) * hd];
        let keys = &key_cache[kv_off..];
        let values = &value_cache[kv_off..];
        dispatch!(
            backend,
            attention_head(y_h, q_h, att_h, keys, values, shape.kv_dim0, root)
        );
    }
}
