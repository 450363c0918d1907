//! The weight distribution plan: for every node, which bytes of the `.m` file form which op's
//! weight, with the record header dllama's root sends, in the order it sends them.
//!
//! The tensors, their byte ranges and each node's slice come from `airllama_io`'s layout table
//! ([`ModelLayout`], [`airllama_io::layout::NodeSplit`]); this module does not re-derive any
//! offset. It ties each slice to an op of the node's config (the name and layer index the
//! record carries, checked with the codec's [`NodeConfig::check_weight`]) and proves the plan
//! complete: every op that has a weight is filled exactly once, without gaps or overlaps.
use std::collections::HashMap;

use airllama_io::layout::{LayoutError, ModelLayout, StridedRange, TensorRole};
use airllama_net::{DecodeError, NodeConfig, WeightHeader, WeightMessage, WeightTarget};

use super::LlmGraph;

/// Why a weight plan cannot be made or used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WeightPlanError {
    /// The layout was made from a different model than the graph.
    #[error("the layout describes a different model than the graph was built for")]
    ModelMismatch,
    /// The layout refuses the graph's node count.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A tensor's slice names no op of the node, or does not fit the op's weight.
    #[error("node {node}: weight {name}[{index}] does not fit its op: {source}")]
    NoOp {
        /// The node.
        node: u32,
        /// Op name.
        name: &'static str,
        /// Op (layer) index.
        index: u32,
        /// What the codec's check said.
        source: DecodeError,
    },
    /// dllama computes the expert offset field in 32 bits; this one would wrap.
    #[error("weight {name}[{index}]: expert offset {offset} does not fit dllama's 32-bit field")]
    OffsetOverflow {
        /// Op name.
        name: &'static str,
        /// Op index.
        index: u32,
        /// The offset.
        offset: u64,
    },
    /// An op's weight would be left partly unfilled, or filled twice.
    #[error(
        "node {node}: op {name}[{index}] weight of {expected} bytes is not exactly covered by its records (first gap or overlap at byte {at})"
    )]
    Coverage {
        /// The node.
        node: u32,
        /// Op name.
        name: String,
        /// Op index.
        index: u32,
        /// Bytes of the op's weight.
        expected: u64,
        /// Where coverage breaks.
        at: u64,
    },
    /// The file is shorter than the layout it was planned with.
    #[error("the model file has {actual} bytes, the plan reads up to byte {needed}")]
    FileTooShort {
        /// One past the last byte the load reads.
        needed: u64,
        /// Bytes available.
        actual: u64,
    },
    /// No such node in the plan (or the root, which receives nothing over the network).
    #[error("node {node} receives no weight stream (nodes: {n_nodes}; the root loads locally)")]
    NotAWorker {
        /// The node asked for.
        node: u32,
        /// Nodes in the plan.
        n_nodes: u32,
    },
}

/// One node's part of one tensor: the record dllama sends (or, for the root, loads locally)
/// and the file bytes that form its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightLoad {
    /// The receiving node (0 = root).
    pub node: u32,
    /// Index into [`ModelLayout::tensors`].
    pub tensor: usize,
    /// The tensor's role.
    pub role: TensorRole,
    /// The record header: op name, op (layer) index, offset into the op's weight (expert ×
    /// slice bytes for MoE experts, else 0) and byte count.
    pub header: WeightHeader,
    /// Where the data is in the file; the ranges concatenated in order are the data (a column
    /// slice is one range per matrix row).
    pub bytes: StridedRange,
    /// The op it fills in the node's config (segment, position, offset, bytes).
    pub target: WeightTarget,
}

impl WeightLoad {
    /// Appends the data (the selected file bytes, concatenated) to `out`.
    pub fn gather(&self, file: &[u8], out: &mut Vec<u8>) -> Result<(), WeightPlanError> {
        self.bytes
            .gather_into(file, out)
            .ok_or(WeightPlanError::FileTooShort {
                needed: self.bytes.end(),
                actual: file.len() as u64,
            })
    }

    /// Appends the record header (`u32 nameLen, name+NUL, u32 opIndex, u64 offset, u64 nBytes`);
    /// a root that sends straight from a memory map writes this, then [`WeightLoad::bytes`]'
    /// ranges of the file in order.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        WeightMessage::Record(self.header.clone()).encode(out);
    }

    /// Appends the whole record as dllama's root writes it: header, then the data.
    pub fn encode_record(&self, file: &[u8], out: &mut Vec<u8>) -> Result<(), WeightPlanError> {
        if self.bytes.end() > file.len() as u64 {
            return Err(WeightPlanError::FileTooShort {
                needed: self.bytes.end(),
                actual: file.len() as u64,
            });
        }
        self.encode_header(out);
        self.gather(file, out)
    }
}

