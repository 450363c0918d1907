//! The root node: what dllama's `runInferenceApp` does before and around each forward.
//!
//! [`Root::open`] reads the `.m` header, builds the net and node configs with
//! [`LlmGraph`] (dllama's `buildLlmNet`), connects to the workers and greets them as dllama's
//! root does (worker count, worker index, the other workers' addresses), sends each worker the
//! net config and its node config, then walks the weight plan of [`WeightPlan`] (itself read
//! off `airllama_io`'s layout table): whole tensors to every node, row and column slices, MoE
//! experts at their offsets, in dllama's order. The root's own slices are read from the file
//! straight into its [`Executor`]'s weight storage; a worker's slice is read in chunks of at
//! most 1 MiB into one reused buffer and written to its connection. The root runs node 0's
//! config — the embedding, its slice of every layer, its slice of the logits — with the same
//! executor a worker uses.
//!
//! [`Root::forward`] is `RootLlmInference::forward`: the control packet to every worker, the
//! token ids into the `TOK` pipe, then the executor's segments with their syncs over the
//! network (X rows out, slices both ways, logits slices in). [`generate`] is dllama's
//! `inference` loop: prefill in batches of up to `nBatches` tokens, then one token per forward
//! until `min(seq_len, steps)`.
//!
//! One deliberate difference: after the prefill dllama feeds `inputTokens[nInputTokens]` (one
//! past the prompt, whatever the encoder left there) at the last prompt position; here the
//! last prompt token is fed.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use airllama_io::layout::{LayoutError, ModelLayout, TensorRole};
use airllama_io::model::{ModelConfig, ModelHeader, ReadModelHeaderError};
use airllama_kernels::backend::Backend;
use airllama_net::shared_storage::{LoadResult, ROOT_GREETING_WAIT};
use airllama_net::transport::{NetError, Network};
use airllama_net::{ControlPacket, PeerAddress, SyncStep, WeightMessage};

use crate::executor::{Executor, ExecutorError, ExecutorOptions, NoSync, Synchronizer, WeightFeed};
use crate::graph::{
    GraphError, GraphParams, LlmGraph, SyncFloatType, WeightPlan, WeightPlanError,
    check_dllama_root_limits,
};
use crate::shared_storage::{IdentityTable, SharedStorageError, TableSource, read_ranges};
use crate::streaming::{
    MapMode, ModelStreaming, SpillFile, StreamStats, StreamingError, StreamingOptions,
    WeightStreamer, op_number,
};

/// How the root runs.
#[derive(Debug, Clone)]
pub struct RootOptions {
    /// The `.m` model file.
    pub model: PathBuf,
    /// Worker addresses in `--workers` order (worker `i` is node `i + 1`); empty = one node.
    pub workers: Vec<PeerAddress>,
    /// `--buffer-float-type`.
    pub sync_type: SyncFloatType,
    /// `--max-seq-len` (0 = the model's).
    pub max_seq_len: u32,
    /// Threads per op.
    pub n_threads: usize,
    /// `--net-turbo`: switch the sockets to non-blocking once the weights are loaded.
    pub turbo: bool,
    /// The kernels' instruction set.
    pub backend: Backend,
    /// Most bytes the root's own graph may allocate.
    pub max_memory: u64,
    /// `--shared-storage`: airllama workers started with `--model` load their slices from
    /// their own copy of the model (verified against this one) instead of receiving them; the
    /// others get dllama's transfer.
    pub shared_storage: bool,
    /// Where the identity table of `--shared-storage` is cached (`None`: not cached).
    pub cache_dir: Option<PathBuf>,
    /// `--net-timeout`: the longest the root waits for bytes a worker owes it (`None`:
    /// forever); a silent worker is then named by address.
    pub net_timeout: Option<Duration>,
}

