//! Shared by the integration tests: golden paths and small seed inputs cut from the golden
//! streams (also the fuzz seed corpora, see `fuzz_corpus.rs`).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use airllama_net::fuzzing::root_stream;

pub fn golden(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/golden")).join(rel)
}

pub fn read_golden(rel: &str) -> Vec<u8> {
    let p = golden(rel);
    fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Seeds per fuzz target, cut from one recorded root→worker stream.
pub struct Seeds {
    pub handshake: Vec<u8>,
    pub net_config: Vec<u8>,
    /// Net config followed by node config (what `fuzzing::node_config` takes).
    pub node_config: Vec<u8>,
    /// Headers of the first weight record and the terminator.
    pub weight_records: Vec<Vec<u8>>,
    /// The first two control packets and the stop packet.
    pub control_packets: Vec<u8>,
    /// A shortened session: everything up to the node config, the weight terminator (no
    /// weights), the last batch-1 forward with its data, and the stop packet.
    pub root_stream: Vec<u8>,
}

pub fn seeds(stream: &[u8]) -> Seeds {
    let l = root_stream(stream).unwrap();
    let first_record = l.weight_records[0];
    let end_marker = l.inference_offset - 4;
    let last = *l.forwards.iter().rev().find(|f| f.2 == 1).unwrap();
    let (stop_at, _) = l.stop.unwrap();
    let mut short = stream[..l.weights_offset].to_vec();
    short.extend_from_slice(&stream[end_marker..l.inference_offset]);
    short.extend_from_slice(&stream[last.0..last.0 + last.3 as usize]);
    short.extend_from_slice(&stream[stop_at..stop_at + 8]);
    let mut control = Vec::new();
    for f in l.forwards.iter().take(2) {
        control.extend_from_slice(&stream[f.0..f.0 + 8]);
    }
    control.extend_from_slice(&stream[stop_at..stop_at + 8]);
    Seeds {
        handshake: stream[..l.handshake_len].to_vec(),
        net_config: stream[l.net_config_offset..l.node_config_offset].to_vec(),
        node_config: stream[l.net_config_offset..l.weights_offset].to_vec(),
        weight_records: vec![
            stream[first_record.0..first_record.1].to_vec(),
            stream[end_marker..l.inference_offset].to_vec(),
        ],
        control_packets: control,
        root_stream: short,
    }
}
