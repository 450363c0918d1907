//! Q40 quantization exactly as dllama's converter rounds (`writeQuantizedQ40Tensor` in
//! `converter/writer.py`).
//!
//! Per block of 32 values, all in f32 as numpy computes them:
//!
//! 1. `extreme` = the minimum if `-min > max`, else the maximum (the signed value of largest
//!    magnitude, ties going to the maximum);
//! 2. `delta = extreme / -8` (stored as f16, rounded to nearest even);
//! 3. `id = 1 / delta` from the *f32* delta (0 when delta is 0);
//! 4. code = `x * id + 8.5`, clipped to [0, 15], truncated toward zero.
//!
//! The scale written is the rounded f16 delta while the codes use the unrounded f32 inverse:
//! reproducing both keeps converted files byte-identical to dllama's.
use airllama_kernels::block::{BLOCK_SIZE, Q40Block};
use half::f16;

/// Quantizes one block of 32 values.
pub fn quantize_q40_block(x: &[f32; BLOCK_SIZE]) -> Q40Block {
    let mut max = x[0];
    let mut min = x[0];
    for &v in &x[1..] {
        if v > max {
            max = v;
        }
        if v < min {
            min = v;
        }
    }
    let extreme = if -min > max { min } else { max };
    let delta = extreme / -8.0f32;
    let inverse = if delta != 0.0 { 1.0f32 / delta } else { 0.0 };
    let code = |v: f32| (v * inverse + 8.5f32).clamp(0.0, 15.0) as u8;
    let mut qs = [0u8; 16];
    for (j, q) in qs.iter_mut().enumerate() {
        *q = code(x[j]) | (code(x[j + 16]) << 4);
    }
    Q40Block {
        d: f16::from_f32(delta).to_le_bytes(),
        qs,
    }
}

/// Quantizes `x` (a multiple of 32 values long; a shorter tail is ignored) and appends the
/// blocks' bytes to `out`.
pub fn quantize_q40_into(x: &[f32], out: &mut Vec<u8>) {
    for chunk in x.chunks_exact(BLOCK_SIZE) {
        let mut block = [0f32; BLOCK_SIZE];
        block.copy_from_slice(chunk);
        out.extend_from_slice(bytemuck::bytes_of(&quantize_q40_block(&block)));
    }
}

/// Largest `|dequantized − x|` over `x` and its Q40 blocks `q` (as written by
/// [`quantize_q40_into`]), dequantizing as dllama does: `(code − 8) · f16 scale`.
pub fn max_abs_error(x: &[f32], q: &[u8]) -> f32 {
    rounding_error(x, q).0
}

/// The largest `|dequantized − x|` and the sum of the squared differences (for a mean), over
/// `x` and its Q40 blocks `q` (see [`max_abs_error`]).
pub fn rounding_error(x: &[f32], q: &[u8]) -> (f32, f64) {
    let mut max = 0f32;
    let mut sum_sq = 0f64;
    let block_bytes = std::mem::size_of::<Q40Block>();
    for (values, block) in x.chunks_exact(BLOCK_SIZE).zip(q.chunks_exact(block_bytes)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (j, &byte) in block[2..].iter().enumerate() {
            let low = (f32::from(byte & 0x0f) - 8.0) * d - values[j];
            let high = (f32::from(byte >> 4) - 8.0) * d - values[j + 16];
            max = max.max(low.abs()).max(high.abs());
            sum_sq += f64::from(low) * f64::from(low) + f64::from(high) * f64::from(high);
        }
    }
    (max, sum_sq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_has_negative_zero_scale_and_code_8() {
        // 0 / -8 is -0.0 in IEEE arithmetic, and numpy stores it as the f16 bits 0x8000.
        let b = quantize_q40_block(&[0.0; 32]);
        assert_eq!(b.d, [0x00, 0x80]);
        assert_eq!(b.qs, [0x88; 16]);
    }

    #[test]
    fn error_is_within_one_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 30.0) / 7.0)
            .collect();
        let mut q = Vec::new();
        quantize_q40_into(&x, &mut q);
        let e = max_abs_error(&x, &q);
        // The extreme (33/7) is exact; everything else is within a step of 33/56 (the far end
        // clips at 7 steps on the other side).
        let step = 33.0 / 7.0 / 8.0;
        assert!(e > 0.0 && e <= step * 1.01, "{e} vs step {step}");
        assert_eq!(
            max_abs_error(&[0.0; 32], &{
                let mut z = Vec::new();
                quantize_q40_into(&[0.0; 32], &mut z);
                z
            }),
            0.0
        );
    }

    #[test]
    fn extreme_value_maps_to_code_0() {
        // max 1 dominates: delta = -0.125, inverse = -8; 1 * -8 + 8.5 = 0.5 -> 0.
        let mut x = [0.0f32; 32];
        x[0] = 1.0;
        x[17] = -1.0; // -1 * -8 + 8.5 = 16.5 -> clipped to 15
        let b = quantize_q40_block(&x);
        assert_eq!(f16::from_le_bytes(b.d).to_f32(), -0.125);
        assert_eq!(b.qs[0], 0x80);
        assert_eq!(b.qs[1], 0xf8);
    }
}