/// Why the root could not start or a forward failed. Each variant names the file, the worker
/// or the value at fault; the underlying error is its [`std::error::Error::source`] (print the
/// chain, e.g. anyhow's `{:#}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// `--mem-budget` layer streaming could not be set up or a streamed read failed.
    #[error("layer streaming (--mem-budget)")]
    Streaming(#[from] StreamingError),
    /// The model file cannot be opened or its size read.
    #[error("cannot open model file {path}")]
    OpenModel {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model header is unreadable or invalid.
    #[error("model file {path}")]
    ModelHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ReadModelHeaderError,
    },
    /// The tensors the header implies do not fit the file.
    #[error("model file {path}: the tensors do not fit the file")]
    Layout {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: LayoutError,
    },
    /// The model cannot be split over this many nodes with these flags.
    #[error("model file {path} cannot run on {n_nodes} node(s)")]
    Graph {
        /// The file.
        path: PathBuf,
        /// Root + workers.
        n_nodes: u32,
        /// Why.
        source: GraphError,
    },
    /// The weights cannot be planned over the nodes.
    #[error("model file {path}: the weights cannot be distributed")]
    WeightPlan {
        /// The file.
        path: PathBuf,
        /// Why.
        source: WeightPlanError,
    },
    /// Reading weights from the model file failed.
    #[error("cannot read model file {path} at byte {offset}")]
    ReadModel {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// Too many workers for dllama's protocol.
    #[error("{0} workers: dllama's protocol allows 1..={max}", max = airllama_net::limits::MAX_WORKERS)]
    TooManyWorkers(usize),
    /// Connecting to or greeting the workers failed.
    #[error("connecting to the workers ({workers})")]
    Connect {
        /// The `--workers` list.
        workers: String,
        /// The transport's error (it names the address or the node).
        source: NetError,
    },
    /// Talking to one worker failed.
    #[error("worker {address} (node {node}) while {what}{hint}")]
    Worker {
        /// `host:port`.
        address: String,
        /// Its node index.
        node: u32,
        /// What the root was doing.
        what: &'static str,
        /// Where to look when the worker hung up: dllama's protocol has no error message, so
        /// its reason is in its own log.
        hint: &'static str,
        /// The transport's error.
        source: NetError,
    },
    /// The network as a whole failed (control packets, turbo switch).
    #[error("network ({workers}) while {what}")]
    Network {
        /// The `--workers` list.
        workers: String,
        /// What the root was doing.
        what: &'static str,
        /// The transport's error.
        source: NetError,
    },
    /// The root's own graph could not be built or run.
    #[error("root node")]
    Executor(#[from] ExecutorError),
    /// A forward was asked with a batch, position or token the graph cannot take.
    #[error("forward at position {position} with {batch} token(s): {what}")]
    BadForward {
        /// First position.
        position: u32,
        /// Tokens in the batch.
        batch: usize,
        /// Why.
        what: String,
    },
    /// The prompt does not fit the context or the step budget.
    #[error("prompt: {0}")]
    Prompt(String),
    /// A worker refused to load its slices from its own model file.
    #[error("worker {address} (node {node}) cannot load from shared storage: {reason}")]
    SharedStorage {
        /// `host:port`.
        address: String,
        /// Its node index.
        node: u32,
        /// The worker's reason (its file, and what differs).
        reason: String,
    },
    /// The identity table of the root's model could not be made.
    #[error("identity table of the model for --shared-storage")]
    Identity(#[source] SharedStorageError),
    /// The sampler (or whatever picks the next token) failed.
    #[error("sampling at position {position}: {what}")]
    Sample {
        /// Position whose logits were sampled.
        position: u32,
        /// Why.
        what: String,
    },
}

/// Weight distribution progress, reported after every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Weight bytes loaded or sent so far (the root's own slices included).
    pub done: u64,
    /// All weight bytes of all nodes.
    pub total: u64,
}

/// What [`Root::open`] reports while it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootEvent {
    /// Every worker accepted the handshake; configs follow.
    Connected {
        /// The addresses, in node order.
        workers: Vec<String>,
    },
    /// Weight distribution begins.
    LoadingWeights {
        /// Bytes to load and send.
        total: u64,
    },
    /// Weight distribution progress.
    Progress(LoadProgress),
    /// Every worker acknowledged its weights.
    WeightsLoaded {
        /// Time spent.
        elapsed: Duration,
    },
    /// Turbo mode is on.
    Turbo,
    /// `--shared-storage`: which workers load from their own storage and which receive.
    SharedStorage {
        /// Workers that greeted: they load locally.
        local: Vec<String>,
        /// Workers that did not (C++ workers, airllama workers without `--model`).
        classic: Vec<String>,
    },
    /// Digesting the model for the identity table (first run for this file and node count).
    Hashing(LoadProgress),
    /// The identity table is ready.
    IdentityReady(TableSource),
    /// A worker loaded its slices from its own storage.
    LoadedLocally {
        /// `host:port`.
        address: String,
        /// Bytes it read and verified.
        bytes: u64,
        /// Its load time.
        elapsed: Duration,
    },
}

/// Timing and traffic of one forward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Time in ops (forward time minus sync time).
    pub eval: Duration,
    /// Time in syncs (waiting for and moving bytes).
    pub sync: Duration,
    /// Bytes sent to all workers during the forward (control packet included).
    pub sent: u64,
    /// Bytes received from all workers.
    pub received: u64,
    /// Layer streaming's reads and waits (`None` when every weight is resident).
    pub stream: Option<StreamStats>,
}

/// The root: configs sent, weights loaded, ready to run forwards.
#[derive(Debug)]
pub struct Root {
    model: PathBuf,
    graph: LlmGraph,
    executor: Executor,
    network: Option<Network>,
    workers: Vec<PeerAddress>,
    last_position: u32,
    streamer: Option<WeightStreamer>,
}

