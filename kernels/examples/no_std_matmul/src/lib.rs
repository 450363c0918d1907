//! Quantize and multiply with `airllama-kernels` in a `#![no_std]` program: no allocator, no
//! operating system, every buffer on the stack.
//!
//! [`demo`] quantizes a 2 x 64 weight matrix to Q40 and a 64-value input to Q80 (dllama's
//! formats), multiplies them with the Q80 x Q40 kernel, and returns both outputs. Without std
//! there is no run-time CPU detection, so it runs the portable scalar backend; a program that
//! knows its CPU can pass `Backend::new(Isa::Avx2)` and friends instead. The crate also builds
//! for a hosted target, where `kernels/examples/quantize_matmul.rs` calls it and prints the
//! result.
#![no_std]

mod demo;

pub use demo::{N, demo, reference};

/// On bare metal (`target_os = "none"`) a `#![no_std]` binary or library in a final image must
/// say what a panic does; here: spin. Hosted targets use std's handler.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}
