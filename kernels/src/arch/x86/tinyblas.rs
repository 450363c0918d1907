//! llamafile's tinyBLAS element order as dllama's x86 builds run it for batched matmuls.
//!
//! tinyBLAS tiles the output `RM × RN` and splits tiles between threads, but every element is
//! an independent accumulation over the whole row, so the tile shape used here (chosen for this
//! code's register budget) never changes a bit.
//!
//! * F32 on the AVX-512 build (`tinyBLAS<16, __m512>`, taken when `n % 16 == 0`): 16 lanes of
//!   `acc = fma(w, x, acc)`, then `_mm512_reduce_add_ps` (GCC 12: 256-bit halves added, then
//!   as [`hsum8`]). The AVX2 build's `tinyBLAS<8, __m256>` is the per-row AVX2 order and lives
//!   in [`super::matmul::matmul_f32_avx2`].
//! * Q40 weights · Q80 input (`tinyBLAS_Q0_AVX2`, both x86 builds): per block and per 4-value
//!   group, the integer `vpmaddubsw(|w|, sign(x, w))` summed by `vpmaddwd` (or `vpdpbusd`, the
//!   same integers), converted to float, then `acc = fma(d_w · d_x, dot4, acc)` in 8 lanes, and
//!   [`hsum8`] at the end. `sign(x, w)` negates `x` where `w < 0`, and `-(-128)` wraps to
//!   `-128`: that quirk is reproduced by using the same instructions.
use core::arch::x86_64::*;

use super::matmul::{hsum8, q40_codes, q80_codes};
use crate::block::{Q40Block, Q80Block};
use crate::quant::f16_to_f32;

/// Weight rows per tile.
const RM: usize = 4;
/// Batch items per tile.
const RN: usize = 2;

/// The AVX-512 build's `hsum(__m512)`: `_mm512_reduce_add_ps` as GCC 12 expands it.
#[target_feature(enable = "avx512f,avx2")]
#[inline]
fn hsum16(x: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    let lo = _mm512_castps512_ps256(x);
    hsum8(_mm256_add_ps(hi, lo))
}

/// F32 in llamafile's AVX-512 order. Rows whose length is not a multiple of 16 are treated as
/// zero-padded (dllama itself only takes this path when `n % 16 == 0`).
///
/// # Safety
/// The CPU must support AVX-512 F (with AVX2 and FMA). Shapes as checked by
/// [`crate::matmul::matmul_f32`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn matmul_f32_avx512(outs: &mut [&mut [f32]], xs: &[f32], w: &[f32], n: usize) {
    const R: usize = 4;
    const B: usize = 4;
    let rows = outs.first().map_or(0, |o| o.len());
    let items = outs.len();
    if rows == 0 {
        return;
    }
    let full = n / 16 * 16;
    let tail: __mmask16 = ((1u32 << (n - full)) - 1) as __mmask16;
    let mut b0 = 0;
    while b0 < items {
        // Items past the end repeat the last item; their results are discarded.
        let x_ptr: [*const f32; B] =
            core::array::from_fn(|k| xs[(b0 + k).min(items - 1) * n..].as_ptr());
        let mut r0 = 0;
        while r0 < rows {
            let w_ptr: [*const f32; R] =
                core::array::from_fn(|i| w[(r0 + i).min(rows - 1) * n..].as_ptr());
            let mut acc = [[_mm512_setzero_ps(); R]; B];
            let mut j = 0;
            while j < full {
                // SAFETY: j + 16 <= n: 16 floats from j are inside every row and input.
                let wv: [__m512; R] =
                    core::array::from_fn(|i| unsafe { _mm512_loadu_ps(w_ptr[i].add(j)) });
                for (acc_b, xp) in acc.iter_mut().zip(x_ptr) {
                    // SAFETY: as above.
                    let xv = unsafe { _mm512_loadu_ps(xp.add(j)) };
                    for (a, wvi) in acc_b.iter_mut().zip(wv) {
                        *a = _mm512_fmadd_ps(wvi, xv, *a);
                    }
                }
                j += 16;
            }
            if full < n {
                // SAFETY: the mask enables only lanes j..n, inside every row and input.
                let wv: [__m512; R] = core::array::from_fn(|i| unsafe {
                    _mm512_maskz_loadu_ps(tail, w_ptr[i].add(j))
                });
                for (acc_b, xp) in acc.iter_mut().zip(x_ptr) {
                    // SAFETY: as above.
                    let xv = unsafe { _mm512_maskz_loadu_ps(tail, xp.add(j)) };
                    for (a, wvi) in acc_b.iter_mut().zip(wv) {
                        *a = _mm512_fmadd_ps(wvi, xv, *a);
                    }
                }
            }
            for (k, acc_b) in acc.iter().enumerate() {
                if b0 + k < items {
                    for (i, a) in acc_b.iter().enumerate() {
                        if r0 + i < rows {
                            outs[b0 + k][r0 + i] = hsum16(*a);
                        }
                    }
                }
            }
            r0 += R;
        }
        b0 += B;
    }
}

/// Q40 weights · Q80 input in `tinyBLAS_Q0_AVX2` order (both x86 builds).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Shapes as checked by
/// [`crate::matmul::matmul_q80_q40`]; `nb` is the number of blocks per row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40_avx2(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    let rows = outs.first().map_or(0, |o| o.len());
    let items = outs.len();
    if rows == 0 {
        return;
    }
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    let mut b0 = 0;
    while b0 < items {
        // Items past the end repeat the last item; their results are discarded.
        let x: [&[Q80Block]; RN] = core::array::from_fn(|k| {
            let b = (b0 + k).min(items - 1);
            &xs[b * nb..(b + 1) * nb]
        });
        let mut r0 = 0;
        while r0 < rows {
            let row: [&[Q40Block]; RM] = core::array::from_fn(|i| {
                let r = (r0 + i).min(rows - 1);
                &w[r * nb..(r + 1) * nb]
            });
            let mut acc = [[_mm256_setzero_ps(); RM]; RN];
            for l in 0..nb {
                let wq: [__m256i; RM] =
                    core::array::from_fn(|i| _mm256_sub_epi8(q40_codes(&row[i][l]), eight));
                let wd: [f32; RM] =
                    core::array::from_fn(|i| f16_to_f32(u16::from_le_bytes(row[i][l].d)));
                for (acc_b, xb) in acc.iter_mut().zip(x) {
                    let xq = q80_codes(&xb[l]);
                    let xd = f16_to_f32(u16::from_le_bytes(xb[l].d));
                    for ((a, &wqi), &wdi) in acc_b.iter_mut().zip(&wq).zip(&wd) {
                        let u = _mm256_sign_epi8(wqi, wqi);
                        let s = _mm256_sign_epi8(xq, wqi);
                        let dot =
                            _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, s)));
                        *a = _mm256_fmadd_ps(_mm256_set1_ps(wdi * xd), dot, *a);
                    }
                }
            }
            for (k, acc_b) in acc.iter().enumerate() {
                if b0 + k < items {
                    for (i, a) in acc_b.iter().enumerate() {
                        if r0 + i < rows {
                            outs[b0 + k][r0 + i] = hsum8(*a);
                        }
                    }
                }
            }
            r0 += RM;
        }
        b0 += RN;
    }
}