/// Syncs the root's pipes over the network, timing the syncs.
struct TimedSync<'a> {
    network: &'a mut Network,
    spent: Duration,
}

impl Synchronizer for TimedSync<'_> {
    fn sync(
        &mut self,
        step: &SyncStep,
        pipe: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let started = Instant::now();
        let result = self.network.sync_step(step, pipe);
        self.spent += started.elapsed();
        result.map_err(|e| Box::new(e) as _)
    }
}

/// Whether the worker closed the connection (rather than, say, sending bad bytes).
fn hung_up(error: &NetError) -> bool {
    match error {
        NetError::Closed { .. } => true,
        NetError::Io { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

fn address(peer: &PeerAddress) -> String {
    format!("{}:{}", peer.host, peer.port)
}

fn address_list(workers: &[PeerAddress]) -> String {
    workers.iter().map(address).collect::<Vec<_>>().join(" ")
}

/// Most bytes a weight record is read in at a time when it is not read straight into the
/// executor (a worker's slice on its way to the socket, a spilled slice on its way to the spill
/// file): loading the weights needs no buffer the size of a tensor.
const LOAD_CHUNK: usize = 1 << 20;

/// Reads `ranges` of `file` in order and hands their concatenation, `n_bytes` long, to `sink`
/// in pieces of at most `chunk_len` bytes, each with its offset in the concatenation. `chunk`
/// is the reused read buffer: it grows to `min(chunk_len, n_bytes)` at most.
fn copy_ranges<S>(
    file: &File,
    path: &Path,
    ranges: impl Iterator<Item = std::ops::Range<u64>>,
    n_bytes: u64,
    chunk: &mut Vec<u8>,
    chunk_len: usize,
    mut sink: S,
) -> Result<(), RootError>
where
    S: FnMut(u64, &[u8]) -> Result<(), RootError>,
{
    let read_err = |offset: u64, source: std::io::Error| RootError::ReadModel {
        path: path.to_path_buf(),
        offset,
        source,
    };
    let want = usize::try_from(n_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1, chunk_len.max(1));
    if chunk.len() < want {
        chunk.resize(want, 0);
    }
    let (mut flushed, mut filled) = (0u64, 0usize);
    for range in ranges {
        let mut at = range.start;
        while at < range.end {
            let n = (range.end - at).min((want - filled) as u64) as usize;
            if flushed + (filled + n) as u64 > n_bytes {
                return Err(read_err(
                    at,
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "slice larger than its planned size",
                    ),
                ));
            }
            file.read_exact_at(&mut chunk[filled..filled + n], at)
                .map_err(|source| read_err(at, source))?;
            filled += n;
            at += n as u64;
            if filled == want {
                sink(flushed, &chunk[..filled])?;
                flushed += filled as u64;
                filled = 0;
            }
        }
    }
    if filled > 0 {
        sink(flushed, &chunk[..filled])?;
        flushed += filled as u64;
    }
    if flushed != n_bytes {
        return Err(read_err(
            0,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("slice of {flushed} bytes, planned {n_bytes}"),
            ),
        ));
    }
    Ok(())
}

/// Where the root keeps its own weights under `--mem-budget`.
#[allow(
    clippy::large_enum_variant,
    reason = "one value per Root::open, on the stack while the weights load"
)]
enum OwnWeights<'a> {
    /// Every weight in the executor (no budget, or everything fits).
    Resident,
    /// One node: each op's weight is one range of the model file, streamed from there.
    Model(ModelStreaming),
    /// A root with workers: its slices are strided in the model file, so the streamed ones
    /// are copied into a spill file while the weights are distributed, then streamed from it
    /// (the embedding table is mapped from the model file). With the options to finish it.
    Spill(SpillFile, &'a StreamingOptions),
}

impl Root {
    /// Reads the model header, connects to the workers, sends the configs and distributes the
    /// weights, as dllama's root does before its first forward.
    pub fn open(
        options: &RootOptions,
        events: &mut dyn FnMut(RootEvent),
    ) -> Result<Root, RootError> {
        Root::open_streaming(options, None, events)
    }

