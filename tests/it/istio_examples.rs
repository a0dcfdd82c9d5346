//! The Istio examples (`examples/istio/*.yaml`) are objects Istio accepts and configurations our filters
//! accept:
//!
//! - every object validates against the CRD schema of Istio's own chart (`tests/fixtures/istio`), the
//!   way `kubectl apply` (strict field validation, the default) and the API server check it: the
//!   `openAPIV3Schema` (with unknown fields refused outside `x-kubernetes-preserve-unknown-fields`), the
//!   CEL rules (`x-kubernetes-validations`, each implemented here; a rule this test does not know fails
//!   it) and the list-map keys;
//! - one `WasmPlugin` per filter, pinned, with the phase, match and fail strategy the README explains,
//!   and a `pluginConfig` equal to `examples/istio/config/<filter>.json` (what `make dist` checks);
//! - each `pluginConfig`, rendered to JSON as istiod does (protobuf `Struct` → JSON), passes the filter's
//!   own configure in the wasmtime host, with the environment `vmConfig.env` gives the VM, no `vm_id`
//!   and no root id, as Istio configures it;
//! - the balancer's `EnvoyFilter` cluster and route patch are accepted by real Envoy (`--mode validate`)
//!   and steer only through filter state;
//! - Istio never sets a `vm_id`, so every plugin on a proxy shares one shared-data and queue namespace:
//!   every key and queue name our filters use starts with `meshwasm.`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshwasm_host::{CallReply, Host, HostOptions, Plugin, Proxy, Request, Upstream, UpstreamReply};
use meshwasm_tests::artifacts;
use meshwasm_tests::signer::{Signer, jwks, now};
use serde_json::{Value, json};

/// One engine for every test here: each module is compiled once (`Host::load` caches by content).
fn host() -> Host {
    static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
    HOST.get_or_init(|| Host::new(HostOptions::default()).unwrap()).clone()
}

/// The filters `make dist` ships (the Makefile's DIST_FILTERS).
const FILTERS: [&str; 5] = [
    "meshwasm_jwt_auth",
    "meshwasm_token_injector",
    "meshwasm_discovery",
    "meshwasm_balancer",
    "meshwasm_authz",
];

fn istio_dir() -> PathBuf {
    artifacts::workspace_root().join("examples/istio")
}

/// Every object of every `examples/istio/*.yaml`: (file name, object).
fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !v.is_null() {
                out.push((name.clone(), v));
            }
        }
    }
    assert!(out.len() >= 6, "examples/istio: only {} objects", out.len());
    out
}

/// A CRD from tests/fixtures/istio: its group, kind, served versions and per version the schema.
struct Crd {
    group: String,
    kind: String,
    schemas: BTreeMap<String, Value>,
}

fn crd(file: &str) -> Crd {
    let path = artifacts::workspace_root().join("tests/fixtures/istio").join(file);
    let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let spec = &v["spec"];
    let schemas = spec["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["served"] == json!(true))
        .map(|x| (x["name"].as_str().unwrap().to_string(), x["schema"]["openAPIV3Schema"].clone()))
        .collect();
    Crd {
        group: spec["group"].as_str().unwrap().into(),
        kind: spec["names"]["kind"].as_str().unwrap().into(),
        schemas,
    }
}

fn crds() -> Vec<Crd> {
    vec![crd("wasmplugins.extensions.istio.io.yaml"), crd("envoyfilters.networking.istio.io.yaml")]
}

/// The schema as strict field validation applies it: an object with `properties` takes no other field
/// unless it preserves unknown fields (the API server prunes them; `kubectl apply` refuses them).
fn strict(schema: &Value) -> Value {
    match schema {
        Value::Object(m) => {
            let mut out: serde_json::Map<String, Value> =
                m.iter().map(|(k, v)| (k.clone(), strict(v))).collect();
            if m.contains_key("properties")
                && !m.contains_key("additionalProperties")
                && m.get("x-kubernetes-preserve-unknown-fields") != Some(&json!(true))
            {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(strict).collect()),
        other => other.clone(),
    }
}

/// The URL schemes the WasmPlugin CEL rule on `url` allows.
fn url_scheme_ok(url: &str) -> bool {
    match url.split_once("://") {
        Some((scheme, rest)) => ["http", "https", "oci", "file"].contains(&scheme) && !rest.is_empty(),
        None => !url.contains(char::is_whitespace),
    }
}

/// The CEL rules of both CRDs, by their text (whitespace collapsed): true when `v` passes.
fn cel(rule: &str, v: &Value) -> Option<bool> {
    let has = |k: &str| usize::from(v.get(k).is_some());
    let keys = || v.as_object().into_iter().flat_map(|m| m.keys());
    Some(match rule {
        "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            has("selector") + has("targetRef") + has("targetRefs") <= 1
        }
        "(has(self.workloadSelector) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1" => {
            has("workloadSelector") + has("targetRefs") <= 1
        }
        r#"self.all(key, !key.contains("*"))"# => keys().all(|k| !k.contains('*')),
        "self.all(key, key.size() != 0)" => keys().all(|k| !k.is_empty()),
        r#"!self.contains("*")"# => !v.as_str()?.contains('*'),
        "self.size() == 0" => v.as_str()?.is_empty(),
        r#"isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : (isURL("http://" + self) && url("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])"# => {
            url_scheme_ok(v.as_str()?)
        }
        r#"(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)"# => {
            v.get("valueFrom") != Some(&json!("HOST")) || v.get("value").is_none()
        }
        r#"has(self.context) ? ((self.context == "WAYPOINT") ? has(self.waypoint) : !has(self.waypoint)) : !has(self.waypoint)"# => {
            (v.get("context") == Some(&json!("WAYPOINT"))) == v.get("waypoint").is_some()
        }
        "0 < self && self <= 65535" => (1..=65535).contains(&v.as_i64()?),
        _ => return None,
    })
}

