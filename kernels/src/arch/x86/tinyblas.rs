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

/// A value on whole cache lines (64-byte aligned), so that vector stores into it never split a
/// line.
#[repr(C, align(64))]
pub(crate) struct CacheLines<T>(pub(crate) T);

/// Blocks per pass over a row tile: the unpacked codes (2 × 4 × 32 × 32 bytes), the scales and
/// their products stay in L1 while every batch item of a group passes over them.
pub(crate) const CHUNK: usize = 32;

/// Input block scales that the tinyBLAS body converts once per call, on its stack (32 KiB):
/// 32 items of 256 blocks.
pub(crate) const XD_CAP: usize = 8192;

/// Batch items whose accumulators stay on the stack across chunks (a multiple of every tile
/// width used here).
pub(crate) const GROUP: usize = 32;

/// Q40 weights · Q80 input in `tinyBLAS_Q0_AVX2` order, shared by the AVX2 and AVX-512
/// instantiations (the latter only gets more registers).
///
/// Each output element still sees exactly dllama's operations in dllama's order: per block,
/// `acc = fma(d_w · d_x, float(updot(|w|, sign(x, w))), acc)` over all blocks, then
/// [`hsum8`]. What changes is only where intermediate values live: for `$rm` weight rows the
/// codes of `CHUNK` blocks are unpacked and their scales converted once, then reused by
/// every batch item of a group of up to `GROUP`; the `d_w · d_x` products of a chunk
/// (each one rounded f32 product, as dllama's scalar `unhalf(a) * unhalf(b)`) are computed
/// 8 at a time and broadcast from memory; the accumulators are parked on the stack between
/// chunks (a store and a reload do not change a bit).
///
/// `$fetch` is a pair of closures over `(&rows, block)`: the first returns the unsigned codes
/// ([`q40_codes`]) and scales of the tile's `RM` rows at one block column, the second
/// prefetches them. So the same body runs over the row layout (`row_tile!`) and over the
/// interleaved one ([`super::packed`], which unpacks four rows at once).
macro_rules! q40_matmul_body {
    // dllama's own operations: `vpsignb` moves the weight's sign onto the input and an
    // unsigned·signed dot (`$updot`) multiplies by `|w|`.
    ($outs:expr, $xs:expr, $fetch:expr, $nb:expr, $rm:expr, $rn:expr, $updot:expr) => {
        q40_matmul_body!(
            $outs,
            $xs,
            $fetch,
            $nb,
            $rm,
            $rn,
            |q: __m256i| (q, _mm256_sign_epi8(q, q)),
            |x: __m256i| x,
            |q: __m256i, u: __m256i, x: __m256i| $updot(u, _mm256_sign_epi8(x, q))
        )
    };
    // The general form: `$prep(w - 8)` gives the two registers kept per weight block,
    // `$xprep(x)` the one kept per input block, and `$dot(a, b, x)` the eight exact 4-value
    // integer dots from them.
    ($outs:expr, $xs:expr, $fetch:expr, $nb:expr, $rm:expr, $rn:expr, $prep:expr, $xprep:expr,
     $dot:expr) => {{
        const RM: usize = $rm;
        const RN: usize = $rn;
        let (outs, xs, nb): (&mut [&mut [f32]], &[Q80Block], usize) = ($outs, $xs, $nb);
        let (fetch, ahead) = $fetch;
        let rows = outs.first().map_or(0, |o| o.len());
        let items = outs.len();
        let eight = _mm256_set1_epi8(8);
        let mut wq = [[_mm256_setzero_si256(); RM]; CHUNK];
        let mut wu = [[_mm256_setzero_si256(); RM]; CHUNK];
        // Row scales, `CHUNK` per row (the tail past a short chunk is never read).
        let mut wd = [[0.0f32; CHUNK]; RM];
        // Item scales of one tile: converted 8 at a time from a packed copy of the halves.
        let mut xh = [[0u16; CHUNK]; RN];
        let mut xd = [[0.0f32; CHUNK]; RN];
        // Every item scale converted once, when they fit (a prefill batch of a few dozen
        // items over rows of up to a few hundred blocks), instead of once per row tile; a
        // chunk's slice may run `CHUNK` past the last scale, into the zeros.
        // Only the part in use is written (zeroing all 32 KiB per call showed in profiles of
        // small models).
        let hoisted = items * nb <= XD_CAP;
        let mut xd_store = [core::mem::MaybeUninit::<f32>::uninit(); XD_CAP + CHUNK];
        let filled = if hoisted { items * nb + CHUNK } else { 0 };
        let scales = xs
            .iter()
            .map(|xb| scale(xb.d))
            .chain(core::iter::repeat(0.0));
        for (d, v) in xd_store[..filled].iter_mut().zip(scales) {
            d.write(v);
        }
        let xd_ptr = xd_store.as_ptr().cast::<f32>();
        // SAFETY: the first `filled` elements were just written.
        let xd_all: &[f32] = unsafe { core::slice::from_raw_parts(xd_ptr, filled) };
        // `prod[k][i][l] = wd[i][l] · xd[k][l]`, on whole cache lines (at the 8-byte offset the
        // stack gave it, half of its 256-bit stores split a line).
        let mut prod = CacheLines([[[0.0f32; CHUNK]; RM]; RN]);
        let prod = &mut prod.0;
        // Written at a group's first chunk before it is read (zeroing it per row tile showed
        // as a 4 KiB memset in profiles of small models).
        let mut parked = [[_mm256_setzero_ps(); RM]; GROUP];
        let mut r0 = 0;
        while r0 < rows && items > 0 {
            // Rows past the end repeat the last row; their results are never written.
            let row: [usize; RM] = core::array::from_fn(|i| (r0 + i).min(rows - 1));
            let next_tile: [usize; RM] = core::array::from_fn(|i| (r0 + RM + i).min(rows - 1));
            let mut g0 = 0;
            while g0 < items {
                let group = (items - g0).min(GROUP);
                let mut c0 = 0;
                while c0 < nb {
                    let cn = (nb - c0).min(CHUNK);
                    for l in 0..cn {
                        let (codes, scales): ([__m256i; RM], [f32; RM]) = fetch(&row, c0 + l);
                        for i in 0..RM {
                            let (a, b) = $prep(_mm256_sub_epi8(codes[i], eight));
                            wq[l][i] = a;
                            wu[l][i] = b;
                            wd[i][l] = scales[i];
                        }
                    }
                    // The weights read next (this tile's next chunk, or the next tile's
                    // first) are prefetched a few blocks per item pass, so that the unpacking
                    // of the next chunk finds them in cache: without it, a fifth of a
                    // prefill's time went to unpacking, waiting on DRAM.
                    let passes = group.div_ceil(RN);
                    let per_pass = CHUNK.div_ceil(passes);
                    let mut b0 = 0;
                    while b0 < group {
                        let first = b0 / RN * per_pass;
                        for l in first..(first + per_pass).min(CHUNK) {
                            if c0 + CHUNK + l < nb {
                                ahead(&row, c0 + CHUNK + l);
                            } else if r0 + RM < rows && l < nb {
                                ahead(&next_tile, l);
                            }
                        }
                        // Items past the end repeat the last item; never written either.
                        let item: [*const Q80Block; RN] = core::array::from_fn(|k| {
                            xs[(g0 + b0 + k).min(items - 1) * nb + c0..].as_ptr()
                        });
                        for k in 0..RN {
                            let xdk: &[f32] = if hoisted {
                                let start = (g0 + b0 + k).min(items - 1) * nb + c0;
                                &xd_all[start..start + CHUNK]
                            } else {
                                for l in 0..cn {
                                    // SAFETY: l < cn, inside the item's chunk.
                                    xh[k][l] = u16::from_le_bytes(unsafe { (*item[k].add(l)).d });
                                }
                                let mut l = 0;
                                while l < cn {
                                    let halves = xh[k][l..l + 8].as_ptr().cast();
                                    // SAFETY: the bounds-checked slice holds 8 halves (16 bytes).
                                    let h = unsafe { _mm_loadu_si128(halves) };
                                    // SAFETY: the bounds-checked slice holds 8 floats.
                                    unsafe {
                                        _mm256_storeu_ps(
                                            xd[k][l..l + 8].as_mut_ptr(),
                                            _mm256_cvtph_ps(h),
                                        )
                                    };
                                    l += 8;
                                }
                                &xd[k]
                            };
                            for i in 0..RM {
                                let mut l = 0;
                                while l < cn {
                                    // SAFETY: every bounds-checked slice holds 8 floats.
                                    let p = unsafe {
                                        _mm256_mul_ps(
                                            _mm256_loadu_ps(wd[i][l..l + 8].as_ptr()),
                                            _mm256_loadu_ps(xdk[l..l + 8].as_ptr()),
                                        )
                                    };
                                    // SAFETY: as above.
                                    unsafe {
                                        _mm256_storeu_ps(prod[k][i][l..l + 8].as_mut_ptr(), p)
                                    };
                                    l += 8;
                                }
                            }
                        }
                        let mut acc = [[_mm256_setzero_ps(); RM]; RN];
                        for k in 0..RN {
                            if c0 > 0 {
                                acc[k] = parked[b0 + k];
                            }
                        }
                        for l in 0..cn {
                            // The items' codes stay in registers while each row's codes are
                            // read once (rows outside, items inside: fewest live registers).
                            let xq: [__m256i; RN] = core::array::from_fn(|k| {
                                // SAFETY: l < cn, inside the item's chunk.
                                $xprep(q80_codes(unsafe { &*item[k].add(l) }))
                            });
                            for i in 0..RM {
                                let (q, u) = (wq[l][i], wu[l][i]);
                                for k in 0..RN {
                                    let dot = _mm256_cvtepi32_ps($dot(q, u, xq[k]));
                                    acc[k][i] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(prod[k][i][l]),
                                        dot,
                                        acc[k][i],
                                    );
                                }
                            }
                        }
                        for k in 0..RN {
                            parked[b0 + k] = acc[k];
                        }
                        b0 += RN;
                    }
                    c0 += CHUNK;
                }
                for (k, acc_k) in parked.iter().enumerate().take(group) {
                    for (i, acc_ki) in acc_k.iter().enumerate().take(rows - r0) {
                        outs[g0 + k][r0 + i] = hsum8(*acc_ki);
                    }
                }
                g0 += GROUP;
            }
            r0 += RM;
        }
    }};
}
pub(crate) use q40_matmul_body;

