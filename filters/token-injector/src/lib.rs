//! `meshwasm-token-injector`: outbound OAuth2 client-credentials token injection as a proxy-wasm
//! filter.
//!
//! For outbound requests that match the configured rules, the filter obtains an access token with the
//! client-credentials grant (RFC 6749 §4.4; `client_secret_basic` or `client_secret_post`, scopes,
//! `audience`, RFC 8707 `resource`) from a token endpoint reached through an Envoy cluster, and sets
//! `Authorization: Bearer <token>`. One token serves every worker of the proxy: workers share it
//! through shared data and a compare-and-swap lease makes one of them fetch (single flight; requests
//! that arrive meanwhile are paused and resumed when it arrives). Tokens are refreshed ahead of expiry
//! in the background; when none can be had the request gets a 503 with a clear reason, and retries back
//! off exponentially. Tokens and secrets are never logged (a hash prefix is).
//!
//! ```json
//! { "token_endpoint": { "cluster": "idp", "path": "/oauth2/token", "authority": "idp.example.com" },
//!   "client_id": "orders", "client_secret": "…", "scopes": ["inventory:read"],
//!   "match": [{ "authority": "inventory.internal" }] }
//! ```
//!
//! Layout: [`config`] (the plan), [`matcher`] (which requests), [`token`] (request and response of
//! the token endpoint), [`source`] (per-worker token, sharing, lease, refresh, back-off); `glue` maps
//! proxy-wasm callbacks onto them (wasm32 only). See README.md for every configuration field.

pub mod config;
pub mod matcher;
pub mod source;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
pub use glue::root_context;