/// Every weight load of a graph, in dllama's order: tensors in file order, and for each tensor
/// the root first, then the workers by node index (`loadRowMatmulSlices` and friends).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightPlan {
    n_nodes: u32,
    loads: Vec<WeightLoad>,
}

impl WeightPlan {
    /// Plans the weights of `graph` from the layout table of its model file.
    pub fn new(graph: &LlmGraph, layout: &ModelLayout) -> Result<WeightPlan, WeightPlanError> {
        if layout.config().with_max_seq_len(graph.params.max_seq_len) != graph.config {
            return Err(WeightPlanError::ModelMismatch);
        }
        let n_nodes = graph.params.n_nodes;
        let split = layout.node_split(n_nodes)?;
        let mut loads = Vec::new();
        for tensor in 0..layout.tensors().len() {
            for node in 0..n_nodes {
                let Some(slice) = split.slice(tensor, node) else {
                    continue;
                };
                let entry = &layout.tensors()[tensor];
                let name = entry.role.op_name();
                let index = entry.layer;
                // dllama: `const NnUint offset = expertIndex * slice->sliceSize.nBytes`.
                if slice.op_offset > u64::from(u32::MAX) {
                    return Err(WeightPlanError::OffsetOverflow {
                        name,
                        index,
                        offset: slice.op_offset,
                    });
                }
                let header = WeightHeader {
                    name: name.into(),
                    op_index: index,
                    offset: slice.op_offset,
                    n_bytes: slice.bytes.total_bytes(),
                };
                let config = graph
                    .nodes
                    .get(node as usize)
                    .ok_or(WeightPlanError::NotAWorker { node, n_nodes })?;
                let target =
                    config
                        .check_weight(&header)
                        .map_err(|source| WeightPlanError::NoOp {
                            node,
                            name,
                            index,
                            source,
                        })?;
                loads.push(WeightLoad {
                    node,
                    tensor,
                    role: entry.role,
                    header,
                    bytes: slice.bytes,
                    target,
                });
            }
        }
        let plan = WeightPlan { n_nodes, loads };
        for config in &graph.nodes {
            plan.check_coverage(config)?;
        }
        Ok(plan)
    }

    /// Every op of `config` with a weight is covered by this node's loads exactly once.
    fn check_coverage(&self, config: &NodeConfig) -> Result<(), WeightPlanError> {
        let node = config.node_index;
        let mut pieces: HashMap<(u32, u32), Vec<(u64, u64)>> = HashMap::new();
        for load in self.node_loads(node) {
            pieces
                .entry((load.target.segment, load.target.op))
                .or_default()
                .push((load.target.offset, load.target.n_bytes));
        }
        for (segment, position, op) in config.ops() {
            let expected = op.weight_size.n_bytes();
            let mut parts = pieces.remove(&(segment, position)).unwrap_or_default();
            parts.sort_unstable();
            // Sorted pieces tile [0, expected) iff each starts where the previous ended and
            // they end at `expected`; a gap or an overlap stops the walk early.
            let mut at = 0u64;
            let mut tiled = true;
            for (offset, n_bytes) in parts {
                if offset != at {
                    tiled = false;
                    break;
                }
                at += n_bytes;
            }
            if !tiled || at != expected {
                return Err(WeightPlanError::Coverage {
                    node,
                    name: op.name.clone(),
                    index: op.index,
                    expected,
                    at,
                });
            }
        }
        Ok(())
    }

    /// Nodes the plan covers.
    pub fn n_nodes(&self) -> u32 {
        self.n_nodes
    }

    /// All loads in dllama's order.
    pub fn loads(&self) -> &[WeightLoad] {
        &self.loads
    }

    /// Node `node`'s loads, in the order it receives them (for a worker: the records on its
    /// connection; for the root: the order it loads its own slices).
    pub fn node_loads(&self, node: u32) -> impl Iterator<Item = &WeightLoad> + '_ {
        self.loads.iter().filter(move |l| l.node == node)
    }

    /// Bytes of weight data node `node` holds.
    pub fn node_bytes(&self, node: u32) -> u64 {
        self.node_loads(node).map(|l| l.header.n_bytes).sum()
    }

    /// Appends worker node `node`'s whole weight stream as dllama's root sends it: every record
    /// with its data, then the zero terminator.
    pub fn encode_node_stream(
        &self,
        node: u32,
        file: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WeightPlanError> {
        if node == 0 || node >= self.n_nodes {
            return Err(WeightPlanError::NotAWorker {
                node,
                n_nodes: self.n_nodes,
            });
        }
        for load in self.node_loads(node) {
            load.encode_record(file, out)?;
        }
        WeightMessage::End.encode(out);
        Ok(())
    }
}
