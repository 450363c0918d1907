//! `airllama inference`: run one prompt through the root (and its workers), as `dllama
//! inference` does, printing a line per forward and dllama's summary.
use std::path::PathBuf;
use std::process::ExitCode;

use airllama::chat_template::ChatTemplateKind;
use airllama::graph::SyncFloatType;
use airllama::root::{Root, RootEvent, RootOptions, Step, Summary, generate};
use airllama::sampler::Sampler;
use airllama::shared_storage::TableSource;
use airllama::tokenizer::{StreamDecoder, Tokenizer};
use airllama::worker::available_memory;
use airllama_io::model::ModelHeader;
use airllama_kernels::backend::Backend;
use airllama_kernels::block::FloatType;
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
    /// Float type of the synchronised activations: f32 or q80 (default: what the model's
    /// weights need: q80 for Q40 weights, f32 for F32 weights).
    #[arg(long, value_parser = parse_sync_type)]
    pub buffer_float_type: Option<SyncFloatType>,
    /// Worker addresses, `host:port` each, in node order.
    #[arg(long, num_args = 1.., value_parser = parse_worker)]
    pub workers: Vec<PeerAddress>,
    /// Threads per op (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nthreads: u32,
    /// Cap on the context length (0 = the model's).
    #[arg(long, default_value_t = 0)]
    pub max_seq_len: u32,
    /// Sampling temperature (0 = argmax; at least 0).
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true, value_parser = parse_temperature)]
    pub temperature: f32,
    /// Top-p (nucleus) threshold, 0..=1 (0 or 1: sample from the whole distribution).
    #[arg(long, default_value_t = 0.9, allow_negative_numbers = true, value_parser = parse_topp)]
    pub topp: f32,
    /// Random seed; -1 = random, as in llama.cpp (default: the current Unix time in seconds,
    /// as dllama).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<Seed>,
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

/// `--seed`: a fixed value, or `-1` for one drawn when the run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seed {
    /// This seed.
    Fixed(u64),
    /// A seed from the clock's nanoseconds and the process id, printed so the run can be
    /// repeated.
    Random,
}

fn parse_seed(value: &str) -> Result<Seed, String> {
    if value.trim() == "-1" {
        return Ok(Seed::Random);
    }
    value.trim().parse::<u64>().map(Seed::Fixed).map_err(|_| {
        format!(
            "invalid seed {value:?} (expected 0..={} or -1 for random)",
            u64::MAX
        )
    })
}

fn parse_temperature(value: &str) -> Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!(
            "invalid temperature {value:?} (expected a number >= 0; 0 always takes the most likely token)"
        )),
    }
}

fn parse_topp(value: &str) -> Result<f32, String> {
    match value.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "invalid top-p {value:?} (expected a number from 0 to 1; 0 or 1 turn nucleus sampling off)"
        )),
    }
}

/// The seed a run uses: `--seed`, a random one for `-1`, else the Unix time in seconds (as
/// dllama).
pub fn resolve_seed(seed: Option<Seed>) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    match seed {
        Some(Seed::Fixed(s)) => s,
        Some(Seed::Random) => {
            // SplitMix64 of the clock's nanoseconds and the pid: two runs started in the same
            // second still differ.
            let mut z = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32);
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        None => now.as_secs(),
    }
}

/// The buffer float type a model's weights run with: q80 for Q40 weights (dllama has no
/// F32 × Q40 matmul), f32 for F32 weights (and no F32 × Q80 one).
pub fn sync_type_for(weights: FloatType) -> SyncFloatType {
    match weights {
        FloatType::Q40 => SyncFloatType::Q80,
        _ => SyncFloatType::F32,
    }
}

