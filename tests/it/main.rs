//! meshwasm's integration tests, one binary so the harness (`meshwasm_tests`) is linked once.
//!
//! One module per area and real part; test names carry it as a prefix, so
//! `cargo test -p meshwasm-tests --test it balancer_envoy::` runs one former file. Modules named
//! `*_envoy` run real Envoy, `*_host` the wasmtime host; real etcd, unbound and the OpenID Provider are
//! started where a module says so.
//!
//! Tests share one process, so none may rely on process state: no `std::env::set_var`, no fixed ports
//! (Envoy, etcd, unbound, the OpenID Provider and backends all bind port 0 or a fresh free port), each
//! test its own host and temporary directories. libtest runs as many tests at once as there are cores,
//! as it did inside each former binary, so no lock is needed around the Envoy or etcd tests.

mod authz_calls_host;
mod authz_envoy;
mod authz_host;
mod balancer_algorithms_envoy;
mod balancer_discovery_envoy;
mod balancer_discovery_host;
mod balancer_envoy;
mod balancer_examples;
mod balancer_host;
mod balancer_steering_envoy;
mod combined_envoy;
mod combined_host;
mod conformance;
mod demo;
mod discovery_envoy;
mod discovery_file_host;
mod discovery_host;
mod discovery_policy_host;
mod discovery_service_envoy;
mod discovery_service_host;
mod discovery_sources_envoy;
mod endpoints_contract_host;
mod envoy_harness;
mod envoy_root_contexts;
mod example_configs;
mod identity_handoff;
mod introspection_envoy;
mod introspection_host;
mod istio_examples;
mod jwt_auth_attacks_envoy;
mod jwt_auth_envoy;
mod jwt_auth_host;
mod metrics_envoy;
mod metrics_host;
mod oci_registry;
mod oidc_provider;
mod schemas;
mod secrets_env;
mod tls_conformance;
mod tls_failures_envoy;
mod token_injector_envoy;
mod token_injector_host;
