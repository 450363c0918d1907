//! Matrix-vector products with dllama's summation order per ISA.
//!
//! dllama multiplies a weight matrix `W` (`d` rows of `n` values) by each batch item `x`
//! (`n` values) in one of two orders, chosen per op and batch by `matmulForward_*`:
//!
//! * **Row** (`matmul_F32_F32_F32`, `matmul_Q80_Q40_F32`): used for batch 1, for MoE experts,
//!   and whenever llamafile's `sgemm` declines.
//! * **TinyBlas** (llamafile's `tinyBLAS` / `tinyBLAS_Q0_*`): used for batch > 1 when
//!   `llamafile_sgemm` accepts the types and sizes on that build; see [`matmul_order`].
//!
//! Both orders compute each output element on its own: the tile shapes and the thread split of
//! tinyBLAS only decide *which* thread computes an element, never its bits. So the kernels here
//! take any range of weight rows (the caller's thread share, cut with
//! [`crate::parallel::split_range`] over `d` as dllama's row kernel does, or any other split)
//! and any number of batch items, and produce bit-identical elements.
//!
//! Per element, with `dot` the exact integer dot product of one 32-value block:
//!
//! | ISA | F32 · F32 Row | F32 · F32 TinyBlas | Q80 · Q40 Row | Q80 · Q40 TinyBlas |
//! |---|---|---|---|---|
//! | Scalar | `s += w·x` in order, unfused | = Row | `s += (w0·x0 + w1·x16)·scale` per byte pair, unfused | = Row |
//! | Avx2 | 8 lanes `fma`, hsum8 | = Row | `s = fma(dot, scale, s)` per block | 8 lanes of 4-value dots, `fma(scale, dot4, acc)`, hsum8 |
//! | Avx512 | = Avx2 Row | 16 lanes `fma`, hsum16 (`n.is_multiple_of(16)`) | = Avx2 Row | = Avx2 TinyBlas |
//! | Neon | 4 lanes `fma`, `vaddvq` | = Row | 2 accumulators of 4 lanes, `acc + dot4'·scale` unfused | = Row |
//! | NeonDotprod | = Neon | = Row | 4 accumulators, SDOT lanes, unfused | 1 accumulator, SDOT lanes, unfused |
//!
//! (hsum8 adds the high and low 128-bit halves, then lanes 0+2 and 1+3, then those two; hsum16
//! first adds the 256-bit halves; `vaddvq` adds lanes 0+1 and 2+3, then those two.)
//!
//! When `n` is not a multiple of an F32 path's vector width, dllama aborts on an assertion;
//! these kernels instead treat the row as padded with zeros, which adds nothing to any lane.
use crate::backend::{Backend, Isa};
use crate::block::{BLOCK_SIZE, FloatType, Q40Block, Q80Block};
use crate::quant::foreign_isa;
use crate::scalar;

/// The `R` weight rows from `r0` of a row-major `w` with `row_len` elements per row, as the
/// row-tiled kernels take them: rows past `rows` repeat the last row (their results are
/// discarded), so a tail tile needs no separate code path.
#[cfg(any(
    target_arch = "aarch64",
    all(target_arch = "x86_64", target_feature = "sse2")
))]
#[inline(always)]
pub(crate) fn row_tile<T, const R: usize>(
    w: &[T],
    r0: usize,
    rows: usize,
    row_len: usize,
) -> [&[T]; R] {
    core::array::from_fn(|i| {
        let r = (r0 + i).min(rows - 1);
        &w[r * row_len..(r + 1) * row_len]
    })
}

/// Which dllama kernel (and so which summation order) a matmul runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulOrder {
    /// dllama's per-row kernel (`matmul_F32_F32_F32`, `matmul_Q80_Q40_F32`).
    Row,
    /// llamafile's tinyBLAS, as linked into dllama (`llamafile_sgemm`).
    TinyBlas,
}

