//! The `serve` configuration file: listeners with filter chains, and upstream clusters.
//!
//! YAML or JSON (JSON is YAML). Unknown fields are rejected, and every error names the field it is about,
//! e.g. `listeners[0].filters[1].root_id: invalid type: integer `3`, expected a string`.
//!
//! ```yaml
//! workers: 2                      # worker threads, each with its own VMs (default 1)
//! admin: {address: 9901}        # optional: GET /stats (the filters' metrics), GET /ready
//! services:                      # optional: singleton Wasm services, as Envoy's envoy.bootstrap.wasm with
//!   - name: discovery            # singleton: true: one VM on serve's main thread, root context only (ticks,
//!     wasm: ../../target/wasm32-wasip1/wasm/meshwasm_discovery.wasm   # http calls), never in a request's path;
//!     vm_id: meshwasm            # same fields as a filter. With services, every listener shares their
//!     config: {mode: service, services: [...]}   # shared data, queues and metrics (by vm_id), as in Envoy
//! listeners:
//!   - name: ingress               # optional, used in the access log
//!     address: 10000              # a bare port binds 127.0.0.1; any other address is written out
//!                                 # (0.0.0.0:10000), and serve warns at start-up that it is not loopback
//!     filters:                    # run in this order on requests, in reverse on responses
//!       - name: noop
//!         wasm: ../../target/wasm32-wasip1/wasm/meshwasm_noop.wasm   # relative to this file
//!         root_id: ""             # optional
//!         vm_id: ""               # optional; filters with the same vm_id share a VM
//!         config: {any: value}    # optional: a string is passed as is, anything else as JSON
//!         # config_file: noop.json  (instead of `config`)
//!         env:                    # optional: what the VM sees through WASI environ, as Envoy's
//!           key_values: {A: b}    #   vm_config.environment_variables; host_env_keys copies serve's own
//!           host_env_keys: [IDP_SECRET]  # variables (unset ones are skipped), keeping secrets out of this file
//!     failure_policy: fail_closed # or fail_reload (a trapped VM is recreated for the next request)
//!     stream_idle_timeout_ms: 300000  # a request a filter holds this long gets 408 (Envoy's default)
//!     request_body_timeout_ms: 30000  # the whole request body must arrive within this, else 408
//!     max_connections: 1024     # open connections (all workers); past it new ones are closed at once
//!     tls:                      # optional: TLS on accepted connections (PEM files, relative to this file)
//!       cert: frontend.pem      # the listener's certificate chain
//!       key: frontend-key.pem
//!       client_ca: ca.pem       # optional: mTLS, client certificates must chain to this CA
//!       require_client_certificate: true  # default true with client_ca (false: a client may omit it)
//!     route:
//!       cluster: backend
//!       timeout_ms: 15000         # optional, Envoy's default route timeout
//! clusters:
//!   - name: backend
//!     type: static
//!     endpoints: [127.0.0.1:8080, 127.0.0.1:8081]   # round robin
//!   - name: picked
//!     type: original_dst            # filter state set by a filter (set_envoy_filter_state)
//!     header: x-meshwasm-endpoint   # optional: also this request header (Envoy's use_http_header)
//!     tls:                          # optional: TLS to the endpoints
//!       ca: ca.pem                  # the upstream's certificate must chain to this CA
//!       cert: frontend.pem          # optional, with key: the client certificate (mTLS)
//!       key: frontend-key.pem
//!       sni: orders.shop            # optional: the server name sent and checked (default: the endpoint IP)
//!       verify_san: [spiffe://cluster.local/ns/shop/sa/orders]  # optional: one of these SANs instead of the name
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

pub mod tls;

use tls::{ClusterTls, ClusterTlsSpec, ListenerTls, ListenerTlsSpec};

/// Envoy's default route timeout.
const DEFAULT_ROUTE_TIMEOUT_MS: u64 = 15_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Envoy's default stream idle timeout (5 minutes).
const DEFAULT_STREAM_IDLE_TIMEOUT_MS: u64 = 300_000;
/// The request body must arrive within this after the head (as the head itself within 30 s), so a
/// client trickling or stalling its body cannot hold a connection and a buffer for long.
const DEFAULT_REQUEST_BODY_TIMEOUT_MS: u64 = 30_000;
/// Open downstream connections per listener, over all workers.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Upper bound of `max_connections` (a typo with extra digits is an error, not "unlimited").
const MAX_MAX_CONNECTIONS: usize = 1 << 20;

