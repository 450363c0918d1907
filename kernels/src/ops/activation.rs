//! Activations: SILU and GELU.
use crate::backend::Backend;

/// √(2/π) rounded to `f32` (dllama's `SQRT_2_OVER_PI`, 0.797884560802865…).
#[cfg(feature = "std")]
pub(crate) const SQRT_2_OVER_PI: f32 = f32::from_bits(0x3f4c_422a);
/// dllama's `GELU_COEF_A`.
#[cfg(feature = "std")]
pub(crate) const GELU_COEF_A: f32 = 0.044715;

/// SILU in place: `x / (1 + exp(-x))` (dllama `silu_F32`).
///
/// AVX2: 8 lanes of `expf_avx2` (clamp to ±88, `2^n · p(f)` with a quartic by FMA), the
/// denominator `1 + 2^n · p` fused into one FMA as g++ emits it, then a true division; the last
/// `len % 8` values use glibc `expf`. NEON: 4 lanes of `expf_neon` (quintic, g++'s fusions) and
/// one Newton step on `vrecpeq_f32` instead of a division; the last `len % 4` values use glibc
/// `expf`. Scalar: glibc `expf` (non-FMA build) and a division.
///
/// Split matters: the executor (`siluForward_F32_F32`) loops z, then batch items
/// (`row = z * output.y + y`), splits `0..output.x` with `split_range` and passes `row[r]`.
pub fn silu(backend: Backend, x: &mut [f32]) {
    dispatch!(backend, silu(x))
}

/// GELU in place, tanh form: `0.5 x (1 + tanh(√(2/π) x (1 + 0.044715 x²)))` (dllama
/// `gelu_F32`). Scalar C++ in every build; g++ fuses `(0.044715 x) · x + 1` into one FMA on
/// x86 (FMA builds) and aarch64, which the SIMD backends reproduce. `tanhf` is glibc's through
/// `std` (see [`crate::ops::math`]), hence the `std` requirement.
///
/// The result does not depend on the split. Executor (`geluForward_F32_F32_F32`): for each batch
/// item split `0..output.x` and pass `row[r]`.
#[cfg(feature = "std")]
pub fn gelu(backend: Backend, x: &mut [f32]) {
    dispatch!(backend, gelu(x))
}
