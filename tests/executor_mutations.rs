//! No panic reachable from the wire: node configs of the golden sessions with random words
//! overwritten, each one that the net codec still accepts is bound by the executor and (when
//! that succeeds) run for a batch-32 and a batch-1 forward. Every outcome must be a value (a
//! typed error or a finished forward), never a panic.
#[macro_use]
mod golden_support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use airllama::executor::{Executor, ExecutorOptions, SkipSync};
use airllama_kernels::backend::Backend;
use airllama_net::{NetConfig, NodeConfig, OpParams, PointerSource, PointerType};

/// xorshift64*: a fixed sequence, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Overwrites 1 to 3 words of the encoded node config with a small value or a flipped bit.
fn byte_mutation(rng: &mut Rng, original: &[u8], what: &mut Vec<String>) -> Vec<u8> {
    let mut bytes = original.to_vec();
    for _ in 0..1 + rng.below(3) {
        // Skip the ACK and the node index.
        let at = 8 + 4 * rng.below((bytes.len() - 8) / 4);
        let value = if rng.below(2) == 0 {
            rng.below(48) as u32
        } else {
            u32::from_le_bytes(bytes[at..at + 4].try_into().expect("word")) ^ (1 << rng.below(32))
        };
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        what.push(format!("word at {at} = {value}"));
    }
    bytes
}

/// Points an op's input, output or one of its config indexes somewhere else, or changes a
/// count in its config: the shapes of such graphs disagree in ways only the executor checks.
fn typed_mutation(rng: &mut Rng, node: &mut NodeConfig, n_pipes: usize, what: &mut Vec<String>) {
    let n_buffers = node.buffers.len();
    let n_ops: usize = node.segments.iter().map(|s| s.ops.len()).sum();
    let target = rng.below(n_ops);
    let Some(op) = node
        .segments
        .iter_mut()
        .flat_map(|s| s.ops.iter_mut())
        .nth(target)
    else {
        return;
    };
    let buffer = rng.below(n_buffers) as u32;
    let small = rng.below(40) as u32;
    what.push(format!("op {} layer {}", op.name, op.index));
    match rng.below(3) {
        0 | 1 => {
            let pointer = if rng.below(2) == 0 {
                &mut op.input
            } else {
                &mut op.output
            };
            pointer.source = if rng.below(4) == 0 {
                PointerSource::Pipe
            } else {
                PointerSource::Buffer
            };
            pointer.index = match pointer.source {
                PointerSource::Pipe => rng.below(n_pipes) as u32,
                PointerSource::Buffer => buffer,
            };
            pointer.pointer_type = match rng.below(3) {
                0 => PointerType::Raw,
                1 => PointerType::Batch,
                _ => PointerType::BatchedSlice,
            };
            what.push(format!("pointer -> {pointer:?}"));
        }
        _ => {
            match &mut op.params {
                OpParams::RmsNorm(c) => {
                    if rng.below(2) == 0 {
                        c.inv_rms_buffer_index = buffer
                    } else {
                        c.n_columns = small
                    }
                }
                OpParams::InvRms(c) => c.n_columns = small,
                OpParams::Matmul(c) => match rng.below(3) {
                    0 => c.n_experts = small,
                    1 => c.n_active_experts = small,
                    _ => c.active_expert_indexes_buffer_index = buffer,
                },
                OpParams::Rope(c) => match rng.below(5) {
                    0 => c.rope_cache_buffer_index = buffer,
                    1 => c.slice.head_dim = small,
                    2 => c.slice.q_dim0 = small * 8,
                    3 => c.slice.seq_len = small,
                    _ => c.is_q = !c.is_q,
                },
                OpParams::MultiHeadAtt(c) => match rng.below(8) {
                    0 => c.n_heads = small,
                    1 => c.n_heads0 = small,
                    2 => c.n_kv_heads = small,
                    3 => c.head_dim = small,
                    4 => c.seq_len = small,
                    5 => c.kv_dim0 = small * 4,
                    6 => c.query_buffer_index = buffer,
                    _ => c.att_buffer_index = buffer,
                },
                OpParams::Mul {
                    multiplier_buffer_index,
                } => *multiplier_buffer_index = buffer,
                OpParams::Scale { scale_buffer_index } => *scale_buffer_index = buffer,
                OpParams::MoeGate(c) => {
                    if rng.below(2) == 0 {
                        c.k = small
                    } else {
                        c.indexes_buffer_index = buffer
                    }
                }
                _ => {}
            }
            what.push(format!("params -> {:?}", op.params));
        }
    }
}

fn mutate_variant(variant: &str, cases: usize, seed: u64) -> (usize, usize) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden"))
        .join(variant)
        .join("3nodes");
    let stream = std::fs::read(dir.join("w1_c0_root.to_worker.bin")).expect("golden stream");
    // 3 nodes: 26-byte handshake, root-ready ACK, then the net config.
    let (net, used) = NetConfig::decode_prefix(&stream[30..]).expect("net config");
    let node_at = 30 + used;
    let (_, node_len) = NodeConfig::decode_prefix(&stream[node_at..], &net).expect("node config");
    let original = &stream[node_at..node_at + node_len];
    let (typed, _) = NodeConfig::decode_prefix(original, &net).expect("node config");
    let mut rng = Rng(seed);
    let (mut built, mut ran) = (0, 0);
    let mut options = ExecutorOptions::new(Backend::detect(), 2);
    options.max_memory = 256 << 20;
    for case in 0..cases {
        let mut what = Vec::new();
        let bytes = if case % 2 == 0 {
            byte_mutation(&mut rng, original, &mut what)
        } else {
            let mut node = typed.clone();
            typed_mutation(&mut rng, &mut node, net.pipes.len(), &mut what);
            let mut out = Vec::new();
            node.encode(&mut out);
            out
        };
        let Ok((node, _)) = NodeConfig::decode_prefix(&bytes, &net) else {
            continue;
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Ok(mut exec) = Executor::new(&net, &node, &options) else {
                return (false, false);
            };
            let a = exec.forward(0, 32, &mut SkipSync).is_ok();
            let b = exec.forward(40, 1, &mut SkipSync).is_ok();
            (true, a && b)
        }));
        match outcome {
            Ok((b, r)) => {
                built += usize::from(b);
                ran += usize::from(r);
            }
            Err(_) => {
                panic!("{variant} case {case} (seed {seed}): the executor panicked on {what:?}")
            }
        }
    }
    (built, ran)
}

#[test]
fn mutated_configs_never_panic() {
    golden_or_skip!();
    // The executor turns a panic in a pool thread into an error; count them anyway, because a
    // panic at all means a shape check is missing.
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    for (variant, seed) in [
        ("llama-q40", 1),
        ("qwen3moe-q40", 2),
        ("llama-f32", 3),
        ("qwen3-q40", 4),
    ] {
        let (built, ran) = mutate_variant(variant, 400, seed);
        println!("{variant}: {built} mutated graphs bound, {ran} ran both forwards");
        assert!(
            built > 0,
            "no mutation survived decoding: the test would prove nothing"
        );
    }
}
