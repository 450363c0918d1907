//! INV_RMS and RMS_NORM.
use crate::backend::Backend;
use crate::block::{BLOCK_SIZE, Q80Block};

/// `1 / sqrt(mean(x²) + epsilon)` of one column (dllama `invRms_F32`).
///
/// AVX2: 8 FMA accumulator lanes (`u = a·a + u`) and dllama's `horizontalSum_avx2`; NEON: 4
/// lanes accumulated unfused (g++ keeps `vmlaq_f32` as `fmul` + `fadd`) and `vaddvq_f32`; scalar:
/// one running sum. Then `sum / n + epsilon`, a correctly rounded square root and a division.
/// dllama asserts `n % 8 == 0` (AVX2) / `n % 4 == 0` (NEON); for other lengths the last values
/// are added into the first lanes as if the vector were zero-padded.
///
/// Not split: the executor (`invRmsForward_F32_F32`) gives thread `t` the batch items
/// `t, t + nThreads, …`; for each item and column `c` it calls this on
/// `row[c * colSize .. (c + 1) * colSize]` (`colSize = input.x / nColumns`) and stores the
/// result at `output_row[c]`.
pub fn inv_rms(backend: Backend, x: &[f32], epsilon: f32) -> f32 {
    dispatch!(backend, inv_rms(x, epsilon))
}

/// RMS_NORM with an F32 input: `output[i] = w[i] · (inv_rms · x[i])` (dllama `rmsNorm_F32`).
///
/// The association of the two products differs per build: AVX2 computes `(x · inv_rms) · w`
/// and its tail `w · (inv_rms · x)` (the same bits, products commute), scalar the latter, but
/// NEON computes `(x · w) · inv_rms` on its 4-lane part (the first `len - len % 4` values of the
/// thread's part) and `w · (inv_rms · x)` on the tail. So on NEON the split matters.
///
/// Executor (`rmsNormForward_F32_F32_F32`): for each batch item, for each column `c`, split
/// `0..colSize` (`colSize = weight.x`) with `split_range` and pass
/// `output_row[c * colSize ..][r]`, `input_row[c * colSize ..][r]`, `weight[r]` and
/// `inv_rms_buffer[item * invRmsBufferX + c]`.
///
/// # Panics
/// If the lengths differ.
pub fn rms_norm_f32(backend: Backend, output: &mut [f32], x: &[f32], weight: &[f32], inv_rms: f32) {
    assert_eq!(output.len(), x.len(), "rms_norm_f32: length mismatch");
    assert_eq!(output.len(), weight.len(), "rms_norm_f32: length mismatch");
    dispatch!(backend, rms_norm_f32(output, x, weight, inv_rms))
}

/// RMS_NORM with a Q80 input: `output[k] = w[k] · ((inv_rms · d) · q[k])` (dllama
/// `rmsNorm_Q80_F32_F32`, scalar C++ on every ISA; products only, so every ISA and split gives
/// the same bits).
///
/// Executor (`rmsNormForward_Q80_F32_F32`, one column): for each batch item split the block range
/// `0..x / 32` and pass `output_row[32 * r]`, `input_row[r]`, `weight[32 * r]` and
/// `inv_rms_buffer[item]` (dllama indexes the inv-rms buffer by the batch index alone here).
///
/// # Panics
/// If `output.len() != 32 * x.len()` or `weight.len() != output.len()`.
pub fn rms_norm_q80(
    backend: Backend,
    output: &mut [f32],
    x: &[Q80Block],
    weight: &[f32],
    inv_rms: f32,
) {
    let _ = backend;
    assert_eq!(
        output.len(),
        x.len() * BLOCK_SIZE,
        "rms_norm_q80: length mismatch"
    );
    assert_eq!(output.len(), weight.len(), "rms_norm_q80: length mismatch");
    for ((out, w), block) in output
        .chunks_exact_mut(BLOCK_SIZE)
        .zip(weight.chunks_exact(BLOCK_SIZE))
        .zip(x)
    {
        let d = block.scale().to_f32();
        for ((o, &w), &q) in out.iter_mut().zip(w).zip(&block.qs) {
            *o = w * (inv_rms * d * f32::from(q));
        }
    }
}
