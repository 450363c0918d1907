//! Dequantizers for ggml's block types beyond the simple ones in [`crate::gguf::dequantize`]:
//! the 5-bit blocks, the K-quants, the non-linear 4-bit IQ types, the ternary TQ types and
//! MXFP4.
//!
//! Every function takes whole blocks (`bytes.len()` a multiple of the block size, `out.len()`
//! the matching number of values; extra bytes or values are ignored) and never panics on any
//! input. The arithmetic follows ggml's published block layouts operation by operation, in
//! f32, so each value is bit-identical to ggml's reference `dequantize_row_*` and to the
//! `gguf.quants` module of the PyPI `gguf` package: scales are products computed first
//! (`d · sc`), then applied to the code, with a minimum subtracted last (`d·sc·q − dmin·m`),
//! each step rounded to f32 (Rust never fuses a multiply and an add on its own).
//!
//! Notation: a super-block ("K") holds 256 values in sub-blocks of 16 or 32; `d`/`dmin` are f16
//! super-block scales, `sc`/`m` the small integer sub-block scales and minimums.

use half::f16;

/// Values in a K-quant super-block (ggml's `QK_K`).
pub(crate) const QK_K: usize = 256;

/// The 16 signed levels of IQ4_NL and IQ4_XS (ggml's `kvalues_iq4nl`): a non-uniform 4-bit
/// code book, denser near zero.
const IQ4_LEVELS: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// The 16 levels of MXFP4: an e2m1 float (sign, 2 exponent bits, 1 mantissa bit) times two,
/// so that every level is an integer (ggml's `kvalues_mxfp4`).
const MXFP4_LEVELS: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// An f16 stored little endian at `b[at..at + 2]`, widened exactly.
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Runs `f` on each pair of a `bytes_per_block` block and its `values_per_block` outputs.
fn blocks<const V: usize, const B: usize>(
    bytes: &[u8],
    out: &mut [f32],
    mut f: impl FnMut(&[u8; B], &mut [f32; V]),
) {
    for (o, b) in out.chunks_exact_mut(V).zip(bytes.chunks_exact(B)) {
        // chunks_exact hands out slices of exactly V and B elements: the conversions succeed.
        if let (Ok(o), Ok(b)) = (<&mut [f32; V]>::try_from(o), <&[u8; B]>::try_from(b)) {
            f(b, o);
        }
    }
}

/// Q5_0, 22 bytes per 32 values: f16 `d`, a u32 of fifth bits (bit j for value j), 16 bytes
/// of low nibbles (value j in the low nibble of byte j, value j + 16 in its high nibble).
/// Value = (q − 16) · d.
pub(crate) fn q5_0(bytes: &[u8], out: &mut [f32]) {
    blocks::<32, 22>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        for j in 0..16 {
            let lo = (b[6 + j] & 0x0f) | ((((high >> j) & 1) as u8) << 4);
            let hi = (b[6 + j] >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
            o[j] = (i32::from(lo) - 16) as f32 * d;
            o[j + 16] = (i32::from(hi) - 16) as f32 * d;
        }
    });
}

/// Q5_1, 24 bytes per 32 values: f16 `d`, f16 minimum `m`, then the fifth bits and nibbles as
/// in Q5_0. Value = q · d + m.
pub(crate) fn q5_1(bytes: &[u8], out: &mut [f32]) {
    blocks::<32, 24>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        for j in 0..16 {
            let lo = (b[8 + j] & 0x0f) | ((((high >> j) & 1) as u8) << 4);
            let hi = (b[8 + j] >> 4) | ((((high >> (j + 16)) & 1) as u8) << 4);
            o[j] = f32::from(lo) * d + m;
            o[j + 16] = f32::from(hi) * d + m;
        }
    });
}

/// Q2_K, 84 bytes per 256 values: 16 scale bytes (low nibble: scale of a 16-value sub-block,
/// high nibble: its minimum), 64 bytes of 2-bit codes, f16 `d`, f16 `dmin`.
///
/// The codes come in two halves of 128 values; in half `h`, byte `h·32 + l` holds value
/// `h·128 + s·32 + l` in bits `2s..2s+2` (s = 0..4). Value = (d·sc)·q − dmin·m.
pub(crate) fn q2_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 84>(bytes, out, |b, o| {
        let (scales, rest) = b.split_at(16);
        let (codes, tail) = rest.split_at(64);
        let d = f16_at(tail, 0);
        let dmin = f16_at(tail, 2);
        for (i, v) in o.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
            let q = (codes[h * 32 + l] >> (2 * s)) & 3;
            let sc = scales[i / 16];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            *v = dl * f32::from(q) - ml;
        }
    });
}

