//! The JSON Schemas in `schemas/` (generated from the Rust config types, see
//! `meshwasm_tests::schemas`): each committed file is what the types generate today (else: run
//! `make schemas`), and every configuration we show is valid against its schema — the README
//! examples, the plugin configurations in `examples/*/envoy.yaml`, `examples/istio/config/*.json`,
//! the `pluginConfig` of `examples/istio/*.yaml`, `examples/discovery/all-sources.json`, and the
//! `meshwasm-host serve` files in `examples/serve` (with their filters' configs). The schemas also
//! accept the deprecated spellings the filters still take, and reject what the filters reject by
//! shape (an unknown field, a duration without unit).

use std::path::{Path, PathBuf};

use meshwasm_tests::artifacts::workspace_root;
use meshwasm_tests::schemas::{UPDATE_COMMAND, filter_schemas, render, schema_dir, serve_schema};
use serde_json::{Value, json};

fn schema(name: &str) -> Value {
    let path = schema_dir().join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run `{UPDATE_COMMAND}`)", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn host_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().join("meshwasm-host")
}

/// Validation errors of `instance` against `schema` (empty: valid).
fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let v = jsonschema::validator_for(schema).unwrap_or_else(|e| panic!("schema does not compile: {e}"));
    v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

#[track_caller]
fn assert_valid(schema: &Value, instance: &Value, what: &str) {
    let errs = errors(schema, instance);
    assert!(errs.is_empty(), "{what}: not valid against its schema: {errs:#?}\n{instance:#}");
}

/// `schema` with its root replaced by a reference to its definition `def` (e.g. a discovery
/// source on its own).
fn sub_schema(schema: &Value, def: &str) -> Value {
    json!({"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": format!("#/$defs/{def}")})
}

#[test]
fn committed_schemas_are_up_to_date() {
    let mut all: Vec<(String, Value)> =
        filter_schemas().into_iter().map(|(n, s)| (format!("{n}.schema.json"), s)).collect();
    all.push(("serve.schema.json".into(), serve_schema(&host_binary()).unwrap()));
    let mut stale = Vec::new();
    for (file, generated) in all {
        let committed = std::fs::read_to_string(schema_dir().join(&file)).unwrap_or_default();
        if committed != render(&generated) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is out of date for {stale:?}: the config types changed. Update with `{UPDATE_COMMAND}` and commit schemas/."
    );
}

/// The artifact a `.wasm` path names (`…/meshwasm_jwt_auth.wasm` → `meshwasm_jwt_auth`), if it is a
/// filter with a schema.
fn artifact_of(path: &str) -> Option<String> {
    let stem = Path::new(path).file_stem()?.to_str()?.to_owned();
    filter_schemas().iter().any(|(n, _)| *n == stem).then_some(stem)
}

/// In the combined `meshwasm.wasm` the root_id names the filter: `meshwasm.jwt_auth` → `meshwasm_jwt_auth`.
fn combined_artifact(path: &str, root_id: &str) -> Option<String> {
    let combined = Path::new(path).file_stem()? == "meshwasm";
    if combined { artifact_of(&format!("{}.wasm", root_id.replace('.', "_"))) } else { None }
}

