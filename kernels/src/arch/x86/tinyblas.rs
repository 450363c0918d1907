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

use super::matmul::{hsum8, q40_codes, q80_codes, tiles};
use crate::block::{Q40Block, Q80Block};

/// The AVX-512 build's `hsum(__m512)`: `_mm512_reduce_add_ps` as GCC 12 expands it.
#[target_feature(enable = "avx512f,avx2")]
#[inline]
fn hsum16(x: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x)));
    let lo = _mm512_castps512_ps256(x);
    hsum8(_mm256_add_ps(hi, lo))
}

/// One `RM × RN` tile of 16-lane F32 dots (`_mm512_fmadd_ps`, masked zero-padded tail), then
/// [`hsum16`].
///
/// # Safety
/// Every pointer starts `n` readable floats.
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn f32_tile16<const RM: usize, const RN: usize>(
    row: &[*const f32; RM],
    item: &[*const f32; RN],
    n: usize,
    res: &mut [[f32; RM]; RN],
) {
    let full = n / 16 * 16;
    let tail: __mmask16 = ((1u32 << (n - full)) - 1) as __mmask16;
    let mut acc = [[_mm512_setzero_ps(); RM]; RN];
    let mut j = 0;
    while j < full {
        let mut wv = [_mm512_setzero_ps(); RM];
        for i in 0..RM {
            // SAFETY: j + 16 <= n.
            wv[i] = unsafe { _mm512_loadu_ps(row[i].add(j)) };
        }
        for k in 0..RN {
            // SAFETY: j + 16 <= n.
            let xv = unsafe { _mm512_loadu_ps(item[k].add(j)) };
            for i in 0..RM {
                acc[k][i] = _mm512_fmadd_ps(wv[i], xv, acc[k][i]);
            }
        }
        j += 16;
    }
    if full < n {
        for k in 0..RN {
            // SAFETY: the mask enables only lanes j..n.
            let xv = unsafe { _mm512_maskz_loadu_ps(tail, item[k].add(j)) };
            for i in 0..RM {
                // SAFETY: as above.
                let wv = unsafe { _mm512_maskz_loadu_ps(tail, row[i].add(j)) };
                acc[k][i] = _mm512_fmadd_ps(wv, xv, acc[k][i]);
            }
        }
    }
    for k in 0..RN {
        for i in 0..RM {
            res[k][i] = hsum16(acc[k][i]);
        }
    }
}

/// F32 in llamafile's AVX-512 order. Rows whose length is not a multiple of 16 are treated as
/// zero-padded (dllama itself only takes this path when `n % 16 == 0`).
///
/// # Safety
/// The CPU must support AVX-512 F (with AVX2 and FMA). Shapes as checked by
/// [`crate::matmul::matmul_f32`].
#[target_feature(enable = "avx512f,avx2,fma")]
pub(crate) unsafe fn matmul_f32_avx512(outs: &mut [&mut [f32]], xs: &[f32], w: &[f32], n: usize) {
    if outs.len() == 1 {
        // SAFETY: `tiles!` hands out pointers to whole rows / items of `n` floats.
        tiles!(outs, xs, w, n, 4, 1, 0.0f32, |r, x, res| unsafe {
            f32_tile16::<4, 1>(r, x, n, res)
        });
    } else {
        // SAFETY: as above.
        tiles!(outs, xs, w, n, 4, 4, 0.0f32, |r, x, res| unsafe {
            f32_tile16::<4, 4>(r, x, n, res)
        });
    }
}

/// One half-precision scale, converted with F16C (exact, like dllama's lookup table).
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(crate) fn scale(d: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes(d),
    ))))
}

