//! Layer streaming: reading weights straight from disk into pinned ring buffers while the
//! previous layer computes (the AirLLM idea, with `O_DIRECT` and io_uring).
//!
//! - [`StreamReader`] opens a file with `O_DIRECT` (buffered where the file system refuses it),
//!   allocates a ring of aligned, `mlock`ed slots, registers them with io_uring as fixed
//!   buffers and reads byte ranges into them, several large reads in flight. Where the memlock
//!   limit refuses the lock or the registration (an unprivileged user's default is 8 MiB), the
//!   ring stays unlocked and unregistered and [`StreamReader::warning`] says once what that
//!   costs, rather than refusing to stream. An I/O thread owns the ring and refills the
//!   queue as reads complete, so the disk stays busy however long the caller computes between
//!   calls. Tensor offsets are not block-aligned: the reader reads the covering aligned range
//!   and hands out the inner bytes without copying.
//! - [`LoadedSlot`] is the only owner of a slot whose read has completed; dropping it returns
//!   the slot to the ring. A slot being read has no handle at all, so the compute can never see
//!   bytes the kernel is still writing.
//! - Where io_uring is unavailable (old kernel, seccomp) the I/O thread serves the same
//!   requests with `pread` ([`StreamReader::fallback_reason`] says why).
//!
//! ```no_run
//! use airllama_io::stream::{StreamOptions, StreamReader};
//! let mut reader = StreamReader::open("model.m".as_ref(), &StreamOptions::new(2, 64 << 20))?;
//! let first = reader.submit(1000..5000)?; // any byte range
//! let second = reader.submit(5000..9000)?; // in flight together
//! let a = reader.wait(first)?;
//! assert_eq!(a.len(), 4000); // exactly the requested bytes
//! drop(a); // the slot goes back to the ring
//! let _b = reader.wait(second)?;
//! # Ok::<(), airllama_io::stream::StreamError>(())
//! ```
mod align;
mod cache;
mod reader;
mod ring;

use std::ops::Range;
use std::path::PathBuf;

pub use align::{
    AlignSource, DirectAlignment, FALLBACK_ALIGN, OpenedFile, open_for_streaming, probe_alignment,
};
pub use cache::{MappedFile, drop_cache};
pub use reader::{
    DEFAULT_CHUNK, DEFAULT_IN_FLIGHT, EngineChoice, ReadStats, ReadTicket, StreamOptions,
    StreamReader, sequential_read,
};
pub use ring::{LoadedSlot, memlock_limit};

/// Why streaming could not start or a read failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The file could not be opened.
    #[error("cannot open {path} for streaming: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `mlock` failed for a reason other than the memlock limit or a lack of privilege (those
    /// leave the ring unlocked, see [`StreamReader::warning`]).
    #[error(
        "cannot lock the {bytes}-byte read ring in memory: the RLIMIT_MEMLOCK limit is {}: raise it (`ulimit -l`, systemd LimitMEMLOCK=, /etc/security/limits.conf) or lower --mem-budget",
        limit.map_or("unlimited".to_string(), |l| format!("{l} bytes"))
    )]
    Memlock {
        /// Ring size.
        bytes: u64,
        /// The soft limit at the time (`None` = unlimited).
        limit: Option<u64>,
        /// What `mlock` said.
        #[source]
        source: std::io::Error,
    },
    /// The ring memory could not be allocated.
    #[error("cannot allocate a {0}-byte read ring")]
    OutOfMemory(u64),
    /// The ring's shape or use is invalid.
    #[error("read ring: {0}")]
    BadRing(&'static str),
    /// A request needs more bytes than a slot holds.
    #[error("a read of {bytes} aligned bytes does not fit a {slot_size}-byte ring slot")]
    TooLarge {
        /// Aligned bytes needed.
        bytes: u64,
        /// Slot size.
        slot_size: usize,
    },
    /// Every slot is loaded or being read.
    #[error("no free ring slot (drop a loaded slot first)")]
    NoFreeSlot,
    /// A request outside the file.
    #[error("bytes {}..{} lie outside the {file_len}-byte file", range.start, range.end)]
    OutOfFile {
        /// The request.
        range: Range<u64>,
        /// File size.
        file_len: u64,
    },
    /// The kernel (or pread) failed a read.
    #[error("read of bytes {}..{} failed: {source}", range.start, range.end)]
    Read {
        /// The request.
        range: Range<u64>,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine itself failed (submitting, waiting, starting the I/O thread).
    #[error("streaming I/O: {0}")]
    Io(#[source] std::io::Error),
}
