//! Q40 requantization against dllama's converter (`writeQuantizedQ40Tensor` in
//! `converter/writer.py`). The expected bytes were produced by running that function's numpy
//! code on the same inputs (numpy 2.4; inputs computed in f64 and rounded to f32, as Python
//! does); the ramp is also checked by hand.
use airllama_io::convert::q40::{quantize_q40_block, quantize_q40_into};
use half::f16;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn block(x: [f32; 32]) -> String {
    hex(bytemuck::bytes_of(&quantize_q40_block(&x)))
}

#[test]
fn ramp_checked_by_hand() {
    // max 31 dominates: delta = 31 / -8 = -3.875 (f16 0xc3c0, exact), inverse = 1 / -3.875.
    // x=0: 0 * inv + 8.5 = 8.5 -> 8; x=16: -4.129 + 8.5 = 4.37 -> 4; byte 0 = 8 | 4 << 4 = 0x48.
    // x=15: -3.871 + 8.5 = 4.63 -> 4; x=31: -8.0 + 8.5 = 0.5 -> 0; byte 15 = 0x04.
    let x: [f32; 32] = std::array::from_fn(|j| j as f32);
    let b = quantize_q40_block(&x);
    assert_eq!(f16::from_le_bytes(b.d).to_f32(), -3.875);
    assert_eq!(b.qs[0], 0x48);
    assert_eq!(b.qs[15], 0x04);
    assert_eq!(block(x), "c0c348483737373726262626151515150404");
}

#[test]
fn matches_dllama_numpy_on_edge_cases() {
    // Negative values dominate: delta = -2.22 / -8 > 0.
    let neg: [f32; 32] = std::array::from_fn(|j| (-((j % 7) as f64) * 0.37) as f32);
    assert_eq!(block(neg), "713458473514038170584735140381705847");
    // -min == max: the maximum is taken (delta < 0), so -1.5 maps to 16.5 -> clipped to 15.
    let tie: [f32; 32] = std::array::from_fn(|j| match j {
        3 => 1.5,
        20 => -1.5,
        _ => (0.25 * ((j % 5) as f64 - 2.0)) as f32,
    });
    assert_eq!(block(tie), "00b29b897850f59b897857b59b897857b59b");
    // A scale that is an f16 subnormal.
    let tiny: [f32; 32] = std::array::from_fn(|j| ((j as f64 - 16.0) * 1e-7) as f32);
    assert_eq!(block(tiny), "0300809091a2a2b3b3c4c4d5d5e6e6f7f7f8");
    // Codes that land exactly on .5 before truncation.
    let half: [f32; 32] = std::array::from_fn(|k| ((k as f64 * 0.5 - 8.0) * 0.1) as f32);
    assert_eq!(block(half), "662e809191a2a2b3b3c4c4d5d5e6e6f7f7f8");
}

/// 4096 pseudo-random blocks over scales from 2^-24 to 2^10: the FNV-1a hash of the output
/// equals that of dllama's numpy code on the same values.
#[test]
fn matches_dllama_numpy_on_random_blocks() {
    let scales = [
        2f32.powi(-24),
        2f32.powi(-14),
        2f32.powi(-4),
        1.0,
        8.0,
        1024.0,
    ];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut values = Vec::with_capacity(4096 * 32);
    for b in 0..4096 {
        let s = scales[b % scales.len()];
        for _ in 0..32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = (x >> 40) as f32 / 16777216.0 - 0.5;
            values.push(v * s);
        }
    }
    let mut out = Vec::new();
    quantize_q40_into(&values, &mut out);
    assert_eq!(out.len(), 73728);
    assert_eq!(hex(&out[..18]), "0000c8a3deaafeb676407ed1a5766654377e");
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in &out {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    assert_eq!(h, 0xeeb31b7d3b3c71f5);
}

#[test]
fn zero_block_matches_numpy_negative_zero_scale() {
    assert_eq!(block([0.0; 32]), format!("0080{}", "88".repeat(16)));
}
