//! ROPE: rotary position embedding (llama, llama 3.1 scaled frequencies, falcon) and the
//! cos/sin cache dllama precomputes at init.
use crate::backend::Backend;

/// dllama's `NnRopeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RopeKind {
    /// Adjacent pairs `(x[2i], x[2i+1])` rotate (`ROPE_LLAMA` = 0).
    Llama = 0,
    /// The two halves of each head rotate (`ROPE_FALCON` = 1; used by Qwen3).
    Falcon = 1,
    /// As `Llama`, with llama 3.1 frequency scaling in the cache (`ROPE_LLAMA3_1` = 2).
    Llama31 = 2,
}

impl RopeKind {
    /// Decodes dllama's integer code.
    pub const fn from_code(code: u32) -> Option<RopeKind> {
        match code {
            0 => Some(RopeKind::Llama),
            1 => Some(RopeKind::Falcon),
            2 => Some(RopeKind::Llama31),
            _ => None,
        }
    }

    /// The integer code dllama uses (in model files and `NnRopeOpConfig`).
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The name dllama prints.
    pub const fn name(self) -> &'static str {
        match self {
            RopeKind::Llama => "Llama",
            RopeKind::Falcon => "Falcon",
            RopeKind::Llama31 => "Llama3.1",
        }
    }
}

/// Why a [`RopeSlice`] cannot be built or a cache cannot be filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeError {
    /// A dimension is zero, odd where it must be even, or not divisible by the node count.
    BadShape(&'static str),
    /// A size overflowed `usize`.
    Overflow,
    /// The cache buffer does not have [`RopeSlice::cache_len`] values.
    CacheLength { expected: usize, actual: usize },
}

impl core::fmt::Display for RopeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            RopeError::BadShape(what) => write!(f, "bad rope shape: {what}"),
            RopeError::Overflow => f.write_str("rope size overflows"),
            RopeError::CacheLength { expected, actual } => {
                write!(f, "rope cache has {actual} values, expected {expected}")
            }
        }
    }
}

/// One node's part of the rotary embedding (dllama's `NnRopeSlice`, same fields and order; the
/// wire codec of `airllama-net` sends it as part of ROPE's op config, followed there by the
/// cache's `NnSize3D`).
///
/// With llama rope, node `k` rotates query dims `qDimStart..qDimEnd` and key dims
/// `kvDimStart..kvDimStart + kvDim0`; its cache row covers `kvDimStart..qDimEnd` (`sliceDim`
/// values, pairs of cos/sin) and the query part starts `qShift` values into the row. For
/// [`RopeKind::Falcon`] dllama never sets `q_dim_start`, `q_dim_end`, `q_shift`,
/// `kv_dim_start` and `slice_dim` (stack garbage on some builds): a decoded slice keeps them as
/// received, [`RopeSlice::new`] sets them to 0, and only the llama kinds read them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSlice {
    /// Query dimensions per node.
    pub q_dim0: u32,
    /// First query dimension of this node (llama kinds only).
    pub q_dim_start: u32,
    /// One past the last query dimension of this node (llama kinds only).
    pub q_dim_end: u32,
    /// `q_dim_start - kv_dim_start` (llama kinds only).
    pub q_shift: u32,
    /// Total key/value dimensions.
    pub kv_dim: u32,
    /// Key/value dimensions per node.
    pub kv_dim0: u32,
    /// First key/value dimension of this node (llama kinds only).
    pub kv_dim_start: u32,
    /// Columns of the rope cache (llama kinds only).
    pub slice_dim: u32,
    /// Positions in the cache.
    pub seq_len: u32,
    /// Dimensions per head.
    pub head_dim: u32,
    /// Key/value heads.
    pub n_kv_heads: u32,
    /// RoPE base frequency.
    pub rope_theta: f32,
}

/// Llama 3.1 frequency scaling (`ropeScaling*` of dllama's `NnRopeOpConfig`). A `factor` of 1
/// turns scaling off, as in dllama.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub orig_max_seq_len: u32,
}

impl RopeScaling {
    /// No scaling (factor 1).
    pub const NONE: RopeScaling = RopeScaling {
        factor: 1.0,
        low_freq_factor: 0.0,
        high_freq_factor: 0.0,
        orig_max_seq_len: 0,
    };
}

