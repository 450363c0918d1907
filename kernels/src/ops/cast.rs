//! CAST, EMBEDDING, REPEAT_Z and SHIFT: the ops that move rows, converting F32 ↔ Q80 with the
//! quantizers of [`crate::quant`].
use crate::backend::Backend;
use crate::block::Q80Block;

/// CAST F32 → Q80 (dllama `castForward_F32_Q80` → `quantizeF32toQ80`), also the body of
/// EMBEDDING to Q80 (`embeddingForward_F32_F32_Q80`: the input row is the token's embedding row)
/// and of REPEAT_Z at `z = 0` (`repeatZForward_F32_Q80`).
///
/// Executor: for each z (`row = z * input.y + y`; EMBEDDING and REPEAT_Z: z = 0 only), for each
/// batch item, split the block range `0..x / 32` with `split_range` and pass
/// `output_row[r]` and `input_row[32 * r]`. Blocks are independent: the split never changes a
/// byte. REPEAT_Z then copies output row `y` to rows `z * output.y + y` for `z ≥ 1`
/// ([`crate::ops::copy`], any split).
///
/// # Panics
/// If `input.len() != 32 * output.len()`.
pub fn cast_f32_to_q80(backend: Backend, output: &mut [Q80Block], input: &[f32]) {
    crate::quant::quantize_q80(backend, input, output)
}

/// CAST Q80 → F32 (dllama `castForward_Q80_F32` → `dequantizeQ80toF32`): `qs[j] · d`, the same
/// on every ISA. Executor as [`cast_f32_to_q80`] (split the block range).
///
/// # Panics
/// If `output.len() != 32 * input.len()`.
pub fn cast_q80_to_f32(backend: Backend, output: &mut [f32], input: &[Q80Block]) {
    crate::quant::dequantize_q80(backend, input, output)
}

/// The row index dllama derives from a float pipe value: `(NnUint)value` for a token
/// (EMBEDDING) or `(NnSize)value` for a SHIFT destination, i.e. truncation toward zero.
/// `None` where that conversion is undefined in C++ (NaN, negative beyond `-1 < v`, too large)
/// or the row is not below `n_rows`, which dllama does not check.
pub fn row_index(value: f32, n_rows: usize) -> Option<usize> {
    if !(value > -1.0 && value < 4_294_967_296.0) {
        return None;
    }
    let index = value as u32 as usize;
    (index < n_rows).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_index_truncates_and_checks() {
        assert_eq!(row_index(3.9, 10), Some(3));
        assert_eq!(row_index(-0.5, 10), Some(0));
        assert_eq!(row_index(10.0, 10), None);
        assert_eq!(row_index(f32::NAN, 10), None);
        assert_eq!(row_index(-1.0, 10), None);
        assert_eq!(row_index(1e20, usize::MAX), None);
    }
}
