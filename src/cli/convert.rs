//! `airllama convert gguf <in.gguf> <out.m> <out.t> [--weights q40|f32]`.
//!
//! Both outputs are written to `<name>.partial` beside the target and renamed into place only
//! when both are complete, so an interrupted or failed conversion never leaves a truncated
//! `.m` or `.t` that would look valid by name, nor one output without the other. An error,
//! Ctrl-C or `kill` removes the partial files (see [`super::cleanup`]).
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airllama_io::convert::{ConvertReport, ModelPlan, tokenizer_from_gguf, write_model_report};
use airllama_io::gguf::GgufFile;
use airllama_kernels::block::FloatType;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::cleanup::{PartialOutputs, partial_path};

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

/// The device and inode of `path`, or `None` when it does not exist.
fn identity(path: &Path) -> anyhow::Result<Option<(u64, u64)>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some((m.dev(), m.ino()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// `path` with its directory resolved (symlinks and `..`), so two spellings of one output
/// compare equal; the file itself need not exist.
fn resolved(path: &Path) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).with_context(|| {
        format!(
            "cannot write {}: its directory does not exist",
            path.display()
        )
    })?;
    anyhow::ensure!(
        dir.is_dir(),
        "the directory of {} is not a directory",
        path.display()
    );
    Ok(dir.join(name))
}

/// Refuses outputs that would destroy the input or each other, before anything is read: an
/// output (or its `.partial` file) that is the input file under any name, the same path for
/// both outputs, a directory as an output, or an output in a directory that does not exist.
/// Whether each directory is writable is found out by creating the partial files right after.
fn check_outputs(input: &Path, outputs: [(&Path, &str); 2]) -> anyhow::Result<()> {
    let input_id =
        identity(input)?.with_context(|| format!("{} does not exist", input.display()))?;
    let mut seen: Vec<PathBuf> = Vec::new();
    for (path, what) in outputs {
        let full = resolved(path)?;
        anyhow::ensure!(
            !seen.contains(&full),
            "the model and the tokenizer outputs are the same file {}",
            path.display()
        );
        for candidate in [path.to_path_buf(), partial_path(path)] {
            anyhow::ensure!(
                identity(&candidate)? != Some(input_id),
                "refusing to write the {what} to {}: it is the input file {}",
                candidate.display(),
                input.display()
            );
        }
        anyhow::ensure!(
            !full.is_dir(),
            "the {what} output {} is a directory",
            path.display()
        );
        seen.push(full);
    }
    Ok(())
}

fn convert_gguf(a: GgufArgs) -> anyhow::Result<ExitCode> {
    let weights = match a.weights {
        Weights::Q40 => FloatType::Q40,
        Weights::F32 => FloatType::F32,
    };
    check_outputs(&a.input, [(&a.model, "model"), (&a.tokenizer, "tokenizer")])?;
    // Both partial files exist before the input is read, so an unwritable directory fails now
    // rather than after the model is written; they are removed unless both outputs complete.
    let mut outputs = PartialOutputs::new()?;
    let model_partial = outputs.add(&a.model)?;
    let tokenizer_partial = outputs.add(&a.tokenizer)?;
    for p in [&tokenizer_partial, &model_partial] {
        File::create(p).with_context(|| format!("cannot write {}", p.display()))?;
    }

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

    // The tokenizer first: it is small, and any error in it comes before the long part.
    write_file(&tokenizer_partial, |out| {
        Ok(out.write_all(&tokenizer_bytes)?)
    })?;
    let total = plan.file_size();
    let bar = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = None;
    write_file(&model_partial, |out| {
        let r = write_model_report(&gguf, &plan, out, &mut |done, t| {
            bar.set_position(done);
            bar.set_message(format!("{} ({})", t.label, t.source.ty));
        })?;
        anyhow::ensure!(r.bytes == total, "wrote {} bytes, planned {total}", r.bytes);
        report = Some(r);
        Ok(())
    })?;
    bar.finish_and_clear();
    outputs.commit()?;

    if let Some(report) = &report {
        eprint!("{}", report_table(report));
    }
    let moved = plan.vocab_order.moved();
    if !moved.is_empty() {
        eprintln!(
            "token ids: {} of {} renumbered so that dllama's special tokens start at its bos id \
             (the embedding and classifier rows moved with them; see docs/CONVERT.md)",
            moved.len(),
            tokenizer.vocab.len()
        );
    }
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

/// The per-type lines `convert` prints: how many GGUF tensors of each type were read, what
/// they became, and the largest error the Q40 re-quantization added.
fn report_table(r: &ConvertReport) -> String {
    let mut s = String::from(
        "source type  tensors  -> f32  -> q40        values  q40 - source: rms, max (where)\n",
    );
    for t in &r.types {
        let error = match (t.q40_rms_error, t.q40_max_abs_error, &t.q40_worst_tensor) {
            (Some(rms), Some(max), Some(w)) => format!("{rms:.6} {max:.6} ({w})"),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "{:<11} {:>8} {:>7} {:>7} {:>13}  {}\n",
            t.source.name(),
            t.source_tensors,
            t.written_f32,
            t.written_q40,
            t.values,
            error
        ));
    }
    s
}
