//! Real Envoy for tests: a bootstrap generated from Rust, started on free loopback ports, readiness
//! checked through the admin endpoint, logs kept and printed when a test fails, always killed on drop.
//!
//! ```no_run
//! use meshwasm_tests::envoy::{Cluster, EnvoyConfig, HttpFilter, Listener, WasmFilter};
//! use meshwasm_tests::{artifacts, backend::Backend, process};
//! let backend = Backend::start("a").unwrap();
//! let envoy = EnvoyConfig::new()
//!     .listener(
//!         Listener::new("main", "backend")
//!             .filter(HttpFilter::Wasm(WasmFilter::new("probe", artifacts::wasm_path("meshwasm_probe")).config("{}"))),
//!     )
//!     .cluster(Cluster::static_hosts("backend", &[backend.addr()]))
//!     .start()
//!     .unwrap();
//! let resp = process::http_get(envoy.listener_addr("main"), "/").unwrap();
//! assert_eq!(resp.status, 200);
//! ```
//!
//! Wasm filters use `envoy.filters.http.wasm` (typed config
//! `type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm`) with the V8 runtime, the code from a
//! local file and the plugin/VM configuration as `google.protobuf.StringValue`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::artifacts;
use crate::process::{self, ChildGuard, HttpResponse};

/// The header an [`Cluster::original_dst_header`] cluster takes the upstream address from (the
/// balancer's `endpoint_header` default). [`Cluster::original_dst`] ignores it.
pub const ENDPOINT_HEADER: &str = "x-meshwasm-endpoint";

/// A proxy-wasm filter loaded into Envoy.
#[derive(Debug, Clone)]
pub struct WasmFilter {
    /// Plugin name (`plugin_name` property; also the stats prefix).
    pub name: String,
    pub root_id: String,
    /// VMs with the same vm_id (and code) are shared by plugins and share shared data.
    pub vm_id: String,
    pub path: PathBuf,
    /// Plugin configuration (`proxy_on_configure`).
    pub config: String,
    /// VM configuration (`proxy_on_vm_start`).
    pub vm_config: String,
    /// Environment variables visible to the module through WASI.
    pub env: Vec<(String, String)>,
    /// `fail_open`: on a VM failure, pass requests instead of 503.
    pub fail_open: bool,
}

impl WasmFilter {
    /// A filter named `name` from `path`, root_id and vm_id equal to `name`, empty configs.
    pub fn new(name: &str, path: impl AsRef<Path>) -> Self {
        Self {
            name: name.to_owned(),
            root_id: name.to_owned(),
            vm_id: name.to_owned(),
            path: path.as_ref().to_owned(),
            config: String::new(),
            vm_config: String::new(),
            env: Vec::new(),
            fail_open: false,
        }
    }

    pub fn config(mut self, config: impl Into<String>) -> Self {
        self.config = config.into();
        self
    }

    pub fn vm_config(mut self, vm_config: impl Into<String>) -> Self {
        self.vm_config = vm_config.into();
        self
    }

    pub fn root_id(mut self, root_id: &str) -> Self {
        self.root_id = root_id.to_owned();
        self
    }

    pub fn vm_id(mut self, vm_id: &str) -> Self {
        self.vm_id = vm_id.to_owned();
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.fail_open = fail_open;
        self
    }

    fn to_json(&self) -> Value {
        let mut vm_config = json!({
            "vm_id": self.vm_id,
            "runtime": "envoy.wasm.runtime.v8",
            "code": { "local": { "filename": self.path.display().to_string() } },
            "configuration": { "@type": "type.googleapis.com/google.protobuf.StringValue", "value": self.vm_config },
        });
        if !self.env.is_empty() {
            let kv: BTreeMap<&str, &str> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            vm_config["environment_variables"] = json!({ "key_values": kv });
        }
        json!({
            "name": "envoy.filters.http.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": self.name,
                    "root_id": self.root_id,
                    "fail_open": self.fail_open,
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": self.config,
                    },
                    "vm_config": vm_config,
                }
            }
        })
    }

    /// The same plugin as a bootstrap Wasm service (`envoy.bootstrap.wasm`, `singleton: true`: one VM
    /// on the main thread, root context only).
    fn to_service_json(&self) -> Value {
        let mut filter = self.to_json();
        let config = filter["typed_config"]["config"].take();
        json!({
            "name": "envoy.bootstrap.wasm",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                "singleton": true,
                "config": config,
            }
        })
    }
}

