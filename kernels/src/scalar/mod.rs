//! Portable scalar reference kernels: the oracle every SIMD path is property-tested against.
pub(crate) mod matmul;
pub(crate) mod ops;
pub(crate) mod quant;
