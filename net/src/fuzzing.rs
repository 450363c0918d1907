//! Round-trip oracles: decode untrusted bytes, re-encode what decoded, and require the exact
//! input bytes back. Decode errors are fine (that is the point of fuzzing a decoder); a panic is
//! a bug, and so is a successful decode whose re-encoding differs. Each fuzz target calls one
//! of these; the unit tests run them over the golden streams.

use alloc::vec::Vec;

use crate::codec::Reader;
use crate::config::{NetConfig, NodeConfig};
use crate::error::DecodeError;
use crate::messages::{ControlPacket, Handshake, WeightMessage, WeightRecord, decode_ack};
use crate::plan::SyncPlan;

fn same(what: &str, decoded_from: &[u8], encoded: &[u8]) {
    assert!(
        decoded_from == encoded,
        "{what}: re-encoding differs from the decoded bytes"
    );
}

/// Handshake at the start of `data`; returns the bytes it used.
pub fn handshake(data: &[u8]) -> Result<usize, DecodeError> {
    let (h, used) = Handshake::decode_prefix(data)?;
    let mut out = Vec::new();
    h.encode(&mut out);
    same("handshake", data.get(..used).unwrap_or(&[]), &out);
    Ok(used)
}

/// Net config message at the start of `data`.
pub fn net_config(data: &[u8]) -> Result<usize, DecodeError> {
    let (net, used) = NetConfig::decode_prefix(data)?;
    let mut out = Vec::new();
    net.encode(&mut out);
    same("net config", data.get(..used).unwrap_or(&[]), &out);
    Ok(used)
}

/// A net config message followed by a node config message; returns the bytes both used.
pub fn node_config(data: &[u8]) -> Result<usize, DecodeError> {
    let (net, net_len) = NetConfig::decode_prefix(data)?;
    let rest = data.get(net_len..).unwrap_or(&[]);
    let (node, used) = NodeConfig::decode_prefix(rest, &net)?;
    let mut out = Vec::new();
    node.encode(&mut out);
    same("node config", rest.get(..used).unwrap_or(&[]), &out);
    Ok(net_len + used)
}

/// One weight record header (or the terminator) at the start of `data`.
pub fn weight_record(data: &[u8]) -> Result<usize, DecodeError> {
    let (message, used) = WeightMessage::decode_prefix(data)?;
    let mut out = Vec::new();
    message.encode(&mut out);
    same("weight record", data.get(..used).unwrap_or(&[]), &out);
    Ok(used)
}

/// One shared-storage message (see [`crate::shared_storage`]): the first byte picks which
/// (greeting, root reply, load request, load result), the rest is decoded as it.
pub fn shared_storage(data: &[u8]) -> Result<usize, DecodeError> {
    use crate::shared_storage::{LoadRequest, LoadResult, RootReply, WorkerGreeting};
    let Some((&kind, rest)) = data.split_first() else {
        return Ok(0);
    };
    let mut out = Vec::new();
    let used = match kind % 4 {
        0 => {
            let (m, used) = WorkerGreeting::decode_prefix(rest)?;
            m.encode(&mut out);
            used
        }
        1 => {
            let (m, used) = RootReply::decode_prefix(rest)?;
            m.encode(&mut out);
            used
        }
        2 => {
            let (m, used) = LoadRequest::decode_prefix(rest)?;
            m.encode(&mut out);
            used
        }
        _ => {
            let (m, used) = LoadResult::decode_prefix(rest)?;
            m.encode(&mut out);
            used
        }
    };
    same(
        "shared-storage message",
        rest.get(..used).unwrap_or(&[]),
        &out,
    );
    Ok(used + 1)
}

/// Control packets: `data` cut into 8-byte packets (a short tail is a truncation error).
pub fn control_packets(data: &[u8]) -> Result<usize, DecodeError> {
    for packet in data.chunks(ControlPacket::WIRE_SIZE) {
        let decoded = ControlPacket::decode(packet)?;
        same("control packet", packet, &decoded.to_bytes());
    }
    Ok(data.len())
}

