//! Layer streaming for the executor: `--mem-budget`.
//!
//! The ops of a node are grouped into units, one per layer (the ops of a layer run back to back
//! and their weights lie together in the file), plus one for the final norm and classifier. A
//! [`ResidencyPlan`] keeps as many whole units resident as the budget allows after reserving a
//! ring of read slots, each as large as the largest streamed unit; the others stream: before a
//! unit computes, the reads of the next streamed units are already submitted into the free
//! slots (the prefetch depth is the ring's slot count minus one, and follows the budget).
//!
//! [`WeightStreamer`] is the executor's [`WeightFeed`]: asked for an op's weight, it returns the
//! op's bytes inside the loaded slot of its unit, handing the previous unit's slot back to the
//! ring and topping up the prefetch. The bytes are the file's, untouched, so a streamed forward
//! computes exactly what a resident one does.
//!
//! Two sources:
//! - a `.m` model file on one node ([`ModelStreaming`]): each op's weight is one contiguous
//!   tensor of the file, read in place; the embedding table (of which a forward reads one row
//!   per token) is served from a read-only map instead of being streamed whole.
//! - weights that arrive over the network (a worker fed by a root, [`SpillFile`]): streamed
//!   ops are written to a file under `--spill-dir` as they arrive, laid out unit by unit in
//!   the node's op order, then streamed back the same way. A root with workers does the same
//!   with its own slices, which are strided in the `.m` file, as it reads them to distribute
//!   the weights ([`SpillFile::create_with_mapped`]; the embedding table is mapped).
use std::collections::VecDeque;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airllama_io::layout::TensorRole;
use airllama_io::stream::{
    EngineChoice, LoadedSlot, MappedFile, ReadTicket, StreamError, StreamOptions, StreamReader,
    drop_cache, open_for_streaming,
};
use airllama_net::{NodeConfig, WeightTarget};

use crate::executor::WeightFeed;
use crate::graph::WeightPlan;

/// Most ring slots (current unit + prefetch) the planner uses.
pub const MAX_SLOTS: usize = 4;

/// Alignment of units in a spill file and of every op inside a unit (the kernels view weights
/// as `f32` and block types, and SIMD loads like 64).
const SPILL_ALIGN: u64 = 4096;
const OP_ALIGN: u64 = 64;

/// Why streaming could not be set up or a streamed read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamingError {
    /// The budget cannot hold even one unit.
    #[error(
        "--mem-budget {budget} bytes cannot hold the largest layer ({needed} bytes with read alignment); raise it"
    )]
    BudgetTooSmall {
        /// The budget.
        budget: u64,
        /// Bytes of the largest streamed unit.
        needed: u64,
    },
    /// The reader failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The spill file could not be created or written.
    #[error("spill file {path}: {source}")]
    Spill {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model file could not be mapped.
    #[error("cannot map {path}: {source}")]
    Map {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The weights do not fit the graph (an op asked for that has no source).
    #[error("weight plan: {0}")]
    Plan(String),
}

/// Parses a size: plain bytes or a number with a binary suffix K, M, G, T (`512M`, `2G`,
/// `1.5G`; an optional trailing `B` / `iB` is accepted).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => {
                    return Err(format!(
                        "{text:?}: unknown size suffix {c:?} (use K, M, G, T)"
                    ));
                }
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 512M, 2G, 1048576)"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

/// How to stream.
#[derive(Debug, Clone)]
pub struct StreamingOptions {
    /// Bytes the weights may occupy: resident units plus the read ring.
    pub mem_budget: u64,
    /// Read with `O_DIRECT` (bypassing the page cache) where the file system allows it.
    pub direct: bool,
    /// io_uring (with pread fallback) or pread only.
    pub engine: EngineChoice,
    /// Submit the next units' reads before the current unit computes. Off = read each unit only
    /// when its first op needs it (read-then-compute; for comparison).
    pub overlap: bool,
    /// Where a worker spills weights it receives over the network (and a root with workers
    /// its own slices).
    pub spill_dir: PathBuf,
    /// Log each forward's streaming statistics (`--verbose`).
    pub verbose: bool,
    /// Bytes per kernel read ([`airllama_io::stream::DEFAULT_CHUNK`]).
    pub read_chunk: usize,
    /// Kernel reads in flight ([`airllama_io::stream::DEFAULT_IN_FLIGHT`]).
    pub read_depth: usize,
}

impl StreamingOptions {
    /// `O_DIRECT`, io_uring, overlapped, spilling to the system temp dir.
    pub fn new(mem_budget: u64) -> StreamingOptions {
        StreamingOptions {
            mem_budget,
            direct: true,
            engine: EngineChoice::Auto,
            overlap: true,
            spill_dir: std::env::temp_dir(),
            verbose: false,
            read_chunk: airllama_io::stream::DEFAULT_CHUNK,
            read_depth: airllama_io::stream::DEFAULT_IN_FLIGHT,
        }
    }

    /// The reader's options for the ring `plan` asks for.
    fn reader_options(&self, plan: &ResidencyPlan) -> StreamOptions {
        let mut o = StreamOptions::new(plan.n_slots, plan.slot_size as usize);
        o.direct = self.direct;
        o.engine = self.engine;
        o.chunk_size = self.read_chunk;
        o.max_in_flight = self.read_depth;
        o
    }
}

/// A group of ops whose weights are read together: their file ranges, in op order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// `(op, file range of its weight)`.
    pub ops: Vec<(usize, Range<u64>)>,
    /// The file range covering every op's weight.
    pub range: Range<u64>,
}

impl Unit {
    fn len(&self) -> u64 {
        self.range.end - self.range.start
    }
}

/// Groups ops (in step order, each with its layer and the file range of its weight) into
/// units: a new unit starts when the layer changes. A unit whose ops lie apart in the file
/// (its covering range exceeds their bytes by more than 64 KiB, so reading it whole would waste
/// the gaps) is split into one unit per op.
pub fn group_units(ops: &[(usize, u32, Range<u64>)]) -> Vec<Unit> {
    let mut groups: Vec<Vec<(usize, Range<u64>)>> = Vec::new();
    let mut last_layer = None;
    for (op, layer, range) in ops {
        match groups.last_mut() {
            Some(group) if last_layer == Some(*layer) => group.push((*op, range.clone())),
            _ => groups.push(vec![(*op, range.clone())]),
        }
        last_layer = Some(*layer);
    }
    let mut units = Vec::new();
    for group in groups {
        let start = group.iter().map(|(_, r)| r.start).min().unwrap_or(0);
        let end = group.iter().map(|(_, r)| r.end).max().unwrap_or(0);
        let payload: u64 = group.iter().map(|(_, r)| r.end - r.start).sum();
        if end - start <= payload + (64 << 10) {
            units.push(Unit {
                ops: group,
                range: start..end,
            });
        } else {
            units.extend(group.into_iter().map(|(op, r)| Unit {
                ops: vec![(op, r.clone())],
                range: r,
            }));
        }
    }
    units
}