impl RopeSlice {
    /// Node `node_index`'s slice, as dllama's `sliceRope` computes it. For
    /// [`RopeKind::Falcon`] dllama leaves the llama-only fields (`q_dim_start`, `q_dim_end`,
    /// `q_shift`, `kv_dim_start`, `slice_dim`) uninitialised; here they are 0.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: RopeKind,
        q_dim: u32,
        kv_dim: u32,
        n_kv_heads: u32,
        n_nodes: u32,
        seq_len: u32,
        head_dim: u32,
        theta: f32,
        node_index: u32,
    ) -> Result<RopeSlice, RopeError> {
        if n_nodes == 0 || node_index >= n_nodes || head_dim == 0 {
            return Err(RopeError::BadShape(
                "zero nodes, head dim or node index out of range",
            ));
        }
        if q_dim < kv_dim || !q_dim.is_multiple_of(n_nodes) || !kv_dim.is_multiple_of(n_nodes) {
            return Err(RopeError::BadShape(
                "q/kv dims not divisible by the node count",
            ));
        }
        let q_dim0 = q_dim / n_nodes;
        let kv_dim0 = kv_dim / n_nodes;
        if !q_dim0.is_multiple_of(2) || !kv_dim0.is_multiple_of(2) {
            return Err(RopeError::BadShape("odd per-node dims"));
        }
        let mut s = RopeSlice {
            q_dim0,
            q_dim_start: 0,
            q_dim_end: 0,
            q_shift: 0,
            kv_dim,
            kv_dim0,
            kv_dim_start: 0,
            slice_dim: 0,
            seq_len,
            head_dim,
            n_kv_heads,
            rope_theta: theta,
        };
        if kind != RopeKind::Falcon {
            let over = RopeError::Overflow;
            s.kv_dim_start = kv_dim0.checked_mul(node_index).ok_or(over)?;
            s.q_dim_start = q_dim0.checked_mul(node_index).ok_or(over)?;
            s.q_dim_end = s.q_dim_start.checked_add(q_dim0).ok_or(over)?;
            s.q_shift = s.q_dim_start - s.kv_dim_start;
            s.slice_dim = s.q_dim_end - s.kv_dim_start;
        }
        Ok(s)
    }

    /// Values in the cos/sin cache: `seqLen · sliceDim` (llama) or `seqLen · headDim` (falcon).
    pub fn cache_len(&self, kind: RopeKind) -> Option<usize> {
        let row = match kind {
            RopeKind::Falcon => self.head_dim,
            RopeKind::Llama | RopeKind::Llama31 => self.slice_dim,
        };
        (self.seq_len as usize).checked_mul(row as usize)
    }
}

/// Fills the cos/sin cache (dllama `fullfillRopeCache`, run once at init).
///
/// Llama: for each position `p` and each even `i` in `kvDimStart..qDimEnd`, with
/// `h = i % headDim`, `freq = 1 / powf(theta, h / headDim)` (scaled by llama 3.1 rules for
/// [`RopeKind::Llama31`] when `scaling.factor != 1`), the pair
/// `(cosf(p·freq), sinf(p·freq))` goes to `cache[p·sliceDim + i - kvDimStart ..]`. Falcon: for
/// `j < headDim/2`, `freq = 1 / powf(theta, 2·(j / headDim))`, `cos` at `cache[p·headDim + j]`
/// and `sin` at `cache[p·headDim + j + headDim/2]`.
///
/// `powf`, `cosf` and `sinf` are glibc's (through `std`, see [`crate::ops::math`]). The llama
/// 3.1 blend `(1 - s)·freq / factor + s·freq` is one FMA in every dllama build with FMA (x86
/// FMA builds, aarch64) and two roundings for [`crate::backend::Isa::Scalar`]; `2π / freq` is
/// computed in double precision as in dllama (`M_PI` is a double).
#[cfg(feature = "std")]
pub fn fill_rope_cache(
    backend: Backend,
    kind: RopeKind,
    slice: &RopeSlice,
    scaling: &RopeScaling,
    cache: &mut [f32],
) -> Result<(), RopeError> {
    use crate::ops::math::{cosf, powf, sinf};
    let expected = slice.cache_len(kind).ok_or(RopeError::Overflow)?;
    if cache.len() != expected {
        return Err(RopeError::CacheLength {
            expected,
            actual: cache.len(),
        });
    }
    if slice.head_dim == 0 || !slice.head_dim.is_multiple_of(2) {
        return Err(RopeError::BadShape("head dim must be even and non-zero"));
    }
    let fused = backend.isa() != crate::backend::Isa::Scalar;
    match kind {
        RopeKind::Llama | RopeKind::Llama31 => {
            if slice.q_dim_end < slice.kv_dim_start
                || slice.slice_dim != slice.q_dim_end - slice.kv_dim_start
                || !slice.slice_dim.is_multiple_of(2)
            {
                return Err(RopeError::BadShape("inconsistent llama rope slice"));
            }
            let apply_scaling = scaling.factor != 1.0;
            let row_len = slice.slice_dim as usize;
            if row_len == 0 {
                return Ok(());
            }
            // dllama recomputes each frequency for every position; `powf` is a pure function,
            // so computing it once per pair gives the same bits in a fraction of the time.
            let freqs: std::vec::Vec<f32> = (0..row_len / 2)
                .map(|k| {
                    let i = slice.kv_dim_start + 2 * k as u32;
                    let h = i % slice.head_dim;
                    let freq = 1.0 / powf(slice.rope_theta, h as f32 / slice.head_dim as f32);
                    if apply_scaling {
                        scale_frequency_llama3(freq, scaling, fused)
                    } else {
                        freq
                    }
                })
                .collect();
            for (pos, row) in cache.chunks_exact_mut(row_len).enumerate() {
                for (pair, &freq) in row.chunks_exact_mut(2).zip(&freqs) {
                    let val = pos as u32 as f32 * freq;
                    pair[0] = cosf(val);
                    pair[1] = sinf(val);
                }
            }
        }
        RopeKind::Falcon => {
            let hd = slice.head_dim as usize;
            let half = hd / 2;
            let hs = slice.head_dim as f32;
            let freqs: std::vec::Vec<f32> = (0..half)
                .map(|j| 1.0 / powf(slice.rope_theta, 2.0 * (j as u32 as f32 / hs)))
                .collect();
            for (pos, row) in cache.chunks_exact_mut(hd).enumerate() {
                for (j, &freq) in freqs.iter().enumerate() {
                    let val = pos as u32 as f32 * freq;
                    row[j] = cosf(val);
                    row[j + half] = sinf(val);
                }
            }
        }
    }
    Ok(())
}

