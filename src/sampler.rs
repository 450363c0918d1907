//! Next-token sampling with dllama's arithmetic: temperature, top-p, seeded xorshift.
//!
//! Same seed, same logits, same [`Backend`] ⇒ the same ids as dllama's `Sampler` built for that
//! instruction set:
//!
//! - temperature 0: argmax, the first index holding the maximum (dllama's `sample_argmax`);
//! - otherwise each logit is divided by the temperature, softmax'd by the kernel dllama uses
//!   (`softmax_F32`, whose SIMD path depends on the ISA: [`airllama_kernels::ops::softmax`]), and
//!   one coin is drawn from the xorshift* generator;
//! - with `top_p` outside `(0, 1)` the coin walks the whole distribution (`sample_mult`);
//!   inside it, the tokens with probability `>= (1 - top_p) / (n - 1)` are sorted by descending
//!   probability (stable, as glibc's merge-sort `qsort`), cut after the cumulative probability
//!   first exceeds `top_p`, and the coin is scaled by that cumulative sum (`sample_topp`).
//!
//! All sums run in `f32` in dllama's order. Where dllama has undefined behaviour (no candidate
//! survives the top-p cut, which only NaN probabilities or a one-token vocabulary cause) the
//! last index is returned, as `sample_mult` does when rounding leaves the coin uncovered.
use airllama_kernels::backend::Backend;
use airllama_kernels::ops::softmax;

/// Why a sampler could not be built or could not sample.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SamplerError {
    /// The temperature is negative, NaN or infinite.
    #[error("temperature {0} is not a finite number >= 0")]
    BadTemperature(f32),
    /// top-p is NaN.
    #[error("top-p {0} is not a number")]
    BadTopP(f32),
    /// The vocabulary size is 0 or does not fit dllama's `int`.
    #[error("vocabulary size {0} is not in 1..=i32::MAX")]
    BadVocabSize(usize),
    /// The logits slice does not have one value per token.
    #[error("{got} logits given for a vocabulary of {expected}")]
    LogitsLength {
        /// The sampler's vocabulary size.
        expected: usize,
        /// The slice length.
        got: usize,
    },
}

/// dllama's random source: Marsaglia's xorshift on a 64-bit state with the xorshift*
/// multiplier, high 32 bits out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XorShiftRng {
    state: u64,
}

impl XorShiftRng {
    /// A generator seeded like dllama's `--seed` (the state is the seed itself; a zero seed stays
    /// zero forever, as in dllama).
    pub const fn new(seed: u64) -> XorShiftRng {
        XorShiftRng { state: seed }
    }

    /// The current state.
    pub const fn state(&self) -> u64 {
        self.state
    }

    /// dllama's `randomU32`.
    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// dllama's `randomF32`: 24 random bits as a float in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }
}

/// Temperature / top-p / seed sampler over one vocabulary.
#[derive(Clone, Debug)]
pub struct Sampler {
    backend: Backend,
    vocab_size: usize,
    temperature: f32,
    top_p: f32,
    rng: XorShiftRng,
    /// (probability, index) candidates of top-p sampling, kept to avoid reallocating.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    /// A sampler like dllama's `Sampler(vocab_size, temperature, topp, seed)`, computing the
    /// softmax with `backend` (pass the backend whose dllama build you want to match).
    pub fn new(
        backend: Backend,
        vocab_size: usize,
        temperature: f32,
        top_p: f32,
        seed: u64,
    ) -> Result<Sampler, SamplerError> {
        if vocab_size == 0 || vocab_size > i32::MAX as usize {
            return Err(SamplerError::BadVocabSize(vocab_size));
        }
        check_temperature(temperature)?;
        if top_p.is_nan() {
            return Err(SamplerError::BadTopP(top_p));
        }
        Ok(Sampler {
            backend,
            vocab_size,
            temperature,
            top_p,
            rng: XorShiftRng::new(seed),
            candidates: Vec::new(),
        })
    }

    /// Vocabulary size (the logits length [`Sampler::sample`] expects).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The temperature.
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// The top-p threshold.
    pub fn top_p(&self) -> f32 {
        self.top_p
    }

    /// The random generator (its state advances once per non-greedy sample).
    pub fn rng(&self) -> XorShiftRng {
        self.rng
    }

    /// dllama's `setTemp`.
    pub fn set_temperature(&mut self, temperature: f32) -> Result<(), SamplerError> {
        check_temperature(temperature)?;
        self.temperature = temperature;
        Ok(())
    }

    /// dllama's `setSeed`: restarts the generator from `seed`.
    pub fn set_seed(&mut self, seed: u64) {
        self.rng = XorShiftRng::new(seed);
    }

    /// Picks the next token. `logits` is overwritten with the probabilities when the
    /// temperature is not 0 (as dllama does with its logits pipe).
    pub fn sample(&mut self, logits: &mut [f32]) -> Result<u32, SamplerError> {
        if logits.len() != self.vocab_size {
            return Err(SamplerError::LogitsLength {
                expected: self.vocab_size,
                got: logits.len(),
            });
        }
        if self.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        for v in logits.iter_mut() {
            *v /= self.temperature;
        }
        softmax(self.backend, logits);
        let coin = self.rng.next_f32();
        Ok(if self.top_p <= 0.0 || self.top_p >= 1.0 {
            sample_mult(logits, coin)
        } else {
            sample_top_p(logits, self.top_p, &mut self.candidates, coin)
        })
    }
}

fn check_temperature(t: f32) -> Result<(), SamplerError> {
    if t.is_finite() && t >= 0.0 {
        Ok(())
    } else {
        Err(SamplerError::BadTemperature(t))
    }
}

/// The first index of the largest value (`>` comparisons from index 0, like `sample_argmax`).
fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = x[0];
    for (i, &v) in x.iter().enumerate().skip(1) {
        if v > best_value {
            best = i;
            best_value = v;
        }
    }
    best as u32
}

/// `sample_mult`: the first index whose running `f32` sum exceeds the coin.
fn sample_mult(probs: &[f32], coin: f32) -> u32 {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i as u32;
        }
    }
    (probs.len() - 1) as u32
}

/// `sample_topp` (nucleus sampling), see the module docs.
fn sample_top_p(probs: &[f32], top_p: f32, candidates: &mut Vec<(f32, u32)>, coin: f32) -> u32 {
    let n = probs.len();
    let cutoff = (1.0f32 - top_p) / (n - 1) as f32;
    candidates.clear();
    candidates.extend(
        probs
            .iter()
            .enumerate()
            .filter(|&(_, &p)| p >= cutoff)
            .map(|(i, &p)| (p, i as u32)),
    );
    if candidates.is_empty() {
        return (n - 1) as u32;
    }
    // Candidates are never NaN (they passed `>=`), so this order is total; the sort is stable.
    candidates.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));

    let mut cumulative = 0.0f32;
    let mut last = candidates.len() - 1;
    for (i, &(p, _)) in candidates.iter().enumerate() {
        cumulative += p;
        if cumulative > top_p {
            last = i;
            break;
        }
    }
    let r = coin * cumulative;
    let mut cdf = 0.0f32;
    for &(p, index) in &candidates[..=last] {
        cdf += p;
        if r < cdf {
            return index;
        }
    }
    candidates[last].1
}