/// What can be checked from the model's header before gigabytes of weights are read: the
/// buffer float type (chosen when not given), and the tokenizer's vocabulary against the
/// model's logits. A header that cannot be read is left to the root, whose error names it.
fn check_before_loading(args: &RootArgs, tokenizer: &Tokenizer) -> anyhow::Result<SyncFloatType> {
    let header = std::fs::File::open(&args.model)
        .ok()
        .and_then(|mut f| ModelHeader::read_from(&mut f).ok());
    let Some(header) = header else {
        return Ok(args.buffer_float_type.unwrap_or(SyncFloatType::F32));
    };
    let c = header.config();
    let sync = match args.buffer_float_type {
        None => sync_type_for(c.weight_type),
        Some(SyncFloatType::Q80) if c.weight_type == FloatType::F32 => anyhow::bail!(
            "{} has F32 weights, which run only with f32 buffers (dllama has no F32 x Q80 matmul): \
             drop --buffer-float-type q80 or pass --buffer-float-type f32",
            args.model.display()
        ),
        Some(SyncFloatType::F32) if c.weight_type == FloatType::Q40 => anyhow::bail!(
            "{} has Q40 weights, which run only with q80 buffers (dllama has no F32 x Q40 matmul): \
             drop --buffer-float-type f32 or pass --buffer-float-type q80",
            args.model.display()
        ),
        Some(s) => s,
    };
    let model_vocab = c.vocab_size as usize;
    anyhow::ensure!(
        tokenizer.vocab_size() <= model_vocab,
        "tokenizer file {} has {} tokens, more than the {model_vocab} logits of model {} (is it \
         the tokenizer of another model?)",
        args.tokenizer.display(),
        tokenizer.vocab_size(),
        args.model.display()
    );
    Ok(sync)
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
    /// Print only one JSON object at the end (the prompt, the generated text and tokens, and
    /// the summary's numbers) instead of the live log and dllama's summary.
    #[arg(long)]
    pub json: bool,
}

/// A started root with its tokenizer and sampler.
pub struct Session {
    pub root: Root,
    pub tokenizer: Tokenizer,
    pub sampler: Sampler,
}

/// Writes a line to stdout and flushes it (the output is a live log); a closed stdout ends
/// the process quietly (see [`super::output`]).
pub fn say(line: &str) {
    super::output::say(line);
}

/// Loads the tokenizer, starts the root (workers, configs, weights) and builds the sampler.
pub fn start(args: &RootArgs) -> anyhow::Result<Session> {
    // The tokenizer's errors name the file.
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let sync_type = check_before_loading(args, &tokenizer)?;
    let backend = Backend::detect();
    let seed = resolve_seed(args.seed);
    // dllama's sampler covers the tokenizer's vocabulary; built before the weights load so a
    // bad flag is refused at once.
    let sampler = Sampler::new(
        backend,
        tokenizer.vocab_size(),
        args.temperature,
        args.topp,
        seed,
    )
    .context("--temperature / --topp")?;
    if args.seed == Some(Seed::Random) {
        say(&format!("🎲 Seed: {seed}"));
    }
    let options = RootOptions {
        model: args.model.clone(),
        workers: args.workers.clone(),
        sync_type,
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
    if args.json {
        super::output::set_quiet();
    }
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
    let mut generated_text = String::new();
    let mut generated_tokens = Vec::new();
    let mut on_step = |step: Step| match step {
        Step::Eval { batch, stats } => say(&format!(
            "🔷️ {} | ({batch} tokens)",
            forward_line("Eval", &stats)
        )),
        Step::Pred { token, stats, .. } => {
            generated_tokens.push(token);
            let piece = match decoder.decode(&tokenizer, token) {
                Ok("") => "~".to_string(),
                Ok(p) => {
                    generated_text.push_str(p);
                    p.to_string()
                }
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
    if args.json {
        generated_text.push_str(decoder.finish());
        super::output::write_json(&summary_json(
            &summary,
            &args.prompt,
            &prompt,
            &generated_text,
            &generated_tokens,
        ));
    } else {
        print_summary(&summary, 32);
    }
    Ok(ExitCode::SUCCESS)
}

/// The run as JSON: what was asked and generated, and the numbers of [`print_summary`].
fn summary_json(
    s: &Summary,
    prompt: &str,
    prompt_tokens: &[u32],
    text: &str,
    tokens: &[u32],
) -> serde_json::Value {
    let ms_per = |n: u32, time: std::time::Duration| {
        if n == 0 {
            0.0
        } else {
            time.as_secs_f64() * 1000.0 / f64::from(n)
        }
    };
    serde_json::json!({
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "text": text,
        "tokens": tokens,
        "evaluation": {
            "tokens": s.eval_tokens,
            "tokens_per_s": Summary::rate(s.eval_tokens, s.eval_time),
            "ms_per_token": ms_per(s.eval_tokens, s.eval_time),
        },
        "prediction": {
            "tokens": s.pred_tokens,
            "tokens_per_s": Summary::rate(s.pred_tokens, s.pred_time),
            "ms_per_token": ms_per(s.pred_tokens, s.pred_time),
        },
        "network": {
            "sent_bytes": s.sent,
            "received_bytes": s.received,
        },
    })
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
