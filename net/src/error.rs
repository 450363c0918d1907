//! Typed decode errors. Every variant is `Copy` and carries a `&'static str` naming the field
//! that failed, so a fuzz target or a worker log can say exactly where a stream went wrong.

/// Why bytes could not be decoded into a protocol message.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ended inside `context`; `needed` more bytes are required before the decoder can
    /// get past that field. A streaming reader reads exactly `needed` bytes and tries again, so
    /// it never reads past the end of a message.
    #[error("{context}: truncated, {needed} more bytes needed")]
    Truncated {
        /// The field being read.
        context: &'static str,
        /// Bytes missing for that field.
        needed: usize,
    },
    /// A count, length or size is above the documented limit (see [`crate::limits`]).
    #[error("{context}: {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// The field being read.
        context: &'static str,
        /// The decoded value.
        value: u64,
        /// The limit it broke.
        limit: u64,
    },
    /// An enum field holds a value that names no variant.
    #[error("{context}: unknown value {value}")]
    UnknownValue {
        /// The field being read.
        context: &'static str,
        /// The decoded value.
        value: i64,
    },
    /// An index points past the pipes, buffers, ops or nodes the config declares.
    #[error("{context}: index {index} out of range (count {count})")]
    IndexOutOfRange {
        /// The field being read.
        context: &'static str,
        /// The decoded index.
        index: u64,
        /// How many items exist.
        count: u64,
    },
    /// The field contradicts what the rest of the message implies (for example a Size3D whose
    /// nBytes does not match its type and dimensions).
    #[error("{context}: inconsistent with the rest of the config")]
    Inconsistent {
        /// The field or relation that failed.
        context: &'static str,
    },
    /// An op's config blob is not the size of that op code's C struct.
    #[error("{context}: config size {got}, the op's struct has {expected}")]
    ConfigSize {
        /// The op code's name.
        context: &'static str,
        /// The size on the wire.
        got: u32,
        /// `sizeof` of the C struct.
        expected: u32,
    },
    /// A u32 that must be dllama's ACK (23571114) was something else.
    #[error("{context}: expected ACK, got {value:#x}")]
    BadAck {
        /// Which ACK.
        context: &'static str,
        /// The value received.
        value: u32,
    },
    /// A string is empty, lacks its NUL terminator, holds an interior NUL or is not UTF-8.
    #[error("{context}: malformed string")]
    InvalidString {
        /// The field being read.
        context: &'static str,
    },
    /// A whole message was decoded and bytes were left over.
    #[error("{context}: {count} trailing bytes")]
    TrailingData {
        /// The message.
        context: &'static str,
        /// Bytes left.
        count: usize,
    },
}

impl DecodeError {
    /// `Some(n)` when the only problem is that the buffer is `n` bytes short.
    pub fn needed(&self) -> Option<usize> {
        match self {
            DecodeError::Truncated { needed, .. } => Some(*needed),
            _ => None,
        }
    }
}
