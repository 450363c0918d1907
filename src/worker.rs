//! The drop-in dllama worker: listens, serves one root session at a time, and keeps serving.
//!
//! A session follows `runWorkerApp`: accept the root (and build the worker mesh), read the net
//! and node configs, build the [`Executor`], load the weights straight into the ops, then run a
//! forward per control packet until the stop packet. Anything that goes wrong in a session — a
//! socket error, a malformed or unsupported config, a failed op — is logged with what was wrong
//! and ends that session only: the sockets are closed and the worker accepts the next root.
use std::path::PathBuf;
use std::time::Instant;

use airllama_kernels::backend::Backend;
use airllama_net::SyncStep;
use airllama_net::shared_storage::{LOAD_PROGRESS_INTERVAL, LoadResult};
use airllama_net::transport::{ControlReader, Listener, NetError, Network, WorkerSession};
use airllama_net::{NetConfig, NodeConfig};

use crate::executor::{Executor, ExecutorError, ExecutorOptions, Synchronizer, WeightFeed};
use crate::shared_storage::{LocalModel, NodeRecords, SharedStorageError, slice_cache_path};
use crate::streaming::{SpillFile, StreamingError, StreamingOptions, WeightStreamer};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// IPv4 address to listen on (`0.0.0.0` = all).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Threads per op.
    pub n_threads: usize,
    /// dllama's `--net-turbo`: spin on non-blocking sockets while forwards keep coming.
    pub turbo: bool,
    /// The kernels' instruction set.
    pub backend: Backend,
    /// Most bytes a session's graph may allocate.
    pub max_memory: u64,
    /// `--mem-budget`: weights that do not fit are spilled to a file as they arrive and
    /// streamed back each forward (`None` = all resident).
    pub streaming: Option<StreamingOptions>,
    /// `--model`: this node's copy of the model. With it the worker offers a root started with
    /// `--shared-storage` to load its slices from here instead of receiving them (see
    /// [`airllama_net::shared_storage`]); other roots see no difference.
    pub model: Option<PathBuf>,
    /// Where the slice cache of a shared-storage session under `--mem-budget` goes.
    pub cache_dir: Option<PathBuf>,
    /// `--net-timeout`: the longest a session waits for bytes its root or a peer owes (`None`:
    /// forever).
    pub net_timeout: Option<std::time::Duration>,
    /// `--allow-root`: who may connect.
    pub allow: airllama_net::allow::AllowList,
}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The network failed or the root sent bytes that do not decode.
    #[error("network: {0}")]
    Net(#[from] NetError),
    /// Layer streaming could not be set up or a streamed read failed.
    #[error("layer streaming: {0}")]
    Streaming(#[from] StreamingError),
    /// The graph could not be built or a forward failed.
    #[error("executor: {0}")]
    Executor(#[from] ExecutorError),
    /// The root asked for a shared-storage load and this node's model file cannot serve it
    /// (the root was told why).
    #[error("shared storage: {0}")]
    SharedStorage(#[from] SharedStorageError),
}

/// Why the worker stopped serving altogether.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {host}:{port}: {source}")]
pub struct ListenError {
    host: String,
    port: u16,
    source: NetError,
}

/// Syncs pipes over the session's sockets.
struct NetSync<'a>(&'a mut Network);

impl Synchronizer for NetSync<'_> {
    fn sync(
        &mut self,
        step: &SyncStep,
        pipe: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.sync_step(step, pipe).map_err(|e| Box::new(e) as _)
    }
}

/// A debugging aid (`AIRLLAMA_DUMP_OPS=<file>`): writes every op output of the first forward
/// as records `u32 name length, name, u32 layer, u32 rows, u32 row bytes, rows`.
fn dump_first_forward(
    path: &std::ffi::OsStr,
    log: &mut dyn FnMut(&str),
) -> Option<Box<crate::executor::OpObserver>> {
    use std::io::Write;
    let mut file = match std::fs::File::create(path) {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            log(&format!(
                "cannot create the op dump {}: {e}",
                path.to_string_lossy()
            ));
            return None;
        }
    };
    Some(Box::new(move |forward, name, layer, rows| {
        if forward != 0 {
            return;
        }
        let row_bytes = rows.first().map_or(0, |r| r.len());
        let mut record = Vec::new();
        record.extend_from_slice(&(name.len() as u32).to_le_bytes());
        record.extend_from_slice(name.as_bytes());
        for v in [layer, rows.len() as u32, row_bytes as u32] {
            record.extend_from_slice(&v.to_le_bytes());
        }
        for r in rows {
            record.extend_from_slice(r);
        }
        let _ = file.write_all(&record).and_then(|()| file.flush());
    }))
}

