//! The per-forward sync data plan: which bytes of which pipe each node sends to and reads from
//! each connection, in wire order. The executor drives its sockets with it and a replay tool
//! predicts stream sizes with it.
//!
//! dllama (`NnNetworkNodeSynchronizer::sync`) runs, after the ops of each segment that has
//! syncs, for each sync of that segment, for each batch item `b` of the forward:
//!
//! * `SYNC_WITH_ROOT`: the root writes row `b` of the pipe to every worker; a worker reads it
//!   from the root.
//! * `SYNC_NODE_SLICES`: every node writes its slice (`row / nNodes` bytes at `slice × node`)
//!   of row `b` to every connection, then reads the sender's slice from every connection.
//! * `SYNC_NODE_SLICES_EXCEPT_ROOT`: a worker writes its slice to the root only; the root reads
//!   one slice from every worker.
//!
//! Connections are numbered as dllama numbers its sockets: on a worker 0 is the root and
//! `1..nNodes-1` the other workers in the root's `--workers` order; on the root `i` is worker
//! `i`. Connection `c` of node `n` leads to node `c` when `c < n`, else to node `c + 1`.

use alloc::vec::Vec;
use core::ops::Range;

use crate::config::{NetConfig, NodeConfig, SyncType};
use crate::error::DecodeError;

/// One sync of one segment, with its byte sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedSync {
    /// Segment whose ops run before this sync.
    pub segment: u32,
    /// Position of the sync in its segment.
    pub sync: u32,
    /// The pipe.
    pub pipe_index: u32,
    /// Who sends what.
    pub sync_type: SyncType,
    /// Bytes of one pipe row (`getBytes(type, x)`).
    pub row_bytes: u64,
    /// Bytes of one node's slice of a row (`row_bytes / nNodes`).
    pub slice_bytes: u64,
}

/// A byte range of a pipe sent to or read from one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Connection (socket index).
    pub connection: u32,
    /// Byte offset into the pipe.
    pub offset: u64,
    /// Bytes.
    pub len: u64,
}

/// One sync for one batch item: this node first writes [`SyncStep::sends`] (the same bytes to
/// every connection listed), then reads [`SyncStep::receives`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncStep {
    /// The sync.
    pub sync: PlannedSync,
    /// Batch item.
    pub batch_item: u32,
    node_index: u32,
    n_nodes: u32,
}

impl SyncStep {
    fn row_offset(&self) -> u64 {
        u64::from(self.batch_item) * self.sync.row_bytes
    }

    fn n_connections(&self) -> u32 {
        self.n_nodes - 1
    }

    /// What this node writes: the pipe bytes `(offset, len)` and the connections that each get
    /// a copy. Empty range when this node sends nothing in this step.
    pub fn sends(&self) -> (u64, u64, Range<u32>) {
        let row = self.row_offset();
        let is_root = self.node_index == 0;
        let mine = row + self.sync.slice_bytes * u64::from(self.node_index);
        match self.sync.sync_type {
            SyncType::WithRoot if is_root => (row, self.sync.row_bytes, 0..self.n_connections()),
            SyncType::WithRoot => (row, 0, 0..0),
            SyncType::NodeSlices => (mine, self.sync.slice_bytes, 0..self.n_connections()),
            SyncType::NodeSlicesExceptRoot if is_root => (mine, 0, 0..0),
            SyncType::NodeSlicesExceptRoot => (mine, self.sync.slice_bytes, 0..1),
        }
    }

    /// What this node reads, connection by connection, into which pipe bytes.
    pub fn receives(&self) -> impl Iterator<Item = Transfer> + use<> {
        let row = self.row_offset();
        let is_root = self.node_index == 0;
        let slice = self.sync.slice_bytes;
        let node_index = self.node_index;
        let (connections, whole_row) = match self.sync.sync_type {
            SyncType::WithRoot if is_root => (0..0, false),
            SyncType::WithRoot => (0..1, true),
            SyncType::NodeSlices => (0..self.n_connections(), false),
            SyncType::NodeSlicesExceptRoot if is_root => (0..self.n_connections(), false),
            SyncType::NodeSlicesExceptRoot => (0..0, false),
        };
        let row_bytes = self.sync.row_bytes;
        connections.map(move |connection| {
            if whole_row {
                Transfer {
                    connection,
                    offset: row,
                    len: row_bytes,
                }
            } else {
                let peer = connection_node(node_index, connection);
                Transfer {
                    connection,
                    offset: row + slice * u64::from(peer),
                    len: slice,
                }
            }
        })
    }
}

