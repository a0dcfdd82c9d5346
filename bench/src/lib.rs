//! Side-by-side benchmarks of meshwasm filters against Envoy's native filters.
//!
//! One Envoy, several listeners that differ only in the filter under test (passthrough, native
//! jwt_authn, round robin and RBAC over mTLS, meshwasm noop per export set / jwt-auth / discovery +
//! balancer as filters or as a Wasm service / the chain, separate or combined / authz), the same
//! backends behind all of them, and the same `wrk` load driven through
//! each in interleaved rounds.
//! The result is a Markdown report with ratios to baselines, memory, artifact sizes and SVG plots.
//!
//! ```text
//! make bench          # full run, ~15–16 min, writes bench/report/REPORT.md
//! make bench-quick    # < 2 min, for development
//! ```
//!
//! The `meshwasm-bench` binary is the entry point; this library holds its parts so they are unit-tested.

pub mod backend;
pub mod calls;
pub mod configs;
pub mod filters;
pub mod host_soak;
pub mod jwt;
pub mod machine;
pub mod mtls;
pub mod report;
pub mod results;
pub mod run;
pub mod sizes;
pub mod svg;
pub mod wrk;
