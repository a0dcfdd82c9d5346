//! A wasmtime host for proxy-wasm filters that behaves like Envoy.
