//! airllama: graph, executor, LLM, tokenizer and sampler on top of the kernels, io and net crates.
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

pub mod api;
pub mod chat_template;
pub mod executor;
pub mod graph;
pub mod replay;
pub mod root;
pub mod sampler;
pub mod shared_storage;
pub mod streaming;
pub mod tokenizer;
pub mod worker;
