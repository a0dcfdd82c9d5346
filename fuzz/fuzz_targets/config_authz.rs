#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwasm_fuzz_targets::authz::config(data));
