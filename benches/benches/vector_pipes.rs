//! Which execution pipes the tinyBLAS inner loop competes for: the throughput of `vpdpbusd`
//! alone, `vfmadd231ps` alone, and the two interleaved one for one (x86-64 with AVX-512 VNNI;
//! elsewhere this bench measures nothing).
//!
//! dllama's tinyBLAS order costs one integer dot (`vpdpbusd`) and one fused multiply-add per
//! (row, item, block), so if the two instructions share their pipes, a pair takes as long as
//! two of either and that is the kernel's floor whatever the tiling. On a Zen 4 each alone runs
//! two per cycle and a pair takes one cycle (docs/PERFORMANCE.md, issue 12, session 6); a
//! 512-bit `vpdpbusd` runs one per cycle, so it does not raise the lane throughput either.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Loop trips per measured call; each trip issues `CHAINS` instructions (pairs).
const TRIPS: usize = 1 << 16;
/// Independent accumulators per kind, more than the instructions' latency × throughput, so the
/// pipes, not the dependency chains, set the pace.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod probes {
    use super::{CHAINS, TRIPS};
    use core::arch::x86_64::*;

    /// `CHAINS × TRIPS` 256-bit `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2")]
    pub fn dot_only(a: __m256i, b: __m256i) -> __m256i {
        let mut acc = [_mm256_setzero_si256(); CHAINS];
        for _ in 0..TRIPS {
            for lane in acc.iter_mut() {
                *lane = _mm256_dpbusd_epi32(*lane, a, b);
            }
        }
        acc.iter()
            .fold(_mm256_setzero_si256(), |s, v| _mm256_xor_si256(s, *v))
    }

    /// `CHAINS × TRIPS` 256-bit `vfmadd231ps`.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma_only(a: __m256, b: __m256) -> __m256 {
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for _ in 0..TRIPS {
            for lane in acc.iter_mut() {
                *lane = _mm256_fmadd_ps(*lane, a, b);
            }
        }
        acc.iter()
            .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v))
    }

    /// `CHAINS / 2 × TRIPS` pairs of one 256-bit `vpdpbusd` and one `vfmadd231ps`.
    #[target_feature(enable = "avx512f,avx512vl,avx512vnni,avx2,fma")]
    pub fn pairs(a: __m256i, b: __m256i, x: __m256, y: __m256) -> (__m256i, __m256) {
        let mut dots = [_mm256_setzero_si256(); CHAINS / 2];
        let mut sums = [_mm256_setzero_ps(); CHAINS / 2];
        for _ in 0..TRIPS {
            for (d, s) in dots.iter_mut().zip(sums.iter_mut()) {
                *d = _mm256_dpbusd_epi32(*d, a, b);
                *s = _mm256_fmadd_ps(*s, x, y);
            }
        }
        (
            dots.iter()
                .fold(_mm256_setzero_si256(), |s, v| _mm256_xor_si256(s, *v)),
            sums.iter()
                .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v)),
        )
    }

    /// `CHAINS × TRIPS` 512-bit `vpdpbusd` (twice the lanes of [`dot_only`] per instruction).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub fn dot_512(a: __m512i, b: __m512i) -> __m512i {
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..TRIPS {
            for lane in acc.iter_mut() {
                *lane = _mm512_dpbusd_epi32(*lane, a, b);
            }
        }
        acc.iter()
            .fold(_mm512_setzero_si512(), |s, v| _mm512_xor_si512(s, *v))
    }
}

#[cfg(target_arch = "x86_64")]
fn bench_pipes(c: &mut Criterion) {
    use core::arch::x86_64::*;
    use std::hint::black_box;
    if !(is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma"))
    {
        eprintln!("vector_pipes: this CPU has no AVX-512 VNNI, nothing to measure");
        return;
    }
    let mut group = c.benchmark_group("vector_pipes");
    // Elements are instructions (for `pairs`, pairs): time per element is the reciprocal
    // throughput.
    group.throughput(Throughput::Elements((TRIPS * CHAINS) as u64));
    group.bench_function("vpdpbusd_256", |b| {
        // SAFETY: AVX-512 F/VL/VNNI and AVX2 were detected above.
        b.iter(|| unsafe { probes::dot_only(_mm256_set1_epi8(3), black_box(_mm256_set1_epi8(5))) })
    });
    group.bench_function("vfmadd_256", |b| {
        // SAFETY: AVX2 and FMA were detected above (AVX-512 implies AVX2).
        b.iter(|| unsafe { probes::fma_only(_mm256_set1_ps(1.0), black_box(_mm256_set1_ps(0.5))) })
    });
    group.bench_function("vpdpbusd_512", |b| {
        // SAFETY: AVX-512 F and VNNI were detected above.
        b.iter(|| unsafe { probes::dot_512(_mm512_set1_epi8(3), black_box(_mm512_set1_epi8(5))) })
    });
    group.throughput(Throughput::Elements((TRIPS * CHAINS / 2) as u64));
    group.bench_function("pairs_vpdpbusd_vfmadd_256", |b| {
        // SAFETY: AVX-512 F/VL/VNNI, AVX2 and FMA were detected above.
        b.iter(|| unsafe {
            probes::pairs(
                _mm256_set1_epi8(3),
                black_box(_mm256_set1_epi8(5)),
                _mm256_set1_ps(1.0),
                black_box(_mm256_set1_ps(0.5)),
            )
        })
    });
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn bench_pipes(_: &mut Criterion) {}

criterion_group!(benches, bench_pipes);
criterion_main!(benches);