/// The order dllama's build for `backend`'s ISA uses for one MATMUL op, or `None` when dllama
/// has no CPU kernel for the pair (its `getCpuOpForward` knows only F32·F32 and Q80 input ·
/// Q40 weights).
///
/// `contiguous_single_z` is dllama's own precondition for trying `llamafile_sgemm`: the input
/// and output batch rows are contiguous in memory and the op has one Z slice (no MoE experts).
/// `n` is the number of values per weight row (dllama's `weightSize.y`).
///
/// The per-ISA acceptance mirrors `llamafile_sgemm`: F32 needs `n.is_multiple_of(16)` (AVX-512 build),
/// `n.is_multiple_of(8)` (AVX2 build) or a batch of at least 4 and `n.is_multiple_of(4)` (AArch64); Q40 weights
/// with Q80 input are always taken on x86 (`tinyBLAS_Q0_AVX2`) and with dotprod
/// (`tinyBLAS_Q0_ARM`), never on plain NEON; a build without SIMD never takes it.
pub fn matmul_order(
    backend: Backend,
    batch_size: usize,
    n: usize,
    weight_type: FloatType,
    input_type: FloatType,
    contiguous_single_z: bool,
) -> Option<MatmulOrder> {
    let pair = match (weight_type, input_type) {
        (FloatType::F32, FloatType::F32) => FloatType::F32,
        (FloatType::Q40, FloatType::Q80) => FloatType::Q40,
        _ => return None,
    };
    if batch_size <= 1 || !contiguous_single_z {
        return Some(MatmulOrder::Row);
    }
    let sgemm = match (backend.isa(), pair) {
        (Isa::Scalar, _) => false,
        (Isa::Avx512, FloatType::F32) => n.is_multiple_of(16),
        (Isa::Avx2, FloatType::F32) => n.is_multiple_of(8),
        (Isa::Neon | Isa::NeonDotprod, FloatType::F32) => batch_size >= 4 && n.is_multiple_of(4),
        (Isa::Avx2 | Isa::Avx512 | Isa::NeonDotprod, _) => true,
        (Isa::Neon, _) => false,
    };
    Some(if sgemm {
        MatmulOrder::TinyBlas
    } else {
        MatmulOrder::Row
    })
}

/// Checks the shapes shared by both matmuls and returns the number of weight rows.
fn rows_of(outs: &[&mut [f32]], xs_len: usize, w_len: usize, row_len: usize) -> usize {
    let rows = outs.first().map_or(0, |o| o.len());
    assert!(
        outs.iter().all(|o| o.len() == rows),
        "matmul: output rows differ in length"
    );
    assert_eq!(
        xs_len,
        outs.len() * row_len,
        "matmul: input is not one row per output"
    );
    assert_eq!(
        w_len,
        rows * row_len,
        "matmul: weights are not one row per output value"
    );
    rows
}