/// Which units stay resident and how large the ring is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResidencyPlan {
    /// Per unit: kept resident.
    pub resident: Vec<bool>,
    /// Ring slots (0 when everything is resident).
    pub n_slots: usize,
    /// Bytes per slot.
    pub slot_size: u64,
    /// Bytes of resident units (plus `extra_resident`).
    pub resident_bytes: u64,
}

impl ResidencyPlan {
    /// Bytes of the ring.
    pub fn ring_bytes(&self) -> u64 {
        self.n_slots as u64 * self.slot_size
    }
}

/// Plans residency: all resident when everything fits; otherwise a ring of 2..=[`MAX_SLOTS`]
/// slots (one more than a quarter of the budget holds, rounded up; one slot,
/// read-then-compute, when two do not fit),
/// then as many whole units resident, in step order, as the rest of the budget holds.
/// `extra_resident` bytes (ops that cannot stream) are always resident and counted first;
/// `align` is the read alignment (a unit of `n` bytes may need `n + 2 align` in a slot).
pub fn plan_residency(
    units: &[Unit],
    extra_resident: u64,
    budget: u64,
    align: u64,
) -> Result<ResidencyPlan, StreamingError> {
    let total: u64 = units.iter().map(Unit::len).sum::<u64>() + extra_resident;
    if total <= budget || units.is_empty() {
        return Ok(ResidencyPlan {
            resident: vec![true; units.len()],
            n_slots: 0,
            slot_size: 0,
            resident_bytes: total,
        });
    }
    let slot_size = units
        .iter()
        .map(|u| (u.len() + 2 * align).next_multiple_of(align))
        .max()
        .unwrap_or(align);
    let available = budget.saturating_sub(extra_resident);
    let fit = (available / slot_size) as usize;
    if fit == 0 {
        return Err(StreamingError::BudgetTooSmall {
            budget,
            needed: slot_size + extra_resident,
        });
    }
    let n_slots = if fit < 2 {
        1
    } else {
        // One slot computing, the others in flight: at least two reads ahead once a quarter
        // of the budget holds a slot, so a compute hiccup does not leave the disk idle.
        ((available.div_ceil(4 * slot_size) + 1) as usize).clamp(2, MAX_SLOTS.min(fit))
    };
    let mut left = available - n_slots as u64 * slot_size;
    let mut resident = vec![false; units.len()];
    let mut resident_bytes = extra_resident;
    for (u, unit) in units.iter().enumerate() {
        if unit.len() <= left {
            left -= unit.len();
            resident[u] = true;
            resident_bytes += unit.len();
        }
    }
    Ok(ResidencyPlan {
        resident,
        n_slots,
        slot_size,
        resident_bytes,
    })
}

/// `bytes` for a log line: kB below 10 MB, MB above.
fn size_text(bytes: u64) -> String {
    if bytes < 10_000_000 {
        format!("{:.1} kB", bytes as f64 / 1e3)
    } else {
        format!("{} MB", bytes / 1_000_000)
    }
}

/// What one forward's weight traffic cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Wall time of the forward (set by the caller that timed it; zero otherwise).
    pub forward_time: Duration,
    /// Bytes read from disk (aligned ranges).
    pub bytes_read: u64,
    /// Units read.
    pub units_read: u64,
    /// Wall time with reads in flight.
    pub read_time: Duration,
    /// Time the compute waited for reads.
    pub io_wait: Duration,
}

impl StreamStats {
    /// Compute time: the forward's wall time minus the time it waited for reads.
    pub fn compute_time(&self) -> Duration {
        self.forward_time.saturating_sub(self.io_wait)
    }
}

impl std::fmt::Display for StreamStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.read_time.as_secs_f64();
        let rate = if secs > 0.0 {
            self.bytes_read as f64 / secs / 1e6
        } else {
            0.0
        };
        write!(
            f,
            "streamed {} units, {} read in {} ms ({rate:.0} MB/s), compute {} ms, waited for I/O {} ms",
            self.units_read,
            size_text(self.bytes_read),
            self.read_time.as_millis(),
            self.compute_time().as_millis(),
            self.io_wait.as_millis()
        )
    }
}

/// Where an op's weight comes from during a forward.
#[derive(Debug, Clone)]
enum OpSource {
    /// Held by the executor.
    Resident,
    /// Bytes `range` of the slot of streamed unit `pos`.
    Streamed { pos: usize, range: Range<usize> },
    /// Bytes `range` of the mapped model file.
    Mapped(Range<usize>),
}

/// The executor's weight feed for streamed (and mapped) ops.
pub struct WeightStreamer {
    reader: Option<StreamReader>,
    map: Option<MappedFile>,
    /// File range of each streamed unit, in step order.
    streamed: Vec<Range<u64>>,
    sources: Vec<OpSource>,
    overlap: bool,
    pending: VecDeque<(usize, ReadTicket)>,
    next_submit: usize,
    current: Option<(usize, LoadedSlot)>,
    units_read: u64,
    /// For the mmap baseline: release each mapped unit once it is done.
    release_map: Option<Vec<Range<u64>>>,
    last_mapped_unit: Option<usize>,
    plan: ResidencyPlan,
    /// The file the units stream from (the model, a spill file or a slice cache), for errors.
    file: PathBuf,
}

/// A streamed read failed: names the file, since a model truncated or replaced under a
/// running node shows up here first.
#[derive(Debug, thiserror::Error)]
#[error("streaming from {file}: {source}")]
pub struct StreamedFromError {
    /// The file.
    pub file: String,
    /// What failed.
    #[source]
    pub source: StreamError,
}

impl std::fmt::Debug for WeightStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStreamer")
            .field("reader", &self.reader)
            .field("streamed_units", &self.streamed.len())
            .field("plan", &self.plan)
            .finish()
    }
}

impl WeightStreamer {
    /// A feed with nothing read yet.
    fn new(
        reader: Option<StreamReader>,
        map: Option<MappedFile>,
        streamed: Vec<Range<u64>>,
        sources: Vec<OpSource>,
        overlap: bool,
        release_map: Option<Vec<Range<u64>>>,
        plan: ResidencyPlan,
    ) -> WeightStreamer {
        WeightStreamer {
            reader,
            map,
            streamed,
            sources,
            overlap,
            pending: VecDeque::new(),
            next_submit: 0,
            current: None,
            units_read: 0,
            release_map,
            last_mapped_unit: None,
            plan,
            file: PathBuf::new(),
        }
    }

