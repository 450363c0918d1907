//! `.m` model header and tensor layout: parse arbitrary bytes, re-encode, build the layout and
//! every node split; see `airllama_io::fuzzing::model_header` for the invariants checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| airllama_io::fuzzing::model_header(data));
