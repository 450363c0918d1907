//! Zero-data movement: nodes that can read the same model file load their own slices from it,
//! and only control packets and activations cross the network.
//!
//! The wire side (greeting, load request, load result) is [`airllama_net::shared_storage`].
//! This module holds the two things each end does with it:
//!
//! * the root's [`IdentityTable`]: a digest of every weight record the root would send, made
//!   once per model file and node count, and cached (`--cache-dir`) under a key of the file's
//!   size, inode and change times, so later runs read only the root's own slices;
//! * the worker's [`LocalModel`]: its own copy of the model, checked against the root's header,
//!   size and graph, then loaded record by record, each record's bytes hashed as they are read
//!   and compared with the root's digest before the session may run a forward. A mismatch names
//!   the file and the first differing tensor; nothing falls back to a transfer silently.
//!
//! Identity is proven per record, not per file: a worker reads (and hashes) exactly the bytes
//! it uses, so the proof costs one BLAKE3 pass over the node's own slice, far less than moving
//! it.
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use airllama_io::layout::{LayoutError, ModelLayout, TensorEntry};
use airllama_io::model::ModelHeader;
use airllama_net::shared_storage::{Digest, LoadRequest};
use airllama_net::{FloatType, NetConfig, NodeConfig};

use crate::executor::{Executor, ExecutorError};
use crate::graph::{GraphParams, LlmGraph, SyncFloatType, WeightLoad, WeightPlan};
use crate::streaming::{SpillFile, StreamingError, op_number};

/// Most bytes a streamed record is read in at a time on its way to the slice cache.
const COPY_CHUNK: usize = 1 << 20;

/// The slice cache file of node `node_index` for this request and budget: its name carries a
/// key of everything that decides its content and layout, so a cache is only ever reused for
/// the same records laid out the same way.
pub fn slice_cache_path(
    dir: &Path,
    model: &Path,
    node: &NodeConfig,
    node_index: u32,
    n_nodes: u32,
    request: &LoadRequest,
    mem_budget: u64,
) -> PathBuf {
    let mut key = b"airllama-slices-v1".to_vec();
    node.encode(&mut key);
    for d in &request.records {
        key.extend_from_slice(d);
    }
    key.extend_from_slice(&mem_budget.to_le_bytes());
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    dir.join(format!(
        "{name}-node{node_index}of{n_nodes}-{}.slices",
        &hex(&digest(&key))[..16]
    ))
}

/// Digest of one weight record's data: BLAKE3, first 16 bytes.
pub fn digest(data: &[u8]) -> Digest {
    let mut out = [0u8; 16];
    out.copy_from_slice(&blake3::hash(data).as_bytes()[..16]);
    out
}

fn finish(hasher: &blake3::Hasher) -> Digest {
    let mut out = [0u8; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// The hex text of a digest.
pub fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where identity tables and slice caches go when `--cache-dir` is not given:
/// `$AIRLLAMA_CACHE_DIR`, else `$XDG_CACHE_HOME/airllama`, else `$HOME/.cache/airllama`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("AIRLLAMA_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("airllama"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("airllama"))
}

/// Why shared storage could not be used. Each variant names the file; a mismatch names the
/// first tensor that differs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedStorageError {
    /// The model file cannot be opened or read.
    #[error("cannot read model file {path} at byte {offset}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model header is unreadable or does not describe a model this build runs.
    #[error("model file {path}: {what}")]
    Model {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The file is not the root's model: its header, size, graph or a tensor differs.
    #[error("model file {path} is not the root's model: {what}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs: the header, the size, or the first differing tensor.
        what: String,
    },
    /// The weights could not be placed in the node's graph.
    #[error("loading into the graph")]
    Executor(#[from] ExecutorError),
    /// The slice cache of a node under `--mem-budget` could not be written or read.
    #[error("slice cache: {0}")]
    Streaming(#[from] StreamingError),
    /// A reused slice cache no longer matches its digests (edited or damaged on disk).
    #[error("slice cache {path} does not match the root's digests at {what}")]
    StaleCache {
        /// The cache file.
        path: PathBuf,
        /// The first record that differs.
        what: String,
    },
}

/// What identifies one version of a file on one machine, for the cache key: a rewrite,
/// a truncation or a copy over it changes the size or a change time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    dev: u64,
    ino: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn of(file: &File) -> std::io::Result<FileStamp> {
        let m = file.metadata()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Ok(FileStamp {
            size: m.len(),
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.dev.to_le_bytes());
        out.extend_from_slice(&self.ino.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&self.ctime_ns.to_le_bytes());
    }
}

/// Reads `ranges` of `file` back to back into `dst`, whose length is their total; on failure,
/// the offset it failed at and why.
pub(crate) fn read_ranges(
    file: &File,
    ranges: impl Iterator<Item = std::ops::Range<u64>>,
    dst: &mut [u8],
) -> Result<(), (u64, std::io::Error)> {
    let mut at = 0usize;
    for range in ranges {
        let len = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let part = at.checked_add(len).and_then(|end| dst.get_mut(at..end));
        let result = match part {
            Some(part) => file.read_exact_at(part, range.start),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "slice larger than its planned size",
            )),
        };
        result.map_err(|e| (range.start, e))?;
        at += len;
    }
    Ok(())
}