    /// Names the file the units stream from (for errors).
    fn reading(mut self, file: &Path) -> WeightStreamer {
        self.file = file.to_path_buf();
        self
    }

    fn named(&self, source: StreamError) -> StreamedFromError {
        StreamedFromError {
            file: self.file.display().to_string(),
            source,
        }
    }

    /// `streamed[op]` for [`crate::executor::Executor::with_streamed_weights`]: every op the
    /// executor must not hold.
    pub fn streamed_ops(&self) -> Vec<bool> {
        self.sources
            .iter()
            .map(|s| !matches!(s, OpSource::Resident))
            .collect()
    }

    /// The residency plan in use.
    pub fn plan(&self) -> &ResidencyPlan {
        &self.plan
    }

    /// One line describing the plan and the reader (for logs).
    pub fn describe(&self) -> String {
        let p = &self.plan;
        let reader = match &self.reader {
            Some(r) => format!(
                ", {} {} reads (alignment {} B){}{}",
                r.engine_name(),
                if r.is_direct() {
                    "O_DIRECT"
                } else {
                    "buffered"
                },
                r.alignment().block(),
                r.fallback_reason()
                    .map(|w| format!("; io_uring not used: {w}"))
                    .unwrap_or_default(),
                r.warning()
                    .map(|w| format!("; warning: {w}"))
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        format!(
            "layer streaming: {} resident, {} units streamed through {} slot(s) of {}{reader}",
            size_text(p.resident_bytes),
            self.streamed.len(),
            p.n_slots,
            size_text(p.slot_size)
        )
    }

    /// Units that stream each forward.
    pub fn n_streamed_units(&self) -> usize {
        self.streamed.len()
    }

    /// The reader (engine, alignment, whether direct), if anything streams.
    pub fn reader(&self) -> Option<&StreamReader> {
        self.reader.as_ref()
    }

    /// Call before each forward: starts the first units' reads (so they overlap the resident
    /// layers' compute) and resets the statistics.
    pub fn begin_forward(&mut self) -> Result<(), StreamError> {
        if let Some(map) = &self.map {
            map.check_len().map_err(StreamError::Io)?;
        }
        if let Some(reader) = self.reader.as_mut() {
            reader.take_stats();
        }
        self.units_read = 0;
        if self.overlap {
            self.top_up()?;
        }
        Ok(())
    }

    /// Call after each forward: the statistics since [`WeightStreamer::begin_forward`].
    pub fn end_forward(&mut self) -> StreamStats {
        let Some(reader) = self.reader.as_mut() else {
            return StreamStats::default();
        };
        let _ = reader.poll();
        let r = reader.take_stats();
        StreamStats {
            forward_time: Duration::ZERO,
            bytes_read: r.bytes_read,
            units_read: self.units_read,
            read_time: r.read_time,
            io_wait: r.wait_time,
        }
    }

    /// Submits the next streamed units into free slots.
    fn top_up(&mut self) -> Result<(), StreamError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(());
        };
        while reader.free_slots() > 0 && self.pending.len() < reader.n_slots() {
            let pos = self.next_submit;
            let ticket = reader.submit(self.streamed[pos].clone())?;
            self.pending.push_back((pos, ticket));
            self.next_submit = (pos + 1) % self.streamed.len();
        }
        Ok(())
    }

    /// Makes unit `pos` the current one.
    fn load(&mut self, pos: usize) -> Result<(), StreamError> {
        self.current = None;
        if self.overlap {
            self.top_up()?;
        }
        let reader = self
            .reader
            .as_mut()
            .ok_or(StreamError::BadRing("nothing streams"))?;
        // Units are asked for in the order they were submitted; anything else (a forward that
        // failed half-way) discards the stale reads and starts over at `pos`.
        while let Some((p, _)) = self.pending.front() {
            if *p == pos {
                break;
            }
            let (_, stale) = self.pending.pop_front().expect("non-empty");
            drop(reader.wait(stale)?);
        }
        if self.pending.is_empty() {
            self.next_submit = pos;
            let ticket = reader.submit(self.streamed[pos].clone())?;
            self.pending.push_back((pos, ticket));
            self.next_submit = (pos + 1) % self.streamed.len();
        }
        let (_, ticket) = self.pending.pop_front().expect("non-empty");
        let slot = reader.wait(ticket)?;
        self.units_read += 1;
        self.current = Some((pos, slot));
        if self.overlap {
            self.top_up()?;
        }
        Ok(())
    }
}

impl WeightFeed for WeightStreamer {
    fn weight(&mut self, op: usize) -> Result<&[u8], Box<dyn std::error::Error + Send + Sync>> {
        match self.sources.get(op).cloned() {
            Some(OpSource::Streamed { pos, range }) => {
                let read = if self.current.as_ref().is_some_and(|(p, _)| *p == pos) {
                    match self.reader.as_mut() {
                        Some(reader) => reader.poll(),
                        None => Ok(()),
                    }
                } else {
                    self.load(pos)
                };
                read.map_err(|e| self.named(e))?;
                let (_, slot) = self.current.as_ref().expect("loaded");
                Ok(slot.get(range).ok_or("op range outside its unit's slot")?)
            }
            Some(OpSource::Mapped(range)) => {
                let map = self.map.as_ref().ok_or("no mapped file")?;
                if let Some(units) = &self.release_map {
                    // The mmap baseline: release the previous unit once the next one starts.
                    let unit = units
                        .iter()
                        .position(|u| u.start <= range.start as u64 && range.end as u64 <= u.end);
                    if unit != self.last_mapped_unit {
                        if let Some(prev) = self.last_mapped_unit {
                            map.release(units[prev].clone())?;
                        }
                        self.last_mapped_unit = unit;
                    }
                }
                Ok(map.bytes().get(range).ok_or("op range outside the file")?)
            }
            _ => Err(format!("op {op} is not streamed").into()),
        }
    }
}

/// Numbers each op of `node` as the executor does (segment by segment) with its layer and
/// weight size.
fn node_ops(node: &NodeConfig) -> Vec<(usize, u32, u64)> {
    node.ops()
        .enumerate()
        .map(|(i, (_, _, op))| (i, op.index, op.weight_size.n_bytes()))
        .collect()
}

/// The executor's op number of a weight target.
pub fn op_number(node: &NodeConfig, target: &WeightTarget) -> Option<usize> {
    let before: usize = node
        .segments
        .get(..target.segment as usize)?
        .iter()
        .map(|s| s.ops.len())
        .sum();
    let segment = node.segments.get(target.segment as usize)?;
    ((target.op as usize) < segment.ops.len()).then_some(before + target.op as usize)
}

