//! The body of every meshwasm fuzz target, as a plain function of the input bytes.
//!
//! Two callers run the same functions: the cargo-fuzz crate in `fuzz/` (nightly, libFuzzer; one
//! `fuzz_targets/<name>.rs` per entry of [`TARGETS`]) and the corpus replay test
//! (`tests/corpus.rs`, stable, part of `make test`), which feeds every file under
//! `fuzz/corpus/<name>/` to the function of that name. A target "fails" by panicking: the filters
//! must never panic on what a client, a registry or an identity provider sends, and the few
//! invariants asserted here (a normalized path normalizes to itself, a published set is sorted and
//! its weights in range, a pick is one of the endpoints) are the filters' documented contracts.
//!
//! Structured inputs (a JWT built from fields, a sequence of DNS answers, a request) are read from
//! the bytes with [`arbitrary`], so the replayed corpus and the fuzzer see exactly the same thing.

pub mod authz;
pub mod balancer;
pub mod discovery;
pub mod host_abi;
pub mod jwt;
pub mod path;
pub mod serve_config;
pub mod token_injector;

/// A fuzz target: a name (the cargo-fuzz target and corpus directory) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by name.
pub const TARGETS: &[Target] = &[
    ("jws_validate", jwt::jws_validate),
    ("jwt_claims", jwt::jwt_claims),
    ("jwks", jwt::jwks),
    ("pem", jwt::pem),
    ("introspection", jwt::introspection),
    ("config_jwt_auth", jwt::config),
    ("token_response", token_injector::token_response),
    ("config_token_injector", token_injector::config),
    ("etcd", discovery::etcd),
    ("consul", discovery::consul),
    ("eureka", discovery::eureka),
    ("nacos", discovery::nacos),
    ("kubernetes", discovery::kubernetes),
    ("file_source", discovery::file),
    ("doh", discovery::doh),
    ("config_discovery", discovery::config),
    ("endpoint_set", balancer::endpoint_set),
    ("config_balancer", balancer::config),
    ("config_authz", authz::config),
    ("path", path::normalize),
    ("route", path::route),
    ("host_abi", host_abi::host_abi),
    ("serve_config", serve_config::serve_config),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The fixed plans and keys the targets run against that fail to load: a target whose fixture broke
/// would fuzz nothing, so the replay test asserts this is empty.
pub fn broken_fixtures() -> Vec<&'static str> {
    let mut broken = jwt::broken_fixtures();
    broken.extend(discovery::broken_fixtures());
    if !host_abi::fixture_loads() {
        broken.push("host_abi guest");
    }
    broken
}
