//! airllama-io: the distributed-llama file formats and the I/O that feeds the kernels.
//!
//! - [`model`]: the `.m` model header (dllama's key/value ints, defaults and derived values).
//! - [`layout`]: the tensor layout table: every tensor's role, shape, type, byte range, and each
//!   node's slice of it. Weight loading, streaming and zero-data movement all read this table.
//! - [`tokenizer_file`]: the `.t` tokenizer file.
//! - [`gguf`]: a GGUF reader, and [`convert`]: GGUF → `.m`/`.t` conversion.
//! - [`stream`]: layer streaming: `O_DIRECT` io_uring reads into a pinned ring of buffers.
//! - [`fuzzing`]: fuzz oracles over untrusted bytes, shared by `fuzz/` and the unit tests.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod convert;
pub mod fuzzing;
pub mod gguf;
mod gguf_quants;
pub mod layout;
pub mod model;
pub mod stream;
pub mod tokenizer_file;