/// How an mmap run (the baseline the benchmark compares with) serves the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    /// Stream through the ring (the real thing).
    Off,
    /// Serve every non-resident op from a map of the file, releasing each unit's pages (from
    /// the process and the page cache) after use: a plain mmap loader held to the budget.
    Released,
    /// Serve every non-resident op from a map of the file and leave the pages to the kernel:
    /// the loader llama.cpp-style engines use, held to a budget only by what limits the
    /// process from outside (a memory cgroup), whose reclaim then evicts pages.
    Plain,
}

/// Streaming of a `.m` model on a single node: which ops stream and the feed that serves them.
#[derive(Debug)]
pub struct ModelStreaming {
    /// The feed.
    pub streamer: WeightStreamer,
}

impl ModelStreaming {
    /// Plans node 0 of a one-node `plan` over the model at `path` within
    /// `options.mem_budget`.
    pub fn plan(
        path: &Path,
        node: &NodeConfig,
        plan: &WeightPlan,
        options: &StreamingOptions,
        map_mode: MapMode,
    ) -> Result<ModelStreaming, StreamingError> {
        if plan.n_nodes() != 1 {
            return Err(StreamingError::Plan(
                "streaming a model file needs a one-node graph (workers stream their own slices)"
                    .into(),
            ));
        }
        let ops = node_ops(node);
        // Each op's weight as one file range: its loads, by offset, must be contiguous.
        let mut pieces: Vec<Vec<(u64, Range<u64>, TensorRole)>> = vec![Vec::new(); ops.len()];
        for load in plan.node_loads(0) {
            let op = op_number(node, &load.target)
                .ok_or_else(|| StreamingError::Plan("a load names no op".into()))?;
            if !load.bytes.is_contiguous() {
                return Err(StreamingError::Plan("a one-node slice is strided".into()));
            }
            pieces[op].push((
                load.target.offset,
                load.bytes.start..load.bytes.end(),
                load.role,
            ));
        }
        let mut stream_ops = Vec::new();
        let mut mapped = Vec::new();
        let mut extra_resident = 0u64;
        for (op, layer, bytes) in &ops {
            let p = &mut pieces[*op];
            if p.is_empty() || *bytes == 0 {
                continue;
            }
            p.sort_by_key(|(o, _, _)| *o);
            let contiguous = p.windows(2).all(|w| w[0].1.end == w[1].1.start);
            let range = p[0].1.start..p[p.len() - 1].1.end;
            let is_embedding = p.iter().any(|(_, _, r)| *r == TensorRole::Embedding);
            if is_embedding && contiguous {
                mapped.push((*op, range));
            } else if contiguous && range.start % 4 == 0 && range.end - range.start == *bytes {
                stream_ops.push((*op, *layer, range));
            } else {
                extra_resident += bytes;
            }
        }
        let align = open_for_streaming(path, options.direct)
            .map_err(|source| {
                StreamingError::Stream(StreamError::Open {
                    path: path.to_path_buf(),
                    source,
                })
            })?
            .align
            .block() as u64;
        let units = group_units(&stream_ops);
        let residency = plan_residency(&units, extra_resident, options.mem_budget, align)?;
        let mut sources = vec![OpSource::Resident; ops.len()];
        let mut streamed = Vec::new();
        for (u, unit) in units.iter().enumerate() {
            if residency.resident[u] {
                continue;
            }
            let pos = streamed.len();
            streamed.push(unit.range.clone());
            for (op, range) in &unit.ops {
                sources[*op] = match map_mode {
                    MapMode::Off => OpSource::Streamed {
                        pos,
                        range: (range.start - unit.range.start) as usize
                            ..(range.end - unit.range.start) as usize,
                    },
                    MapMode::Released | MapMode::Plain => {
                        OpSource::Mapped(range.start as usize..range.end as usize)
                    }
                };
            }
        }
        for (op, range) in &mapped {
            sources[*op] = OpSource::Mapped(range.start as usize..range.end as usize);
        }
        let map = if mapped.is_empty() && map_mode == MapMode::Off {
            None
        } else {
            Some(
                MappedFile::open(path).map_err(|source| StreamingError::Map {
                    path: path.to_path_buf(),
                    source,
                })?,
            )
        };
        let reader = if streamed.is_empty() || map_mode != MapMode::Off {
            None
        } else {
            Some(StreamReader::open(
                path,
                &options.reader_options(&residency),
            )?)
        };
        let release_map = (map_mode == MapMode::Released).then(|| streamed.clone());
        Ok(ModelStreaming {
            streamer: WeightStreamer::new(
                reader,
                map,
                streamed,
                sources,
                options.overlap,
                release_map,
                residency,
            )
            .reading(path),
        })
    }

    /// Whether the load of `target` goes to the executor's storage (resident ops).
    pub fn is_resident(&self, node: &NodeConfig, target: &WeightTarget) -> bool {
        op_number(node, target)
            .is_some_and(|op| matches!(self.streamer.sources.get(op), Some(OpSource::Resident)))
    }
}

/// A worker's spill file: the weights of its streamed ops, written as they arrive over the
/// network, unit by unit in op order, then streamed back.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    file: File,
    /// Per op: where its weight starts in the spill file (streamed ops only).
    place: Vec<Option<u64>>,
    sizes: Vec<u64>,
    units: Vec<Unit>,
    residency: ResidencyPlan,
    streamed_ops: Vec<bool>,
    len: u64,
    /// Ops served from a read-only map of a model file instead (a root's embedding table).
    mapped: Option<MappedOps>,
    /// A slice cache ([`SpillFile::open_cache`]): the path it keeps once complete.
    cache: Option<CachePath>,
}

/// Removes the `<cache>.partial-<pid>` files in `path`'s directory whose process no longer
/// runs (killed while it wrote a cache), whatever cache they were for.
fn remove_dead_partials(path: &Path) {
    let Some(dir) = path.parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.rsplit_once(".partial-"))
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Where a persistent slice cache lives.
#[derive(Debug)]
struct CachePath {
    /// Its name once complete.
    path: PathBuf,
    /// It was complete when opened: its bytes are read back, never written.
    reused: bool,
    /// Set by [`SpillFile::finish`]: the file stays.
    keep: bool,
}

/// Ops of a [`SpillFile`]'s node served from a map of the model file.
#[derive(Debug)]
struct MappedOps {
    model: PathBuf,
    /// `(op, byte range of its weight in the model)`.
    ops: Vec<(usize, Range<u64>)>,
}

impl SpillFile {
    /// Plans `node`'s ops within `options.mem_budget` and creates the spill file for the ops
    /// that stream (nothing is created when all weights fit).
    pub fn create(
        node: &NodeConfig,
        options: &StreamingOptions,
    ) -> Result<Option<SpillFile>, StreamingError> {
        SpillFile::create_inner(node, options, None, None)
    }

