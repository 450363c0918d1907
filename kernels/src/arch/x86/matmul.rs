//! x86 per-row matmul bodies: dllama's `__AVX2__` branch of `matmul_F32_F32_F32` and the
//! `__AVX2__` / `__AVX512F__` branches of `matmul_Q80_Q40_F32`.
//!
//! Both Q80·Q40 branches compute each block's integer dot product exactly and then, as GCC
//! compiles `sum += block_sum * s` with FMA available, `sum = fma(block_sum, s, sum)` with
//! `s = d_w · d_x` rounded first: the AVX2 and AVX-512 builds agree bit for bit, so one body
//! serves both. The integer dot is computed here with `vpmaddubsw` on the unsigned 4-bit codes
//! minus the same for a constant 8 (exact: every pair sum stays within ±2048), and four rows are
//! reduced together so their float chains run side by side.
use crate::matmul::row_tile;
use core::arch::x86_64::*;

use crate::block::{Q40Block, Q80Block};
use crate::quant::f16_to_f32;

/// Rows per tile of the per-row kernels: independent accumulation chains that hide FMA latency.
const ROWS: usize = 4;

/// dllama's AVX2 `horizontalSum_avx2` (and llamafile's `hsum(__m256)`): high + low 128-bit
/// halves, then lanes 0+2 and 1+3, then those two.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn hsum8(x: __m256) -> f32 {
    let mut res = _mm_add_ps(_mm256_extractf128_ps::<1>(x), _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// A mask selecting the first `len` (< 8) lanes for `vmaskmovps`: the zero-padded tail.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn tail_mask8(len: usize) -> __m256i {
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), lane)
}

/// Walks the output in tiles of `$rm` weight rows × `$rn` batch items, calling
/// `$tile(row_ptrs, item_ptrs, results)` with rows and items past the end replaced by the last
/// ones (their results are discarded), then stores the results into `outs`.
macro_rules! tiles {
    ($outs:expr, $xs:expr, $w:expr, $row_len:expr, $rm:expr, $rn:expr, $zero:expr, $tile:expr) => {{
        let outs: &mut [&mut [f32]] = $outs;
        let rows = outs.first().map_or(0, |o| o.len());
        let items = outs.len();
        let row_len: usize = $row_len;
        // Rows outside, items inside (as tinyBLAS orders its tiles): a tile's weight rows stay
        // in cache while every batch item passes over them.
        let mut r0 = 0;
        while r0 < rows && items > 0 {
            let row: [_; $rm] =
                core::array::from_fn(|i| $w[(r0 + i).min(rows - 1) * row_len..].as_ptr());
            let mut b0 = 0;
            while b0 < items {
                let item: [_; $rn] =
                    core::array::from_fn(|k| $xs[(b0 + k).min(items - 1) * row_len..].as_ptr());
                let mut res = [[$zero; $rm]; $rn];
                $tile(&row, &item, &mut res);
                for (k, res_k) in res.iter().enumerate().take(items - b0) {
                    for (i, v) in res_k.iter().enumerate().take(rows - r0) {
                        outs[b0 + k][r0 + i] = *v;
                    }
                }
                b0 += $rn;
            }
            r0 += $rm;
        }
    }};
}
pub(crate) use tiles;

/// One `RM × RN` tile of 8-lane F32 dots: `acc = fma(x, w, acc)` per 8 values (the masked tail
/// loads zeros), then [`hsum8`].
///
/// # Safety
/// Every pointer starts `n` readable floats.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn f32_tile8<const RM: usize, const RN: usize>(
    row: &[*const f32; RM],
    item: &[*const f32; RN],
    n: usize,
    res: &mut [[f32; RM]; RN],
) {
    let full = n / 8 * 8;
    let mask = tail_mask8(n - full);
    let mut acc = [[_mm256_setzero_ps(); RM]; RN];
    let mut j = 0;
    while j < full {
        let mut wv = [_mm256_setzero_ps(); RM];
        for i in 0..RM {
            // SAFETY: j + 8 <= n.
            wv[i] = unsafe { _mm256_loadu_ps(row[i].add(j)) };
        }
        for k in 0..RN {
            // SAFETY: j + 8 <= n.
            let xv = unsafe { _mm256_loadu_ps(item[k].add(j)) };
            for i in 0..RM {
                acc[k][i] = _mm256_fmadd_ps(xv, wv[i], acc[k][i]);
            }
        }
        j += 8;
    }
    if full < n {
        for k in 0..RN {
            // SAFETY: the mask enables only lanes j..n.
            let xv = unsafe { _mm256_maskload_ps(item[k].add(j), mask) };
            for i in 0..RM {
                // SAFETY: as above.
                let wv = unsafe { _mm256_maskload_ps(row[i].add(j), mask) };
                acc[k][i] = _mm256_fmadd_ps(xv, wv, acc[k][i]);
            }
        }
    }
    for k in 0..RN {
        for i in 0..RM {
            res[k][i] = hsum8(acc[k][i]);
        }
    }
}

