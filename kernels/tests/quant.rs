//! Quantization on every backend this CPU has, against hand-checked blocks, the portable
//! emulation of the matching dllama build (bit for bit), and the scalar reference (within a
//! stated bound where dllama's builds round differently).
mod matmul_support;

use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::{Q40Block, Q80Block};
use airllama_kernels::quant::{
    dequantize_q40, dequantize_q80, f16_to_f32, f32_to_f16, quantize_q40, quantize_q80,
};
use matmul_support::{emulate_quantize_q40, emulate_quantize_q80};
use proptest::prelude::*;

fn q80(backend: Backend, x: &[f32]) -> Vec<Q80Block> {
    let mut out = vec![Q80Block::default(); x.len() / 32];
    quantize_q80(backend, x, &mut out);
    out
}

fn q40(backend: Backend, x: &[f32]) -> Vec<Q40Block> {
    let mut out = vec![Q40Block::default(); x.len() / 32];
    quantize_q40(backend, x, &mut out);
    out
}

/// A block whose largest magnitude is 127 has scale exactly 1, so codes are the values rounded.
fn unit_scale_block(rest: &[f32]) -> Vec<f32> {
    let mut x = vec![0.0f32; 32];
    x[0] = 127.0;
    x[1..=rest.len()].copy_from_slice(rest);
    x
}

#[test]
fn q80_rounding_per_build_by_hand() {
    // Ties and values a hair below a tie: each dllama build rounds them its own way.
    let x = unit_scale_block(&[
        0.5,
        1.5,
        2.5,
        -0.5,
        -2.5,
        0.49999997,
        -0.49999997,
        2.4999998,
    ]);
    for backend in Backend::all_supported() {
        let b = q80(backend, &x)[0];
        assert_eq!(b.d, 0x3c00u16.to_le_bytes(), "scale 1.0");
        let expected: [i8; 9] = match backend.isa() {
            // roundf: half away from zero.
            Isa::Scalar => [127, 1, 2, 3, -1, -3, 0, 0, 2],
            // vroundps: half to even.
            Isa::Avx2 | Isa::Avx512 => [127, 0, 2, 2, 0, -2, 0, 0, 2],
            // trunc(v ± 0.5), where 0.49999997 + 0.5 rounds up to 1.0 in float.
            Isa::Neon | Isa::NeonDotprod => [127, 1, 2, 3, -1, -3, 1, -1, 2],
        };
        assert_eq!(&b.qs[..9], &expected, "{backend:?}");
        assert!(b.qs[9..].iter().all(|&q| q == 0));
    }
}

#[test]
fn q80_zero_block_has_zero_scale_and_codes() {
    for backend in Backend::all_supported() {
        let b = q80(backend, &[0.0; 32])[0];
        assert_eq!(b, Q80Block::default(), "{backend:?}");
    }
}

#[test]
fn q40_by_hand() {
    // Largest magnitude -4 (first of the ties +-4 wins): d = 0.5, id = 2, code = trunc(2x + 8.5).
    let mut x = [0.0f32; 32];
    x[0] = -4.0;
    x[1] = 4.0;
    x[2] = 1.0;
    x[16] = -1.25;
    x[17] = 3.75;
    for backend in Backend::all_supported() {
        let b = q40(backend, &x)[0];
        assert_eq!(f16_to_f32(u16::from_le_bytes(b.d)), 0.5, "{backend:?}");
        // value 0: -8 + 8.5 -> 0; value 1: 8 + 8.5 = 16.5 -> 16, clamped to 15; value 2: 10;
        // value 16: -2.5 + 8.5 = 6; value 17: 7.5 + 8.5 = 16 -> 15; zeros: 8.
        assert_eq!(b.qs[0], 6 << 4, "{backend:?}");
        assert_eq!(b.qs[1], 15 | (15 << 4), "{backend:?}");
        assert_eq!(b.qs[2], 10 | (8 << 4), "{backend:?}");
        assert_eq!(b.qs[3], 8 | (8 << 4), "{backend:?}");
        let mut back = [0.0f32; 32];
        dequantize_q40(backend, &[b], &mut back);
        assert_eq!(&back[..3], &[-4.0, 3.5, 1.0]);
        assert_eq!(&back[16..18], &[-1.0, 3.5]);
    }
}

