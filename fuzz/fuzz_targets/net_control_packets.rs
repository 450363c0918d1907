//! airllama-net: `fuzzing::control_packets` — decode, re-encode, compare (see its doc for the input form).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = airllama_net::fuzzing::control_packets(data);
});
