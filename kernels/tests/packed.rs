//! The interleaved Q40 layout (`Q40x8Block`): packing is lossless, and on every backend that
//! has kernels for it, both matmul orders give the row layout's bits exactly, over random
//! shapes that cross every chunk and group tail of the kernels (256-block input chunks, 32-item
//! groups, 4 × 2 tiles) and inputs over the whole `i8` range (the tinyBLAS sign quirk of -128).
mod matmul_support;

use airllama_kernels::backend::Backend;
use airllama_kernels::block::{Q40Block, Q40x8Block};
use airllama_kernels::matmul::{MatmulOrder, matmul_q80_q40};
use airllama_kernels::packed::{matmul_q80_q40x8, pack_q40x8, supports_q40x8, unpack_q40x8};
use matmul_support::{Rng, bits};
use proptest::prelude::*;

fn run(backend: Backend, order: MatmulOrder, d: usize, nb: usize, batch: usize, seed: u64) {
    let mut rng = Rng(seed);
    let w = rng.q40(d * nb);
    let x = rng.q80(nb * batch);
    let mut packed = vec![Q40x8Block::default(); d / 8 * nb];
    pack_q40x8(&w, nb, &mut packed);
    let mut back = vec![Q40Block::default(); w.len()];
    unpack_q40x8(&packed, nb, &mut back);
    assert_eq!(back, w, "pack/unpack d={d} nb={nb}");

    let mut expected = vec![0.0f32; d * batch];
    let mut got = vec![f32::NAN; d * batch];
    {
        let mut outs: Vec<&mut [f32]> = expected.chunks_mut(d).collect();
        matmul_q80_q40(backend, order, &mut outs, &x, &w, nb * 32);
    }
    {
        let mut outs: Vec<&mut [f32]> = got.chunks_mut(d).collect();
        matmul_q80_q40x8(backend, order, &mut outs, &x, &packed, nb * 32);
    }
    assert_eq!(
        bits(&got),
        bits(&expected),
        "{backend:?} {order:?} d={d} nb={nb} batch={batch}"
    );

    // A thread's share: whole groups from the middle of the matrix.
    if d >= 16 {
        let (g0, g1) = (1, d / 8);
        let rows = (g1 - g0) * 8;
        let mut part = vec![f32::NAN; rows * batch];
        let mut outs: Vec<&mut [f32]> = part.chunks_mut(rows).collect();
        matmul_q80_q40x8(
            backend,
            order,
            &mut outs,
            &x,
            &packed[g0 * nb..g1 * nb],
            nb * 32,
        );
        for b in 0..batch {
            assert_eq!(
                bits(&part[b * rows..(b + 1) * rows]),
                bits(&expected[b * d + 8..(b + 1) * d]),
                "{backend:?} {order:?} share, item {b}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn interleaved_rows_give_the_row_layouts_bits(
        groups in 1usize..5,
        nb in 1usize..300,
        batch in 1usize..4,
        seed in any::<u64>(),
    ) {
        for backend in Backend::all_supported().filter(|b| supports_q40x8(*b)) {
            run(backend, MatmulOrder::Row, groups * 8, nb, batch, seed);
            run(backend, MatmulOrder::TinyBlas, groups * 8, nb, batch, seed);
        }
    }
}

/// Larger batches cross the tinyBLAS body's 32-item groups and 32-block chunks; long rows the
/// row kernel's input chunks.
#[test]
fn tinyblas_tails_of_groups_and_chunks() {
    for backend in Backend::all_supported().filter(|b| supports_q40x8(*b)) {
        for (d, nb, batch) in [
            (8, 33, 33),
            (16, 64, 32),
            (24, 70, 35),
            (8, 257, 2),
            (32, 5, 66),
            // Past the 8192 input scales that the body converts up front.
            (8, 300, 33),
            // Rows longer than the row kernel's 1024-block input chunk: walked in parts.
            (8, 1030, 2),
            (16, 2049, 1),
        ] {
            run(
                backend,
                MatmulOrder::TinyBlas,
                d,
                nb,
                batch,
                d as u64 * 1000 + nb as u64,
            );
            run(backend, MatmulOrder::Row, d, nb, batch, nb as u64);
        }
    }
}

/// Where no kernel exists the layout is never used, and the call says so instead of computing
/// garbage.
#[test]
fn backends_without_kernels_refuse() {
    let scalar = Backend::scalar();
    assert!(!supports_q40x8(scalar));
    let result = std::panic::catch_unwind(|| {
        let x = Rng(1).q80(1);
        let w = vec![Q40x8Block::default(); 1];
        let mut out = [0.0f32; 8];
        matmul_q80_q40x8(scalar, MatmulOrder::Row, &mut [&mut out[..]], &x, &w, 32);
    });
    assert!(result.is_err());
}

/// On AVX-512 VNNI the tinyBLAS order drops dllama's `vpsignb` when no input code is -128
/// (the offset form): its bits must still be those of the AVX2 build's sign form, over the row
/// layout and the interleaved one, with and without a -128 among the codes.
#[test]
fn vnni_forms_give_the_avx2_builds_bits() {
    use airllama_kernels::backend::Isa;
    let (Some(avx2), Some(avx512)) = (Backend::new(Isa::Avx2), Backend::new(Isa::Avx512)) else {
        return;
    };
    for (d, nb, batch) in [(8, 1, 1), (16, 33, 7), (24, 64, 32), (8, 70, 35)] {
        let mut rng = Rng(d as u64 * 7 + nb as u64);
        let w = rng.q40(d * nb);
        let mut packed = vec![Q40x8Block::default(); d / 8 * nb];
        pack_q40x8(&w, nb, &mut packed);
        let mut x = rng.q80(nb * batch);
        for with_min in [false, true] {
            for b in &mut x {
                b.qs.iter_mut()
                    .filter(|q| **q == i8::MIN)
                    .for_each(|q| *q = -127);
            }
            if with_min {
                x[nb * batch / 2].qs[5] = i8::MIN;
            }
            let run = |backend: Backend, interleaved: bool| {
                let mut out = vec![f32::NAN; d * batch];
                let mut outs: Vec<&mut [f32]> = out.chunks_mut(d).collect();
                if interleaved {
                    matmul_q80_q40x8(
                        backend,
                        MatmulOrder::TinyBlas,
                        &mut outs,
                        &x,
                        &packed,
                        nb * 32,
                    );
                } else {
                    matmul_q80_q40(backend, MatmulOrder::TinyBlas, &mut outs, &x, &w, nb * 32);
                }
                bits(&out)
            };
            let expected = run(avx2, false);
            assert_eq!(
                run(avx512, false),
                expected,
                "rows d={d} nb={nb} batch={batch} -128: {with_min}"
            );
            assert_eq!(
                run(avx512, true),
                expected,
                "interleaved d={d} nb={nb} batch={batch} -128: {with_min}"
            );
        }
    }
}