/// What [`root_stream`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootStreamLayout {
    /// Bytes of the handshake.
    pub handshake_len: usize,
    /// Offset of the net config message (its ACK).
    pub net_config_offset: usize,
    /// Offset of the node config message (its ACK).
    pub node_config_offset: usize,
    /// Offset of the first weight record.
    pub weights_offset: usize,
    /// `(record offset, data offset, n_bytes)` of every weight record.
    pub weight_records: Vec<(usize, usize, u64)>,
    /// Offset of the first control packet.
    pub inference_offset: usize,
    /// `(offset, position, batch, in bytes incl. packet, out bytes)` of every forward.
    pub forwards: Vec<(usize, u32, u32, u64, u64)>,
    /// `(offset, position)` of the stop packet, if the stream has one.
    pub stop: Option<(usize, u32)>,
    /// Bytes each worker↔worker connection carries per direction over the whole session
    /// (sent == received for `SYNC_NODE_SLICES`): `(connection, sent, received)`.
    pub peer_totals: Vec<(u32, u64, u64)>,
}

/// The config validator: a whole root→worker stream as a worker decodes it — handshake,
/// root-ready ACK, net config, node config, weight records (each checked against the node
/// config before its data is taken), then control packets, each followed by the forward's
/// bytes from the [`SyncPlan`]. Every message must re-encode to its own bytes; the stream must
/// end right after the stop packet.
pub fn root_stream(data: &[u8]) -> Result<RootStreamLayout, DecodeError> {
    let mut layout = RootStreamLayout::default();
    let mut at = handshake(data)?;
    let (hello, _) = Handshake::decode_prefix(data)?;
    layout.handshake_len = at;
    let rest = |at: usize| data.get(at..).unwrap_or(&[]);
    decode_ack(rest(at).get(..4).unwrap_or(rest(at)))?;
    at += 4;
    layout.net_config_offset = at;
    let (net, used) = NetConfig::decode_prefix(rest(at))?;
    net_config(rest(at))?;
    at += used;
    layout.node_config_offset = at;
    let (node, used) = NodeConfig::decode_prefix(rest(at), &net)?;
    let mut out = Vec::new();
    node.encode(&mut out);
    same("node config", rest(at).get(..used).unwrap_or(&[]), &out);
    if node.node_index != hello.node_index() || net.n_nodes != hello.n_workers + 1 {
        return Err(DecodeError::Inconsistent {
            context: "node config vs handshake",
        });
    }
    at += used;
    layout.weights_offset = at;
    loop {
        let (record, used) = WeightRecord::decode_prefix(rest(at), &node)?;
        let Some(record) = record else {
            weight_record(rest(at))?;
            at += used;
            break;
        };
        let mut out = Vec::new();
        record.encode(&mut out);
        same("weight record", rest(at).get(..used).unwrap_or(&[]), &out);
        layout
            .weight_records
            .push((at, at + used - record.data.len(), record.header.n_bytes));
        at += used;
    }
    layout.inference_offset = at;
    let plan = SyncPlan::new(&net, &node)?;
    let mut peer_totals: Vec<(u32, u64, u64)> =
        (1..plan.n_connections()).map(|c| (c, 0, 0)).collect();
    loop {
        let mut r = Reader::new(rest(at));
        let packet = ControlPacket::decode(r.take(ControlPacket::WIRE_SIZE, "control packet")?)?;
        control_packets(rest(at).get(..ControlPacket::WIRE_SIZE).unwrap_or(&[]))?;
        packet.check(&net, &node)?;
        if packet.is_stop() {
            layout.stop = Some((at, packet.position));
            at += ControlPacket::WIRE_SIZE;
            break;
        }
        let (out_bytes, in_bytes) = plan.forward_bytes(packet.batch_size, 0)?;
        let len = usize::try_from(in_bytes).unwrap_or(usize::MAX);
        r.take(len, "forward data")?;
        layout.forwards.push((
            at,
            packet.position,
            packet.batch_size,
            in_bytes + ControlPacket::WIRE_SIZE as u64,
            out_bytes,
        ));
        for total in peer_totals.iter_mut() {
            let (sent, received) = plan.forward_bytes(packet.batch_size, total.0)?;
            total.1 += sent;
            total.2 += received;
        }
        at += r.position();
    }
    layout.peer_totals = peer_totals;
    Reader::new(rest(at)).finish("root stream")?;
    Ok(layout)
}
