//! Every SIMD op path against the scalar reference (proptest, within stated bounds), and
//! hand-checked values on every backend. Exactness against dllama itself is
//! `ops_dllama.rs`; these tests pin down how far the ISAs may legitimately drift apart.
//!
//! Bounds (relative to the magnitude of the result unless noted), from the approximations
//! each dllama build uses:
//! - exp-based ops (SILU, SOFTMAX, attention weights): AVX2's `expf_avx2` (a quartic for 2^f
//!   on |f| ≤ 1/2, Taylor coefficients) is off by up to ~5e-5; NEON's `expf_neon` truncates `x/ln2 + 1/2` toward zero, so its quintic runs on
//!   `|f|` up to ~1.5·ln2 and is off by up to ~2e-3; its SILU reciprocal (one Newton step on
//!   `vrecpeq_f32`) adds ~2e-5. Bound: 1e-4 (AVX2), 3e-3 (NEON).
//! - sums in another order or with FMA (INV_RMS, attention dot products, MERGE_ADD Q80, ROPE,
//!   RMS_NORM association): a few ulps per term; bound 1e-5 of the sum of magnitudes.
use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::Q80Block;
use airllama_kernels::ops;
use proptest::prelude::*;

/// Every backend of this CPU other than the reference; missing ISAs are skipped, not failed.
fn simd_backends() -> impl Iterator<Item = Backend> {
    Backend::all_supported().filter(|b| b.isa() != Isa::Scalar)
}

fn exp_bound(isa: Isa) -> f32 {
    match isa {
        Isa::Neon | Isa::NeonDotprod => 3e-3,
        _ => 1e-4,
    }
}

fn assert_close(isa: Isa, what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs() + abs;
        assert!(
            (g - w).abs() <= tol || (g.is_nan() && w.is_nan()),
            "{isa} {what}[{i}]: {g} vs scalar {w} (tolerance {tol})"
        );
    }
}

fn floats(len: std::ops::Range<usize>, mag: f32) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-mag..mag, len)
}

