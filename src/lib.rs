//! airllama: graph, executor, LLM, tokenizer and sampler on top of the kernels, io and net crates.
#![deny(clippy::undocumented_unsafe_blocks)]
#![forbid(unsafe_code)]

pub mod executor;
pub mod worker;
pub mod streaming;
pub mod graph;
pub mod replay;
pub mod tokenizer;
pub mod sampler;
pub mod chat_template;
pub mod root;
