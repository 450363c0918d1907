//! AVX2 bodies of [`crate::ops`], mirroring dllama's `__AVX2__` paths as g++ 12 compiles them
//! with `-O3 -mavx2 -mfma -mf16c` or `-march=native` (identical code for these ops): 8-lane
//! loops that restart at the start of each thread's part, scalar tails over the last
//! `len % 8` values, and FMA wherever g++ contracts a product into an addition (checked with
//! `objdump -d` of the dllama object and against its outputs).
//!
//! Every function has `#[target_feature(enable = "avx2,fma,f16c")]`.
//!
//! # Safety
//!
//! Callers must hold a [`crate::backend::Backend`] proving AVX2, FMA and F16C.
#![allow(clippy::excessive_precision, clippy::approx_constant)] // dllama's constants, digit for digit.

use core::arch::x86_64::*;

use crate::block::{BLOCK_SIZE, Q80Block};
use crate::ops::math;

/// `a * b + c` rounded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)))
}

/// `a * b + c` rounded once, in double precision.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma_f64(a: f64, b: f64, c: f64) -> f64 {
    _mm_cvtsd_f64(_mm_fmadd_sd(_mm_set_sd(a), _mm_set_sd(b), _mm_set_sd(c)))
}

/// glibc's `expf` as x86-64 glibc runs it on an FMA CPU (`__expf_fma`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expf(x: f32) -> f32 {
    // The closure inherits this function's target features, so `fma_f64` is callable.
    math::expf_x86_fma(x, |a, b, c| fma_f64(a, b, c))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(x: &[f32]) -> __m256 {
    assert!(x.len() >= 8);
    // SAFETY: the slice holds at least 8 floats; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store8(x: &mut [f32], v: __m256) {
    assert!(x.len() >= 8);
    // SAFETY: the slice holds at least 8 floats; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
}

/// The last values of a row (fewer than 8), zero-padded to one vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_padded(x: &[f32]) -> __m256 {
    let mut buf = [0.0f32; 8];
    buf[..x.len()].copy_from_slice(x);
    load8(&buf)
}

/// dllama `horizontalSum_avx2`: (hi + lo) in 4 lanes, then lanes (0+2, 1+3), then their sum.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(x: __m256) -> f32 {
    let mut res = _mm256_extractf128_ps::<1>(x);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// dllama `horizontalMax_avx2`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_max(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let max128 = _mm_max_ps(lo, hi);
    let max64 = _mm_max_ps(max128, _mm_movehl_ps(max128, max128));
    let max32 = _mm_max_ss(max64, _mm_shuffle_ps::<0b01_01_01_01>(max64, max64));
    _mm_cvtss_f32(max32)
}

/// dllama `expf_avx2` without its final product: returns `(p, 2^n)` with `exp(x) ≈ p · 2^n`, so
/// that callers can fuse the product into an addition where g++ does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp_parts(x: __m256) -> (__m256, __m256) {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-88.0));
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
    let log2e = _mm256_set1_ps(1.4426950408889634);
    let c0 = _mm256_set1_ps(1.0);
    let c1 = _mm256_set1_ps(0.6931471805599453);
    let c2 = _mm256_set1_ps(0.2402265069591007);
    let c3 = _mm256_set1_ps(0.05550410866482158);
    let c4 = _mm256_set1_ps(0.009618129107628477);
    let y = _mm256_mul_ps(x, log2e);
    let n = _mm256_cvtps_epi32(y);
    let f = _mm256_sub_ps(y, _mm256_cvtepi32_ps(n));
    let mut p = c4;
    p = _mm256_fmadd_ps(p, f, c3);
    p = _mm256_fmadd_ps(p, f, c2);
    p = _mm256_fmadd_ps(p, f, c1);
    p = _mm256_fmadd_ps(p, f, c0);
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)));
    (p, _mm256_castsi256_ps(e))
}

/// See [`crate::ops::merge_add_q80`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn add_q80(output: &mut [f32], input: &[Q80Block]) {
    for (out, block) in output.chunks_exact_mut(BLOCK_SIZE).zip(input) {
        let d = _mm256_set1_ps(block.scale().to_f32());
        for (o, q) in out.chunks_exact_mut(8).zip(block.qs.chunks_exact(8)) {
            let q8 = i64::from_le_bytes(core::array::from_fn(|i| q[i] as u8));
            let qf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(q8)));
            // g++ fuses `_mm256_mul_ps(qf, d)` into the following `_mm256_add_ps`.
            store8(o, _mm256_fmadd_ps(qf, d, load8(o)));
        }
    }
}

