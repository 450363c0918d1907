//! AVX2 matmuls over eight interleaved Q40 rows ([`crate::packed`]), bit-identical to the row
//! layout's kernels in [`super::matmul`] (row order) and [`super::tinyblas`] (tinyBLAS order).
use core::arch::x86_64::*;

use super::matmul::{hsum8, q40_codes_of, q80_codes};
use super::tinyblas::{
    CHUNK, CacheLines, GROUP, XD_CAP, any_min_code, q40_matmul_body, q40_matmul_body_offset, scale,
};
use crate::block::{Q40x8Block, Q80Block};
use crate::packed::ROWS_PER_GROUP;
use crate::quant::f16_to_f32;

/// Input blocks whose scale and bias are prepared at once (8 KiB on the stack): rows longer
/// than this are walked in chunks, each group's eight sums parked in its output between chunks
/// (a store and a reload of an `f32` change no bit). Large enough for the FFN rows of common
/// models (up to 32768 inputs): with 256, a 7B's 11008-wide rows were walked in two passes over
/// every group, and its decode at 1 thread was 19 % slower (docs/PERFORMANCE.md).
const INPUT_CHUNK: usize = 1024;

/// Interleaved blocks (144 bytes each) ahead of the one being read that the AVX2 row kernel
/// prefetches: decode reads each weight once per token, so the kernel runs at the speed its
/// loads come from DRAM; on a Zen 3, asking 2.3 KB ahead kept more lines in flight than the
/// hardware prefetcher alone. The VNNI row kernel does not: on a Zen 4 the same hints made a
/// decode 4–15 % slower (both A/Bs in docs/PERFORMANCE.md).
const PREFETCH: usize = 16;

/// Asks for the three cache lines of the interleaved block at `p` (144 bytes). A hint only:
/// `p` is never dereferenced, so an address past the end of the weights is harmless.
#[target_feature(enable = "sse")]
#[inline]
fn prefetch_block(p: *const Q40x8Block) {
    let p = p.cast::<i8>();
    _mm_prefetch::<_MM_HINT_T0>(p);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
}

/// The tile fetch of the tinyBLAS body over interleaved rows: four rows `rows[0]..rows[0] + 4`
/// (`rows[0]` a multiple of 4, so one half of a group) at block column `j`. Their 4-byte code
/// words sit at the same place in the four chunks, so a 4 × 4 transpose of 32-bit words gives
/// each row's 16 code bytes, and the four scales convert at once. With it, the prefetch of a
/// block column (its whole 144-byte block, three lines). Macros, for the same reason as
/// `row_tile!` in [`super::tinyblas`].
macro_rules! interleaved {
    ($w:expr, $nb:expr) => {
        (
            interleaved_fetch!($w, $nb),
            |rows: &[usize; 4], j: usize| {
                prefetch_block($w.as_ptr().wrapping_add(rows[0] / ROWS_PER_GROUP * $nb + j))
            },
        )
    };
}

/// [`interleaved`]'s fetch.
macro_rules! interleaved_fetch {
    ($w:expr, $nb:expr) => {
        |rows: &[usize; 4], j: usize| {
            debug_assert!(rows[0] % 4 == 0 && rows[3] == rows[0] + 3);
            let p: &Q40x8Block = &$w[rows[0] / ROWS_PER_GROUP * $nb + j];
            let half = rows[0] % ROWS_PER_GROUP / 4;
            // SAFETY: `qs[t]` is 32 bytes and `d` 16: the 16 (8) bytes at `16 * half`
            // (`8 * half`), half < 2, are inside them.
            let (q, d) = unsafe {
                (
                    [0, 1, 2, 3].map(|t| _mm_loadu_si128(p.qs[t].as_ptr().add(16 * half).cast())),
                    _mm_loadl_epi64(p.d.as_ptr().add(4 * half).cast()),
                )
            };
            // q[t] holds word t of rows 0..4; after the transpose, row i's words 0..4.
            let (a, b) = (
                _mm_unpacklo_epi32(q[0], q[1]),
                _mm_unpackhi_epi32(q[0], q[1]),
            );
            let (c, e) = (
                _mm_unpacklo_epi32(q[2], q[3]),
                _mm_unpackhi_epi32(q[2], q[3]),
            );
            let row_bytes = [
                _mm_unpacklo_epi64(a, c),
                _mm_unpackhi_epi64(a, c),
                _mm_unpacklo_epi64(b, e),
                _mm_unpackhi_epi64(b, e),
            ];
            let mut scales = [0.0f32; 4];
            // SAFETY: `scales` is 4 floats.
            unsafe { _mm_storeu_ps(scales.as_mut_ptr(), _mm_cvtph_ps(d)) };
            (row_bytes.map(|r| q40_codes_of(r)), scales)
        }
    };
}

