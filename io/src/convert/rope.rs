//! Llama 3.1 RoPE scaling recovered from a GGUF's `rope_freqs.weight`.
//!
//! Hugging Face's Llama 3.1+ configs describe the scaling with four numbers (`factor`,
//! `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`), and dllama's
//! header stores those four as integers. llama.cpp's converter instead stores the table it
//! computes from them: for each rotary pair `i` of a head (`head_dim / 2` entries), with
//! `freq = 1 / theta^(2i / head_dim)` and `wavelen = 2π / freq`,
//!
//! * `1` when `wavelen < C / H` (high frequencies are kept),
//! * `F` when `wavelen > C / L` (low frequencies are divided by the factor),
//! * `1 / ((1 − s) / F + s)` in between, with `s = (C / wavelen − L) / (H − L)`,
//!
//! where F, L, H, C are the factor, the low and high frequency factors and the original
//! context. At run time llama.cpp divides each frequency by its entry; dllama's
//! `scaleFrequencyLlama3` computes the same blend `(1 − s)·freq / F + s·freq` from the four
//! numbers. So any (F, L, H, C) that reproduces the table gives dllama the frequencies
//! llama.cpp uses.
//!
//! F is the table's largest entry. The table fixes L, H and C only up to a common scale
//! (`s` depends on C/L and C/H alone), so [`llama3_scaling`] looks for integers: from two or
//! more entries in the blend region it solves `s = α·freq + β` for α and β, then takes the
//! smallest integer L for which H and C come out integral; with fewer such entries it tries
//! Llama 3's published values (L 1, H 4, C 8192: the defaults of llama.cpp's converter too),
//! then other small integers. Every candidate is checked by recomputing the whole table;
//! none fitting is an error that says why.
use std::f64::consts::PI;

use airllama_kernels::ops::RopeKind;

use super::ConvertError;
use crate::model::RopeScaling;

/// Relative tolerance between a stored entry and the recomputed one (the table was computed
/// in f32 by torch; our `powf` may differ from its by an ulp or two).
const TOLERANCE: f64 = 1e-4;

/// The table entry llama.cpp's converter computes for one rotary frequency (in f64: the
/// comparison tolerates the f32 rounding of the stored value).
fn entry(freq: f64, scaling: &RopeScaling) -> f64 {
    let (f, l, h, c) = (
        f64::from(scaling.factor),
        f64::from(scaling.low_freq_factor),
        f64::from(scaling.high_freq_factor),
        f64::from(scaling.orig_max_seq_len),
    );
    let wavelen = 2.0 * PI / freq;
    if wavelen < c / h {
        1.0
    } else if wavelen > c / l {
        f
    } else {
        let s = (c / wavelen - l) / (h - l);
        1.0 / ((1.0 - s) / f + s)
    }
}

/// The rotary frequencies of one head: `1 / theta^(2i / head_dim)`, in f32 as llama.cpp's
/// converter and dllama compute them.
fn frequencies(theta: f32, n: usize) -> Vec<f64> {
    let head_dim = (2 * n) as f32;
    (0..n)
        .map(|i| f64::from(1.0 / theta.powf((2 * i) as f32 / head_dim)))
        .collect()
}

/// The first entry where `scaling` does not reproduce `table`, with the value it gives.
fn first_mismatch(table: &[f32], freqs: &[f64], scaling: &RopeScaling) -> Option<(usize, f64)> {
    table
        .iter()
        .zip(freqs)
        .enumerate()
        .find_map(|(i, (&v, &f))| {
            let want = entry(f, scaling);
            ((f64::from(v) - want).abs() > TOLERANCE * want).then_some((i, want))
        })
}

fn near_integer(x: f64, rel: f64) -> Option<u32> {
    let r = x.round();
    (r >= 1.0 && r <= f64::from(i32::MAX as u32) && (x - r).abs() <= rel * r).then_some(r as u32)
}