/// Q3_K, 110 bytes per 256 values: 32 bytes of third-bit masks, 64 bytes of 2-bit codes, 12
/// bytes of sixteen 6-bit signed scales, f16 `d`.
///
/// Value `i = h·128 + s·32 + l` takes its 2 low bits from byte `h·32 + l` of the codes, bits
/// `2s..2s+2`, and its third bit from byte `l` of the masks, bit `4h + s`; a clear mask bit
/// means 4 is subtracted. Scale `k` (of 16-value sub-block `k`) has its low nibble in byte
/// `k mod 8` (low nibble for k < 8, high for k ≥ 8) and its two high bits in byte
/// `8 + k mod 4`, bits `2·(k / 4)..`; it is stored plus 32. Value = (d·(sc − 32))·q.
pub(crate) fn q3_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 110>(bytes, out, |b, o| {
        let (masks, rest) = b.split_at(32);
        let (codes, rest) = rest.split_at(64);
        let (packed, tail) = rest.split_at(12);
        let d = f16_at(tail, 0);
        let mut scale = [0f32; 16];
        for (k, s) in scale.iter_mut().enumerate() {
            let low = (packed[k % 8] >> (4 * (k / 8))) & 0x0f;
            let high = (packed[8 + k % 4] >> (2 * (k / 4))) & 0x03;
            let sc = i32::from(low | (high << 4)) - 32;
            *s = d * sc as f32;
        }
        for (i, v) in o.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
            let low = i32::from((codes[h * 32 + l] >> (2 * s)) & 3);
            let third = (masks[l] >> (4 * h + s)) & 1;
            let q = if third == 1 { low } else { low - 4 };
            *v = scale[i / 16] * q as f32;
        }
    });
}

/// The eight 6-bit scales and minimums of a Q4_K/Q5_K super-block from their 12 packed bytes:
/// sub-blocks 0..4 keep scale and minimum in the low 6 bits of bytes j and 4 + j; sub-blocks
/// 4..8 take their low 4 bits from the nibbles of byte 8 + (j − 4) (scale low, minimum high)
/// and their top 2 bits from the top bits of bytes j − 4 (scale) and j (minimum).
fn k_scales(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..4 {
        sc[j] = packed[j] & 0x3f;
        m[j] = packed[4 + j] & 0x3f;
        sc[4 + j] = (packed[8 + j] & 0x0f) | ((packed[j] >> 6) << 4);
        m[4 + j] = (packed[8 + j] >> 4) | ((packed[4 + j] >> 6) << 4);
    }
    (sc, m)
}

/// Q4_K, 144 bytes per 256 values: f16 `d`, f16 `dmin`, 12 bytes of packed 6-bit scales and
/// minimums ([`k_scales`]), 128 bytes of nibbles. Sub-block `j` (32 values) lives in bytes
/// `(j / 2)·32 ..+32`, low nibbles for even `j`, high for odd. Value = (d·sc)·q − dmin·m.
pub(crate) fn q4_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 144>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, m) = k_scales(&b[4..16]);
        let codes = &b[16..];
        for (j, sub) in o.chunks_exact_mut(32).enumerate() {
            let dl = d * f32::from(sc[j]);
            let ml = dmin * f32::from(m[j]);
            for (l, v) in sub.iter_mut().enumerate() {
                let q = (codes[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
                *v = dl * f32::from(q) - ml;
            }
        }
    });
}

/// Q5_K, 176 bytes per 256 values: as Q4_K with 32 bytes of fifth bits between the scales and
/// the nibbles: value `l` of sub-block `j` takes bit `j` of byte `l` as its bit 4.
pub(crate) fn q5_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 176>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        let dmin = f16_at(b, 2);
        let (sc, m) = k_scales(&b[4..16]);
        let fifth = &b[16..48];
        let codes = &b[48..];
        for (j, sub) in o.chunks_exact_mut(32).enumerate() {
            let dl = d * f32::from(sc[j]);
            let ml = dmin * f32::from(m[j]);
            for (l, v) in sub.iter_mut().enumerate() {
                let low = (codes[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
                let q = low | (((fifth[l] >> j) & 1) << 4);
                *v = dl * f32::from(q) - ml;
            }
        }
    });
}