/// The CEL rules and list-map keys over `v`, walking `schema` alongside it.
fn kubernetes_rules(schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    for r in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let rule = r["rule"].as_str().unwrap().split_whitespace().collect::<Vec<_>>().join(" ");
        match cel(&rule, v) {
            Some(true) => {}
            Some(false) => errs.push(format!("{path}: {}", r["message"].as_str().unwrap_or(&rule))),
            None => errs.push(format!("{path}: CEL rule not implemented by this test: {rule}")),
        }
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let sub = match schema["properties"].get(k) {
                    Some(s) => s,
                    None => &schema["additionalProperties"],
                };
                if sub.is_object() {
                    kubernetes_rules(sub, x, &format!("{path}.{k}"), errs);
                }
            }
        }
        Value::Array(items) => {
            if schema["x-kubernetes-list-type"] == json!("map") {
                let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_str().unwrap())
                    .collect();
                let mut seen = std::collections::BTreeSet::new();
                for x in items {
                    let key: Vec<String> = keys.iter().map(|k| x[*k].to_string()).collect();
                    if !seen.insert(key.clone()) {
                        errs.push(format!("{path}: duplicate list-map key {key:?}"));
                    }
                }
            }
            for (i, x) in items.iter().enumerate() {
                kubernetes_rules(&schema["items"], x, &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

/// Everything wrong with `obj` as the API server would see it (empty: accepted).
fn check(crds: &[Crd], obj: &Value) -> Vec<String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let Some(crd) = crds.iter().find(|c| c.kind == kind) else {
        return vec![format!("kind {kind:?}: not a WasmPlugin or EnvoyFilter")];
    };
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let Some(schema) =
        api.split_once('/').filter(|(g, _)| *g == crd.group).and_then(|(_, v)| crd.schemas.get(v))
    else {
        return vec![format!("apiVersion {api:?}: not served (served: {:?})", crd.schemas.keys())];
    };
    let mut errs = Vec::new();
    let meta = &obj["metadata"];
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    };
    for k in ["name", "namespace"] {
        if !meta[k].as_str().is_some_and(dns_label) {
            errs.push(format!("metadata.{k}: missing or not a DNS name"));
        }
    }
    let top: Vec<&String> = obj.as_object().unwrap().keys().collect();
    for k in top {
        if !["apiVersion", "kind", "metadata", "spec"].contains(&k.as_str()) {
            errs.push(format!("{k}: unknown field"));
        }
    }
    let spec_schema = &schema["properties"]["spec"];
    let validator = jsonschema::draft4::new(&strict(spec_schema)).unwrap();
    for e in validator.iter_errors(&obj["spec"]) {
        errs.push(format!("spec{}: {e}", e.instance_path()));
    }
    kubernetes_rules(spec_schema, &obj["spec"], "spec", &mut errs);
    errs
}