/// Recovers dllama's four Llama 3.1 scaling numbers from `rope_freqs.weight` (`table`, one
/// entry per rotary pair) and the RoPE base. `Ok(None)` when every entry is 1 (no scaling).
pub fn llama3_scaling(
    table: &[f32],
    theta: f64,
    head_dim: u32,
) -> Result<Option<RopeScaling>, ConvertError> {
    let refuse = |why: String| {
        ConvertError::UnsupportedFeature(format!(
            "rope_freqs.weight ({} values): {why}; a .m header can only hold Llama 3.1 RoPE \
             scaling given by an integer factor, low/high frequency factors and original \
             context length",
            table.len()
        ))
    };
    if table.len() as u64 * 2 != u64::from(head_dim) {
        return Err(refuse(format!(
            "expected {} values, one per rotary pair of a {head_dim}-value head",
            head_dim / 2
        )));
    }
    if let Some(i) = table.iter().position(|v| !v.is_finite() || *v < 1.0 - 1e-6) {
        return Err(refuse(format!(
            "value {} at {i} is below 1 (Llama 3.1 scaling only slows frequencies down)",
            table[i]
        )));
    }
    if let Some(i) = (1..table.len()).find(|&i| table[i] < table[i - 1] * (1.0 - 1e-6)) {
        return Err(refuse(format!(
            "values decrease at {i} ({} after {}), but Llama 3.1 scaling grows with the \
             wavelength",
            table[i],
            table[i - 1]
        )));
    }
    let max = f64::from(table.iter().copied().fold(1.0f32, f32::max));
    if table.iter().all(|&v| (f64::from(v) - 1.0).abs() <= 1e-6) {
        return Ok(None);
    }
    let factor = near_integer(max, TOLERANCE).ok_or_else(|| {
        refuse(format!(
            "the factor {max} (its largest value) is not an integer"
        ))
    })?;
    let freqs = frequencies(theta as f32, table.len());

    let mut candidates: Vec<(u32, u32, u32)> = Vec::new();
    // Entries strictly inside the blend: s = (1/v − 1/F) / (1 − 1/F) = α·freq + β.
    let inv_f = 1.0 / f64::from(factor);
    let blend: Vec<(f64, f64)> = table
        .iter()
        .zip(&freqs)
        .filter(|(v, _)| {
            let v = f64::from(**v);
            v > 1.0 + TOLERANCE && v < f64::from(factor) * (1.0 - TOLERANCE)
        })
        .map(|(&v, &f)| (f, (1.0 / f64::from(v) - inv_f) / (1.0 - inv_f)))
        .collect();
    if blend.len() >= 2 {
        // Least squares on (freq, s).
        let n = blend.len() as f64;
        let mx = blend.iter().map(|p| p.0).sum::<f64>() / n;
        let my = blend.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = blend.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
        let sxy: f64 = blend.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx > 0.0 {
            let alpha = sxy / sxx;
            let beta = my - alpha * mx;
            // β = −L/(H − L), α = C/(2π(H − L)).
            if beta < 0.0 && alpha > 0.0 {
                for low in 1..=64u32 {
                    let span = -f64::from(low) / beta;
                    let high = f64::from(low) + span;
                    let ctx = 2.0 * PI * alpha * span;
                    if let (Some(h), Some(c)) = (near_integer(high, 1e-3), near_integer(ctx, 1e-3))
                        && h > low
                    {
                        candidates.push((low, h, c));
                        break;
                    }
                }
            }
        }
    }
    // Llama 3's published numbers, then small integers with a power-of-two context (the
    // table fixes few constraints when hardly any frequency falls inside the blend).
    candidates.push((1, 4, 8192));
    for high in 2..=32u32 {
        for shift in 4..=24u32 {
            candidates.push((1, high, 1 << shift));
        }
    }
    let mut best_miss: Option<(usize, f64)> = None;
    for (low, high, ctx) in candidates {
        let scaling = RopeScaling {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            orig_max_seq_len: ctx,
            rope_type: RopeKind::Llama31,
        };
        match first_mismatch(table, &freqs, &scaling) {
            None => return Ok(Some(scaling)),
            Some(miss) => {
                if best_miss.is_none_or(|b| miss.0 > b.0) {
                    best_miss = Some(miss);
                }
            }
        }
    }
    let (i, want) = best_miss.unwrap_or((0, 1.0));
    Err(refuse(format!(
        "no such parameters reproduce it (with factor {factor}, the closest fit differs at \
         entry {i}: {} instead of about {want:.6})",
        table[i]
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(theta: f32, head_dim: usize, s: &RopeScaling) -> Vec<f32> {
        frequencies(theta, head_dim / 2)
            .iter()
            .map(|&f| entry(f, s) as f32)
            .collect()
    }

    fn scaling(factor: u32, low: u32, high: u32, ctx: u32) -> RopeScaling {
        RopeScaling {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            orig_max_seq_len: ctx,
            rope_type: RopeKind::Llama31,
        }
    }

    #[test]
    fn recovers_llama_3_numbers() {
        for s in [scaling(8, 1, 4, 8192), scaling(32, 1, 4, 8192)] {
            let t = table(500000.0, 128, &s);
            assert_eq!(llama3_scaling(&t, 500000.0, 128).unwrap(), Some(s));
        }
    }

    #[test]
    fn recovers_other_integers() {
        // L = 2 with H = 5 and C = 16384: the smallest integer L giving integral H and C.
        let s = scaling(16, 2, 5, 16384);
        let t = table(500000.0, 128, &s);
        assert_eq!(llama3_scaling(&t, 500000.0, 128).unwrap(), Some(s));
    }

    #[test]
    fn all_ones_is_no_scaling_and_garbage_is_refused() {
        assert_eq!(llama3_scaling(&[1.0; 64], 500000.0, 128).unwrap(), None);
        assert!(llama3_scaling(&[1.0; 32], 500000.0, 128).is_err());
        let mut t = table(500000.0, 128, &scaling(8, 1, 4, 8192));
        t[10] = 2.0;
        assert!(llama3_scaling(&t, 500000.0, 128).is_err());
        let mut t = table(500000.0, 128, &scaling(8, 1, 4, 8192));
        t[40] = 7.0;
        assert!(llama3_scaling(&t, 500000.0, 128).is_err());
        let mut t = vec![1.0f32; 64];
        t[63] = 2.5;
        assert!(llama3_scaling(&t, 500000.0, 128).is_err());
        t[63] = f32::NAN;
        assert!(llama3_scaling(&t, 500000.0, 128).is_err());
    }
}