/// See [`crate::ops::silu`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn silu(x: &mut [f32]) {
    let ones = _mm256_set1_ps(1.0);
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = load8(c);
        let (p, two_n) = exp_parts(_mm256_sub_ps(_mm256_setzero_ps(), v));
        // `1 + p · 2^n`: g++ fuses expf_avx2's last product into the addition.
        let den = _mm256_fmadd_ps(p, two_n, ones);
        store8(c, _mm256_div_ps(v, den));
    }
    for v in chunks.into_remainder() {
        *v = *v / (1.0 + expf(-*v));
    }
}

/// See [`crate::ops::gelu`].
#[cfg(feature = "std")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn gelu(x: &mut [f32]) {
    use crate::ops::activation::{GELU_COEF_A, SQRT_2_OVER_PI};
    for v in x {
        let x = *v;
        let inner = (SQRT_2_OVER_PI * x) * fma_f32(GELU_COEF_A * x, x, 1.0);
        *v = (0.5 * x) * (1.0 + math::tanhf(inner));
    }
}

/// See [`crate::ops::inv_rms`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn inv_rms(x: &[f32], epsilon: f32) -> f32 {
    let mut u = _mm256_setzero_ps();
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let a = load8(c);
        u = _mm256_fmadd_ps(a, a, u);
    }
    if !rest.is_empty() {
        let a = load_padded(rest);
        u = _mm256_fmadd_ps(a, a, u);
    }
    let mut sum = horizontal_sum(u);
    sum /= x.len() as u32 as f32;
    sum += epsilon;
    1.0 / math::sqrt(sum)
}

/// See [`crate::ops::rms_norm_f32`]: `(x · inv_rms) · w`, bitwise the scalar body.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rms_norm_f32(output: &mut [f32], x: &[f32], weight: &[f32], inv_rms: f32) {
    let inv = _mm256_set1_ps(inv_rms);
    let mut oc = output.chunks_exact_mut(8);
    let mut xc = x.chunks_exact(8);
    let mut wc = weight.chunks_exact(8);
    for ((o, x), w) in (&mut oc).zip(&mut xc).zip(&mut wc) {
        store8(o, _mm256_mul_ps(_mm256_mul_ps(load8(x), inv), load8(w)));
    }
    crate::scalar::ops::rms_norm_f32(oc.into_remainder(), xc.remainder(), wc.remainder(), inv_rms);
}

/// See [`crate::ops::rope_llama`]: g++ vectorizes the pair with `vaddsubps`, both products
/// rounded, which is exactly the scalar body.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rope_llama(x: &mut [f32], cache: &[f32]) {
    crate::scalar::ops::rope_llama(x, cache)
}

/// See [`crate::ops::rope_falcon`]: `q0·cos − (q1·sin)` and `q0·sin + (q1·cos)`, one FMA each.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn rope_falcon(x: &mut [f32], cache: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    let (cos, sin) = cache.split_at(half);
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        let mut j = 0;
        while j + 8 <= half {
            let (q0, q1) = (load8(&lo[j..]), load8(&hi[j..]));
            let (fcr, fci) = (load8(&cos[j..]), load8(&sin[j..]));
            store8(
                &mut lo[j..],
                _mm256_fmsub_ps(q0, fcr, _mm256_mul_ps(q1, fci)),
            );
            store8(
                &mut hi[j..],
                _mm256_fmadd_ps(q0, fci, _mm256_mul_ps(q1, fcr)),
            );
            j += 8;
        }
        for j in j..half {
            let (q0, q1) = (lo[j], hi[j]);
            lo[j] = fma_f32(q0, cos[j], -(q1 * sin[j]));
            hi[j] = fma_f32(q0, sin[j], q1 * cos[j]);
        }
    }
}

