//! `airllama inference`: run one prompt through the root (and its workers), as `dllama
//! inference` does, printing a line per forward and dllama's summary.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use airllama::chat_template::ChatTemplateKind;
use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootEvent, RootOptions, Step, Summary, generate};
use airllama::sampler::Sampler;
use airllama::shared_storage::TableSource;
use airllama::tokenizer::{StreamDecoder, Tokenizer};
use airllama::worker::available_memory;
use airllama_kernels::backend::Backend;
use airllama_net::PeerAddress;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

/// The flags `dllama inference` and `dllama chat` share (dllama's names and defaults).
#[derive(Debug, clap::Args)]
pub struct RootArgs {
    /// The `.m` model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The `.t` tokenizer file.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Float type of the synchronised activations: f32 or q80 (Q40 models need q80).
    #[arg(long, default_value = "f32", value_parser = parse_sync_type)]
    pub buffer_float_type: SyncFloatType,
    /// Worker addresses, `host:port` each, in node order.
    #[arg(long, num_args = 1.., value_parser = parse_worker)]
    pub workers: Vec<PeerAddress>,
    /// Threads per op (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nthreads: u32,
    /// Cap on the context length (0 = the model's).
    #[arg(long, default_value_t = 0)]
    pub max_seq_len: u32,
    /// Sampling temperature (0 = argmax).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Top-p (nucleus) threshold.
    #[arg(long, default_value_t = 0.9)]
    pub topp: f32,
    /// Random seed (default: the current Unix time in seconds, as dllama).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Chat template: llama2, llama3, deepSeek3 or chatml (default: detected from the
    /// tokenizer).
    #[arg(long)]
    pub chat_template: Option<ChatTemplateKind>,
    /// 1: spin on non-blocking sockets once the weights are loaded (dllama's turbo mode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub net_turbo: u8,
    /// Memory for the root's weights (e.g. 512M, 2G): layers that do not fit are streamed each
    /// forward with O_DIRECT reads overlapped with compute, from the model file on one node,
    /// from a spill file under --spill-dir with --workers (default: all resident).
    #[arg(long, value_parser = airllama::streaming::parse_size)]
    pub mem_budget: Option<u64>,
    /// Directory for the spill file of --mem-budget with --workers: the root's slices of the
    /// layers that do not fit are written there while the weights are distributed (they are
    /// strided in the model file) and streamed back each forward; the file is deleted once
    /// written (default: the system temp dir). Unused on one node.
    #[arg(long)]
    pub spill_dir: Option<PathBuf>,
    /// Print each forward's streaming statistics (bytes read, read time, compute, I/O wait).
    #[arg(long)]
    pub verbose: bool,
    /// Zero-data movement: airllama workers started with --model load their slices from their
    /// own copy of the model (each record verified against this file) instead of receiving
    /// them; C++ workers and airllama workers without --model get the usual transfer.
    #[arg(long)]
    pub shared_storage: bool,
    /// Where --shared-storage caches the model's identity table (default:
    /// $AIRLLAMA_CACHE_DIR, $XDG_CACHE_HOME/airllama or ~/.cache/airllama).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Seconds to wait for bytes a worker owes (a reply, a slice of a forward) before giving
    /// up and naming it; 0 = forever. Time between prompts is never limited.
    #[arg(long, default_value_t = 60)]
    pub net_timeout: u64,
    /// Most memory the root's own graph may allocate (weights, buffers, KV cache), e.g. 8G;
    /// checked before allocating (default: the machine's available memory).
    #[arg(long, value_parser = airllama::streaming::parse_size)]
    pub max_memory: Option<u64>,
}

