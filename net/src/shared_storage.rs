//! airllama's shared-storage ("zero-data") extension of the dllama protocol: an airllama root
//! and an airllama worker that can both read the same model file skip the weight transfer.
//!
//! The extension must stay invisible to C++ dllama peers, which never receive a byte they
//! would not receive from their own kind. dllama's root writes its handshake the moment its
//! `connect` returns, and a dllama worker waits for that handshake without writing anything.
//! So the extension is negotiated in the one place neither C++ program can be: a root that
//! stays silent after connecting.
//!
//! 1. A root started with `--shared-storage` connects to every worker and, before its
//!    handshake, waits up to [`ROOT_GREETING_WAIT`] in silence.
//! 2. A worker started with `--model` that sees [`WORKER_SILENCE`] pass on a fresh root
//!    connection without a byte writes a [`WorkerGreeting`]. Any byte in that window (every
//!    C++ root, every airllama root without the flag) means the classic protocol.
//! 3. A root that received a greeting answers with a [`RootReply`]; a worker that does not
//!    greet (C++, or airllama without a model) simply receives the dllama handshake a little
//!    later than usual, and the classic weight transfer.
//! 4. The dllama handshake, mesh, net config and node config follow unchanged. Where dllama's
//!    weight records would come, the root of a shared-storage session sends one
//!    [`LoadRequest`]: the graph parameters and a digest of every record it would have sent.
//!    The worker reads its slices from its own file, proves every byte equal to the root's by
//!    those digests, and answers with a [`LoadResult`]. Control packets and syncs follow as
//!    in dllama.
//!
//! Everything here is sans-IO: encoders append to a `Vec`, decoders take a prefix of a buffer
//! and say how many more bytes they need ([`DecodeError::Truncated`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::codec::{Reader, put_u32, put_u64};
use crate::error::DecodeError;

/// The first 8 bytes of a [`WorkerGreeting`]. Its first word is not dllama's ACK, so a C++ root
/// that ever read it in place of the handshake ACK would fail loudly, not misread it.
pub const GREETING_MAGIC: [u8; 8] = *b"AIRLLAMA";
/// The first 8 bytes of a [`RootReply`].
pub const REPLY_MAGIC: [u8; 8] = *b"AIRLROOT";
/// The first word of a [`LoadRequest`]: larger than any weight-record name length
/// ([`crate::limits::MAX_NAME_LEN`]), so it can never be mistaken for a record.
pub const LOAD_REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"ZLD1");
/// The first word of a [`LoadResult`].
pub const LOAD_RESULT_MAGIC: u32 = u32::from_le_bytes(*b"ZLR1");
/// The version of this extension both ends speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// How long a worker with a model waits for the first byte of a fresh root connection before
/// it greets. A dllama root writes its handshake right after `connect` returns, so its bytes
/// arrive within a round trip; half a second is thousands of LAN round trips.
pub const WORKER_SILENCE: Duration = Duration::from_millis(500);
/// How often a worker that is still loading tells the root so ([`LoadResult::Progress`]).
pub const LOAD_PROGRESS_INTERVAL: Duration = Duration::from_secs(2);
/// How long a `--shared-storage` root waits for the greetings before it sends the dllama
/// handshake to the workers that did not greet (C++ workers, airllama workers without a model).
pub const ROOT_GREETING_WAIT: Duration = Duration::from_millis(2500);

/// Bytes of a [`WorkerGreeting`] and of a [`RootReply`].
pub const GREETING_SIZE: usize = 16;
/// Bytes of one record digest.
pub const DIGEST_SIZE: usize = 16;
/// Most weight records one node's load request may list: 65,536 × 16 bytes is 1 MiB, which
/// covers a node's share of a 235B mixture of experts (94 layers × 128 experts × 3 matrices).
pub const MAX_LOAD_RECORDS: u32 = 1 << 16;
/// Longest refusal text a worker may send.
pub const MAX_REASON_LEN: u32 = 4096;

