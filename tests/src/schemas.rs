//! The JSON Schemas of meshwasm's configurations, generated from the Rust config types (schemars,
//! through each filter's `schema` feature) and committed under `schemas/`: one per filter
//! (`schemas/<artifact>.schema.json`, e.g. `meshwasm_jwt_auth.schema.json`) and one for
//! `meshwasm-host serve`'s file (`schemas/serve.schema.json`, printed by the host itself).
//! `make schemas` (the `meshwasm-schemas` command) writes them; `tests/it/schemas.rs` fails when a
//! committed one is out of date and validates every example configuration against them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::artifacts::workspace_root;

/// The command that rewrites `schemas/`.
pub const UPDATE_COMMAND: &str = "make schemas";

/// The directory of the committed schemas.
pub fn schema_dir() -> PathBuf {
    workspace_root().join("schemas")
}

/// Each filter's artifact name (as in `target/wasm32-wasip1/wasm/<name>.wasm`) and the schema of
/// its configuration.
pub fn filter_schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("meshwasm_jwt_auth", titled(meshwasm_jwt_auth::config::json_schema(), "jwt-auth")),
        ("meshwasm_token_injector", titled(meshwasm_token_injector::config::json_schema(), "token-injector")),
        ("meshwasm_discovery", titled(meshwasm_discovery::config::json_schema(), "discovery")),
        ("meshwasm_balancer", titled(meshwasm_balancer::config::json_schema(), "balancer")),
        ("meshwasm_authz", titled(meshwasm_authz::config::json_schema(), "authz")),
    ]
}

fn titled(schema: schemars::Schema, filter: &str) -> Value {
    let mut v = schema.to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert("title".into(), Value::String(format!("meshwasm {filter} plugin configuration")));
        o.insert(
            "$comment".into(),
            Value::String(format!(
                "Generated from the Rust config types by `{UPDATE_COMMAND}`; do not edit."
            )),
        );
    }
    v
}

/// The schema of `meshwasm-host serve`'s configuration file, as `meshwasm-host schema` prints it
/// (`host` is the path of the `meshwasm-host` binary).
pub fn serve_schema(host: &std::path::Path) -> Result<Value> {
    let out =
        Command::new(host).arg("schema").output().with_context(|| format!("running {}", host.display()))?;
    if !out.status.success() {
        bail!("meshwasm-host schema failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("meshwasm-host schema printed no JSON")
}

/// The file text of a schema: pretty JSON and a final newline.
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}
