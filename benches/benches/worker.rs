//! End-to-end worker compute: one forward of the golden `llama-q40/2nodes` and
//! `qwen3moe-q40/2nodes` worker graphs (the weights and configs the recorded C++ root sent),
//! batch 1 (decode) and batch 32 (prefill), 1 and 2 threads. The syncs are replaced by a
//! no-op, so this measures the executor and kernels only, not the network.
use std::path::PathBuf;

use airllama::executor::{Executor, ExecutorOptions, SkipSync};
use airllama_kernels::backend::Backend;
use airllama_net::{NetConfig, NodeConfig, WeightRecord};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Builds worker 0 of a 2-node golden scenario with its recorded weights.
fn executor(variant: &str, n_threads: usize) -> Executor {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden"))
        .join(variant)
        .join("2nodes");
    let stream = std::fs::read(dir.join("w0_c0_root.to_worker.bin")).expect("golden stream");
    // 2 nodes: an 8-byte handshake, the root-ready ACK, then the net config.
    let (net, used) = NetConfig::decode_prefix(&stream[12..]).expect("net config");
    let mut at = 12 + used;
    let (node, used) = NodeConfig::decode_prefix(&stream[at..], &net).expect("node config");
    at += used;
    let mut exec = Executor::new(
        &net,
        &node,
        &ExecutorOptions::new(Backend::detect(), n_threads),
    )
    .expect("executor");
    loop {
        let (record, used) =
            WeightRecord::decode_prefix(&stream[at..], &node).expect("weight record");
        at += used;
        let Some(record) = record else { break };
        let target = node.check_weight(&record.header).expect("weight target");
        exec.weight_mut(&target)
            .expect("weight storage")
            .copy_from_slice(record.data);
    }
    exec
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("worker_forward");
    group.sample_size(20);
    for variant in ["llama-q40", "qwen3moe-q40"] {
        for threads in [1usize, 2] {
            let mut exec = executor(variant, threads);
            for (position, batch) in [(40u32, 1u32), (0, 32)] {
                let id = BenchmarkId::new(format!("{variant}/batch{batch}"), format!("{threads}t"));
                group.bench_function(id, |b| {
                    b.iter(|| {
                        exec.forward(position, batch, &mut SkipSync)
                            .expect("forward")
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