/// The tile fetch of [`q40_matmul_body`] over the row layout: `rows[i]`'s block `j`, one by
/// one, and its prefetch. A macro, so that the closures are written inside (and inherit the
/// target features of) the kernel that uses them.
macro_rules! row_tile {
    ($w:expr, $nb:expr) => {
        (
            |rows: &[usize; _], j: usize| {
                let blocks: [&Q40Block; _] = core::array::from_fn(|i| &$w[rows[i] * $nb + j]);
                (blocks.map(|b| q40_codes(b)), blocks.map(|b| scale(b.d)))
            },
            |rows: &[usize; _], j: usize| {
                for &r in rows {
                    // A hint only: the address is never dereferenced.
                    _mm_prefetch::<_MM_HINT_T0>($w.as_ptr().wrapping_add(r * $nb + j).cast());
                }
            },
        )
    };
}

/// Q40 weights · Q80 input in `tinyBLAS_Q0_AVX2` order (both x86 builds), AVX2 registers
/// (4 rows × 2 items per pass).
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
    let ones = _mm256_set1_epi16(1);
    q40_matmul_body!(outs, xs, row_tile!(w, nb), nb, 4, 2, |u, s| {
        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, s))
    })
}

/// As [`matmul_q80_q40_avx2`] (same bits), with AVX-512VL's 32 registers for 4 × 4 passes.
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
    let ones = _mm256_set1_epi16(1);
    q40_matmul_body!(outs, xs, row_tile!(w, nb), nb, 4, 4, |u, s| {
        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, s))
    })
}

