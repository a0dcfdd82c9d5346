//! What every meshwasm filter shares, written once: each filter keeps only its own records and
//! decisions.
//!
//! - [`shared_data`]: the shared-data seam ([`shared_data::SharedData`], CAS with Envoy's rules) and
//!   `shared_data::MemoryShared`, the one in-memory implementation for native tests (feature
//!   `memory`, enabled by the filters' dev-dependencies only).
//! - [`lease`]: one worker per proxy does a job: claim, confirm on a later tick, renew, release, take
//!   over on expiry.
//! - [`worker_id`]: proxy-wide unique worker ids. [`backoff`]: retry delays.
//! - [`call_response`]: the response of a `dispatch_http_call` (status, headers, capped body, one
//!   error type).
//! - [`identity`]: the property names jwt-auth hands a verified identity on under (authz reads them).
//! - `glue` (wasm32 only): hostcall helpers — plugin config, clock, log, randomness, metrics with
//!   cached ids, a critical-level panic hook, shared data and call responses over hostcalls.
//!
//! ```
//! use meshwasm_filter_runtime::{backoff::Backoff, shared_data::MemoryShared, worker_id};
//! let mut shared = MemoryShared::default();
//! let id = worker_id::allocate(&mut shared, "my-filter.ids", 0xabcd);
//! assert_eq!(id, (1 << 32) | 0xabcd);
//! assert_eq!(Backoff { initial_ms: 500, max_ms: 4_000 }.delay_ms(3), 2_000);
//! ```

pub mod backoff;
pub mod call_response;
pub mod identity;
pub mod lease;
pub mod shared_data;
pub mod worker_id;

#[cfg(target_arch = "wasm32")]
pub mod glue;
