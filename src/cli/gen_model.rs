//! `airllama gen-model`: write a synthetic `.m` model (random weights of a chosen shape) for
//! streaming tests and benchmarks, without downloading anything.
//!
//! The model is written to `<output>.partial` and renamed when complete; an error, Ctrl-C or
//! `kill` removes the partial file (see [`super::cleanup`]), so a truncated model never sits
//! under the requested name.
use std::path::PathBuf;
use std::process::ExitCode;

use airllama::streaming::synthetic::{LlamaShape, write_model};
use airllama_kernels::block::FloatType;
use anyhow::Context;

use super::cleanup::PartialOutputs;

/// Flags of this subcommand.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output `.m` file.
    #[arg(long)]
    pub output: PathBuf,
    /// Shape preset: `llama2-7b` (about 4.2 GB in Q40) or `tiny`; the flags below override it.
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Model dimension.
    #[arg(long)]
    pub dim: Option<u32>,
    /// Feed-forward dimension.
    #[arg(long)]
    pub hidden_dim: Option<u32>,
    /// Layers.
    #[arg(long)]
    pub layers: Option<u32>,
    /// Attention heads.
    #[arg(long)]
    pub heads: Option<u32>,
    /// Key/value heads.
    #[arg(long)]
    pub kv_heads: Option<u32>,
    /// Vocabulary size.
    #[arg(long)]
    pub vocab: Option<u32>,
    /// Context length.
    #[arg(long)]
    pub seq_len: Option<u32>,
    /// Weight type: q40 or f32.
    #[arg(long, default_value = "q40")]
    pub weights: String,
    /// Seed of the pseudo-random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut shape = match args.preset.as_str() {
        "llama2-7b" => LlamaShape::LLAMA2_7B,
        "tiny" => LlamaShape {
            dim: 256,
            hidden_dim: 512,
            n_layers: 4,
            n_heads: 8,
            n_kv_heads: 4,
            vocab_size: 512,
            seq_len: 256,
        },
        other => anyhow::bail!("unknown preset {other:?} (llama2-7b, tiny)"),
    };
    let set = |field: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *field = v;
        }
    };
    set(&mut shape.dim, args.dim);
    set(&mut shape.hidden_dim, args.hidden_dim);
    set(&mut shape.n_layers, args.layers);
    set(&mut shape.n_heads, args.heads);
    set(&mut shape.n_kv_heads, args.kv_heads);
    set(&mut shape.vocab_size, args.vocab);
    set(&mut shape.seq_len, args.seq_len);
    let weight_type = match args.weights.to_ascii_lowercase().as_str() {
        "q40" => FloatType::Q40,
        "f32" => FloatType::F32,
        other => anyhow::bail!("unknown weight type {other:?} (q40, f32)"),
    };
    let mut outputs = PartialOutputs::new()?;
    let partial = outputs.add(&args.output)?;
    let size = write_model(&partial, &shape.params(weight_type), args.seed)
        .with_context(|| format!("writing {}", partial.display()))?;
    outputs.commit()?;
    println!(
        "wrote {} ({} bytes): {shape:?}, {weight_type:?} weights",
        args.output.display(),
        size
    );
    Ok(ExitCode::SUCCESS)
}
