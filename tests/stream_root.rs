//! `Root::open_streaming` (`airllama inference --mem-budget`) on one node: a synthetic Q40
//! llama generated with a budget below two layers gives the same logits, bit for bit, as the
//! resident root, and each forward reports its streaming statistics.
use std::path::Path;

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootOptions};
use airllama::streaming::{StreamingOptions, synthetic};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;

fn options(model: &Path) -> RootOptions {
    RootOptions {
        model: model.to_path_buf(),
        workers: Vec::new(),
        sync_type: SyncFloatType::Q80,
        max_seq_len: 0,
        n_threads: 2,
        turbo: false,
        backend: Backend::detect(),
        max_memory: u64::MAX,
    }
}

fn run(root: &mut Root) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let steps: [(u32, &[u32]); 4] = [(0, &[3, 99, 250]), (3, &[7]), (4, &[511]), (5, &[0])];
    for (position, tokens) in steps {
        let stats = root.forward(position, tokens).unwrap();
        if let Some(s) = root.streamer() {
            let st = stats.stream.expect("a streaming root reports stream stats");
            assert_eq!(st.units_read, s.n_streamed_units() as u64);
            assert!(st.bytes_read > 0 && st.forward_time >= st.io_wait);
        } else {
            assert!(stats.stream.is_none());
        }
        out.push(root.logits_mut().unwrap().to_vec());
    }
    out
}

#[test]
fn streamed_root_logits_are_bit_identical() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_root");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.m");
    let shape = synthetic::LlamaShape {
        dim: 256,
        hidden_dim: 512,
        n_layers: 5,
        n_heads: 8,
        n_kv_heads: 4,
        vocab_size: 512,
        seq_len: 64,
    };
    synthetic::write_model(&path, &shape.params(FloatType::Q40), 3).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    let layer_bytes = layer.end - layer.start;

    let mut resident = Root::open(&options(&path), &mut |_| {}).unwrap();
    let expected = run(&mut resident);
    drop(resident);
    assert!(expected.iter().all(|l| l.iter().all(|v| v.is_finite())));

    let budget = StreamingOptions::new(layer_bytes * 3 / 2 + 3 * 4096);
    let mut streamed = Root::open_streaming(&options(&path), Some(&budget), &mut |_| {}).unwrap();
    let s = streamed.streamer().expect("the budget is below the model");
    assert_eq!(s.plan().n_slots, 1);
    assert!(s.n_streamed_units() as u32 >= shape.n_layers);
    let got = run(&mut streamed);
    let same = expected.iter().zip(&got).all(|(a, b)| {
        a.iter()
            .map(|v| v.to_bits())
            .eq(b.iter().map(|v| v.to_bits()))
    });
    assert!(same, "streamed logits differ from resident ones");
}
