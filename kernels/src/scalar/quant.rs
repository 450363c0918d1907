//! Portable quantization bodies: dllama's generic C branch of `quantizeF32toQ80` and
//! `quantizeF32toQ40` (no fused multiply-add), and the dequantizers every ISA shares.
use crate::block::{BLOCK_SIZE, Q40Block, Q80Block};
use crate::quant::{f16_to_f32, f32_to_f16};

/// dllama's generic `quantizeF32toQ80`: `amax` by a running `a > v ? a : v`, `d = amax / 127`,
/// codes `roundf(x · (1/d))` (half away from zero).
pub(crate) fn quantize_q80(input: &[f32], output: &mut [Q80Block]) {
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in x {
            let v = v.abs();
            amax = if amax > v { amax } else { v };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d).to_le_bytes();
        for (q, &v) in y.qs.iter_mut().zip(x) {
            // C's float-to-int8 conversion keeps the low byte of the 32-bit conversion.
            *q = round_half_away(v * id) as i8;
        }
    }
}

/// A float to `int32` conversion truncating toward zero, as x86's `cvttss2si` does: NaN and
/// values outside the `i32` range give `i32::MIN` (the "integer indefinite"). The generic C
/// reference build is an x86-64 one, so its float-to-integer casts behave like this.
#[inline]
pub(crate) fn cvtt_x86(v: f32) -> i32 {
    if (-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// `(int)roundf(v)` without libm: half away from zero, then [`cvtt_x86`].
#[inline]
pub(crate) fn round_half_away(v: f32) -> i32 {
    let t = cvtt_x86(v);
    if v.abs() >= 8_388_608.0 || v.is_nan() {
        // Already an integer (or NaN / out of range): nothing to round.
        return t;
    }
    let frac = v - t as f32;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// The index and value of the first element of largest magnitude, as dllama's Q40 scale search.
#[inline]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// dllama's `quantizeF32toQ40` with the multiply and the `+ 8.5` rounded separately.
pub(crate) fn quantize_q40(input: &[f32], output: &mut [Q40Block]) {
    for (x, y) in input.chunks_exact(BLOCK_SIZE).zip(output.iter_mut()) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d).to_le_bytes();
        for j in 0..BLOCK_SIZE / 2 {
            let lo = q40_code(x[j] * id + 8.5);
            let hi = q40_code(x[j + BLOCK_SIZE / 2] * id + 8.5);
            y.qs[j] = lo | (hi << 4);
        }
    }
}

/// `(uint8_t)(int8_t)v` clamped to 15, with the float converted to 32 bits first (what GCC
/// emits: `cvttss2si`), so out-of-range codes wrap to a byte, then clamp.
#[inline]
pub(crate) fn q40_code(v: f32) -> u8 {
    let byte = cvtt_x86(v) as u8;
    if byte > 15 { 15 } else { byte }
}

/// `qs[j] · d` per value.
pub(crate) fn dequantize_q80(input: &[Q80Block], output: &mut [f32]) {
    for (b, y) in input.iter().zip(output.chunks_exact_mut(BLOCK_SIZE)) {
        let d = f16_to_f32(u16::from_le_bytes(b.d));
        for (o, &q) in y.iter_mut().zip(&b.qs) {
            *o = f32::from(q) * d;
        }
    }
}

/// `(code - 8) · d` per value; low nibbles are values 0..16, high nibbles 16..32.
pub(crate) fn dequantize_q40(input: &[Q40Block], output: &mut [f32]) {
    for (b, y) in input.iter().zip(output.chunks_exact_mut(BLOCK_SIZE)) {
        let d = f16_to_f32(u16::from_le_bytes(b.d));
        let (lo, hi) = y.split_at_mut(BLOCK_SIZE / 2);
        for ((&q, l), h) in b.qs.iter().zip(lo).zip(hi) {
            *l = f32::from(i16::from(q & 0x0f) - 8) * d;
            *h = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}
