//! Any bytes as a safetensors file: a typed error or a table, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hoist_format::fuzzing::safetensors(std::path::Path::new("fuzz.safetensors"), data);
});
