//! meshwasm `jwt-auth`: inbound OAuth2/JWT validation as a proxy-wasm filter.
//!
//! Providers (issuer, audiences, algorithms, keys from an inline JWKS, PEM, a remote JWKS URI or OIDC
//! discovery), token sources (headers, query parameters, cookies), rules per route with any/all
//! providers, scopes and claim matchers, claims to headers, RFC 6750 challenges, a verified-token cache
//! and remote keys shared by all workers with background refresh, stale-on-error and rate-limited
//! refetch on an unknown `kid`. See `README.md` for every configuration field.
//!
//! ```
//! let plan = meshwasm_jwt_auth::config::Plan::from_json(br#"{
//!   "providers": {"idp": {"issuer": "https://idp.example.com", "audiences": ["api"],
//!                         "remote_jwks": {"cluster": "idp"}}},
//!   "rules": [{"match": {"prefix": "/api"}, "requires_any": ["idp"], "scopes": ["read"]}]
//! }"#).unwrap();
//! assert!(plan.providers[0].remote.as_ref().unwrap().discovery);
//! ```
//!
//! The modules below never touch proxy-wasm; `glue` (wasm32 only) maps host callbacks onto them.

pub mod cache;
pub mod challenge;
pub mod claims;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod engine;
pub mod introspection;
pub mod introspection_state;
pub mod jwks;
pub mod keystore;
pub mod validate;
pub mod waiters;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
pub use glue::root_context;
#[cfg(target_arch = "wasm32")]
mod native;
