//! Matmuls on every backend this CPU has, in both orders, over random shapes (odd row counts,
//! every block-count tail of the NEON 2- and 4-accumulator loops, F32 lengths that are not a
//! multiple of any vector width): bit for bit against the portable emulation of the matching
//! dllama kernel, and within a stated bound of the scalar reference.
mod matmul_support;

use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::{Q40Block, Q80Block};
use airllama_kernels::matmul::{MatmulOrder, matmul_f32, matmul_q80_q40};
use airllama_kernels::quant::f16_to_f32;
use matmul_support::{F32Order, Q40Order, Rng, bits, emulate_dot_f32, emulate_dot_q40};
use proptest::prelude::*;

const ORDERS: [MatmulOrder; 2] = [MatmulOrder::Row, MatmulOrder::TinyBlas];

/// The F32 kernel each backend runs for an explicit order (TinyBlas falls back to the row
/// order wherever dllama's tinyBLAS would compute the same thing).
fn f32_kernel(isa: Isa, order: MatmulOrder) -> F32Order {
    match (isa, order) {
        (Isa::Scalar, _) => F32Order::Sequential,
        (Isa::Avx512, MatmulOrder::TinyBlas) => F32Order::Lanes(16),
        (Isa::Avx2 | Isa::Avx512, _) => F32Order::Lanes(8),
        (Isa::Neon | Isa::NeonDotprod, _) => F32Order::Lanes(4),
    }
}

fn q40_kernel(isa: Isa, order: MatmulOrder) -> Q40Order {
    match (isa, order) {
        (Isa::Scalar, _) => Q40Order::Scalar,
        (Isa::Avx2 | Isa::Avx512, MatmulOrder::Row) => Q40Order::X86Row,
        (Isa::Avx2 | Isa::Avx512, MatmulOrder::TinyBlas) => Q40Order::X86TinyBlas,
        (Isa::Neon, _) => Q40Order::NeonRow,
        (Isa::NeonDotprod, MatmulOrder::Row) => Q40Order::DotprodRow,
        (Isa::NeonDotprod, MatmulOrder::TinyBlas) => Q40Order::DotprodTinyBlas,
    }
}

fn run_f32(
    backend: Backend,
    order: MatmulOrder,
    w: &[f32],
    x: &[f32],
    d: usize,
    n: usize,
    batch: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; d * batch];
    let mut outs: Vec<&mut [f32]> = out.chunks_mut(d.max(1)).take(batch).collect();
    if d == 0 {
        outs = (0..batch).map(|_| <&mut [f32]>::default()).collect();
    }
    matmul_f32(backend, order, &mut outs, x, w, n);
    out
}

fn run_q40(
    backend: Backend,
    order: MatmulOrder,
    w: &[Q40Block],
    x: &[Q80Block],
    d: usize,
    nb: usize,
    batch: usize,
) -> Vec<f32> {
    let mut out = vec![f32::NAN; d * batch];
    let mut outs: Vec<&mut [f32]> = out.chunks_mut(d).collect();
    matmul_q80_q40(backend, order, &mut outs, x, w, nb * 32);
    out
}

#[test]
fn f32_by_hand() {
    // w = [[1, 2, 3], [-1, 0.5, 4]], x = [2, 4, 0.25]: 2 + 8 + 0.75 = 10.75, -2 + 2 + 1 = 1.
    let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 4.0];
    let x = [2.0f32, 4.0, 0.25];
    for backend in Backend::all_supported() {
        for order in ORDERS {
            assert_eq!(
                run_f32(backend, order, &w, &x, 2, 3, 1),
                [10.75, 1.0],
                "{backend:?} {order:?}"
            );
        }
    }
}

#[test]
fn q80_q40_by_hand() {
    // One block: weights code 9 (value +1) for the first 16 values, code 6 (value -2) for the
    // rest, scale 0.5; input codes 1..=32, scale 0.25. dot = Σ1..16 - 2·Σ17..32 = 136 - 784.
    let w = Q40Block {
        d: 0x3800u16.to_le_bytes(),
        qs: [9 | (6 << 4); 16],
    };
    let mut x = Q80Block {
        d: 0x3400u16.to_le_bytes(),
        qs: [0; 32],
    };
    for (i, q) in x.qs.iter_mut().enumerate() {
        *q = i as i8 + 1;
    }
    for backend in Backend::all_supported() {
        for order in ORDERS {
            let out = run_q40(backend, order, &[w, w], &[x], 2, 1, 1);
            assert_eq!(
                out,
                [-648.0 * 0.125, -648.0 * 0.125],
                "{backend:?} {order:?}"
            );
        }
    }
}