/// A tensor as a person reads it: `layer 3 wq (file bytes 1024..2048)`.
fn tensor_text(entry: Option<&TensorEntry>, load: &WeightLoad) -> String {
    match entry {
        Some(t) => {
            let expert = t.expert.map(|e| format!(" expert {e}")).unwrap_or_default();
            format!(
                "tensor {} of layer {}{expert} (record {} op {}, file bytes {}..{})",
                t.role,
                t.layer,
                load.header.name,
                load.header.op_index,
                t.offset,
                t.offset + t.size
            )
        }
        None => format!("record {} op {}", load.header.name, load.header.op_index),
    }
}

/// The digest of every weight record of a model split over `n_nodes`, in the plan's order
/// (tensors in file order, nodes within each tensor), with the header digest and file size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityTable {
    /// Nodes the plan splits over.
    pub n_nodes: u32,
    /// Bytes of the model file.
    pub file_size: u64,
    /// Digest of the header bytes.
    pub header_digest: Digest,
    /// One per [`WeightPlan::loads`] entry.
    pub records: Vec<Digest>,
}

/// Where an [`IdentityTable`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// Read from this cache file.
    Cached(PathBuf),
    /// Computed by reading the whole model, and saved to this cache file (if it could be).
    Built {
        /// The cache file written, or `None` with the reason it could not be.
        saved: Result<PathBuf, String>,
    },
}

const TABLE_MAGIC: &[u8; 8] = b"AIRLIDT1";