/// A 128-bit digest of one weight record's data (BLAKE3, truncated): enough to tell a
/// re-quantised, half-copied or edited file from the root's, at 16 bytes per record.
pub type Digest = [u8; DIGEST_SIZE];

/// What a worker with a model file says to a silent root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerGreeting {
    /// The extension version the worker speaks.
    pub version: u32,
    /// Flags, reserved (0).
    pub flags: u32,
}

impl WorkerGreeting {
    /// The greeting of this build.
    pub const fn current() -> WorkerGreeting {
        WorkerGreeting {
            version: PROTOCOL_VERSION,
            flags: 0,
        }
    }

    /// Appends the 16 wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&GREETING_MAGIC);
        put_u32(out, self.version);
        put_u32(out, self.flags);
    }

    /// Decodes a greeting from the start of `bytes`.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(WorkerGreeting, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.array::<8>("greeting magic")? != GREETING_MAGIC {
            return Err(DecodeError::Inconsistent {
                context: "greeting magic",
            });
        }
        let version = r.u32("greeting version")?;
        let flags = r.u32("greeting flags")?;
        Ok((WorkerGreeting { version, flags }, r.position()))
    }
}

/// The root's answer to a [`WorkerGreeting`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootReply {
    /// The extension version the root speaks.
    pub version: u32,
    /// Whether this session loads from shared storage (a [`LoadRequest`] follows the node
    /// config instead of weight records).
    pub shared_storage: bool,
}

impl RootReply {
    /// Appends the 16 wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REPLY_MAGIC);
        put_u32(out, self.version);
        put_u32(out, u32::from(self.shared_storage));
    }

    /// Decodes a reply from the start of `bytes`.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(RootReply, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.array::<8>("root reply magic")? != REPLY_MAGIC {
            return Err(DecodeError::Inconsistent {
                context: "root reply magic",
            });
        }
        let version = r.u32("root reply version")?;
        let shared_storage = match r.u32("root reply mode")? {
            0 => false,
            1 => true,
            value => {
                return Err(DecodeError::UnknownValue {
                    context: "root reply mode",
                    value: value.into(),
                });
            }
        };
        Ok((
            RootReply {
                version,
                shared_storage,
            },
            r.position(),
        ))
    }
}

/// The root's request to load a node's weights from the worker's own model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadRequest {
    /// The root's batch capacity (dllama: 32).
    pub n_batches: u32,
    /// `--buffer-float-type` as a wire float type code (`F32` or `Q80`).
    pub sync_type: u32,
    /// `--max-seq-len` (0 = the model's).
    pub max_seq_len: u32,
    /// Bytes of the root's model file.
    pub file_size: u64,
    /// Digest of the root's model header bytes.
    pub header_digest: Digest,
    /// Digest of each weight record the root would have sent this node, in send order.
    pub records: Vec<Digest>,
}

impl LoadRequest {
    /// Appends the request.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, LOAD_REQUEST_MAGIC);
        put_u32(out, self.n_batches);
        put_u32(out, self.sync_type);
        put_u32(out, self.max_seq_len);
        put_u64(out, self.file_size);
        out.extend_from_slice(&self.header_digest);
        put_u32(out, self.records.len() as u32);
        for d in &self.records {
            out.extend_from_slice(d);
        }
    }

    /// Decodes a request from the start of `bytes`; the record count is checked against
    /// [`MAX_LOAD_RECORDS`] before any digest is read.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(LoadRequest, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u32("load request magic")? != LOAD_REQUEST_MAGIC {
            return Err(DecodeError::Inconsistent {
                context: "load request magic",
            });
        }
        let n_batches = r.u32("load request nBatches")?;
        let sync_type = r.u32("load request sync type")?;
        let max_seq_len = r.u32("load request max seq len")?;
        let file_size = r.u64("load request file size")?;
        let header_digest = r.array::<DIGEST_SIZE>("load request header digest")?;
        let n = r.count(MAX_LOAD_RECORDS, "load request record count")?;
        // One take for all digests: a streaming reader then asks for the whole table at once.
        let table = r.take(n as usize * DIGEST_SIZE, "load request record digests")?;
        let records = table
            .chunks_exact(DIGEST_SIZE)
            .map(|c| {
                let mut d = [0u8; DIGEST_SIZE];
                d.copy_from_slice(c);
                d
            })
            .collect();
        Ok((
            LoadRequest {
                n_batches,
                sync_type,
                max_seq_len,
                file_size,
                header_digest,
                records,
            },
            r.position(),
        ))
    }
}