    /// As [`Root::open`], keeping the root's own weights within `streaming.mem_budget`
    /// (`--mem-budget`): the layers that do not fit are streamed each forward. On one node they
    /// stream straight from the model file. With workers the root's slices are strided in the
    /// file, so, as a worker does, it copies the slices of the streamed layers into a spill file
    /// under `streaming.spill_dir` while it distributes the weights and streams them back from
    /// there (the file is unlinked once open, and its space freed when the root is dropped);
    /// the embedding table is mapped from the model file. The bytes sent to the workers are
    /// the same either way.
    pub fn open_streaming(
        options: &RootOptions,
        streaming: Option<&StreamingOptions>,
        events: &mut dyn FnMut(RootEvent),
    ) -> Result<Root, RootError> {
        let path = options.model.clone();
        let file = File::open(&path).map_err(|source| RootError::OpenModel {
            path: path.clone(),
            source,
        })?;
        let file_size = file
            .metadata()
            .map_err(|source| RootError::OpenModel {
                path: path.clone(),
                source,
            })?
            .len();
        let header =
            ModelHeader::read_from(&mut std::io::BufReader::new(&file)).map_err(|source| {
                RootError::ModelHeader {
                    path: path.clone(),
                    source,
                }
            })?;
        if options.workers.len() > airllama_net::limits::MAX_WORKERS as usize {
            return Err(RootError::TooManyWorkers(options.workers.len()));
        }
        let n_nodes = options.workers.len() as u32 + 1;
        let params = GraphParams::dllama(n_nodes, options.sync_type, options.max_seq_len);
        let graph_err = |source| RootError::Graph {
            path: path.clone(),
            n_nodes,
            source,
        };
        check_dllama_root_limits(header.config(), &params).map_err(graph_err)?;
        let graph = LlmGraph::build(&header, params).map_err(graph_err)?;
        let layout = ModelLayout::new(&header, file_size).map_err(|source| RootError::Layout {
            path: path.clone(),
            source,
        })?;
        let plan = WeightPlan::new(&graph, &layout).map_err(|source| RootError::WeightPlan {
            path: path.clone(),
            source,
        })?;
        let exec_options = ExecutorOptions {
            backend: options.backend,
            n_threads: options.n_threads,
            max_memory: options.max_memory,
        };
        let own_node = &graph.nodes[0];
        let mut own = match streaming {
            Some(s) if n_nodes == 1 => OwnWeights::Model(ModelStreaming::plan(
                &path,
                own_node,
                &plan,
                s,
                MapMode::Off,
            )?),
            Some(s) => {
                // The embedding table is one whole tensor of the file on the root: mapped.
                let mut mapped = Vec::new();
                for load in plan.node_loads(0) {
                    if load.role == TensorRole::Embedding
                        && load.bytes.is_contiguous()
                        && load.target.offset == 0
                        && let Some(op) = op_number(own_node, &load.target)
                    {
                        mapped.push((op, load.bytes.start..load.bytes.end()));
                    }
                }
                match SpillFile::create_with_mapped(own_node, s, &path, mapped)? {
                    Some(spill) => OwnWeights::Spill(spill, s),
                    None => OwnWeights::Resident,
                }
            }
            None => OwnWeights::Resident,
        };
        // The streaming ring counts against --max-memory too.
        let ring = match &own {
            OwnWeights::Resident => 0,
            OwnWeights::Model(s) => s.streamer.plan().ring_bytes(),
            OwnWeights::Spill(s, _) => s.plan().ring_bytes(),
        };
        let exec_options = exec_options.within(ring);
        let mut executor = match &own {
            OwnWeights::Resident => Executor::new(&graph.net, own_node, &exec_options)?,
            OwnWeights::Model(s) => Executor::with_streamed_weights(
                &graph.net,
                own_node,
                &exec_options,
                &s.streamer.streamed_ops(),
            )?,
            OwnWeights::Spill(s, _) => Executor::with_streamed_weights(
                &graph.net,
                own_node,
                &exec_options,
                s.streamed_ops(),
            )?,
        };

        let workers_text = address_list(&options.workers);
        let connect_err = |source| RootError::Connect {
            workers: workers_text.clone(),
            source,
        };
        // `local[c]`: worker connection `c` loads its slices from its own storage.
        let (mut network, local) = if options.workers.is_empty() {
            (None, Vec::new())
        } else {
            let wait = options.shared_storage.then_some(ROOT_GREETING_WAIT);
            let (network, greeted) =
                Network::connect_to_workers_within(&options.workers, wait, options.net_timeout)
                    .map_err(connect_err)?;
            (Some(network), greeted)
        };
        if network.is_some() {
            events(RootEvent::Connected {
                workers: options.workers.iter().map(address).collect(),
            });
        }
        if options.shared_storage && network.is_some() {
            let pick = |want: bool| {
                options
                    .workers
                    .iter()
                    .zip(&local)
                    .filter(|(_, l)| **l == want)
                    .map(|(w, _)| address(w))
                    .collect()
            };
            events(RootEvent::SharedStorage {
                local: pick(true),
                classic: pick(false),
            });
        }
        let is_local = |node: u32| node > 0 && local.get(node as usize - 1) == Some(&true);
        let worker_err = |connection: u32, what: &'static str| {
            let address = options
                .workers
                .get(connection as usize)
                .map(address)
                .unwrap_or_default();
            move |source| RootError::Worker {
                address,
                node: connection + 1,
                what,
                hint: if hung_up(&source) {
                    " (it hung up: its log says why, e.g. --max-memory, a --spill-dir it cannot \
                     write, a config it refuses)"
                } else {
                    ""
                },
                source,
            }
        };
        if let Some(network) = network.as_mut() {
            for connection in 0..network.n_connections() {
                let node = &graph.nodes[connection as usize + 1];
                network
                    .send_configs(connection, &graph.net, node)
                    .map_err(worker_err(connection, "sending the configs"))?;
            }
        }