/// The file as written (YAML or JSON). Its JSON Schema is `meshwasm-host schema`'s output
/// (schemas/serve.schema.json).
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "meshwasm-host serve configuration")]
struct RawConfig {
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    log_level: Option<LogLevel>,
    #[serde(default)]
    admin: Option<RawAdmin>,
    /// Singleton Wasm services (Envoy's `envoy.bootstrap.wasm` with `singleton: true`): one VM each on
    /// the main thread, root context only, sharing shared data with the listeners' filters by vm_id.
    #[serde(default)]
    services: Vec<RawFilter>,
    listeners: Vec<RawListener>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    address: ListenAddress,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawListener {
    #[serde(default)]
    name: Option<String>,
    address: ListenAddress,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    failure_policy: FailurePolicy,
    #[serde(default)]
    stream_idle_timeout_ms: Option<u64>,
    #[serde(default)]
    request_body_timeout_ms: Option<u64>,
    #[serde(default)]
    max_connections: Option<usize>,
    #[serde(default)]
    tls: Option<RawListenerTls>,
    route: RawRoute,
}

/// A listener's `tls:` block: PEM files relative to the config file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    require_client_certificate: Option<bool>,
}

/// A cluster's `tls:` block: PEM files relative to the config file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawClusterTls {
    ca: PathBuf,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    verify_san: Vec<String>,
}

/// A listen address: `IP:port`, or a bare port (number or string), which binds loopback (127.0.0.1).
/// Binding anything reachable from other hosts must be written out.
#[derive(Debug, Clone, Copy)]
struct ListenAddress(SocketAddr);

impl ListenAddress {
    fn loopback(port: u16) -> Self {
        Self(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

impl schemars::JsonSchema for ListenAddress {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ListenAddress".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`IP:port`, or a port number (binds 127.0.0.1).",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 65535},
                {"type": "string", "examples": ["10000", "127.0.0.1:10000"]},
            ],
        })
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ListenAddress;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`IP:port`, or a port number (binds 127.0.0.1)")
            }
            fn visit_u64<E: serde::de::Error>(self, port: u64) -> Result<ListenAddress, E> {
                u16::try_from(port)
                    .map(ListenAddress::loopback)
                    .map_err(|_| E::custom(format!("port {port} is out of range (0-65535)")))
            }
            fn visit_i64<E: serde::de::Error>(self, port: i64) -> Result<ListenAddress, E> {
                u64::try_from(port)
                    .map_err(|_| E::custom(format!("port {port} is out of range (0-65535)")))
                    .and_then(|p| self.visit_u64(p))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ListenAddress, E> {
                if let Ok(port) = s.parse::<u16>() {
                    return Ok(ListenAddress::loopback(port));
                }
                s.parse::<SocketAddr>().map(ListenAddress).map_err(|_| {
                    E::custom(format!(
                        "`{s}` is neither `IP:port` nor a port number (e.g. `127.0.0.1:10000`)"
                    ))
                })
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// What happens to a VM after it traps (Envoy's `failure_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Envoy's default: the VM stays failed and every request through it gets 503.
    #[default]
    FailClosed,
    /// The failed request gets 503; the VM is recreated for the next one.
    FailReload,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    cluster: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    name: String,
    wasm: PathBuf,
    #[serde(default)]
    root_id: String,
    #[serde(default)]
    vm_id: String,
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    config: Option<serde_yaml::Value>,
    #[serde(default)]
    config_file: Option<PathBuf>,
    #[serde(default)]
    #[schemars(with = "Option<serde_json::Value>")]
    vm_config: Option<serde_yaml::Value>,
    #[serde(default)]
    vm_config_file: Option<PathBuf>,
    #[serde(default)]
    env: RawEnv,
}

/// Envoy's `vm_config.environment_variables`.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawEnv {
    #[serde(default)]
    host_env_keys: Vec<String>,
    #[serde(default)]
    key_values: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: String,
    #[serde(rename = "type")]
    kind: ClusterType,
    #[serde(default)]
    endpoints: Option<Vec<SocketAddr>>,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    tls: Option<RawClusterTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ClusterType {
    Static,
    OriginalDst,
}

/// Filter log lines at this level and above are printed (default `info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
    Critical,
}

