//! Kernel bodies for this instruction set, one file per kernel family.
pub(crate) mod matmul;
pub(crate) mod ops;
pub(crate) mod packed;
pub(crate) mod quant;
pub(crate) mod tinyblas;
