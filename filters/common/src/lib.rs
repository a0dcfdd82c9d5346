//! meshwasm-common: what meshwasm's filters share, written once so that a fix reaches every filter.
//!
//! - [`path`]: the request path as every security and routing decision must read it (RFC 3986 §6.2.2
//!   normalization, merged slashes, and a refusal of paths that upstreams read in different ways).
//!
//! Pure logic: no proxy-wasm imports, unit-tested natively.

pub mod path;