/// `outs[b][i] = dot(w_rows[i], xs[b])` for F32 weights and input, in dllama's `order` for
/// `backend` (see the module table).
///
/// `w_rows` holds the weight rows this call computes (`outs[b].len()` rows of `n` values, row
/// major), `xs` holds `outs.len()` input rows of `n` values back to back.
///
/// # Panics
/// If the lengths disagree as described.
pub fn matmul_f32(
    backend: Backend,
    order: MatmulOrder,
    outs: &mut [&mut [f32]],
    xs: &[f32],
    w_rows: &[f32],
    n: usize,
) {
    rows_of(outs, xs.len(), w_rows.len(), n);
    match (backend.isa(), order) {
        (Isa::Scalar, _) => scalar::matmul::matmul_f32(outs, xs, w_rows, n),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        (Isa::Avx512, MatmulOrder::TinyBlas) => {
            // SAFETY: `backend` proves AVX-512 F (and AVX2 + FMA under it).
            unsafe { crate::arch::x86::tinyblas::matmul_f32_avx512(outs, xs, w_rows, n) }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        (Isa::Avx2 | Isa::Avx512, _) => {
            // SAFETY: `backend` proves AVX2 + FMA (Avx512 implies them).
            unsafe { crate::arch::x86::matmul::matmul_f32_avx2(outs, xs, w_rows, n) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon | Isa::NeonDotprod, _) => {
            // SAFETY: `backend` proves NEON.
            unsafe { crate::arch::aarch64::matmul::matmul_f32_neon(outs, xs, w_rows, n) }
        }
        #[allow(unreachable_patterns)]
        (other, _) => foreign_isa(other),
    }
}

/// `outs[b][i] = dot(w_rows[i], xs[b])` for Q40 weights and Q80 input, in dllama's `order` for
/// `backend` (see the module table). `n` is the number of values per row (a multiple of 32).
///
/// `w_rows` holds `outs[b].len()` rows of `n / 32` blocks, `xs` holds `outs.len()` input rows
/// of `n / 32` blocks back to back.
///
/// # Panics
/// If `n % 32 != 0` or the lengths disagree as described.
pub fn matmul_q80_q40(
    backend: Backend,
    order: MatmulOrder,
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w_rows: &[Q40Block],
    n: usize,
) {
    assert_eq!(
        n % BLOCK_SIZE,
        0,
        "matmul_q80_q40: n is not a whole number of blocks"
    );
    let nb = n / BLOCK_SIZE;
    rows_of(outs, xs.len(), w_rows.len(), nb);
    match (backend.isa(), order) {
        (Isa::Scalar, _) => scalar::matmul::matmul_q80_q40(outs, xs, w_rows, nb),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        (Isa::Avx2, MatmulOrder::TinyBlas) => {
            // SAFETY: `backend` proves AVX2 + FMA + F16C.
            unsafe { crate::arch::x86::tinyblas::matmul_q80_q40_avx2(outs, xs, w_rows, nb) }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        (Isa::Avx512, MatmulOrder::TinyBlas) => {
            use crate::arch::x86::tinyblas::{
                any_min_code, has_avx512_vnni, matmul_q80_q40_avx512, matmul_q80_q40_vnni,
                matmul_q80_q40_vnni_offset,
            };
            if has_avx512_vnni() {
                // SAFETY: `backend` proves AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C, and
                // VNNI was just detected; the offset form only gets inputs without -128.
                unsafe {
                    if any_min_code(xs) {
                        matmul_q80_q40_vnni(outs, xs, w_rows, nb)
                    } else {
                        matmul_q80_q40_vnni_offset(outs, xs, w_rows, nb)
                    }
                }
            } else {
                // SAFETY: `backend` proves AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C.
                unsafe { matmul_q80_q40_avx512(outs, xs, w_rows, nb) }
            }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        (Isa::Avx2 | Isa::Avx512, MatmulOrder::Row) => {
            // SAFETY: `backend` proves AVX2 + FMA + F16C (Avx512 implies them).
            unsafe { crate::arch::x86::matmul::matmul_q80_q40_avx2(outs, xs, w_rows, nb) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::NeonDotprod, MatmulOrder::TinyBlas) => {
            // SAFETY: `backend` proves NEON + dotprod.
            unsafe { crate::arch::aarch64::tinyblas::matmul_q80_q40_dotprod(outs, xs, w_rows, nb) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::NeonDotprod, MatmulOrder::Row) => {
            // SAFETY: `backend` proves NEON + dotprod.
            unsafe { crate::arch::aarch64::matmul::matmul_q80_q40_dotprod(outs, xs, w_rows, nb) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, _) => {
            // SAFETY: `backend` proves NEON.
            unsafe { crate::arch::aarch64::matmul::matmul_q80_q40_neon(outs, xs, w_rows, nb) }
        }
        #[allow(unreachable_patterns)]
        (other, _) => foreign_isa(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_llamafile_acceptance() {
        let s = Backend::scalar();
        assert_eq!(
            matmul_order(s, 32, 4096, FloatType::Q40, FloatType::Q80, true),
            Some(MatmulOrder::Row)
        );
        assert_eq!(
            matmul_order(s, 32, 4096, FloatType::Q80, FloatType::Q40, true),
            None
        );
        assert_eq!(
            matmul_order(s, 1, 4096, FloatType::F16, FloatType::F32, true),
            None
        );
        for b in Backend::all_supported() {
            assert_eq!(
                matmul_order(b, 1, 4096, FloatType::F32, FloatType::F32, true),
                Some(MatmulOrder::Row)
            );
            assert_eq!(
                matmul_order(b, 8, 4096, FloatType::Q40, FloatType::Q80, false),
                Some(MatmulOrder::Row)
            );
            let q = matmul_order(b, 8, 4096, FloatType::Q40, FloatType::Q80, true);
            let expected = match b.isa() {
                Isa::Avx2 | Isa::Avx512 | Isa::NeonDotprod => MatmulOrder::TinyBlas,
                Isa::Scalar | Isa::Neon => MatmulOrder::Row,
            };
            assert_eq!(q, Some(expected));
            let f = matmul_order(b, 2, 8 * 3, FloatType::F32, FloatType::F32, true);
            let expected = match b.isa() {
                Isa::Avx2 => MatmulOrder::TinyBlas,
                _ => MatmulOrder::Row,
            };
            assert_eq!(f, Some(expected), "{b:?}");
        }
    }
}