/// One HTTP filter of a listener's chain (the router is appended automatically).
#[derive(Debug, Clone)]
pub enum HttpFilter {
    Wasm(WasmFilter),
    /// A native filter as YAML, e.g. `name: envoy.filters.http.jwt_authn` + `typed_config`.
    Raw(String),
}

/// What a route does.
#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to the named cluster.
    Cluster(String),
    /// Forward to the cluster named in a request header.
    ClusterHeader(String),
    /// Answer directly.
    Direct { status: u16, body: String },
}

/// A route of the listener's single virtual host (domains `*`).
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: String,
    /// Exact header matches.
    pub headers: Vec<(String, String)>,
    pub action: RouteAction,
    /// Upstream timeout (Envoy's default 15 s when None).
    pub timeout: Option<Duration>,
    pub name: Option<String>,
}

impl Route {
    pub fn to_cluster(prefix: &str, cluster: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            headers: Vec::new(),
            action: RouteAction::Cluster(cluster.to_owned()),
            timeout: None,
            name: None,
        }
    }

    pub fn direct(prefix: &str, status: u16, body: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            headers: Vec::new(),
            action: RouteAction::Direct { status, body: body.to_owned() },
            timeout: None,
            name: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn named(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    fn to_json(&self) -> Value {
        let mut m = json!({ "prefix": self.prefix });
        if !self.headers.is_empty() {
            m["headers"] = self
                .headers
                .iter()
                .map(|(k, v)| json!({ "name": k, "string_match": { "exact": v } }))
                .collect();
        }
        let mut r = json!({ "match": m });
        if let Some(name) = &self.name {
            r["name"] = json!(name);
        }
        match &self.action {
            RouteAction::Cluster(c) | RouteAction::ClusterHeader(c) => {
                let key =
                    if matches!(self.action, RouteAction::Cluster(_)) { "cluster" } else { "cluster_header" };
                let mut route = json!({ key: c });
                if let Some(t) = self.timeout {
                    route["timeout"] = json!(duration(t));
                }
                r["route"] = route;
            }
            RouteAction::Direct { status, body } => {
                r["direct_response"] = json!({ "status": status, "body": { "inline_string": body } });
            }
        }
        r
    }
}

/// An HTTP listener on loopback.
#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    /// 0 = any free port (found through the admin endpoint after start).
    pub port: u16,
    pub filters: Vec<HttpFilter>,
    pub routes: Vec<Route>,
    /// Connection buffer limit (request/response bodies buffered by filters above it give 413/500).
    pub buffer_limit: Option<u32>,
    /// Accept HTTP/2 (h2c) as well as HTTP/1.1.
    pub http2: bool,
    /// Let Envoy add its own headers (`x-request-id`, `x-envoy-upstream-service-time`, …); off for
    /// differential tests, whose other host does not model them.
    pub envoy_headers: bool,
    /// Envoy's own path defences (`normalize_path`, `merge_slashes`, escaped slashes rejected), on by
    /// default as every example config has them; off to show that a filter is safe on its own.
    pub normalize_paths: bool,
    /// The filter chain's `transport_socket` as JSON (e.g. a `DownstreamTlsContext` for mTLS); none: plaintext.
    pub transport_socket: Option<Value>,
}

impl Listener {
    /// A listener routing everything to `cluster`.
    pub fn new(name: &str, cluster: &str) -> Self {
        Self {
            name: name.to_owned(),
            port: 0,
            filters: Vec::new(),
            routes: vec![Route::to_cluster("/", cluster)],
            buffer_limit: None,
            http2: false,
            envoy_headers: true,
            normalize_paths: true,
            transport_socket: None,
        }
    }

    /// A listener with no routes yet (add them with [`Listener::route`]).
    pub fn empty(name: &str) -> Self {
        Self { routes: Vec::new(), ..Self::new(name, "") }
    }