/// F32 rows, 8 lanes: `acc = fma(x, w, acc)` per 8 values, then [`hsum8`]. Also llamafile's
/// `tinyBLAS<8, __m256>` element order, so the AVX2 build's batched F32 matmul is this too.
/// Lengths that are not a multiple of 8 are treated as zero-padded.
///
/// # Safety
/// The CPU must support AVX2 and FMA. Shapes as checked by [`crate::matmul::matmul_f32`].
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn matmul_f32_avx2(outs: &mut [&mut [f32]], xs: &[f32], w: &[f32], n: usize) {
    if outs.len() == 1 {
        // SAFETY: `tiles!` hands out pointers to whole rows / items of `n` floats.
        tiles!(outs, xs, w, n, 4, 1, 0.0f32, |r, x, res| unsafe {
            f32_tile8::<4, 1>(r, x, n, res)
        });
    } else {
        // SAFETY: as above.
        tiles!(outs, xs, w, n, 4, 3, 0.0f32, |r, x, res| unsafe {
            f32_tile8::<4, 3>(r, x, n, res)
        });
    }
}

/// Unpacks a Q40 block to its 32 unsigned codes (0..16): bytes 0..16 are the low nibbles
/// (values 0..16), bytes 16..32 the high nibbles (values 16..32).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn q40_codes(block: &Q40Block) -> __m256i {
    // SAFETY: `qs` is 16 bytes, one unaligned 128-bit load.
    q40_codes_of(unsafe { _mm_loadu_si128(block.qs.as_ptr().cast()) })
}

/// [`q40_codes`] of a block's 16 code bytes already in a register.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn q40_codes_of(packed: __m128i) -> __m256i {
    let low = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(packed, low);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), low);
    _mm256_set_m128i(hi, lo)
}

/// The 32 signed codes of a Q80 block.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn q80_codes(block: &Q80Block) -> __m256i {
    // SAFETY: `qs` is 32 bytes, one unaligned 256-bit load.
    unsafe { _mm256_loadu_si256(block.qs.as_ptr().cast()) }
}

/// Converts four half-precision scales at once (exact, like dllama's lookup table).
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn scales4(d: [[u8; 2]; ROWS]) -> __m128 {
    let h = |i: usize| u16::from_le_bytes(d[i]) as i16;
    _mm_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), 0, 0, 0, 0))
}

/// Q80·Q40 rows: per block `sum = fma(dot, d_w · d_x, sum)` with `dot` the exact integer dot.
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
    if nb == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    let eights = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    let mut r0 = 0;
    while r0 < rows {
        let row: [&[Q40Block]; ROWS] = row_tile(w, r0, rows, nb);
        for (b, out) in outs.iter_mut().enumerate() {
            let x = &xs[b * nb..(b + 1) * nb];
            let mut sum = _mm_setzero_ps();
            for (j, xb) in x.iter().enumerate() {
                let xq = q80_codes(xb);
                // Σ 8·x per pair, subtracted from Σ code·x to give Σ (code - 8)·x exactly.
                let bias = _mm256_maddubs_epi16(eights, xq);
                let dots: [__m256i; ROWS] = core::array::from_fn(|i| {
                    let pairs =
                        _mm256_sub_epi16(_mm256_maddubs_epi16(q40_codes(&row[i][j]), xq), bias);
                    _mm256_madd_epi16(pairs, ones)
                });
                // Reduce the four 8-lane vectors to one vector of four block sums.
                let h01 = _mm256_hadd_epi32(dots[0], dots[1]);
                let h23 = _mm256_hadd_epi32(dots[2], dots[3]);
                let h = _mm256_hadd_epi32(h01, h23);
                let block =
                    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                let wd = scales4(core::array::from_fn(|i| row[i][j].d));
                let s = _mm_mul_ps(wd, _mm_set1_ps(f16_to_f32(u16::from_le_bytes(xb.d))));
                sum = _mm_fmadd_ps(_mm_cvtepi32_ps(block), s, sum);
            }
            let mut lanes = [0.0f32; ROWS];
            // SAFETY: `lanes` is 16 bytes, one unaligned 128-bit store.
            unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sum) };
            for (i, v) in lanes.into_iter().enumerate() {
                if r0 + i < rows {
                    out[r0 + i] = v;
                }
            }
        }
        r0 += ROWS;
    }
}