/// The row-order body over interleaved rows. `$dot(lo, hi, x_lo, x_hi, bias)` gives the
/// eight rows' exact integer block sums `Σ code · x - bias` from the low and high code nibbles
/// of the four chunks and the input's 4-byte groups `t` and `4 + t`. With `$prefetch`, each
/// block asks for the one [`PREFETCH`] blocks ahead.
macro_rules! q40x8_row_body {
    ($outs:expr, $xs:expr, $w:expr, $nb:expr, $prefetch:expr, $dot:expr) => {{
        let (outs, xs, w, nb): (&mut [&mut [f32]], &[Q80Block], &[Q40x8Block], usize) =
            ($outs, $xs, $w, $nb);
        let ones = _mm256_set1_epi16(1);
        let groups = outs.first().map_or(0, |o| o.len()) / ROWS_PER_GROUP;
        let low = _mm256_set1_epi8(0x0f);
        let eights = _mm256_set1_epi8(8);
        let mut bias = [0i32; INPUT_CHUNK];
        let mut x_scale = [0.0f32; INPUT_CHUNK];
        for (b, out) in outs.iter_mut().enumerate() {
            let x = &xs[b * nb..(b + 1) * nb];
            let mut c0 = 0;
            while c0 < nb {
                let cn = (nb - c0).min(INPUT_CHUNK);
                for (l, xb) in x[c0..c0 + cn].iter().enumerate() {
                    // 8 · Σ x, exact (pairs of 8 · x stay within ±2048).
                    let s = _mm256_madd_epi16(_mm256_maddubs_epi16(eights, q80_codes(xb)), ones);
                    let s =
                        _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
                    let s = _mm_hadd_epi32(s, s);
                    bias[l] = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
                    x_scale[l] = f16_to_f32(u16::from_le_bytes(xb.d));
                }
                for g in 0..groups {
                    let dst = &mut out[g * ROWS_PER_GROUP..(g + 1) * ROWS_PER_GROUP];
                    let mut sum = if c0 == 0 {
                        _mm256_setzero_ps()
                    } else {
                        // SAFETY: `dst` is 8 floats.
                        unsafe { _mm256_loadu_ps(dst.as_ptr()) }
                    };
                    let wg = &w[g * nb + c0..g * nb + c0 + cn];
                    for (l, (wb, xb)) in wg.iter().zip(&x[c0..c0 + cn]).enumerate() {
                        if $prefetch {
                            prefetch_block((wb as *const Q40x8Block).wrapping_add(PREFETCH));
                        }
                        let mut lo = [_mm256_setzero_si256(); 4];
                        let mut hi = [_mm256_setzero_si256(); 4];
                        let mut x_lo = [0i32; 4];
                        let mut x_hi = [0i32; 4];
                        for t in 0..4 {
                            // SAFETY: `qs[t]` is 32 bytes, one unaligned 256-bit load.
                            let codes = unsafe { _mm256_loadu_si256(wb.qs[t].as_ptr().cast()) };
                            lo[t] = _mm256_and_si256(codes, low);
                            hi[t] = _mm256_and_si256(_mm256_srli_epi16::<4>(codes), low);
                            let quad = xb.qs.as_ptr().cast::<i32>();
                            // SAFETY: `qs` is 32 bytes: quads t and 4 + t (t < 4) are inside it.
                            (x_lo[t], x_hi[t]) = unsafe {
                                (
                                    quad.add(t).read_unaligned(),
                                    quad.add(4 + t).read_unaligned(),
                                )
                            };
                        }
                        let dot = $dot(lo, hi, x_lo, x_hi, bias[l]);
                        // SAFETY: `d` is 16 bytes, one unaligned 128-bit load.
                        let halves = unsafe { _mm_loadu_si128(wb.d.as_ptr().cast()) };
                        let w_scale = _mm256_cvtph_ps(halves);
                        let s = _mm256_mul_ps(w_scale, _mm256_set1_ps(x_scale[l]));
                        sum = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, sum);
                    }
                    // SAFETY: `dst` is 8 floats.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), sum) };
                }
                c0 += cn;
            }
        }
    }};
}

