//! Inbound OAuth2/JWT validation filter.
pub mod cache;
pub mod challenge;
pub mod config;
pub mod jwks;
pub mod validate;
pub mod engine;
pub mod keystore;
