//! AArch64 per-row matmul bodies: dllama's `__ARM_NEON` branches of `matmul_F32_F32_F32` and
//! `matmul_Q80_Q40_F32`, with and without `__ARM_FEATURE_DOTPROD`.
//!
//! GCC 12 keeps dllama's `vmlaq_n_f32` as `fmul` then `fadd` (two roundings), so the Q40
//! kernels multiply and add separately; `vfmaq_f32` in the F32 kernel is a real `fmla`.
//! Integer lanes are grouped exactly as dllama's instructions group them, because each lane
//! is converted to float and accumulated on its own:
//! * without dotprod, `vmull_s8` + `vpaddlq_s16`: lane `i` holds values
//!   `{2i, 2i+1, 8+2i, 9+2i}` of each 16-value half;
//! * with dotprod, `sdot`: lane `i` holds values `{4i..4i+4}` of each half.
use crate::matmul::row_tile;
use core::arch::aarch64::*;

use crate::block::{Q40Block, Q80Block};
use crate::quant::f16_to_f32;

/// Rows per tile of the per-row kernels: independent accumulation chains side by side.
const ROWS: usize = 4;

/// dllama's `vaddvq_f32`: lanes 0+1 and 2+3, then those two (`faddp`, `faddp`).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn hsum4(x: float32x4_t) -> f32 {
    vaddvq_f32(x)
}

/// F32 rows, 4 lanes: `acc = fma(x, w, acc)` per 4 values, then [`hsum4`]. Also the element
/// order of llamafile's `tinyBLAS<4, float32x4_t>`, so batched F32 is this too.
///
/// # Safety
/// The CPU must support NEON. Shapes as checked by [`crate::matmul::matmul_f32`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn matmul_f32_neon(outs: &mut [&mut [f32]], xs: &[f32], w: &[f32], n: usize) {
    let rows = outs.first().map_or(0, |o| o.len());
    let full = n / 4 * 4;
    let mut r0 = 0;
    while r0 < rows {
        let row: [&[f32]; ROWS] = row_tile(w, r0, rows, n);
        for (b, out) in outs.iter_mut().enumerate() {
            let x = &xs[b * n..(b + 1) * n];
            let mut x_tail = [0.0f32; 4];
            x_tail[..n - full].copy_from_slice(&x[full..]);
            let mut acc = [vdupq_n_f32(0.0); ROWS];
            let mut j = 0;
            while j < full {
                // SAFETY: j + 4 <= n: 4 floats from j are inside `x` and every row.
                let xv = unsafe { vld1q_f32(x.as_ptr().add(j)) };
                for (a, r) in acc.iter_mut().zip(row) {
                    // SAFETY: as above.
                    *a = vfmaq_f32(*a, xv, unsafe { vld1q_f32(r.as_ptr().add(j)) });
                }
                j += 4;
            }
            if full < n {
                // Zero padding adds nothing to any lane.
                // SAFETY: `x_tail` holds 4 floats.
                let xv = unsafe { vld1q_f32(x_tail.as_ptr()) };
                for (a, r) in acc.iter_mut().zip(row) {
                    let mut w_tail = [0.0f32; 4];
                    w_tail[..n - full].copy_from_slice(&r[full..]);
                    // SAFETY: `w_tail` holds 4 floats.
                    *a = vfmaq_f32(*a, xv, unsafe { vld1q_f32(w_tail.as_ptr()) });
                }
            }
            for (i, a) in acc.into_iter().enumerate() {
                if r0 + i < rows {
                    out[r0 + i] = hsum4(a);
                }
            }
        }
        r0 += ROWS;
    }
}

/// A Q40 block as signed values: (values 0..16, values 16..32), each `code - 8`.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn q40_values(block: &Q40Block) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 16 bytes.
    let packed = unsafe { vld1q_u8(block.qs.as_ptr()) };
    let eight = vdupq_n_s8(8);
    let lo = vsubq_s8(
        vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))),
        eight,
    );
    let hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(packed)), eight);
    (lo, hi)
}

/// A Q80 block's codes: (values 0..16, values 16..32).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn q80_values(block: &Q80Block) -> (int8x16_t, int8x16_t) {
    // SAFETY: `qs` is 32 bytes: two 16-byte loads.
    unsafe {
        (
            vld1q_s8(block.qs.as_ptr()),
            vld1q_s8(block.qs.as_ptr().add(16)),
        )
    }
}

/// `d_w · d_x`, rounded once, as dllama's `CONVERT_F16_TO_F32(w->d) * CONVERT_F16_TO_F32(x->d)`.
#[inline]
pub(crate) fn block_scale(w: &Q40Block, x: &Q80Block) -> f32 {
    f16_to_f32(u16::from_le_bytes(w.d)) * f16_to_f32(u16::from_le_bytes(x.d))
}

/// `acc + float(lanes) · s`, rounded twice (`fmul` then `fadd`), as GCC 12 emits `vmlaq_n_f32`.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn mla_unfused(acc: float32x4_t, lanes: int32x4_t, s: f32) -> float32x4_t {
    vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(lanes), s))
}