/// A validated `serve` configuration; paths are absolute or relative to the working directory.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub workers: usize,
    pub log_level: LogLevel,
    /// Where the admin endpoint (`/stats`, `/ready`) listens, if configured.
    pub admin: Option<SocketAddr>,
    /// Singleton Wasm services: run once, on the main thread, outside every chain.
    pub services: Vec<FilterSpec>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub filters: Vec<FilterSpec>,
    pub failure_policy: FailurePolicy,
    /// A stream with no progress for this long (e.g. a filter that never resumes) gets 408.
    pub stream_idle_timeout: Duration,
    /// The whole request body must arrive within this after the head, else 408 and the connection closes.
    pub request_body_timeout: Duration,
    /// Open downstream connections over all workers; past it new connections are closed at once.
    pub max_connections: usize,
    pub route_cluster: String,
    pub route_timeout: Duration,
    /// TLS (mTLS with a client CA) on accepted connections; None: plaintext.
    pub tls: Option<Arc<ListenerTls>>,
}

#[derive(Debug, Clone)]
pub struct FilterSpec {
    pub name: String,
    pub wasm: PathBuf,
    pub root_id: String,
    pub vm_id: String,
    /// The plugin configuration bytes, as Envoy would pass them (`configuration` StringValue).
    pub config: Vec<u8>,
    pub vm_config: Vec<u8>,
    /// Environment variables the VM sees (WASI environ).
    pub env: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub kind: ClusterKind,
    pub connect_timeout: Duration,
    /// TLS to the endpoints; None: plaintext.
    pub tls: Option<Arc<ClusterTls>>,
}

#[derive(Debug, Clone)]
pub enum ClusterKind {
    /// Round robin over a fixed list.
    Static(Vec<SocketAddr>),
    /// The upstream is taken from the stream's filter state `envoy.network.transport_socket.original_dst_address`
    /// (set by a filter with `set_envoy_filter_state`), else, when configured, from this (lower-case)
    /// request header, which must hold an IP:port literal. Without `header` (Envoy's
    /// `use_http_header: false`) no client header can steer it.
    OriginalDst { header: Option<String> },
}

impl ServeConfig {
    /// Reads and validates a config file. Relative paths inside it are resolved against its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::parse(&text, &base).with_context(|| format!("config file {}", path.display()))
    }

    /// Parses and validates config text; `base` is the directory relative paths are resolved against.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        let workers = raw.workers.unwrap_or(1);
        if !(1..=64).contains(&workers) {
            bail!("workers: must be between 1 and 64, got {workers}");
        }
        if raw.listeners.is_empty() {
            bail!("listeners: at least one listener is required");
        }

        let mut clusters = Vec::with_capacity(raw.clusters.len());
        let mut names = HashSet::new();
        for (i, c) in raw.clusters.into_iter().enumerate() {
            let at = format!("clusters[{i}]");
            if c.name.is_empty() {
                bail!("{at}.name: must not be empty");
            }
            if !names.insert(c.name.clone()) {
                bail!("{at}.name: duplicate cluster name `{}`", c.name);
            }
            let kind = match c.kind {
                ClusterType::Static => {
                    if c.header.is_some() {
                        bail!("{at}.header: only `original_dst` clusters take a header");
                    }
                    match c.endpoints {
                        Some(eps) if !eps.is_empty() => ClusterKind::Static(eps),
                        _ => bail!("{at}.endpoints: a static cluster needs at least one IP:port endpoint"),
                    }
                }
                ClusterType::OriginalDst => {
                    if c.endpoints.is_some() {
                        bail!("{at}.endpoints: an `original_dst` cluster takes its endpoint from a header");
                    }
                    if let Some(header) = &c.header
                        && (header.is_empty()
                            || !header.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
                    {
                        bail!("{at}.header: `{header}` is not a valid header name");
                    }
                    ClusterKind::OriginalDst { header: c.header.map(|h| h.to_ascii_lowercase()) }
                }
            };
            let connect_timeout =
                Duration::from_millis(c.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS).max(1));
            let tls = match c.tls {
                None => None,
                Some(t) => Some(Arc::new(cluster_tls(t, base, &format!("{at}.tls"))?)),
            };
            clusters.push(Cluster { name: c.name, kind, connect_timeout, tls });
        }

        let mut services: Vec<FilterSpec> = Vec::with_capacity(raw.services.len());
        for (i, f) in raw.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            let spec = filter_spec(f, base, &at)?;
            if services.iter().any(|s| s.name == spec.name) {
                bail!("{at}.name: duplicate service name `{}`", spec.name);
            }
            services.push(spec);
        }

        let mut listeners = Vec::with_capacity(raw.listeners.len());
        let mut addresses = HashSet::new();
        for (i, l) in raw.listeners.into_iter().enumerate() {
            let at = format!("listeners[{i}]");
            let address = l.address.0;
            if address.port() != 0 && !addresses.insert(address) {
                bail!("{at}.address: {address} is used by another listener");
            }
            let max_connections = l.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
            if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
                bail!(
                    "{at}.max_connections: must be between 1 and {MAX_MAX_CONNECTIONS}, got {max_connections}"
                );
            }
            if !names.contains(&l.route.cluster) {
                bail!("{at}.route.cluster: no cluster named `{}` in `clusters`", l.route.cluster);
            }
            let tls = match l.tls {
                None => None,
                Some(t) => Some(Arc::new(listener_tls(t, base, &format!("{at}.tls"))?)),
            };
            let mut filters = Vec::with_capacity(l.filters.len());
            for (j, f) in l.filters.into_iter().enumerate() {
                filters.push(filter_spec(f, base, &format!("{at}.filters[{j}]"))?);
            }
            listeners.push(Listener {
                name: l.name.unwrap_or_else(|| format!("listener{i}")),
                address,
                filters,
                failure_policy: l.failure_policy,
                stream_idle_timeout: Duration::from_millis(
                    l.stream_idle_timeout_ms.unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_MS).max(1),
                ),
                request_body_timeout: Duration::from_millis(
                    l.request_body_timeout_ms.unwrap_or(DEFAULT_REQUEST_BODY_TIMEOUT_MS).max(1),
                ),
                max_connections,
                route_cluster: l.route.cluster,
                route_timeout: Duration::from_millis(
                    l.route.timeout_ms.unwrap_or(DEFAULT_ROUTE_TIMEOUT_MS).max(1),
                ),
                tls,
            });
        }

        Ok(ServeConfig {
            workers,
            log_level: raw.log_level.unwrap_or_default(),
            admin: raw.admin.map(|a| a.address.0),
            services,
            listeners,
            clusters,
        })
    }
}

