//! `airllama bench`: how fast this machine decodes a model, all resident or under
//! `--mem-budget` layer streaming, and (with `--disk`) how much of the disk's bandwidth the
//! streaming uses.
//!
//! The run is a one-node root ([`Root::open_streaming`] with no workers): the same loading,
//! planning and forward path `airllama inference` takes, without a tokenizer. One warm-up
//! forward at position 0 (first touches of the buffers and of the embedding map); with
//! `--prompt-tokens P`, `--prompt-rounds` timed forwards of a P-token batch at positions `0..P`
//! (llama-bench's `pp`); then `--tokens` timed one-token forwards at positions `1..=T`, all
//! with deterministic token ids. The numbers are what a user's decode would see on this
//! machine, disk and page cache included.
use std::fs::File;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootEvent, RootOptions};
use airllama::streaming::{StreamStats, StreamingOptions, parse_size};
use airllama::worker::available_memory;
use airllama_io::model::ModelHeader;
use airllama_io::stream::{drop_cache, open_for_streaming, sequential_read};
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// Read size of the `--disk` measurement: large enough that the device, not the syscalls,
/// sets the pace.
const DISK_BLOCK: usize = 4 << 20;
/// Reads in flight during the `--disk` measurement.
const DISK_DEPTH: usize = 8;

/// Flags of this subcommand.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "No model at hand? `airllama gen-model --preset llama2-7b --output x.m` \
                        writes a synthetic one of Llama-2-7B's shape (about 4.2 GB; add \
                        --seq-len 128 to keep its KV cache small)."
)]
pub struct Args {
    /// The `.m` model file (`airllama gen-model --preset llama2-7b --output x.m` writes a
    /// synthetic one).
    #[arg(long)]
    pub model: PathBuf,
    /// Threads per op (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nthreads: u32,
    /// Timed decode steps (after one warm-up step).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub tokens: u32,
    /// Also time prompt processing, as llama-bench's `-p`: forwards of this many tokens in one
    /// batch at positions 0.. (at most the batch capacity, 32; 0 = decode only).
    #[arg(long, default_value_t = 0)]
    pub prompt_tokens: u32,
    /// Timed prompt forwards (after the warm-up step), when --prompt-tokens is set.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub prompt_rounds: u32,
    /// Memory for the weights (e.g. 512M, 2G): layers that do not fit are streamed from the
    /// model file each forward with O_DIRECT reads overlapped with compute (default: all
    /// resident).
    #[arg(long, value_parser = parse_size)]
    pub mem_budget: Option<u64>,
    /// Cap on the context length, and so on the KV cache (0 = the model's).
    #[arg(long, default_value_t = 0)]
    pub max_seq_len: u32,
    /// First measure the model file's O_DIRECT sequential read bandwidth (4 MiB reads, 8 in
    /// flight, after dropping the file from the page cache) and report the decode's read
    /// bandwidth as a fraction of it.
    #[arg(long)]
    pub disk: bool,
    /// How long the --disk measurement reads.
    #[arg(long, default_value_t = 3.0, value_parser = parse_seconds)]
    pub disk_seconds: f64,
    /// Print every timed step (and its streaming statistics).
    #[arg(long)]
    pub verbose: bool,
    /// Print one JSON object with every result (model, cpu, load, decode times, streaming
    /// and disk numbers) instead of the text lines, as `llama-bench -o json` does.
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(s),
        _ => Err(format!(
            "{text:?} is not a duration in seconds (0 < s <= 3600)"
        )),
    }
}

/// Writes a line to stdout and flushes it, above the progress bar if one is drawn.
fn say(bar: &ProgressBar, line: &str) {
    bar.suspend(|| super::output::say(line));
}

/// A progress bar on stderr when it is a terminal, hidden otherwise (logs and pipes get the
/// result lines only).
fn progress_bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Decimal gigabytes per second.
fn gb_per_s(bytes: u64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 {
        bytes as f64 / secs / 1e9
    } else {
        0.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of `times` (the mean of the middle two for an even count).
fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    match sorted.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2,
    }
}

