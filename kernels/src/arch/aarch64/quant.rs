//! AArch64 quantization bodies: dllama's `__ARM_NEON` branch of `quantizeF32toQ80` and its
//! `quantizeF32toQ40` as GCC compiles it for AArch64 (fused `fmadd`).
use core::arch::aarch64::*;

use crate::block::{BLOCK_SIZE, Q40Block, Q80Block};
use crate::quant::f32_to_f16;
use crate::scalar::quant::signed_absmax;

/// Mirrors dllama's NEON Q80 quantizer: `amax` by `fmax` over eight 4-lane vectors then
/// `fmaxv`, `d = amax / 127`, `id = 1 / d`, then per value `p = x · id` (`fmul`, kept separate
/// from the add because `p` also feeds the sign test), `p + (p >= 0 ? 0.5 : -0.5)` (`fadd`),
/// truncated (`fcvtzs`) and narrowed with signed saturation to 16 then 8 bits.
///
/// # Safety
/// The CPU must support NEON. `input.len() == output.len() * 32`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q80_neon(input: &[f32], output: &mut [Q80Block]) {
    debug_assert_eq!(input.len(), output.len() * BLOCK_SIZE);
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        // SAFETY: `x` holds 32 floats; each 4-float load at i * 4 < 32 is in bounds.
        let v: [float32x4_t; 8] =
            unsafe { core::array::from_fn(|i| vld1q_f32(x.as_ptr().add(i * 4))) };
        let mut amax_vec = vdupq_n_f32(0.0);
        for vec in v {
            amax_vec = vmaxq_f32(amax_vec, vabsq_f32(vec));
        }
        let amax = vmaxvq_f32(amax_vec);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d).to_le_bytes();
        let id_vec = vdupq_n_f32(id);
        let plus = vdupq_n_f32(0.5);
        let minus = vdupq_n_f32(-0.5);
        for (i, vec) in v.into_iter().enumerate() {
            let p = vmulq_f32(vec, id_vec);
            let half = vbslq_f32(vcgeq_f32(p, vdupq_n_f32(0.0)), plus, minus);
            let ints = vcvtq_s32_f32(vaddq_f32(p, half));
            let i16s = vqmovn_s32(ints);
            let i8s = vqmovn_s16(vcombine_s16(i16s, i16s));
            let lanes = vget_lane_u32::<0>(vreinterpret_u32_s8(i8s)).to_le_bytes();
            for (q, b) in y.qs[i * 4..i * 4 + 4].iter_mut().zip(lanes) {
                *q = b as i8;
            }
        }
    }
}

/// dllama's `quantizeF32toQ40` as GCC compiles it for AArch64: `x · id + 8.5` is one `fmadd`,
/// converted with `fcvtzs` (saturating, NaN to 0), truncated to a byte and clamped to 15.
///
/// # Safety
/// The CPU must support NEON. `input.len() == output.len() * 32`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_q40_neon(input: &[f32], output: &mut [Q40Block]) {
    debug_assert_eq!(input.len(), output.len() * BLOCK_SIZE);
    let half_block = BLOCK_SIZE / 2;
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d).to_le_bytes();
        let id_vec = vdupq_n_f32(id);
        let offset = vdupq_n_f32(8.5);
        let mut codes = [0u8; BLOCK_SIZE];
        for (i, chunk) in codes.chunks_exact_mut(4).enumerate() {
            // SAFETY: `x` holds 32 floats; i < 8 so the 4 floats at i * 4 are in bounds.
            let v = unsafe { vld1q_f32(x.as_ptr().add(i * 4)) };
            let ints = vcvtq_s32_f32(vfmaq_f32(offset, v, id_vec));
            let mut lanes = [0i32; 4];
            // SAFETY: `lanes` is 16 bytes, exactly one 128-bit store.
            unsafe { vst1q_s32(lanes.as_mut_ptr(), ints) };
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
