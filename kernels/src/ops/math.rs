//! The scalar libm functions dllama's ops call, reproduced bit for bit.
//!
//! dllama's scalar tails call glibc's `expf`, `sqrtf`, `tanhf`, `powf`, `cosf` and `sinf`. The
//! bits of those calls end up in synced activations, so they must match glibc, not merely be
//! accurate:
//!
//! - [`sqrt`]: IEEE square root is correctly rounded, so any exact method matches glibc's
//!   `sqrtf` (which is the hardware instruction). [`sqrt`] computes it with integers so that it
//!   works in `no_std` on every target.
//! - `expf`: glibc ≥ 2.28 uses Arm's optimized-routines algorithm (a 32-entry table of 2^(i/32)
//!   and a cubic in double precision). Its last bit depends on how the C source was compiled:
//!   x86-64 glibc picks, at run time, a copy built with `-mfma` when the CPU has FMA and AVX2
//!   (every CPU an AVX2 dllama build runs on), aarch64 glibc rounds with `frinta`/`fcvtas`
//!   instead of the 2^52 shift trick and fuses its polynomial. [`expf_x86_fma`],
//!   [`expf_aarch64`] and [`expf_unfused`] are those three compilations, checked against the
//!   running glibc over every `f32` (see `kernels/tests/ops_math.rs`).
//! - `tanhf`, `powf`, `cosf`, `sinf`: used by GELU and the RoPE cache only. With the `std`
//!   feature these call the platform libm through `std` (glibc on `*-linux-gnu`, the very
//!   functions dllama calls, including glibc's own run-time FMA selection), which is exact by
//!   construction. Without `std` there is no libm to match, so the ops that need them
//!   ([`crate::ops::gelu`] and `crate::ops::fill_rope_cache`) are only compiled with `std`.

/// Correctly rounded square root of an `f32`, computed with integer arithmetic.
///
/// Equal to the IEEE `sqrt` (and so to glibc's `sqrtf`, `sqrtss` and `fsqrt`) for every input,
/// including `-0.0` (→ `-0.0`), negative numbers and NaN (→ NaN) and subnormals.
pub fn sqrt(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return x;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    if bits >> 31 != 0 {
        return f32::NAN;
    }
    // x = m * 2^e with m an integer holding the significand.
    let biased = (bits >> 23) & 0xff;
    let (mut m, mut e) = if biased == 0 {
        (u64::from(bits & 0x7f_ffff), -149i32)
    } else {
        (
            u64::from((bits & 0x7f_ffff) | 0x80_0000),
            biased as i32 - 150,
        )
    };
    // Normalise m to [2^23, 2^24) (subnormals), then make e even.
    while m < (1 << 23) {
        m <<= 1;
        e -= 1;
    }
    if e & 1 != 0 {
        m <<= 1;
        e -= 1;
    }
    // m is in [2^23, 2^25). Scale it by an even power of two so that sqrt(n) is in
    // [2^24, 2^25): 24 result bits plus one guard bit.
    let shift = if m < (1 << 24) { 26 } else { 24 };
    let n = m << shift;
    e -= shift;
    let r = isqrt(n);
    let sticky = r * r != n;
    let guard = r & 1 != 0;
    let mut mant = r >> 1;
    if guard && (sticky || mant & 1 != 0) {
        mant += 1;
    }
    // sqrt(x) = sqrt(n) * 2^(e/2) ≈ mant * 2^(e/2 + 1), mant in [2^23, 2^24].
    let exp = e / 2 + 1 + 23 + 127;
    let out = ((exp as u32) << 23) + (mant as u32 - (1 << 23));
    f32::from_bits(out)
}

