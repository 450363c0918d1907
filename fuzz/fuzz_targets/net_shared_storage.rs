//! airllama-net: `fuzzing::shared_storage` — decode, re-encode, compare (first byte picks the message).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = airllama_net::fuzzing::shared_storage(data);
});