/// The worker's answer to a [`LoadRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadResult {
    /// Every record was read from the worker's file and matched its digest.
    Loaded {
        /// Bytes read from the worker's storage.
        bytes_read: u64,
        /// Time the load took, in milliseconds.
        millis: u64,
    },
    /// The worker will not run this session; the text says why (it names the file and, for
    /// a mismatch, the first differing tensor).
    Refused {
        /// Why.
        reason: String,
    },
    /// Still loading (sent every few seconds of a long load, so that the root's
    /// `--net-timeout` measures silence, not load time); the final result follows.
    Progress {
        /// Bytes read and verified so far.
        bytes_done: u64,
    },
}

impl LoadResult {
    /// Appends the result.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, LOAD_RESULT_MAGIC);
        match self {
            LoadResult::Loaded { bytes_read, millis } => {
                put_u32(out, 0);
                put_u64(out, *bytes_read);
                put_u64(out, *millis);
            }
            LoadResult::Progress { bytes_done } => {
                put_u32(out, 2);
                put_u64(out, *bytes_done);
            }
            LoadResult::Refused { reason } => {
                put_u32(out, 1);
                let bytes = reason.as_bytes();
                let mut len = bytes.len().min(MAX_REASON_LEN as usize);
                while !reason.is_char_boundary(len) {
                    len -= 1;
                }
                put_u32(out, len as u32);
                out.extend_from_slice(bytes.get(..len).unwrap_or_default());
            }
        }
    }

    /// Decodes a result from the start of `bytes`.
    pub fn decode_prefix(bytes: &[u8]) -> Result<(LoadResult, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        if r.u32("load result magic")? != LOAD_RESULT_MAGIC {
            return Err(DecodeError::Inconsistent {
                context: "load result magic",
            });
        }
        let result = match r.u32("load result status")? {
            0 => LoadResult::Loaded {
                bytes_read: r.u64("load result bytes read")?,
                millis: r.u64("load result time")?,
            },
            1 => {
                let len = r.count(MAX_REASON_LEN, "load result reason length")?;
                let text = r.take(len as usize, "load result reason")?;
                let reason = core::str::from_utf8(text).map_err(|_| DecodeError::Inconsistent {
                    context: "load result reason (not UTF-8)",
                })?;
                LoadResult::Refused {
                    reason: reason.into(),
                }
            }
            2 => LoadResult::Progress {
                bytes_done: r.u64("load progress bytes")?,
            },
            value => {
                return Err(DecodeError::UnknownValue {
                    context: "load result status",
                    value: value.into(),
                });
            }
        };
        Ok((result, r.position()))
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, reason = "tests slice buffers they built")]
mod tests {
    use super::*;