    pub fn filter(mut self, filter: HttpFilter) -> Self {
        self.filters.push(filter);
        self
    }

    pub fn wasm(self, filter: WasmFilter) -> Self {
        self.filter(HttpFilter::Wasm(filter))
    }

    /// Adds a route before the existing ones (first match wins in Envoy).
    pub fn route_first(mut self, route: Route) -> Self {
        self.routes.insert(0, route);
        self
    }

    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Replaces all routes.
    pub fn routes(mut self, routes: Vec<Route>) -> Self {
        self.routes = routes;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Without Envoy-generated headers: no `x-request-id` (generate_request_id false) and the router's
    /// `suppress_envoy_headers`.
    pub fn without_envoy_headers(mut self) -> Self {
        self.envoy_headers = false;
        self
    }

    /// Without Envoy's path normalization: the filters see `:path` exactly as the client sent it.
    pub fn raw_paths(mut self) -> Self {
        self.normalize_paths = false;
        self
    }

    pub fn buffer_limit(mut self, bytes: u32) -> Self {
        self.buffer_limit = Some(bytes);
        self
    }

    /// Serves TLS with this `transport_socket` (JSON, as in Envoy's `filter_chains[].transport_socket`).
    pub fn transport_socket(mut self, transport_socket: Value) -> Self {
        self.transport_socket = Some(transport_socket);
        self
    }

    fn to_json(&self) -> Result<Value> {
        let mut filters = Vec::new();
        for f in &self.filters {
            filters.push(match f {
                HttpFilter::Wasm(w) => w.to_json(),
                HttpFilter::Raw(yaml) => yaml_to_json(yaml)?,
            });
        }
        filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
                "suppress_envoy_headers": !self.envoy_headers,
            }
        }));
        let mut hcm = json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": self.name,
            "codec_type": if self.http2 { "AUTO" } else { "HTTP1" },
            "route_config": {
                "name": format!("{}_routes", self.name),
                "virtual_hosts": [{
                    "name": format!("{}_vhost", self.name),
                    "domains": ["*"],
                    "routes": self.routes.iter().map(Route::to_json).collect::<Vec<_>>(),
                }]
            },
            "http_filters": filters,
        });
        if self.http2 {
            hcm["http2_protocol_options"] = json!({});
        }
        if !self.envoy_headers {
            hcm["generate_request_id"] = json!(false);
        }
        if self.normalize_paths {
            hcm["normalize_path"] = json!(true);
            hcm["merge_slashes"] = json!(true);
            hcm["path_with_escaped_slashes_action"] = json!("REJECT_REQUEST");
        }
        let mut l = json!({
            "name": self.name,
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": self.port } },
            "filter_chains": [{ "filters": [{ "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm }] }],
        });
        if let Some(limit) = self.buffer_limit {
            l["per_connection_buffer_limit_bytes"] = json!(limit);
        }
        if let Some(ts) = &self.transport_socket {
            l["filter_chains"][0]["transport_socket"] = ts.clone();
        }
        Ok(l)
    }
}

/// Load-balancing policy of a static cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
}

/// `OriginalDst { header: None }` reads only filter state (`use_http_header: false`).
#[derive(Debug, Clone)]
enum ClusterKind {
    Static { hosts: Vec<SocketAddr>, lb: LbPolicy },
    OriginalDst { header: Option<String> },
    Raw(String),
}

/// An upstream cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    kind: ClusterKind,
    /// Speak HTTP/2 (h2c) upstream, e.g. to unbound's DoH.
    pub http2: bool,
    pub connect_timeout: Duration,
}

