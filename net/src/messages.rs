//! The small messages: handshake, ACK, weight record headers and control packets.

use alloc::string::String;
use alloc::vec::Vec;

use crate::codec::{ACK, Reader, put_string, put_u32, put_u64};
use crate::config::{NetConfig, NodeConfig, WeightHeader};
use crate::error::DecodeError;
use crate::limits::{MAX_HOST_LEN, MAX_NAME_LEN, MAX_WORKERS};

/// Bytes of an ACK.
pub const ACK_SIZE: usize = 4;

/// Appends dllama's ACK word.
pub fn encode_ack(out: &mut Vec<u8>) {
    put_u32(out, ACK);
}

/// Checks that `bytes` is exactly one ACK.
pub fn decode_ack(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(bytes);
    r.ack("ACK")?;
    r.finish("ACK")
}

/// Another worker's listening address, as the root lists it in the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// Host as given to the root's `--workers` (an IPv4 address or a name).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

/// The root's greeting to worker `worker_index`: `u32 nSockets, u32 workerIndex`, then for each
/// other worker in `--workers` order `u32 hostLen, host+NUL, u32 port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Number of workers (the root's socket count, 1..=[`MAX_WORKERS`]); nodes = workers + 1.
    pub n_workers: u32,
    /// This worker's position in the root's list (`< n_workers`); its node index is one more.
    pub worker_index: u32,
    /// The other workers, `n_workers - 1` of them, in list order without this worker.
    pub peers: Vec<PeerAddress>,
}

impl Handshake {
    /// dllama's node index of this worker (the root is node 0).
    pub fn node_index(&self) -> u32 {
        self.worker_index + 1
    }

    /// The node index of `peers[i]`: the list skips this worker.
    pub fn peer_node_index(&self, i: u32) -> u32 {
        if i < self.worker_index {
            i.saturating_add(1)
        } else {
            i.saturating_add(2)
        }
    }

    /// Whether this worker connects to `peers[i]` (true) or accepts it (false): dllama's
    /// `NnNetwork::serve` connects to the workers listed after itself and accepts the ones
    /// listed before, in list order.
    pub fn connects_to_peer(&self, i: u32) -> bool {
        i >= self.worker_index
    }

    /// Decodes an exact handshake; trailing bytes are an error.
    pub fn decode(bytes: &[u8]) -> Result<Handshake, DecodeError> {
        let (h, used) = Handshake::decode_prefix(bytes)?;
        Reader::new(bytes.get(used..).unwrap_or(&[])).finish("handshake")?;
        Ok(h)
    }

    /// Decodes a handshake from the start of `bytes`; returns it and the bytes it used.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(Handshake, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let n_workers = r.count(MAX_WORKERS, "handshake nSockets")?;
        if n_workers == 0 {
            return Err(DecodeError::Inconsistent {
                context: "handshake nSockets",
            });
        }
        let worker_index = r.u32("handshake workerIndex")?;
        if worker_index >= n_workers {
            return Err(DecodeError::IndexOutOfRange {
                context: "handshake workerIndex",
                index: worker_index.into(),
                count: n_workers.into(),
            });
        }
        let mut peers = Vec::new();
        for _ in 1..n_workers {
            let host = r.string(MAX_HOST_LEN, "handshake host")?;
            let port = r.u32("handshake port")?;
            let Ok(port) = u16::try_from(port) else {
                return Err(DecodeError::LimitExceeded {
                    context: "handshake port",
                    value: port.into(),
                    limit: u16::MAX.into(),
                });
            };
            peers.push(PeerAddress { host, port });
        }
        Ok((
            Handshake {
                n_workers,
                worker_index,
                peers,
            },
            r.position(),
        ))
    }

    /// Appends the handshake as dllama's `NnNetwork::connect` sends it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.n_workers);
        put_u32(out, self.worker_index);
        for peer in &self.peers {
            put_string(out, &peer.host);
            put_u32(out, peer.port.into());
        }
    }
}

/// One item of the weight stream: a record header (its data follows on the wire) or the
/// terminator (`u32 0`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WeightMessage {
    /// A record; `n_bytes` of data follow. Check it with [`NodeConfig::check_weight`] before
    /// reading the data.
    Record(WeightHeader),
    /// The zero-length terminator; the worker answers with an ACK.
    End,
}

