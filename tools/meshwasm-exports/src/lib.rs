//! `meshwasm-exports`: the post-link step of the filter build that removes the `proxy_on_*` callbacks a
//! filter does not implement.
//!
//! Why: the Rust proxy-wasm SDK exports every callback, and Envoy (proxy-wasm-cpp-host
//! `ContextBase::onRequestBody` and the like) skips a callback only when the module does not export
//! it. Each exported callback costs a crossing into the VM per stream, implemented or not. With the
//! export gone, Envoy continues the stream without entering the VM (`on_done` counts as `true`,
//! `on_log` and `on_delete` are not called), and `wasm-opt` later drops the dead dispatch code.
//!
//! Each filter lists the callbacks it implements in `filters/<name>/callbacks` (one export name a
//! line, `#` comments). Only `proxy_on_*` exports are touched; everything else (memory, `_initialize`,
//! `proxy_abi_version_*`, `proxy_on_memory_allocate`) is kept. Only the export section is rewritten,
//! every other section is copied byte for byte, and running it again on its output changes nothing.
//!
//! ```
//! let wasm = wat::parse_str(r#"(module
//!     (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
//!     (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0)))"#).unwrap();
//! let out = meshwasm_exports::keep_callbacks(&wasm, &["proxy_on_request_headers"]).unwrap();
//! assert_eq!(out.removed, vec!["proxy_on_request_body".to_string()]);
//! assert_eq!(meshwasm_exports::exports(&out.wasm).unwrap(), vec!["proxy_on_request_headers".to_string()]);
//! ```

use anyhow::{Context, Result, bail};
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasmparser::{ExternalKind, Parser, Payload};

/// The callbacks the Rust SDK cannot do without in a filter that handles streams: it creates each
/// context in `proxy_on_context_create` and frees it in `proxy_on_delete` (without it, every stream
/// would leak its context). [`parse_list`] refuses a filter list that drops them.
pub const SDK_REQUIRED: &[&str] = &["proxy_on_context_create", "proxy_on_delete"];

/// Exports that are never removed: the host allocates returned data through it.
const ALWAYS_KEPT: &[&str] = &["proxy_on_memory_allocate"];

/// What [`keep_callbacks`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// The module without the removed exports.
    pub wasm: Vec<u8>,
    /// The callbacks removed, in export order.
    pub removed: Vec<String>,
}

/// Whether an export is a proxy-wasm callback this step decides on.
fn is_callback(name: &str) -> bool {
    name.starts_with("proxy_on_") && !ALWAYS_KEPT.contains(&name)
}

/// Every export name of a module, in order.
pub fn exports(wasm: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(reader) = payload.context("not a valid wasm module")? {
            for e in reader {
                out.push(e.context("malformed export section")?.name.to_owned());
            }
        }
    }
    Ok(out)
}

/// Removes every `proxy_on_*` function export not in `keep`. Fails when a name in `keep` is not a
/// callback the module exports (a typo would otherwise remove the callback it meant).
pub fn keep_callbacks(wasm: &[u8], keep: &[&str]) -> Result<Trimmed> {
    let present = exports(wasm)?;
    for k in keep {
        if !present.iter().any(|p| p == k) {
            bail!("callback `{k}` is listed but the module does not export it");
        }
    }
    let mut module = Module::new();
    let mut removed = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload.context("not a valid wasm module")?;
        match &payload {
            Payload::Version { encoding, .. } => {
                if *encoding != wasmparser::Encoding::Module {
                    bail!("a component, not a core wasm module");
                }
            }
            Payload::ExportSection(reader) => {
                let mut section = ExportSection::new();
                for e in reader.clone() {
                    let e = e.context("malformed export section")?;
                    if e.kind == ExternalKind::Func && is_callback(e.name) && !keep.contains(&e.name) {
                        removed.push(e.name.to_owned());
                        continue;
                    }
                    section.export(e.name, export_kind(e.kind)?, e.index);
                }
                module.section(&section);
            }
            other => {
                if let Some((id, range)) = other.as_section() {
                    let start = usize::try_from(range.start).context("section offset")?;
                    let end = usize::try_from(range.end).context("section end")?;
                    let data = wasm.get(start..end).context("section out of the module's bounds")?;
                    module.section(&RawSection { id, data });
                }
            }
        }
    }
    Ok(Trimmed { wasm: module.finish(), removed })
}

fn export_kind(k: ExternalKind) -> Result<ExportKind> {
    Ok(match k {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    })
}

/// Parses a filter's callback list (one export name a line, `#` starts a comment) and checks it
/// keeps what the Rust SDK needs ([`SDK_REQUIRED`]) and names only callbacks.
pub fn parse_list(text: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let name = line.split('#').next().unwrap_or("").trim();
        if name.is_empty() {
            continue;
        }
        if !name.starts_with("proxy_on_") {
            bail!("line {}: `{name}` is not a proxy-wasm callback (proxy_on_*)", i + 1);
        }
        out.push(name.to_owned());
    }
    for r in SDK_REQUIRED {
        if !out.iter().any(|n| n == r) {
            bail!(
                "`{r}` is missing: the Rust SDK creates stream contexts in proxy_on_context_create and frees them in proxy_on_delete"
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
        (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
        (func (export "proxy_on_log") (param i32))
        (func (export "proxy_on_delete") (param i32))
        (data (i32.const 8) "kept")
        (@custom "name-ish" "custom bytes"))"#;

    #[test]
    fn removes_unlisted_callbacks_and_keeps_everything_else() {
        let wasm = wat::parse_str(MODULE).unwrap();
        let keep = ["proxy_on_context_create", "proxy_on_request_headers", "proxy_on_delete"];
        let out = keep_callbacks(&wasm, &keep).unwrap();
        assert_eq!(out.removed, vec!["proxy_on_request_body", "proxy_on_log"]);
        assert_eq!(
            exports(&out.wasm).unwrap(),
            vec![
                "memory",
                "proxy_on_memory_allocate",
                "proxy_abi_version_0_2_1",
                "proxy_on_context_create",
                "proxy_on_request_headers",
                "proxy_on_delete",
            ]
        );
        wasmparser::Validator::new().validate_all(&out.wasm).unwrap();
        // Data and custom sections are copied as they were.
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(has(&out.wasm, b"kept") && has(&out.wasm, b"custom bytes"));
        // Idempotent: a second run removes nothing and changes no byte.
        let again = keep_callbacks(&out.wasm, &keep).unwrap();
        assert!(again.removed.is_empty());
        assert_eq!(again.wasm, out.wasm);
    }

    #[test]
    fn a_listed_callback_the_module_lacks_is_an_error() {
        let wasm = wat::parse_str(MODULE).unwrap();
        let err = keep_callbacks(&wasm, &["proxy_on_request_headrs"]).unwrap_err().to_string();
        assert!(err.contains("proxy_on_request_headrs"), "{err}");
    }

    #[test]
    fn lists_must_keep_what_the_sdk_needs_and_name_only_callbacks() {
        let ok = parse_list("# jwt-auth\nproxy_on_context_create\nproxy_on_delete # frees\n\n").unwrap();
        assert_eq!(ok, vec!["proxy_on_context_create", "proxy_on_delete"]);
        let err = parse_list("proxy_on_context_create\n").unwrap_err().to_string();
        assert!(err.contains("proxy_on_delete"), "{err}");
        let err = parse_list("proxy_on_context_create\nproxy_on_delete\nmalloc\n").unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("malloc"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(keep_callbacks(b"not wasm", &[]).is_err());
    }
}
