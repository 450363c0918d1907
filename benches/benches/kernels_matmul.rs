//! Matmul and quantization throughput, single thread, per backend this CPU has.
//!
//! Shapes are Llama-3-8B's: 4096 × 4096 (attention projections) and 4096 × 14336 (the FFN down
//! projection: 4096 rows of 14336 values), at batch 1 (decoding) and 32 (dllama's prefill
//! batch). Each runs in the order dllama's build for that backend would use
//! (`matmul_order`), so the numbers compare with dllama's own kernels on the same shapes (see
//! docs/PERFORMANCE.md). `AIRLLAMA_BENCH_ISA=avx2` (etc.) limits the run to one backend.
use airllama_kernels::backend::{Backend, Isa};
use airllama_kernels::block::{FloatType, Q40Block, Q40x8Block, Q80Block};
use airllama_kernels::matmul::{MatmulOrder, matmul_f32, matmul_order, matmul_q80_q40};
use airllama_kernels::packed::{matmul_q80_q40x8, pack_q40x8, supports_q40x8};
use airllama_kernels::quant::quantize_q80;
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main,
};
use std::hint::black_box;
use std::time::Duration;

/// A cheap deterministic generator (splitmix64) so inputs are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn float(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }

    fn scale(&mut self) -> [u8; 2] {
        (0x2000u16 | (self.next() as u16 & 0x3ff)).to_le_bytes()
    }
}

fn backends() -> Vec<Backend> {
    let only = std::env::var("AIRLLAMA_BENCH_ISA")
        .ok()
        .and_then(|v| Isa::from_name(v.trim()));
    Backend::all_supported()
        .filter(|b| b.isa() != Isa::Scalar && only.is_none_or(|o| o == b.isa()))
        .collect()
}

fn q40_weights(rng: &mut Rng, blocks: usize) -> Vec<Q40Block> {
    (0..blocks)
        .map(|_| {
            let mut qs = [0u8; 16];
            qs.iter_mut().for_each(|q| *q = rng.next() as u8);
            Q40Block { d: rng.scale(), qs }
        })
        .collect()
}

fn q80_input(rng: &mut Rng, blocks: usize) -> Vec<Q80Block> {
    (0..blocks)
        .map(|_| {
            let mut qs = [0i8; 32];
            qs.iter_mut().for_each(|q| *q = (rng.next() % 255) as i8);
            Q80Block { d: rng.scale(), qs }
        })
        .collect()
}

fn bench_q80_q40(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_q80_q40");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut rng = Rng(1);
    for (d, n) in [(4096usize, 4096usize), (4096, 14336)] {
        let nb = n / 32;
        let w = q40_weights(&mut rng, d * nb);
        for batch in [1usize, 32] {
            let x = q80_input(&mut rng, batch * nb);
            let types = (FloatType::Q40, FloatType::Q80);
            bench_case(&mut group, (d, n, batch), &x, &w, types, matmul_q80_q40);
            bench_interleaved(&mut group, (d, n, batch), &x, &w);
        }
    }
    group.finish();
}

/// The same product over the executor's resident layout (eight rows interleaved), on every
/// backend that has kernels for it: ids `<isa>-x8/...`.
fn bench_interleaved(
    group: &mut BenchmarkGroup<'_, WallTime>,
    (d, n, batch): (usize, usize, usize),
    x: &[Q80Block],
    w: &[Q40Block],
) {
    let nb = n / 32;
    let mut packed = vec![Q40x8Block::default(); d / 8 * nb];
    pack_q40x8(w, nb, &mut packed);
    let mut out = vec![0.0f32; d * batch];
    group.throughput(Throughput::Elements((d * n * batch) as u64));
    for backend in backends().into_iter().filter(|b| supports_q40x8(*b)) {
        let order = matmul_order(backend, batch, n, FloatType::Q40, FloatType::Q80, true).unwrap();
        let id = BenchmarkId::new(
            format!("{}-x8/{d}x{n}", backend.isa()),
            format!("batch{batch}"),
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut outs: Vec<&mut [f32]> = out.chunks_mut(d).collect();
                matmul_q80_q40x8(
                    backend,
                    order,
                    &mut outs,
                    black_box(x),
                    black_box(&packed),
                    n,
                );
            })
        });
    }
}

/// The signature `matmul_f32` and `matmul_q80_q40` share.
type MatmulKernel<X, W> = fn(Backend, MatmulOrder, &mut [&mut [f32]], &[X], &[W], usize);

/// Times `kernel` on `d × n` weights at `batch`, on every backend, in the order dllama's build
/// would use for `(weight, input)` types.
fn bench_case<X, W>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    (d, n, batch): (usize, usize, usize),
    x: &[X],
    w: &[W],
    (weight_type, input_type): (FloatType, FloatType),
    kernel: MatmulKernel<X, W>,
) {
    let mut out = vec![0.0f32; d * batch];
    group.throughput(Throughput::Elements((d * n * batch) as u64));
    for backend in backends() {
        let order = matmul_order(backend, batch, n, weight_type, input_type, true).unwrap();
        let id = BenchmarkId::new(
            format!("{}/{d}x{n}", backend.isa()),
            format!("batch{batch}"),
        );
        group.bench_function(id, |b| {
            b.iter(|| {
                let mut outs: Vec<&mut [f32]> = out.chunks_mut(d).collect();
                kernel(backend, order, &mut outs, black_box(x), black_box(w), n);
            })
        });
    }
}

fn bench_f32(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut rng = Rng(2);
    let (d, n) = (4096usize, 4096usize);
    let w: Vec<f32> = (0..d * n).map(|_| rng.float()).collect();
    for batch in [1usize, 32] {
        let x: Vec<f32> = (0..n * batch).map(|_| rng.float()).collect();
        let types = (FloatType::F32, FloatType::F32);
        bench_case(&mut group, (d, n, batch), &x, &w, types, matmul_f32);
    }
    group.finish();
}

fn bench_quantize(c: &mut Criterion) {
    let mut group = c.benchmark_group("quantize_q80");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    let mut rng = Rng(3);
    let n = 4096 * 32;
    let x: Vec<f32> = (0..n).map(|_| rng.float()).collect();
    let mut out = vec![Q80Block::default(); n / 32];
    group.throughput(Throughput::Elements(n as u64));
    for backend in backends() {
        group.bench_function(BenchmarkId::new(backend.isa().name(), n), |b| {
            b.iter(|| quantize_q80(backend, black_box(&x), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_q80_q40, bench_f32, bench_quantize);
criterion_main!(benches);