impl Cluster {
    /// A STATIC cluster over `hosts`, round robin.
    pub fn static_hosts(name: &str, hosts: &[SocketAddr]) -> Self {
        Self {
            name: name.to_owned(),
            kind: ClusterKind::Static { hosts: hosts.to_vec(), lb: LbPolicy::RoundRobin },
            http2: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// An ORIGINAL_DST cluster taking the upstream `ip:port` from filter state
    /// `envoy.network.transport_socket.original_dst_address`, which the balancer sets: no request
    /// header steers it (`use_http_header: false`).
    pub fn original_dst(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ClusterKind::OriginalDst { header: None },
            http2: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// An ORIGINAL_DST cluster that also takes the upstream `ip:port` from request header `header`
    /// (`use_http_header: true`; filter state still wins). Any client that reaches this cluster
    /// without the balancer removing the header can steer it: only for the balancer's opt-in
    /// `"steering": "header"` and for tests of the harness.
    pub fn original_dst_header(name: &str, header: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ClusterKind::OriginalDst { header: Some(header.to_owned()) },
            http2: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    /// A cluster given as raw YAML (one cluster object, `name` included).
    pub fn raw(name: &str, yaml: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ClusterKind::Raw(yaml.to_owned()),
            http2: false,
            connect_timeout: Duration::from_secs(1),
        }
    }

    pub fn lb(mut self, policy: LbPolicy) -> Self {
        if let ClusterKind::Static { lb, .. } = &mut self.kind {
            *lb = policy;
        }
        self
    }

    pub fn http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }

    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    fn to_json(&self) -> Result<Value> {
        let mut c = match &self.kind {
            ClusterKind::Static { hosts, lb } => {
                let endpoints: Vec<Value> = hosts
                    .iter()
                    .map(|a| {
                        json!({ "endpoint": { "address": { "socket_address": {
                            "address": a.ip().to_string(), "port_value": a.port() } } } })
                    })
                    .collect();
                json!({
                    "name": self.name,
                    "type": "STATIC",
                    "lb_policy": match lb {
                        LbPolicy::RoundRobin => "ROUND_ROBIN",
                        LbPolicy::LeastRequest => "LEAST_REQUEST",
                        LbPolicy::Random => "RANDOM",
                    },
                    "load_assignment": { "cluster_name": self.name, "endpoints": [{ "lb_endpoints": endpoints }] },
                })
            }
            ClusterKind::OriginalDst { header } => json!({
                "name": self.name,
                "type": "ORIGINAL_DST",
                "lb_policy": "CLUSTER_PROVIDED",
                "original_dst_lb_config": match header {
                    Some(h) => json!({ "use_http_header": true, "http_header_name": h }),
                    None => json!({ "use_http_header": false }),
                },
            }),
            ClusterKind::Raw(yaml) => return yaml_to_json(yaml),
        };
        c["connect_timeout"] = json!(duration(self.connect_timeout));
        if self.http2 {
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            });
        }
        Ok(c)
    }
}

/// The whole Envoy configuration and command line.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    /// Singleton Wasm services (`bootstrap_extensions`).
    pub wasm_services: Vec<WasmFilter>,
    raw_listeners: Vec<String>,
    /// Worker threads (`--concurrency`), 1 by default so per-VM state is deterministic.
    pub concurrency: u32,
    /// `-l`: the global log level.
    pub log_level: String,
    /// `--component-log-level`, e.g. `wasm:debug`.
    pub component_log_level: Option<String>,
    pub node_id: String,
    pub node_cluster: String,
    pub node_metadata: Value,
    pub extra_args: Vec<String>,
    pub start_timeout: Duration,
}