    fn round_trip<T: PartialEq + core::fmt::Debug>(
        value: &T,
        encode: impl Fn(&T, &mut Vec<u8>),
        decode: impl Fn(&[u8]) -> Result<(T, usize), DecodeError>,
    ) {
        let mut bytes = Vec::new();
        encode(value, &mut bytes);
        let (back, used) = decode(&bytes).unwrap();
        assert_eq!(&back, value);
        assert_eq!(used, bytes.len());
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..cut]), Err(DecodeError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn messages_round_trip_and_report_truncation() {
        round_trip(
            &WorkerGreeting::current(),
            WorkerGreeting::encode,
            WorkerGreeting::decode_prefix,
        );
        round_trip(
            &RootReply {
                version: 1,
                shared_storage: true,
            },
            RootReply::encode,
            RootReply::decode_prefix,
        );
        round_trip(
            &LoadRequest {
                n_batches: 32,
                sync_type: 1,
                max_seq_len: 0,
                file_size: 1 << 33,
                header_digest: [7; 16],
                records: vec![[1; 16], [2; 16], [3; 16]],
            },
            LoadRequest::encode,
            LoadRequest::decode_prefix,
        );
        round_trip(
            &LoadResult::Loaded {
                bytes_read: 12345,
                millis: 67,
            },
            LoadResult::encode,
            LoadResult::decode_prefix,
        );
        round_trip(
            &LoadResult::Progress { bytes_done: 77 },
            LoadResult::encode,
            LoadResult::decode_prefix,
        );
        round_trip(
            &LoadResult::Refused {
                reason: "tensor block_matmul_q differs".into(),
            },
            LoadResult::encode,
            LoadResult::decode_prefix,
        );
    }

    #[test]
    fn the_fuzz_oracle_accepts_every_message_kind() {
        let mut messages: Vec<Vec<u8>> = Vec::new();
        let mut m = vec![0u8];
        WorkerGreeting::current().encode(&mut m);
        messages.push(m);
        let mut m = vec![1u8];
        RootReply {
            version: 1,
            shared_storage: false,
        }
        .encode(&mut m);
        messages.push(m);
        let mut m = vec![2u8];
        LoadRequest {
            n_batches: 32,
            sync_type: 0,
            max_seq_len: 64,
            file_size: 99,
            header_digest: [0; 16],
            records: vec![[9; 16]],
        }
        .encode(&mut m);
        messages.push(m);
        let mut m = vec![3u8];
        LoadResult::Refused {
            reason: "naïve".into(),
        }
        .encode(&mut m);
        messages.push(m);
        for m in &messages {
            assert_eq!(crate::fuzzing::shared_storage(m), Ok(m.len()));
        }
        // A reason that is not UTF-8 is refused, not replaced.
        let mut m = vec![3u8];
        put_u32(&mut m, LOAD_RESULT_MAGIC);
        put_u32(&mut m, 1);
        put_u32(&mut m, 1);
        m.push(0xff);
        assert!(crate::fuzzing::shared_storage(&m).is_err());
    }

    #[test]
    fn the_greeting_is_not_an_ack_and_the_request_is_not_a_record() {
        let mut bytes = Vec::new();
        WorkerGreeting::current().encode(&mut bytes);
        assert!(crate::messages::decode_ack(&bytes[..4]).is_err());
        const { assert!(LOAD_REQUEST_MAGIC > crate::limits::MAX_NAME_LEN) };
    }

    #[test]
    fn hostile_counts_and_codes_are_refused_before_allocating() {
        let mut bytes = Vec::new();
        put_u32(&mut bytes, LOAD_REQUEST_MAGIC);
        for _ in 0..3 {
            put_u32(&mut bytes, 0);
        }
        put_u64(&mut bytes, 0);
        bytes.extend_from_slice(&[0; 16]);
        put_u32(&mut bytes, u32::MAX);
        assert!(matches!(
            LoadRequest::decode_prefix(&bytes),
            Err(DecodeError::LimitExceeded { .. })
        ));
        let mut bytes = Vec::new();
        put_u32(&mut bytes, LOAD_RESULT_MAGIC);
        put_u32(&mut bytes, 9);
        assert!(matches!(
            LoadResult::decode_prefix(&bytes),
            Err(DecodeError::UnknownValue { .. })
        ));
        let mut bytes = Vec::new();
        put_u32(&mut bytes, LOAD_RESULT_MAGIC);
        put_u32(&mut bytes, 1);
        put_u32(&mut bytes, MAX_REASON_LEN + 1);
        assert!(matches!(
            LoadResult::decode_prefix(&bytes),
            Err(DecodeError::LimitExceeded { .. })
        ));
        assert!(WorkerGreeting::decode_prefix(b"dllama!!\x01\0\0\0\0\0\0\0").is_err());
    }
}
