//! The machine's DRAM read ceiling: how fast 1 and 2 threads can stream a buffer far larger
//! than the last-level cache (1 GiB), each thread summing its own contiguous half.
//!
//! Decode reads every weight byte once per token, so this is the roof for tokens/s on models
//! larger than the cache: `ceiling / bytes of weights per token`. docs/PERFORMANCE.md gives
//! each engine's decode as a percentage of it. The sum is of `u64` words in 16 independent
//! lanes (the compiler vectorizes it), so the loop is not what limits it.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const BYTES: usize = 1 << 30;

/// Sums `words` in sixteen lanes (four 256-bit registers once vectorized: enough independent
/// adds that the loads, not the adds, set the pace).
fn sum(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 16];
    for chunk in words.chunks_exact(16) {
        for (lane, word) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(*word);
        }
    }
    lanes.iter().fold(0, |a, b| a.wrapping_add(*b))
}

fn bench_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("memory_read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(BYTES as u64));
    // Written once, so every page is backed before timing.
    let buffer: Vec<u64> = (0..BYTES / 8).map(|i| i as u64).collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in (1..=cpus.min(4)).collect::<Vec<_>>() {
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter(|| {
                let part = buffer.len() / threads;
                std::thread::scope(|s| {
                    let handles: Vec<_> = buffer
                        .chunks(part)
                        .map(|words| s.spawn(move || sum(words)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().unwrap_or(0))
                        .fold(0u64, |a, b| a.wrapping_add(black_box(b)))
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_read);
criterion_main!(benches);
