#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| meshwasm_fuzz_targets::host_abi::host_abi(data));