/// Floor of the square root of `n < 2^52`, by the digit-by-digit method.
fn isqrt(n: u64) -> u64 {
    let mut rem = n;
    let mut root = 0u64;
    let mut bit = 1u64 << 50;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// 2^(i/32) as `f64` bits minus `i << 47` (so that adding `k << 47` for `k ≡ i mod 32` yields
/// 2^(k/32)). Generated with 200-bit arithmetic and rounded to nearest; identical to the table
/// glibc, musl and Arm's optimized-routines ship.
const EXP2_TABLE: [u64; 32] = [
    0x3ff0000000000000,
    0x3fefd9b0d3158574,
    0x3fefb5586cf9890f,
    0x3fef9301d0125b51,
    0x3fef72b83c7d517b,
    0x3fef54873168b9aa,
    0x3fef387a6e756238,
    0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715,
    0x3feef1a7373aa9cb,
    0x3feedea64c123422,
    0x3feece086061892d,
    0x3feebfdad5362a27,
    0x3feeb42b569d4f82,
    0x3feeab07dd485429,
    0x3feea47eb03a5585,
    0x3feea09e667f3bcd,
    0x3fee9f75e8ec5f74,
    0x3feea11473eb0187,
    0x3feea589994cce13,
    0x3feeace5422aa0db,
    0x3feeb737b0cdc5e5,
    0x3feec49182a3f090,
    0x3feed503b23e255d,
    0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47,
    0x3fef199bdd85529c,
    0x3fef3720dcef9069,
    0x3fef5818dcfba487,
    0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da,
    0x3fefd0765b6e4540,
];

/// 32 / ln 2.
const INV_LN2_N: u64 = 0x40471547652b82fe;
/// 1.5 · 2^52: adding it rounds a double below 2^51 to an integer (ties to even).
const ROUND_SHIFT: u64 = 0x4338000000000000;
/// The cubic for 2^(r/32) - 1 ≈ C0 r³ + C1 r² + C2 r on r in [-1/2, 1/2].
const POLY: [u64; 3] = [0x3ebc6af84b912394, 0x3f2ebfce50fac4f3, 0x3f962e42ff0c52d6];

/// The inputs for which expf leaves the main path, and their results (as glibc computes them:
/// `-inf` → 0, NaN and `+inf` → `x + x`, overflow → `+inf`, underflow → 0 or the smallest
/// subnormal, which glibc's `__math_may_uflowf` returns for `x` in (log 2^-150, log 2^-149)).
#[inline(always)]
fn expf_special(x: f32) -> Option<f32> {
    let abstop = (x.to_bits() >> 20) & 0x7ff;
    if abstop < 0x42b {
        return None;
    }
    if x == f32::NEG_INFINITY {
        return Some(0.0);
    }
    if abstop >= 0x7f8 {
        return Some(x + x);
    }
    if x > f32::from_bits(0x42b17217) {
        return Some(f32::INFINITY);
    }
    if x < f32::from_bits(0xc2cff1b4) {
        return Some(0.0);
    }
    if x < f32::from_bits(0xc2ce8ecf) {
        return Some(f32::from_bits(1));
    }
    None
}

/// Scale 2^(k/32) for the integer `ki` (two's complement bits of k).
#[inline(always)]
fn exp2_scale(ki: u64) -> f64 {
    let t = EXP2_TABLE[(ki % 32) as usize].wrapping_add(ki << 47);
    f64::from_bits(t)
}

/// glibc's `expf` as compiled without FMA (x86-64 `__expf_sse2`): every double operation
/// rounded separately. The [`crate::backend::Isa::Scalar`] kernels use it.
pub fn expf_unfused(x: f32) -> f32 {
    if let Some(y) = expf_special(x) {
        return y;
    }
    let xd = f64::from(x);
    let z = f64::from_bits(INV_LN2_N) * xd;
    let shift = f64::from_bits(ROUND_SHIFT);
    let kd = z + shift;
    let ki = kd.to_bits();
    let kd = kd - shift;
    let r = z - kd;
    let s = exp2_scale(ki);
    let c = POLY.map(f64::from_bits);
    let zp = c[0] * r + c[1];
    let r2 = r * r;
    let y = c[2] * r + 1.0;
    let y = zp * r2 + y;
    (y * s) as f32
}

/// glibc's `expf` as x86-64 glibc runs it on a CPU with FMA and AVX2 (`__expf_fma`): the
/// product `32/ln2 · x` is fused into both the rounding shift and the reduced argument, and the
/// cubic uses three FMAs. `fma` must be a fused multiply-add `a * b + c` with one rounding.
#[inline(always)]
pub fn expf_x86_fma(x: f32, fma: impl Fn(f64, f64, f64) -> f64) -> f32 {
    if let Some(y) = expf_special(x) {
        return y;
    }
    let xd = f64::from(x);
    let inv = f64::from_bits(INV_LN2_N);
    let shift = f64::from_bits(ROUND_SHIFT);
    let kd = fma(inv, xd, shift);
    let ki = kd.to_bits();
    let kd = kd - shift;
    let r = fma(inv, xd, -kd);
    let s = exp2_scale(ki);
    let c = POLY.map(f64::from_bits);
    let zp = fma(c[0], r, c[1]);
    let r2 = r * r;
    let y = fma(c[2], r, 1.0);
    let y = fma(zp, r2, y);
    (y * s) as f32
}

/// glibc's `expf` as aarch64 glibc runs it: `k = round-half-away(32/ln2 · x)` by
/// `frinta`/`fcvtas`, the cubic with three FMAs. `round_away` rounds a double to the nearest
/// integer, ties away from zero, returning it as both a double and an `i64`; `fma` is a fused
/// multiply-add with one rounding.
#[inline(always)]
pub fn expf_aarch64(
    x: f32,
    round_away: impl Fn(f64) -> (f64, i64),
    fma: impl Fn(f64, f64, f64) -> f64,
) -> f32 {
    if let Some(y) = expf_special(x) {
        return y;
    }
    let xd = f64::from(x);
    let z = f64::from_bits(INV_LN2_N) * xd;
    let (kd, ki) = round_away(z);
    let r = z - kd;
    let s = exp2_scale(ki as u64);
    let c = POLY.map(f64::from_bits);
    let zp = fma(c[0], r, c[1]);
    let y = fma(c[2], r, 1.0);
    let r2 = r * r;
    let y = fma(zp, r2, y);
    (y * s) as f32
}

/// glibc `tanhf` (through `std`).
#[cfg(feature = "std")]
#[inline]
pub fn tanhf(x: f32) -> f32 {
    x.tanh()
}

/// glibc `powf` (through `std`).
#[cfg(feature = "std")]
#[inline]
pub fn powf(x: f32, y: f32) -> f32 {
    x.powf(y)
}

/// glibc `cosf` (through `std`).
#[cfg(feature = "std")]
#[inline]
pub fn cosf(x: f32) -> f32 {
    x.cos()
}

/// glibc `sinf` (through `std`).
#[cfg(feature = "std")]
#[inline]
pub fn sinf(x: f32) -> f32 {
    x.sin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt_small_cases() {
        assert_eq!(sqrt(4.0), 2.0);
        assert_eq!(sqrt(2.0).to_bits(), 0x3fb504f3);
        assert_eq!(sqrt(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(sqrt(-1.0).is_nan());
        assert_eq!(sqrt(f32::INFINITY), f32::INFINITY);
        assert_eq!(sqrt(f32::from_bits(1)).to_bits(), 0x1a3504f3);
    }

    #[test]
    fn expf_unfused_small_cases() {
        assert_eq!(expf_unfused(0.0), 1.0);
        assert_eq!(expf_unfused(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf_unfused(f32::INFINITY), f32::INFINITY);
        assert_eq!(expf_unfused(100.0), f32::INFINITY);
        assert_eq!(expf_unfused(-200.0), 0.0);
        assert_eq!(expf_unfused(1.0).to_bits(), core::f32::consts::E.to_bits());
    }
}
