//! Q40 weights interleaved eight rows at a time ([`Q40x8Block`]), and the matmuls over them.
//!
//! dllama keeps every weight row's blocks together, and so does the wire. A per-row SIMD kernel
//! over that layout computes several rows' block sums in separate registers and must reduce
//! each one horizontally, then gather the rows' scales one by one. Interleaving eight rows at
//! load time puts four code bytes of every row into one register, so `vpmaddubsw` + `vpmaddwd`
//! leave row `r`'s exact integer block sum in lane `r`, and the eight scales convert in one
//! instruction (llama.cpp's CPU backend repacks Q4_0 the same way, with other byte orders).
//!
//! **Exactness.** Each output element is still `sum = fma(float(block_sum), d_w · d_x, sum)`
//! over its row's blocks in order (the row kernel's sequence of operations), and in the
//! tinyBLAS order every element sees the same 4-value dots and lane accumulators as over the
//! row layout: only where values sit in memory changes, never an operation or its order, so
//! the results are bit-identical to [`crate::matmul::matmul_q80_q40`] (property-tested).
//!
//! Matrices whose row count is not a multiple of 8 stay in the row layout; so do layers
//! streamed from disk (their bytes are used once per forward, a repack would cost a pass).
use crate::backend::{Backend, Isa};
use crate::block::{BLOCK_SIZE, Q40Block, Q40x8Block, Q80Block};
use crate::matmul::MatmulOrder;

/// Rows interleaved per [`Q40x8Block`].
pub const ROWS_PER_GROUP: usize = 8;

/// Whether `backend` has matmul kernels for the interleaved layout (x86 AVX2 and AVX-512 so
/// far; elsewhere the executor keeps the row layout).
pub fn supports_q40x8(backend: Backend) -> bool {
    cfg!(all(target_arch = "x86_64", target_feature = "sse2"))
        && matches!(backend.isa(), Isa::Avx2 | Isa::Avx512)
}

/// Interleaves `rows.len() / nb` rows of `nb` blocks each (a multiple of 8 rows) into `out`:
/// group `g` (rows `8g..8g + 8`), block column `j` lands at `out[g * nb + j]`.
///
/// # Panics
/// If `nb` is 0, the row count is not a multiple of 8, or `out` has another length.
pub fn pack_q40x8(rows: &[Q40Block], nb: usize, out: &mut [Q40x8Block]) {
    assert!(nb > 0, "pack_q40x8: no blocks per row");
    assert_eq!(
        rows.len() % (nb * ROWS_PER_GROUP),
        0,
        "pack_q40x8: not whole groups of 8 rows"
    );
    assert_eq!(
        out.len() * ROWS_PER_GROUP,
        rows.len(),
        "pack_q40x8: output length"
    );
    for (group, rows) in out
        .chunks_exact_mut(nb)
        .zip(rows.chunks_exact(nb * ROWS_PER_GROUP))
    {
        for r in 0..ROWS_PER_GROUP {
            for (packed, block) in group.iter_mut().zip(&rows[r * nb..(r + 1) * nb]) {
                packed.d[r] = block.d;
                let words: [[u8; 4]; 4] = bytemuck::cast(block.qs);
                for (t, word) in words.into_iter().enumerate() {
                    let lanes: &mut [[u8; 4]; 8] = bytemuck::cast_mut(&mut packed.qs[t]);
                    lanes[r] = word;
                }
            }
        }
    }
}

/// The inverse of [`pack_q40x8`]: back to `out.len() / nb` rows of `nb` blocks.
///
/// # Panics
/// If `nb` is 0 or the lengths disagree as in [`pack_q40x8`].
pub fn unpack_q40x8(packed: &[Q40x8Block], nb: usize, out: &mut [Q40Block]) {
    assert!(nb > 0, "unpack_q40x8: no blocks per row");
    assert_eq!(packed.len() % nb, 0, "unpack_q40x8: not whole groups");
    assert_eq!(
        packed.len() * ROWS_PER_GROUP,
        out.len(),
        "unpack_q40x8: output length"
    );
    for (g, group) in packed.chunks_exact(nb).enumerate() {
        for (j, p) in group.iter().enumerate() {
            for r in 0..ROWS_PER_GROUP {
                out[(g * ROWS_PER_GROUP + r) * nb + j] = row_block(p, r);
            }
        }
    }
}

/// Row `r`'s block out of an interleaved block.
#[inline(always)]
pub(crate) fn row_block(p: &Q40x8Block, r: usize) -> Q40Block {
    let mut qs = [0u8; 16];
    for t in 0..4 {
        qs[4 * t..4 * t + 4].copy_from_slice(&p.qs[t][4 * r..4 * r + 4]);
    }
    Q40Block { d: p.d[r], qs }
}