        if let Some(network) = network.as_mut()
            && local.contains(&true)
        {
            let (table, source) = IdentityTable::load_or_build(
                &file,
                &path,
                header.header_size(),
                &plan,
                options.cache_dir.as_deref(),
                &mut |done, total| events(RootEvent::Hashing(LoadProgress { done, total })),
            )
            .map_err(RootError::Identity)?;
            events(RootEvent::IdentityReady(source));
            // Every request goes out before any byte is read here: the workers load in
            // parallel with the root and with the classic transfers.
            for connection in 0..network.n_connections() {
                if is_local(connection + 1) {
                    let request = table.request(&plan, connection + 1, &graph.params);
                    network
                        .send_load_request(connection, &request)
                        .map_err(worker_err(connection, "sending the load request"))?;
                }
            }
        }
        let total: u64 = plan
            .loads()
            .iter()
            .filter(|l| !is_local(l.node))
            .map(|l| l.header.n_bytes)
            .sum();
        events(RootEvent::LoadingWeights { total });
        let started = Instant::now();
        let mut done = 0u64;
        // The read buffer of the records that do not go straight into the executor. Under a
        // budget it takes no more than what the resident weights leave of it (where the ring
        // goes once the weights are loaded), so loading stays within the budget too; never
        // under 64 KiB, which would only multiply the syscalls.
        let mut chunk: Vec<u8> = Vec::new();
        let chunk_len = match &own {
            OwnWeights::Spill(spill, s) => {
                let left = s.mem_budget.saturating_sub(spill.plan().resident_bytes);
                LOAD_CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX).max(64 << 10))
            }
            _ => LOAD_CHUNK,
        };
        for load in plan.loads() {
            if is_local(load.node) {
                continue;
            }
            if load.node == 0 {
                let resident = match &own {
                    OwnWeights::Resident => true,
                    OwnWeights::Model(s) => s.is_resident(own_node, &load.target),
                    // A target that names no op is left to the executor to reject.
                    OwnWeights::Spill(s, _) => op_number(own_node, &load.target)
                        .is_none_or(|op| s.streamed_ops().get(op) != Some(&true)),
                };
                if resident {
                    let dst = executor.weight_mut(&load.target)?;
                    read_ranges(&file, load.bytes.ranges(), dst).map_err(|(offset, source)| {
                        RootError::ReadModel {
                            path: path.clone(),
                            offset,
                            source,
                        }
                    })?;
                } else if let OwnWeights::Spill(spill, _) = &mut own
                    && let Some(op) = spill.spills(own_node, &load.target)
                {
                    let base = load.target.offset;
                    copy_ranges(
                        &file,
                        &path,
                        load.bytes.ranges(),
                        load.header.n_bytes,
                        &mut chunk,
                        chunk_len,
                        |at, bytes| Ok(spill.write(op, base + at, bytes)?),
                    )?;
                }
                // Otherwise streamed or mapped from the model file each forward.
            } else {
                let network = network.as_mut().ok_or_else(|| RootError::WeightPlan {
                    path: path.clone(),
                    source: WeightPlanError::NotAWorker {
                        node: load.node,
                        n_nodes,
                    },
                })?;
                // The record as `Network::send_weight` writes it, its data in chunks.
                let connection = load.node - 1;
                let mut header = Vec::new();
                WeightMessage::Record(load.header.clone()).encode(&mut header);
                network
                    .write(connection, &header)
                    .map_err(worker_err(connection, "sending weights"))?;
                copy_ranges(
                    &file,
                    &path,
                    load.bytes.ranges(),
                    load.header.n_bytes,
                    &mut chunk,
                    chunk_len,
                    |_, bytes| {
                        network
                            .write(connection, bytes)
                            .map_err(worker_err(connection, "sending weights"))
                    },
                )?;
            }
            done += load.header.n_bytes;
            events(RootEvent::Progress(LoadProgress { done, total }));
        }
        drop(chunk);
        let streamer = match own {
            OwnWeights::Resident => None,
            OwnWeights::Model(s) => Some(s.streamer),
            OwnWeights::Spill(spill, s) => Some(spill.finish(s)?),
        };
        if let Some(network) = network.as_mut() {
            for connection in 0..network.n_connections() {
                if !is_local(connection + 1) {
                    network
                        .write(connection, &0u32.to_le_bytes())
                        .and_then(|()| network.read_ack(connection))
                        .map_err(worker_err(connection, "ending the weight stream"))?;
                    continue;
                }
                let address = options
                    .workers
                    .get(connection as usize)
                    .map(address)
                    .unwrap_or_default();
                // Progress words only say the worker is alive; the outcome follows them.
                let mut result = LoadResult::Progress { bytes_done: 0 };
                while let LoadResult::Progress { .. } = result {
                    result = network.read_load_result(connection).map_err(worker_err(
                        connection,
                        "waiting for its shared-storage load",
                    ))?;
                }
                match result {
                    LoadResult::Progress { .. } => {}
                    LoadResult::Loaded { bytes_read, millis } => {
                        events(RootEvent::LoadedLocally {
                            address,
                            bytes: bytes_read,
                            elapsed: Duration::from_millis(millis),
                        });
                    }
                    LoadResult::Refused { reason } => {
                        return Err(RootError::SharedStorage {
                            address,
                            node: connection + 1,
                            reason,
                        });
                    }
                }
            }
            network.reset_stats();
        }
        executor.prepare_weights();
        events(RootEvent::WeightsLoaded {
            elapsed: started.elapsed(),
        });
        if options.turbo
            && let Some(network) = network.as_mut()
        {
            network
                .set_turbo(true)
                .map_err(|source| RootError::Network {
                    workers: workers_text.clone(),
                    what: "switching to turbo mode",
                    source,
                })?;
            events(RootEvent::Turbo);
        }
        Ok(Root {
            model: path,
            graph,
            executor,
            network,
            workers: options.workers.clone(),
            last_position: 0,
            streamer,
        })
    }

    /// The layer streamer, when `--mem-budget` left weights to stream.
    pub fn streamer(&self) -> Option<&WeightStreamer> {
        self.streamer.as_ref()
    }

    /// The model's configuration (with `--max-seq-len` applied).
    pub fn config(&self) -> &ModelConfig {
        &self.graph.config
    }

    /// The graph sent to the workers.
    pub fn graph(&self) -> &LlmGraph {
        &self.graph
    }

    /// The model file.
    pub fn model_path(&self) -> &Path {
        &self.model
    }

    /// Nodes (root + workers).
    pub fn n_nodes(&self) -> u32 {
        self.graph.params.n_nodes
    }

    /// Most tokens one forward takes (dllama's `nBatches`).
    pub fn batch_capacity(&self) -> u32 {
        self.graph.params.n_batches
    }

    /// Context length.
    pub fn seq_len(&self) -> u32 {
        self.graph.config.seq_len
    }

    /// Runs one forward of `tokens` at positions `position..position + tokens.len()`: the
    /// control packet to every worker, the token ids into the `TOK` pipe, then every segment
    /// of node 0 with its syncs. The logits of the first batch item are then in
    /// [`Root::logits_mut`].
    pub fn forward(&mut self, position: u32, tokens: &[u32]) -> Result<ForwardStats, RootError> {
        self.forward_inner(position, tokens, true)
    }

    /// As [`Root::forward`] for tokens whose logits nobody reads (a prompt's tokens but the
    /// last, see [`prefill`]). A one-node root then skips the classifier, whose output is
    /// only the logits (the vocabulary × dim matmul: 6 % of a 1B model's prompt time); a root
    /// with workers runs everything, as its workers send their logits slices regardless.
    /// [`Root::logits_mut`] is undefined after it.
    pub fn forward_prompt(
        &mut self,
        position: u32,
        tokens: &[u32],
    ) -> Result<ForwardStats, RootError> {
        self.forward_inner(position, tokens, false)
    }

    fn forward_inner(
        &mut self,
        position: u32,
        tokens: &[u32],
        logits: bool,
    ) -> Result<ForwardStats, RootError> {
        let bad = |what: String| RootError::BadForward {
            position,
            batch: tokens.len(),
            what,
        };
        let capacity = self.graph.params.n_batches as usize;
        if tokens.is_empty() || tokens.len() > capacity {
            return Err(bad(format!("a forward takes 1..={capacity} tokens")));
        }
        let batch = tokens.len() as u32;
        if u64::from(position) + u64::from(batch) > u64::from(self.graph.config.seq_len) {
            return Err(bad(format!(
                "positions past the context length {}",
                self.graph.config.seq_len
            )));
        }
        let vocab = self.graph.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t >= vocab) {
            return Err(bad(format!(
                "token {t} is outside the vocabulary of {vocab}"
            )));
        }
        let started = Instant::now();
        if let Some(network) = self.network.as_mut() {
            network
                .send_control(ControlPacket {
                    position,
                    batch_size: batch,
                })
                .map_err(|source| RootError::Network {
                    workers: address_list(&self.workers),
                    what: "sending a control packet",
                    source,
                })?;
        }
        self.last_position = position;
        let token_pipe = self.graph.pipes.token as usize;
        let pipe = self
            .executor
            .pipe_mut(token_pipe)
            .ok_or_else(|| bad("the graph has no token pipe".into()))?;
        let ids: &mut [f32] =
            bytemuck::try_cast_slice_mut(pipe).map_err(|e| bad(format!("token pipe: {e}")))?;
        for (slot, &t) in ids.iter_mut().zip(tokens) {
            *slot = t as f32;
        }
        let feed: Option<&mut dyn WeightFeed> = match self.streamer.as_mut() {
            Some(s) => {
                s.begin_forward().map_err(StreamingError::from)?;
                Some(s)
            }
            None => None,
        };
        let sync = match self.network.as_mut() {
            Some(network) => {
                let mut sync = TimedSync {
                    network,
                    spent: Duration::ZERO,
                };
                self.executor
                    .forward_with(position, batch, &mut sync, feed)?;
                sync.spent
            }
            None => {
                let skip = |name: &str| {
                    !logits && matches!(name, "final_matmul_logits" | "final_cast_logits")
                };
                self.executor
                    .forward_skipping(position, batch, &mut NoSync, feed, &skip)?;
                Duration::ZERO
            }
        };
        let elapsed = started.elapsed();
        let stream = self.streamer.as_mut().map(|s| {
            let mut stats = s.end_forward();
            stats.forward_time = elapsed;
            stats
        });
        let (sent, received) = self.take_traffic();
        Ok(ForwardStats {
            eval: elapsed.saturating_sub(sync),
            sync,
            sent,
            received,
            stream,
        })
    }

    /// Bytes sent and received over all connections since the last call (dllama's `getStats`,
    /// which resets the counters).
    fn take_traffic(&mut self) -> (u64, u64) {
        match self.network.as_mut() {
            Some(network) => {
                let totals = network
                    .stats()
                    .iter()
                    .fold((0, 0), |(s, r), &(cs, cr)| (s + cs, r + cr));
                network.reset_stats();
                totals
            }
            None => (0, 0),
        }
    }

    /// The logits of the first item of the last forward (`vocab_size` values), gathered from
    /// every node's slice. The sampler may overwrite them.
    pub fn logits_mut(&mut self) -> Result<&mut [f32], RootError> {
        let vocab = self.graph.config.vocab_size as usize;
        let index = self.graph.pipes.logits as usize;
        let bad = |what: &str| RootError::BadForward {
            position: self.last_position,
            batch: 1,
            what: format!("logits pipe: {what}"),
        };
        let pipe = self
            .executor
            .pipe_mut(index)
            .ok_or_else(|| bad("missing"))?;
        let values: &mut [f32] =
            bytemuck::try_cast_slice_mut(pipe).map_err(|_| bad("not f32-aligned"))?;
        values
            .get_mut(..vocab)
            .ok_or_else(|| bad("shorter than the vocabulary"))
    }

    /// Sends the stop packet (batch 0, the last forward's position) and closes the
    /// connections (`RootLlmInference::finish`).
    pub fn finish(mut self) -> Result<(), RootError> {
        if let Some(network) = self.network.as_mut() {
            network
                .send_control(ControlPacket {
                    position: self.last_position,
                    batch_size: 0,
                })
                .map_err(|source| RootError::Network {
                    workers: address_list(&self.workers),
                    what: "sending the stop packet",
                    source,
                })?;
        }
        Ok(())
    }
}

