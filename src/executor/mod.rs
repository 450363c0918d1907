//! The executor: runs one node's part of a dllama graph, as `NnExecutor` + `NnCpuDevice` do.
//!
//! [`Executor::new`] takes the decoded [`NetConfig`] and [`NodeConfig`], allocates every pipe,
//! buffer and op weight (zeroed, 64-byte aligned), binds each op to its kernel once (op code ×
//! float types → a typed `plan::Kernel` with validated shapes and resolved row views) and
//! starts a persistent [`ThreadPool`]. [`Executor::forward`] then runs the segments in order:
//! each op as one job on all threads (the pool's completion is dllama's per-step barrier), and
//! after a segment's ops its pipe syncs through a [`Synchronizer`] (the network, in a worker).
//!
//! Weights from the root are written straight into the op's weight storage
//! ([`Executor::weight_mut`]), as dllama's `loadWeight` does with its own copy.
//!
//! ```no_run
//! # fn demo(net: airllama_net::NetConfig, node: airllama_net::NodeConfig) -> Result<(), airllama::executor::ExecutorError> {
//! use airllama::executor::{Executor, ExecutorOptions, NoSync};
//! use airllama_kernels::backend::Backend;
//! let mut exec = Executor::new(&net, &node, &ExecutorOptions::new(Backend::detect(), 2))?;
//! exec.forward(0, 1, &mut NoSync)?;
//! # Ok(()) }
//! ```
mod memory;
mod ops;
mod plan;

use std::sync::Mutex;

use airllama_kernels::backend::Backend;
use airllama_kernels::block::{BLOCK_SIZE, FloatType, Q40Block};
use airllama_kernels::ops::{RopeScaling, fill_rope_cache};
use airllama_kernels::packed::{ROWS_PER_GROUP, pack_q40x8, supports_q40x8, unpack_q40x8};
use airllama_kernels::parallel::{MAX_THREADS, ThreadPool};
use airllama_net::{NetConfig, NodeConfig, SyncPlan, SyncStep, WeightTarget};

use memory::{Pages, Slab, view_mut};
use plan::{Binder, Kernel, OpPlan, SlotInfo};