/// Q6_K, 210 bytes per 256 values: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16
/// signed 8-bit scales (one per 16 values), f16 `d`.
///
/// In half `h` (128 values), value `h·128 + r` takes its low nibble from byte
/// `h·64 + r mod 64` (low nibble for r < 64, high otherwise) and its high bits from byte
/// `h·32 + r mod 32`, bits `2·(r / 32)..`. Value = (d·sc)·(q − 32).
pub(crate) fn q6_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 210>(bytes, out, |b, o| {
        let (low, rest) = b.split_at(128);
        let (high, rest) = rest.split_at(64);
        let (scales, tail) = rest.split_at(16);
        let d = f16_at(tail, 0);
        for (i, v) in o.iter_mut().enumerate() {
            let (h, r) = (i / 128, i % 128);
            let lo = (low[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
            let hi = (high[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
            let q = i32::from(lo | (hi << 4)) - 32;
            let dl = d * f32::from(scales[i / 16] as i8);
            *v = dl * q as f32;
        }
    });
}

/// Q8_K, 292 bytes per 256 values: f32 `d`, 256 signed bytes, 16 i16 block sums (ignored).
/// Value = d · q. (ggml uses Q8_K for intermediate activations; it is not a storage type of
/// llama.cpp's quantizer, but it is cheap to read.)
pub(crate) fn q8_k(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 292>(bytes, out, |b, o| {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (v, &q) in o.iter_mut().zip(&b[4..4 + QK_K]) {
            *v = d * f32::from(q as i8);
        }
    });
}

/// IQ4_NL, 18 bytes per 32 values: f16 `d`, 16 bytes of nibbles laid out as Q4_0's, each an
/// index into [`IQ4_LEVELS`]. Value = d · level.
pub(crate) fn iq4_nl(bytes: &[u8], out: &mut [f32]) {
    blocks::<32, 18>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        for j in 0..16 {
            o[j] = d * f32::from(IQ4_LEVELS[usize::from(b[2 + j] & 0x0f)]);
            o[j + 16] = d * f32::from(IQ4_LEVELS[usize::from(b[2 + j] >> 4)]);
        }
    });
}

/// IQ4_XS, 136 bytes per 256 values: f16 `d`, a u16 of the scales' high bits (2 per
/// sub-block), 4 bytes of the scales' low nibbles (sub-block j in byte j / 2, low nibble for
/// even j), then per 32-value sub-block 16 bytes of [`IQ4_LEVELS`] indices laid out as IQ4_NL.
/// Scales are 6-bit, stored plus 32. Value = (d·(sc − 32))·level.
pub(crate) fn iq4_xs(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 136>(bytes, out, |b, o| {
        let d = f16_at(b, 0);
        let high = u16::from_le_bytes([b[2], b[3]]);
        for (j, sub) in o.chunks_exact_mut(32).enumerate() {
            let low = (b[4 + j / 2] >> (4 * (j % 2))) & 0x0f;
            let hi = ((high >> (2 * j)) & 3) as u8;
            let sc = i32::from(low | (hi << 4)) - 32;
            let dl = d * sc as f32;
            let codes = &b[8 + 16 * j..8 + 16 * (j + 1)];
            for (l, &c) in codes.iter().enumerate() {
                sub[l] = dl * f32::from(IQ4_LEVELS[usize::from(c & 0x0f)]);
                sub[l + 16] = dl * f32::from(IQ4_LEVELS[usize::from(c >> 4)]);
            }
        }
    });
}

/// One base-3 digit of a TQ1_0 byte: the byte is a fixed-point fraction `x / 256` of a 5-digit
/// (or 4-digit) ternary number; multiplying by 3^k (wrapping in u8) shifts digit k to the top,
/// and `(x · 3) >> 8` reads it. Gives −1, 0 or 1.
fn trit(byte: u8, power: u8) -> i32 {
    let shifted = byte.wrapping_mul(power);
    ((u16::from(shifted) * 3) >> 8) as i32 - 1
}

/// TQ1_0 (ternary, 1.6875 bits), 54 bytes per 256 values: 48 bytes of five trits each, 4
/// bytes of four trits each, f16 `d`. The first 32 bytes give values `k·32 + l` (digit k of
/// byte l, k = 0..5), the next 16 give `160 + k·16 + l`, the last 4 give `240 + k·4 + l`
/// (k = 0..4). Value = d · t.
pub(crate) fn tq1_0(bytes: &[u8], out: &mut [f32]) {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    blocks::<QK_K, 54>(bytes, out, |b, o| {
        let d = f16_at(b, 52);
        for k in 0..5 {
            for l in 0..32 {
                o[k * 32 + l] = d * trit(b[l], POW3[k]) as f32;
            }
            for l in 0..16 {
                o[160 + k * 16 + l] = d * trit(b[32 + l], POW3[k]) as f32;
            }
        }
        for k in 0..4 {
            for l in 0..4 {
                o[240 + k * 4 + l] = d * trit(b[48 + l], POW3[k]) as f32;
            }
        }
    });
}

/// TQ2_0 (ternary, 2 bits), 66 bytes per 256 values: 64 bytes of 2-bit codes laid out as
/// Q2_K's (value `h·128 + s·32 + l` in bits `2s..` of byte `h·32 + l`), f16 `d`.
/// Value = d · (q − 1).
pub(crate) fn tq2_0(bytes: &[u8], out: &mut [f32]) {
    blocks::<QK_K, 66>(bytes, out, |b, o| {
        let d = f16_at(b, 64);
        for (i, v) in o.iter_mut().enumerate() {
            let (h, s, l) = (i / 128, (i % 128) / 32, i % 32);
            let q = i32::from((b[h * 32 + l] >> (2 * s)) & 3) - 1;
            *v = d * q as f32;
        }
    });
}

/// Half of the power of two an e8m0 exponent byte stands for, `2^(e − 127) / 2` (ggml's
/// `ggml_e8m0_to_fp32_half`): the halving makes up for [`MXFP4_LEVELS`] being doubled. Bytes
/// 0 and 1 give the subnormals 2^-128 and 2^-127.
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// MXFP4, 17 bytes per 32 values: an e8m0 exponent byte, 16 bytes of nibbles laid out as
/// Q4_0's, each an index into [`MXFP4_LEVELS`]. Value = e8m0_half(e) · level.
pub(crate) fn mxfp4(bytes: &[u8], out: &mut [f32]) {
    blocks::<32, 17>(bytes, out, |b, o| {
        let d = e8m0_half(b[0]);
        for j in 0..16 {
            o[j] = d * f32::from(MXFP4_LEVELS[usize::from(b[1 + j] & 0x0f)]);
            o[j + 16] = d * f32::from(MXFP4_LEVELS[usize::from(b[1 + j] >> 4)]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q5_0_reads_the_fifth_bit() {
        let mut b = [0u8; 22];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2..6].copy_from_slice(&(1u32 << 17 | 1).to_le_bytes());
        b[6] = 0x21; // value 0: 1 | 16 → 17; value 16: 2
        b[7] = 0x30; // value 1: 0; value 17: 3 | 16 → 19
        let mut o = [0f32; 32];
        q5_0(&b, &mut o);
        assert_eq!(o[0], 0.5);
        assert_eq!(o[16], -7.0);
        assert_eq!(o[1], -8.0);
        assert_eq!(o[17], 1.5);
    }

    #[test]
    fn trits_decode_every_digit() {
        // 5 trits (t0..t4 in {0,1,2}) packed as llama.cpp does: x = Σ t_k·3^(4−k), then
        // byte = ceil(x · 256 / 243).
        for x in 0u16..243 {
            let byte = (x * 256).div_ceil(243) as u8;
            let mut digits = [0i32; 5];
            let mut rest = x;
            for k in (0..5).rev() {
                digits[k] = (rest % 3) as i32 - 1;
                rest /= 3;
            }
            for (k, p) in [1u8, 3, 9, 27, 81].into_iter().enumerate() {
                assert_eq!(trit(byte, p), digits[k], "x={x} k={k}");
            }
        }
    }

    #[test]
    fn e8m0_is_a_halved_power_of_two() {
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        assert_eq!(e8m0_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_half(254), 2f32.powi(126));
    }

    #[test]
    fn short_or_odd_inputs_never_panic() {
        let bytes = [0xffu8; 300];
        let mut out = [0f32; 300];
        for f in [
            q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k, iq4_nl, iq4_xs, tq1_0, tq2_0, mxfp4,
        ] {
            f(&bytes, &mut out);
            f(&bytes[..7], &mut out);
            f(&bytes, &mut out[..3]);
        }
    }
}
