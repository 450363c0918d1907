//! airllama-kernels: the compute core of airllama.
//!
//! Every kernel here reproduces the numerics of the distributed-llama ("dllama") CPU backend
//! bit for bit on the instruction set it runs on, so that an airllama worker can stand in for a
//! C++ worker inside a dllama cluster without changing a single synced byte.
//!
//! The core types:
//! - [`block::Q40Block`] and [`block::Q80Block`]: the 18- and 34-byte quantized blocks of dllama.
//! - [`backend::Backend`]: a proof that the running CPU has an instruction set; every kernel takes
//!   one and dispatches on it. [`backend::Backend::scalar`] is always available and is the
//!   reference every SIMD path is tested against.
//!
//! ```
//! use airllama_kernels::backend::Backend;
//! let backend = Backend::scalar();
//! assert_eq!(backend.isa(), airllama_kernels::backend::Isa::Scalar);
//! ```
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod arch;
pub mod backend;
pub mod block;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod parallel;
pub mod quant;
pub(crate) mod scalar;
