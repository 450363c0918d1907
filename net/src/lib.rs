//! airllama-net: distributed-llama's wire protocol.
//!
//! The codec is sans-IO (`no_std` + `alloc`, no sockets, no clock): every message decodes from
//! and encodes to byte buffers, and every count, length, index and size is checked against
//! [`limits`] and against the rest of the config before anything is allocated.
//!
//! * [`Handshake`], ACK ([`encode_ack`], [`decode_ack`]) — connection setup.
//! * [`NetConfig`], [`NodeConfig`] — the graph a worker runs, with typed op configs
//!   ([`OpParams`]) and [`Size3D`]s that are consistent by construction.
//! * [`WeightMessage`] / [`WeightRecord`] — the weight stream, checked against the node config
//!   ([`NodeConfig::check_weight`]).
//! * [`ControlPacket`] — per-forward position and batch size (batch 0 = stop).
//! * [`SyncPlan`] — the exact bytes each node sends and reads per forward.
//! * [`fuzzing`] — decode → encode → compare oracles for tests and fuzz targets.
//!
//! With the `std` feature, [`transport`] runs the protocol over blocking TCP sockets as dllama
//! does (TCP_NODELAY, quick-ack, 4096-byte writes, turbo mode, the worker mesh).
//!
//! ```
//! use airllama_net::{ControlPacket, Handshake, PeerAddress};
//! let hello = Handshake { n_workers: 2, worker_index: 0,
//!     peers: vec![PeerAddress { host: "127.0.0.1".into(), port: 9999 }] };
//! let mut bytes = Vec::new();
//! hello.encode(&mut bytes);
//! assert_eq!(Handshake::decode(&bytes).unwrap(), hello);
//! let stop = ControlPacket::decode(&[47, 0, 0, 0, 0, 0, 0, 0]).unwrap();
//! assert!(stop.is_stop());
//! ```
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(clippy::indexing_slicing)]

extern crate alloc;

pub mod allow;
pub mod codec;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod limits;
pub mod messages;
pub mod plan;
pub mod shared_storage;
#[cfg(feature = "std")]
pub mod transport;

pub use codec::{ACK, Reader};
pub use config::{
    BufferConfig, EmptyConfig, FloatType, InvRmsConfig, MatmulConfig, MoeGateConfig,
    MultiHeadAttConfig, NetConfig, NodeConfig, OpCode, OpConfig, OpParams, OpQuantType, PipeConfig,
    PointerConfig, PointerSource, PointerType, RmsNormConfig, RopeConfig, RopeKind, RopeSlice,
    SegmentConfig, Size3D, SyncConfig, SyncType, WeightHeader, WeightTarget,
};
pub use error::DecodeError;
pub use messages::{
    ACK_SIZE, ControlPacket, Handshake, PeerAddress, WeightMessage, WeightRecord, decode_ack,
    encode_ack,
};
pub use plan::{PlannedSync, SyncPlan, SyncStep, Transfer, connection_node};