/// The node a connection of `node_index` leads to (dllama's `sliceIndex`).
pub fn connection_node(node_index: u32, connection: u32) -> u32 {
    if connection >= node_index {
        connection.saturating_add(1)
    } else {
        connection
    }
}

/// All syncs of a node, in execution order, validated against the net config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncPlan {
    node_index: u32,
    n_nodes: u32,
    n_batches: u32,
    syncs: Vec<PlannedSync>,
}

impl SyncPlan {
    /// Builds the plan. Fails when a sync's pipe is out of range, a pipe row is not a whole
    /// number of bytes per node for a slice sync, or a pipe is too small for `nBatches` rows.
    pub fn new(net: &NetConfig, node: &NodeConfig) -> Result<SyncPlan, DecodeError> {
        if node.node_index >= net.n_nodes {
            return Err(DecodeError::IndexOutOfRange {
                context: "nodeIndex",
                index: node.node_index.into(),
                count: net.n_nodes.into(),
            });
        }
        let mut syncs = Vec::new();
        if net.n_nodes > 1 {
            for (s, segment) in node.segments.iter().enumerate() {
                for (k, sync) in segment.syncs.iter().enumerate() {
                    let Some(pipe) = net.pipes.get(sync.pipe_index as usize) else {
                        return Err(DecodeError::IndexOutOfRange {
                            context: "sync pipe index",
                            index: sync.pipe_index.into(),
                            count: net.pipes.len() as u64,
                        });
                    };
                    let row_bytes = pipe.size.row_bytes();
                    if row_bytes == 0
                        || pipe.size.n_bytes() < row_bytes.saturating_mul(net.n_batches.into())
                    {
                        return Err(DecodeError::Inconsistent {
                            context: "sync pipe size",
                        });
                    }
                    let n_nodes = u64::from(net.n_nodes);
                    if sync.sync_type != SyncType::WithRoot && !row_bytes.is_multiple_of(n_nodes) {
                        return Err(DecodeError::Inconsistent {
                            context: "sync pipe row bytes not divisible by nNodes",
                        });
                    }
                    syncs.push(PlannedSync {
                        segment: s as u32,
                        sync: k as u32,
                        pipe_index: sync.pipe_index,
                        sync_type: sync.sync_type,
                        row_bytes,
                        slice_bytes: row_bytes / n_nodes,
                    });
                }
            }
        }
        Ok(SyncPlan {
            node_index: node.node_index,
            n_nodes: net.n_nodes,
            n_batches: net.n_batches,
            syncs,
        })
    }

    /// The syncs in execution order (empty on a single node: dllama then syncs nothing).
    pub fn syncs(&self) -> &[PlannedSync] {
        &self.syncs
    }

    /// Connections of this node (`nNodes - 1`).
    pub fn n_connections(&self) -> u32 {
        self.n_nodes - 1
    }

    /// The syncs of one segment.
    pub fn segment_syncs(&self, segment: u32) -> impl Iterator<Item = &PlannedSync> {
        self.syncs.iter().filter(move |s| s.segment == segment)
    }

