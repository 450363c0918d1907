//! GGUF header reader: parse arbitrary bytes, re-encode, re-parse, check tensor extents and
//! dequantize small tensors; see `airllama_io::gguf::fuzz_header` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airllama_io::gguf::fuzz_header(data));
