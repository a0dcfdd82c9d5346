//! `meshwasm.wasm`: every meshwasm filter in one module. Envoy's `root_id` selects the filter of each
//! plugin, so filters that share one `vm_id` and this module run in one VM per worker instead of one VM
//! per filter and worker.
//!
//! [`select`] maps a root_id onto a filter (pure, tested natively); `glue` (wasm32 only) is the module's
//! entry point: a root context that reads `plugin_root_id`, builds that filter's root context and hands
//! every callback to it. HTTP contexts are the filter's own, so requests cost what they cost in the
//! filter's own `.wasm`, except for the callbacks the union of all filters exports (see `callbacks`).

mod select;

pub use select::{Filter, ROOT_IDS, select};

#[cfg(target_arch = "wasm32")]
mod glue;
