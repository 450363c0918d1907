//! NEON bodies of [`crate::ops`], mirroring dllama's `__ARM_NEON` paths as aarch64 g++ 12
//! compiles them with `-O3 -march=armv8-a` and `-march=armv8.2-a+dotprod+fp16` (identical code
//! for these ops): 4-lane loops that restart at the start of each thread's part, scalar tails,
//! `vmla*` intrinsics kept unfused (`fmul` + `fadd`), while separate `vmulq` + `vaddq`
//! intrinsics and scalar `a * b + c` are fused into `fmla`/`fmadd` (checked with `objdump -d` of
//! the dllama object and against its outputs under qemu).
//!
//! Every function has `#[target_feature(enable = "neon")]`.
//!
//! # Safety
//!
//! Callers must hold a [`crate::backend::Backend`] proving NEON.
#![allow(clippy::excessive_precision, clippy::approx_constant)] // dllama's constants, digit for digit.

use core::arch::aarch64::*;

use crate::block::{BLOCK_SIZE, Q80Block};
use crate::ops::math;

/// `a * b + c` rounded once.
#[inline]
#[target_feature(enable = "neon")]
fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    vget_lane_f32::<0>(vfma_f32(vdup_n_f32(c), vdup_n_f32(a), vdup_n_f32(b)))
}

/// `a * b + c` rounded once, in double precision.
#[inline]
#[target_feature(enable = "neon")]
fn fma_f64(a: f64, b: f64, c: f64) -> f64 {
    vget_lane_f64::<0>(vfma_f64(vdup_n_f64(c), vdup_n_f64(a), vdup_n_f64(b)))
}

/// `frinta` and `fcvtas`: round to nearest, ties away from zero.
#[inline]
#[target_feature(enable = "neon")]
fn round_away(z: f64) -> (f64, i64) {
    (
        vget_lane_f64::<0>(vrnda_f64(vdup_n_f64(z))),
        vcvtad_s64_f64(z),
    )
}

/// glibc's `expf` as aarch64 glibc computes it.
#[inline]
#[target_feature(enable = "neon")]
fn expf(x: f32) -> f32 {
    math::expf_aarch64(x, |z| round_away(z), |a, b, c| fma_f64(a, b, c))
}

#[inline]
#[target_feature(enable = "neon")]
fn load4(x: &[f32]) -> float32x4_t {
    assert!(x.len() >= 4);
    // SAFETY: the slice holds at least 4 floats; ld1 has no alignment requirement.
    unsafe { vld1q_f32(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn store4(x: &mut [f32], v: float32x4_t) {
    assert!(x.len() >= 4);
    // SAFETY: the slice holds at least 4 floats; st1 has no alignment requirement.
    unsafe { vst1q_f32(x.as_mut_ptr(), v) }
}

/// The last values of a row, zero-padded to one vector.
#[inline]
#[target_feature(enable = "neon")]
fn load_padded(x: &[f32]) -> float32x4_t {
    let mut buf = [0.0f32; 4];
    buf[..x.len()].copy_from_slice(x);
    load4(&buf)
}

/// dllama `expf_neon` without its final product, as g++ compiles it: returns `(p, 2^k)` with
/// `exp(x) ≈ p · 2^k`. The rounding offset `x·(1/ln2) + 0.5` and the polynomial terms are
/// fused (`fmla`), the reduction `x − k·ln2` (`vmlsq_f32`) is not.
#[inline]
#[target_feature(enable = "neon")]
fn exp_parts(x: float32x4_t) -> (float32x4_t, float32x4_t) {
    let ln2 = vdupq_n_f32(0.69314718056);
    let inv_ln2 = vdupq_n_f32(1.44269504089);
    let c1 = vdupq_n_f32(1.0);
    let c2 = vdupq_n_f32(0.5);
    let c3 = vdupq_n_f32(0.1666666667);
    let c4 = vdupq_n_f32(0.04166666667);
    let c5 = vdupq_n_f32(0.008333333333);
    let x = vminq_f32(x, vdupq_n_f32(88.0));
    let x = vmaxq_f32(x, vdupq_n_f32(-88.0));
    let kf = vfmaq_f32(vdupq_n_f32(0.5), x, inv_ln2);
    let k = vcvtq_s32_f32(kf);
    let kf = vcvtq_f32_s32(k);
    let f = vsubq_f32(x, vmulq_f32(kf, ln2));
    let f2 = vmulq_f32(f, f);
    let f3 = vmulq_f32(f2, f);
    let f4 = vmulq_f32(f3, f);
    let f5 = vmulq_f32(f4, f);
    let mut p = vaddq_f32(c1, f);
    p = vfmaq_f32(p, c2, f2);
    p = vfmaq_f32(p, c3, f3);
    p = vfmaq_f32(p, c4, f4);
    p = vfmaq_f32(p, c5, f5);
    let pow2k = vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127)));
    (p, vreinterpretq_f32_s32(pow2k))
}

