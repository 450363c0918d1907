//! Run a prompt through [`Root`] from Rust: load a model and tokenizer, generate greedily on
//! this machine (no workers), print the text and the speed. The same `Root` drives a cluster:
//! put worker addresses in `RootOptions::workers`.
//!
//! Run it with
//! `cargo run --release --example prompt -- model.m tokenizer.t "The capital of France is"`
//! (`scripts/quickstart.sh` leaves a converted SmolLM2 in `.cache/models`).
use std::path::PathBuf;
use std::process::ExitCode;

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootOptions, Step, Summary, generate};
use airllama::sampler::Sampler;
use airllama::tokenizer::{StreamDecoder, Tokenizer};
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, tokenizer, prompt] = args.as_slice() else {
        eprintln!("usage: prompt <model.m> <tokenizer.t> <prompt>");
        return ExitCode::from(2);
    };
    match run(model.into(), tokenizer.into(), prompt) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(model: PathBuf, tokenizer: PathBuf, prompt: &str) -> Result<(), Box<dyn std::error::Error>> {
    let tokenizer = Tokenizer::load(&tokenizer)?;
    let backend = Backend::detect();
    let mut options = RootOptions {
        model,
        workers: Vec::new(),
        sync_type: SyncFloatType::Q80,
        max_seq_len: 0,
        n_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        turbo: false,
        backend,
        max_memory: u64::MAX,
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
    };
    // Q40 weights run with q80 buffers, F32 weights with f32 ones (dllama's only pairs); a
    // first open with the wrong one is refused before any weight is read, so ask the header.
    let header = airllama_io::model::ModelHeader::read_from(&mut std::io::BufReader::new(
        std::fs::File::open(&options.model)?,
    ))?;
    if header.config().weight_type == FloatType::F32 {
        options.sync_type = SyncFloatType::F32;
    }
    let mut root = Root::open(&options, &mut |_event| {})?;

    // Temperature 0: always the most likely token, so the output is reproducible.
    let mut sampler = Sampler::new(backend, tokenizer.vocab_size(), 0.0, 0.9, 1)?;
    let tokens = tokenizer.encode(prompt, true, true)?;
    let vocab = tokenizer.vocab_size();
    let mut decoder = StreamDecoder::new();
    let mut text = String::from(prompt);
    let summary: Summary = generate(
        &mut root,
        &tokens,
        64,
        &mut |logits| {
            let logits = logits.get_mut(..vocab).ok_or("fewer logits than tokens")?;
            sampler.sample(logits).map_err(|e| e.to_string())
        },
        &mut |step| {
            if let Step::Pred { token, .. } = step
                && let Ok(piece) = decoder.decode(&tokenizer, token)
            {
                text.push_str(piece);
            }
        },
    )?;
    root.finish()?;
    println!("{text}");
    println!(
        "{} prompt tokens, {} generated at {:.1} tokens/s",
        summary.eval_tokens,
        summary.pred_tokens,
        Summary::rate(summary.pred_tokens, summary.pred_time)
    );
    Ok(())
}