/// The available memory of this machine (`MemAvailable` of `/proc/meminfo`), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Listens and serves roots forever; returns only when the port cannot be bound.
pub fn serve(options: &WorkerOptions, log: &mut dyn FnMut(&str)) -> Result<(), ListenError> {
    let mut listener =
        Listener::bind(&options.host, options.port).map_err(|source| ListenError {
            host: options.host.clone(),
            port: options.port,
            source,
        })?;
    listener.set_timeout(options.net_timeout);
    listener.set_allowed(options.allow.clone());
    // The bound port, not the asked one: with port 0 the OS picks it, and the log is the only
    // place a user (or a script) can learn it.
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(options.port);
    log(&format!(
        "listening on {}:{} ({} thread(s), kernels: {})",
        options.host,
        port,
        options.n_threads,
        options.backend.isa()
    ));
    loop {
        match serve_session(&listener, options, log) {
            Ok(forwards) => log(&format!(
                "session over after {forwards} forward(s); waiting for a root"
            )),
            Err(e) => {
                log(&format!("error: {e}; session dropped, waiting for a root"));
                // An error before any byte moved (accept failing, say) must not become a
                // busy loop of log lines.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// dllama's weight transfer: reads every record the root sends into the executor (or, under
/// `--mem-budget`, the streamed ones into a spill file).
fn receive_weights(
    session: &mut WorkerSession,
    options: &WorkerOptions,
    net: &NetConfig,
    node: &NodeConfig,
    exec_options: &ExecutorOptions,
    log: &mut dyn FnMut(&str),
) -> Result<(Executor, Option<WeightStreamer>), SessionError> {
    let mut spill = match &options.streaming {
        Some(s) => SpillFile::create(node, s)?,
        None => None,
    };
    // The streaming ring counts against --max-memory too.
    let ring = spill.as_ref().map_or(0, |s| s.plan().ring_bytes());
    let exec_options = &exec_options.within(ring);
    let mut executor = match &spill {
        Some(spill) => {
            log(&format!(
                "mem budget: {} kB resident, the rest spilled to {} and streamed",
                spill.plan().resident_bytes / 1000,
                spill.path().display()
            ));
            Executor::with_streamed_weights(net, node, exec_options, spill.streamed_ops())?
        }
        None => Executor::new(net, node, exec_options)?,
    };
    if let Some(path) = std::env::var_os("AIRLLAMA_DUMP_OPS") {
        executor.set_op_observer(dump_first_forward(&path, log));
    }
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut buffer = Vec::new();
    while let Some((_, target)) = session.next_weight(node)? {
        match spill
            .as_mut()
            .and_then(|s| Some((s.spills(node, &target)?, s)))
        {
            Some((op, spill)) => {
                // The record was checked against the op's weight size by `next_weight`.
                buffer.resize(target.n_bytes as usize, 0);
                session.read_weight_data(&mut buffer)?;
                spill.write(op, target.offset, &buffer)?;
            }
            None => {
                let dst = executor.weight_mut(&target)?;
                session.read_weight_data(dst)?;
            }
        }
        records += 1;
        bytes += target.n_bytes;
    }
    log(&format!(
        "weights loaded: {records} records, {} kB in {} ms",
        bytes / 1024,
        started.elapsed().as_millis()
    ));
    drop(buffer);
    let streamer = match (spill, &options.streaming) {
        (Some(spill), Some(s)) => {
            let streamer = spill.finish(s)?;
            log(&streamer.describe());
            Some(streamer)
        }
        _ => None,
    };
    Ok((executor, streamer))
}

/// A shared-storage session: reads the root's load request, loads this node's slices from
/// `model` (each record verified against the root's digest) and answers with the outcome. A
/// refusal is sent to the root with its reason before the session ends.
fn load_shared(
    session: &mut WorkerSession,
    options: &WorkerOptions,
    model: &std::path::Path,
    net: &NetConfig,
    node: &NodeConfig,
    exec_options: &ExecutorOptions,
    log: &mut dyn FnMut(&str),
) -> Result<(Executor, Option<WeightStreamer>), SessionError> {
    let request = session.read_load_request()?;
    let node_index = session.handshake.node_index();
    log(&format!(
        "shared storage: loading {} records from {}",
        request.records.len(),
        model.display()
    ));
    // A long load tells the root it is alive every few seconds (its --net-timeout measures
    // silence, not load time).
    let mut last_word = Instant::now();
    let mut progress = |bytes_done: u64| {
        if last_word.elapsed() >= LOAD_PROGRESS_INTERVAL {
            let _ = session.send_load_result(&LoadResult::Progress { bytes_done });
            last_word = Instant::now();
        }
    };
    let mut load = || -> Result<_, SessionError> {
        let local = LocalModel::open(model)?;
        let plan = local.plan_for(&request, net, node, node_index)?;
        let records = NodeRecords {
            plan: &plan,
            node,
            node_index,
            request: &request,
        };
        let Some(streaming) = &options.streaming else {
            let mut executor = Executor::new(net, node, exec_options)?;
            let load = local.load_resident(&records, &mut executor, &mut progress)?;
            return Ok((executor, None, load));
        };
        // Under a budget the streamed slices come from a slice cache built from the local
        // file (reused by later sessions with the same key); column slices are strided in the
        // model, so streaming them straight from it would read whole tensors.
        let open = || match &options.cache_dir {
            Some(dir) => SpillFile::open_cache(
                node,
                streaming,
                &slice_cache_path(
                    dir,
                    model,
                    node,
                    node_index,
                    net.n_nodes,
                    &request,
                    streaming.mem_budget,
                ),
            ),
            None => SpillFile::create(node, streaming),
        };
        let Some(mut spill) = open()? else {
            let mut executor = Executor::new(net, node, exec_options)?;
            let load = local.load_resident(&records, &mut executor, &mut progress)?;
            return Ok((executor, None, load));
        };
        log(&format!(
            "mem budget: {} kB resident, the rest streamed from the slice cache {} ({})",
            spill.plan().resident_bytes / 1000,
            spill.path().display(),
            if spill.is_reused() { "reused" } else { "new" }
        ));
        let exec_options = &exec_options.within(spill.plan().ring_bytes());
        let mut executor =
            Executor::with_streamed_weights(net, node, exec_options, spill.streamed_ops())?;
        let load = match local.load_with_cache(&records, &mut executor, &mut spill, &mut progress) {
            Err(SharedStorageError::StaleCache { path, what }) => {
                log(&format!(
                    "slice cache {} no longer matches ({what}): rebuilding it",
                    path.display()
                ));
                let _ = std::fs::remove_file(&path);
                drop(spill);
                spill = open()?.ok_or_else(|| {
                    StreamingError::Plan("the slice cache plan changed while loading".into())
                })?;
                local.load_with_cache(&records, &mut executor, &mut spill, &mut progress)?
            }
            other => other?,
        };
        let streamer = spill.finish(streaming)?;
        log(&streamer.describe());
        Ok((executor, Some(streamer), load))
    };
    match load() {
        Ok((executor, streamer, load)) => {
            log(&format!(
                "weights loaded from {}: {} records, {} kB verified in {} ms",
                model.display(),
                load.records,
                load.bytes / 1024,
                load.elapsed.as_millis()
            ));
            session.send_load_result(&LoadResult::Loaded {
                bytes_read: load.bytes,
                millis: load.elapsed.as_millis() as u64,
            })?;
            Ok((executor, streamer))
        }
        Err(e) => {
            // The root learns why; this session ends either way.
            let reason = match &e {
                SessionError::SharedStorage(e) => e.to_string(),
                other => format!("{other}"),
            };
            let _ = session.send_load_result(&LoadResult::Refused { reason });
            Err(e)
        }
    }
}

/// Serves one root session on `listener`: returns the number of forwards run when the root
/// sent the stop packet.
pub fn serve_session(
    listener: &Listener,
    options: &WorkerOptions,
    log: &mut dyn FnMut(&str),
) -> Result<u64, SessionError> {
    let mut session: WorkerSession = listener.accept_root_greeting(options.model.is_some())?;
    let hello = &session.handshake;
    log(&format!(
        "root connected: this is node {} of {} (worker index {})",
        hello.node_index(),
        hello.n_workers + 1,
        hello.worker_index
    ));
    if session.shared_storage {
        log("the root asks for a shared-storage session: weights come from this node's model file");
    }
    let hello = &session.handshake;
    for (i, peer) in hello.peers.iter().enumerate() {
        let how = if hello.connects_to_peer(i as u32) {
            "connected to"
        } else {
            "accepted"
        };
        log(&format!("peer worker {}:{} {how}", peer.host, peer.port));
    }
    log("network initialised");
    let net = session.read_net_config()?;
    let node = session.read_node_config(&net)?;
    let required = node.required_memory(&net);
    log(&format!("memory required: {} MB", required / (1024 * 1024)));
    let exec_options = ExecutorOptions {
        backend: options.backend,
        n_threads: options.n_threads,
        max_memory: options.max_memory,
    };
    let (mut executor, mut streamer) = match (&options.model, session.shared_storage) {
        (Some(model), true) => load_shared(
            &mut session,
            options,
            model,
            &net,
            &node,
            &exec_options,
            log,
        )?,
        _ => receive_weights(&mut session, options, &net, &node, &exec_options, log)?,
    };
    // The root has its acknowledgement (or load result) already: the weights are rewritten
    // into the kernels' layouts while it finishes its own load, not in the first forward.
    executor.prepare_weights();
    let verbose = options.streaming.as_ref().is_some_and(|s| s.verbose);
    let mut control = ControlReader::new(options.turbo);
    let mut forwards = 0u64;
    loop {
        let was_turbo = session.network.is_turbo();
        let packet = control.next(&mut session.network, &net, &node)?;
        let turbo = session.network.is_turbo();
        if turbo != was_turbo {
            log(if turbo {
                "network in non-blocking (turbo) mode"
            } else {
                "network back in blocking mode"
            });
        }
        if packet.is_stop() {
            log("stop packet received");
            return Ok(forwards);
        }
        match streamer.as_mut() {
            Some(streamer) => {
                let started = Instant::now();
                streamer.begin_forward().map_err(StreamingError::from)?;
                executor.forward_with(
                    packet.position,
                    packet.batch_size,
                    &mut NetSync(&mut session.network),
                    Some(streamer as &mut dyn WeightFeed),
                )?;
                let mut stats = streamer.end_forward();
                stats.forward_time = started.elapsed();
                if verbose {
                    log(&format!("forward at position {}: {stats}", packet.position));
                }
            }
            None => executor.forward(
                packet.position,
                packet.batch_size,
                &mut NetSync(&mut session.network),
            )?,
        }
        forwards += 1;
    }
}