/// Loads a listener's certificate, key and client CA now, so a bad file stops start-up naming the field.
fn listener_tls(t: RawListenerTls, base: &Path, at: &str) -> anyhow::Result<ListenerTls> {
    if t.require_client_certificate == Some(true) && t.client_ca.is_none() {
        bail!("{at}.require_client_certificate: needs `client_ca` to verify client certificates against");
    }
    let spec = ListenerTlsSpec {
        cert: base.join(t.cert),
        key: base.join(t.key),
        client_ca: t.client_ca.map(|p| base.join(p)),
        // A client CA means mTLS: a client without a certificate is refused unless this says otherwise.
        require_client_certificate: t.require_client_certificate.unwrap_or(true),
    };
    ListenerTls::new(&spec, at)
}

fn cluster_tls(t: RawClusterTls, base: &Path, at: &str) -> anyhow::Result<ClusterTls> {
    if let Some(i) = t.verify_san.iter().position(|s| s.is_empty()) {
        bail!("{at}.verify_san[{i}]: must not be empty");
    }
    let spec = ClusterTlsSpec {
        ca: base.join(t.ca),
        cert: t.cert.map(|p| base.join(p)),
        key: t.key.map(|p| base.join(p)),
        sni: t.sni,
        verify_san: t.verify_san,
    };
    ClusterTls::new(&spec, at)
}

fn filter_spec(f: RawFilter, base: &Path, at: &str) -> anyhow::Result<FilterSpec> {
    if f.name.is_empty() {
        bail!("{at}.name: must not be empty");
    }
    let wasm = base.join(&f.wasm);
    if !wasm.is_file() {
        bail!("{at}.wasm: no such file {}", wasm.display());
    }
    let config = config_bytes(f.config, f.config_file, base, &format!("{at}.config"))?;
    let vm_config = config_bytes(f.vm_config, f.vm_config_file, base, &format!("{at}.vm_config"))?;
    // Like Envoy: a host key that is unset is skipped (the filter reports what it misses).
    let mut env: Vec<(String, String)> =
        f.env.host_env_keys.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v))).collect();
    env.extend(f.env.key_values);
    Ok(FilterSpec { name: f.name, wasm, root_id: f.root_id, vm_id: f.vm_id, config, vm_config, env })
}

