#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwasm_fuzz_targets::serve_config::serve_config(data));
