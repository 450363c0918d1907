//! airllama-net: `fuzzing::root_stream` — decode, re-encode, compare; the whole worker-side session validator (configs, weight checks, sync plan).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = airllama_net::fuzzing::root_stream(data);
});
