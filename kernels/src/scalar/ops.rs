//! Portable bodies of the ops in [`crate::ops`]: dllama's generic (`#else`) C++ paths with every
//! multiply and add rounded separately, i.e. what dllama computes when built for a CPU without
//! SIMD and without FMA. The SIMD bodies are property-tested against these.
use crate::block::{BLOCK_SIZE, Q80Block};
use crate::ops::math;

/// `y[i] += d * q[i]` per block, unfused (`add_Q80_F32`, generic path).
pub(crate) fn add_q80(output: &mut [f32], input: &[Q80Block]) {
    for (out, block) in output.chunks_exact_mut(BLOCK_SIZE).zip(input) {
        let d = block.scale().to_f32();
        for (o, &q) in out.iter_mut().zip(&block.qs) {
            *o += d * f32::from(q);
        }
    }
}

/// `x / (1 + expf(-x))` (`silu_F32` scalar loop).
pub(crate) fn silu(x: &mut [f32]) {
    for v in x {
        *v = *v / (1.0 + math::expf_unfused(-*v));
    }
}

/// `0.5 x (1 + tanh(√(2/π) x (1 + 0.044715 x²)))`, unfused (`gelu_F32`).
#[cfg(feature = "std")]
pub(crate) fn gelu(x: &mut [f32]) {
    use crate::ops::activation::{GELU_COEF_A, SQRT_2_OVER_PI};
    for v in x {
        let x = *v;
        let inner = SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x);
        *v = 0.5 * x * (1.0 + math::tanhf(inner));
    }
}

/// Sum of squares in order, then `1 / sqrt(sum / n + eps)` (`invRms_F32` generic path).
pub(crate) fn inv_rms(x: &[f32], epsilon: f32) -> f32 {
    let mut sum = 0.0f32;
    for &v in x {
        sum += v * v;
    }
    sum /= x.len() as f32;
    sum += epsilon;
    1.0 / math::sqrt(sum)
}

/// `w · (inv_rms · x)` (`rmsNorm_F32` scalar loop; the AVX2 body's `(x · inv_rms) · w` is the
/// same product).
pub(crate) fn rms_norm_f32(output: &mut [f32], x: &[f32], weight: &[f32], inv_rms: f32) {
    for ((o, &v), &w) in output.iter_mut().zip(x).zip(weight) {
        *o = w * (inv_rms * v);
    }
}

/// `ropeLlama_F32` with both products rounded before the add.
pub(crate) fn rope_llama(x: &mut [f32], cache: &[f32]) {
    for (pair, c) in x.chunks_exact_mut(2).zip(cache.chunks_exact(2)) {
        let (fcr, fci) = (c[0], c[1]);
        let (v0, v1) = (pair[0], pair[1]);
        pair[0] = v0 * fcr - v1 * fci;
        pair[1] = v0 * fci + v1 * fcr;
    }
}

/// `ropeFalcon_F32` over whole heads, unfused.
pub(crate) fn rope_falcon(x: &mut [f32], cache: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        for j in 0..half {
            let (fcr, fci) = (cache[j], cache[j + half]);
            let (q0, q1) = (lo[j], hi[j]);
            lo[j] = q0 * fcr - q1 * fci;
            hi[j] = q0 * fci + q1 * fcr;
        }
    }
}

/// `softmax_F32` generic path: max, `expf` and running sum, then division by the sum.
pub(crate) fn softmax(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let mut max = x[0];
    for &v in &x[1..] {
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = math::expf_unfused(*v - max);
        sum += *v;
    }
    if sum == 0.0 {
        sum = 0.000001f64 as f32;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// In-order dot product, unfused (`dotProduct_F32` generic path).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        sum += x * y;
    }
    sum
}

/// `hY[i] += a * v[i]`, unfused.
pub(crate) fn axpy(y: &mut [f32], a: f32, v: &[f32]) {
    for (o, &x) in y.iter_mut().zip(v) {
        *o += a * x;
    }
}

/// One head of `multiheadAtt_F32`: scores, softmax, weighted sum of values (unfused).
pub(crate) fn attention_head(
    y: &mut [f32],
    q: &[f32],
    att: &mut [f32],
    keys: &[f32],
    values: &[f32],
    kv_stride: usize,
    root: f32,
) {
    let hd = q.len();
    for (t, a) in att.iter_mut().enumerate() {
        *a = dot(q, &keys[t * kv_stride..t * kv_stride + hd]) / root;
    }
    softmax(att);
    y.fill(0.0);
    for (t, &a) in att.iter().enumerate() {
        axpy(y, a, &values[t * kv_stride..t * kv_stride + hd]);
    }
}