#[test]
fn empty_shapes() {
    for backend in Backend::all_supported() {
        for order in ORDERS {
            assert_eq!(run_f32(backend, order, &[], &[], 3, 0, 2), [0.0; 6]);
            assert!(run_f32(backend, order, &[], &[1.0; 8], 0, 4, 2).is_empty());
            assert_eq!(run_q40(backend, order, &[], &[], 2, 0, 1), [0.0; 2]);
        }
    }
}

/// The tinyBLAS sign trick: `-(-128)` wraps to `-128`, so an input code -128 against a negative
/// weight contributes `128·w` instead of `-128·w`. dllama's x86 tinyBLAS has this; its row
/// kernels and the ARM kernels do not.
#[test]
fn x86_tinyblas_keeps_the_sign_quirk() {
    let w = Q40Block {
        d: 0x3c00u16.to_le_bytes(),
        qs: [0x77; 16],
    }; // every value -1
    let mut x = Q80Block {
        d: 0x3c00u16.to_le_bytes(),
        qs: [0; 32],
    };
    x.qs[0] = -128;
    for backend in Backend::all_supported() {
        let row = run_q40(backend, MatmulOrder::Row, &[w], &[x], 1, 1, 1)[0];
        let tiny = run_q40(backend, MatmulOrder::TinyBlas, &[w], &[x], 1, 1, 1)[0];
        assert_eq!(row, 128.0, "{backend:?}");
        let expected = if matches!(backend.isa(), Isa::Avx2 | Isa::Avx512) {
            -128.0
        } else {
            128.0
        };
        assert_eq!(tiny, expected, "{backend:?}");
    }
}

fn f32_bound(w: &[f32], x: &[f32]) -> f32 {
    let mag: f32 = w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum();
    2.0 * (w.len() as f32 + 2.0) * f32::EPSILON * mag
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn f32_matches_the_dllama_kernel(d in 0usize..11, n in 0usize..70, batch in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let w = rng.floats(d * n, 4);
        let x = rng.floats(n * batch, 4);
        for backend in Backend::all_supported() {
            for order in ORDERS {
                let got = run_f32(backend, order, &w, &x, d, n, batch);
                let kernel = f32_kernel(backend.isa(), order);
                for b in 0..batch {
                    for i in 0..d {
                        let (wr, xb) = (&w[i * n..(i + 1) * n], &x[b * n..(b + 1) * n]);
                        let expected = emulate_dot_f32(kernel, wr, xb);
                        prop_assert_eq!(got[b * d + i].to_bits(), expected.to_bits(), "{:?} {:?} d={} n={} b={} i={}", backend, order, d, n, b, i);
                        let scalar = emulate_dot_f32(F32Order::Sequential, wr, xb);
                        prop_assert!((got[b * d + i] - scalar).abs() <= f32_bound(wr, xb));
                    }
                }
            }
        }
    }

    #[test]
    fn q80_q40_matches_the_dllama_kernel(d in 1usize..11, nb in 0usize..11, batch in 1usize..6, seed in any::<u64>()) {
        let mut rng = Rng(seed);
        let w = rng.q40(d * nb);
        let x = rng.q80(nb * batch);
        for backend in Backend::all_supported() {
            for order in ORDERS {
                let got = run_q40(backend, order, &w, &x, d, nb, batch);
                let kernel = q40_kernel(backend.isa(), order);
                for b in 0..batch {
                    for i in 0..d {
                        let (wr, xb) = (&w[i * nb..(i + 1) * nb], &x[b * nb..(b + 1) * nb]);
                        let expected = emulate_dot_q40(kernel, wr, xb);
                        prop_assert_eq!(got[b * d + i].to_bits(), expected.to_bits(), "{:?} {:?} d={} nb={} b={} i={}", backend, order, d, nb, b, i);
                        // Against the scalar reference: the sign quirk aside (codes -128 are
                        // excluded from the bound), within 2·(values + 2)·ε of Σ|terms|.
                        if kernel != Q40Order::X86TinyBlas || xb.iter().all(|blk| !blk.qs.contains(&-128)) {
                            let scalar = emulate_dot_q40(Q40Order::Scalar, wr, xb);
                            let mag: f32 = wr.iter().zip(xb).map(|(a, c)| {
                                let s = (f16_to_f32(u16::from_le_bytes(a.d)) * f16_to_f32(u16::from_le_bytes(c.d))).abs();
                                s * 32.0 * 8.0 * 128.0
                            }).sum();
                            let bound = 2.0 * (nb as f32 * 32.0 + 2.0) * f32::EPSILON * mag;
                            prop_assert!((got[b * d + i] - scalar).abs() <= bound);
                        }
                    }
                }
                prop_assert_eq!(bits(&got).len(), d * batch);
            }
        }
    }
}