/// `--net-timeout` seconds as the library takes them (0 = forever).
pub fn net_timeout(seconds: u64) -> Option<std::time::Duration> {
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

/// `--max-memory`, never above what the machine has available.
pub fn max_memory(flag: Option<u64>) -> u64 {
    let available = available_memory().unwrap_or(u64::MAX);
    flag.map_or(available, |m| m.min(available))
}

fn parse_sync_type(value: &str) -> Result<SyncFloatType, String> {
    SyncFloatType::from_flag(value)
        .ok_or_else(|| format!("invalid buffer float type {value:?} (expected f32 or q80)"))
}

fn parse_worker(value: &str) -> Result<PeerAddress, String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("invalid worker address {value:?} (expected host:port)"))?;
    if host.is_empty() {
        return Err(format!("invalid worker address {value:?}: empty host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|e| format!("invalid port in worker address {value:?}: {e}"))?;
    Ok(PeerAddress {
        host: host.to_string(),
        port,
    })
}

/// Flags of `airllama inference`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub root: RootArgs,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Last position to run to (prompt included; capped by the context length).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
}

/// A started root with its tokenizer and sampler.
pub struct Session {
    pub root: Root,
    pub tokenizer: Tokenizer,
    pub sampler: Sampler,
}

/// Writes a line to stdout and flushes it (the output is a live log).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Loads the tokenizer, starts the root (workers, configs, weights) and builds the sampler.
pub fn start(args: &RootArgs) -> anyhow::Result<Session> {
    // The tokenizer's errors name the file.
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let backend = Backend::detect();
    let options = RootOptions {
        model: args.model.clone(),
        workers: args.workers.clone(),
        sync_type: args.buffer_float_type,
        max_seq_len: args.max_seq_len,
        n_threads: args.nthreads as usize,
        turbo: args.net_turbo == 1,
        backend,
        max_memory: max_memory(args.max_memory),
        shared_storage: args.shared_storage,
        net_timeout: net_timeout(args.net_timeout),
        cache_dir: args
            .cache_dir
            .clone()
            .or_else(airllama::shared_storage::default_cache_dir),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("💿 {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut events = |event: RootEvent| match event {
        RootEvent::Connected { workers } => {
            for (i, w) in workers.iter().enumerate() {
                say(&format!(
                    "⭕ Socket[{i}]: connected to {w} (node {})",
                    i + 1
                ));
            }
            say("⭕ Network is initialized");
        }
        RootEvent::LoadingWeights { total } => {
            say("💿 Loading weights...");
            bar.set_length(total);
        }
        RootEvent::Progress(p) => bar.set_position(p.done),
        RootEvent::WeightsLoaded { elapsed } => {
            bar.finish_and_clear();
            say(&format!("💿 Weights loaded in {} ms", elapsed.as_millis()));
        }
        RootEvent::Turbo => say("🚁 Network is in non-blocking mode"),
        RootEvent::SharedStorage { local, classic } => {
            for w in &local {
                say(&format!("📂 {w}: loads its slices from its own model file"));
            }
            for w in &classic {
                say(&format!(
                    "📡 {w}: did not offer shared storage (C++ worker, or no --model): sending its weights"
                ));
            }
        }
        RootEvent::Hashing(p) => {
            if bar.length() != Some(p.total) {
                say(
                    "🔏 Digesting the model for the identity table (once per file and node count)...",
                );
                bar.set_length(p.total);
            }
            bar.set_position(p.done);
        }
        RootEvent::IdentityReady(source) => {
            bar.finish_and_clear();
            bar.reset();
            match source {
                TableSource::Cached(path) => say(&format!("🔏 Identity table: {}", path.display())),
                TableSource::Built { saved: Ok(path) } => {
                    say(&format!("🔏 Identity table saved to {}", path.display()))
                }
                TableSource::Built { saved: Err(why) } => {
                    say(&format!("🔏 Identity table built (not cached: {why})"))
                }
            }
        }
        RootEvent::LoadedLocally {
            address,
            bytes,
            elapsed,
        } => say(&format!(
            "📂 {address}: loaded and verified {} kB from its own storage in {} ms",
            bytes / 1024,
            elapsed.as_millis()
        )),
    };
    say(&format!("🧠 CPU: {}", backend.isa()));
    let streaming = args.mem_budget.map(|budget| {
        let mut s = airllama::streaming::StreamingOptions::new(budget);
        if let Some(dir) = args.spill_dir.clone() {
            s.spill_dir = dir;
        }
        s
    });
    let root = Root::open_streaming(&options, streaming.as_ref(), &mut events)?;
    if let Some(s) = root.streamer() {
        say(&format!("💾 {}", s.describe()));
    }
    let c = root.config();
    say(&format!(
        "💡 Arch: {:?}, Dim: {}, HeadDim: {}, nLayers: {}, nHeads: {}, nKvHeads: {}, VocabSize: {}, SeqLen: {}, Weights: {:?}, Nodes: {}",
        c.arch,
        c.dim,
        c.head_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.seq_len,
        c.weight_type,
        root.n_nodes()
    ));
    let model_vocab = c.vocab_size as usize;
    if tokenizer.vocab_size() != model_vocab {
        say(&format!(
            "Tokenizer vocab size ({}) does not match the model vocab size ({model_vocab})",
            tokenizer.vocab_size()
        ));
    }
    anyhow::ensure!(
        tokenizer.vocab_size() <= model_vocab,
        "tokenizer file {} has {} tokens, more than the model's {model_vocab} logits",
        args.tokenizer.display(),
        tokenizer.vocab_size()
    );
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    // dllama's sampler covers the tokenizer's vocabulary.
    let sampler = Sampler::new(
        backend,
        tokenizer.vocab_size(),
        args.temperature,
        args.topp,
        seed,
    )
    .context("--temperature / --topp")?;
    Ok(Session {
        root,
        tokenizer,
        sampler,
    })
}

/// dllama's per-forward line prefix: times in ms, traffic in kB.
pub fn forward_line(kind: &str, stats: &airllama::root::ForwardStats) -> String {
    format!(
        "{kind}{:5} ms Sync{:5} ms | Sent{:6} kB Recv{:6} kB",
        stats.eval.as_millis(),
        stats.sync.as_millis(),
        stats.sent / 1024,
        stats.received / 1024
    )
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Session {
        mut root,
        tokenizer,
        mut sampler,
    } = start(&args.root)?;
    let prompt = tokenizer
        .encode(&args.prompt, true, true)
        .context("encoding --prompt")?;
    say(&args.prompt);
    let mut decoder = StreamDecoder::new();
    let vocab = tokenizer.vocab_size();
    let mut sample = |logits: &mut [f32]| {
        let logits = logits.get_mut(..vocab).ok_or("fewer logits than tokens")?;
        sampler.sample(logits).map_err(|e| e.to_string())
    };
    let mut decode_error = None;
    let verbose = args.root.verbose;
    let mut on_step = |step: Step| match step {
        Step::Eval { batch, stats } => say(&format!(
            "🔷️ {} | ({batch} tokens)",
            forward_line("Eval", &stats)
        )),
        Step::Pred { token, stats, .. } => {
            let piece = match decoder.decode(&tokenizer, token) {
                Ok("") => "~".to_string(),
                Ok(p) => p.to_string(),
                Err(e) => {
                    decode_error.get_or_insert(e.to_string());
                    "~".to_string()
                }
            };
            say(&format!("🔶 {} | {piece}", forward_line("Pred", &stats)));
            if let (true, Some(s)) = (verbose, stats.stream) {
                say(&format!("💾 {s}"));
            }
        }
    };
    let summary = generate(&mut root, &prompt, args.steps, &mut sample, &mut on_step)?;
    root.finish()?;
    if let Some(e) = decode_error {
        eprintln!("warning: {e}");
    }
    print_summary(&summary, 32);
    Ok(ExitCode::SUCCESS)
}

/// dllama's summary, plus the network bytes per token.
pub fn print_summary(s: &Summary, n_batches: u32) {
    let ms_per = |tokens: u32, time: std::time::Duration| {
        if tokens == 0 {
            0.0
        } else {
            time.as_secs_f64() * 1000.0 / f64::from(tokens)
        }
    };
    say("");
    say("Evaluation");
    say(&format!("   nBatches: {n_batches}"));
    say(&format!("    nTokens: {}", s.eval_tokens));
    say(&format!(
        "   tokens/s: {:3.2} ({:3.2} ms/tok)",
        Summary::rate(s.eval_tokens, s.eval_time),
        ms_per(s.eval_tokens, s.eval_time)
    ));
    say("Prediction");
    say(&format!("    nTokens: {}", s.pred_tokens));
    say(&format!(
        "   tokens/s: {:3.2} ({:3.2} ms/tok)",
        Summary::rate(s.pred_tokens, s.pred_time),
        ms_per(s.pred_tokens, s.pred_time)
    ));
    let tokens = s.eval_tokens + s.pred_tokens;
    if tokens > 0 {
        say("Network");
        say(&format!(
            "   sent/tok: {:.1} kB, recv/tok: {:.1} kB ({} kB sent, {} kB received in total)",
            s.sent as f64 / 1024.0 / f64::from(tokens),
            s.received as f64 / 1024.0 / f64::from(tokens),
            s.sent / 1024,
            s.received / 1024
        ));
    }
}
