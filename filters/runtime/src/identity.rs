//! The contract between jwt-auth, which hands a verified token's identity on, and the filters that
//! read it (authz): property names written with `proxy_set_property` at a single-segment path `p`,
//! which Envoy keeps as filter state `wasm.p` for the rest of the filter chain (Envoy's RBAC reads that
//! key). A client cannot set filter state, so only a verified token is ever seen there.

/// `<iss>/<sub>` of the verified token (Istio's `request.auth.principal`).
pub const PRINCIPAL: &str = "meshwasm.jwt.principal";
/// The name of the jwt-auth provider that verified it.
pub const PROVIDER: &str = "meshwasm.jwt.provider";
/// One property per claim the provider hands on (`meshwasm.jwt.claim.groups`): the claim's JSON.
pub const CLAIM_PREFIX: &str = "meshwasm.jwt.claim.";
/// The prefix Envoy puts before a `set_property` path in filter state.
pub const FILTER_STATE_PREFIX: &str = "wasm.";