    /// As [`SpillFile::create`] for a root with workers, whose own slices are strided in the
    /// model file and so cannot be streamed from it: the ops in `mapped` (op, byte range of
    /// `model`) are served from a read-only map of the model instead of being spilled, neither
    /// held nor counted against the budget. That is for the embedding table, of which a forward
    /// reads one row per token; spilling it would make its unit (and so every ring slot) as
    /// large as the whole table. A spill file is returned whenever `mapped` is not empty, even
    /// when everything else fits (it then holds no unit).
    pub fn create_with_mapped(
        node: &NodeConfig,
        options: &StreamingOptions,
        model: &Path,
        mapped: Vec<(usize, Range<u64>)>,
    ) -> Result<Option<SpillFile>, StreamingError> {
        let sizes = node_ops(node);
        for (op, range) in &mapped {
            let size = sizes.get(*op).map(|o| o.2);
            if size != Some(range.end.saturating_sub(range.start)) {
                return Err(StreamingError::Plan(format!(
                    "mapped op {op}: {} bytes at {} are not its whole weight ({size:?} bytes)",
                    range.end.saturating_sub(range.start),
                    range.start
                )));
            }
        }
        let mapped = MappedOps {
            model: model.to_path_buf(),
            ops: mapped,
        };
        SpillFile::create_inner(node, options, Some(mapped), None)
    }

    /// A persistent slice cache at `path` instead of a temporary spill file: a worker that
    /// reads its slices from its own copy of the model (shared storage) lays the streamed ones
    /// out here once, then reuses the file in later sessions with the same key in its name.
    /// When `path` exists at the planned length it is opened for reading
    /// ([`SpillFile::is_reused`]: verify it with [`SpillFile::read`] instead of writing);
    /// otherwise it is written under a temporary name and renamed into place by
    /// [`SpillFile::finish`], so a half-written cache never looks complete.
    pub fn open_cache(
        node: &NodeConfig,
        options: &StreamingOptions,
        path: &Path,
    ) -> Result<Option<SpillFile>, StreamingError> {
        SpillFile::create_inner(node, options, None, Some(path))
    }

    /// Whether this slice cache was complete when opened.
    pub fn is_reused(&self) -> bool {
        self.cache.as_ref().is_some_and(|c| c.reused)
    }

    /// Reads back `buf.len()` bytes at `offset` of op `op`'s weight.
    pub fn read(&self, op: usize, offset: u64, buf: &mut [u8]) -> Result<(), StreamingError> {
        let base = self.checked_place(op, offset, buf.len())?;
        self.file
            .read_exact_at(buf, base + offset)
            .map_err(|source| StreamingError::Spill {
                path: self.path.clone(),
                source,
            })
    }

    fn checked_place(&self, op: usize, offset: u64, len: usize) -> Result<u64, StreamingError> {
        let (Some(Some(base)), Some(&size)) = (self.place.get(op), self.sizes.get(op)) else {
            return Err(StreamingError::Plan(format!("op {op} does not spill")));
        };
        if offset.checked_add(len as u64).is_none_or(|end| end > size) {
            return Err(StreamingError::Plan(format!(
                "op {op}: bytes {offset}+{len} exceed its {size}-byte weight"
            )));
        }
        Ok(*base)
    }

    fn create_inner(
        node: &NodeConfig,
        options: &StreamingOptions,
        mapped: Option<MappedOps>,
        cache: Option<&Path>,
    ) -> Result<Option<SpillFile>, StreamingError> {
        let is_mapped = |op: usize| {
            mapped
                .as_ref()
                .is_some_and(|m| m.ops.iter().any(|(o, _)| *o == op))
        };
        let ops = node_ops(node);
        // Lay every weighted op out as if all streamed: units start block-aligned, ops inside
        // a unit 64-byte aligned; then plan residency on those ranges.
        let mut at = 0u64;
        let mut laid = Vec::new();
        let mut last_layer = None;
        for (op, layer, bytes) in &ops {
            if *bytes == 0 || is_mapped(*op) {
                continue;
            }
            if last_layer != Some(*layer) {
                at = at.next_multiple_of(SPILL_ALIGN);
                last_layer = Some(*layer);
            } else {
                at = at.next_multiple_of(OP_ALIGN);
            }
            laid.push((*op, *layer, at..at + bytes));
            at += bytes;
        }
        let units = group_units(&laid);
        let residency = plan_residency(&units, 0, options.mem_budget, SPILL_ALIGN)?;
        if residency.n_slots == 0 && mapped.as_ref().is_none_or(|m| m.ops.is_empty()) {
            return Ok(None);
        }
        // Compact: only streamed units go to the file.
        let mut place = vec![None; ops.len()];
        let mut streamed_units = Vec::new();
        let mut streamed_ops = vec![false; ops.len()];
        for (op, _) in mapped.iter().flat_map(|m| &m.ops) {
            streamed_ops[*op] = true;
        }
        let mut at = 0u64;
        for (u, unit) in units.iter().enumerate() {
            if residency.resident[u] {
                continue;
            }
            at = at.next_multiple_of(SPILL_ALIGN);
            let base = at;
            let mut new_ops = Vec::new();
            for (op, range) in &unit.ops {
                let start = base + (range.start - unit.range.start);
                let end = start + (range.end - range.start);
                place[*op] = Some(start);
                streamed_ops[*op] = true;
                new_ops.push((*op, start..end));
            }
            at = base + unit.len();
            streamed_units.push(Unit {
                ops: new_ops,
                range: base..at,
            });
        }
        let (path, file, cache) = match cache {
            Some(cache) => SpillFile::open_cache_file(cache, at)?,
            None => SpillFile::create_spill_file(options, at)?,
        };
        Ok(Some(SpillFile {
            path,
            file,
            place,
            sizes: ops.iter().map(|o| o.2).collect(),
            units: streamed_units,
            residency,
            streamed_ops,
            len: at,
            mapped,
            cache,
        }))
    }