/// dllama's `scaleFrequencyLlama3`.
#[cfg(feature = "std")]
fn scale_frequency_llama3(freq: f32, scaling: &RopeScaling, fused: bool) -> f32 {
    let wave_len = (2.0f64 * core::f64::consts::PI / f64::from(freq)) as f32;
    let orig = scaling.orig_max_seq_len as f32;
    let high_freq_wavelen = orig / scaling.high_freq_factor;
    if wave_len < high_freq_wavelen {
        return freq;
    }
    let low_freq_wavelen = orig / scaling.low_freq_factor;
    if wave_len > low_freq_wavelen {
        return freq / scaling.factor;
    }
    let smooth = (orig / wave_len - scaling.low_freq_factor)
        / (scaling.high_freq_factor - scaling.low_freq_factor);
    let scaled = (1.0 - smooth) * freq / scaling.factor;
    if fused {
        smooth.mul_add(freq, scaled)
    } else {
        scaled + smooth * freq
    }
}

/// Llama rope on adjacent pairs: `(v0, v1) → (v0·cos − v1·sin, v0·sin + v1·cos)` (dllama
/// `ropeLlama_F32`, used for both `ROPE_LLAMA` and `ROPE_LLAMA3_1`).
///
/// AVX2 builds: g++ vectorizes the pair with `vaddsubps`, both products rounded (same as
/// scalar). NEON builds: fused, `v0·cos − (v1·sin)` and `v0·sin + (v1·cos)` each one FMA.
/// Each pair is independent, so the split does not change the bits.
///
/// Executor (`ropeForward_F32_F32`): for each batch item with position `pos`:
/// `dim0 = isQ ? qDim0 : kvDim0`, `shift = isQ ? qShift : 0`; split the pair range
/// `0..dim0 / 2` with `split_range` into `s..e` and pass `x_row[2s..2e]` and
/// `cache[pos · sliceDim + shift ..][2s..2e]`.
///
/// # Panics
/// If the lengths differ or are odd.
pub fn rope_llama(backend: Backend, x: &mut [f32], cache: &[f32]) {
    assert_eq!(x.len(), cache.len(), "rope_llama: length mismatch");
    assert_eq!(x.len() % 2, 0, "rope_llama: odd length");
    dispatch!(backend, rope_llama(x, cache))
}

/// Falcon rope on whole heads: for `j < headDim/2`, `(x[j], x[j + headDim/2])` rotate by
/// `(cache[j], cache[j + headDim/2])` = (cos, sin) (dllama `ropeFalcon_F32`).
///
/// Scalar C++ on every ISA; g++ fuses `q0·cos − (q1·sin)` and `q0·sin + (q1·cos)` into one FMA
/// each on x86 FMA builds and aarch64, which the SIMD backends reproduce. Heads are
/// independent, so the split does not change the bits.
///
/// Executor (`ropeForward_F32_F32`): for each batch item with position `pos`: split the head
/// range `0..dim0 / headDim` (`dim0 = isQ ? qDim0 : kvDim0`) into `h0..h1` and pass
/// `x_row[h0 · headDim .. h1 · headDim]` and `cache[pos · headDim ..][..headDim]`.
///
/// # Panics
/// If `head_dim` is zero or odd, `x.len()` is not a multiple of it or
/// `cache.len() != head_dim`.
pub fn rope_falcon(backend: Backend, x: &mut [f32], cache: &[f32], head_dim: usize) {
    assert!(
        head_dim != 0 && head_dim.is_multiple_of(2),
        "rope_falcon: head dim must be even"
    );
    assert_eq!(x.len() % head_dim, 0, "rope_falcon: partial head");
    assert_eq!(cache.len(), head_dim, "rope_falcon: cache row length");
    dispatch!(backend, rope_falcon(x, cache, head_dim))
}
