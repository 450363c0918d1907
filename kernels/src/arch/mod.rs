//! Instruction-set specific kernel bodies. Each function here is `unsafe` with a
//! `#[target_feature]` attribute; the safe wrappers in the public modules call them only while
//! holding a [`crate::backend::Backend`] that proves the feature is present.
#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
// Only where the target ABI has SSE registers: on soft-float targets such as
// `x86_64-unknown-none`, LLVM cannot lower vector code even inside `#[target_feature]` functions
// ("Do not know how to split the result of this operator"), and no AVX2 `Backend` can exist
// there anyway. Dispatchers use the same `cfg`.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
pub(crate) mod x86;