/// The body of one `RM × RN` tile in `tinyBLAS_Q0_AVX2` order, shared by the AVX2 and AVX-512
/// instantiations (the latter only gets more registers).
macro_rules! q40_tile_body {
    ($row:expr, $item:expr, $nb:expr, $res:expr, $rm:expr, $rn:expr, $updot:expr) => {{
        let (row, item, nb, res): (
            &[*const Q40Block; $rm],
            &[*const Q80Block; $rn],
            usize,
            &mut [[f32; $rm]; $rn],
        ) = ($row, $item, $nb, $res);
        let eight = _mm256_set1_epi8(8);
        let mut acc = [[_mm256_setzero_ps(); $rm]; $rn];
        for l in 0..nb {
            let mut wq = [_mm256_setzero_si256(); $rm];
            let mut wu = [_mm256_setzero_si256(); $rm];
            let mut wd = [_mm256_setzero_ps(); $rm];
            for i in 0..$rm {
                // SAFETY: every row pointer starts `nb` blocks.
                let wb = unsafe { &*row[i].add(l) };
                wq[i] = _mm256_sub_epi8(q40_codes(wb), eight);
                wu[i] = _mm256_sign_epi8(wq[i], wq[i]);
                wd[i] = _mm256_set1_ps(scale(wb.d));
            }
            for k in 0..$rn {
                // SAFETY: every item pointer starts `nb` blocks.
                let xb = unsafe { &*item[k].add(l) };
                let xq = q80_codes(xb);
                let xd = _mm256_set1_ps(scale(xb.d));
                for i in 0..$rm {
                    let s = _mm256_sign_epi8(xq, wq[i]);
                    let dot = _mm256_cvtepi32_ps($updot(wu[i], s));
                    // `d_w · d_x` rounded once (in every lane), as dllama's scalar product.
                    acc[k][i] = _mm256_fmadd_ps(_mm256_mul_ps(wd[i], xd), dot, acc[k][i]);
                }
            }
        }
        for k in 0..$rn {
            for i in 0..$rm {
                res[k][i] = hsum8(acc[k][i]);
            }
        }
    }};
}

/// A 4 × 2 tile with AVX2's 16 vector registers.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; every pointer starts `nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q40_tile_avx2(
    row: &[*const Q40Block; 4],
    item: &[*const Q80Block; 2],
    nb: usize,
    res: &mut [[f32; 4]; 2],
) {
    let ones = _mm256_set1_epi16(1);
    q40_tile_body!(row, item, nb, res, 4, 2, |u, s| _mm256_madd_epi16(
        ones,
        _mm256_maddubs_epi16(u, s)
    ))
}

/// A 4 × 4 tile: the same instructions, with AVX-512VL's 32 registers to hold the accumulators.
///
/// # Safety
/// The CPU must support AVX-512 F/VL with AVX2, FMA and F16C; every pointer starts `nb` blocks.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn q40_tile_avx512(
    row: &[*const Q40Block; 4],
    item: &[*const Q80Block; 4],
    nb: usize,
    res: &mut [[f32; 4]; 4],
) {
    let ones = _mm256_set1_epi16(1);
    q40_tile_body!(row, item, nb, res, 4, 4, |u, s| _mm256_madd_epi16(
        ones,
        _mm256_maddubs_epi16(u, s)
    ))
}

/// As [`q40_tile_avx512`] with `vpdpbusd` (AVX-512 VNNI) for the 4-value dots, as dllama's
/// `-march=native` build on a VNNI CPU compiles `updot`: the same integers, since no pair sum
/// can saturate `vpmaddubsw` here (|w| <= 8).
///
/// # Safety
/// The CPU must support AVX-512 F/VL/VNNI with AVX2, FMA and F16C; every pointer starts `nb`
/// blocks.
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn q40_tile_vnni(
    row: &[*const Q40Block; 4],
    item: &[*const Q80Block; 4],
    nb: usize,
    res: &mut [[f32; 4]; 4],
) {
    q40_tile_body!(row, item, nb, res, 4, 4, |u, s| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        u,
        s
    ))
}

