//! `airllama convert gguf <in.gguf> <out.m> <out.t> [--weights q40|f32]`.
//!
//! Both outputs are written to `<name>.partial` beside the target and renamed into place only
//! when both are complete, so an interrupted or failed conversion never leaves a truncated
//! `.m` or `.t` that would look valid by name, nor one output without the other. An error,
//! Ctrl-C or `kill` removes the partial files (see [`super::cleanup`]).
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airllama_io::convert::{ModelPlan, tokenizer_from_gguf, write_model};
use airllama_io::gguf::GgufFile;
use airllama_kernels::block::FloatType;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::cleanup::PartialOutputs;

/// Flags of this subcommand.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    source: Source,
}

#[derive(Debug, clap::Subcommand)]
enum Source {
    /// Convert a llama-family GGUF file (llama.cpp's format) to a .m model and a .t tokenizer.
    Gguf(GgufArgs),
}

/// Output weight type for the matrices (norms and the embedding are always f32).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Weights {
    /// dllama's 4-bit blocks (needs `--buffer-float-type q80` in dllama).
    Q40,
    /// 32-bit floats.
    F32,
}

#[derive(Debug, clap::Args)]
struct GgufArgs {
    /// Input GGUF file.
    input: PathBuf,
    /// Output .m model file.
    model: PathBuf,
    /// Output .t tokenizer file.
    tokenizer: PathBuf,
    /// Weight type of the matrices in the .m file.
    #[arg(long, value_enum, default_value = "q40")]
    weights: Weights,
    /// Do not draw a progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.source {
        Source::Gguf(a) => convert_gguf(a),
    }
}

/// Writes `path` (a registered partial file) through a large buffer and flushes it.
fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    write(&mut out)?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn convert_gguf(a: GgufArgs) -> anyhow::Result<ExitCode> {
    let weights = match a.weights {
        Weights::Q40 => FloatType::Q40,
        Weights::F32 => FloatType::F32,
    };
    let gguf =
        GgufFile::open(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let plan = ModelPlan::from_gguf_file(&gguf, weights)
        .with_context(|| format!("{} cannot be converted", a.input.display()))?;
    let tokenizer = tokenizer_from_gguf(gguf.header())
        .with_context(|| format!("converting the tokenizer of {}", a.input.display()))?;
    plan.check_tokenizer(&tokenizer)?;
    let tokenizer_bytes = tokenizer.to_bytes().context("encoding the tokenizer")?;

    let c = plan.header.config();
    eprintln!(
        "{}: {}, dim {}, {} layers, {} heads ({} kv), head dim {}, hidden {}, vocab {}, seq len {}, \
         rope theta {}, eps {:e}{}",
        a.input.display(),
        c.arch.name(),
        c.dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.hidden_dim,
        c.vocab_size,
        c.seq_len,
        c.rope_theta,
        c.norm_epsilon.value(),
        if plan.tied_embeddings {
            ", classifier tied to the embedding"
        } else {
            ""
        },
    );

    let total = plan.file_size();
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut outputs = PartialOutputs::new()?;
    let model_partial = outputs.add(&a.model)?;
    let tokenizer_partial = outputs.add(&a.tokenizer)?;
    write_file(&model_partial, |out| {
        let written = write_model(&gguf, &plan, out, &mut |done, t| {
            bar.set_position(done);
            bar.set_message(t.label.clone());
        })?;
        anyhow::ensure!(written == total, "wrote {written} bytes, planned {total}");
        Ok(())
    })?;
    bar.finish_and_clear();
    write_file(&tokenizer_partial, |out| {
        Ok(out.write_all(&tokenizer_bytes)?)
    })?;
    outputs.commit()?;

    let special = (0..tokenizer.vocab.len() as u32)
        .filter(|&id| tokenizer.is_special(id))
        .count();
    eprintln!(
        "wrote {} ({} bytes, {} weights) and {} ({} tokens, {} special, bos {:?}, eos {:?}{})",
        a.model.display(),
        total,
        weights.name(),
        a.tokenizer.display(),
        tokenizer.vocab.len(),
        special,
        tokenizer.true_bos_id(),
        tokenizer.eos_ids,
        if tokenizer.true_bos_id() != Some(tokenizer.bos_id) {
            format!(
                "; dllama's BOS_ID key holds its split point {}",
                tokenizer.bos_id
            )
        } else {
            String::new()
        },
    );
    Ok(ExitCode::SUCCESS)
}
