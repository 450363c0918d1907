//! x86 quantization bodies: dllama's `__AVX2__` branch of `quantizeF32toQ80` (compiled into
//! both its AVX2 and its AVX-512 builds) and its `quantizeF32toQ40` as GCC compiles it with FMA.
use core::arch::x86_64::*;

use crate::block::{BLOCK_SIZE, Q40Block, Q80Block};
use crate::quant::f32_to_f16;
use crate::scalar::quant::signed_absmax;

/// Mirrors dllama's AVX2 Q80 quantizer: `amax` by `vmaxps` over four 8-lane vectors and a
/// 128-bit max tree, `d = amax / 127`, `id = 1 / d`, then per value `vroundps` (nearest even)
/// of `x · id`, converted to int32 and truncated to its low byte (dllama picks byte 0 of each
/// lane with `pshufb`; masking to the low byte and packing without saturation is the same).
///
/// # Safety
/// The CPU must support AVX2 and F16C. `input.len() == output.len() * 32`.
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn quantize_q80_avx2(input: &[f32], output: &mut [Q80Block]) {
    debug_assert_eq!(input.len(), output.len() * BLOCK_SIZE);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let low_byte = _mm256_set1_epi32(0xff);
    let lane_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        let p = x.as_ptr();
        // SAFETY: `x` holds 32 floats: the loads at 0, 8, 16 and 24 are in bounds.
        let (v0, v1, v2, v3) = unsafe {
            (
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        let mut max_abs = _mm256_max_ps(_mm256_setzero_ps(), _mm256_and_ps(v0, abs_mask));
        max_abs = _mm256_max_ps(max_abs, _mm256_and_ps(v1, abs_mask));
        max_abs = _mm256_max_ps(max_abs, _mm256_and_ps(v2, abs_mask));
        max_abs = _mm256_max_ps(max_abs, _mm256_and_ps(v3, abs_mask));
        let max_hi = _mm256_extractf128_ps::<1>(max_abs);
        let max_lo = _mm256_castps256_ps128(max_abs);
        let mut max_128 = _mm_max_ps(max_hi, max_lo);
        max_128 = _mm_max_ps(max_128, _mm_movehl_ps(max_128, max_128));
        max_128 = _mm_max_ss(max_128, _mm_shuffle_ps::<0b01_01_01_01>(max_128, max_128));
        let amax = _mm_cvtss_f32(max_128);

        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let dh = _mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(d));
        y.d = (_mm_cvtsi128_si32(dh) as u16).to_le_bytes();
        let id_vec = _mm256_set1_ps(id);
        let code = |v: __m256| {
            let rounded = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(v, id_vec),
            );
            _mm256_and_si256(_mm256_cvtps_epi32(rounded), low_byte)
        };
        // Low bytes in 0..=255 pass both unsigned-saturating packs unchanged; the packs work
        // per 128-bit half, which the final lane permutation undoes.
        let words01 = _mm256_packus_epi32(code(v0), code(v1));
        let words23 = _mm256_packus_epi32(code(v2), code(v3));
        let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words01, words23), lane_order);
        // SAFETY: `qs` is 32 bytes, one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(y.qs.as_mut_ptr().cast(), bytes) };
    }
}

/// dllama's `quantizeF32toQ40` as GCC compiles it with FMA available: `x · id + 8.5` is one
/// fused multiply-add, converted with `cvttss2si` (0x8000_0000 when out of range) and
/// truncated to a byte, then clamped to 15.
///
/// # Safety
/// The CPU must support AVX2 and FMA. `input.len() == output.len() * 32`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_q40_fma(input: &[f32], output: &mut [Q40Block]) {
    debug_assert_eq!(input.len(), output.len() * BLOCK_SIZE);
    let half_block = BLOCK_SIZE / 2;
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d).to_le_bytes();
        let id_vec = _mm256_set1_ps(id);
        let offset = _mm256_set1_ps(8.5);
        let mut codes = [0u8; BLOCK_SIZE];
        for (i, chunk) in codes.chunks_exact_mut(8).enumerate() {
            // SAFETY: `x` holds 32 floats; i < 4 so the 8 floats at i * 8 are in bounds.
            let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i * 8)) };
            let ints = _mm256_cvttps_epi32(_mm256_fmadd_ps(v, id_vec, offset));
            let mut lanes = [0i32; 8];
            // SAFETY: `lanes` is 32 bytes, exactly one unaligned 256-bit store.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), ints) };
            for (c, l) in chunk.iter_mut().zip(lanes) {
                let byte = l as u8;
                *c = if byte > 15 { 15 } else { byte };
            }
        }
        for j in 0..half_block {
            y.qs[j] = codes[j] | (codes[j + half_block] << 4);
        }
    }
}
