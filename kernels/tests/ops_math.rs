//! The libm ports of `airllama_kernels::ops::math` against the platform's libm (glibc on
//! `*-linux-gnu`, reached through `std`), bit for bit.
//!
//! The quick tests walk every `f32` with a stride; the `#[ignore]`d ones walk all 2^32 inputs
//! (about a minute each on x86-64; `cargo test -p airllama-kernels --release --test ops_math --
//! --ignored`; `AIRLLAMA_MATH_STEP=<n>` walks every n-th input instead).
use airllama_kernels::ops::math;

/// glibc's expf as this machine's glibc computes it (see `math` docs for the three variants).
fn port_expf(x: f32) -> f32 {
    if cfg!(target_arch = "aarch64") {
        math::expf_aarch64(
            x,
            |z| {
                // frinta / fcvtas: round half away from zero.
                let r = z.round();
                (r, r as i64)
            },
            f64::mul_add,
        )
    } else {
        math::expf_x86_fma(x, f64::mul_add)
    }
}

/// Whether the running glibc is the FMA build of expf (x86-64: chosen at run time).
fn glibc_expf_is_mirrored() -> bool {
    if cfg!(target_arch = "aarch64") {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn check_range(step: usize, what: &str, f: impl Fn(f32) -> f32, g: impl Fn(f32) -> f32) {
    let mut bad = 0u64;
    let mut first = None;
    for bits in (0..=u32::MAX).step_by(step) {
        let x = f32::from_bits(bits);
        let (a, b) = (f(x), g(x));
        if !same(a, b) {
            bad += 1;
            first.get_or_insert((x, a, b));
        }
    }
    assert_eq!(
        bad, 0,
        "{what}: {bad} mismatches, first (x, port, libm) = {first:?}"
    );
}

#[test]
fn expf_matches_glibc_sampled() {
    if !glibc_expf_is_mirrored() {
        eprintln!("glibc uses its non-FMA expf here; skipping");
        return;
    }
    check_range(4099, "expf", port_expf, f32::exp);
    for x in [
        0.0,
        -0.0,
        88.0,
        88.72283,
        88.72284,
        -87.33655,
        -103.27893,
        -103.972084,
        -104.0,
    ] {
        assert!(same(port_expf(x), x.exp()), "expf({x})");
    }
}

#[test]
#[ignore = "exhaustive over all 2^32 inputs (minutes); run with --ignored"]
fn expf_matches_glibc_exhaustive() {
    if !glibc_expf_is_mirrored() {
        return;
    }
    check_range(step_from_env(), "expf", port_expf, f32::exp);
}

/// `AIRLLAMA_MATH_STEP` thins the exhaustive walks (e.g. under qemu); default 1: every input.
fn step_from_env() -> usize {
    std::env::var("AIRLLAMA_MATH_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// The unfused (SSE2) compilation rounds differently only where the FMA result is within a
/// rounding of a tie: it stays within one ulp of glibc everywhere.
#[test]
fn expf_unfused_within_one_ulp() {
    for bits in (0..=u32::MAX).step_by(8191) {
        let x = f32::from_bits(bits);
        let (a, b) = (math::expf_unfused(x), x.exp());
        if a.is_nan() || b.is_nan() {
            assert!(a.is_nan() && b.is_nan(), "expf_unfused({x})");
            continue;
        }
        let d = (a.to_bits() as i64 - b.to_bits() as i64).abs();
        assert!(d <= 1, "expf_unfused({x}) = {a}, glibc {b}");
    }
}

#[test]
fn sqrt_matches_hardware_sampled() {
    check_range(997, "sqrt", math::sqrt, f32::sqrt);
}

#[test]
#[ignore = "exhaustive over all 2^32 inputs (minutes); run with --ignored"]
fn sqrt_matches_hardware_exhaustive() {
    check_range(step_from_env(), "sqrt", math::sqrt, f32::sqrt);
}