/// One step of [`generate`], reported as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A prefill forward of `batch` prompt tokens.
    Eval {
        /// Tokens in the forward.
        batch: u32,
        /// Its timing and traffic.
        stats: ForwardStats,
    },
    /// A forward of one token and the token sampled from its logits.
    Pred {
        /// Position of the forward.
        position: u32,
        /// The sampled token.
        token: u32,
        /// Its timing and traffic.
        stats: ForwardStats,
    },
}

/// Totals of a [`generate`] run (dllama's summary).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Prompt tokens evaluated in prefill batches (prompt length − 1).
    pub eval_tokens: u32,
    /// Time of the prefill forwards.
    pub eval_time: Duration,
    /// Tokens predicted.
    pub pred_tokens: u32,
    /// Time of the prediction forwards.
    pub pred_time: Duration,
    /// Bytes sent to the workers, all forwards.
    pub sent: u64,
    /// Bytes received from the workers, all forwards.
    pub received: u64,
    /// Position after the last forward.
    pub end_position: u32,
}

impl Summary {
    /// Tokens per second of a phase (0 when nothing ran).
    pub fn rate(tokens: u32, time: Duration) -> f64 {
        let secs = time.as_secs_f64();
        if tokens == 0 || secs == 0.0 {
            0.0
        } else {
            f64::from(tokens) / secs
        }
    }
}

