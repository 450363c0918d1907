//! `airllama worker`: serve a dllama root as a worker node (drop-in for `dllama worker`).
use std::net::ToSocketAddrs;
use std::process::ExitCode;

use airllama::streaming::{StreamingOptions, parse_size};
use airllama::worker::{WorkerOptions, serve};
use airllama_kernels::backend::Backend;
use anyhow::Context;

/// Flags of this subcommand (dllama's names and defaults).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// IPv4 address or host name (e.g. localhost) to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// TCP port to listen on (0: one the OS picks, printed in the "listening on" line).
    #[arg(long, default_value_t = 9990)]
    pub port: u16,
    /// Threads per op (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nthreads: u32,
    /// 1: spin on non-blocking sockets while forwards keep coming (dllama's turbo mode); 0: block.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub net_turbo: u8,
    /// Memory for weights (e.g. 512M, 2G): layers that do not fit are spilled to --spill-dir
    /// as the root sends them and streamed back each forward (default: all resident).
    #[arg(long, value_parser = parse_size)]
    pub mem_budget: Option<u64>,
    /// Directory for the spill file of --mem-budget (default: the system temp dir).
    #[arg(long)]
    pub spill_dir: Option<std::path::PathBuf>,
    /// Print each forward's streaming statistics.
    #[arg(long)]
    pub verbose: bool,
    /// This node's copy of the model file (shared storage or an identical copy). A root
    /// started with --shared-storage then has this worker load its slices from here, each
    /// verified against the root's file, instead of sending them; other roots see no change.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Directory for the slice cache of --model with --mem-budget (default:
    /// $AIRLLAMA_CACHE_DIR, $XDG_CACHE_HOME/airllama or ~/.cache/airllama).
    #[arg(long)]
    pub cache_dir: Option<std::path::PathBuf>,
    /// Seconds to wait for bytes the root or a peer owes (a message begun, a slice of a
    /// forward) before dropping the session; 0 = forever. Waiting for a root, and for the next
    /// forward, is never limited.
    #[arg(long, default_value_t = 60)]
    pub net_timeout: u64,
    /// Serve only roots (and peer workers) from these IPv4 addresses or networks, e.g.
    /// `--allow-root 10.0.0.0/24 192.168.1.7`; others are closed unread and logged (default:
    /// anyone, as dllama).
    #[arg(long, num_args = 1.., value_parser = parse_allowed)]
    pub allow_root: Vec<airllama_net::allow::AllowedNet>,
    /// Most memory a session may allocate (weights, buffers, KV cache, streaming ring), e.g.
    /// 4G; a root asking for more is refused before anything is allocated (default: the
    /// machine's available memory).
    #[arg(long, value_parser = parse_size)]
    pub max_memory: Option<u64>,
}

fn parse_allowed(text: &str) -> Result<airllama_net::allow::AllowedNet, String> {
    airllama_net::allow::AllowedNet::parse(text).map_err(|why| {
        format!("invalid --allow-root {text:?}: {why} (expected a.b.c.d or a.b.c.d/n)")
    })
}

/// `--host` as the IPv4 address the listener binds: an address as given, a name (localhost)
/// resolved to its first IPv4 address (dllama's wire protocol carries IPv4 peers only).
fn resolve_host(host: &str) -> anyhow::Result<String> {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(host.to_string());
    }
    let addresses = (host, 0)
        .to_socket_addrs()
        .with_context(|| format!("--host {host}: cannot resolve it"))?;
    addresses
        .filter_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4.ip().to_string()),
            std::net::SocketAddr::V6(_) => None,
        })
        .next()
        .with_context(|| {
            format!("--host {host}: it has no IPv4 address (the dllama protocol is IPv4 only)")
        })
}

/// Runs the subcommand: serves until the port cannot be bound.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let backend = Backend::detect();
    let host = resolve_host(&args.host)?;
    let limit = std::env::var("AIRLLAMA_ISA").ok();
    let options = WorkerOptions {
        host,
        port: args.port,
        n_threads: args.nthreads as usize,
        turbo: args.net_turbo == 1,
        backend,
        max_memory: super::inference::max_memory(args.max_memory),
        streaming: args.mem_budget.map(|budget| {
            let mut s = StreamingOptions::new(budget);
            if let Some(dir) = args.spill_dir.clone() {
                s.spill_dir = dir;
            }
            s.verbose = args.verbose;
            s
        }),
        model: args.model.clone(),
        net_timeout: super::inference::net_timeout(args.net_timeout),
        allow: airllama_net::allow::AllowList::new(args.allow_root.clone()),
        cache_dir: args
            .cache_dir
            .clone()
            .or_else(airllama::shared_storage::default_cache_dir),
    };
    if let Some(model) = &args.model
        && let Err(e) = std::fs::metadata(model)
    {
        // Shared storage may be mounted later; each session checks again.
        eprintln!(
            "warning: --model {}: {e}; roots asking for shared storage will be refused until it is readable",
            model.display()
        );
    }
    // A closed stdout ends the worker quietly (see `output`).
    let mut log = |line: &str| super::output::say(line);
    match limit {
        Some(l) => log(&format!(
            "CPU kernels: {} (AIRLLAMA_ISA={l})",
            backend.isa()
        )),
        None => log(&format!("CPU kernels: {}", backend.isa())),
    }
    serve(&options, &mut log)?;
    Ok(ExitCode::SUCCESS)
}