/// The disk's `O_DIRECT` sequential bandwidth on `path`'s file, in bytes per second, and a
/// line describing the measurement.
fn measure_disk(path: &Path, seconds: f64) -> anyhow::Result<(f64, String)> {
    let opened = open_for_streaming(path, true)
        .with_context(|| format!("cannot open {} for the disk measurement", path.display()))?;
    // Whatever of the file is cached would be served from memory by a buffered fallback, and
    // it is what a decode right after this would find there too: start from a cold file.
    drop_cache(&opened.file, 0..opened.len)
        .with_context(|| format!("dropping {} from the page cache", path.display()))?;
    // A file smaller than one block (a test model) is read in the largest power of two that
    // fits; 4 KiB is a multiple of every direct-I/O alignment in use.
    let block = if opened.len >= DISK_BLOCK as u64 {
        DISK_BLOCK
    } else {
        let fit = 1u64 << opened.len.max(1).ilog2();
        anyhow::ensure!(
            fit >= 4096,
            "{} is too small ({} bytes) to measure the disk with",
            path.display(),
            opened.len
        );
        fit as usize
    };
    let direct = opened.direct;
    drop(opened);
    let (bytes, time) = sequential_read(
        path,
        block,
        DISK_DEPTH,
        Duration::from_secs_f64(seconds),
        true,
    )
    .with_context(|| format!("measuring the disk under {}", path.display()))?;
    let rate = if time.is_zero() {
        0.0
    } else {
        bytes as f64 / time.as_secs_f64()
    };
    let line = format!(
        "disk: {:.3} GB/s sequential ({} reads of {} KiB, {DISK_DEPTH} in flight, {:.2} GB in {:.2} s){}",
        rate / 1e9,
        if direct { "O_DIRECT" } else { "buffered" },
        block >> 10,
        bytes as f64 / 1e9,
        time.as_secs_f64(),
        if direct {
            ""
        } else {
            "; the file system refused O_DIRECT, so this includes the page cache"
        }
    );
    Ok((rate, line))
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    use serde_json::{Value, json};
    let path = &args.model;
    let hidden = ProgressBar::hidden();
    // With --json the text lines are left out and the same numbers gathered into `report`.
    let json_out = args.json;
    let say = |bar: &ProgressBar, line: &str| {
        if !json_out {
            say(bar, line);
        }
    };
    let mut report = json!({"model": path.display().to_string()});
    let disk = if args.disk {
        let (rate, line) = measure_disk(path, args.disk_seconds)?;
        say(&hidden, &line);
        report["disk_bytes_per_s"] = json!(rate);
        Some(rate)
    } else {
        None
    };

    // dllama runs Q40 weights with Q80 activations and F32 weights with F32 ones.
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let header = ModelHeader::read_from(&mut BufReader::new(&file))
        .with_context(|| format!("model file {}", path.display()))?;
    drop(file);
    // Checked before the (maybe long) load: the steps must fit the context.
    let context = header.config().with_max_seq_len(args.max_seq_len).seq_len;
    anyhow::ensure!(
        u64::from(args.tokens) < u64::from(context),
        "--tokens {} needs positions 0..={} (one warm-up step), but the context length is {context}",
        args.tokens,
        args.tokens
    );
    let sync_type = match header.config().weight_type {
        FloatType::Q40 => SyncFloatType::Q80,
        _ => SyncFloatType::F32,
    };
    let backend = Backend::detect();
    let options = RootOptions {
        model: path.clone(),
        workers: Vec::new(),
        sync_type,
        max_seq_len: args.max_seq_len,
        n_threads: args.nthreads as usize,
        turbo: false,
        backend,
        max_memory: available_memory().unwrap_or(u64::MAX),
        shared_storage: false,
        cache_dir: None,
        net_timeout: None,
    };
    let streaming = args.mem_budget.map(StreamingOptions::new);
    let load_bar = progress_bar(
        0,
        "loading {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    );
    let mut events = |event: RootEvent| match event {
        RootEvent::LoadingWeights { total } => load_bar.set_length(total),
        RootEvent::Progress(p) => load_bar.set_position(p.done),
        _ => {}
    };
    let started = Instant::now();
    let mut root = Root::open_streaming(&options, streaming.as_ref(), &mut events)?;
    let load_time = started.elapsed();
    load_bar.finish_and_clear();

    let c = root.config();
    let vocab = c.vocab_size;
    say(
        &hidden,
        &format!(
            "model: {}, {:?}, dim {}, hidden {}, {} layers, {} heads ({} kv), vocab {}, seq len {}, {} weights",
            path.display(),
            c.arch,
            c.dim,
            c.hidden_dim,
            c.n_layers,
            c.n_heads,
            c.n_kv_heads,
            c.vocab_size,
            c.seq_len,
            c.weight_type.name(),
        ),
    );
    say(
        &hidden,
        &format!("cpu: {}, {} thread(s)", backend.isa(), args.nthreads),
    );
    say(&hidden, &format!("load: {:.0} ms", ms(load_time)));
    report["arch"] = json!(format!("{:?}", c.arch));
    report["weights"] = json!(c.weight_type.name());
    report["dim"] = json!(c.dim);
    report["hidden_dim"] = json!(c.hidden_dim);
    report["layers"] = json!(c.n_layers);
    report["heads"] = json!(c.n_heads);
    report["kv_heads"] = json!(c.n_kv_heads);
    report["vocab"] = json!(c.vocab_size);
    report["seq_len"] = json!(c.seq_len);
    report["cpu"] = json!(backend.isa().name());
    report["threads"] = json!(args.nthreads);
    report["load_ms"] = json!(ms(load_time));
    report["mem_budget"] = json!(args.mem_budget);
    report["streaming"] = match root.streamer() {
        Some(s) => json!(s.describe()),
        None => Value::Null,
    };
    match (root.streamer(), args.mem_budget) {
        (Some(s), _) => say(&hidden, &s.describe()),
        (None, Some(budget)) => say(
            &hidden,
            &format!("layer streaming: off, every weight fits --mem-budget {budget} bytes"),
        ),
        (None, None) => say(&hidden, "layer streaming: off, every weight resident"),
    }
    if root.streamer().is_some() {
        // Under a budget the decode must read the disk, not what loading left in the page
        // cache (O_DIRECT skips it anyway; a buffered fallback would not).
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file.metadata()?.len();
        drop_cache(&file, 0..len)
            .with_context(|| format!("dropping {} from the page cache", path.display()))?;
    }

    // Token ids only need to be valid and deterministic: a prime stride over the vocabulary.
    let token = |position: u32| ((u64::from(position) * 7919) % u64::from(vocab)) as u32;
    root.forward(0, &[token(0)])
        .context("warm-up forward at position 0")?;
    if args.prompt_tokens > 0 {
        let batch = root.batch_capacity();
        anyhow::ensure!(
            args.prompt_tokens <= batch && args.prompt_tokens < context,
            "--prompt-tokens {} is more than one forward takes ({batch} tokens, context {context})",
            args.prompt_tokens
        );
        let prompt: Vec<u32> = (0..args.prompt_tokens).map(token).collect();
        let mut times = Vec::with_capacity(args.prompt_rounds as usize);
        for round in 0..args.prompt_rounds {
            let started = Instant::now();
            // As `inference` runs a prompt's batches: no logits, so a one-node root skips the
            // classifier (llama-bench's pp computes one row of logits, the last token's).
            root.forward_prompt(0, &prompt)
                .with_context(|| format!("prompt forward {round}"))?;
            times.push(started.elapsed());
        }
        let per_s =
            |d: Duration| f64::from(args.prompt_tokens) / d.as_secs_f64().max(f64::MIN_POSITIVE);
        let best = times.iter().min().copied().unwrap_or_default();
        say(
            &hidden,
            &format!(
                "prompt: {} tokens per forward, {} forwards: median {:.3} tokens/s ({:.1} ms), best {:.3}",
                args.prompt_tokens,
                times.len(),
                per_s(median(&times)),
                ms(median(&times)),
                per_s(best)
            ),
        );
        report["prompt"] = json!({
            "tokens": args.prompt_tokens,
            "rounds": times.len(),
            "tokens_per_s": per_s(median(&times)),
            "tokens_per_s_best": per_s(best),
            "ms_per_forward": times.iter().map(|t| ms(*t)).collect::<Vec<_>>(),
        });
    }
    let bar = progress_bar(
        u64::from(args.tokens),
        "decoding {bar:40} {pos}/{len} tokens, {per_sec}",
    );
    let mut times = Vec::with_capacity(args.tokens as usize);
    let mut totals: Option<StreamStats> = None;
    for position in 1..=args.tokens {
        let started = Instant::now();
        let stats = root
            .forward(position, &[token(position)])
            .with_context(|| format!("forward at position {position}"))?;
        let time = started.elapsed();
        times.push(time);
        bar.inc(1);
        if let Some(st) = stats.stream {
            let t = totals.get_or_insert_with(StreamStats::default);
            t.forward_time += st.forward_time;
            t.bytes_read += st.bytes_read;
            t.units_read += st.units_read;
            t.read_time += st.read_time;
            t.io_wait += st.io_wait;
        }
        if args.verbose {
            let stream = stats.stream.map(|s| format!(" | {s}")).unwrap_or_default();
            say(
                &bar,
                &format!("step {position}: {:.1} ms{stream}", ms(time)),
            );
        }
    }
    bar.finish_and_clear();
    root.finish().context("shutting down")?;

    let total: Duration = times.iter().sum();
    let n = times.len() as u32;
    say(
        &hidden,
        &format!(
            "decode: {n} tokens in {:.3} s, {:.3} tokens/s",
            total.as_secs_f64(),
            f64::from(n) / total.as_secs_f64().max(f64::MIN_POSITIVE)
        ),
    );
    say(
        &hidden,
        &format!(
            "ms/token: median {:.2}, mean {:.2}, min {:.2}, max {:.2}",
            ms(median(&times)),
            ms(total / n.max(1)),
            ms(times.iter().min().copied().unwrap_or_default()),
            ms(times.iter().max().copied().unwrap_or_default()),
        ),
    );
    report["decode"] = json!({
        "tokens": n,
        "seconds": total.as_secs_f64(),
        "tokens_per_s": f64::from(n) / total.as_secs_f64().max(f64::MIN_POSITIVE),
        "ms_per_token": {
            "median": ms(median(&times)),
            "mean": ms(total / n.max(1)),
            "min": ms(times.iter().min().copied().unwrap_or_default()),
            "max": ms(times.iter().max().copied().unwrap_or_default()),
        },
    });
    if let Some(t) = totals {
        let wall = t.forward_time;
        let in_flight = if wall.is_zero() {
            0.0
        } else {
            t.read_time.as_secs_f64() / wall.as_secs_f64()
        };
        say(
            &hidden,
            &format!(
                "bytes read: {} ({} units, {:.1} MB/token)",
                t.bytes_read,
                t.units_read,
                t.bytes_read as f64 / 1e6 / f64::from(n)
            ),
        );
        let decode_rate = gb_per_s(t.bytes_read, wall);
        report["stream"] = json!({
            "bytes_read": t.bytes_read,
            "units_read": t.units_read,
            "read_gb_per_s": decode_rate,
            "read_gb_per_s_in_flight": gb_per_s(t.bytes_read, t.read_time),
            "compute_ms": ms(t.compute_time()),
            "io_wait_ms": ms(t.io_wait),
            "reads_in_flight_fraction": in_flight,
            "disk_fraction": disk.map(|d| if d > 0.0 { decode_rate * 1e9 / d } else { 0.0 }),
        });
        say(
            &hidden,
            &format!(
                "read: {decode_rate:.3} GB/s over the decode, {:.3} GB/s while reads were in flight",
                gb_per_s(t.bytes_read, t.read_time)
            ),
        );
        say(
            &hidden,
            &format!(
                "time: compute {:.0} ms, I/O wait {:.0} ms, reads in flight {:.0}% of the decode",
                ms(t.compute_time()),
                ms(t.io_wait),
                in_flight * 100.0
            ),
        );
        if let Some(disk) = disk {
            let fraction = if disk > 0.0 {
                decode_rate * 1e9 / disk
            } else {
                0.0
            };
            say(
                &hidden,
                &format!(
                    "disk use: the decode read at {:.0}% of the disk's sequential bandwidth",
                    fraction * 100.0
                ),
            );
        }
    } else if disk.is_some() {
        say(
            &hidden,
            "disk use: nothing streamed (every weight resident), so the decode reads no weights",
        );
    }
    if json_out {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        super::output::write_out(&text);
    }
    Ok(ExitCode::SUCCESS)
}