/// Why an executor could not be built or a forward failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecutorError {
    /// An op's config cannot be run (bad shape, type, index or aliasing).
    #[error("op {op} (layer {layer}): {what}")]
    BadOp {
        /// Op name.
        op: String,
        /// Layer index.
        layer: u32,
        /// What is wrong.
        what: String,
    },
    /// The node or net config as a whole is unusable.
    #[error("config: {0}")]
    BadConfig(String),
    /// The node needs more memory than allowed or available.
    #[error("cannot allocate {bytes} bytes for {what}")]
    OutOfMemory {
        /// What was being allocated.
        what: String,
        /// How much.
        bytes: u64,
    },
    /// A slot or weight could not be viewed as its element type (length or alignment).
    #[error("storage cannot be viewed as {0}")]
    Layout(&'static str),
    /// An op failed while running (a data-dependent check, e.g. a position or expert index).
    #[error("op {op} (layer {layer}) failed: {what}")]
    OpFailed {
        /// Op name.
        op: String,
        /// Layer index.
        layer: u32,
        /// What happened.
        what: String,
    },
    /// A forward was asked for with a batch or position the graph cannot hold.
    #[error("forward at position {position} with batch {batch}: {what}")]
    BadForward {
        /// Position.
        position: u32,
        /// Batch size.
        batch: u32,
        /// Why.
        what: &'static str,
    },
    /// A weight record does not fit its op.
    #[error("weight for op {op}: bytes {start}..{end} exceed its {len} bytes")]
    BadWeight {
        /// Op name.
        op: String,
        /// Start offset.
        start: u64,
        /// End offset.
        end: u64,
        /// Weight size.
        len: usize,
    },
    /// The thread pool could not start.
    #[error("cannot start {0} threads")]
    Threads(usize),
    /// A streamed op's weight could not be supplied (see [`WeightFeed`]).
    #[error("weight of op {op} (layer {layer}) could not be streamed in: {source}")]
    WeightFeed {
        /// Op name.
        op: String,
        /// Layer index.
        layer: u32,
        /// The feed's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Synchronising a pipe with the other nodes failed.
    #[error("sync of pipe {pipe} failed: {source}")]
    Sync {
        /// Pipe index.
        pipe: u32,
        /// The transport's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Moves pipe bytes between nodes for one sync step (the worker's network).
pub trait Synchronizer {
    /// Runs `step` on `pipe` (the whole pipe's bytes): sends this node's part, receives the rest.
    fn sync(
        &mut self,
        step: &SyncStep,
        pipe: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// A synchronizer for a single node: there is nothing to sync (dllama's
/// `NnFakeNodeSynchronizer`). A multi-node graph run with it fails at its first sync.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSync;

impl Synchronizer for NoSync {
    fn sync(
        &mut self,
        _: &SyncStep,
        _: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err("this node has no network to sync with".into())
    }
}

/// A synchronizer that leaves every pipe as it is: runs one node of a multi-node graph alone,
/// with whatever the pipes hold standing in for the other nodes' slices (benchmarks of a
/// worker's compute, tests that compare two executors on the same inputs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SkipSync;

impl Synchronizer for SkipSync {
    fn sync(
        &mut self,
        _: &SyncStep,
        _: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

/// Supplies the weights the executor does not hold (layer streaming): an op built as streamed
/// (see [`Executor::with_streamed_weights`]) asks the feed for its bytes right before it runs.
/// Ops are numbered in node-config order, segment by segment, and asked for in step order.
pub trait WeightFeed {
    /// The weight bytes of op `op`, exactly its weight size; valid until the next call.
    fn weight(&mut self, op: usize) -> Result<&[u8], Box<dyn std::error::Error + Send + Sync>>;
}

/// How to build an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The instruction set every kernel runs with.
    pub backend: Backend,
    /// Threads per op (1..=[`MAX_THREADS`]).
    pub n_threads: usize,
    /// Most bytes of pipes, buffers and weights this node may allocate.
    pub max_memory: u64,
}

impl ExecutorOptions {
    /// These options with `reserved` bytes (a streaming ring, say) taken off `max_memory`.
    pub fn within(&self, reserved: u64) -> ExecutorOptions {
        ExecutorOptions {
            max_memory: self.max_memory.saturating_sub(reserved),
            ..self.clone()
        }
    }
}

impl ExecutorOptions {
    /// Options with no memory cap beyond what the allocator grants.
    pub fn new(backend: Backend, n_threads: usize) -> ExecutorOptions {
        ExecutorOptions {
            backend,
            n_threads,
            max_memory: u64::MAX,
        }
    }
}

/// One step of a forward.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Run op `ops[i]`.
    Op(usize),
    /// Sync the pipes of segment `s`.
    Sync(u32),
}

/// A node's graph, bound and allocated, ready to run forwards.
pub struct Executor {
    backend: Backend,
    pool: ThreadPool,
    /// Pipes (indexes `0..n_pipes`) then buffers.
    slots: Vec<Slab>,
    n_pipes: usize,
    ops: Vec<OpPlan>,
    weights: Vec<Slab>,
    /// `op_index[segment][op]` = index into `ops`.
    op_index: Vec<Vec<usize>>,
    steps: Vec<Step>,
    sync_plan: SyncPlan,
    n_batches: u32,
    /// Largest `position + batch` every position-dependent op accepts.
    position_limit: u64,
    scratch: Vec<Mutex<Vec<f32>>>,
    observer: Option<Box<OpObserver>>,
    forwards: u64,
    /// `streamed[op]`: the op's weight comes from a [`WeightFeed`], not from `weights`.
    streamed: Vec<bool>,
    /// `interleave[op]`: the op's Q40 weight is kept eight rows interleaved
    /// ([`airllama_kernels::packed`]) once loaded; `interleaved[op]`: it is now.
    interleave: Vec<bool>,
    interleaved: Vec<bool>,
}

/// Sees every op's output after it ran: `(forward index, op name, layer, output rows)`, the
/// rows of every z plane for the forward's batch items. A debugging aid for finding the first
/// op whose bytes differ from another implementation's.
pub type OpObserver = dyn FnMut(u64, &str, u32, &[&[u8]]) + Send;

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("backend", &self.backend)
            .field("threads", &self.pool.n_threads())
            .field("ops", &self.ops.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Executor {
    /// Validates and binds the graph, allocates its memory and starts the threads.
    pub fn new(
        net: &NetConfig,
        node: &NodeConfig,
        options: &ExecutorOptions,
    ) -> Result<Executor, ExecutorError> {
        Executor::with_streamed_weights(net, node, options, &[])
    }

    /// As [`Executor::new`], but the ops with `streamed[op]` set (ops numbered segment by
    /// segment in node-config order; missing entries are false) get no weight storage: their
    /// weights come from the [`WeightFeed`] given to [`Executor::forward_with`].
    pub fn with_streamed_weights(
        net: &NetConfig,
        node: &NodeConfig,
        options: &ExecutorOptions,
        streamed: &[bool],
    ) -> Result<Executor, ExecutorError> {
        if options.n_threads == 0 || options.n_threads > MAX_THREADS {
            return Err(ExecutorError::Threads(options.n_threads));
        }
        let streamed_bytes: u64 = node
            .segments
            .iter()
            .flat_map(|s| &s.ops)
            .zip(streamed)
            .filter(|(_, s)| **s)
            .map(|(op, _)| op.weight_size.n_bytes())
            .sum();
        let required = node.required_memory(net).saturating_sub(streamed_bytes);
        if required > options.max_memory {
            return Err(ExecutorError::OutOfMemory {
                what: format!(
                    "the node (pipes, buffers and weights): more than the {} bytes allowed \
                     (--max-memory, or the memory available)",
                    options.max_memory
                ),
                bytes: required,
            });
        }
        let sync_plan =
            SyncPlan::new(net, node).map_err(|e| ExecutorError::BadConfig(e.to_string()))?;
        let mut infos = Vec::new();
        for (name, size) in net
            .pipes
            .iter()
            .map(|p| (&p.name, p.size))
            .chain(node.buffers.iter().map(|b| (&b.name, b.size)))
        {
            let float_type = size
                .float_type()
                .ok_or_else(|| ExecutorError::BadConfig(format!("{name} has no type")))?;
            let elements = match float_type {
                FloatType::F32 => size.n_bytes() / 4,
                FloatType::Q80 => size.n_bytes() / 34,
                FloatType::F16 => size.n_bytes() / 2,
                FloatType::Q40 => size.n_bytes() / 18,
            };
            let elements = usize::try_from(elements)
                .map_err(|_| ExecutorError::BadConfig(format!("{name} is too large")))?;
            infos.push(SlotInfo {
                name: name.clone(),
                size,
                float_type,
                elements,
            });
        }
        if infos.first().is_none_or(|p| {
            p.float_type != FloatType::F32 || p.size.length() < u64::from(net.n_batches)
        }) {
            return Err(ExecutorError::BadConfig(
                "pipe 0 must hold nBatches F32 positions".into(),
            ));
        }
        let binder = Binder {
            net,
            node,
            slots: &infos,
        };
        let mut ops = Vec::new();
        let mut op_index = Vec::new();
        let mut steps = Vec::new();
        let multi_node = net.n_nodes > 1;
        for (s, segment) in node.segments.iter().enumerate() {
            let mut indexes = Vec::new();
            for op in &segment.ops {
                indexes.push(ops.len());
                steps.push(Step::Op(ops.len()));
                ops.push(binder.bind(op)?);
            }
            op_index.push(indexes);
            if multi_node && !segment.syncs.is_empty() {
                steps.push(Step::Sync(s as u32));
            }
        }
        let mut position_limit = u64::MAX;
        for op in &ops {
            match op.kernel {
                plan::Kernel::Rope { seq_len, .. } | plan::Kernel::MultiHeadAtt { seq_len, .. } => {
                    position_limit = position_limit.min(seq_len as u64);
                }
                plan::Kernel::Shift { .. } => {
                    position_limit = position_limit.min((op.output.len / op.input.x.max(1)) as u64);
                }
                _ => {}
            }
        }
        let mut slots = Vec::with_capacity(infos.len());
        for info in &infos {
            slots.push(Slab::zeroed(
                info.size.n_bytes(),
                &info.name,
                Pages::Sparse,
            )?);
        }
        let streamed: Vec<bool> = (0..ops.len())
            .map(|i| streamed.get(i).copied().unwrap_or(false))
            .collect();
        let mut weights = Vec::with_capacity(ops.len());
        for (op, &streamed) in ops.iter().zip(&streamed) {
            let bytes = if streamed {
                0
            } else {
                op.weight_size.n_bytes()
            };
            weights.push(Slab::zeroed(bytes, &op.name, Pages::Dense)?);
        }
        let pool = ThreadPool::new(options.n_threads)
            .map_err(|_| ExecutorError::Threads(options.n_threads))?;
        let scratch = (0..options.n_threads)
            .map(|_| Mutex::new(Vec::new()))
            .collect();
        let mut executor = Executor {
            backend: options.backend,
            pool,
            slots,
            n_pipes: net.pipes.len(),
            ops,
            weights,
            op_index,
            steps,
            sync_plan,
            n_batches: net.n_batches,
            position_limit,
            scratch,
            observer: None,
            forwards: 0,
            interleave: Vec::new(),
            interleaved: Vec::new(),
            streamed,
        };
        executor.interleave = (0..executor.ops.len())
            .map(|i| executor.interleavable(i).is_some())
            .collect();
        executor.interleaved = vec![false; executor.ops.len()];
        executor.fill_rope_caches()?;
        Ok(executor)
    }

    /// Fills each rope cache buffer once, from the first ROPE op that uses it (dllama's
    /// `initRopeForward_F32` with its buffer flags).
    fn fill_rope_caches(&mut self) -> Result<(), ExecutorError> {
        let mut filled = vec![false; self.slots.len()];
        for op in &self.ops {
            let (Some(c), plan::Kernel::Rope { cache, .. }) = (op.rope_init, &op.kernel) else {
                continue;
            };
            if filled[*cache] {
                continue;
            }
            filled[*cache] = true;
            let slice = &c.slice;
            let scaling = RopeScaling {
                factor: c.rope_scaling_factor,
                low_freq_factor: c.rope_scaling_low_freq_factor,
                high_freq_factor: c.rope_scaling_high_freq_factor,
                orig_max_seq_len: c.rope_scaling_orig_max_seq_len,
            };
            let len = slice
                .cache_len(c.rope_type)
                .ok_or_else(|| bad_rope(op, "cache size overflows"))?;
            let all = view_mut::<f32>(self.slots[*cache].bytes_mut())?;
            let target = all
                .get_mut(..len)
                .ok_or_else(|| bad_rope(op, "cache buffer too small"))?;
            fill_rope_cache(self.backend, c.rope_type, slice, &scaling, target)
                .map_err(|e| bad_rope(op, &e.to_string()))?;
        }
        Ok(())
    }

    /// Installs (or removes) an observer of every op's output.
    pub fn set_op_observer(&mut self, observer: Option<Box<OpObserver>>) {
        self.observer = observer;
    }

    /// The backend the kernels run with.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Threads per op.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The storage of the op a checked weight record names, `target.offset ..` for
    /// `target.n_bytes`: the transport reads the record's data straight into it.
    pub fn weight_mut(&mut self, target: &WeightTarget) -> Result<&mut [u8], ExecutorError> {
        let op = self
            .op_index
            .get(target.segment as usize)
            .and_then(|s| s.get(target.op as usize))
            .copied()
            .ok_or_else(|| ExecutorError::BadConfig("weight record names no op".into()))?;
        if self.interleaved[op] {
            // A record written over a live weight (a reload) arrives in the row layout.
            self.set_interleaved(op, false);
        }
        let weight = &mut self.weights[op];
        let len = weight.len();
        let end = target.offset.checked_add(target.n_bytes);
        match end {
            Some(end) if end <= len as u64 => {
                Ok(&mut weight.bytes_mut()[target.offset as usize..end as usize])
            }
            _ => Err(ExecutorError::BadWeight {
                op: self.ops[op].name.clone(),
                start: target.offset,
                end: end.unwrap_or(u64::MAX),
                len,
            }),
        }
    }

    /// Pipe `index`'s bytes (e.g. for a root writing its input rows).
    pub fn pipe_mut(&mut self, index: usize) -> Option<&mut [u8]> {
        (index < self.n_pipes).then(|| self.slots[index].bytes_mut())
    }

    /// Runs one forward of `batch` items at positions `position..position + batch`: fills the
    /// position pipe (pipe 0, as dllama's worker does), then every op and sync in order.
    pub fn forward(
        &mut self,
        position: u32,
        batch: u32,
        sync: &mut dyn Synchronizer,
    ) -> Result<(), ExecutorError> {
        self.forward_with(position, batch, sync, None)
    }

    /// As [`Executor::forward`], with the weights of streamed ops taken from `feed` (an
    /// executor with streamed ops fails without one).
    pub fn forward_with(
        &mut self,
        position: u32,
        batch: u32,
        sync: &mut dyn Synchronizer,
        feed: Option<&mut dyn WeightFeed>,
    ) -> Result<(), ExecutorError> {
        self.forward_skipping(position, batch, sync, feed, &|_| false)
    }

    /// As [`Executor::forward_with`], without running the resident ops whose name `skip`
    /// accepts: for a root that knows nobody reads their outputs this time (a one-node
    /// root's prompt forwards never read the logits). Streamed ops always run, so the weight
    /// feed sees every op in order.
    pub fn forward_skipping(
        &mut self,
        position: u32,
        batch: u32,
        sync: &mut dyn Synchronizer,
        mut feed: Option<&mut dyn WeightFeed>,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<(), ExecutorError> {
        let bad = |what| ExecutorError::BadForward {
            position,
            batch,
            what,
        };
        if batch == 0 || batch > self.n_batches {
            return Err(bad("batch size must be 1..=nBatches"));
        }
        if u64::from(position) + u64::from(batch) > self.position_limit {
            return Err(bad("positions past the end of the context"));
        }
        {
            let positions = view_mut::<f32>(self.slots[0].bytes_mut())?;
            for (i, p) in positions.iter_mut().take(batch as usize).enumerate() {
                *p = (u64::from(position) + i as u64) as f32;
            }
        }
        let batch = batch as usize;
        self.prepare_weights();
        for step in 0..self.steps.len() {
            match self.steps[step] {
                Step::Op(i) if !self.streamed[i] && skip(&self.ops[i].name) => {}
                Step::Op(i) => {
                    let weight: &[u8] = if self.streamed[i] {
                        let op = &self.ops[i];
                        let feed_err = |source| ExecutorError::WeightFeed {
                            op: op.name.clone(),
                            layer: op.layer,
                            source,
                        };
                        let feed = feed
                            .as_deref_mut()
                            .ok_or_else(|| feed_err("no weight feed for a streamed op".into()))?;
                        let bytes = feed.weight(i).map_err(feed_err)?;
                        if bytes.len() as u64 != op.weight_size.n_bytes() {
                            return Err(feed_err(
                                format!(
                                    "fed {} bytes for a {}-byte weight",
                                    bytes.len(),
                                    op.weight_size.n_bytes()
                                )
                                .into(),
                            ));
                        }
                        bytes
                    } else {
                        self.weights[i].bytes()
                    };
                    let ctx = ops::Ctx {
                        backend: self.backend,
                        pool: &mut self.pool,
                        slots: &mut self.slots,
                        weight,
                        interleaved: self.interleaved[i],
                        scratch: &self.scratch,
                        batch,
                    };
                    ops::forward(&self.ops[i], ctx)?;
                    if let Some(observer) = self.observer.as_mut() {
                        let op = &self.ops[i];
                        let o = op.output;
                        let size = if o.float_type == FloatType::Q80 {
                            34
                        } else {
                            4
                        };
                        let bytes = self.slots[o.slot].bytes();
                        let rows: Vec<&[u8]> = (0..o.z)
                            .flat_map(|z| (0..batch).map(move |y| z * o.y + y))
                            .filter_map(|r| {
                                let e = o.row(r);
                                bytes.get(e.start * size..e.end * size)
                            })
                            .collect();
                        observer(self.forwards, &op.name, op.layer, &rows);
                    }
                }
                Step::Sync(segment) => {
                    let planned: Vec<_> = self.sync_plan.segment_syncs(segment).copied().collect();
                    for p in planned {
                        let pipe = self.slots[p.pipe_index as usize].bytes_mut();
                        for s in self.sync_plan.steps_of(p, batch as u32) {
                            sync.sync(&s, pipe).map_err(|source| ExecutorError::Sync {
                                pipe: p.pipe_index,
                                source,
                            })?;
                        }
                    }
                }
            }
        }
        self.forwards += 1;
        Ok(())
    }
}

impl Executor {
    /// How many ops' weights are kept interleaved (after the first forward) and their bytes:
    /// for logs and tests.
    pub fn interleaved_weights(&self) -> (usize, u64) {
        self.interleave
            .iter()
            .zip(&self.weights)
            .filter(|(on, _)| **on)
            .fold((0, 0), |(n, b), (_, w)| (n + 1, b + w.len() as u64))
    }

    /// Rewrites the loaded weights into the layouts the kernels read fastest (see
    /// [`airllama_kernels::packed`]); the first forward does it if nobody called this after
    /// loading, but a root that calls it at the end of its load keeps the time out of the
    /// first token's.
    pub fn prepare_weights(&mut self) {
        for i in 0..self.ops.len() {
            if self.interleave[i] && !self.interleaved[i] {
                self.set_interleaved(i, true);
            }
        }
    }

    /// Keeps every weight in dllama's row layout from now on (the bits of every result are the
    /// same either way; this is for measuring what the interleaved layout gains).
    pub fn keep_row_layout(&mut self) {
        for i in 0..self.ops.len() {
            if self.interleaved[i] {
                self.set_interleaved(i, false);
            }
            self.interleave[i] = false;
        }
    }

    /// `(rows, blocks per row)` of op `i`'s weight when it can be kept interleaved: a resident
    /// Q40 matmul weight without experts whose rows (this node's output columns) come in whole
    /// groups of 8, on a backend with kernels for the layout. `AIRLLAMA_Q40_LAYOUT=rows` keeps
    /// every weight in dllama's row layout (for A/B measurements; the bits are the same).
    fn interleavable(&self, i: usize) -> Option<(usize, usize)> {
        static ROWS_ONLY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let rows_only = *ROWS_ONLY
            .get_or_init(|| std::env::var("AIRLLAMA_Q40_LAYOUT").is_ok_and(|v| v.trim() == "rows"));
        let op = &self.ops[i];
        match op.kernel {
            Kernel::MatmulQ40 {
                n,
                d,
                experts: None,
            } if !rows_only
                && self.interleave.get(i).is_none_or(|on| *on)
                && !self.streamed[i]
                && supports_q40x8(self.backend)
                && d > 0
                && d.is_multiple_of(ROWS_PER_GROUP)
                && op.output.len == d
                && n > 0
                && n.is_multiple_of(BLOCK_SIZE)
                && self.weights[i].len() == d * (n / BLOCK_SIZE) * size_of::<Q40Block>() =>
            {
                Some((d, n / BLOCK_SIZE))
            }
            _ => None,
        }
    }

    /// Rewrites op `i`'s weight in place into (`interleave`) or out of the interleaved layout,
    /// one group of eight rows at a time through a copy of the group.
    fn set_interleaved(&mut self, i: usize, interleave: bool) {
        let Some((d, nb)) = self.interleavable(i) else {
            return;
        };
        let group_bytes = ROWS_PER_GROUP * nb * size_of::<Q40Block>();
        let bytes = &mut self.weights[i].bytes_mut()[..d * nb * size_of::<Q40Block>()];
        // Each thread rewrites its own run of groups (a memory-bound shuffle of the whole
        // model, so the cores' bandwidth adds up).
        let groups: Vec<Mutex<&mut [u8]>> = bytes
            .chunks_exact_mut(group_bytes)
            .map(Mutex::new)
            .collect();
        let n_threads = self.pool.n_threads();
        let job = |t: usize| {
            let mut copy = vec![0u8; group_bytes];
            for g in airllama_kernels::parallel::split_range(groups.len(), n_threads, t) {
                let mut group = groups[g].lock().unwrap_or_else(|p| p.into_inner());
                copy.copy_from_slice(&group);
                if interleave {
                    pack_q40x8(
                        bytemuck::cast_slice(&copy),
                        nb,
                        bytemuck::cast_slice_mut(&mut group),
                    );
                } else {
                    unpack_q40x8(
                        bytemuck::cast_slice(&copy),
                        nb,
                        bytemuck::cast_slice_mut(&mut group),
                    );
                }
            }
        };
        if self.pool.run(&job).is_err() {
            // Only a panic inside the shuffle (a bug) gets here; finish it on this thread so
            // the flag below stays true to the bytes.
            (0..n_threads).for_each(job);
        }
        self.interleaved[i] = interleave;
    }
}

fn bad_rope(op: &OpPlan, what: &str) -> ExecutorError {
    ExecutorError::BadOp {
        op: op.name.clone(),
        layer: op.layer,
        what: format!("rope cache: {what}"),
    }
}