/// See [`crate::ops::merge_add_q80`]: `vmulq_n_f32` + `vaddq_f32`, fused by g++ into `fmla`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn add_q80(output: &mut [f32], input: &[Q80Block]) {
    for (out, block) in output.chunks_exact_mut(BLOCK_SIZE).zip(input) {
        let d = block.scale().to_f32();
        for (o, q) in out.chunks_exact_mut(4).zip(block.qs.chunks_exact(4)) {
            let qf: [f32; 4] = core::array::from_fn(|i| f32::from(q[i]));
            let qv = load4(&qf);
            store4(o, vfmaq_n_f32(load4(o), qv, d));
        }
    }
}

/// See [`crate::ops::silu`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn silu(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = load4(c);
        let (p, two_k) = exp_parts(vnegq_f32(v));
        // `vaddq_f32(p · 2^k, 1)`: fused by g++.
        let den = vfmaq_f32(vdupq_n_f32(1.0), p, two_k);
        let recip = vrecpeq_f32(den);
        // `recip · (2 − den · recip)`: the inner product and subtraction fused by g++.
        let recip = vmulq_f32(recip, vfmsq_f32(vdupq_n_f32(2.0), den, recip));
        store4(c, vmulq_f32(v, recip));
    }
    for v in chunks.into_remainder() {
        *v = *v / (1.0 + expf(-*v));
    }
}

/// See [`crate::ops::gelu`].
#[cfg(feature = "std")]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn gelu(x: &mut [f32]) {
    use crate::ops::activation::{GELU_COEF_A, SQRT_2_OVER_PI};
    for v in x {
        let x = *v;
        let inner = (SQRT_2_OVER_PI * x) * fma_f32(GELU_COEF_A * x, x, 1.0);
        *v = (0.5 * x) * (1.0 + math::tanhf(inner));
    }
}

/// See [`crate::ops::inv_rms`]: `vmlaq_f32` stays `fmul` + `fadd`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn inv_rms(x: &[f32], epsilon: f32) -> f32 {
    let mut fs = vdupq_n_f32(0.0);
    let chunks = x.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let a = load4(c);
        fs = vaddq_f32(fs, vmulq_f32(a, a));
    }
    if !rest.is_empty() {
        let a = load_padded(rest);
        fs = vaddq_f32(fs, vmulq_f32(a, a));
    }
    let mut sum = vaddvq_f32(fs);
    sum /= x.len() as u32 as f32;
    sum += epsilon;
    1.0 / math::sqrt(sum)
}

/// See [`crate::ops::rms_norm_f32`]: `(x · w) · inv_rms` on 4 lanes, `w · (inv_rms · x)` on
/// the tail.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rms_norm_f32(output: &mut [f32], x: &[f32], weight: &[f32], inv_rms: f32) {
    let inv = vdupq_n_f32(inv_rms);
    let mut oc = output.chunks_exact_mut(4);
    let mut xc = x.chunks_exact(4);
    let mut wc = weight.chunks_exact(4);
    for ((o, x), w) in (&mut oc).zip(&mut xc).zip(&mut wc) {
        store4(o, vmulq_f32(vmulq_f32(load4(x), load4(w)), inv));
    }
    crate::scalar::ops::rms_norm_f32(oc.into_remainder(), xc.remainder(), wc.remainder(), inv_rms);
}