/// `outs[b][i] = dot(row i, xs[b])` over interleaved weights, bit-identical to
/// [`crate::matmul::matmul_q80_q40`] with the same `order` over the same rows in row layout.
///
/// `w` holds `outs[b].len() / 8` groups of `n / 32` interleaved blocks (a whole number of
/// groups: callers split rows between threads in multiples of 8), `xs` holds `outs.len()`
/// input rows of `n / 32` blocks back to back.
///
/// # Panics
/// If [`supports_q40x8`] is false for `backend`, `n % 32 != 0`, or the lengths disagree.
pub fn matmul_q80_q40x8(
    backend: Backend,
    order: MatmulOrder,
    outs: &mut [&mut [f32]],
    xs: &[Q80Block],
    w: &[Q40x8Block],
    n: usize,
) {
    assert_eq!(
        n % BLOCK_SIZE,
        0,
        "matmul_q80_q40x8: n is not a whole number of blocks"
    );
    let nb = n / BLOCK_SIZE;
    let rows = outs.first().map_or(0, |o| o.len());
    assert!(
        outs.iter().all(|o| o.len() == rows),
        "matmul_q80_q40x8: output rows differ in length"
    );
    assert_eq!(
        rows % ROWS_PER_GROUP,
        0,
        "matmul_q80_q40x8: rows not a multiple of 8"
    );
    assert_eq!(
        xs.len(),
        outs.len() * nb,
        "matmul_q80_q40x8: input is not one row per output"
    );
    assert_eq!(
        w.len() * ROWS_PER_GROUP,
        rows * nb,
        "matmul_q80_q40x8: weight length"
    );
    if rows == 0 || outs.is_empty() {
        return;
    }
    if nb == 0 {
        outs.iter_mut().for_each(|o| o.fill(0.0));
        return;
    }
    assert!(
        supports_q40x8(backend),
        "matmul_q80_q40x8: no kernel for {}",
        backend.isa()
    );
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    match order {
        MatmulOrder::Row => {
            // SAFETY: `supports_q40x8` proved AVX2 (+ FMA + F16C, which `Backend` checks with
            // it); the shapes were checked above.
            unsafe {
                if matches!(backend.isa(), Isa::Avx512)
                    && crate::arch::x86::tinyblas::has_avx512_vnni()
                {
                    crate::arch::x86::packed::matmul_q80_q40x8_row_vnni(outs, xs, w, nb)
                } else {
                    crate::arch::x86::packed::matmul_q80_q40x8_row(outs, xs, w, nb)
                }
            }
        }
        MatmulOrder::TinyBlas => {
            use crate::arch::x86::packed::{
                matmul_q80_q40x8_tinyblas, matmul_q80_q40x8_tinyblas_avx512,
                matmul_q80_q40x8_tinyblas_vnni,
            };
            use crate::arch::x86::tinyblas::has_avx512_vnni;
            match backend.isa() {
                // SAFETY: `backend` proves AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C, and
                // VNNI was just detected.
                Isa::Avx512 if has_avx512_vnni() => unsafe {
                    matmul_q80_q40x8_tinyblas_vnni(outs, xs, w, nb)
                },
                // SAFETY: `backend` proves AVX-512 F/BW/DQ/VL on top of AVX2 + FMA + F16C.
                Isa::Avx512 => unsafe { matmul_q80_q40x8_tinyblas_avx512(outs, xs, w, nb) },
                // SAFETY: as for the row order.
                _ => unsafe { matmul_q80_q40x8_tinyblas(outs, xs, w, nb) },
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    let _ = order;
}

#[cfg(all(test, feature = "alloc"))]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn pack_then_unpack_gives_the_rows_back() {
        let nb = 3;
        let rows: Vec<Q40Block> = (0..16 * nb)
            .map(|i| Q40Block {
                d: [i as u8, (i >> 8) as u8],
                qs: core::array::from_fn(|k| (i * 16 + k) as u8),
            })
            .collect();
        let mut packed = alloc::vec![Q40x8Block::default(); 2 * nb];
        pack_q40x8(&rows, nb, &mut packed);
        // Row 5, block 2: its scale in lane 5, its qs[4..8] in chunk 1 at bytes 20..24.
        let b = &rows[5 * nb + 2];
        assert_eq!(packed[2].d[5], b.d);
        assert_eq!(packed[2].qs[1][20..24], b.qs[4..8]);
        let mut back = alloc::vec![Q40Block::default(); rows.len()];
        unpack_q40x8(&packed, nb, &mut back);
        assert_eq!(back, rows);
    }
}
