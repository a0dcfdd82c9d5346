//! meshwasm-host integration tests in one binary, so the host and its dependencies link once: a module
//! per area. Every test builds its own host, proxy and scratch directory, so they run in parallel in
//! one process as they did in separate ones.

mod cli_common;
mod common;

mod cli_check;
mod cli_serve;
mod counts;
mod driver;
mod env;
mod failures;
mod flow;
mod headers;
mod random;
mod smoke;
mod state;
mod tls;