/// See [`crate::ops::rope_llama`]: `v0·cos − (v1·sin)` and `v0·sin + (v1·cos)`, one FMA each.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rope_llama(x: &mut [f32], cache: &[f32]) {
    let mut xc = x.chunks_exact_mut(8);
    let mut cc = cache.chunks_exact(8);
    for (xs, cs) in (&mut xc).zip(&mut cc) {
        // SAFETY: both chunks hold 8 floats (4 pairs) for the de-interleaving loads and store.
        unsafe {
            let v = vld2q_f32(xs.as_ptr());
            let c = vld2q_f32(cs.as_ptr());
            let (v0, v1, fcr, fci) = (v.0, v.1, c.0, c.1);
            let x0 = vfmaq_f32(vnegq_f32(vmulq_f32(v1, fci)), v0, fcr);
            let x1 = vfmaq_f32(vmulq_f32(v1, fcr), v0, fci);
            vst2q_f32(xs.as_mut_ptr(), float32x4x2_t(x0, x1));
        }
    }
    for (pair, c) in xc
        .into_remainder()
        .chunks_exact_mut(2)
        .zip(cc.remainder().chunks_exact(2))
    {
        let (v0, v1) = (pair[0], pair[1]);
        pair[0] = fma_f32(v0, c[0], -(v1 * c[1]));
        pair[1] = fma_f32(v0, c[1], v1 * c[0]);
    }
}

/// See [`crate::ops::rope_falcon`]: `q0·cos − (q1·sin)` and `q0·sin + (q1·cos)`, one FMA each.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rope_falcon(x: &mut [f32], cache: &[f32], head_dim: usize) {
    let half = head_dim / 2;
    let (cos, sin) = cache.split_at(half);
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half);
        let mut j = 0;
        while j + 4 <= half {
            let (q0, q1) = (load4(&lo[j..]), load4(&hi[j..]));
            let (fcr, fci) = (load4(&cos[j..]), load4(&sin[j..]));
            store4(
                &mut lo[j..],
                vfmaq_f32(vnegq_f32(vmulq_f32(q1, fci)), q0, fcr),
            );
            store4(&mut hi[j..], vfmaq_f32(vmulq_f32(q1, fcr), q0, fci));
            j += 4;
        }
        for j in j..half {
            let (q0, q1) = (lo[j], hi[j]);
            lo[j] = fma_f32(q0, cos[j], -(q1 * sin[j]));
            hi[j] = fma_f32(q0, sin[j], q1 * cos[j]);
        }
    }
}

/// See [`crate::ops::softmax`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax(x: &mut [f32]) {
    let size = x.len();
    if size == 0 {
        return;
    }
    let mut j;
    let mut max;
    if size >= 4 {
        let mut fmaxv = load4(x);
        j = size - size % 4;
        let mut i = 4;
        while i < j {
            fmaxv = vmaxq_f32(fmaxv, load4(&x[i..]));
            i += 4;
        }
        max = vmaxvq_f32(fmaxv);
    } else {
        max = x[0];
        j = 1;
    }
    while j < size {
        // `fmaxf`: the number wins over a NaN.
        max = max.max(x[j]);
        j += 1;
    }
    let max_vec = vdupq_n_f32(max);
    let mut sumv = vdupq_n_f32(0.0);
    let vec_end = size - size % 4;
    for c in x[..vec_end].chunks_exact_mut(4) {
        let (p, two_k) = exp_parts(vsubq_f32(load4(c), max_vec));
        let e = vmulq_f32(p, two_k);
        store4(c, e);
        sumv = vaddq_f32(sumv, e);
    }
    let lo = vadd_f32(vget_low_f32(sumv), vget_high_f32(sumv));
    let mut sum = vget_lane_f32::<0>(lo) + vget_lane_f32::<1>(lo);
    for v in &mut x[vec_end..] {
        *v = expf(*v - max);
        sum += *v;
    }
    if sum == 0.0 {
        sum = 0.000001;
    }
    let inv_sum = vdupq_n_f32(1.0 / sum);
    for c in x[..vec_end].chunks_exact_mut(4) {
        store4(c, vmulq_f32(load4(c), inv_sum));
    }
    for v in &mut x[vec_end..] {
        *v /= sum;
    }
}