fn yaml_docs(path: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

fn to_json(v: &serde_yaml::Value) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Every mapping in a JSON value, depth first.
fn objects<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
    match v {
        Value::Object(m) => {
            out.push(m);
            m.values().for_each(|x| objects(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| objects(x, out)),
        _ => {}
    }
}

#[test]
fn example_plugin_configs_are_valid() {
    let root = workspace_root().join("examples");
    let mut checked = Vec::new();
    // Envoy examples: every wasm filter's configuration.value (a JSON string).
    for dir in std::fs::read_dir(&root).unwrap() {
        let f = dir.unwrap().path().join("envoy.yaml");
        if !f.is_file() {
            continue;
        }
        for doc in yaml_docs(&f) {
            let doc = to_json(&doc);
            let mut maps = Vec::new();
            objects(&doc, &mut maps);
            for m in maps {
                let (Some(vm), Some(conf)) = (m.get("vm_config"), m.get("configuration")) else { continue };
                let file = vm["code"]["local"]["filename"].as_str().unwrap_or_default();
                let root_id = m.get("root_id").and_then(Value::as_str).unwrap_or_default();
                let Some(artifact) = artifact_of(file).or_else(|| combined_artifact(file, root_id)) else {
                    continue;
                };
                let text = conf["value"].as_str().unwrap_or_default();
                let config: Value = serde_json::from_str(text).unwrap();
                assert_valid(&schema(&artifact), &config, &format!("{}: {artifact}", f.display()));
                checked.push(format!("{}: {artifact}", f.display()));
            }
        }
    }
    // Istio: the plain configs and each WasmPlugin's pluginConfig.
    let istio = root.join("istio");
    for e in std::fs::read_dir(istio.join("config")).unwrap() {
        let p = e.unwrap().path();
        let artifact = p.file_stem().unwrap().to_str().unwrap().to_owned();
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_valid(&schema(&artifact), &config, &p.display().to_string());
        checked.push(p.display().to_string());
    }
    for e in std::fs::read_dir(&istio).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        for doc in yaml_docs(&p) {
            let doc = to_json(&doc);
            if doc["kind"] != "WasmPlugin" {
                continue;
            }
            let stem = p.file_stem().unwrap().to_str().unwrap().replace('-', "_");
            let artifact = format!("meshwasm_{stem}");
            let config = doc["spec"]["pluginConfig"].clone();
            assert!(config.is_object(), "{}: no pluginConfig", p.display());
            assert_valid(&schema(&artifact), &config, &format!("{}: pluginConfig", p.display()));
            checked.push(format!("{}: pluginConfig", p.display()));
        }
    }
    // The discovery example with every source.
    let p = root.join("discovery/all-sources.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_valid(&schema("meshwasm_discovery"), &config, &p.display().to_string());
    checked.push(p.display().to_string());
    assert!(checked.len() >= 15, "only {} example configs found: {checked:#?}", checked.len());
}

#[test]
fn serve_examples_and_their_filter_configs_are_valid() {
    let serve = schema("serve");
    let mut checked = 0;
    for e in std::fs::read_dir(workspace_root().join("examples/serve")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("yaml") {
            continue;
        }
        let doc = to_json(&yaml_docs(&p)[0]);
        assert_valid(&serve, &doc, &p.display().to_string());
        checked += 1;
        for l in doc["listeners"].as_array().unwrap() {
            for f in l["filters"].as_array().into_iter().flatten() {
                let Some(artifact) = f["wasm"].as_str().and_then(artifact_of) else { continue };
                let config = match &f["config"] {
                    Value::String(s) => serde_json::from_str(s).unwrap(),
                    other => other.clone(),
                };
                assert_valid(&schema(&artifact), &config, &format!("{}: {artifact}", p.display()));
            }
        }
    }
    assert!(checked >= 4, "only {checked} serve examples");
    // What serve rejects by shape, the schema rejects too.
    let bad = json!({"listeners": [{"address": 10000, "route": {"cluster": "b"}, "filtres": []}]});
    assert!(!errors(&serve, &bad).is_empty());
}

/// The ```json blocks of a markdown file.
fn json_blocks(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```json") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                // `jsonc`: `//` comment lines separate several configs.
                let mut current = String::new();
                for l in b.lines() {
                    if l.trim_start().starts_with("//") {
                        if !current.trim().is_empty() {
                            out.push(serde_json::from_str(&current).unwrap_or(Value::Null));
                        }
                        current.clear();
                    } else {
                        current.push_str(l);
                        current.push('\n');
                    }
                }
                if !current.trim().is_empty() {
                    out.push(serde_json::from_str(&current).unwrap_or(Value::Null));
                }
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn readme_config_examples_are_valid() {
    let root = workspace_root();
    let mut checked = 0;
    for (filter, artifact) in [
        ("jwt-auth", "meshwasm_jwt_auth"),
        ("token-injector", "meshwasm_token_injector"),
        ("discovery", "meshwasm_discovery"),
        ("balancer", "meshwasm_balancer"),
        ("authz", "meshwasm_authz"),
    ] {
        let s = schema(artifact);
        let path = root.join("filters").join(filter).join("README.md");
        for (i, block) in json_blocks(&path).into_iter().enumerate() {
            let what = format!("{} json block {}", path.display(), i + 1);
            assert!(block.is_object(), "{what}: not a JSON object");
            // Discovery documents each source on its own: `{"<kind>": {...}}`.
            let one_source = filter == "discovery"
                && block.as_object().is_some_and(|o| o.len() == 1)
                && s["$defs"]["SourceConfig"]
                    .to_string()
                    .contains(&format!("\"{}\"", block.as_object().unwrap().keys().next().unwrap()));
            if one_source {
                assert_valid(&sub_schema(&s, "SourceConfig"), &block, &what);
            } else {
                assert_valid(&s, &block, &what);
            }
            checked += 1;
        }
    }
    // The top README's minimal configurations, one per filter, in table order.
    let top = json_blocks(&root.join("README.md"));
    let order = ["meshwasm_jwt_auth", "meshwasm_token_injector", "meshwasm_discovery", "meshwasm_balancer"];
    assert_eq!(top.len(), order.len(), "README.md: {top:#?}");
    for (config, artifact) in top.iter().zip(order) {
        assert_valid(&schema(artifact), config, &format!("README.md: {artifact}"));
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} README examples");
}

/// The schemas describe what the filters accept: the deprecated spellings (integer `*_ms` / `*_s`
/// fields, jwt-auth's `basic`/`post`), `client_secret_env` and `private_key_jwt`; and reject what
/// they reject by shape.
#[test]
fn schemas_accept_deprecated_spellings_and_reject_typos() {
    let ti = schema("meshwasm_token_injector");
    let base = json!({"token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp", "timeout_ms": 1500},
                      "client_id": "a", "client_secret_env": "SECRET", "max_wait_ms": 3000,
                      "refresh": {"before_expiry_s": 60}, "retry_backoff": {"initial_ms": 100}});
    assert_valid(&ti, &base, "legacy token-injector");
    let key = json!({"token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp"}, "client_id": "a",
                     "auth_method": "private_key_jwt",
                     "client_assertion": {"private_key_env": "KEY", "key_id": "k1", "alg": "ES256", "lifetime": "60s"}});
    assert_valid(&ti, &key, "private_key_jwt token-injector");
    for (bad, why) in [
        (
            json!({"token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp", "timeout": "5"}, "client_id": "a"}),
            "a duration without unit",
        ),
        (
            json!({"token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp"}, "client_id": "a", "scoeps": []}),
            "a typo",
        ),
        (
            json!({"token_endpoint": {"cluster": "idp", "path": "/t", "authority": "idp"}, "client_id": "a",
                "client_assertion": {"private_key_env": "K", "alg": "HS256"}}),
            "an HMAC assertion",
        ),
    ] {
        assert!(!errors(&ti, &bad).is_empty(), "{why} passed the schema");
    }
    let ja = schema("meshwasm_jwt_auth");
    let legacy = json!({"key_wait_timeout_ms": 500, "providers": {"p": {"issuer": "i", "clock_skew_s": 30,
        "remote_jwks": {"cluster": "idp", "timeout_ms": 500, "cache_duration_s": 600},
        "introspection": {"cluster": "idp", "path": "/i", "authority": "idp", "client_id": "rs",
                          "client_secret": "s", "auth_method": "basic", "timeout_ms": 100}}}});
    assert_valid(&ja, &legacy, "legacy jwt-auth");
    let bad = json!({"providers": {"p": {"isuer": "i"}}});
    assert!(!errors(&ja, &bad).is_empty(), "a typo passed the schema");
}

