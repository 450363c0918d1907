//! Element-wise ops: MERGE_ADD, MERGE_SUM, MUL, SCALE and the byte copies of CAST (same type),
//! SHIFT, EMBEDDING (F32) and REPEAT_Z.
use crate::backend::Backend;
use crate::block::{BLOCK_SIZE, Q80Block};

/// MERGE_ADD with an F32 input: `output[i] += input[i]` (dllama `add_F32`).
///
/// One addition per element, so the bits do not depend on the ISA or on the split.
///
/// Executor (`mergeAddForward_F32_F32`): for each batch item, for each of the
/// `input.x / output.x` slices in order, split `0..output.x` with `split_range` and pass
/// `output[r]` and `slice[r]` (`slice` = the input row's `sliceIndex`-th `output.x` values).
/// Slices must be added in order (the sum is not associative).
///
/// # Panics
/// If the lengths differ.
pub fn merge_add_f32(backend: Backend, output: &mut [f32], input: &[f32]) {
    let _ = backend;
    assert_eq!(output.len(), input.len(), "merge_add_f32: length mismatch");
    for (o, &x) in output.iter_mut().zip(input) {
        *o += x;
    }
}

/// MERGE_ADD with a Q80 input: `output[j] += d * q[j]` per block (dllama `add_Q80_F32`).
///
/// AVX2 and NEON: one fused multiply-add per value (g++ contracts the `_mm256_mul_ps` +
/// `_mm256_add_ps` and `vmulq_n_f32` + `vaddq_f32` pairs into `vfmadd`/`fmla`); scalar: unfused.
/// The result does not depend on the split.
///
/// Executor (`mergeAddForward_Q80_F32`): for each batch item, for each slice in order, split the
/// block range `0..output.x / 32` with `split_range` and pass `output[32 * r]` and the slice's
/// blocks `[r]`.
///
/// # Panics
/// If `output.len() != 32 * input.len()`.
pub fn merge_add_q80(backend: Backend, output: &mut [f32], input: &[Q80Block]) {
    assert_eq!(
        output.len(),
        input.len() * BLOCK_SIZE,
        "merge_add_q80: length mismatch"
    );
    dispatch!(backend, add_q80(output, input))
}

/// MERGE_SUM: `output[x] = 0 + inputs[0][x] + inputs[1][x] + …` in that order (dllama
/// `mergeSum_F32`; the z inputs of batch item `y` are rows `y + z * nBatches`).
///
/// Additions only, so the bits do not depend on the ISA or the split.
///
/// Executor (`mergeSumForward_F32_F32`): split `0..output.x` with `split_range`; for each batch
/// item pass `output[r]` and the item's `input.z` rows, each cut to `[r]`.
///
/// # Panics
/// If an input is shorter than `output`.
pub fn merge_sum(backend: Backend, output: &mut [f32], inputs: &[&[f32]]) {
    let _ = backend;
    for input in inputs {
        assert!(
            input.len() >= output.len(),
            "merge_sum: input shorter than output"
        );
    }
    output.fill(0.0);
    for input in inputs {
        for (o, &x) in output.iter_mut().zip(*input) {
            *o += x;
        }
    }
}

/// MUL with an F32 multiplier: `output[i] = input[i] * multiplier[i]` (dllama `mul_F32`).
///
/// One product per element: the bits do not depend on the ISA or the split.
///
/// Executor (`mulForward_F32_F32`): for each z, for each batch item (`row = z * input.y + y`),
/// split `0..output.x` with `split_range` and pass `output_row[r]`, `input_row[r]` and
/// `multiplier[output.x * row ..][r]`.
///
/// # Panics
/// If the lengths differ.
pub fn mul_f32(backend: Backend, output: &mut [f32], input: &[f32], multiplier: &[f32]) {
    let _ = backend;
    assert_eq!(output.len(), input.len(), "mul_f32: length mismatch");
    assert_eq!(output.len(), multiplier.len(), "mul_f32: length mismatch");
    for ((o, &x), &m) in output.iter_mut().zip(input).zip(multiplier) {
        *o = x * m;
    }
}

/// MUL with a Q80 multiplier: `output[k] = (input[k] * d) * q[k]` (dllama `mul_Q80_F32`;
/// dllama's op table has no forward for it yet, the kernel is kept for when it does).
///
/// Products only: the bits do not depend on the ISA or the split.
///
/// Executor: split the block range `0..x / 32` and pass `output[32 * r]`, `input[32 * r]` and
/// `multiplier[r]`.
///
/// # Panics
/// If `output.len() != input.len()` or `output.len() != 32 * multiplier.len()`.
pub fn mul_q80(backend: Backend, output: &mut [f32], input: &[f32], multiplier: &[Q80Block]) {
    let _ = backend;
    assert_eq!(output.len(), input.len(), "mul_q80: length mismatch");
    assert_eq!(
        output.len(),
        multiplier.len() * BLOCK_SIZE,
        "mul_q80: length mismatch"
    );
    for ((out, inp), block) in output
        .chunks_exact_mut(BLOCK_SIZE)
        .zip(input.chunks_exact(BLOCK_SIZE))
        .zip(multiplier)
    {
        let d = block.scale().to_f32();
        for ((o, &x), &q) in out.iter_mut().zip(inp).zip(&block.qs) {
            *o = x * d * f32::from(q);
        }
    }
}

/// SCALE: `output[i] = input[i] * s` (dllama `scale_F32`).
///
/// dllama strides the elements between threads (`i = threadIndex; i += nThreads`) instead of
/// splitting a range; one product per element makes any partition give the same bits, so the
/// executor may pass a `split_range` part (or the whole row from one thread).
///
/// Executor (`scaleForward_F32_F32`): for each z, for each batch item (`row = z * input.y + y`),
/// `s = scale_buffer[row]`.
///
/// # Panics
/// If the lengths differ.
pub fn scale(backend: Backend, output: &mut [f32], input: &[f32], s: f32) {
    let _ = backend;
    assert_eq!(output.len(), input.len(), "scale: length mismatch");
    for (o, &x) in output.iter_mut().zip(input) {
        *o = x * s;
    }
}

/// A plain copy (dllama `copy_UNK`): CAST between equal types (`castForward_ANY`), SHIFT
/// (`shiftForward_F32_F32`: the input row goes to `output[index * x ..]`), EMBEDDING to F32 (the
/// token's row of the embedding matrix) and REPEAT_Z for `z > 0` (a copy of the z = 0 output).
///
/// dllama splits the row's bytes with `SPLIT_THREADS`; a copy gives the same bytes for any
/// split, so the executor may pass any partition of the row.
///
/// # Panics
/// If the lengths differ.
pub fn copy<T: Copy>(backend: Backend, output: &mut [T], input: &[T]) {
    let _ = backend;
    output.copy_from_slice(input);
}