/// Runs a prompt from the start of the context, as dllama's `inference` mode: forwards of up
/// to `nBatches` tokens over `prompt[..n - 1]`, then one token per forward starting with the
/// last prompt token, each forward's logits handed to `sample`, until position
/// `min(seq_len, steps)`. `on_step` sees every forward.
pub fn generate(
    root: &mut Root,
    prompt: &[u32],
    steps: u32,
    sample: &mut dyn FnMut(&mut [f32]) -> Result<u32, String>,
    on_step: &mut dyn FnMut(Step),
) -> Result<Summary, RootError> {
    let n = prompt.len();
    if n == 0 {
        return Err(RootError::Prompt("the prompt encodes to no tokens".into()));
    }
    if n > root.seq_len() as usize {
        return Err(RootError::Prompt(format!(
            "{n} tokens exceed the context length {}",
            root.seq_len()
        )));
    }
    if n > steps as usize {
        return Err(RootError::Prompt(format!(
            "{n} tokens exceed --steps {steps}"
        )));
    }
    let mut summary = Summary::default();
    let pos = prefill(root, 0, prompt, &mut |step| {
        if let Step::Eval { batch, stats } = step {
            summary.eval_tokens += batch;
            summary.eval_time += stats.eval + stats.sync;
            summary.sent += stats.sent;
            summary.received += stats.received;
        }
        on_step(step);
    })?;
    let mut token = prompt[n - 1];
    let max_pos = root.seq_len().min(steps);
    let mut position = pos;
    while position < max_pos {
        let stats = root.forward(position, &[token])?;
        token = sample(root.logits_mut()?).map_err(|what| RootError::Sample { position, what })?;
        summary.pred_tokens += 1;
        summary.pred_time += stats.eval + stats.sync;
        summary.sent += stats.sent;
        summary.received += stats.received;
        on_step(Step::Pred {
            position,
            token,
            stats,
        });
        position += 1;
    }
    summary.end_position = position;
    Ok(summary)
}