/// `meshwasm-host check --config` with a configuration the filter rejects names the schema file.
#[test]
fn host_check_points_at_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    std::fs::write(&config, r#"{"policies": [], "polcies": []}"#).unwrap();
    let module = meshwasm_tests::artifacts::wasm_path("meshwasm_authz");
    let out = std::process::Command::new(host_binary())
        .arg("check")
        .arg(&module)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("polcies"), "{stderr}");
    assert!(
        stderr.contains("(the configuration's JSON Schema: schemas/meshwasm_authz.schema.json)"),
        "{stderr}"
    );
    assert!(schema_dir().join("meshwasm_authz.schema.json").is_file());
}

/// `check --env` gives the VM the variable a configuration names in `client_secret_env` (as the pod's env
/// does in Istio): without it the Istio example is refused naming the variable, with it the example loads.
#[test]
fn host_check_passes_environment_variables_to_the_vm() {
    let module = meshwasm_tests::artifacts::wasm_path("meshwasm_token_injector");
    let config = workspace_root().join("examples/istio/config/meshwasm_token_injector.json");
    let run = |env: &[&str]| {
        let mut cmd = std::process::Command::new(host_binary());
        cmd.arg("check").arg(&module).arg("--config").arg(&config);
        for e in env {
            cmd.arg("--env").arg(e);
        }
        cmd.env_remove("ORDERS_CLIENT_SECRET").output().unwrap()
    };
    let without = run(&[]);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("ORDERS_CLIENT_SECRET"), "{stderr}");

    let with = run(&["ORDERS_CLIENT_SECRET=placeholder"]);
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert!(with.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&with.stderr));
    assert!(stdout.contains("result: OK"), "{stdout}");

    let malformed = run(&["NO_EQUALS_SIGN"]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("NAME=VALUE"));
}
