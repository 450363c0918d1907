//! `Root::open_streaming` (`airllama inference --mem-budget`): a synthetic Q40 llama run with
//! a budget below two layers gives the same logits, bit for bit, as the resident root, and each
//! forward reports its streaming statistics; on one node (streamed from the model file) and on
//! two (the root streams its slices back from a spill file, the worker an in-process airllama
//! worker with every weight resident).
use std::path::{Path, PathBuf};

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootOptions};
use airllama::streaming::{StreamingOptions, synthetic};
use airllama::worker::{WorkerOptions, serve_session};
use airllama_io::layout::ModelLayout;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;
use airllama_net::PeerAddress;
use airllama_net::transport::Listener;

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
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
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

const SMALL: synthetic::LlamaShape = synthetic::LlamaShape {
    dim: 256,
    hidden_dim: 512,
    n_layers: 5,
    n_heads: 8,
    n_kv_heads: 4,
    vocab_size: 512,
    seq_len: 64,
};

/// A synthetic model of `shape` in `dir` and one layer's bytes.
fn model(dir: &Path, shape: synthetic::LlamaShape) -> (PathBuf, u64) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("model.m");
    synthetic::write_model(&path, &shape.params(FloatType::Q40), 3).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = ModelHeader::parse(&bytes).unwrap();
    let layout = ModelLayout::new(&header, bytes.len() as u64).unwrap();
    let layer = layout.layer_range(0).unwrap();
    (path, layer.end - layer.start)
}

fn same_bits(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.iter()
                .map(|v| v.to_bits())
                .eq(b.iter().map(|v| v.to_bits()))
        })
}

#[test]
fn streamed_root_logits_are_bit_identical() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_root");
    let (path, layer_bytes) = model(&dir, SMALL);
    let n_layers = SMALL.n_layers;

    let mut resident = Root::open(&options(&path), &mut |_| {}).unwrap();
    let expected = run(&mut resident);
    drop(resident);
    assert!(expected.iter().all(|l| l.iter().all(|v| v.is_finite())));

    let budget = StreamingOptions::new(layer_bytes * 3 / 2 + 3 * 4096);
    let mut streamed = Root::open_streaming(&options(&path), Some(&budget), &mut |_| {}).unwrap();
    let s = streamed.streamer().expect("the budget is below the model");
    assert_eq!(s.plan().n_slots, 1);
    assert!(s.n_streamed_units() as u32 >= n_layers);
    let got = run(&mut streamed);
    assert!(
        same_bits(&expected, &got),
        "streamed logits differ from resident ones"
    );
}

/// Runs `run` on a root over `path` with one in-process airllama worker (all resident).
fn with_worker(path: &Path, streaming: Option<&StreamingOptions>) -> Vec<Vec<f32>> {
    let listener = Listener::bind("127.0.0.1", 0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let worker = std::thread::spawn(move || {
        let options = WorkerOptions {
            host: "127.0.0.1".into(),
            port,
            n_threads: 1,
            turbo: false,
            backend: Backend::detect(),
            max_memory: u64::MAX,
            streaming: None,
            model: None,
            cache_dir: None,
            net_timeout: None,
            allow: Default::default(),
        };
        serve_session(&listener, &options, &mut |_| {}).map_err(|e| e.to_string())
    });
    let mut root_options = options(path);
    root_options.workers = vec![PeerAddress {
        host: "127.0.0.1".into(),
        port,
    }];
    let mut root = Root::open_streaming(&root_options, streaming, &mut |_| {}).unwrap();
    if streaming.is_some() {
        let s = root
            .streamer()
            .expect("the budget is below the root's slice");
        assert_eq!(s.plan().n_slots, 1, "{}", s.describe());
        assert!(s.n_streamed_units() >= 3, "{}", s.describe());
    }
    let logits = run(&mut root);
    root.finish().unwrap();
    assert_eq!(
        worker.join().unwrap(),
        Ok(4),
        "the worker ran every forward"
    );
    logits
}

#[test]
fn streamed_root_with_a_worker_gives_bit_identical_logits() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stream_root_2nodes");
    // The root's slices of the feed-forward matrices (1.7 MB) take more than one 1 MiB read
    // chunk on their way to the spill file.
    let shape = synthetic::LlamaShape {
        dim: 1536,
        hidden_dim: 4096,
        n_layers: 3,
        ..SMALL
    };
    let (path, layer_bytes) = model(&dir, shape);
    let expected = with_worker(&path, None);
    assert!(expected.iter().all(|l| l.iter().all(|v| v.is_finite())));
    // The root holds half of each layer: a budget of 1.5 half-layers holds one ring slot.
    let mut budget = StreamingOptions::new(layer_bytes / 2 * 3 / 2 + 3 * 4096);
    budget.spill_dir = dir.join("spill");
    let got = with_worker(&path, Some(&budget));
    assert!(
        same_bits(&expected, &got),
        "streamed logits differ from resident ones"
    );
    let left: Vec<_> = std::fs::read_dir(&budget.spill_dir).unwrap().collect();
    assert!(left.is_empty(), "spill files left: {left:?}");
}