/// One block's integer lanes without dotprod: `vmull_s8` products paired by `vpaddlq_s16`.
#[target_feature(enable = "neon")]
#[inline]
fn lanes_mull(w: (int8x16_t, int8x16_t), x: (int8x16_t, int8x16_t)) -> int32x4_t {
    let pll = vmull_s8(vget_low_s8(w.0), vget_low_s8(x.0));
    let plh = vmull_s8(vget_high_s8(w.0), vget_high_s8(x.0));
    let phl = vmull_s8(vget_low_s8(w.1), vget_low_s8(x.1));
    let phh = vmull_s8(vget_high_s8(w.1), vget_high_s8(x.1));
    let pl = vaddq_s32(vpaddlq_s16(pll), vpaddlq_s16(plh));
    let ph = vaddq_s32(vpaddlq_s16(phl), vpaddlq_s16(phh));
    vaddq_s32(pl, ph)
}

/// `acc + Σ a·b` over each lane's four bytes (`sdot`). Written as assembly because the
/// intrinsic is not stable in Rust; the instruction is what dllama's dotprod build runs.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(crate) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut out = acc;
    // SAFETY: `sdot` only reads and writes the three vector registers named; the caller's
    // target features guarantee the instruction exists.
    unsafe {
        core::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) out,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    out
}

/// One block's integer lanes with dotprod: `sdot(sdot(0, w_lo, x_lo), w_hi, x_hi)`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(crate) fn lanes_sdot(w: (int8x16_t, int8x16_t), x: (int8x16_t, int8x16_t)) -> int32x4_t {
    sdot(sdot(vdupq_n_s32(0), w.0, x.0), w.1, x.1)
}

/// dllama's final `vaddvq(s0) + vaddvq(s1) + vaddvq(s2) + vaddvq(s3)`, left to right.
#[target_feature(enable = "neon")]
#[inline]
fn sum_accumulators(acc: [float32x4_t; 4]) -> f32 {
    hsum4(acc[0]) + hsum4(acc[1]) + hsum4(acc[2]) + hsum4(acc[3])
}

/// Q80·Q40 rows without dotprod: blocks alternate between two accumulators (an odd last block
/// goes to the first), each block adds `float(lanes) · s` unfused.
///
/// # Safety
/// The CPU must support NEON. Shapes as checked by [`crate::matmul::matmul_q80_q40`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn matmul_q80_q40_neon(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    let rows = outs.first().map_or(0, |o| o.len());
    let mut r0 = 0;
    while r0 < rows {
        let row: [&[Q40Block]; ROWS] = row_tile(w, r0, rows, nb);
        for (b, out) in outs.iter_mut().enumerate() {
            let x = &xs[b * nb..(b + 1) * nb];
            let mut acc = [[vdupq_n_f32(0.0); 4]; ROWS];
            let mut j = 0;
            while j + 1 < nb {
                let x0 = q80_values(&x[j]);
                let x1 = q80_values(&x[j + 1]);
                for (a, r) in acc.iter_mut().zip(row) {
                    a[0] = mla_unfused(
                        a[0],
                        lanes_mull(q40_values(&r[j]), x0),
                        block_scale(&r[j], &x[j]),
                    );
                    a[1] = mla_unfused(
                        a[1],
                        lanes_mull(q40_values(&r[j + 1]), x1),
                        block_scale(&r[j + 1], &x[j + 1]),
                    );
                }
                j += 2;
            }
            while j < nb {
                let x0 = q80_values(&x[j]);
                for (a, r) in acc.iter_mut().zip(row) {
                    a[0] = mla_unfused(
                        a[0],
                        lanes_mull(q40_values(&r[j]), x0),
                        block_scale(&r[j], &x[j]),
                    );
                }
                j += 1;
            }
            for (i, a) in acc.into_iter().enumerate() {
                if r0 + i < rows {
                    out[r0 + i] = sum_accumulators(a);
                }
            }
        }
        r0 += ROWS;
    }
}

/// Q80·Q40 rows with dotprod: blocks rotate over four accumulators while four remain, the rest
/// go to the first; `sdot` lanes, unfused multiply-add.
///
/// # Safety
/// The CPU must support NEON and dotprod. Shapes as checked by
/// [`crate::matmul::matmul_q80_q40`].
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn matmul_q80_q40_dotprod(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    let rows = outs.first().map_or(0, |o| o.len());
    let mut r0 = 0;
    while r0 < rows {
        let row: [&[Q40Block]; ROWS] = row_tile(w, r0, rows, nb);
        for (b, out) in outs.iter_mut().enumerate() {
            let x = &xs[b * nb..(b + 1) * nb];
            let mut acc = [[vdupq_n_f32(0.0); 4]; ROWS];
            let mut j = 0;
            while j + 3 < nb {
                let xv: [_; 4] = core::array::from_fn(|t| q80_values(&x[j + t]));
                for (a, r) in acc.iter_mut().zip(row) {
                    for t in 0..4 {
                        let lanes = lanes_sdot(q40_values(&r[j + t]), xv[t]);
                        a[t] = mla_unfused(a[t], lanes, block_scale(&r[j + t], &x[j + t]));
                    }
                }
                j += 4;
            }
            while j < nb {
                let x0 = q80_values(&x[j]);
                for (a, r) in acc.iter_mut().zip(row) {
                    a[0] = mla_unfused(
                        a[0],
                        lanes_sdot(q40_values(&r[j]), x0),
                        block_scale(&r[j], &x[j]),
                    );
                }
                j += 1;
            }
            for (i, a) in acc.into_iter().enumerate() {
                if r0 + i < rows {
                    out[r0 + i] = sum_accumulators(a);
                }
            }
        }
        r0 += ROWS;
    }
}
