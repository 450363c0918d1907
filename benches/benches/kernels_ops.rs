//! Non-matmul op throughput, single thread, per backend this CPU has.
//!
//! Shapes are Llama-3-8B's (dim 4096, 32 query heads, 8 KV heads of 128, FFN hidden 14336):
//! RMS norm of one 4096 row (INV_RMS + RMS_NORM), attention of all 32 heads of one token over
//! 1k and 8k cached positions, SILU over a 14336 row, softmax over 8192 scores. The same
//! shapes through dllama's own kernels are in docs/PERFORMANCE.md.
//! `AIRLLAMA_BENCH_ISA=avx2` (etc.) limits the run to one backend.
use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::ops;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

/// splitmix64, so inputs are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A float in [-1, 1).
    fn float(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.float() * scale).collect()
    }
}

fn backends() -> Vec<Backend> {
    let only = std::env::var("AIRLLAMA_BENCH_ISA")
        .ok()
        .and_then(|v| Isa::from_name(v.trim()));
    Backend::all_supported()
        .filter(|b| only.is_none_or(|i| i == b.isa()))
        .collect()
}

const DIM: usize = 4096;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const HIDDEN: usize = 14336;

fn rms_norm(c: &mut Criterion) {
    let mut rng = Rng(1);
    let x = rng.floats(DIM, 4.0);
    let w = rng.floats(DIM, 1.0);
    let mut out = vec![0.0; DIM];
    let mut g = c.benchmark_group("rms_norm_4096");
    g.throughput(Throughput::Elements(DIM as u64));
    for b in backends() {
        g.bench_function(BenchmarkId::from_parameter(b.isa()), |bench| {
            bench.iter(|| {
                let inv = ops::inv_rms(b, black_box(&x), 1e-5);
                ops::rms_norm_f32(b, &mut out, &x, &w, inv);
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut rng = Rng(2);
    let kv_dim = KV_HEADS * HEAD_DIM;
    for positions in [1024usize, 8192] {
        let q = rng.floats(DIM, 1.0);
        let k = rng.floats(positions * kv_dim, 1.0);
        let v = rng.floats(positions * kv_dim, 1.0);
        let shape = ops::AttentionShape {
            n_heads: HEADS,
            n_kv_heads: KV_HEADS,
            head_dim: HEAD_DIM,
            kv_dim0: kv_dim,
            seq_len: positions,
            pos: positions - 1,
        };
        let mut y = vec![0.0; DIM];
        let mut att = vec![0.0; HEADS * positions];
        let mut g = c.benchmark_group(format!("attention_{positions}"));
        g.throughput(Throughput::Elements(positions as u64));
        g.sample_size(20);
        for b in backends() {
            g.bench_function(BenchmarkId::from_parameter(b.isa()), |bench| {
                bench.iter(|| {
                    ops::multihead_attention(b, 0..HEADS, &shape, &mut y, &q, &mut att, &k, &v);
                    black_box(&y);
                })
            });
        }
        g.finish();
    }
}

fn silu(c: &mut Criterion) {
    let mut rng = Rng(3);
    let x = rng.floats(HIDDEN, 8.0);
    let mut buf = x.clone();
    let mut g = c.benchmark_group("silu_14336");
    g.throughput(Throughput::Elements(HIDDEN as u64));
    for b in backends() {
        g.bench_function(BenchmarkId::from_parameter(b.isa()), |bench| {
            bench.iter(|| {
                buf.copy_from_slice(&x);
                ops::silu(b, &mut buf);
                black_box(&buf);
            })
        });
    }
    g.finish();
}

fn softmax(c: &mut Criterion) {
    let mut rng = Rng(4);
    let n = 8192;
    let x = rng.floats(n, 10.0);
    let mut buf = x.clone();
    let mut g = c.benchmark_group("softmax_8192");
    g.throughput(Throughput::Elements(n as u64));
    for b in backends() {
        g.bench_function(BenchmarkId::from_parameter(b.isa()), |bench| {
            bench.iter(|| {
                buf.copy_from_slice(&x);
                ops::softmax(b, &mut buf);
                black_box(&buf);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = rms_norm, attention, silu, softmax
}
criterion_main!(benches);