#[test]
fn every_example_object_is_valid_against_istio_crds() {
    let crds = crds();
    for (file, obj) in examples() {
        let errs = check(&crds, &obj);
        assert!(errs.is_empty(), "{file}: {} {}:\n{}", obj["kind"], obj["metadata"]["name"], errs.join("\n"));
    }
}

/// The checks above refuse what Istio refuses: a misspelled field, a bad enum value, a `sha256:`
/// prefix, an inline value with `valueFrom: HOST`, two selectors, an unknown scheme.
#[test]
fn the_crd_check_refuses_what_istio_refuses() {
    let crds = crds();
    let (_, plugin) = examples().into_iter().find(|(_, o)| o["kind"] == "WasmPlugin").unwrap();
    assert_eq!(check(&crds, &plugin), Vec::<String>::new());
    type Edit = fn(&mut Value);
    let bad: [(&str, Edit); 8] = [
        ("Additional properties", |p| p["spec"]["failstrategy"] = json!("FAIL_CLOSE")),
        ("is not one of", |p| p["spec"]["phase"] = json!("AUTHENTICATION")),
        ("does not match", |p| p["spec"]["sha256"] = json!(format!("sha256:{}", "a".repeat(64)))),
        ("value may only be set when valueFrom is INLINE", |p| {
            p["spec"]["vmConfig"] = json!({"env": [{"name": "X", "valueFrom": "HOST", "value": "v"}]})
        }),
        ("duplicate list-map key", |p| {
            p["spec"]["vmConfig"] = json!({"env": [{"name": "X", "value": "a"}, {"name": "X", "value": "b"}]})
        }),
        ("only one of targetRefs or selector", |p| {
            p["spec"]["targetRefs"] =
                json!([{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw"}])
        }),
        ("url must have schema", |p| p["spec"]["url"] = json!("ftp://example.com/x.wasm")),
        ("not served", |p| p["apiVersion"] = json!("extensions.istio.io/v1")),
    ];
    for (want, edit) in bad {
        let mut p = plugin.clone();
        edit(&mut p);
        let errs = check(&crds, &p);
        assert!(errs.iter().any(|e| e.contains(want)), "expected {want:?}, got {errs:?}");
    }
}

fn wasm_plugins() -> Vec<(String, Value)> {
    examples().into_iter().filter(|(_, o)| o["kind"] == "WasmPlugin").collect()
}

/// `meshwasm_jwt_auth` for `oci://…/meshwasm-jwt-auth:0.1.0-compat`.
fn artifact_of(url: &str) -> String {
    let image = url.rsplit('/').next().unwrap();
    let name = image.split([':', '@']).next().unwrap();
    name.replace('-', "_")
}

#[test]
fn one_pinned_wasm_plugin_per_filter_with_its_phase_and_fail_strategy() {
    let version = env!("CARGO_PKG_VERSION");
    let mut seen = BTreeMap::new();
    for (file, p) in wasm_plugins() {
        let s = &p["spec"];
        let url = s["url"].as_str().unwrap();
        let artifact = artifact_of(url);
        assert!(FILTERS.contains(&artifact.as_str()), "{file}: {url} is not one of {FILTERS:?}");
        *seen.entry(artifact.clone()).or_insert(0) += 1;
        // An image `make dist` builds, pinned to a manifest digest (64 hex digits, no prefix).
        let tag = url.rsplit(':').next().unwrap();
        assert!(url.starts_with("oci://"), "{file}: {url}");
        assert!(tag == format!("{version}-compat") || tag == format!("{version}-oci"), "{file}: tag {tag}");
        let sha = s["sha256"].as_str().unwrap_or_default();
        assert!(
            sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{file}"
        );
        assert_eq!(s["type"], "HTTP", "{file}");
        assert!(s["selector"]["matchLabels"].as_object().is_some_and(|m| !m.is_empty()), "{file}: selector");
        assert!(s["priority"].is_i64(), "{file}: priority");
        let mode = s["match"][0]["mode"].as_str().unwrap_or_default();
        let (phase, fail, want_mode) = match artifact.as_str() {
            "meshwasm_jwt_auth" => ("AUTHN", "FAIL_CLOSE", "SERVER"),
            "meshwasm_authz" => ("AUTHZ", "FAIL_CLOSE", "SERVER"),
            "meshwasm_token_injector" => ("UNSPECIFIED_PHASE", "FAIL_CLOSE", "CLIENT"),
            _ => ("UNSPECIFIED_PHASE", "FAIL_OPEN", "CLIENT"),
        };
        assert_eq!(
            (s["phase"].as_str(), s["failStrategy"].as_str(), mode),
            (Some(phase), Some(fail), want_mode)
        );
        // The same configuration `make dist` checks the optimized module with.
        let cfg = istio_dir().join("config").join(format!("{artifact}.json"));
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
        assert_eq!(s["pluginConfig"], json, "{file}: pluginConfig differs from {}", cfg.display());
    }
    assert_eq!(seen.len(), FILTERS.len(), "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

/// The JSON istiod hands the filter: `pluginConfig` is a protobuf `Struct`, whose numbers are doubles,
/// written with protojson (an integral double without a fraction).
fn as_istiod_renders(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().unwrap();
            if f.fract() == 0.0 && f.abs() < 1e15 { json!(f as i64) } else { json!(f) }
        }
        Value::Array(a) => Value::Array(a.iter().map(as_istiod_renders).collect()),
        Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), as_istiod_renders(x))).collect()),
        other => other.clone(),
    }
}