/// See [`crate::ops::softmax`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn softmax(x: &mut [f32]) {
    let size = x.len();
    if size == 0 {
        return;
    }
    let avx_end = size - size % 8;
    let mut max;
    let mut i;
    if avx_end >= 8 {
        let mut max_vec = load8(x);
        i = 8;
        while i < avx_end {
            max_vec = _mm256_max_ps(max_vec, load8(&x[i..]));
            i += 8;
        }
        max = horizontal_max(max_vec);
    } else {
        max = x[0];
        i = 1;
    }
    for &v in &x[i..] {
        if v > max {
            max = v;
        }
    }
    let max_vec = _mm256_set1_ps(max);
    let mut sum_vec = _mm256_setzero_ps();
    for c in x[..avx_end].chunks_exact_mut(8) {
        let (p, two_n) = exp_parts(_mm256_sub_ps(load8(c), max_vec));
        let e = _mm256_mul_ps(p, two_n);
        store8(c, e);
        sum_vec = _mm256_add_ps(sum_vec, e);
    }
    let mut sum = horizontal_sum(sum_vec);
    for v in &mut x[avx_end..] {
        *v = expf(*v - max);
        sum += *v;
    }
    if sum == 0.0 {
        sum = 0.000001;
    }
    let inv_sum = 1.0 / sum;
    let inv_vec = _mm256_set1_ps(inv_sum);
    for c in x[..avx_end].chunks_exact_mut(8) {
        store8(c, _mm256_mul_ps(load8(c), inv_vec));
    }
    for v in &mut x[avx_end..] {
        *v *= inv_sum;
    }
}

/// dllama `dotProduct_F32` (AVX2), zero-padding a partial last vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut u = _mm256_setzero_ps();
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        u = _mm256_fmadd_ps(load8(x), load8(y), u);
    }
    if !ra.is_empty() {
        u = _mm256_fmadd_ps(load_padded(ra), load_padded(rb), u);
    }
    horizontal_sum(u)
}

/// Four dot products `q · k_j` at once, each accumulated exactly as [`dot`] does (the four
/// dependency chains interleave; the order inside each is dllama's). `hd % 8 == 0`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let mut u = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 8 <= q.len() {
        let a = load8(&q[i..]);
        for j in 0..4 {
            u[j] = _mm256_fmadd_ps(a, load8(&k[j][i..]), u[j]);
        }
        i += 8;
    }
    [
        horizontal_sum(u[0]),
        horizontal_sum(u[1]),
        horizontal_sum(u[2]),
        horizontal_sum(u[3]),
    ]
}

/// `y[i] = Σ_t a_t · v_t[i]` accumulated in `t` order from zero, one FMA per term (dllama's
/// `hY[i] += posA * posV[i]` as g++ contracts it). Each value sees the same operations in the
/// same order as dllama's loop; keeping a block of `y` in registers across `t` only avoids
/// the stores and reloads between positions.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weighted_sum(y: &mut [f32], att: &[f32], values: &[f32], kv_stride: usize) {
    let hd = y.len();
    y.fill(0.0);
    let mut i = 0;
    while i + 64 <= hd {
        let mut acc = [_mm256_setzero_ps(); 8];
        for (t, &a) in att.iter().enumerate() {
            let v = &values[t * kv_stride + i..t * kv_stride + i + 64];
            let av = _mm256_set1_ps(a);
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(av, load8(&v[8 * j..]), *acc);
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            store8(&mut y[i + 8 * j..], *acc);
        }
        i += 64;
    }
    while i + 8 <= hd {
        let mut acc = _mm256_setzero_ps();
        for (t, &a) in att.iter().enumerate() {
            let v = &values[t * kv_stride + i..t * kv_stride + i + 8];
            acc = _mm256_fmadd_ps(_mm256_set1_ps(a), load8(v), acc);
        }
        store8(&mut y[i..], acc);
        i += 8;
    }
    for (k, o) in y[i..].iter_mut().enumerate() {
        for (t, &a) in att.iter().enumerate() {
            *o = fma_f32(a, values[t * kv_stride + i + k], *o);
        }
    }
}

/// See [`crate::ops::multihead_attention`]: one head.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attention_head(
    y: &mut [f32],
    q: &[f32],
    att: &mut [f32],
    keys: &[f32],
    values: &[f32],
    kv_stride: usize,
    root: f32,
) {
    let hd = q.len();
    let key = |t: usize| &keys[t * kv_stride..t * kv_stride + hd];
    let mut t = 0;
    if hd.is_multiple_of(8) {
        while t + 4 <= att.len() {
            let d = dot4(q, [key(t), key(t + 1), key(t + 2), key(t + 3)]);
            for j in 0..4 {
                att[t + j] = d[j] / root;
            }
            t += 4;
        }
    }
    for (t, a) in att.iter_mut().enumerate().skip(t) {
        *a = dot(q, key(t)) / root;
    }
    // SAFETY: same target features as this function.
    unsafe { softmax(att) };
    weighted_sum(y, att, values, kv_stride);
}