/// dllama `dotProduct_F32` (NEON, `vmlaq_f32` unfused), zero-padding a partial last vector.
#[inline]
#[target_feature(enable = "neon")]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut fs = vdupq_n_f32(0.0);
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        fs = vaddq_f32(fs, vmulq_f32(load4(x), load4(y)));
    }
    if !ra.is_empty() {
        fs = vaddq_f32(fs, vmulq_f32(load_padded(ra), load_padded(rb)));
    }
    vaddvq_f32(fs)
}

/// Four dot products `q · k_j` at once, each accumulated exactly as [`dot`] does (the four
/// dependency chains interleave; the order inside each is dllama's). `hd % 4 == 0`.
#[inline]
#[target_feature(enable = "neon")]
fn dot4(q: &[f32], k: [&[f32]; 4]) -> [f32; 4] {
    let mut u = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    while i + 4 <= q.len() {
        let a = load4(&q[i..]);
        for j in 0..4 {
            u[j] = vaddq_f32(u[j], vmulq_f32(a, load4(&k[j][i..])));
        }
        i += 4;
    }
    [
        vaddvq_f32(u[0]),
        vaddvq_f32(u[1]),
        vaddvq_f32(u[2]),
        vaddvq_f32(u[3]),
    ]
}

/// `y[i] = Σ_t a_t · v_t[i]` accumulated in `t` order from zero, one FMA per term (dllama's
/// `hY[i] += posA * posV[i]` as g++ contracts it into `fmla`). Each value sees the same
/// operations in the same order as dllama's loop; keeping a block of `y` in registers across
/// `t` only avoids the stores and reloads between positions.
#[inline]
#[target_feature(enable = "neon")]
fn weighted_sum(y: &mut [f32], att: &[f32], values: &[f32], kv_stride: usize) {
    let hd = y.len();
    y.fill(0.0);
    let mut i = 0;
    while i + 64 <= hd {
        let mut acc = [vdupq_n_f32(0.0); 16];
        for (t, &a) in att.iter().enumerate() {
            let v = &values[t * kv_stride + i..t * kv_stride + i + 64];
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = vfmaq_n_f32(*acc, load4(&v[4 * j..]), a);
            }
        }
        for (j, acc) in acc.iter().enumerate() {
            store4(&mut y[i + 4 * j..], *acc);
        }
        i += 64;
    }
    while i + 4 <= hd {
        let mut acc = vdupq_n_f32(0.0);
        for (t, &a) in att.iter().enumerate() {
            let v = &values[t * kv_stride + i..t * kv_stride + i + 4];
            acc = vfmaq_n_f32(acc, load4(v), a);
        }
        store4(&mut y[i..], acc);
        i += 4;
    }
    for (k, o) in y[i..].iter_mut().enumerate() {
        for (t, &a) in att.iter().enumerate() {
            *o = fma_f32(a, values[t * kv_stride + i + k], *o);
        }
    }
}

/// See [`crate::ops::multihead_attention`]: one head.
#[target_feature(enable = "neon")]
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
    if hd.is_multiple_of(4) {
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
    // SAFETY: same target feature as this function.
    unsafe { softmax(att) };
    weighted_sum(y, att, values, kv_stride);
}