impl Default for EnvoyConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl EnvoyConfig {
    pub fn new() -> Self {
        Self {
            listeners: Vec::new(),
            clusters: Vec::new(),
            wasm_services: Vec::new(),
            raw_listeners: Vec::new(),
            concurrency: 1,
            log_level: "info".to_owned(),
            component_log_level: Some("wasm:debug".to_owned()),
            node_id: "meshwasm-test".to_owned(),
            node_cluster: "meshwasm".to_owned(),
            node_metadata: json!({}),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
        }
    }

    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }

    pub fn cluster(mut self, c: Cluster) -> Self {
        self.clusters.push(c);
        self
    }

    /// A singleton Wasm service (`envoy.bootstrap.wasm` with `singleton: true`): one VM on Envoy's main
    /// thread, no HTTP contexts.
    pub fn wasm_service(mut self, service: WasmFilter) -> Self {
        self.wasm_services.push(service);
        self
    }

    /// A listener given as raw YAML (a full `Listener` object with a `name`).
    pub fn raw_listener(mut self, yaml: &str) -> Self {
        self.raw_listeners.push(yaml.to_owned());
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.to_owned();
        self
    }

    pub fn node_metadata(mut self, metadata: Value) -> Self {
        self.node_metadata = metadata;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// The bootstrap as JSON (admin on a free loopback port).
    pub fn bootstrap(&self) -> Result<Value> {
        let mut listeners = Vec::new();
        for l in &self.listeners {
            listeners.push(l.to_json()?);
        }
        for l in &self.raw_listeners {
            listeners.push(yaml_to_json(l)?);
        }
        let mut clusters = Vec::new();
        for c in &self.clusters {
            clusters.push(c.to_json()?);
        }
        let mut bootstrap = json!({
            "node": { "id": self.node_id, "cluster": self.node_cluster, "metadata": self.node_metadata },
            "admin": { "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } } },
            "static_resources": { "listeners": listeners, "clusters": clusters },
        });
        if !self.wasm_services.is_empty() {
            let services: Vec<Value> = self.wasm_services.iter().map(WasmFilter::to_service_json).collect();
            bootstrap["bootstrap_extensions"] = Value::Array(services);
        }
        Ok(bootstrap)
    }

    /// Runs Envoy on this bootstrap until it exits (killed after `limit`), for configurations it must
    /// refuse at start-up: whether it exited successfully, and its output (stdout, then stderr).
    pub fn run_until_exit(&self, limit: Duration) -> Result<(bool, String)> {
        let dir = tempfile::Builder::new().prefix("meshwasm-envoy-").tempdir()?;
        let bootstrap = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap, self.bootstrap()?.to_string())?;
        let out = Command::new("timeout")
            .arg(limit.as_secs().max(1).to_string())
            .arg(artifacts::envoy_binary())
            .args(["--disable-hot-restart", "--use-dynamic-base-id", "-l", &self.log_level, "-c"])
            .arg(&bootstrap)
            .output()?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.success(), log))
    }

    /// Writes the bootstrap, starts Envoy and waits until it is ready and every listener accepts.
    pub fn start(&self) -> Result<Envoy> {
        let dir = tempfile::Builder::new().prefix("meshwasm-envoy-").tempdir()?;
        let bootstrap = dir.path().join("bootstrap.json");
        std::fs::write(&bootstrap, serde_json::to_vec_pretty(&self.bootstrap()?)?)?;
        let admin_path = dir.path().join("admin-address");
        let mut cmd = Command::new(artifacts::envoy_binary());
        cmd.arg("-c")
            .arg(&bootstrap)
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("-l")
            .arg(&self.log_level);
        if let Some(c) = &self.component_log_level {
            cmd.arg("--component-log-level").arg(c);
        }
        cmd.args(&self.extra_args);
        let child = ChildGuard::spawn_logging_to("envoy", cmd, &dir.path().join("envoy.log"))?;
        let mut envoy = Envoy { child, dir, admin: None, listeners: BTreeMap::new() };
        envoy.wait_ready(self.start_timeout, &self.listeners).inspect_err(|_| envoy.child.print_tail(150))?;
        Ok(envoy)
    }
}

/// A running Envoy. Killed on drop; its log tail is printed if the test panicked.
pub struct Envoy {
    child: ChildGuard,
    dir: tempfile::TempDir,
    admin: Option<SocketAddr>,
    listeners: BTreeMap<String, SocketAddr>,
}