/// An inline value or a file: a string is passed byte for byte, anything else is serialized as JSON
/// (what a filter reading `get_plugin_configuration()` with serde_json expects).
fn config_bytes(
    inline: Option<serde_yaml::Value>,
    file: Option<PathBuf>,
    base: &Path,
    at: &str,
) -> anyhow::Result<Vec<u8>> {
    match (inline, file) {
        (Some(_), Some(_)) => bail!("{at}: give either `{0}` or `{0}_file`, not both", field_name(at)),
        (None, None) => Ok(Vec::new()),
        (None, Some(path)) => {
            let path = base.join(path);
            std::fs::read(&path).with_context(|| format!("{at}_file: cannot read {}", path.display()))
        }
        (Some(value), None) => inline_bytes(value).with_context(|| at.to_string()),
    }
}

fn field_name(at: &str) -> &str {
    at.rsplit('.').next().unwrap_or(at)
}

/// Bytes for an inline config value (also used for `check --config` files, which are passed as is).
pub fn inline_bytes(value: serde_yaml::Value) -> anyhow::Result<Vec<u8>> {
    match value {
        serde_yaml::Value::String(s) => Ok(s.into_bytes()),
        serde_yaml::Value::Null => Ok(Vec::new()),
        other => {
            let json: serde_json::Value = serde_yaml::from_value(other)
                .map_err(|e| anyhow::anyhow!("cannot be written as JSON: {e}"))?;
            Ok(serde_json::to_vec(&json)?)
        }
    }
}