/// Runs every token of `tokens` but the last through the model at positions `start..`, in
/// forwards of up to `nBatches` tokens (dllama's prefill), and returns the position the last
/// token goes to. The last token is left for the first one-token forward, whose logits give
/// the first new token.
pub fn prefill(
    root: &mut Root,
    start: u32,
    tokens: &[u32],
    on_step: &mut dyn FnMut(Step),
) -> Result<u32, RootError> {
    let n = tokens.len();
    if n == 0 {
        return Err(RootError::Prompt("no tokens to evaluate".into()));
    }
    if u64::from(start) + n as u64 > u64::from(root.seq_len()) {
        return Err(RootError::Prompt(format!(
            "{n} tokens at position {start} exceed the context length {}",
            root.seq_len()
        )));
    }
    let capacity = root.batch_capacity() as usize;
    let mut done = 0usize;
    while done + 1 < n {
        let batch = (n - 1 - done).min(capacity);
        let position = start + done as u32;
        let stats = root.forward_prompt(position, &tokens[done..done + batch])?;
        done += batch;
        on_step(Step::Eval {
            batch: batch as u32,
            stats,
        });
    }
    Ok(start + done as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strided ranges cut into chunks smaller than a range, and chunks spanning ranges, give
    /// back the ranges' bytes in order at the right offsets; a plan that disagrees with the
    /// ranges' total is an error.
    #[test]
    fn copy_ranges_hands_over_bounded_chunks_in_order() {
        let path = std::env::temp_dir().join(format!("airllama-copy-{}", std::process::id()));
        let content: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = File::open(&path).unwrap();
        let range = airllama_io::layout::StridedRange::strided(10, 100, 30, 9);
        let expected: Vec<u8> = range
            .ranges()
            .flat_map(|r| content[r.start as usize..r.end as usize].to_vec())
            .collect();
        for chunk_len in [1, 7, 30, 31, 64, 270, 4096] {
            let (mut got, mut chunk) = (Vec::new(), Vec::new());
            copy_ranges(
                &file,
                &path,
                range.ranges(),
                270,
                &mut chunk,
                chunk_len,
                |at, b| {
                    assert_eq!(at, got.len() as u64);
                    assert!(b.len() <= chunk_len);
                    got.extend_from_slice(b);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(got, expected, "chunks of {chunk_len}");
            assert!(chunk.len() <= chunk_len.min(270));
        }
        let mut chunk = Vec::new();
        for planned in [269, 271] {
            let r = copy_ranges(
                &file,
                &path,
                range.ranges(),
                planned,
                &mut chunk,
                64,
                |_, _| Ok(()),
            );
            assert!(matches!(r, Err(RootError::ReadModel { .. })), "{planned}");
        }
        let _ = std::fs::remove_file(&path);
    }
}