/// Row order (dllama's `matmul_Q80_Q40_F32` AVX2 branch, as [`super::matmul::matmul_q80_q40_avx2`]):
/// per block, lane `r` gets row `r`'s exact integer dot `Σ (code - 8) · x` and
/// `sum = fma(float(dot), d_w · d_x, sum)`.
///
/// The dot is `Σ code · x` from `vpmaddubsw` (unsigned codes 0..15 × signed inputs; eight
/// products summed per 16-bit lane stay within ±30 720, no saturation), minus the input's
/// `8 · Σ x`, which depends only on the input block and is computed once per chunk.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. `outs` rows are a multiple of 8 long and all equal,
/// `xs` holds `outs.len() * nb` blocks, `w` holds `rows / 8 * nb` blocks, `nb > 0`.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40x8_row(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    nb: usize,
) {
    let ones = _mm256_set1_epi16(1);
    q40x8_row_body!(
        outs,
        xs,
        w,
        nb,
        true,
        |lo: [__m256i; 4], hi: [__m256i; 4], x_lo: [i32; 4], x_hi: [i32; 4], bias: i32| {
            let mut pairs = _mm256_setzero_si256();
            for t in 0..4 {
                pairs = _mm256_add_epi16(
                    pairs,
                    _mm256_maddubs_epi16(lo[t], _mm256_set1_epi32(x_lo[t])),
                );
                pairs = _mm256_add_epi16(
                    pairs,
                    _mm256_maddubs_epi16(hi[t], _mm256_set1_epi32(x_hi[t])),
                );
            }
            _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), _mm256_set1_epi32(bias))
        }
    )
}

/// As [`matmul_q80_q40x8_row`] (same bits) with AVX-512 VNNI: `vpdpbusd` sums four products
/// into each 32-bit lane at once, eight instructions per block where `vpmaddubsw`, `vpaddw` and
/// `vpmaddwd` took seventeen (two independent chains, so the latency of one does not serialise
/// the block). No software prefetch ([`PREFETCH`]): the hardware's alone reads faster here.
///
/// # Safety
/// As [`matmul_q80_q40x8_row`], and the CPU supports AVX-512 F/VL/VNNI.
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40x8_row_vnni(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    nb: usize,
) {
    q40x8_row_body!(
        outs,
        xs,
        w,
        nb,
        false,
        |lo: [__m256i; 4], hi: [__m256i; 4], x_lo: [i32; 4], x_hi: [i32; 4], bias: i32| {
            let mut a = _mm256_set1_epi32(-bias);
            let mut b = _mm256_setzero_si256();
            for t in 0..4 {
                a = _mm256_dpbusd_epi32(a, lo[t], _mm256_set1_epi32(x_lo[t]));
                b = _mm256_dpbusd_epi32(b, hi[t], _mm256_set1_epi32(x_hi[t]));
            }
            _mm256_add_epi32(a, b)
        }
    )
}

/// tinyBLAS order (`tinyBLAS_Q0_AVX2`, as [`super::tinyblas::matmul_q80_q40_avx2`]) over the
/// interleaved layout: the same body, fed row by row from the groups.
///
/// # Safety
/// As [`matmul_q80_q40x8_row`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40x8_tinyblas(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    nb: usize,
) {
    let ones = _mm256_set1_epi16(1);
    q40_matmul_body!(outs, xs, interleaved!(w, nb), nb, 4, 2, |u, s| {
        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, s))
    })
}

/// As [`matmul_q80_q40x8_tinyblas`] (same bits) with AVX-512VL's registers for 4 × 4 tiles,
/// as [`super::tinyblas::matmul_q80_q40_avx512`].
///
/// # Safety
/// As [`matmul_q80_q40x8_row`], and the CPU supports AVX-512 F/VL.
#[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40x8_tinyblas_avx512(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    nb: usize,
) {
    let ones = _mm256_set1_epi16(1);
    q40_matmul_body!(outs, xs, interleaved!(w, nb), nb, 4, 4, |u, s| {
        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, s))
    })
}

/// As [`matmul_q80_q40x8_tinyblas`] (same bits) with AVX-512 VNNI: [`q40_matmul_body_offset`]
/// when no input code is -128, else `vpdpbusd` in dllama's `vpsignb` form.
///
/// # Safety
/// As [`matmul_q80_q40x8_row`], and the CPU supports AVX-512 F/VL/VNNI.
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40x8_tinyblas_vnni(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    nb: usize,
) {
    if any_min_code(xs) {
        q40_matmul_body!(outs, xs, interleaved!(w, nb), nb, 4, 4, |u, s| {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
        })
    } else {
        q40_matmul_body_offset!(outs, xs, interleaved!(w, nb), nb)
    }
}
