//! `.t` tokenizer file: parse arbitrary bytes, re-encode, re-parse; see
//! `airllama_io::tokenizer_file::fuzz_parse` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airllama_io::tokenizer_file::fuzz_parse(data));
