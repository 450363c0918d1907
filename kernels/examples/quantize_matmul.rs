//! Quantize and multiply with airllama-kernels: the `#![no_std]` code of
//! `examples/no_std_matmul` (which `scripts/test.sh` also builds for x86_64-unknown-none),
//! run here on the host and printed next to the f32 result.
//!
//! Run it with `cargo run -p airllama-kernels --example quantize_matmul`.
#[path = "no_std_matmul/src/demo.rs"]
mod no_std_matmul;

fn main() {
    let q = no_std_matmul::demo();
    let f = no_std_matmul::reference();
    for (row, (q, f)) in q.iter().zip(f).enumerate() {
        println!("row {row}: Q80 x Q40 = {q:.4}, f32 = {f:.4}");
    }
}
