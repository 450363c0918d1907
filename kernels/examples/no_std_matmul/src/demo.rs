//! The demo's code, free of crate attributes so the hosted example can include it too.
use airllama_kernels::backend::Backend;
use airllama_kernels::block::{BLOCK_SIZE, Q40Block, Q80Block};
use airllama_kernels::matmul::{MatmulOrder, matmul_q80_q40};
use airllama_kernels::quant::{quantize_q40, quantize_q80};

/// Values per row: two blocks.
pub const N: usize = 2 * BLOCK_SIZE;

/// `W · x` for a fixed 2 x [`N`] weight matrix and input, through Q40 weights and Q80 input.
pub fn demo() -> [f32; 2] {
    let backend = Backend::scalar();
    // Row 0 ramps up, row 1 is constant; the input alternates sign every 8 values.
    let mut w = [0f32; 2 * N];
    for (i, v) in w.iter_mut().enumerate() {
        *v = if i < N { i as f32 / N as f32 } else { 0.25 };
    }
    let mut x = [0f32; N];
    for (i, v) in x.iter_mut().enumerate() {
        *v = if (i / 8) % 2 == 0 { 1.0 } else { -0.5 };
    }
    let mut wq = [Q40Block::default(); 2 * N / BLOCK_SIZE];
    quantize_q40(backend, &w, &mut wq);
    let mut xq = [Q80Block::default(); N / BLOCK_SIZE];
    quantize_q80(backend, &x, &mut xq);
    let mut out = [0f32; 2];
    // One output row (batch of 1) holding one value per weight row.
    matmul_q80_q40(backend, MatmulOrder::Row, &mut [&mut out[..]], &xq, &wq, N);
    out
}

/// The same product in plain f32, to compare with [`demo`] (quantization costs a little).
pub fn reference() -> [f32; 2] {
    let mut out = [0f32; 2];
    for (r, o) in out.iter_mut().enumerate() {
        for i in 0..N {
            let w = if r == 0 { i as f32 / N as f32 } else { 0.25 };
            let x = if (i / 8) % 2 == 0 { 1.0 } else { -0.5 };
            *o += w * x;
        }
    }
    out
}