    /// Every step of a forward with `batch_size` items, in wire order: sync by sync, batch
    /// item by batch item. Fails when `batch_size` is 0 or above `nBatches`.
    pub fn forward(
        &self,
        batch_size: u32,
    ) -> Result<impl Iterator<Item = SyncStep> + '_, DecodeError> {
        self.check_batch(batch_size)?;
        Ok(self
            .syncs
            .iter()
            .flat_map(move |&sync| self.steps_of(sync, batch_size)))
    }

    /// The steps of one sync for a forward with `batch_size` items (for an executor that runs
    /// the syncs of a segment after its ops).
    pub fn steps_of(
        &self,
        sync: PlannedSync,
        batch_size: u32,
    ) -> impl Iterator<Item = SyncStep> + use<> {
        let (node_index, n_nodes) = (self.node_index, self.n_nodes);
        (0..batch_size.min(self.n_batches)).map(move |batch_item| SyncStep {
            sync,
            batch_item,
            node_index,
            n_nodes,
        })
    }

    fn check_batch(&self, batch_size: u32) -> Result<(), DecodeError> {
        if batch_size == 0 || batch_size > self.n_batches {
            return Err(DecodeError::LimitExceeded {
                context: "forward batch size",
                value: batch_size.into(),
                limit: self.n_batches.into(),
            });
        }
        Ok(())
    }

    /// Bytes this node sends to and receives from `connection` during one forward:
    /// `(sent, received)`, excluding the control packet.
    pub fn forward_bytes(
        &self,
        batch_size: u32,
        connection: u32,
    ) -> Result<(u64, u64), DecodeError> {
        let mut sent = 0u64;
        let mut received = 0u64;
        for step in self.forward(batch_size)? {
            let (_, len, to) = step.sends();
            if to.contains(&connection) {
                sent += len;
            }
            received += step
                .receives()
                .filter(|t| t.connection == connection)
                .map(|t| t.len)
                .sum::<u64>();
        }
        Ok((sent, received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PipeConfig, SegmentConfig, Size3D, SyncConfig};
    use alloc::vec;

    fn plan(node_index: u32, sync_type: SyncType) -> SyncPlan {
        let net = NetConfig {
            n_batches: 4,
            n_nodes: 3,
            pipes: vec![PipeConfig {
                name: "ZQ".into(),
                size: Size3D::new_2d(crate::config::FloatType::F32, 4, 6).unwrap(),
            }],
            pre_syncs: vec![],
        };
        let node = NodeConfig {
            node_index,
            buffers: vec![],
            segments: vec![SegmentConfig {
                syncs: vec![SyncConfig {
                    pipe_index: 0,
                    sync_type,
                }],
                ops: vec![],
            }],
        };
        SyncPlan::new(&net, &node).unwrap()
    }

    #[test]
    fn connections_map_to_nodes_like_dllama_sockets() {
        // node 0 (root): connection i = worker i = node i + 1.
        assert_eq!([0, 1].map(|c| connection_node(0, c)), [1, 2]);
        // node 1: root, then node 2.
        assert_eq!([0, 1].map(|c| connection_node(1, c)), [0, 2]);
        // node 2: root, then node 1.
        assert_eq!([0, 1].map(|c| connection_node(2, c)), [0, 1]);
    }

    #[test]
    fn slices_per_node_and_batch_item() {
        // Rows of 24 bytes, 8 per node; batch item 2 starts at 48.
        let p = plan(2, SyncType::NodeSlices);
        let step = p.forward(3).unwrap().nth(2).unwrap();
        assert_eq!(step.batch_item, 2);
        assert_eq!(step.sends(), (48 + 16, 8, 0..2));
        let got: Vec<_> = step.receives().collect();
        assert_eq!(
            got,
            vec![
                Transfer {
                    connection: 0,
                    offset: 48,
                    len: 8
                },
                Transfer {
                    connection: 1,
                    offset: 56,
                    len: 8
                },
            ]
        );
        assert_eq!(p.forward_bytes(3, 1).unwrap(), (24, 24));

        let root = plan(0, SyncType::NodeSlicesExceptRoot);
        let step = root.forward(1).unwrap().next().unwrap();
        assert_eq!(step.sends().1, 0);
        assert_eq!(
            step.receives().map(|t| t.offset).collect::<Vec<_>>(),
            vec![8, 16]
        );
        let worker = plan(1, SyncType::NodeSlicesExceptRoot);
        let step = worker.forward(1).unwrap().next().unwrap();
        assert_eq!(step.sends(), (8, 8, 0..1));
        assert_eq!(step.receives().count(), 0);

        let root = plan(0, SyncType::WithRoot);
        assert_eq!(root.forward_bytes(2, 1).unwrap(), (48, 0));
        let worker = plan(2, SyncType::WithRoot);
        assert_eq!(worker.forward_bytes(2, 0).unwrap(), (0, 48));
        assert_eq!(worker.forward_bytes(2, 1).unwrap(), (0, 0));
        assert!(worker.forward(0).is_err());
        assert!(worker.forward(5).is_err());
    }
}