/// The JSON Schema of the configuration file (`meshwasm-host schema`, schemas/serve.schema.json).
pub fn json_schema() -> serde_json::Value {
    let mut v = schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<RawConfig>()
        .to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "$comment".into(),
            "Generated from the Rust config types by `make schemas`; do not edit.".into(),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ServeConfig> {
        // Cargo.toml stands in for a wasm file: only its existence is checked here.
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        ServeConfig::parse(text, base)
    }

    const GOOD: &str = r#"
workers: 2
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: a
        wasm: Cargo.toml
        config: {b: 1, c: [x]}
      - name: s
        wasm: Cargo.toml
        config: "raw text"
    route: {cluster: picked}
clusters:
  - {name: backend, type: static, endpoints: ["127.0.0.1:1"]}
  - {name: picked, type: original_dst}
"#;

    #[test]
    fn parses_a_full_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.listeners[0].filters[0].config, br#"{"b":1,"c":["x"]}"#);
        assert_eq!(c.listeners[0].filters[1].config, b"raw text");
        assert_eq!(c.listeners[0].route_timeout, Duration::from_secs(15));
        match &c.clusters[1].kind {
            ClusterKind::OriginalDst { header } => assert_eq!(header, &None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn services() {
        assert!(parse(GOOD).unwrap().services.is_empty());
        let with = GOOD.replace(
            "listeners:",
            "services:\n  - {name: d, wasm: Cargo.toml, vm_id: v, config: {mode: service}}\nlisteners:",
        );
        let c = parse(&with).unwrap();
        assert_eq!((c.services[0].name.as_str(), c.services[0].vm_id.as_str()), ("d", "v"));
        assert_eq!(c.services[0].config, br#"{"mode":"service"}"#);
        let twice = with.replace("services:\n", "services:\n  - {name: d, wasm: Cargo.toml}\n");
        let err = format!("{:#}", parse(&twice).unwrap_err());
        assert!(err.contains("services[1].name: duplicate service name `d`"), "{err}");
        let missing = with.replace("wasm: Cargo.toml, vm_id", "wasm: nope.wasm, vm_id");
        let err = format!("{:#}", parse(&missing).unwrap_err());
        assert!(err.contains("services[0].wasm") && err.contains("nope.wasm"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let typo = GOOD.replace("root_id", "x").replace("config: \"raw text\"", "rootid: x");
        let err = format!("{:#}", parse(&typo).unwrap_err());
        assert!(err.contains("listeners[0].filters[1]") && err.contains("unknown field `rootid`"), "{err}");

        let unknown_cluster = GOOD.replace("cluster: picked", "cluster: nope");
        let err = format!("{:#}", parse(&unknown_cluster).unwrap_err());
        assert!(err.contains("listeners[0].route.cluster") && err.contains("`nope`"), "{err}");

        let no_endpoints = GOOD.replace(r#"endpoints: ["127.0.0.1:1"]"#, "endpoints: []");
        let err = format!("{:#}", parse(&no_endpoints).unwrap_err());
        assert!(err.contains("clusters[0].endpoints"), "{err}");

        let bad_addr = GOOD.replace("127.0.0.1:1", "localhost:1");
        let err = format!("{:#}", parse(&bad_addr).unwrap_err());
        assert!(err.contains("clusters[0].endpoints"), "{err}");

        let missing_wasm =
            GOOD.replace("wasm: Cargo.toml\n        config: {b", "wasm: nope.wasm\n        config: {b");
        let err = format!("{:#}", parse(&missing_wasm).unwrap_err());
        assert!(err.contains("listeners[0].filters[0].wasm") && err.contains("nope.wasm"), "{err}");

        let bad_type = GOOD.replace("type: original_dst", "type: eds");
        let err = format!("{:#}", parse(&bad_type).unwrap_err());
        assert!(err.contains("clusters[1].type"), "{err}");
    }

    #[test]
    fn config_files_are_read_relative_to_the_config() {
        let text = GOOD.replace("config: \"raw text\"", "config_file: Cargo.toml\n        vm_config: [1, 2]");
        let c = parse(&text).unwrap();
        let f = &c.listeners[0].filters[1];
        let manifest = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
        assert_eq!(f.config, manifest);
        assert_eq!(f.vm_config, b"[1,2]");
        assert!(f.env.is_empty());

        let with_env = GOOD.replace(
            "config: \"raw text\"",
            "config: x\n        env: {key_values: {A: b}, host_env_keys: [PATH, MESHWASM_SURELY_UNSET_VAR]}",
        );
        let c = parse(&with_env).unwrap();
        let path = std::env::var("PATH").unwrap();
        assert_eq!(c.listeners[0].filters[1].env, vec![("PATH".into(), path), ("A".into(), "b".into())]);

        let both = GOOD.replace("config: \"raw text\"", "config: x\n        config_file: Cargo.toml");
        let err = format!("{:#}", parse(&both).unwrap_err());
        assert!(err.contains("listeners[0].filters[1].config") && err.contains("not both"), "{err}");

        let missing = GOOD.replace("config: \"raw text\"", "config_file: nope.json");
        let err = format!("{:#}", parse(&missing).unwrap_err());
        assert!(err.contains("listeners[0].filters[1].config_file") && err.contains("nope.json"), "{err}");
    }

    #[test]
    fn a_bare_port_binds_loopback_and_other_addresses_are_kept() {
        let with = |address: &str| GOOD.replace("address: 127.0.0.1:0", &format!("address: {address}"));
        let c = parse(&with("10000")).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:10000".parse().unwrap());
        let c = parse(&with("'10001'")).unwrap();
        assert_eq!(c.listeners[0].address, "127.0.0.1:10001".parse().unwrap());
        let c = parse(&with("0.0.0.0:10002")).unwrap();
        assert_eq!(c.listeners[0].address, "0.0.0.0:10002".parse().unwrap());
        let c = parse(&with("'[::1]:10003'")).unwrap();
        assert_eq!(c.listeners[0].address, "[::1]:10003".parse().unwrap());
        let c = parse(&format!("admin: {{address: 9901}}\n{GOOD}")).unwrap();
        assert_eq!(c.admin, Some("127.0.0.1:9901".parse().unwrap()));

        for bad in ["70000", "-1", "localhost:80", "''"] {
            let err = format!("{:#}", parse(&with(bad)).unwrap_err());
            assert!(err.contains("listeners[0].address"), "{bad}: {err}");
        }
    }

    #[test]
    fn body_timeout_and_connection_cap_have_defaults_and_are_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.listeners[0].request_body_timeout, Duration::from_secs(30));
        assert_eq!(c.listeners[0].max_connections, 1024);
        let set = GOOD
            .replace("    route:", "    request_body_timeout_ms: 300\n    max_connections: 2\n    route:");
        let c = parse(&set).unwrap();
        assert_eq!(c.listeners[0].request_body_timeout, Duration::from_millis(300));
        assert_eq!(c.listeners[0].max_connections, 2);
        let zero = GOOD.replace("    route:", "    max_connections: 0\n    route:");
        let err = format!("{:#}", parse(&zero).unwrap_err());
        assert!(err.contains("listeners[0].max_connections"), "{err}");
    }

    #[test]
    fn json_is_accepted() {
        let json = r#"{"listeners":[{"address":"127.0.0.1:0","route":{"cluster":"b"}}],
                       "clusters":[{"name":"b","type":"static","endpoints":["127.0.0.1:9"]}]}"#;
        let c = parse(json).unwrap();
        assert_eq!(c.workers, 1);
        assert!(c.listeners[0].filters.is_empty());
    }
}