impl IdentityTable {
    /// Reads every record of `plan` from `file` and digests it; `progress(done, total)` after
    /// each record.
    pub fn build(
        file: &File,
        path: &Path,
        header_size: u64,
        plan: &WeightPlan,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IdentityTable, SharedStorageError> {
        let read_err = |offset, source| SharedStorageError::Read {
            path: path.to_path_buf(),
            offset,
            source,
        };
        let file_size = file.metadata().map_err(|e| read_err(0, e))?.len();
        let mut header = vec![0u8; usize::try_from(header_size).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut header, 0)
            .map_err(|e| read_err(0, e))?;
        let total: u64 = plan.loads().iter().map(|l| l.header.n_bytes).sum();
        let mut done = 0u64;
        let mut chunk = vec![0u8; 4 << 20];
        let mut records = Vec::with_capacity(plan.loads().len());
        for load in plan.loads() {
            let mut hasher = blake3::Hasher::new();
            for range in load.bytes.ranges() {
                let mut at = range.start;
                while at < range.end {
                    let n = (range.end - at).min(chunk.len() as u64) as usize;
                    file.read_exact_at(&mut chunk[..n], at)
                        .map_err(|e| read_err(at, e))?;
                    hasher.update(&chunk[..n]);
                    at += n as u64;
                }
            }
            records.push(finish(&hasher));
            done += load.header.n_bytes;
            progress(done, total);
        }
        Ok(IdentityTable {
            n_nodes: plan.n_nodes(),
            file_size,
            header_digest: digest(&header),
            records,
        })
    }

    /// The cached table of `file` for `plan`'s node count, if `cache_dir` holds a valid one;
    /// else builds it and tries to save it there.
    pub fn load_or_build(
        file: &File,
        path: &Path,
        header_size: u64,
        plan: &WeightPlan,
        cache_dir: Option<&Path>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(IdentityTable, TableSource), SharedStorageError> {
        let stamp = FileStamp::of(file).map_err(|source| SharedStorageError::Read {
            path: path.to_path_buf(),
            offset: 0,
            source,
        })?;
        let cache = cache_dir.map(|dir| dir.join(IdentityTable::cache_name(path, &stamp, plan)));
        if let Some(cache) = &cache
            && let Some(table) = IdentityTable::read_cache(cache, &stamp, plan)
        {
            return Ok((table, TableSource::Cached(cache.clone())));
        }
        let table = IdentityTable::build(file, path, header_size, plan, progress)?;
        let saved = match &cache {
            Some(cache) => table
                .write_cache(cache, &stamp)
                .map(|()| cache.clone())
                .map_err(|e| format!("{}: {e}", cache.display())),
            None => Err("no cache directory (set --cache-dir or HOME)".into()),
        };
        Ok((table, TableSource::Built { saved }))
    }

    /// `<file name>-<key>.n<nodes>.idtable`: the key hashes the file's absolute path and stamp.
    fn cache_name(path: &Path, stamp: &FileStamp, plan: &WeightPlan) -> String {
        let mut key = Vec::new();
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        key.extend_from_slice(absolute.as_os_str().as_encoded_bytes());
        stamp.encode(&mut key);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        format!(
            "{name}-{}.n{}.idtable",
            &hex(&digest(&key))[..16],
            plan.n_nodes()
        )
    }

    fn read_cache(cache: &Path, stamp: &FileStamp, plan: &WeightPlan) -> Option<IdentityTable> {
        let bytes = std::fs::read(cache).ok()?;
        let mut expected = Vec::new();
        expected.extend_from_slice(TABLE_MAGIC);
        stamp.encode(&mut expected);
        let n = plan.loads().len();
        expected.extend_from_slice(&plan.n_nodes().to_le_bytes());
        expected.extend_from_slice(&(n as u64).to_le_bytes());
        let rest = bytes.strip_prefix(expected.as_slice())?;
        // header digest, records, then a digest of everything before it.
        if rest.len() != 16 + 16 * n + 16 {
            return None;
        }
        let (body, check) = bytes.split_at(bytes.len() - 16);
        if digest(body) != check {
            return None;
        }
        let mut chunks = rest.chunks_exact(16).map(|c| {
            let mut d = [0u8; 16];
            d.copy_from_slice(c);
            d
        });
        let header_digest = chunks.next()?;
        let records: Vec<Digest> = chunks.take(n).collect();
        Some(IdentityTable {
            n_nodes: plan.n_nodes(),
            file_size: stamp.size,
            header_digest,
            records,
        })
    }

    fn write_cache(&self, cache: &Path, stamp: &FileStamp) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(TABLE_MAGIC);
        stamp.encode(&mut bytes);
        bytes.extend_from_slice(&self.n_nodes.to_le_bytes());
        bytes.extend_from_slice(&(self.records.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&self.header_digest);
        for r in &self.records {
            bytes.extend_from_slice(r);
        }
        let check = digest(&bytes);
        bytes.extend_from_slice(&check);
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // Written whole under a temporary name, then renamed: a reader never sees half a table.
        let tmp = cache.with_extension(format!("idtable.tmp{}", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, cache).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// The load request for `node`: its records' digests in send order.
    pub fn request(&self, plan: &WeightPlan, node: u32, params: &GraphParams) -> LoadRequest {
        LoadRequest {
            n_batches: params.n_batches,
            sync_type: params.sync_type.float_type() as u32,
            max_seq_len: params.max_seq_len,
            file_size: self.file_size,
            header_digest: self.header_digest,
            records: plan
                .loads()
                .iter()
                .zip(&self.records)
                .filter(|(l, _)| l.node == node)
                .map(|(_, d)| *d)
                .collect(),
        }
    }
}

/// A worker's own copy of the model, opened for a shared-storage session.
#[derive(Debug)]
pub struct LocalModel {
    path: PathBuf,
    file: File,
    header: ModelHeader,
    layout: ModelLayout,
}

/// One node's records: the plan built from the local file, the node's config and index, and
/// the root's request with their digests.
#[derive(Debug, Clone, Copy)]
pub struct NodeRecords<'a> {
    /// The plan of every node's records.
    pub plan: &'a WeightPlan,
    /// This node's config.
    pub node: &'a NodeConfig,
    /// This node's index.
    pub node_index: u32,
    /// The root's digests of this node's records.
    pub request: &'a LoadRequest,
}

/// What a worker loaded from its own storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLoad {
    /// Records loaded.
    pub records: u64,
    /// Bytes read and verified.
    pub bytes: u64,
    /// Time taken.
    pub elapsed: std::time::Duration,
}

impl LocalModel {
    /// Opens the model at `path`: header and tensor layout.
    pub fn open(path: &Path) -> Result<LocalModel, SharedStorageError> {
        let read_err = |source| SharedStorageError::Read {
            path: path.to_path_buf(),
            offset: 0,
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let size = file.metadata().map_err(read_err)?.len();
        let header = ModelHeader::read_from(&mut std::io::BufReader::new(&file)).map_err(|e| {
            SharedStorageError::Model {
                path: path.to_path_buf(),
                what: e.to_string(),
            }
        })?;
        // A truncated (or overlong) copy is a mismatch to report against the root's size, with
        // the first tensor it lacks: the layout is taken at the size the header implies, and
        // the file's own size is checked when a request arrives.
        let layout = match ModelLayout::new(&header, size) {
            Err(
                LayoutError::FileTooShort { expected, .. }
                | LayoutError::FileTooLong { expected, .. },
            ) => ModelLayout::new(&header, expected),
            other => other,
        }
        .map_err(|e| SharedStorageError::Model {
            path: path.to_path_buf(),
            what: e.to_string(),
        })?;
        Ok(LocalModel {
            path: path.to_path_buf(),
            file,
            header,
            layout,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn mismatch(&self, what: impl Into<String>) -> SharedStorageError {
        SharedStorageError::Mismatch {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    /// Checks this file against the root's `request` and the configs the root sent node
    /// `node_index`, and returns the plan of that node's records.
    pub fn plan_for(
        &self,
        request: &LoadRequest,
        net: &NetConfig,
        node: &NodeConfig,
        node_index: u32,
    ) -> Result<WeightPlan, SharedStorageError> {
        let read_err = |offset, source| SharedStorageError::Read {
            path: self.path.clone(),
            offset,
            source,
        };
        let mut header = vec![0u8; usize::try_from(self.header.header_size()).unwrap_or(0)];
        self.file
            .read_exact_at(&mut header, 0)
            .map_err(|e| read_err(0, e))?;
        if digest(&header) != request.header_digest {
            let c = self.header.config();
            return Err(self.mismatch(format!(
                "its header differs from the root's (this file: {:?}, dim {}, {} layers, vocab {})",
                c.arch, c.dim, c.n_layers, c.vocab_size
            )));
        }
        let size = self.file.metadata().map_err(|e| read_err(0, e))?.len();
        if size != request.file_size {
            let cut = self
                .layout
                .tensors()
                .iter()
                .find(|t| t.offset + t.size > size)
                .map(|t| {
                    format!(
                        "; the first tensor past its end is {} of layer {} (bytes {}..{})",
                        t.role,
                        t.layer,
                        t.offset,
                        t.offset + t.size
                    )
                })
                .unwrap_or_default();
            return Err(self.mismatch(format!(
                "it has {size} bytes, the root's has {} (a truncated or partial copy?){cut}",
                request.file_size
            )));
        }
        let sync_type = match request.sync_type {
            t if t == FloatType::F32 as u32 => SyncFloatType::F32,
            t if t == FloatType::Q80 as u32 => SyncFloatType::Q80,
            t => {
                return Err(SharedStorageError::Model {
                    path: self.path.clone(),
                    what: format!("the root asks for sync float type code {t}"),
                });
            }
        };
        let params = GraphParams {
            n_nodes: net.n_nodes,
            n_batches: request.n_batches,
            sync_type,
            max_seq_len: request.max_seq_len,
        };
        let graph =
            LlmGraph::build(&self.header, params).map_err(|e| SharedStorageError::Model {
                path: self.path.clone(),
                what: format!("cannot split it over {} nodes: {e}", net.n_nodes),
            })?;
        let encoded = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            f(&mut v);
            v
        };
        let own_node = graph.nodes.get(node_index as usize);
        if encoded(&|v| graph.net.encode(v)) != encoded(&|v| net.encode(v))
            || own_node.map(|n| encoded(&|v| n.encode(v))) != Some(encoded(&|v| node.encode(v)))
        {
            return Err(
                self.mismatch("the graph built from it differs from the configs the root sent")
            );
        }
        let layout =
            ModelLayout::new(&self.header, size).map_err(|e| SharedStorageError::Model {
                path: self.path.clone(),
                what: e.to_string(),
            })?;
        let plan = WeightPlan::new(&graph, &layout).map_err(|e| SharedStorageError::Model {
            path: self.path.clone(),
            what: e.to_string(),
        })?;
        let n = plan.node_loads(node_index).count();
        if n != request.records.len() {
            return Err(self.mismatch(format!(
                "it gives node {node_index} {n} weight records, the root's gives {}",
                request.records.len()
            )));
        }
        Ok(plan)
    }

    /// Reads `load`'s bytes into `dst` and checks them against `expected`.
    pub fn read_verified(
        &self,
        load: &WeightLoad,
        expected: &Digest,
        dst: &mut [u8],
    ) -> Result<(), SharedStorageError> {
        read_ranges(&self.file, load.bytes.ranges(), dst).map_err(|(offset, source)| {
            SharedStorageError::Read {
                path: self.path.clone(),
                offset,
                source,
            }
        })?;
        if digest(dst) != *expected {
            return Err(self.mismatch(format!(
                "{} differs from the root's copy",
                tensor_text(self.layout.tensors().get(load.tensor), load)
            )));
        }
        Ok(())
    }

    /// As [`LocalModel::load_resident`] for a node under a memory budget: the records of
    /// streamed ops go to `spill` (a slice cache). A fresh cache is filled from the model file;
    /// a reused one is read back and each record checked against its digest
    /// ([`SharedStorageError::StaleCache`] if one differs; the caller deletes the cache and
    /// loads again).
    pub fn load_with_cache(
        &self,
        records_of: &NodeRecords<'_>,
        executor: &mut Executor,
        spill: &mut SpillFile,
        progress: &mut dyn FnMut(u64),
    ) -> Result<LocalLoad, SharedStorageError> {
        let NodeRecords {
            plan,
            node,
            node_index,
            request,
        } = *records_of;
        let started = Instant::now();
        let (mut records, mut bytes) = (0u64, 0u64);
        let mut chunk = vec![0u8; COPY_CHUNK];
        for (load, expected) in plan.node_loads(node_index).zip(&request.records) {
            records += 1;
            bytes += load.header.n_bytes;
            progress(bytes);
            let Some(op) = spill.spills(node, &load.target) else {
                let dst = executor.weight_mut(&load.target)?;
                self.read_verified(load, expected, dst)?;
                continue;
            };
            let mut hasher = blake3::Hasher::new();
            let base = load.target.offset;
            if spill.is_reused() {
                let mut at = 0u64;
                while at < load.header.n_bytes {
                    let n = (load.header.n_bytes - at).min(COPY_CHUNK as u64) as usize;
                    spill.read(op, base + at, &mut chunk[..n])?;
                    hasher.update(&chunk[..n]);
                    at += n as u64;
                }
                if finish(&hasher) != *expected {
                    return Err(SharedStorageError::StaleCache {
                        path: spill.path().to_path_buf(),
                        what: tensor_text(self.layout.tensors().get(load.tensor), load),
                    });
                }
                continue;
            }
            let mut at = 0u64;
            for range in load.bytes.ranges() {
                let mut from = range.start;
                while from < range.end {
                    let n = (range.end - from).min(COPY_CHUNK as u64) as usize;
                    self.file
                        .read_exact_at(&mut chunk[..n], from)
                        .map_err(|source| SharedStorageError::Read {
                            path: self.path.clone(),
                            offset: from,
                            source,
                        })?;
                    hasher.update(&chunk[..n]);
                    spill.write(op, base + at, &chunk[..n])?;
                    from += n as u64;
                    at += n as u64;
                }
            }
            if finish(&hasher) != *expected {
                return Err(self.mismatch(format!(
                    "{} differs from the root's copy",
                    tensor_text(self.layout.tensors().get(load.tensor), load)
                )));
            }
        }
        // Nothing else names an op: make sure every streamed op was filled.
        debug_assert!(
            plan.node_loads(node_index)
                .all(|l| op_number(node, &l.target).is_some())
        );
        Ok(LocalLoad {
            records,
            bytes,
            elapsed: started.elapsed(),
        })
    }

    /// Loads node `node_index`'s records of `plan` straight into `executor`'s weights, each
    /// verified against `request`'s digest as it is read.
    pub fn load_resident(
        &self,
        records_of: &NodeRecords<'_>,
        executor: &mut Executor,
        progress: &mut dyn FnMut(u64),
    ) -> Result<LocalLoad, SharedStorageError> {
        let NodeRecords {
            plan,
            node_index,
            request,
            ..
        } = *records_of;
        let started = Instant::now();
        let (mut records, mut bytes) = (0u64, 0u64);
        for (load, expected) in plan.node_loads(node_index).zip(&request.records) {
            let dst = executor.weight_mut(&load.target)?;
            self.read_verified(load, expected, dst)?;
            records += 1;
            bytes += load.header.n_bytes;
            progress(bytes);
        }
        Ok(LocalLoad {
            records,
            bytes,
            elapsed: started.elapsed(),
        })
    }
}
