//! `airllama gen-model`: write a synthetic `.m` model (random weights of a chosen shape) for
//! streaming tests and benchmarks, without downloading anything.
//!
//! The shape is checked before anything is written: the header must be valid, airllama must be
//! able to run the model, and the file (its size printed first) must fit in the free space
//! where it goes. A progress bar on stderr shows the write.
//!
//! The model is written to `<output>.partial` and renamed when complete; an error, Ctrl-C or
//! `kill` removes the partial file (see [`super::cleanup`]), so a truncated model never sits
//! under the requested name.
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airllama::graph::{GraphParams, LlmGraph, check_dllama_root_limits};
use airllama::streaming::synthetic::{LlamaShape, plan_model, write_model_with_progress};
use airllama_kernels::block::FloatType;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

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

/// Bytes free to an unprivileged writer on the file system that will hold `path` (`None`
/// when it cannot be told).
fn free_space(path: &Path) -> Option<u64> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a NUL-terminated path and `stat` a zeroed struct statvfs fills.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut stat) != 0 {
            return None;
        }
        stat
    };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// One line describing the shape, for people (not Rust's `Debug`).
fn describe(shape: &LlamaShape, weights: FloatType) -> String {
    format!(
        "llama, dim {}, hidden dim {}, {} layers, {} heads, {} KV heads, vocab {}, context {}, {} weights",
        shape.dim,
        shape.hidden_dim,
        shape.n_layers,
        shape.n_heads,
        shape.n_kv_heads,
        shape.vocab_size,
        shape.seq_len,
        weights.name()
    )
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
    let what = describe(&shape, weight_type);
    // Everything is checked before the file is created: the header, the layout (and so the
    // size), and that airllama can run the model on one node.
    let params = shape.params(weight_type);
    let (header, layout) = plan_model(&params)
        .map_err(|e| anyhow::anyhow!("cannot write a model of this shape ({what}): {e}"))?;
    let sync = super::inference::sync_type_for(weight_type);
    let graph_params = GraphParams::dllama(1, sync, 0);
    check_dllama_root_limits(header.config(), &graph_params)
        .map_err(anyhow::Error::from)
        .and_then(|()| LlmGraph::build(&header, graph_params).map_err(anyhow::Error::from))
        .with_context(|| format!("airllama could not run a model of this shape ({what})"))?;
    let size = layout.file_size();
    if let Some(free) = free_space(&args.output) {
        anyhow::ensure!(
            size <= free,
            "a model of this shape ({what}) takes {} ({size} bytes), more than the {} free \
             where {} would go",
            super::inspect::human(size),
            super::inspect::human(free),
            args.output.display()
        );
    }
    eprintln!(
        "writing {}: {} ({size} bytes): {what}",
        args.output.display(),
        super::inspect::human(size)
    );
    let mut outputs = PartialOutputs::new()?;
    let partial = outputs.add(&args.output)?;
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let written = write_model_with_progress(&partial, &params, args.seed, &mut |done| {
        bar.set_position(done)
    })
    .with_context(|| format!("writing {}", partial.display()))?;
    bar.finish_and_clear();
    outputs.commit()?;
    super::output::say(&format!(
        "wrote {} ({} bytes): {what}",
        args.output.display(),
        written
    ));
    Ok(ExitCode::SUCCESS)
}
