//! Portable matmul bodies: dllama's generic C branches of `matmul_F32_F32_F32` and
//! `matmul_Q80_Q40_F32` (a build without SIMD never takes llamafile's sgemm), unfused.
use crate::block::{Q40Block, Q80Block};
use crate::quant::f16_to_f32;

/// `out[i] = Σ_j w[i][j] · x[j]`, accumulated left to right in one `f32`.
pub(crate) fn matmul_f32(outs: &mut [&mut [f32]], xs: &[f32], w: &[f32], n: usize) {
    for (out, x) in outs.iter_mut().zip(xs.chunks_exact(n.max(1))) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(n.max(1))) {
            let mut val = 0.0f32;
            for (&a, &b) in row.iter().zip(x) {
                val += a * b;
            }
            *o = val;
        }
    }
    if n == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
    }
}

/// Per block: `scale = d_w · d_x`, then for each byte `k` of the weight block,
/// `sum += (w_k · x_k + w_{k+16} · x_{k+16}) · scale` with the integer converted to `f32`.
pub(crate) fn matmul_q80_q40(outs: &mut [&mut [f32]], xs: &[Q80Block], w: &[Q40Block], nb: usize) {
    if nb == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    for (out, x) in outs.iter_mut().zip(xs.chunks_exact(nb)) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
            let mut sum = 0.0f32;
            for (wb, xb) in row.iter().zip(x) {
                let s = f16_to_f32(u16::from_le_bytes(wb.d)) * f16_to_f32(u16::from_le_bytes(xb.d));
                for k in 0..16 {
                    let w0 = i32::from(wb.qs[k] & 0x0f) - 8;
                    let w1 = i32::from(wb.qs[k] >> 4) - 8;
                    let dot = w0 * i32::from(xb.qs[k]) + w1 * i32::from(xb.qs[k + 16]);
                    sum += dot as f32 * s;
                }
            }
            *o = sum;
        }
    }
}