/// A WasmPlugin as the Envoy wasm filter Istio makes of it: plugin name `<namespace>.<name>`, no
/// root id, no vm_id, the JSON configuration, `vmConfig.env` as key_values (INLINE) and host_env_keys
/// (HOST; here the sidecar's value is `from-the-sidecar`).
fn plugin_as_istio_configures(host: &Host, p: &Value) -> anyhow::Result<Plugin> {
    let s = &p["spec"];
    let module = host.load(artifacts::wasm_path(&artifact_of(s["url"].as_str().unwrap_or_default())))?;
    let name = format!(
        "{}.{}",
        p["metadata"]["namespace"].as_str().unwrap(),
        p["metadata"]["name"].as_str().unwrap()
    );
    let config = match s.get("pluginConfig") {
        Some(c) if c.as_object().is_some_and(|m| !m.is_empty()) => as_istiod_renders(c).to_string(),
        _ => String::new(),
    };
    let mut plugin = Plugin::new(module).name(&name).root_id("").vm_id("").config(config.as_bytes());
    for e in s["vmConfig"]["env"].as_array().into_iter().flatten() {
        let var = e["name"].as_str().unwrap();
        plugin = match e["valueFrom"].as_str() {
            Some("HOST") => plugin.env(var, "from-the-sidecar"),
            _ => plugin.env(var, e["value"].as_str().unwrap_or_default()),
        };
    }
    Ok(plugin)
}

#[test]
fn every_plugin_config_passes_its_filters_configure_as_istio_renders_it() {
    let host = host();
    for (file, p) in wasm_plugins() {
        let plugin = plugin_as_istio_configures(&host, &p).unwrap();
        Proxy::builder(&host).plugin(plugin).build().unwrap_or_else(|e| panic!("{file}: {e:#}"));
    }
    // An environment variable named in the config but not passed by vmConfig.env: rejected.
    let (_, mut p) =
        wasm_plugins().into_iter().find(|(_, p)| p["spec"]["vmConfig"]["env"].is_array()).unwrap();
    p["spec"]["vmConfig"]["env"] = json!([]);
    let Err(err) = Proxy::builder(&host).plugin(plugin_as_istio_configures(&host, &p).unwrap()).build()
    else {
        panic!("accepted without its client secret");
    };
    assert!(format!("{err:#}").contains("ORDERS_CLIENT_SECRET"), "{err:#}");
}