impl Envoy {
    fn wait_ready(&mut self, timeout: Duration, listeners: &[Listener]) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let admin_path = self.dir.path().join("admin-address");
        let exited = |c: &ChildGuard| -> Result<()> {
            if let Some(status) = c.exit_status() {
                bail!("meshwasm tests: Envoy exited during start-up ({status}); see its log above");
            }
            Ok(())
        };
        // 1. The admin address file.
        let admin = loop {
            exited(&self.child)?;
            if let Ok(s) = std::fs::read_to_string(&admin_path)
                && let Ok(a) = s.trim().parse::<SocketAddr>()
            {
                break a;
            }
            if std::time::Instant::now() > deadline {
                bail!("meshwasm tests: Envoy did not write its admin address within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.admin = Some(admin);
        // 2. /ready says LIVE.
        loop {
            exited(&self.child)?;
            if let Ok(r) = process::http_get(admin, "/ready")
                && r.status == 200
            {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!("meshwasm tests: Envoy admin /ready did not answer 200 within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // 3. Listener addresses (port 0 resolved) and each accepts connections.
        let r = self.admin_get("/listeners?format=json")?;
        let parsed: Value = r.json()?;
        for l in parsed["listener_statuses"].as_array().into_iter().flatten() {
            let name = l["name"].as_str().unwrap_or_default().to_owned();
            let sa = &l["local_address"]["socket_address"];
            if let (Some(ip), Some(port)) = (sa["address"].as_str(), sa["port_value"].as_u64()) {
                self.listeners.insert(name, format!("{ip}:{port}").parse()?);
            }
        }
        for l in listeners {
            let addr = *self
                .listeners
                .get(&l.name)
                .with_context(|| format!("meshwasm tests: Envoy did not report listener `{}`", l.name))?;
            if !process::wait_until(deadline.saturating_duration_since(std::time::Instant::now()), || {
                process::port_open(addr)
            }) {
                bail!("meshwasm tests: Envoy listener `{}` at {addr} does not accept connections", l.name);
            }
        }
        Ok(())
    }

    /// The admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The address of listener `name`.
    ///
    /// # Panics
    /// When there is no such listener.
    pub fn listener_addr(&self, name: &str) -> SocketAddr {
        *self.listeners.get(name).unwrap_or_else(|| panic!("no Envoy listener named `{name}`"))
    }

    /// All listeners by name.
    pub fn listeners(&self) -> &BTreeMap<String, SocketAddr> {
        &self.listeners
    }

    /// GET on the admin endpoint, e.g. `/stats?filter=wasm`.
    pub fn admin_get(&self, path: &str) -> Result<HttpResponse> {
        process::http_get(self.admin_addr(), path)
    }

    /// POST on the admin endpoint, e.g. `/logging?wasm=trace`.
    pub fn admin_post(&self, path: &str) -> Result<HttpResponse> {
        process::http_request(self.admin_addr(), "POST", path, &[], b"", Duration::from_secs(10))
    }

    /// All stats as name → value (counters and gauges; histograms are left out).
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        let r = self.admin_get("/stats?format=json")?;
        let v = r.json()?;
        let mut out = BTreeMap::new();
        for s in v["stats"].as_array().into_iter().flatten() {
            if let (Some(name), Some(value)) = (s["name"].as_str(), s["value"].as_u64()) {
                out.insert(name.to_owned(), value);
            }
        }
        Ok(out)
    }

    /// One counter or gauge by exact name.
    pub fn stat(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.stats()?.get(name).copied())
    }

    /// Histogram summaries whose name contains `needle` (admin text format lines).
    pub fn histogram_lines(&self, needle: &str) -> Result<Vec<String>> {
        let r = self.admin_get(&format!("/stats?filter={needle}&histogram_buckets=detailed"))?;
        Ok(r.text().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect())
    }

    /// Envoy's log so far.
    pub fn logs(&self) -> String {
        self.child.logs()
    }

    /// Prints the last `lines` lines of the log.
    pub fn print_log_tail(&self, lines: usize) {
        self.child.print_tail(lines);
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        process::wait_until(timeout, || self.logs().contains(needle))
    }

    /// True while Envoy runs.
    pub fn is_running(&self) -> bool {
        self.child.is_running()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops Envoy (SIGTERM, then kill) and waits for it; later log reads still work.
    pub fn stop(&self) {
        self.child.terminate(Duration::from_secs(5));
    }
}

fn duration(d: Duration) -> String {
    format!("{}.{:09}s", d.as_secs(), d.subsec_nanos())
}

fn yaml_to_json(yaml: &str) -> Result<Value> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(yaml).context("meshwasm tests: raw Envoy YAML does not parse")?;
    Ok(serde_json::to_value(v)?)
}