/// As [`matmul_q80_q40_avx512`] with `vpdpbusd` (AVX-512 VNNI) for the 4-value dots, as
/// dllama's `-march=native` build on a VNNI CPU compiles `updot`: the same integers, since no
/// pair sum can saturate `vpmaddubsw` here (|w| <= 8).
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
    q40_matmul_body!(outs, xs, row_tile!(w, nb), nb, 4, 4, |u, s| {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
    })
}

/// The tinyBLAS body without dllama's `vpsignb`, for AVX-512 VNNI: the input is offset to
/// unsigned (`x + 128`, an `xor`, once per item and block) and the weight stays signed
/// (`w - 8`), so one `vpdpbusd` started from `-128 · Σ (w - 8)` (per lane of a weight block,
/// computed when the chunk is unpacked) leaves `Σ x · (w - 8)`: one instruction per (row, item,
/// block) fewer than sign + dot. These are dllama's integers for every input code except -128
/// ([`any_min_code`]); the callers take the `vpsignb` form when one is present.
macro_rules! q40_matmul_body_offset {
    ($outs:expr, $xs:expr, $fetch:expr, $nb:expr) => {{
        let zero = _mm256_setzero_si256();
        let offset = _mm256_set1_epi8(i8::MIN);
        q40_matmul_body!(
            $outs,
            $xs,
            $fetch,
            $nb,
            4,
            4,
            |q: __m256i| {
                let bias = _mm256_dpbusd_epi32(zero, offset, q);
                (q, _mm256_sub_epi32(zero, bias))
            },
            |x: __m256i| _mm256_xor_si256(x, offset),
            |q: __m256i, bias: __m256i, x: __m256i| _mm256_dpbusd_epi32(bias, x, q)
        )
    }};
}
pub(crate) use q40_matmul_body_offset;

