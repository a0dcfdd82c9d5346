//! `meshwasm-authz`: authorization of inbound requests as a proxy-wasm filter, modelled on Istio's
//! AuthorizationPolicy.
//!
//! A request is decided on who calls — the peer's SPIFFE ID (or raw SANs, subject, certificate
//! digest) from the mTLS connection, the token's principal and claims handed on by jwt-auth, the
//! source address — and on what it asks: method, normalized path, host, headers. DENY policies
//! first, then ALLOW (when any ALLOW policy exists, a request that matches none is denied); dry-run
//! policies and AUDIT policies only log and count. A denied request gets a 403 that does not say
//! which policy denied it; a path that does not normalize gets a 400 before any policy; an internal
//! error is a 503, never a pass.
//!
//! ```
//! use meshwasm_authz::{attributes::{Attributes, Peer}, config::Plan, policy::{Verdict, evaluate}};
//! let plan = Plan::from_json(br#"{"policies": [{"name": "orders-only", "action": "ALLOW",
//!     "rules": [{"from": [{"source": {"service_accounts": ["shop/frontend"]}}]}]}]}"#).unwrap();
//! let mut a = Attributes::default();
//! a.peer = Peer::new(true, Some("spiffe://cluster.local/ns/shop/sa/frontend".into()), None, None, None);
//! assert_eq!(evaluate(&plan.policies, &a).verdict, Verdict::Allow);
//! a.peer = Peer::default(); // plaintext: no principal
//! assert_eq!(evaluate(&plan.policies, &a).verdict, Verdict::Deny);
//! ```
//!
//! Layout: [`config`] (the plan), [`policy`] (policies and the decision), [`attributes`] (what a
//! request brings, and the property contract with jwt-auth), [`spiffe`], [`pattern`]; `glue` maps
//! proxy-wasm callbacks onto them (wasm32 only). See README.md for every configuration field.

pub mod attributes;
pub mod config;
pub mod pattern;
pub mod policy;
pub mod spiffe;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
pub use glue::root_context;

#[cfg(test)]
mod tests;