/// Q40 weights · Q80 input in `tinyBLAS_Q0_AVX2` order (both x86 builds), AVX2 registers.
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
    // SAFETY: `tiles!` hands out pointers to whole rows / items of `nb` blocks.
    tiles!(outs, xs, w, nb, 4, 2, 0.0f32, |r, x, res| unsafe {
        q40_tile_avx2(r, x, nb, res)
    });
}

/// As [`matmul_q80_q40_avx2`] (same bits), with AVX-512VL registers for bigger tiles.
///
/// # Safety
/// The CPU must support AVX-512 F/VL, AVX2, FMA and F16C. Shapes as checked by
/// [`crate::matmul::matmul_q80_q40`]; `nb` is the number of blocks per row.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40_avx512(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    // SAFETY: `tiles!` hands out pointers to whole rows / items of `nb` blocks.
    tiles!(outs, xs, w, nb, 4, 4, 0.0f32, |r, x, res| unsafe {
        q40_tile_avx512(r, x, nb, res)
    });
}

/// As [`matmul_q80_q40_avx2`] (same bits), with `vpdpbusd` and AVX-512VL registers.
///
/// # Safety
/// The CPU must support AVX-512 F/VL/VNNI, AVX2, FMA and F16C. Shapes as checked by
/// [`crate::matmul::matmul_q80_q40`]; `nb` is the number of blocks per row.
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40_vnni(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    // SAFETY: `tiles!` hands out pointers to whole rows / items of `nb` blocks.
    tiles!(outs, xs, w, nb, 4, 4, 0.0f32, |r, x, res| unsafe {
        q40_tile_vnni(r, x, nb, res)
    });
}

/// Whether the CPU has AVX-512 VNNI (checked once by `std`'s cached detection, or at compile
/// time without `std`). Only a faster instruction for the same integers, so [`crate::backend`]
/// does not need to know.
pub(crate) fn has_avx512_vnni() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512vnni",
            target_feature = "avx512vl"
        ))
    }
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use crate::backend::{Backend, Isa};

    /// A Q80·Q40 kernel body.
    type Body = unsafe fn(&mut [&mut [f32]], &[Q80Block], &[Q40Block], usize);

    /// The AVX-512 and VNNI instantiations must give the AVX2 body's bits (the public tests only
    /// reach the one the host CPU selects).
    #[test]
    fn every_x86_q40_instantiation_agrees() {
        if Backend::new(Isa::Avx512).is_none() {
            return;
        }
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (d, nb, batch) in [(1, 1, 1), (5, 3, 2), (9, 7, 5), (4, 4, 4), (13, 2, 9)] {
            let w: alloc::vec::Vec<Q40Block> = (0..d * nb)
                .map(|_| Q40Block {
                    d: [next() as u8, 0x30 | (next() as u8 & 0x8f)],
                    qs: next().to_le_bytes().repeat(2).try_into().unwrap(),
                })
                .collect();
            let x: alloc::vec::Vec<Q80Block> = (0..nb * batch)
                .map(|_| {
                    let mut qs = [0i8; 32];
                    qs.iter_mut().for_each(|q| *q = next() as i8);
                    Q80Block {
                        d: [next() as u8, 0x2c],
                        qs,
                    }
                })
                .collect();
            let run = |f: Body| {
                let mut out = alloc::vec![0.0f32; d * batch];
                let mut outs: alloc::vec::Vec<&mut [f32]> = out.chunks_mut(d).collect();
                // SAFETY: the CPU has AVX-512 F/BW/DQ/VL (checked above); VNNI is checked below
                // before its body runs; shapes are consistent by construction.
                unsafe { f(&mut outs, &x, &w, nb) };
                out.iter()
                    .map(|v| v.to_bits())
                    .collect::<alloc::vec::Vec<_>>()
            };
            let reference = run(matmul_q80_q40_avx2);
            assert_eq!(run(matmul_q80_q40_avx512), reference, "{d} {nb} {batch}");
            if has_avx512_vnni() {
                assert_eq!(run(matmul_q80_q40_vnni), reference, "{d} {nb} {batch}");
            }
        }
    }
}