impl WeightMessage {
    /// Decodes a record header or the terminator from the start of `bytes`; returns it and the
    /// bytes it used (the record's data is not included).
    pub fn decode_prefix(bytes: &[u8]) -> Result<(WeightMessage, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let name_len = r.count(MAX_NAME_LEN, "weight name length")?;
        if name_len == 0 {
            return Ok((WeightMessage::End, r.position()));
        }
        let name_bytes = r.take(name_len as usize, "weight name")?;
        let name = crate::codec::decode_c_string(name_bytes, "weight name")?;
        let op_index = r.u32("weight op index")?;
        let offset = r.u64("weight offset")?;
        let n_bytes = r.u64("weight nBytes")?;
        Ok((
            WeightMessage::Record(WeightHeader {
                name,
                op_index,
                offset,
                n_bytes,
            }),
            r.position(),
        ))
    }

    /// Appends the header (or terminator) as dllama's `NnRootWeightLoader` sends it; the caller
    /// appends the data.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            WeightMessage::End => put_u32(out, 0),
            WeightMessage::Record(h) => {
                put_string(out, &h.name);
                put_u32(out, h.op_index);
                put_u64(out, h.offset);
                put_u64(out, h.n_bytes);
            }
        }
    }
}

/// A whole weight record with its data, borrowed from a buffer (tests, fuzzing, replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightRecord<'a> {
    /// The header.
    pub header: WeightHeader,
    /// Its `n_bytes` of data.
    pub data: &'a [u8],
}

impl<'a> WeightRecord<'a> {
    /// Decodes one record or the terminator (`None`) from the start of `bytes`, checked against
    /// `node` before the data is taken; returns it and the bytes used.
    pub fn decode_prefix(
        bytes: &'a [u8],
        node: &NodeConfig,
    ) -> Result<(Option<WeightRecord<'a>>, usize), DecodeError> {
        let (message, used) = WeightMessage::decode_prefix(bytes)?;
        let header = match message {
            WeightMessage::End => return Ok((None, used)),
            WeightMessage::Record(h) => h,
        };
        node.check_weight(&header)?;
        let mut r = Reader::new(bytes.get(used..).unwrap_or(&[]));
        // check_weight bounded n_bytes by the op's weight size, itself < 2^32 elements.
        let len = usize::try_from(header.n_bytes).map_err(|_| DecodeError::LimitExceeded {
            context: "weight nBytes",
            value: header.n_bytes,
            limit: usize::MAX as u64,
        })?;
        let data = r.take(len, "weight data")?;
        Ok((Some(WeightRecord { header, data }), used + len))
    }

    /// Appends header and data.
    pub fn encode(&self, out: &mut Vec<u8>) {
        WeightMessage::Record(self.header.clone()).encode(out);
        out.extend_from_slice(self.data);
    }
}

/// dllama's `LlmControlPacket`: `u32 position, u32 batchSize`. Batch 0 = stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    /// Position of the first batch item.
    pub position: u32,
    /// Batch items in this forward; 0 means stop (the position is then the last forward's).
    pub batch_size: u32,
}

impl ControlPacket {
    /// Bytes on the wire.
    pub const WIRE_SIZE: usize = 8;

    /// True for the stop packet.
    pub fn is_stop(&self) -> bool {
        self.batch_size == 0
    }

    /// Decodes exactly 8 bytes.
    pub fn decode(bytes: &[u8]) -> Result<ControlPacket, DecodeError> {
        let mut r = Reader::new(bytes);
        let position = r.u32("control position")?;
        let batch_size = r.u32("control batch size")?;
        r.finish("control packet")?;
        Ok(ControlPacket {
            position,
            batch_size,
        })
    }

    /// The 8 wire bytes.
    pub fn to_bytes(&self) -> [u8; 8] {
        let mut out = [0u8; 8];
        let (a, b) = out.split_at_mut(4);
        a.copy_from_slice(&self.position.to_le_bytes());
        b.copy_from_slice(&self.batch_size.to_le_bytes());
        out
    }

    /// Appends the 8 wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_bytes());
    }

    /// Checks a forward packet against the configs: `batch_size <= nBatches` and
    /// `position + batch_size <= seq_len` of the node's attention and rope ops. The stop packet
    /// always passes.
    pub fn check(&self, net: &NetConfig, node: &NodeConfig) -> Result<(), DecodeError> {
        if self.is_stop() {
            return Ok(());
        }
        if self.batch_size > net.n_batches {
            return Err(DecodeError::LimitExceeded {
                context: "control batch size",
                value: self.batch_size.into(),
                limit: net.n_batches.into(),
            });
        }
        if let Some(seq_len) = node.seq_len() {
            let end = u64::from(self.position) + u64::from(self.batch_size);
            if end > u64::from(seq_len) {
                return Err(DecodeError::LimitExceeded {
                    context: "control position + batch size",
                    value: end,
                    limit: seq_len.into(),
                });
            }
        }
        Ok(())
    }
}
