//! Test-only filter that exercises every proxy-wasm hostcall and reports what it saw.
