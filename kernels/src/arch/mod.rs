//! Instruction-set specific kernel bodies. Each function here is `unsafe` with a
//! `#[target_feature]` attribute; the safe wrappers in the public modules call them only while
//! holding a [`crate::backend::Backend`] that proves the feature is present.
#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
