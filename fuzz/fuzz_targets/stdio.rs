//! `mesh_bridge::fuzzing::stdio` under libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| mesh_bridge::fuzzing::stdio(data));
