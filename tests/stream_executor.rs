//! Layer streaming gives the executor exactly the bytes it would hold resident: a synthetic Q40
//! llama run resident and streamed (budget below two layers, one slot; a deeper ring; pread;
//! no overlap; the mmap baseline) must produce byte-identical pipes after every forward.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use airllama::executor::{Executor, ExecutorOptions, NoSync, WeightFeed};
use airllama::graph::{GraphParams, LlmGraph, SyncFloatType, WeightPlan};
use airllama::streaming::{MapMode, ModelStreaming, StreamingOptions, synthetic};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_io::stream::EngineChoice;
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;

struct Model {
    path: PathBuf,
    graph: LlmGraph,
    plan: WeightPlan,
}

fn model(name: &str, n_layers: u32) -> Model {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_executor");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let params = synthetic::LlamaShape {
        dim: 128,
        hidden_dim: 256,
        n_layers,
        n_heads: 4,
        n_kv_heads: 2,
        vocab_size: 200,
        seq_len: 64,
    }
    .params(FloatType::Q40);
    synthetic::write_model(&path, &params, 7).unwrap();
    let file = File::open(&path).unwrap();
    let header = ModelHeader::read_from(&mut std::io::BufReader::new(&file)).unwrap();
    let layout = ModelLayout::new(&header, file.metadata().unwrap().len()).unwrap();
    let graph = LlmGraph::build(&header, GraphParams::dllama(1, SyncFloatType::Q80, 0)).unwrap();
    let plan = WeightPlan::new(&graph, &layout).unwrap();
    Model { path, graph, plan }
}

/// Loads node 0's weights the root's way, skipping the ops `skip` says stream.
fn load(exec: &mut Executor, m: &Model, keep: &dyn Fn(&airllama_net::WeightTarget) -> bool) {
    let file = File::open(&m.path).unwrap();
    for load in m.plan.node_loads(0) {
        if !keep(&load.target) {
            continue;
        }
        let dst = exec.weight_mut(&load.target).unwrap();
        let mut at = 0;
        for r in load.bytes.ranges() {
            let n = (r.end - r.start) as usize;
            file.read_exact_at(&mut dst[at..at + n], r.start).unwrap();
            at += n;
        }
    }
}

/// Runs prefill (3 tokens) and 5 decode steps; returns every pipe after every forward.
fn run(m: &Model, exec: &mut Executor, mut feed: Option<&mut ModelStreaming>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let token_pipe = m.graph.pipes.token as usize;
    let steps: Vec<(u32, Vec<u32>)> = vec![
        (0, vec![5, 17, 42]),
        (3, vec![9]),
        (4, vec![150]),
        (5, vec![1]),
        (6, vec![77]),
        (7, vec![199]),
    ];
    for (position, tokens) in steps {
        let ids: &mut [f32] = bytemuck::cast_slice_mut(exec.pipe_mut(token_pipe).unwrap());
        for (slot, t) in ids.iter_mut().zip(&tokens) {
            *slot = *t as f32;
        }
        match feed.as_deref_mut() {
            Some(s) => {
                s.streamer.begin_forward().unwrap();
                exec.forward_with(
                    position,
                    tokens.len() as u32,
                    &mut NoSync,
                    Some(&mut s.streamer as &mut dyn WeightFeed),
                )
                .unwrap();
                let stats = s.streamer.end_forward();
                if s.streamer.reader().is_some() {
                    assert_eq!(stats.units_read, s.streamer.n_streamed_units() as u64);
                    assert!(stats.bytes_read > 0);
                }
            }
            None => exec
                .forward(position, tokens.len() as u32, &mut NoSync)
                .unwrap(),
        }
        for p in 0..m.graph.net.pipes.len() {
            out.push(exec.pipe_mut(p).unwrap().to_vec());
        }
    }
    out
}

fn options() -> ExecutorOptions {
    ExecutorOptions::new(Backend::detect(), 2)
}

fn streamed_run(
    m: &Model,
    opts: &StreamingOptions,
    map: MapMode,
) -> (Vec<Vec<u8>>, ModelStreaming) {
    let node = &m.graph.nodes[0];
    let mut s = ModelStreaming::plan(&m.path, node, &m.plan, opts, map).unwrap();
    let streamed = s.streamer.streamed_ops();
    let mut exec =
        Executor::with_streamed_weights(&m.graph.net, node, &options(), &streamed).unwrap();
    load(&mut exec, m, &|t| s.is_resident(node, t));
    let out = run(m, &mut exec, Some(&mut s));
    (out, s)
}

#[test]
fn streamed_forwards_are_bit_identical_to_resident() {
    let m = model("bit-identical.m", 4);
    let node = &m.graph.nodes[0];
    let mut resident = Executor::new(&m.graph.net, node, &options()).unwrap();
    load(&mut resident, &m, &|_| true);
    let expected = run(&m, &mut resident, None);
    // Sanity: the logits are not all zero (the model really computed something).
    let logits =
        &expected[expected.len() - m.graph.net.pipes.len() + m.graph.pipes.logits as usize];
    assert!(logits.iter().any(|b| *b != 0));

    let layer_bytes: u64 = m
        .plan
        .node_loads(0)
        .filter(|l| l.header.op_index == 1 && l.header.name.starts_with("block_"))
        .map(|l| l.header.n_bytes)
        .sum();
    // Below two layers: one slot, nothing resident, every layer read each forward.
    let small = StreamingOptions::new(layer_bytes * 3 / 2 + 16384);
    let (got, s) = streamed_run(&m, &small, MapMode::Off);
    assert_eq!(s.streamer.plan().n_slots, 1);
    assert!(s.streamer.n_streamed_units() >= 4);
    assert!(got == expected, "one-slot streaming differs from resident");

    // A ring of several slots with some layers resident.
    let mid = StreamingOptions::new(layer_bytes * 7 / 2);
    let (got, s) = streamed_run(&m, &mid, MapMode::Off);
    assert!(s.streamer.plan().n_slots >= 2);
    assert!(s.streamer.plan().resident.iter().any(|r| *r));
    assert!(
        got == expected,
        "multi-slot streaming differs from resident"
    );

    // pread engine, buffered, no overlap.
    let mut other = StreamingOptions::new(layer_bytes * 5);
    other.engine = EngineChoice::Pread;
    other.direct = false;
    other.overlap = false;
    let (got, _) = streamed_run(&m, &other, MapMode::Off);
    assert!(got == expected, "pread streaming differs from resident");

    // The mmap baseline serves the same bytes.
    let (got, _) = streamed_run(&m, &small, MapMode::Released);
    assert!(got == expected, "mmap baseline differs from resident");

    // A budget that holds everything streams nothing.
    let all = StreamingOptions::new(1 << 30);
    let (got, s) = streamed_run(&m, &all, MapMode::Off);
    assert!(s.streamer.reader().is_none());
    assert!(got == expected);
}

#[test]
fn a_budget_below_one_layer_is_refused_with_the_size_needed() {
    let m = model("too-small.m", 2);
    let err = ModelStreaming::plan(
        &m.path,
        &m.graph.nodes[0],
        &m.plan,
        &StreamingOptions::new(1000),
        MapMode::Off,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("cannot hold the largest layer"),
        "{err}"
    );
}
