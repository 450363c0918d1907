//! The executor's interleaved Q40 weights (eight rows per `Q40x8Block`, set up before the first
//! forward) change no bit: on a recorded dllama node config (llama, Q40 weights, Q80 syncs),
//! random weights and inputs give byte-identical pipes and buffers with and without the
//! layout, for a prefill batch (tinyBLAS order) and decode steps (row order), at 1 and 2
//! threads, also after a weight is rewritten between forwards.
#[macro_use]
mod golden_support;

use airllama::executor::{Executor, ExecutorOptions, SkipSync};
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;
use airllama_kernels::packed::supports_q40x8;
use airllama_net::{NetConfig, NodeConfig, WeightTarget};

/// splitmix64 bytes.
fn fill(bytes: &mut [u8], seed: u64) {
    let mut state = seed;
    for chunk in bytes.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// Q40 scales kept in a tame range (sign, exponent 10..13) so sums stay finite and every
/// value is compared, not only NaNs.
fn tame_q40(bytes: &mut [u8]) {
    for block in bytes.chunks_exact_mut(18) {
        block[1] = (block[1] & 0x83) | 0x28;
    }
}

fn configs(golden: &std::path::Path) -> (NetConfig, NodeConfig) {
    let dir = golden.join("llama-q40").join("3nodes");
    let stream = std::fs::read(dir.join("w1_c0_root.to_worker.bin")).expect("golden stream");
    // 3 nodes: 26-byte handshake, root-ready ACK, then the net config.
    let (net, used) = NetConfig::decode_prefix(&stream[30..]).expect("net config");
    let (node, _) = NodeConfig::decode_prefix(&stream[30 + used..], &net).expect("node config");
    (net, node)
}

/// Every op's weight filled from `seed`.
fn load(exec: &mut Executor, node: &NodeConfig, seed: u64) {
    for (s, segment) in node.segments.iter().enumerate() {
        for (o, op) in segment.ops.iter().enumerate() {
            let n_bytes = op.weight_size.n_bytes();
            if n_bytes == 0 {
                continue;
            }
            let target = WeightTarget {
                segment: s as u32,
                op: o as u32,
                offset: 0,
                n_bytes,
            };
            let dst = exec.weight_mut(&target).expect("weight");
            fill(dst, seed ^ ((s as u64) << 32 | o as u64));
            if op.weight_size.float_type() == Some(FloatType::Q40) {
                tame_q40(dst);
            } else {
                for v in dst.chunks_exact_mut(4) {
                    v[3] &= 0x3f;
                }
            }
        }
    }
}

/// Every pipe's bytes after the forwards.
fn run(exec: &mut Executor, net: &NetConfig, forwards: &[(u32, u32)]) -> Vec<Vec<u8>> {
    let mut snapshots = Vec::new();
    for (k, &(position, batch)) in forwards.iter().enumerate() {
        for p in 1..net.pipes.len() {
            if let Some(pipe) = exec.pipe_mut(p) {
                fill(pipe, 77 + k as u64 * 31 + p as u64);
                // Finite f32 inputs: clear the exponent's top bits.
                for v in pipe.chunks_exact_mut(4) {
                    v[3] &= 0x3f;
                }
            }
        }
        exec.forward(position, batch, &mut SkipSync)
            .expect("forward");
        for p in 0..net.pipes.len() {
            snapshots.push(exec.pipe_mut(p).expect("pipe").to_vec());
        }
    }
    snapshots
}

#[test]
fn interleaved_weights_change_no_bit() {
    let backend = Backend::detect();
    if !supports_q40x8(backend) {
        eprintln!("SKIPPED: no interleaved Q40 kernels for {}", backend.isa());
        return;
    }
    let golden = golden_or_skip!();
    let (net, node) = configs(&golden);
    let forwards = [(0, 32), (32, 1), (33, 1), (34, 7)];
    for threads in [1, 2] {
        let options = ExecutorOptions::new(backend, threads);
        let mut rows = Executor::new(&net, &node, &options).expect("executor");
        rows.keep_row_layout();
        load(&mut rows, &node, 5);
        let expected = run(&mut rows, &net, &forwards);
        assert_eq!(rows.interleaved_weights().0, 0);

        let mut packed = Executor::new(&net, &node, &options).expect("executor");
        load(&mut packed, &node, 5);
        let got = run(&mut packed, &net, &forwards);
        let (ops, bytes) = packed.interleaved_weights();
        assert!(ops >= 4, "only {ops} matmuls interleaved");
        assert!(
            got == expected,
            "{threads} threads: outputs differ ({ops} ops, {bytes} bytes)"
        );

        // Rewriting the weights after a forward (they go back to the row layout and are
        // interleaved again before the next one) still gives the same bits.
        load(&mut packed, &node, 5);
        assert!(run(&mut packed, &net, &forwards) == expected);
    }
}
