//! Every non-matmul op the dllama CPU backend runs for LLAMA, QWEN3 and QWEN3_MOE models.
//!
//! Each function mirrors one dllama kernel (named in its doc comment) bit for bit on the
//! instruction set of the [`Backend`](crate::backend::Backend) it is given: same loop order, same
//! SIMD width and tail, same exp approximation and horizontal sums, and the multiply-adds that
//! g++ 12 fuses (`-ffp-contract=fast`) fused here too. [`Isa::Scalar`](crate::backend::Isa)
//! mirrors dllama's generic C++ with nothing fused; `Avx2` and `Avx512` both mirror the
//! `__AVX2__` paths (dllama has no AVX-512 code outside matmul); `Neon` and `NeonDotprod` the
//! `__ARM_NEON` paths.
//!
//! # Threads
//!
//! Kernels know nothing of threads. The executor reproduces dllama's op-forward functions: it
//! loops over batch items (and z, and columns) as they do and cuts the range dllama splits with
//! [`crate::parallel::split_range`], passing each thread its part. Where the split matters for
//! the bits (a SIMD loop restarts at the start of each thread's part and its scalar tail covers
//! `len % width` elements at the end of the part), the doc comment of the function says which
//! range to split. Ops whose result is the same for any split say so.
//!
//! # Sizes
//!
//! Slices must have the lengths documented on each function; a mismatch panics (the executor
//! validates shapes once when it builds the graph, so this is a programming error, not input).
macro_rules! dispatch {
    ($backend:expr, $name:ident ( $($arg:expr),* $(,)? )) => {
        match $backend.isa() {
            #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
            $crate::backend::Isa::Avx2 | $crate::backend::Isa::Avx512 => {
                // SAFETY: a Backend holding Avx2 or Avx512 is only constructed after checking
                // that the CPU has AVX2, FMA and F16C (backend.rs), the features of this body.
                unsafe { $crate::arch::x86::ops::$name($($arg),*) }
            }
            #[cfg(target_arch = "aarch64")]
            $crate::backend::Isa::Neon | $crate::backend::Isa::NeonDotprod => {
                // SAFETY: a Backend holding Neon or NeonDotprod is only constructed after
                // checking that the CPU has Advanced SIMD (backend.rs), the feature of this body.
                unsafe { $crate::arch::aarch64::ops::$name($($arg),*) }
            }
            _ => $crate::scalar::ops::$name($($arg),*),
        }
    };
}

pub mod activation;
pub mod attention;
pub mod cast;
pub mod elementwise;
pub mod math;
pub mod moe;
pub mod norm;
pub mod rope;

#[cfg(feature = "std")]
pub use activation::gelu;
pub use activation::silu;
pub use attention::{AttentionShape, multihead_attention, softmax};
pub use cast::{cast_f32_to_q80, cast_q80_to_f32, row_index};
pub use elementwise::{copy, merge_add_f32, merge_add_q80, merge_sum, mul_f32, mul_q80, scale};
pub use moe::{MoeGateError, moe_gate, sort_desc_indices};
pub use norm::{inv_rms, rms_norm_f32, rms_norm_q80};
#[cfg(feature = "std")]
pub use rope::fill_rope_cache;
pub use rope::{RopeError, RopeKind, RopeScaling, RopeSlice, rope_falcon, rope_llama};