/// The balancer's EnvoyFilter: the cluster it adds is an ORIGINAL_DST cluster that reads no header, the
/// route patch points at it, both on the port and host the balancer WasmPlugin serves, and real Envoy
/// accepts the cluster and route (with Istio's `sds-grpc` bootstrap cluster beside them).
#[test]
fn balancer_envoy_filter_adds_a_filter_state_only_original_dst_cluster_envoy_accepts() {
    let all = examples();
    let (_, ef) = all.iter().find(|(_, o)| o["kind"] == "EnvoyFilter").expect("an EnvoyFilter");
    let (_, bal) = all
        .iter()
        .find(|(_, o)| {
            o["kind"] == "WasmPlugin"
                && artifact_of(o["spec"]["url"].as_str().unwrap()) == "meshwasm_balancer"
        })
        .unwrap();
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let cluster = &patches.iter().find(|p| p["applyTo"] == "CLUSTER").unwrap()["patch"];
    assert_eq!(cluster["operation"], "ADD");
    let cluster = &cluster["value"];
    assert_eq!(cluster["type"], "ORIGINAL_DST");
    assert_eq!(cluster["lb_policy"], "CLUSTER_PROVIDED");
    assert_eq!(
        cluster["original_dst_lb_config"]["use_http_header"],
        json!(false),
        "a client must not pick the ip:port"
    );
    let route = patches.iter().find(|p| p["applyTo"] == "HTTP_ROUTE").unwrap();
    assert_eq!(route["patch"]["value"]["route"]["cluster"], cluster["name"]);
    let rc = &route["match"]["routeConfiguration"];
    assert_eq!(rc["portNumber"], bal["spec"]["match"][0]["ports"][0]["number"]);
    let vhost = rc["vhost"]["name"].as_str().unwrap();
    let host_name = vhost.rsplit_once(':').unwrap().0;
    assert!(bal["spec"]["pluginConfig"]["services"].get(host_name).is_some(), "balancer service {host_name}");
    assert_eq!(bal["spec"]["pluginConfig"]["service_from"], json!(["authority"]));

    let mut route_value = json!({"match": {"prefix": "/"}});
    for (k, v) in route["patch"]["value"].as_object().unwrap() {
        route_value[k] = v.clone();
    }
    let bootstrap = json!({
        // A sidecar's node, as Istio's bootstrap names it (SDS needs one).
        "node": {"id": "sidecar~10.0.0.1~orders-1.orders~orders.svc.cluster.local", "cluster": "orders.orders"},
        "static_resources": {
            "listeners": [{
                "name": "virtualOutbound",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": {"name": "8080", "virtual_hosts": [
                            {"name": vhost, "domains": ["*"], "routes": [route_value]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                    }
                }]}]
            }],
            "clusters": [cluster.clone(), {
                // As in every Istio sidecar's bootstrap: the agent's SDS server.
                "name": "sds-grpc", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "sds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"pipe": {"path": "./var/run/secrets/workload-spiffe-uds/socket"}}}}]}]}
            }]
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bootstrap.json");
    std::fs::write(&f, bootstrap.to_string()).unwrap();
    let out = Command::new(artifacts::envoy_binary())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio gives every WasmPlugin the same (empty) vm_id, so shared data and queues are one namespace for
