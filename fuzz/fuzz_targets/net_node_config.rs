//! airllama-net: `fuzzing::node_config` — decode, re-encode, compare (see its doc for the input form).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = airllama_net::fuzzing::node_config(data);
});
