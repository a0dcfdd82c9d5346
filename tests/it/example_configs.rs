//! Every example we ship is held to the rules our own tests run under: each Envoy example turns on
//! Envoy's path defences in every connection manager and is accepted by real Envoy
//! (`--mode validate`), and every plugin configuration in it (and in the Istio example) is accepted by
//! its filter's real `.wasm` in the wasmtime host, so an example never shows an insecure or stale setup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use meshwasm_host::{Host, HostOptions, Plugin, Proxy};
use meshwasm_tests::{artifacts, envoy};
use serde_yaml::Value;

fn envoy_examples() -> Vec<PathBuf> {
    let root = artifacts::workspace_root().join("examples");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let f = dir.join("envoy.yaml");
        if f.is_file() {
            out.push(f);
        }
    }
    out.sort();
    assert!(out.len() >= 4, "examples/*/envoy.yaml: found only {out:?}");
    out
}

/// Every mapping in the document, depth first.
fn walk<'a>(v: &'a Value, out: &mut Vec<&'a serde_yaml::Mapping>) {
    match v {
        Value::Mapping(m) => {
            out.push(m);
            for (_, x) in m {
                walk(x, out);
            }
        }
        Value::Sequence(s) => s.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

fn get<'a>(m: &'a serde_yaml::Mapping, k: &str) -> Option<&'a Value> {
    m.get(Value::String(k.into()))
}

fn load(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_connection_manager_normalizes_paths() {
    for f in envoy_examples() {
        let doc = load(&f);
        let mut maps = Vec::new();
        walk(&doc, &mut maps);
        let hcms: Vec<_> = maps
            .iter()
            .filter(|m| {
                get(m, "@type").and_then(Value::as_str).is_some_and(|t| t.ends_with(".HttpConnectionManager"))
            })
            .collect();
        assert!(!hcms.is_empty(), "{}: no http_connection_manager", f.display());
        for h in hcms {
            let name = get(h, "stat_prefix").and_then(Value::as_str).unwrap_or("?");
            assert_eq!(
                get(h, "normalize_path"),
                Some(&Value::Bool(true)),
                "{}: {name}: normalize_path",
                f.display()
            );
            assert_eq!(
                get(h, "merge_slashes"),
                Some(&Value::Bool(true)),
                "{}: {name}: merge_slashes",
                f.display()
            );
            assert_eq!(
                get(h, "path_with_escaped_slashes_action").and_then(Value::as_str),
                Some("REJECT_REQUEST"),
                "{}: {name}: path_with_escaped_slashes_action",
                f.display()
            );
        }
    }
}

/// The harness that runs the demo and every Envoy test has the same defences on by default.
#[test]
fn test_listeners_normalize_paths_by_default() {
    let l = envoy::Listener::new("main", "backend");
    assert!(l.normalize_paths);
}

/// The `.wasm` plugin configurations inside an Envoy example: (artifact file name, root_id, configuration).
fn plugins(doc: &Value) -> Vec<(String, String, String)> {
    let mut maps = Vec::new();
    walk(doc, &mut maps);
    let mut out = Vec::new();
    for m in maps {
        let (Some(vm), Some(conf)) = (get(m, "vm_config"), get(m, "configuration")) else { continue };
        let file = vm["code"]["local"]["filename"].as_str().unwrap_or_default();
        let name = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let root_id = get(m, "root_id").and_then(Value::as_str).unwrap_or_default().to_string();
        out.push((name, root_id, conf["value"].as_str().unwrap_or_default().to_string()));
    }
    out
}

/// One host for every configuration: each artifact is compiled once (the host caches modules).
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::new(HostOptions::default()).unwrap())
}

fn configure(artifact: &str, root_id: &str, config: &str) -> anyhow::Result<()> {
    let host = host();
    let module = host.load(artifacts::wasm_path(artifact))?;
    // The Istio example reads its client secret from the environment (`client_secret_env`).
    // The root_id selects the filter in the combined meshwasm.wasm (examples/combined).
    let plugin = Plugin::new(module)
        .name(artifact)
        .root_id(root_id)
        .config(config.as_bytes())
        .env("ORDERS_CLIENT_SECRET", "example");
    Proxy::builder(host).plugin(plugin).build()?;
    Ok(())
}

#[test]
fn every_example_plugin_config_is_accepted_by_its_filter() {
    let mut checked = 0;
    for f in envoy_examples() {
        for (artifact, root_id, config) in plugins(&load(&f)) {
            configure(&artifact, &root_id, &config)
                .unwrap_or_else(|e| panic!("{}: {artifact}: {e:#}", f.display()));
            checked += 1;
        }
    }
    let istio = artifacts::workspace_root().join("examples/istio/config");
    for e in std::fs::read_dir(&istio).unwrap() {
        let p = e.unwrap().path();
        let artifact = p.file_stem().unwrap().to_str().unwrap().to_string();
        let config = std::fs::read_to_string(&p).unwrap();
        configure(&artifact, "", &config).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} plugin configs found");
}

#[test]
fn real_envoy_accepts_every_example() {
    let root = artifacts::workspace_root();
    for f in envoy_examples() {
        let out = Command::new(artifacts::envoy_binary())
            .current_dir(&root)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: envoy --mode validate failed:\n{}{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
