//! Shared by the quantization and matmul tests: portable emulations of every dllama build's
//! numerics (the oracles SIMD paths are checked against), the input generator the reference
//! harness also uses, and the reader of the reference files in `tests/data/`.
#![allow(dead_code)]

use airllama_kernels::backend::Isa;
use airllama_kernels::block::{Q40Block, Q80Block};
use airllama_kernels::quant::{f16_to_f32, f32_to_f16};

// ---------------------------------------------------------------------------------------------
// Inputs: splitmix64, mirrored by the C++ harness that produced tests/data/*.bin.

/// splitmix64, the generator of the reference harness.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A 24-bit signed integer times `2^(exp2 - 23)`: exact, so C and Rust agree.
    pub fn next_f32(&mut self, exp2: i32) -> f32 {
        let k = (self.next_u64() >> 40) as i32 - (1 << 23);
        k as f32 * f32::from_bits(((127 + exp2 - 23) as u32) << 23)
    }

    /// `n` floats, each run of 32 scaled by a random power of two in `±spread`.
    pub fn floats(&mut self, n: usize, spread: i32) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            let e = if spread != 0 {
                (self.next_u64() % (2 * spread as u64 + 1)) as i32 - spread
            } else {
                0
            };
            for _ in i..(i + 32).min(n) {
                v.push(self.next_f32(e));
            }
            i += 32;
        }
        v
    }

    /// A random normal half-precision scale between 2^-10 and 2^0, either sign.
    pub fn scale(&mut self) -> [u8; 2] {
        let r = self.next_u64();
        let sign = ((r & 1) as u16) << 15;
        let exp = 5 + ((r >> 1) % 10) as u16;
        let man = ((r >> 8) & 0x3ff) as u16;
        (sign | (exp << 10) | man).to_le_bytes()
    }

    pub fn q40(&mut self, n: usize) -> Vec<Q40Block> {
        (0..n)
            .map(|_| {
                let d = self.scale();
                let mut qs = [0u8; 16];
                qs.iter_mut()
                    .for_each(|q| *q = (self.next_u64() >> 56) as u8);
                Q40Block { d, qs }
            })
            .collect()
    }

    /// Raw Q80 blocks, codes over the whole `i8` range (including -128).
    pub fn q80(&mut self, n: usize) -> Vec<Q80Block> {
        (0..n)
            .map(|_| {
                let d = self.scale();
                let mut qs = [0i8; 32];
                qs.iter_mut()
                    .for_each(|q| *q = (self.next_u64() >> 56) as u8 as i8);
                Q80Block { d, qs }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Reference files written by the harness (dllama's own functions, built like each dllama build).

/// The reference file of an ISA: outputs of dllama's code built as that dllama build.
pub fn reference(isa: Isa) -> Vec<(String, Vec<u8>)> {
    let name = match isa {
        Isa::Scalar => "scalar",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
        Isa::Neon => "neon",
        Isa::NeonDotprod => "dotprod",
    };
    let path = format!(
        "{}/tests/data/dllama-ref-{name}.bin",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(&bytes[..10], b"DLLAMAREF1");
    let mut records = Vec::new();
    let mut at = 16;
    while at < bytes.len() {
        let tag = String::from_utf8(bytes[at..at + 8].to_vec())
            .unwrap()
            .trim_end()
            .to_string();
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        records.push((tag, bytes[at + 12..at + 12 + len].to_vec()));
        at += 12 + len;
    }
    records
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// The float inputs of the harness's Q80 quantization record.
pub fn q80_quant_inputs() -> Vec<f32> {
    let mut rng = Rng(1);
    let mut f = rng.floats(64 * 32, 12);
    f.extend_from_slice(&[
        127.0,
        -0.5,
        0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        3.5,
        4.5,
        5.5,
        6.5,
        7.5,
        -126.5,
        126.5,
        0.49999997,
        -0.49999997,
        1.4999999,
        2.4999998,
        0.50000006,
        125.49999,
        100.5,
        -100.5,
        0.0,
        -0.0,
        1e-40,
        -1e-40,
        64.5,
        63.5,
        62.5,
        61.5,
        31.5,
        30.5,
    ]);
    f.extend((0..32).map(|i| if i == 3 { -1e-41 } else { 1e-42 * i as f32 }));
    f.extend([0.0f32; 32]);
    f.extend((0..32).map(|i| if i == 0 { 254.0 } else { (i - 16) as f32 + 0.5 }));
    f
}

/// The float inputs of the harness's Q40 quantization record.
pub fn q40_quant_inputs() -> Vec<f32> {
    let mut rng = Rng(2);
    let mut f = rng.floats(64 * 32, 12);
    f.extend((0..32).map(|i| match i {
        5 => 3.0,
        9 => -3.0,
        _ => 0.25 * (i - 16) as f32,
    }));
    f.extend([0.0f32; 32]);
    f
}

/// (d, n, batch) of the harness's F32 matmul records.
pub const F32_CASES: [(usize, usize, usize); 8] = [
    (5, 8, 1),
    (13, 64, 1),
    (7, 200, 1),
    (6, 64, 3),
    (9, 96, 5),
    (4, 48, 4),
    (3, 200, 6),
    (17, 256, 2),
];

/// (d, blocks per row, batch) of the harness's Q80·Q40 matmul records.
pub const Q40_CASES: [(usize, usize, usize); 11] = [
    (5, 1, 1),
    (7, 2, 1),
    (6, 3, 1),
    (9, 5, 1),
    (8, 7, 1),
    (11, 9, 1),
    (5, 4, 2),
    (7, 7, 3),
    (10, 9, 6),
    (4, 8, 4),
    (3, 6, 5),
];

/// Weights and inputs of an F32 matmul record.
pub fn f32_case_inputs(d: usize, n: usize, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng((100 + d * 1000 + n * 10 + batch) as u64);
    let w = rng.floats(d * n, 3);
    let x = rng.floats(n * batch, 3);
    (w, x)
}

/// Weights and inputs of a raw Q80·Q40 matmul record.
pub fn q40_case_inputs(d: usize, nb: usize, batch: usize) -> (Vec<Q40Block>, Vec<Q80Block>) {
    let mut rng = Rng((200 + d * 1000 + nb * 10 + batch) as u64);
    let w = rng.q40(d * nb);
    let x = rng.q80(nb * batch);
    (w, x)
}

/// (d, blocks per row, batch) of the end-to-end records (quantize both, then multiply).
pub const E2E_CASES: [(usize, usize, usize); 2] = [(9, 6, 1), (9, 6, 4)];

pub fn e2e_case_inputs(d: usize, nb: usize, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut rng = Rng((300 + batch) as u64);
    let w = rng.floats(d * nb * 32, 2);
    let x = rng.floats(batch * nb * 32, 2);
    (w, x)
}

// ---------------------------------------------------------------------------------------------
// Emulations: each dllama build's numerics written plainly, one value at a time.

/// x86 `cvttss2si`/`cvtps2dq` on out-of-range input: the "integer indefinite" `i32::MIN`.
pub fn cvt_x86(v: f32) -> i32 {
    if !(-2147483648.0..2147483648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

fn h(d: [u8; 2]) -> f32 {
    f16_to_f32(u16::from_le_bytes(d))
}

/// dllama's Q80 quantizer as the build for `isa` compiles it.
pub fn emulate_quantize_q80(isa: Isa, x: &[f32]) -> Vec<Q80Block> {
    x.chunks_exact(32)
        .map(|x| {
            let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; 32];
            for (q, &v) in qs.iter_mut().zip(x) {
                let p = v * id;
                *q = match isa {
                    Isa::Scalar => cvt_x86(p.round()) as i8,
                    Isa::Avx2 | Isa::Avx512 => cvt_x86(p.round_ties_even()) as i8,
                    Isa::Neon | Isa::NeonDotprod => {
                        let t = (p + if p >= 0.0 { 0.5 } else { -0.5 }) as i32;
                        t.clamp(i16::MIN as i32, i16::MAX as i32).clamp(-128, 127) as i8
                    }
                };
            }
            Q80Block {
                d: f32_to_f16(d).to_le_bytes(),
                qs,
            }
        })
        .collect()
}

/// dllama's Q40 quantizer: fused `x·id + 8.5` wherever the build has FMA (all but scalar).
pub fn emulate_quantize_q40(isa: Isa, x: &[f32]) -> Vec<Q40Block> {
    x.chunks_exact(32)
        .map(|x| {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let code = |v: f32| {
                let t = if isa == Isa::Scalar {
                    v * id + 8.5
                } else {
                    v.mul_add(id, 8.5)
                };
                let t = match isa {
                    Isa::Neon | Isa::NeonDotprod => t as i32,
                    _ => cvt_x86(t),
                };
                (t as u8).min(15)
            };
            let mut qs = [0u8; 16];
            for (j, q) in qs.iter_mut().enumerate() {
                *q = code(x[j]) | (code(x[j + 16]) << 4);
            }
            Q40Block {
                d: f32_to_f16(d).to_le_bytes(),
                qs,
            }
        })
        .collect()
}

/// How a dllama build multiplies one element, per its kernel choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Order {
    Sequential,
    Lanes(usize),
}

/// The F32 order dllama's op-level code picks on `isa` for a batch (independently written from
/// the library's `matmul_order`).
pub fn f32_order(isa: Isa, n: usize, batch: usize) -> F32Order {
    match isa {
        Isa::Scalar => F32Order::Sequential,
        Isa::Avx2 => F32Order::Lanes(8),
        Isa::Avx512 if batch > 1 && n.is_multiple_of(16) => F32Order::Lanes(16),
        Isa::Avx512 => F32Order::Lanes(8),
        Isa::Neon | Isa::NeonDotprod => F32Order::Lanes(4),
    }
}

fn hsum_lanes(a: &[f32]) -> f32 {
    match a.len() {
        4 => (a[0] + a[1]) + (a[2] + a[3]),
        8 => {
            let r: Vec<f32> = (0..4).map(|i| a[4 + i] + a[i]).collect();
            (r[0] + r[2]) + (r[1] + r[3])
        }
        16 => {
            let t: Vec<f32> = (0..8).map(|i| a[8 + i] + a[i]).collect();
            hsum_lanes(&t)
        }
        _ => unreachable!(),
    }
}

pub fn emulate_dot_f32(order: F32Order, w: &[f32], x: &[f32]) -> f32 {
    match order {
        F32Order::Sequential => w.iter().zip(x).fold(0.0f32, |s, (a, b)| s + a * b),
        F32Order::Lanes(width) => {
            let mut acc = vec![0.0f32; width];
            for (j, (a, b)) in w.iter().zip(x).enumerate() {
                acc[j % width] = b.mul_add(*a, acc[j % width]);
            }
            hsum_lanes(&acc)
        }
    }
}

/// The Q40·Q80 kernel a dllama build runs for one element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q40Order {
    /// Generic C: per byte pair, unfused.
    Scalar,
    /// x86 rows: `fma(block_dot, scale, sum)`.
    X86Row,
    /// tinyBLAS_Q0_AVX2: 8 lanes of 4-value dots (with the sign-trick quirk), fma, hsum8.
    X86TinyBlas,
    /// NEON rows: 2 accumulators, vmull/vpaddl lanes, unfused.
    NeonRow,
    /// NEON dotprod rows: 4 accumulators, sdot lanes, unfused.
    DotprodRow,
    /// tinyBLAS_Q0_ARM: 1 accumulator, sdot lanes, unfused.
    DotprodTinyBlas,
}

pub fn q40_order(isa: Isa, batch: usize) -> Q40Order {
    match (isa, batch > 1) {
        (Isa::Scalar, _) => Q40Order::Scalar,
        (Isa::Avx2 | Isa::Avx512, false) => Q40Order::X86Row,
        (Isa::Avx2 | Isa::Avx512, true) => Q40Order::X86TinyBlas,
        (Isa::Neon, _) => Q40Order::NeonRow,
        (Isa::NeonDotprod, false) => Q40Order::DotprodRow,
        (Isa::NeonDotprod, true) => Q40Order::DotprodTinyBlas,
    }
}

fn q40_value(b: &Q40Block, k: usize) -> i32 {
    let byte = b.qs[k % 16];
    i32::from(if k < 16 { byte & 0x0f } else { byte >> 4 }) - 8
}

/// `|w| · sign(x, w)` as `vpsignb` + `vpmaddubsw` compute it: `-(-128)` stays `-128`.
fn sign_trick_product(w: i32, x: i8) -> i32 {
    let s = if w < 0 {
        x.wrapping_neg()
    } else if w == 0 {
        0
    } else {
        x
    };
    w.abs() * i32::from(s)
}

/// Integer lanes of one block: `group(k)` says which lane value `k` falls in.
fn block_lanes(
    w: &Q40Block,
    x: &Q80Block,
    n_lanes: usize,
    group: impl Fn(usize) -> usize,
    quirk: bool,
) -> Vec<i32> {
    let mut lanes = vec![0i32; n_lanes];
    for k in 0..32 {
        let wv = q40_value(w, k);
        lanes[group(k)] += if quirk {
            sign_trick_product(wv, x.qs[k])
        } else {
            wv * i32::from(x.qs[k])
        };
    }
    lanes
}

pub fn emulate_dot_q40(order: Q40Order, w: &[Q40Block], x: &[Q80Block]) -> f32 {
    let nb = w.len();
    let scale = |j: usize| h(w[j].d) * h(x[j].d);
    let neon_lane = |k: usize| (k % 8) / 2;
    let sdot_lane = |k: usize| (k % 16) / 4;
    let vaddv = |a: &[f32; 4]| (a[0] + a[1]) + (a[2] + a[3]);
    let mla = |acc: &mut [f32; 4], lanes: &[i32], s: f32| {
        for (a, l) in acc.iter_mut().zip(lanes) {
            *a += *l as f32 * s;
        }
    };
    match order {
        Q40Order::Scalar => {
            let mut sum = 0.0f32;
            for j in 0..nb {
                let s = scale(j);
                for k in 0..16 {
                    let dot = q40_value(&w[j], k) * i32::from(x[j].qs[k])
                        + q40_value(&w[j], k + 16) * i32::from(x[j].qs[k + 16]);
                    sum += dot as f32 * s;
                }
            }
            sum
        }
        Q40Order::X86Row => (0..nb).fold(0.0f32, |sum, j| {
            let dot: i32 = (0..32)
                .map(|k| q40_value(&w[j], k) * i32::from(x[j].qs[k]))
                .sum();
            (dot as f32).mul_add(scale(j), sum)
        }),
        Q40Order::X86TinyBlas => {
            let mut acc = [0.0f32; 8];
            for j in 0..nb {
                let lanes = block_lanes(&w[j], &x[j], 8, |k| k / 4, true);
                for (a, l) in acc.iter_mut().zip(lanes) {
                    *a = scale(j).mul_add(l as f32, *a);
                }
            }
            hsum_lanes(&acc)
        }
        Q40Order::NeonRow | Q40Order::DotprodRow => {
            let (per, group): (usize, &dyn Fn(usize) -> usize) = if order == Q40Order::NeonRow {
                (2, &neon_lane)
            } else {
                (4, &sdot_lane)
            };
            let mut acc = [[0.0f32; 4]; 4];
            let mut j = 0;
            while j + per - 1 < nb {
                for t in 0..per {
                    mla(
                        &mut acc[t],
                        &block_lanes(&w[j + t], &x[j + t], 4, group, false),
                        scale(j + t),
                    );
                }
                j += per;
            }
            while j < nb {
                mla(
                    &mut acc[0],
                    &block_lanes(&w[j], &x[j], 4, group, false),
                    scale(j),
                );
                j += 1;
            }
            vaddv(&acc[0]) + vaddv(&acc[1]) + vaddv(&acc[2]) + vaddv(&acc[3])
        }
        Q40Order::DotprodTinyBlas => {
            let mut acc = [0.0f32; 4];
            for j in 0..nb {
                mla(
                    &mut acc,
                    &block_lanes(&w[j], &x[j], 4, sdot_lane, false),
                    scale(j),
                );
            }
            vaddv(&acc)
        }
    }
}