#[test]
fn dequantize_q80_by_hand() {
    let mut b = Q80Block {
        d: f32_to_f16(0.25).to_le_bytes(),
        qs: [0; 32],
    };
    b.qs[0] = -128;
    b.qs[1] = 127;
    b.qs[31] = -3;
    for backend in Backend::all_supported() {
        let mut out = [1.0f32; 32];
        dequantize_q80(backend, &[b], &mut out);
        assert_eq!(out[0], -32.0);
        assert_eq!(out[1], 31.75);
        assert_eq!(out[31], -0.75);
        assert!(out[2..31].iter().all(|&v| v == 0.0));
    }
}

/// Blocks of floats with a per-block magnitude from 2^-20 to 2^15 (the scale stays below the
/// f16 maximum), plus some exact ties.
fn blocks() -> impl Strategy<Value = Vec<f32>> {
    (0usize..9).prop_flat_map(|n| {
        prop::collection::vec(
            (
                -20i32..15,
                prop::collection::vec(-1.0f32..1.0, 32),
                any::<bool>(),
            ),
            n..=n,
        )
        .prop_map(|blocks| {
            blocks
                .into_iter()
                .flat_map(|(e, v, ties)| {
                    let s = 2.0f32.powi(e);
                    v.into_iter().enumerate().map(move |(i, x)| {
                        if ties && i > 0 {
                            // Multiples of half a step of a block whose max is 127 * s.
                            ((x * 254.0).round() / 2.0) * s
                        } else if ties {
                            127.0 * s
                        } else {
                            x * s
                        }
                    })
                })
                .collect()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn quantizers_match_their_dllama_build(x in blocks()) {
        for backend in Backend::all_supported() {
            let isa = backend.isa();
            prop_assert_eq!(q80(backend, &x), emulate_quantize_q80(isa, &x), "{:?}", isa);
            prop_assert_eq!(q40(backend, &x), emulate_quantize_q40(isa, &x), "{:?}", isa);
        }
    }

    /// The builds' rounding differs by at most one code step, and only at (near) ties; the
    /// scale never differs.
    #[test]
    fn quantizers_stay_within_one_step_of_scalar(x in blocks()) {
        let reference = q80(Backend::scalar(), &x);
        let reference40 = q40(Backend::scalar(), &x);
        for backend in Backend::all_supported() {
            for (a, b) in q80(backend, &x).iter().zip(&reference) {
                prop_assert_eq!(a.d, b.d);
                for (qa, qb) in a.qs.iter().zip(&b.qs) {
                    prop_assert!((i16::from(*qa) - i16::from(*qb)).abs() <= 1);
                }
            }
            for (a, b) in q40(backend, &x).iter().zip(&reference40) {
                prop_assert_eq!(a.d, b.d);
                for (qa, qb) in a.qs.iter().zip(&b.qs) {
                    prop_assert!((i16::from(qa & 15) - i16::from(qb & 15)).abs() <= 1);
                    prop_assert!((i16::from(qa >> 4) - i16::from(qb >> 4)).abs() <= 1);
                }
            }
        }
    }

    /// Dequantized values are within half a step (plus the f16 scale's rounding) of the input.
    #[test]
    fn q80_round_trip_error_is_bounded(x in blocks()) {
        for backend in Backend::all_supported() {
            let q = q80(backend, &x);
            let mut back = vec![0.0f32; x.len()];
            dequantize_q80(backend, &q, &mut back);
            for (blk, (xs, ys)) in q.iter().zip(x.chunks(32).zip(back.chunks(32))) {
                let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = f16_to_f32(u16::from_le_bytes(blk.d));
                for (a, b) in xs.iter().zip(ys) {
                    // Half a step of the exact scale, plus 127 times the scale's f16 error.
                    let bound = 0.5 * amax / 127.0 * 1.0001 + 127.0 * (d - amax / 127.0).abs() + 1e-30;
                    prop_assert!((a - b).abs() <= bound, "{:?} {} {} {}", backend, a, b, bound);
                }
            }
        }
    }
}
