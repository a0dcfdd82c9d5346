//! Each filter's `callbacks` list matches what its glue implements: a callback implemented but not
//! listed would be removed by `make wasm` and never run (silently), one listed but not implemented
//! costs a VM entry per stream for the SDK's default.

use std::path::{Path, PathBuf};

/// SDK trait method → the export that reaches it.
const METHODS: &[(&str, &str)] = &[
    ("fn on_vm_start", "proxy_on_vm_start"),
    ("fn on_configure", "proxy_on_configure"),
    ("fn on_tick", "proxy_on_tick"),
    ("fn on_queue_ready", "proxy_on_queue_ready"),
    ("fn on_http_call_response", "proxy_on_http_call_response"),
    ("fn on_http_request_headers", "proxy_on_request_headers"),
    ("fn on_http_request_body", "proxy_on_request_body"),
    ("fn on_http_request_trailers", "proxy_on_request_trailers"),
    ("fn on_http_response_headers", "proxy_on_response_headers"),
    ("fn on_http_response_body", "proxy_on_response_body"),
    ("fn on_http_response_trailers", "proxy_on_response_trailers"),
    ("fn on_log", "proxy_on_log"),
    ("fn on_done", "proxy_on_done"),
    ("fn on_foreign_function", "proxy_on_foreign_function"),
];

fn filters_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../filters")
}

/// The glue sources of a filter: `src/glue.rs` and `src/glue/*.rs` if any.
fn glue(dir: &Path) -> String {
    let mut text = std::fs::read_to_string(dir.join("src/glue.rs")).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir(dir.join("src/glue")) {
        for e in entries.flatten() {
            text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    text
}

#[test]
fn every_filter_list_names_exactly_the_callbacks_its_glue_implements() {
    let mut checked = 0;
    for entry in std::fs::read_dir(filters_dir()).unwrap().flatten() {
        let list_path = entry.path().join("callbacks");
        let Ok(list) = std::fs::read_to_string(&list_path) else { continue };
        let list =
            meshwasm_exports::parse_list(&list).unwrap_or_else(|e| panic!("{}: {e:#}", list_path.display()));
        let code = glue(&entry.path());
        assert!(!code.is_empty(), "{}: no src/glue.rs", entry.path().display());
        for (method, export) in METHODS {
            let implemented = code.contains(&format!("{method}("));
            let listed = list.iter().any(|l| l == export);
            assert_eq!(
                implemented,
                listed,
                "{}: `{method}` is {} in the glue but {} in the list",
                list_path.display(),
                if implemented { "implemented" } else { "not implemented" },
                if listed { "named" } else { "missing" }
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "expected a callbacks list per shipped filter, found {checked}");
}