fn q80_blocks(max: usize) -> impl Strategy<Value = Vec<Q80Block>> {
    prop::collection::vec(
        (-1.0f32..1.0, prop::array::uniform32(any::<i8>())).prop_map(|(d, qs)| Q80Block {
            d: half::f16::from_f32(d / 64.0).to_le_bytes(),
            qs,
        }),
        1..max,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn silu_close(x in floats(0..70, 30.0)) {
        let mut want = x.clone();
        ops::silu(Backend::scalar(), &mut want);
        for b in simd_backends() {
            let mut got = x.clone();
            ops::silu(b, &mut got);
            assert_close(b.isa(), "silu", &got, &want, exp_bound(b.isa()), 1e-30);
            // The scalar tail (glibc expf) agrees to one rounding with the reference's.
            let n = got.len();
            let tail = if matches!(b.isa(), Isa::Neon | Isa::NeonDotprod) { n % 4 } else { n % 8 };
            assert_close(b.isa(), "silu tail", &got[n - tail..], &want[n - tail..], 3e-7, 1e-30);
        }
    }

    #[test]
    fn gelu_close(x in floats(0..40, 8.0)) {
        let mut want = x.clone();
        ops::gelu(Backend::scalar(), &mut want);
        for b in simd_backends() {
            let mut got = x.clone();
            ops::gelu(b, &mut got);
            // The SIMD builds fuse the inner multiply-add (as g++ does for dllama), and
            // `1 + tanh(..)` cancels for negative x, so the difference scales with |x|, not
            // with the (tiny) result: e.g. x = -3.4 gives -5.18e-4 with a 1e-7 gap.
            for (i, ((&g, &w), &xi)) in got.iter().zip(&want).zip(&x).enumerate() {
                let tol = 1e-6 * w.abs() + 1e-6 * xi.abs() + 1e-7;
                prop_assert!((g - w).abs() <= tol, "{} gelu[{i}] of {xi}: {g} vs scalar {w}", b.isa());
            }
        }
    }

    #[test]
    fn softmax_close(x in floats(1..90, 20.0)) {
        let mut want = x.clone();
        ops::softmax(Backend::scalar(), &mut want);
        for b in simd_backends() {
            let mut got = x.clone();
            ops::softmax(b, &mut got);
            assert_close(b.isa(), "softmax", &got, &want, 2.0 * exp_bound(b.isa()), 1e-7);
        }
    }

    #[test]
    fn inv_rms_close(x in floats(1..300, 4.0), eps in 1e-7f32..1e-4) {
        let want = ops::inv_rms(Backend::scalar(), &x, eps);
        for b in simd_backends() {
            let got = ops::inv_rms(b, &x, eps);
            assert_close(b.isa(), "inv_rms", &[got], &[want], 1e-5, 0.0);
        }
    }

    #[test]
    fn rms_norm_close(x in floats(0..100, 4.0), inv in 0.1f32..4.0, seed in any::<u64>()) {
        let w: Vec<f32> = (0..x.len()).map(|i| ((seed >> (i % 60)) & 15) as f32 * 0.1 - 0.7).collect();
        let mut want = vec![0.0; x.len()];
        ops::rms_norm_f32(Backend::scalar(), &mut want, &x, &w, inv);
        for b in simd_backends() {
            let mut got = vec![0.0; x.len()];
            ops::rms_norm_f32(b, &mut got, &x, &w, inv);
            assert_close(b.isa(), "rms_norm_f32", &got, &want, 3e-7, 0.0);
        }
    }

    #[test]
    fn merge_add_q80_close(blocks in q80_blocks(5), base in -4.0f32..4.0) {
        let y: Vec<f32> = (0..blocks.len() * 32).map(|i| base + i as f32 * 0.01).collect();
        let mut want = y.clone();
        ops::merge_add_q80(Backend::scalar(), &mut want, &blocks);
        for b in simd_backends() {
            let mut got = y.clone();
            ops::merge_add_q80(b, &mut got, &blocks);
            assert_close(b.isa(), "merge_add_q80", &got, &want, 2e-7, 1e-6);
        }
    }

    #[test]
    fn rope_close(x in floats(1..40, 10.0), angles in floats(40..41, 3.0), falcon in any::<bool>()) {
        let (mut want, cache);
        if falcon {
            let hd = 2 * x.len().div_ceil(2);
            let half = hd / 2;
            let mut xs = x.clone();
            xs.resize(hd, 0.5);
            cache = (0..hd).map(|j| if j < half { angles[j].cos() } else { angles[j - half].sin() }).collect::<Vec<_>>();
            want = xs.clone();
            ops::rope_falcon(Backend::scalar(), &mut want, &cache, hd);
            for b in simd_backends() {
                let mut got = xs.clone();
                ops::rope_falcon(b, &mut got, &cache, hd);
                assert_close(b.isa(), "rope_falcon", &got, &want, 0.0, 1e-5);
            }
        } else {
            let n = 2 * (x.len() / 2);
            cache = (0..n).map(|i| if i % 2 == 0 { angles[i / 2].cos() } else { angles[i / 2].sin() }).collect::<Vec<_>>();
            want = x[..n].to_vec();
            ops::rope_llama(Backend::scalar(), &mut want, &cache);
            for b in simd_backends() {
                let mut got = x[..n].to_vec();
                ops::rope_llama(b, &mut got, &cache);
                assert_close(b.isa(), "rope_llama", &got, &want, 0.0, 1e-5);
            }
        }
    }

    #[test]
    fn attention_close(
        head_dim in prop::sample::select(vec![4usize, 8, 12, 16, 64]),
        kv in 1usize..3, mul in 1usize..3, pos in 0usize..20, seed in any::<u64>(),
    ) {
        let n_heads = kv * mul;
        let kv_dim0 = kv * head_dim;
        let seq_len = pos + 1 + (seed % 3) as usize;
        let mut s = seed;
        let mut next = move || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
        let q: Vec<f32> = (0..n_heads * head_dim).map(|_| next()).collect();
        let k: Vec<f32> = (0..seq_len * kv_dim0).map(|_| next()).collect();
        let v: Vec<f32> = (0..seq_len * kv_dim0).map(|_| next()).collect();
        let shape = ops::AttentionShape { n_heads, n_kv_heads: kv, head_dim, kv_dim0, seq_len, pos };
        let run = |b: Backend| {
            let mut y = vec![0.0; n_heads * head_dim];
            let mut att = vec![0.0; n_heads * seq_len];
            ops::multihead_attention(b, 0..n_heads, &shape, &mut y, &q, &mut att, &k, &v);
            y
        };
        let want = run(Backend::scalar());
        for b in simd_backends() {
            assert_close(b.isa(), "attention", &run(b), &want, 0.0, 4.0 * exp_bound(b.isa()));
        }
    }

    #[test]
    fn moe_gate_picks_the_largest(x in floats(1..140, 1.0), k_seed in any::<usize>()) {
        let k = 1 + k_seed % x.len();
        let mut scratch = vec![0u32; x.len()];
        let (mut idx, mut w) = (vec![0.0; k], vec![0.0; k]);
        ops::moe_gate(Backend::scalar(), &x, k, false, &mut scratch, &mut idx, &mut w).unwrap();
        let mut sorted = x.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        for (i, &e) in idx.iter().enumerate() {
            prop_assert_eq!(x[e as usize], sorted[i]);
            prop_assert_eq!(w[i], sorted[i]);
        }
        // The order is a permutation.
        let mut seen = scratch.clone();
        seen.sort_unstable();
        prop_assert!(seen.iter().enumerate().all(|(i, &v)| v as usize == i));
    }
}

#[test]
fn hand_checked_values() {
    for b in Backend::all_supported() {
        let isa = b.isa();
        // exp(0) is exactly 1 in every approximation: a uniform softmax is exact.
        let mut x = vec![3.0f32; 11];
        ops::softmax(b, &mut x);
        assert!(x.iter().all(|&v| v == 1.0 / 11.0), "{isa} softmax {x:?}");
        let mut x = [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        ops::softmax(b, &mut x);
        assert_eq!(x, [0.125; 8], "{isa}");
        // silu(0) = 0, silu(x) → x for large x, → 0 for very negative x.
        let mut x = vec![
            0.0f32, 100.0, -100.0, 0.0, 100.0, -100.0, 0.0, 100.0, -100.0,
        ];
        ops::silu(b, &mut x);
        for (i, v) in x.iter().enumerate() {
            let want = [0.0, 100.0, 0.0][i % 3];
            assert!((v - want).abs() < 1e-3, "{isa} silu[{i}] = {v}");
        }
        // 1 / sqrt(mean(1) + 0) = 1.
        assert_eq!(ops::inv_rms(b, &[1.0; 24], 0.0), 1.0, "{isa}");
        assert_eq!(ops::inv_rms(b, &[2.0; 16], 0.0), 0.5, "{isa}");
        // Powers of two keep RMS_NORM exact.
        let mut out = [0.0; 9];
        ops::rms_norm_f32(b, &mut out, &[2.0; 9], &[0.25; 9], 4.0);
        assert_eq!(out, [2.0; 9], "{isa}");
        // A quarter turn: (v0, v1) → (−v1, v0).
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let cache = [0.0f32, 1.0].repeat(5);
        ops::rope_llama(b, &mut x, &cache);
        assert_eq!(
            x,
            [-2.0, 1.0, -4.0, 3.0, -6.0, 5.0, -8.0, 7.0, -10.0, 9.0],
            "{isa}"
        );
        let mut x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        ops::rope_falcon(b, &mut x, &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 6);
        assert_eq!(x, [-4.0, -5.0, -6.0, 1.0, 2.0, 3.0], "{isa}");
        // Q80 block with scale 1: y += q.
        let mut qs = [0i8; 32];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = j as i8 - 16;
        }
        let block = Q80Block {
            d: half::f16::from_f32(1.0).to_le_bytes(),
            qs,
        };
        let mut y = vec![0.5f32; 32];
        ops::merge_add_q80(b, &mut y, &[block]);
        assert!(
            y.iter().enumerate().all(|(j, &v)| v == j as f32 - 15.5),
            "{isa} {y:?}"
        );
        let mut m = vec![0.0f32; 32];
        ops::mul_q80(b, &mut m, &[2.0; 32], &[block]);
        assert!(
            m.iter()
                .enumerate()
                .all(|(j, &v)| v == 2.0 * (j as f32 - 16.0)),
            "{isa}"
        );
        // Attention at position 0 returns the first value row, whatever the scores.
        let shape = ops::AttentionShape {
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            kv_dim0: 4,
            seq_len: 3,
            pos: 0,
        };
        let (mut y, mut att) = (vec![0.0; 8], vec![0.0; 6]);
        let v = [1.0, -2.0, 3.5, 0.25, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0];
        ops::multihead_attention(b, 0..2, &shape, &mut y, &[0.3; 8], &mut att, &[0.7; 12], &v);
        assert_eq!(y, [1.0, -2.0, 3.5, 0.25, 1.0, -2.0, 3.5, 0.25], "{isa}");
        assert_eq!((att[0], att[3]), (1.0, 1.0), "{isa}");
        // Ties keep index order for short rows (std::sort's insertion sort is stable there).
        let mut scratch = [0u32; 5];
        let (mut idx, mut w) = ([0.0; 2], [0.0; 2]);
        ops::moe_gate(
            b,
            &[0.1, 0.5, 0.2, 0.5, 0.0],
            2,
            true,
            &mut scratch,
            &mut idx,
            &mut w,
        )
        .unwrap();
        assert_eq!((idx, w), ([1.0, 3.0], [0.5, 0.5]), "{isa}");
        // Element-wise ops.
        let mut o = [1.0f32, 2.0, 3.0];
        ops::merge_add_f32(b, &mut o, &[0.5, 0.5, 0.5]);
        assert_eq!(o, [1.5, 2.5, 3.5]);
        ops::merge_sum(b, &mut o, &[&[1.0, 2.0, 3.0], &[0.25, 0.25, 0.25]]);
        assert_eq!(o, [1.25, 2.25, 3.25]);
        ops::mul_f32(b, &mut o, &[1.0, 2.0, 3.0], &[2.0, 0.5, -1.0]);
        assert_eq!(o, [2.0, 1.0, -3.0]);
        ops::scale(b, &mut o, &[1.0, 2.0, 3.0], 0.5);
        assert_eq!(o, [0.5, 1.0, 1.5]);
    }
}

#[test]
fn rope_cache_positions_and_slices() {
    let kind = ops::RopeKind::Llama;
    // 2 nodes, node 1: rows cover kv dims 48..96 and q dims 96..192 → sliceDim 144, qShift 48.
    let s = ops::RopeSlice::new(kind, 192, 96, 6, 2, 5, 16, 10000.0, 1).unwrap();
    assert_eq!(
        (s.q_dim0, s.kv_dim0, s.q_shift, s.kv_dim_start, s.slice_dim),
        (96, 48, 48, 48, 144)
    );
    let mut cache = vec![0.0; s.cache_len(kind).unwrap()];
    ops::fill_rope_cache(
        Backend::scalar(),
        kind,
        &s,
        &ops::RopeScaling::NONE,
        &mut cache,
    )
    .unwrap();
    // Position 0: cos 1, sin 0 everywhere.
    assert!(cache[..144].chunks(2).all(|p| p == [1.0, 0.0]));
    // h = i % headDim = 0 has frequency 1: position p rotates by p radians.
    assert_eq!(cache[3 * 144], 3.0f32.cos());
    assert_eq!(cache[3 * 144 + 1], 3.0f32.sin());
    assert!(
        ops::fill_rope_cache(
            Backend::scalar(),
            kind,
            &s,
            &ops::RopeScaling::NONE,
            &mut cache[1..]
        )
        .is_err()
    );
    assert!(ops::RopeSlice::new(kind, 190, 96, 6, 4, 5, 16, 1.0, 0).is_err());
    assert!(ops::RopeSlice::new(kind, 192, 96, 6, 2, 5, 16, 1.0, 2).is_err());
}

#[test]
fn moe_gate_rejects_bad_arguments() {
    let b = Backend::scalar();
    let mut s = [0u32; 3];
    let (mut i, mut w) = ([0.0; 2], [0.0; 2]);
    assert!(
        ops::moe_gate(
            b,
            &[1.0, 2.0, 3.0],
            0,
            true,
            &mut s,
            &mut i[..0],
            &mut w[..0]
        )
        .is_err()
    );
    assert!(ops::moe_gate(b, &[1.0], 2, true, &mut s[..1], &mut i, &mut w).is_err());
    assert!(ops::moe_gate(b, &[1.0, 2.0, 3.0], 2, true, &mut s[..2], &mut i, &mut w).is_err());
}