    /// A new temporary spill file of `len` bytes under `options.spill_dir`.
    fn create_spill_file(
        options: &StreamingOptions,
        len: u64,
    ) -> Result<(PathBuf, File, Option<CachePath>), StreamingError> {
        std::fs::create_dir_all(&options.spill_dir).map_err(|source| StreamingError::Spill {
            path: options.spill_dir.clone(),
            source,
        })?;
        static SPILLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = options.spill_dir.join(format!(
            "airllama-spill-{}-{}.bin",
            std::process::id(),
            SPILLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let spill_err = |source| StreamingError::Spill {
            path: path.clone(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(spill_err)?;
        // Unnamed from the start: a process killed at any point leaves nothing behind. The
        // reader reopens it through /proc/self/fd (see `SpillFile::reopen_path`).
        std::fs::remove_file(&path).map_err(spill_err)?;
        file.set_len(len).map_err(spill_err)?;
        Ok((path, file, None))
    }

    /// The path the streamer opens: the cache itself, or, for an unlinked spill file, this
    /// process's link to its open descriptor.
    fn reopen_path(&self) -> PathBuf {
        match &self.cache {
            Some(cache) => cache.path.clone(),
            None => {
                use std::os::fd::AsRawFd;
                PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            }
        }
    }

    /// Opens the complete cache at `path` if it has `len` bytes, else creates its temporary
    /// twin to be written.
    fn open_cache_file(
        path: &Path,
        len: u64,
    ) -> Result<(PathBuf, File, Option<CachePath>), StreamingError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StreamingError::Spill { path, source }
        };
        remove_dead_partials(path);
        if let Ok(file) = File::open(path)
            && file.metadata().is_ok_and(|m| m.len() == len)
        {
            let cache = CachePath {
                path: path.to_path_buf(),
                reused: true,
                keep: false,
            };
            return Ok((path.to_path_buf(), file, Some(cache)));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err(dir))?;
        }
        let mut partial = path.as_os_str().to_owned();
        partial.push(format!(".partial-{}", std::process::id()));
        let partial = PathBuf::from(partial);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(err(&partial))?;
        file.set_len(len).map_err(err(&partial))?;
        let cache = CachePath {
            path: path.to_path_buf(),
            reused: false,
            keep: false,
        };
        Ok((partial, file, Some(cache)))
    }

    /// `streamed[op]` for [`crate::executor::Executor::with_streamed_weights`].
    pub fn streamed_ops(&self) -> &[bool] {
        &self.streamed_ops
    }

    /// The residency plan.
    pub fn plan(&self) -> &ResidencyPlan {
        &self.residency
    }

    /// The spill file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `target`'s op streams (its data goes to [`SpillFile::write`]).
    pub fn spills(&self, node: &NodeConfig, target: &WeightTarget) -> Option<usize> {
        op_number(node, target).filter(|op| self.place.get(*op).is_some_and(Option::is_some))
    }

    /// Writes `data`, the bytes at `offset` of op `op`'s weight.
    pub fn write(&mut self, op: usize, offset: u64, data: &[u8]) -> Result<(), StreamingError> {
        let base = self.checked_place(op, offset, data.len())?;
        self.file
            .write_all_at(data, base + offset)
            .map_err(|source| StreamingError::Spill {
                path: self.path.clone(),
                source,
            })
    }

    /// Flushes the file, drops it from the page cache and opens the streamer over it. The file
    /// is unlinked once open (it lives as long as the streamer).
    pub fn finish(mut self, options: &StreamingOptions) -> Result<WeightStreamer, StreamingError> {
        let spill_err = |source| StreamingError::Spill {
            path: self.path.clone(),
            source,
        };
        if self.cache.as_ref().is_none_or(|c| !c.reused) {
            self.file.sync_data().map_err(spill_err)?;
        }
        drop_cache(&self.file, 0..self.len).map_err(spill_err)?;
        // A slice cache written now becomes complete only here: renamed, then kept.
        if let Some(cache) = self.cache.as_mut() {
            if !cache.reused {
                std::fs::rename(&self.path, &cache.path).map_err(|source| {
                    StreamingError::Spill {
                        path: cache.path.clone(),
                        source,
                    }
                })?;
            }
            self.path = cache.path.clone();
            cache.keep = true;
        }
        // With only mapped ops (everything else fits) there is nothing to read back.
        let reader = if self.units.is_empty() {
            None
        } else {
            Some(StreamReader::open(
                &self.reopen_path(),
                &options.reader_options(&self.residency),
            ))
        };
        let reader = reader.transpose()?;
        let mut sources = vec![OpSource::Resident; self.place.len()];
        let map = match &self.mapped {
            Some(MappedOps { model, ops }) if !ops.is_empty() => {
                for (op, range) in ops {
                    let range = usize::try_from(range.start)
                        .and_then(|s| Ok(s..usize::try_from(range.end)?))
                        .map_err(|_| StreamingError::Plan(format!("mapped op {op}: range")))?;
                    sources[*op] = OpSource::Mapped(range);
                }
                Some(
                    MappedFile::open(model).map_err(|source| StreamingError::Map {
                        path: model.clone(),
                        source,
                    })?,
                )
            }
            _ => None,
        };
        let mut streamed = Vec::new();
        for (pos, unit) in self.units.iter().enumerate() {
            streamed.push(unit.range.clone());
            for (op, range) in &unit.ops {
                sources[*op] = OpSource::Streamed {
                    pos,
                    range: (range.start - unit.range.start) as usize
                        ..(range.end - unit.range.start) as usize,
                };
            }
        }
        Ok(WeightStreamer::new(
            reader,
            map,
            streamed,
            sources,
            options.overlap,
            None,
            self.residency.clone(),
        )
        .reading(&self.path))
    }
}

impl Drop for SpillFile {
    /// A session that ends before [`SpillFile::finish`] leaves no file behind.
    fn drop(&mut self) {
        // A complete slice cache stays (reused, or finished); a half-written one goes. A spill
        // file has no name to remove.
        if let Some(cache) = &self.cache
            && !cache.reused
            && !cache.keep
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "-1G", "1X", "0", "nan"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    fn unit(len: u64, at: u64, op: usize) -> Unit {
        Unit {
            ops: vec![(op, at..at + len)],
            range: at..at + len,
        }
    }

    #[test]
    fn residency_follows_the_budget() {
        let units: Vec<Unit> = (0..10).map(|i| unit(1000, i * 1000, i as usize)).collect();
        // Everything fits.
        let p = plan_residency(&units, 0, 10_000, 512).unwrap();
        assert_eq!((p.n_slots, p.resident.iter().all(|r| *r)), (0, true));
        // Slot: 1000 + 2 * 512 rounded to 512 = 2048.
        let p = plan_residency(&units, 0, 2047, 512);
        assert!(matches!(
            p,
            Err(StreamingError::BudgetTooSmall { needed: 2048, .. })
        ));
        // Smaller than two units: one slot, nothing resident.
        let p = plan_residency(&units, 0, 3000, 512).unwrap();
        assert_eq!((p.n_slots, p.slot_size), (1, 2048));
        assert!(p.resident.iter().all(|r| !r));
        // Two slots, the rest resident in step order.
        let p = plan_residency(&units, 0, 8100, 512).unwrap();
        assert_eq!(p.n_slots, 2);
        assert_eq!(p.resident.iter().filter(|r| **r).count(), 4);
        assert!(p.resident[..4].iter().all(|r| *r));
        assert!(p.ring_bytes() + p.resident_bytes <= 8100);
        // A larger budget buys a deeper ring, capped.
        let units: Vec<Unit> = (0..100).map(|i| unit(1000, i * 1000, i as usize)).collect();
        let p = plan_residency(&units, 0, 90_000, 512).unwrap();
        assert_eq!(p.n_slots, MAX_SLOTS);
        assert!(p.ring_bytes() + p.resident_bytes <= 90_000);
    }

    #[test]
    fn spill_files_stream_back_what_was_written_and_never_outlive_their_use() {
        use crate::graph::{GraphParams, LlmGraph, SyncFloatType};
        let shape = synthetic::LlamaShape::MINIATURE;
        let header = shape
            .params(airllama_kernels::block::FloatType::Q40)
            .to_header()
            .unwrap();
        let graph =
            LlmGraph::build(&header, GraphParams::dllama(2, SyncFloatType::Q80, 0)).unwrap();
        let node = &graph.nodes[1];
        let dir = std::env::temp_dir().join(format!("airllama-spill-test-{}", std::process::id()));
        let mut options = StreamingOptions::new(1);
        options.spill_dir = dir.clone();
        options.direct = false;
        // A budget of one byte holds nothing.
        assert!(matches!(
            SpillFile::create(node, &options),
            Err(StreamingError::BudgetTooSmall { .. })
        ));
        options.mem_budget = 1 << 30;
        assert!(
            SpillFile::create(node, &options).unwrap().is_none(),
            "all fits"
        );
        let largest_layer: u64 = node
            .ops()
            .filter(|(_, _, op)| op.index == 1)
            .map(|(_, _, op)| op.weight_size.n_bytes())
            .sum();
        options.mem_budget = largest_layer * 3 / 2 + 3 * SPILL_ALIGN;
        // Unnamed from the start, so a session that fails (or a process killed) while loading
        // leaves no file; the directory holds nothing while it is in use.
        let spill = SpillFile::create(node, &options).unwrap().unwrap();
        let path = spill.path().to_path_buf();
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        drop(spill);
        // Written op by op, streamed back op by op.
        let mut spill = SpillFile::create(node, &options).unwrap().unwrap();
        assert_eq!(spill.plan().n_slots, 1);
        let streamed: Vec<usize> = (0..spill.streamed_ops().len())
            .filter(|op| spill.streamed_ops()[*op])
            .collect();
        let sizes: Vec<u64> = node
            .ops()
            .map(|(_, _, op)| op.weight_size.n_bytes())
            .collect();
        let fill = |op: usize, i: u64| (op as u64 * 31 + i * 7) as u8;
        for &op in &streamed {
            let data: Vec<u8> = (0..sizes[op]).map(|i| fill(op, i)).collect();
            // In two records, as a root sends MoE experts at their offsets.
            let half = data.len() / 2;
            spill.write(op, half as u64, &data[half..]).unwrap();
            spill.write(op, 0, &data[..half]).unwrap();
        }
        assert!(spill.write(streamed[0], sizes[streamed[0]], &[1]).is_err());
        let path = spill.path().to_path_buf();
        let mut streamer = spill.finish(&options).unwrap();
        assert!(!path.exists(), "unlinked once open");
        for _ in 0..2 {
            streamer.begin_forward().unwrap();
            for &op in &streamed {
                let got = streamer.weight(op).unwrap();
                assert!(
                    got.iter()
                        .enumerate()
                        .all(|(i, b)| *b == fill(op, i as u64))
                );
            }
            let stats = streamer.end_forward();
            assert_eq!(stats.units_read, streamer.n_streamed_units() as u64);
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn a_root_spill_file_maps_the_embedding_instead_of_spilling_it() {
        use crate::graph::{GraphParams, LlmGraph, SyncFloatType};
        use airllama_io::layout::ModelLayout;
        let shape = synthetic::LlamaShape::MINIATURE;
        let params = shape.params(airllama_kernels::block::FloatType::Q40);
        let dir = std::env::temp_dir().join(format!("airllama-root-spill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("model.m");
        let size = synthetic::write_model(&model, &params, 5).unwrap();
        let header = params.to_header().unwrap();
        let graph =
            LlmGraph::build(&header, GraphParams::dllama(2, SyncFloatType::Q80, 0)).unwrap();
        let layout = ModelLayout::new(&header, size).unwrap();
        let plan = WeightPlan::new(&graph, &layout).unwrap();
        let node = &graph.nodes[0];
        let embedding = plan
            .node_loads(0)
            .find(|l| l.role == TensorRole::Embedding)
            .expect("the root holds the embedding");
        let op = op_number(node, &embedding.target).unwrap();
        let range = embedding.bytes.start..embedding.bytes.end();
        let mut options = StreamingOptions::new(1);
        options.spill_dir = dir.clone();
        options.direct = false;
        let largest_layer: u64 = node
            .ops()
            .filter(|(_, _, op)| op.index == 1)
            .map(|(_, _, op)| op.weight_size.n_bytes())
            .sum();
        options.mem_budget = largest_layer * 3 / 2 + 3 * SPILL_ALIGN;
        // Part of the table is not a weight to map.
        let short = vec![(op, range.start..range.end - 1)];
        assert!(SpillFile::create_with_mapped(node, &options, &model, short).is_err());
        let model_bytes = std::fs::read(&model).unwrap();
        let table = &model_bytes[range.start as usize..range.end as usize];
        let mapped = vec![(op, range.clone())];
        let spill = SpillFile::create_with_mapped(node, &options, &model, mapped.clone())
            .unwrap()
            .unwrap();
        assert!(spill.streamed_ops()[op], "not held by the executor");
        assert_eq!(spill.spills(node, &embedding.target), None, "not spilled");
        assert!(
            spill
                .units
                .iter()
                .all(|u| u.ops.iter().all(|(o, _)| *o != op))
        );
        assert!(!spill.units.is_empty());
        let mut streamer = spill.finish(&options).unwrap();
        assert!(streamer.n_streamed_units() >= shape.n_layers as usize);
        streamer.begin_forward().unwrap();
        assert_eq!(streamer.weight(op).unwrap(), table);
        // Everything else fits: no unit streams, the table is still mapped.
        options.mem_budget = 1 << 30;
        let spill = SpillFile::create_with_mapped(node, &options, &model, mapped)
            .unwrap()
            .expect("a mapped op needs the streamer");
        let mut streamer = spill.finish(&options).unwrap();
        assert_eq!(streamer.n_streamed_units(), 0);
        assert!(streamer.reader().is_none());
        streamer.begin_forward().unwrap();
        assert_eq!(streamer.weight(op).unwrap(), table);
        assert_eq!(streamer.end_forward(), StreamStats::default());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn units_follow_layers_and_adjacency() {
        let ops = vec![
            (0, 0, 0..100),
            (1, 0, 100..300),
            // Op order differs from file order inside a layer (norms are stored last).
            (2, 1, 450..500),
            (3, 1, 300..400),
            (4, 1, 400..450),
            // Final ops carry layer 0 again but follow layer 1: a new unit.
            (5, 0, 500..600),
            // Same layer, but far away in the file: split into one unit per op.
            (6, 2, 1_000_000..1_000_100),
            (7, 2, 600..700),
        ];
        let units = group_units(&ops);
        let shape: Vec<Vec<usize>> = units
            .iter()
            .map(|u| u.ops.iter().map(|(o, _)| *o).collect())
            .collect();
        assert_eq!(
            shape,
            vec![vec![0, 1], vec![2, 3, 4], vec![5], vec![6], vec![7]]
        );
        assert_eq!(units[1].range, 300..500);
    }
}

/// Synthetic `.m` models for tests and benchmarks: a valid header and pseudo-random weights of
/// the right types (Q40 blocks with small finite scales, F32 norms near one), so any shape can
/// be made without downloading a model.
pub mod synthetic {
    use std::io::{self, Write};
    use std::path::Path;

    use airllama_io::layout::ModelLayout;
    use airllama_io::model::{ArchType, HiddenAct, ModelHeader, ModelParams};
    use airllama_kernels::block::FloatType;

    /// The shape of a synthetic llama.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct LlamaShape {
        /// Model dimension.
        pub dim: u32,
        /// Feed-forward dimension.
        pub hidden_dim: u32,
        /// Layers.
        pub n_layers: u32,
        /// Attention heads.
        pub n_heads: u32,
        /// Key/value heads.
        pub n_kv_heads: u32,
        /// Vocabulary size.
        pub vocab_size: u32,
        /// Context length.
        pub seq_len: u32,
    }

    impl LlamaShape {
        /// Llama-2-7B's shape (about 3.9 GB in Q40, with an F32 embedding).
        pub const LLAMA2_7B: LlamaShape = LlamaShape {
            dim: 4096,
            hidden_dim: 11008,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: 32,
            vocab_size: 32000,
            seq_len: 4096,
        };

        /// A three-layer model of a few hundred kB (64-wide, 4 heads, 2 KV heads): enough for
        /// units, slices and grouped-query attention in unit tests.
        pub const MINIATURE: LlamaShape = LlamaShape {
            dim: 64,
            hidden_dim: 128,
            n_layers: 3,
            n_heads: 4,
            n_kv_heads: 2,
            vocab_size: 64,
            seq_len: 16,
        };

        /// The header parameters: SiLU, rope theta 10000, weights of `weight_type`.
        pub fn params(&self, weight_type: FloatType) -> ModelParams {
            ModelParams {
                arch: ArchType::Llama,
                hidden_act: HiddenAct::Silu,
                dim: self.dim,
                hidden_dim: self.hidden_dim,
                n_layers: self.n_layers,
                n_heads: self.n_heads,
                n_kv_heads: self.n_kv_heads,
                weight_type,
                seq_len: self.seq_len,
                vocab_size: self.vocab_size,
                n_experts: 0,
                n_active_experts: 0,
                rope_theta: Some(10000),
                rope_scaling: None,
                head_dim: None,
                norm_epsilon: None,
                moe_hidden_dim: None,
            }
        }
    }

    /// xorshift64*: fast, deterministic, good enough for weights nobody reads for meaning.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// The header and layout of a model with `params`: what [`write_model`] writes, known
    /// before a byte is written (so a command can state the size, or refuse it, first).
    pub fn plan_model(params: &ModelParams) -> io::Result<(ModelHeader, ModelLayout)> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let header = params.to_header().map_err(|e| invalid(e.to_string()))?;
        // Find the file size the layout wants by asking it (it names the right size).
        let layout = match ModelLayout::new(&header, header.header_size()) {
            Ok(l) => l,
            Err(airllama_io::layout::LayoutError::FileTooShort { expected, .. }) => {
                ModelLayout::new(&header, expected).map_err(|e| invalid(e.to_string()))?
            }
            Err(e) => return Err(invalid(e.to_string())),
        };
        Ok((header, layout))
    }

    /// Writes a model with `params` and weights from `seed` to `path`; returns its size. Each
    /// tensor is written as the layout table lists it, so the file is exactly what
    /// [`ModelLayout::new`] expects.
    pub fn write_model(path: &Path, params: &ModelParams, seed: u64) -> io::Result<u64> {
        write_model_with_progress(path, params, seed, &mut |_| {})
    }

    /// [`write_model`], calling `progress` with the bytes written so far after each chunk
    /// (a few MB), so a multi-gigabyte model can show how far it is.
    pub fn write_model_with_progress(
        path: &Path,
        params: &ModelParams,
        seed: u64,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<u64> {
        let (header, layout) = plan_model(params)?;
        let file_size = layout.file_size();
        let mut written = header.header_size();
        let file = std::fs::File::create(path)?;
        let mut out = io::BufWriter::with_capacity(8 << 20, file);
        header.write_to(&mut out)?;
        let mut rng = Rng(seed | 1);
        let mut chunk = vec![0u8; 18 << 18];
        for tensor in layout.tensors() {
            let mut left = tensor.size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                let buf = &mut chunk[..n];
                match tensor.float_type {
                    FloatType::Q40 => {
                        // Chunks are multiples of 18 bytes, so blocks never straddle them.
                        for block in buf.chunks_mut(18) {
                            let r = rng.next();
                            // f16 scale in [2^-7, 2^-6): 0x2000..0x2400.
                            let d = 0x2000u16 | (r as u16 & 0x03ff);
                            block[..2].copy_from_slice(&d.to_le_bytes());
                            let q = rng.next().to_le_bytes();
                            let q2 = r.to_le_bytes();
                            let rest = &mut block[2..];
                            let len = rest.len();
                            rest[..len.min(8)].copy_from_slice(&q[..len.min(8)]);
                            if len > 8 {
                                rest[8..].copy_from_slice(&q2[..len - 8]);
                            }
                        }
                    }
                    _ => {
                        let norm = tensor.cols == params.dim && tensor.rows == 1
                            || matches!(
                                tensor.role,
                                airllama_io::layout::TensorRole::AttentionNorm
                                    | airllama_io::layout::TensorRole::FfnNorm
                                    | airllama_io::layout::TensorRole::FinalNorm
                                    | airllama_io::layout::TensorRole::QNorm
                                    | airllama_io::layout::TensorRole::KNorm
                            );
                        for v in buf.chunks_mut(4) {
                            let u = (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                            let x = if norm { 1.0 + 0.2 * u } else { 0.2 * u };
                            let b = x.to_le_bytes();
                            v.copy_from_slice(&b[..v.len()]);
                        }
                    }
                }
                out.write_all(buf)?;
                left -= n as u64;
                written += n as u64;
                progress(written);
            }
        }
        out.flush()?;
        Ok(file_size)
    }
}