/// As [`matmul_q80_q40_vnni`] (same bits) in [`q40_matmul_body_offset`]'s form.
///
/// # Safety
/// As [`matmul_q80_q40_vnni`], and no input code is -128 ([`any_min_code`] is false).
#[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn matmul_q80_q40_vnni_offset(
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40Block],
    nb: usize,
) {
    q40_matmul_body_offset!(outs, xs, row_tile!(w, nb), nb)
}

/// Whether some input code is -128: the one code where `vpsignb`'s `-(-128) = -128` makes
/// dllama's integer dot differ from the exact product. dllama's quantizer never writes it
/// (codes are rounded to ±127), but a peer may send any byte. One pass over the input, next to
/// a matmul that reads it once per weight row.
pub(crate) fn any_min_code(xs: &[Q80Block]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const ONES: u64 = 0x0101_0101_0101_0101;
    xs.iter().any(|b| {
        let words: [u64; 4] = bytemuck::cast(b.qs);
        // A -128 byte (0x80) is zero after the xor; `(v - 1…) & !v & 0x80…` is non-zero
        // exactly when some byte of `v` is zero.
        words.iter().fold(0, |found, &w| {
            let v = w ^ HIGH;
            found | (v.wrapping_sub(ONES) & !v & HIGH)
        }) != 0
    })
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

    /// dllama's `gemm<1, 1>`: one output element at a time, every block straight from the
    /// blocks, no chunking, grouping or parked accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn reference_element(w_row: &[Q40Block], x_item: &[Q80Block]) -> f32 {
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        for (wb, xb) in w_row.iter().zip(x_item) {
            let wq = _mm256_sub_epi8(q40_codes(wb), _mm256_set1_epi8(8));
            let s = _mm256_sign_epi8(q80_codes(xb), wq);
            let dot = _mm256_madd_epi16(ones, _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), s));
            let d = _mm256_set1_ps(scale(wb.d) * scale(xb.d));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot), acc);
        }
        hsum8(acc)
    }

    /// The word-at-a-time scan finds a -128 at every position and nothing else.
    #[test]
    fn any_min_code_finds_exactly_minus_128() {
        let block = |qs: [i8; 32]| Q80Block { d: [0; 2], qs };
        let mut qs: [i8; 32] =
            core::array::from_fn(|i| [127, -127, 0, 1, -1, 0x7f, 64, -64][i % 8]);
        assert!(!any_min_code(&[block(qs), block([0; 32])]));
        for i in 0..32 {
            let old = qs[i];
            qs[i] = i8::MIN;
            assert!(any_min_code(&[block([1; 32]), block(qs)]), "position {i}");
            qs[i] = old;
        }
        assert!(!any_min_code(&[]));
    }

    /// Every instantiation must give dllama's per-element bits, also across chunk (`CHUNK`
    /// blocks), group (`GROUP` items), tile tails and beyond `XD_CAP` input blocks (the public
    /// tests only reach the one the host CPU selects, and only small shapes).
    #[test]
    fn every_x86_q40_instantiation_agrees() {
        if Backend::new(Isa::Avx2).is_none() {
            return;
        }
        let avx512 = Backend::new(Isa::Avx512).is_some();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for (d, nb, batch) in [
            (1, 1, 1),
            (5, 3, 2),
            (9, 7, 5),
            (4, 4, 4),
            (13, 2, 9),
            (6, 33, 3),
            (5, 70, 35),
            (3, 32, 33),
            (7, 41, 66),
            (4, 64, 32),
            // More input scales than the body converts up front (`XD_CAP`).
            (3, 300, 33),
        ] {
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
            let run = |x: &[Q80Block], f: Body| {
                let mut out = alloc::vec![0.0f32; d * batch];
                let mut outs: alloc::vec::Vec<&mut [f32]> = out.chunks_mut(d).collect();
                // SAFETY: the CPU has AVX2 + FMA + F16C (checked above), AVX-512 F/BW/DQ/VL and
                // VNNI are checked before their bodies run; shapes are consistent by
                // construction; the offset form gets no -128 code.
                unsafe { f(&mut outs, x, &w, nb) };
                out.iter()
                    .map(|v| v.to_bits())
                    .collect::<alloc::vec::Vec<_>>()
            };
            let reference = |x: &[Q80Block]| {
                let mut bits = alloc::vec::Vec::with_capacity(d * batch);
                for b in 0..batch {
                    for i in 0..d {
                        let (wr, xb) = (&w[i * nb..(i + 1) * nb], &x[b * nb..(b + 1) * nb]);
                        // SAFETY: the CPU has AVX2 + FMA + F16C (checked above).
                        bits.push(unsafe { reference_element(wr, xb) }.to_bits());
                    }
                }
                bits
            };
            assert_eq!(
                run(&x, matmul_q80_q40_avx2),
                reference(&x),
                "{d} {nb} {batch}"
            );
            if avx512 {
                assert_eq!(
                    run(&x, matmul_q80_q40_avx512),
                    reference(&x),
                    "{d} {nb} {batch}"
                );
                if has_avx512_vnni() {
                    assert_eq!(
                        run(&x, matmul_q80_q40_vnni),
                        reference(&x),
                        "{d} {nb} {batch}"
                    );
                    // The offset form is only called without -128 among the codes.
                    let mut no_min = x.clone();
                    for b in &mut no_min {
                        b.qs.iter_mut()
                            .filter(|q| **q == i8::MIN)
                            .for_each(|q| *q = -127);
                    }
                    assert!(!any_min_code(&no_min) && (nb * batch < 4 || any_min_code(&x)));
                    assert_eq!(
                        run(&no_min, matmul_q80_q40_vnni_offset),
                        reference(&no_min),
                        "{d} {nb} {batch}"
                    );
                }
            }
        }
    }
}