/// all plugins on a proxy, ours and anyone else's. All five filters run here in one proxy with vm_id ""
/// and do what writes shared data (JWKS fetch, token fetch, discovery publishing, balancer subscribing);
/// every key and queue name must be under `meshwasm.`.
#[test]
fn every_shared_data_key_and_queue_name_is_under_meshwasm() {
    let host = host();
    let load = |a: &str| host.load(artifacts::wasm_path(a)).unwrap();
    let signer = Signer::rsa("rsa1.pem", "r1");
    let keys = jwks(&[&signer]);
    let jwt = json!({
        "providers": {"idp": {"issuer": "https://idp.test", "audiences": ["api"],
                              "remote_jwks": {"cluster": "idp", "uri": "https://idp.test/jwks"}}},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["idp"]}]
    });
    let token = json!({"token_endpoint": {"cluster": "idp", "path": "/oauth2/token", "authority": "idp.test"},
                       "client_id": "orders", "client_secret": "s3cret-for-tests"});
    let discovery = json!({"services": [{"name": "api", "allow_loopback": true,
        "source": {"static": {"endpoints": [{"address": "127.0.0.1:9001"}, {"address": "127.0.0.1:9002"}]}}}]});
    let balancer = json!({"services": {"api": {"algorithm": "round_robin"}}});
    let authz = json!({"policies": [{"name": "all", "action": "ALLOW", "rules": [{}]}]});
    let fetched = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = fetched.clone();
    let mut p = Proxy::builder(&host)
        .workers(2)
        .start_time(SystemTime::now())
        .plugin(Plugin::new(load("meshwasm_jwt_auth")).name("orders.jwt").config(jwt.to_string().as_bytes()))
        .plugin(Plugin::new(load("meshwasm_authz")).name("orders.authz").config(authz.to_string().as_bytes()))
        .plugin(
            Plugin::new(load("meshwasm_token_injector"))
                .name("orders.token")
                .config(token.to_string().as_bytes()),
        )
        .plugin(
            Plugin::new(load("meshwasm_discovery"))
                .name("orders.discovery")
                .config(discovery.to_string().as_bytes()),
        )
        .plugin(
            Plugin::new(load("meshwasm_balancer"))
                .name("orders.balancer")
                .config(balancer.to_string().as_bytes()),
        )
        .upstream(
            "idp",
            Upstream::handler(move |call| {
                let path = call.headers.get(":path").unwrap_or_default().to_string();
                seen.lock().unwrap().push(path.clone());
                if path == "/oauth2/token" {
                    CallReply::response(
                        200,
                        [("content-type", "application/json")],
                        json!({"access_token": "tok", "token_type": "Bearer", "expires_in": 600}).to_string(),
                    )
                } else {
                    CallReply::response(200, [("content-type", "application/json")], keys.clone())
                }
            }),
        )
        .build()
        .unwrap();
    p.advance(Duration::from_secs(2));
    let bearer = format!(
        "Bearer {}",
        signer.mint(&json!({"iss": "https://idp.test", "aud": "api", "sub": "a", "exp": now() + 600}))
    );
    for w in 0..2 {
        let ex = p
            .send(w, Request::get("/x").header("authorization", bearer.clone()), UpstreamReply::new(200))
            .unwrap();
        assert_eq!(ex.status, 200, "worker {w}: {:?}", ex.local_reply);
        p.advance(Duration::from_secs(1));
    }
    let fetched = fetched.lock().unwrap().clone();
    assert!(
        fetched.iter().any(|f| f == "/jwks") && fetched.iter().any(|f| f == "/oauth2/token"),
        "{fetched:?}"
    );
    let keys = p.shared_data_keys("");
    let queues = p.queue_names("");
    // Each filter left its mark, so the check below covers all of them.
    for want in [
        "meshwasm.endpoints.v1.set.api",
        "meshwasm.jwt-auth.",
        "meshwasm.token-injector.",
        "meshwasm.discovery.",
    ] {
        assert!(keys.iter().any(|k| k.starts_with(want)), "no key {want}… in {keys:?}");
    }
    assert!(!queues.is_empty(), "the balancer registers a notification queue");
    for k in keys.iter().chain(&queues) {
        assert!(k.starts_with("meshwasm."), "shared-data key or queue {k:?} is not under meshwasm.");
    }
}

/// `examples/istio/pin.sh` writes each image's manifest digest from a `dist/DIGESTS` (the format
/// `make dist` writes: `<name>:<tag> sha256:<digest>` for both tags of every image) into the `sha256:`
/// line of the WasmPlugin that pulls that image, and into no other.
#[test]
fn pin_sh_pins_every_plugin_to_its_images_digest() {
    let version = env!("CARGO_PKG_VERSION");
    let crds = crds();
    let dir = tempfile::tempdir().unwrap();
    let istio = dir.path().join("examples/istio");
    std::fs::create_dir_all(&istio).unwrap();
    for e in std::fs::read_dir(istio_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, istio.join(p.file_name().unwrap())).unwrap();
        }
    }
    let mut digests = String::new();
    let mut want = BTreeMap::new();
    for (i, f) in FILTERS.iter().enumerate() {
        let name = f.replace('_', "-");
        for (j, tag) in ["oci", "compat"].iter().enumerate() {
            let hex = format!("{:x}", 0x10 * (i + 1) + j).repeat(32);
            digests.push_str(&format!("{name}:{version}-{tag} sha256:{hex}\n"));
            want.insert(format!("{name}:{version}-{tag}"), hex);
        }
    }
    let digests_file = dir.path().join("DIGESTS");
    std::fs::write(&digests_file, digests).unwrap();
    let out = Command::new("bash").arg(istio.join("pin.sh")).arg(&digests_file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pinned = 0;
    for e in std::fs::read_dir(&istio).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        for doc in serde_yaml::Deserializer::from_str(&std::fs::read_to_string(&p).unwrap()) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if v["kind"] != "WasmPlugin" {
                continue;
            }
            let url = v["spec"]["url"].as_str().unwrap();
            let image = url.rsplit('/').next().unwrap();
            // A digest of digits only (as some here) must stay a string for Istio's schema.
            assert_eq!(v["spec"]["sha256"].as_str(), want.get(image).map(String::as_str), "{url}");
            assert_eq!(check(&crds, &v), Vec::<String>::new(), "{url}");
            pinned += 1;
        }
    }
    assert_eq!(pinned, FILTERS.len());
}
