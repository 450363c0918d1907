//! llamafile's tinyBLAS element order as dllama's AArch64 dotprod build runs it for batched
//! Q40·Q80 matmuls (`tinyBLAS_Q0_ARM`): one 4-lane accumulator per output element, per block
//! `acc = acc + float(sdot lanes) · (d_w · d_x)` (`vmlaq_n_f32`, which GCC 12 emits as `fmul`
//! then `fadd`), and `vaddvq_f32` at the end.
//!
//! The tile shape and thread split of tinyBLAS only decide which thread computes an element;
//! the tile here (rows × batch items) is chosen for this code's registers. F32 tinyBLAS on
//! AArch64 (`tinyBLAS<4, float32x4_t>`) equals the per-row F32 kernel and lives there.
use crate::matmul::row_tile;
use core::arch::aarch64::*;

use super::matmul::{block_scale, hsum4, lanes_sdot, mla_unfused, q40_values, q80_values};
use crate::block::{Q40Block, Q80Block};

/// Weight rows per tile.
const RM: usize = 3;
/// Batch items per tile.
const RN: usize = 3;

/// Q40 weights · Q80 input in `tinyBLAS_Q0_ARM` order.
///
/// # Safety
/// The CPU must support NEON and dotprod. Shapes as checked by
/// [`crate::matmul::matmul_q80_q40`]; `nb` is the number of blocks per row.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn matmul_q80_q40_dotprod(
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
    // Rows outside, items inside (as tinyBLAS orders its tiles): a tile's weight rows stay in
    // cache while every batch item passes over them.
    let mut r0 = 0;
    while r0 < rows {
        let row: [&[Q40Block]; RM] = row_tile(w, r0, rows, nb);
        let mut b0 = 0;
        while b0 < items {
            // Items past the end repeat the last item; their results are discarded.
            let x: [&[Q80Block]; RN] = core::array::from_fn(|k| {
                let b = (b0 + k).min(items - 1);
                &xs[b * nb..(b + 1) * nb]
            });
            let mut acc = [[vdupq_n_f32(0.0); RM]; RN];
            for l in 0..nb {
                let wv: [_; RM] = core::array::from_fn(|i| q40_values(&row[i][l]));
                for (acc_b, xb) in acc.iter_mut().zip(x) {
                    let xv = q80_values(&xb[l]);
                    for ((a, &wvi), r) in acc_b.iter_mut().zip(&wv).zip(row) {
                        *a = mla_unfused(*a, lanes_sdot(wvi, xv), block_scale(&r[l], &xb[l]));
                    }
                }
            }
            for (k, acc_b) in acc.iter().enumerate() {
                if b0 + k < items {
                    for (i, a) in acc_b.iter().enumerate() {
                        if r0 + i < rows {
                            outs[b0 + k][r0 + i] = hsum4(*a);
                        }
                    }
                }
            }
            b0 += RN;
        }
        r0 += RM;
    }
}
