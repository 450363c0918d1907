//! Quantization, dequantization and half-precision conversion with dllama's numerics.
//!
//! dllama quantizes activations to [`Q80Block`]s before every quantized matmul and before every
//! Q80 sync, so the rounding here decides synced bytes. Its `quantizeF32toQ80` has three bodies
//! that round differently, and each ISA here mirrors the one its dllama build compiles:
//!
//! | `Isa` | dllama body | code of `v = x · (1/d)` |
//! |---|---|---|
//! | `Scalar` | generic C (`roundf`) | round half away from zero, exactly |
//! | `Avx2`, `Avx512` | `__AVX2__` | round half to even (`vroundps`) |
//! | `Neon`, `NeonDotprod` | `__ARM_NEON` | truncate `v ± 0.5` (the `± 0.5` add itself rounds) |
//!
//! The three agree except on values within half an ulp of a `k + 0.5` boundary, which is why
//! an x86 worker and an ARM worker send different Q80 bytes for the same activations.
//!
//! Work is split between threads by whole blocks ([`crate::parallel::split_range`] over the
//! block count, as dllama's `quantizeF32toQ80` does); every function here takes the blocks of
//! one thread. Blocks are independent, so the split never changes a value.
//!
//! Half-precision scales are converted with IEEE round-to-nearest-even, as the F16C
//! (`vcvtps2ph`) and AArch64 (`fcvt`) instructions dllama uses do; NaNs are quieted and keep
//! their top payload bits, as those instructions do.
use crate::backend::{Backend, Isa};
use crate::block::{BLOCK_SIZE, Q40Block, Q80Block};
use crate::scalar;

/// Converts IEEE binary16 bits to an `f32`. Exact for every non-NaN value (every binary16
/// value is representable); a NaN comes back quiet with its payload shifted into place.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    let magnitude = u32::from(bits & 0x7fff);
    let sign = u32::from(bits & 0x8000) << 16;
    // Shifting the exponent and mantissa into binary32 position and multiplying by 2^112
    // rebiases the exponent (127 - 15 = 112) and normalises subnormals in one exact multiply.
    let scaled = f32::from_bits(magnitude << 13) * f32::from_bits((127 + 112) << 23);
    let mut out = scaled.to_bits();
    if magnitude >= 0x7c00 {
        // Infinity or NaN: all exponent bits set, and NaNs quieted like hardware does.
        out = 0x7f80_0000 | ((magnitude & 0x3ff) << 13);
        if magnitude != 0x7c00 {
            out |= 0x0040_0000;
        }
    }
    f32::from_bits(out | sign)
}

/// Converts an `f32` to IEEE binary16 bits with round-to-nearest-even, overflowing to infinity,
/// exactly as `vcvtps2ph` (imm 0) and AArch64 `fcvt` do.
#[inline]
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = bits & 0x7fff_ffff;
    let half = if magnitude > 0x7f80_0000 {
        // NaN: quiet, keep the top ten payload bits.
        0x7e00 | ((magnitude >> 13) & 0x3ff) as u16
    } else if magnitude >= 0x4780_0000 {
        // 65536 and above (and infinity) overflow; [65520, 65536) overflows below by rounding.
        0x7c00
    } else if magnitude < 0x3880_0000 {
        // Below the smallest normal half (2^-14): adding 0.5 aligns the value so that the FPU's
        // own round-to-nearest-even produces the subnormal mantissa in the low bits.
        let magic = f32::from_bits(126 << 23);
        (f32::from_bits(magnitude) + magic)
            .to_bits()
            .wrapping_sub(126 << 23) as u16
    } else {
        // Normal: rebias, then round the 13 dropped bits to nearest even by integer addition
        // (a carry out of the mantissa correctly bumps the exponent, up to infinity).
        let odd = (magnitude >> 13) & 1;
        let rounded = magnitude
            .wrapping_add(((15u32).wrapping_sub(127) << 23).wrapping_add(0xfff))
            .wrapping_add(odd);
        (rounded >> 13) as u16
    };
    half | sign
}

/// Quantizes `input` (32 values per block) into `output`, one [`Q80Block`] per 32 values, with
/// the rounding of the dllama build that matches `backend` (see the module docs).
///
/// # Panics
/// If `input.len() != output.len() * 32`.
pub fn quantize_q80(backend: Backend, input: &[f32], output: &mut [Q80Block]) {
    assert_eq!(
        input.len(),
        output.len() * BLOCK_SIZE,
        "quantize_q80: input is not output.len() * 32 values"
    );
    match backend.isa() {
        Isa::Scalar => scalar::quant::quantize_q80(input, output),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        // SAFETY: `backend` proves AVX2 and F16C (Avx512 implies them), the features the body
        // enables.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            crate::arch::x86::quant::quantize_q80_avx2(input, output)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `backend` proves NEON, the only feature the body enables.
        Isa::Neon | Isa::NeonDotprod => unsafe {
            crate::arch::aarch64::quant::quantize_q80_neon(input, output)
        },
        #[allow(unreachable_patterns)]
        other => foreign_isa(other),
    }
}

/// Expands Q80 blocks to `f32`: value `j` of a block is `qs[j] · d` (one rounding, identical on
/// every ISA, so every backend shares one body).
///
/// # Panics
/// If `output.len() != input.len() * 32`.
pub fn dequantize_q80(backend: Backend, input: &[Q80Block], output: &mut [f32]) {
    assert_eq!(
        output.len(),
        input.len() * BLOCK_SIZE,
        "dequantize_q80: output is not input.len() * 32 values"
    );
    let _ = backend;
    scalar::quant::dequantize_q80(input, output);
}

/// Quantizes `input` into [`Q40Block`]s as dllama's `quantizeF32toQ40` does: the scale is the
/// value of largest magnitude (first one on ties) divided by -8, and each code is
/// `min(15, trunc(x / d + 8.5))`.
///
/// dllama's body is plain C, but GCC contracts `x * id + 8.5f` into one fused multiply-add in
/// every build with FMA (x86 `-mfma`/`-march=native`, and all of AArch64), so every SIMD backend
/// fuses it here too; only the `Scalar` backend rounds the product separately.
///
/// # Panics
/// If `input.len() != output.len() * 32`.
pub fn quantize_q40(backend: Backend, input: &[f32], output: &mut [Q40Block]) {
    assert_eq!(
        input.len(),
        output.len() * BLOCK_SIZE,
        "quantize_q40: input is not output.len() * 32 values"
    );
    match backend.isa() {
        Isa::Scalar => scalar::quant::quantize_q40(input, output),
        #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
        // SAFETY: `backend` proves AVX2 + FMA (Avx512 implies them), the features the body enables.
        Isa::Avx2 | Isa::Avx512 => unsafe {
            crate::arch::x86::quant::quantize_q40_fma(input, output)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `backend` proves NEON, the only feature the body enables.
        Isa::Neon | Isa::NeonDotprod => unsafe {
            crate::arch::aarch64::quant::quantize_q40_neon(input, output)
        },
        #[allow(unreachable_patterns)]
        other => foreign_isa(other),
    }
}

/// Expands Q40 blocks to `f32`: value `j` is `(code_j - 8) · d` (one rounding, identical on every
/// ISA).
///
/// # Panics
/// If `output.len() != input.len() * 32`.
pub fn dequantize_q40(backend: Backend, input: &[Q40Block], output: &mut [f32]) {
    assert_eq!(
        output.len(),
        input.len() * BLOCK_SIZE,
        "dequantize_q40: output is not input.len() * 32 values"
    );
    let _ = backend;
    scalar::quant::dequantize_q40(input, output);
}

/// A [`Backend`] for another architecture cannot be constructed (`Backend::new` checks the
/// running CPU), so this is never reached.
#[cold]
pub(crate) fn foreign_isa(isa: Isa) -> ! {
    unreachable!("a Backend for {isa} cannot exist on this architecture")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_trip_every_value() {
        for bits in 0..=u16::MAX {
            let expected = half::f16::from_bits(bits).to_f32();
            let got = f16_to_f32(bits);
            if expected.is_nan() {
                assert!(got.is_nan());
                assert_eq!(f32_to_f16(got), bits | 0x0200, "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), expected.to_bits(), "{bits:#06x}");
                assert_eq!(f32_to_f16(got), bits, "{bits:#06x}");
            }
        }
    }

    #[test]
    fn f32_to_f16_rounds_to_nearest_even() {
        // Every f32 between two neighbouring halves, including ties, subnormals and overflow.
        let mut bits = 0u32;
        while bits < 0x7f80_0000 {
            let v = f32::from_bits(bits);
            let expected = half::f16::from_f32(v).to_bits();
            assert_eq!(f32_to_f16(v), expected, "{v:e}");
            assert_eq!(f32_to_f16(-v), expected | 0x8000, "{v:e}");
            bits += 0x0fff;
        }
        assert_eq!(f32_to_f16(65519.996), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY), 0xfc00);
        assert_eq!(f32_to_f16(f32::NAN) & 0x7e00, 0x7e00);
        assert_eq!(f32_to_f16(1.0 + 1.0 / 2048.0), 0x3c00, "tie to even, down");
        assert_eq!(f32_to_f16(1.0 + 3.0 / 2048.0), 0x3c02, "tie to even, up");
        assert_eq!(
            f32_to_f16(2.0f32.powi(-25)),
            0,
            "tie below the smallest subnormal"
        );
        assert_eq!(f32_to_f16(2.0f32.powi(-25) * 1.5), 1);
    }
}
