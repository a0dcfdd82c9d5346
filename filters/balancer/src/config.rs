//! Plugin configuration: parsed and checked once in `on_configure` into an immutable [`Plan`].
//! Every field is documented, with defaults, in the crate README.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;

use meshwasm_endpoints::Endpoint;
use meshwasm_path::normalize;
use serde::Deserialize;

use crate::maglev::{DEFAULT_TABLE_SIZE, is_prime};
use crate::outlier::OutlierPolicy;
use crate::slow_start::SlowStartPolicy;

pub use meshwasm_config::ConfigError;
use meshwasm_config::{Duration, header_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    Random,
    WeightedRandom,
    LeastRequest,
    RingHash,
    Maglev,
}

impl Algorithm {
    pub fn uses_weights(self) -> bool {
        !matches!(self, Self::RoundRobin | Self::Random)
    }
    pub fn is_hash(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// How Envoy is told the picked endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Steering {
    /// Filter state `envoy.network.transport_socket.original_dst_address`, set with the
    /// `set_envoy_filter_state` foreign function: nothing a client sends can steer, whether or not
    /// this filter runs (the cluster has `use_http_header: false`).
    #[default]
    FilterState,
    /// The `endpoint_header` request header (cluster with `use_http_header: true`). Opt-in: if this
    /// filter is skipped or its VM fails open, the client's own header steers the cluster.
    Header,
}

/// Where the request's service name comes from; the first source that yields a name wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceSource {
    /// The value of this request header.
    Header(String),
    /// `:authority` without its port.
    Authority,
    /// A service for paths starting with `prefix`.
    Route { prefix: String, service: String },
    /// Always this service.
    Fixed(String),
}

/// What a ring-hash or Maglev key is computed from; the first source present in the request wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HashSource {
    Header(String),
    Cookie(String),
    SourceIp,
    Path,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_endpoint_header")]
    endpoint_header: String,
    #[serde(default)]
    steering: Steering,
    #[serde(default)]
    service_from: Option<Vec<ServiceSource>>,
    services: BTreeMap<String, RawService>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default = "default_refresh")]
    refresh_interval: Duration,
    #[serde(default = "default_endpoint_metrics_limit")]
    endpoint_metrics_limit: u32,
}

fn default_endpoint_header() -> String {
    "x-meshwasm-endpoint".into()
}
/// Distinct endpoints per service (per VM) that get their own `picks` counter; see the README.
pub const DEFAULT_ENDPOINT_METRICS_LIMIT: u32 = 100;
const MAX_ENDPOINT_METRICS_LIMIT: u32 = 10_000;

fn default_endpoint_metrics_limit() -> u32 {
    DEFAULT_ENDPOINT_METRICS_LIMIT
}
fn default_refresh() -> Duration {
    Duration::from_secs(1)
}

/// `"ip:port"` or `{"address": "ip:port", "weight": 2, "zone": "z"}`. Hand-written instead of
/// `#[serde(untagged)]`, which buffers values and costs tens of KB of wasm, and gives worse errors.
#[derive(Debug)]
enum RawEndpoint {
    Address(SocketAddr),
    Full(FullEndpoint),
}

impl<'de> Deserialize<'de> for RawEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawEndpoint;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an endpoint: \"ip:port\" or {\"address\": \"ip:port\", \"weight\": n, \"zone\": \"z\"}",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawEndpoint, E> {
                v.parse().map(RawEndpoint::Address).map_err(|_| {
                    E::custom(format!(
                        "endpoint `{v}` is not an IP literal and port (e.g. \"10.0.0.1:8080\")"
                    ))
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawEndpoint, A::Error> {
                FullEndpoint::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawEndpoint::Full)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for RawEndpoint {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Endpoint".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let full = generator.subschema_for::<FullEndpoint>();
        schemars::json_schema!({
            "description": "An endpoint: \"ip:port\" or {\"address\": \"ip:port\", \"weight\": n, \"zone\": \"z\"}.",
            "anyOf": [{"type": "string", "description": "An IP literal and port, e.g. \"10.0.0.1:8080\"."}, full],
        })
    }
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct FullEndpoint {
    address: SocketAddr,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    zone: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawLeastRequest {
    choice_count: Option<u32>,
    active_request_bias: Option<f64>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRingHash {
    min_ring_size: Option<u64>,
    max_ring_size: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawMaglev {
    table_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawOutlier {
    #[serde(default = "yes")]
    enabled: bool,
    consecutive_failures: Option<u32>,
    base_ejection_time: Option<Duration>,
    max_ejection_time: Option<Duration>,
    max_ejection_percent: Option<u32>,
    interval: Option<Duration>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSlowStart {
    window: Duration,
    aggression: Option<f64>,
    min_weight_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawZoneAware {
    local_zone: String,
    min_healthy_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
    #[serde(default)]
    hash_key: Vec<HashSource>,
    least_request: Option<RawLeastRequest>,
    ring_hash: Option<RawRingHash>,
    maglev: Option<RawMaglev>,
    outlier_detection: Option<RawOutlier>,
    panic_threshold_percent: Option<u32>,
    slow_start: Option<RawSlowStart>,
    zone_aware: Option<RawZoneAware>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ZonePolicy {
    pub local_zone: String,
    pub min_healthy_percent: u32,
}

/// One service's checked balancing policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub algorithm: Algorithm,
    pub hash_key: Vec<HashSource>,
    pub choice_count: u32,
    pub active_request_bias: f64,
    pub min_ring_size: u64,
    pub max_ring_size: u64,
    pub maglev_table_size: u64,
    pub outlier: Option<OutlierPolicy>,
    pub panic_threshold_percent: u32,
    pub slow_start: Option<SlowStartPolicy>,
    pub zone_aware: Option<ZonePolicy>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::RoundRobin,
            hash_key: Vec::new(),
            choice_count: 2,
            active_request_bias: 1.0,
            min_ring_size: 1024,
            max_ring_size: 8 << 20,
            maglev_table_size: DEFAULT_TABLE_SIZE,
            outlier: Some(OutlierPolicy::default()),
            panic_threshold_percent: 50,
            slow_start: None,
            zone_aware: None,
        }
    }
}

/// Where a service's endpoints come from.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointSource {
    Static(Vec<Endpoint>),
    /// Published by the discovery filter in shared data.
    Discovery,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub name: String,
    pub policy: Rc<Policy>,
    pub endpoints: EndpointSource,
}

/// The whole checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub steering: Steering,
    /// Set to the pick with [`Steering::Header`]; removed from every request in both modes.
    pub endpoint_header: String,
    pub service_from: Vec<ServiceSource>,
    /// The headers named by `service_from`: removed from every request before it is forwarded.
    pub selection_headers: Vec<String>,
    pub services: Vec<ServicePlan>,
    pub seed: Option<u64>,
    pub refresh_interval_ms: u64,
    pub endpoint_metrics_limit: u32,
}

impl Plan {
    /// Parses and validates a plugin configuration; the error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut raw: RawConfig = meshwasm_config::from_json(bytes)?;
        let endpoint_header = header_name("endpoint_header", &raw.endpoint_header)?;
        if raw.services.is_empty() {
            return Err(ConfigError::new("services", "must name at least one service"));
        }
        // No client header picks a service unless the config names it: without `service_from`, the
        // only service is used; with several, the operator must say how to choose.
        let mut service_from = match raw.service_from.take() {
            Some(list) => list,
            None => match raw.services.keys().next() {
                Some(only) if raw.services.len() == 1 => vec![ServiceSource::Fixed(only.clone())],
                _ => {
                    // A rule across two fields, so the message names both.
                    return Err(ConfigError::new(
                        "",
                        "service_from is required when more than one service is configured \
                         (e.g. [{\"route\": {\"prefix\": \"/api/\", \"service\": \"api\"}}] or [\"authority\"])",
                    ));
                }
            },
        };
        if service_from.is_empty() {
            return Err(ConfigError::new("service_from", "must list at least one source"));
        }
        let mut selection_headers: Vec<String> = Vec::new();
        for (i, s) in service_from.iter_mut().enumerate() {
            let at = || format!("service_from[{i}]");
            match s {
                ServiceSource::Header(h) => {
                    *h = header_name(&format!("{}.header", at()), h)?;
                    if *h == endpoint_header {
                        return Err(ConfigError::new(
                            format!("{}.header", at()),
                            format!("`{h}` must be a header other than endpoint_header"),
                        ));
                    }
                    if !selection_headers.contains(h) {
                        selection_headers.push(h.clone());
                    }
                }
                // Rules match the normalized path, so a prefix must itself be normal to ever match.
                ServiceSource::Route { prefix, service }
                    if normalize(prefix).ok().as_deref() != Some(prefix.as_str()) =>
                {
                    return Err(ConfigError::new(
                        format!("{}.route.prefix", at()),
                        format!(
                            "route to `{service}`: prefix `{prefix}` must be a normalized path \
                             (starting with `/`, no `//`, dot segments, escapes of unreserved characters, `?` or `;`)"
                        ),
                    ));
                }
                ServiceSource::Route { service, .. } | ServiceSource::Fixed(service)
                    if !raw.services.contains_key(service.as_str()) =>
                {
                    return Err(ConfigError::new(at(), format!("service `{service}` is not under services")));
                }
                _ => {}
            }
        }
        if raw.endpoint_metrics_limit > MAX_ENDPOINT_METRICS_LIMIT {
            return Err(ConfigError::new(
                "endpoint_metrics_limit",
                format!("{} must be 0..={MAX_ENDPOINT_METRICS_LIMIT}", raw.endpoint_metrics_limit),
            ));
        }
        if raw.refresh_interval.is_zero() {
            return Err(ConfigError::new("refresh_interval", "must be greater than 0"));
        }
        let services = raw
            .services
            .into_iter()
            .map(|(name, s)| {
                let at = format!("services.{name}");
                check_service(&name, s).map_err(|e| ConfigError::split(&at, &e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            steering: raw.steering,
            endpoint_header,
            service_from,
            selection_headers,
            services,
            seed: raw.seed,
            refresh_interval_ms: raw.refresh_interval.as_millis(),
            endpoint_metrics_limit: raw.endpoint_metrics_limit,
        })
    }
}

fn check_service(name: &str, s: RawService) -> Result<ServicePlan, String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a service name must have 1 to 253 characters".into());
    }
    let mut p = Policy { algorithm: s.algorithm, ..Policy::default() };
    let section_mismatch = |section: &str, wanted: Algorithm| {
        format!("{section} is set but algorithm is {:?}, not {wanted:?}", s.algorithm)
    };
    if let Some(lr) = s.least_request {
        if s.algorithm != Algorithm::LeastRequest {
            return Err(section_mismatch("least_request", Algorithm::LeastRequest));
        }
        p.choice_count = lr.choice_count.unwrap_or(2);
        if !(2..=100).contains(&p.choice_count) {
            return Err(format!("least_request.choice_count {} must be 2..=100", p.choice_count));
        }
        p.active_request_bias = lr.active_request_bias.unwrap_or(1.0);
        if !(0.0..=10.0).contains(&p.active_request_bias) {
            return Err("least_request.active_request_bias must be 0..=10".into());
        }
    }
    if let Some(r) = s.ring_hash {
        if s.algorithm != Algorithm::RingHash {
            return Err(section_mismatch("ring_hash", Algorithm::RingHash));
        }
        p.min_ring_size = r.min_ring_size.unwrap_or(p.min_ring_size);
        p.max_ring_size = r.max_ring_size.unwrap_or(p.max_ring_size);
        if p.min_ring_size == 0 || p.min_ring_size > p.max_ring_size || p.max_ring_size > 8 << 20 {
            return Err(format!(
                "ring_hash: need 1 <= min_ring_size ({}) <= max_ring_size ({}) <= 8388608",
                p.min_ring_size, p.max_ring_size
            ));
        }
    }
    if let Some(m) = s.maglev {
        if s.algorithm != Algorithm::Maglev {
            return Err(section_mismatch("maglev", Algorithm::Maglev));
        }
        p.maglev_table_size = m.table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if !is_prime(p.maglev_table_size) || p.maglev_table_size > 5_000_011 {
            return Err(format!(
                "maglev.table_size {} must be a prime no larger than 5000011 (e.g. 65537)",
                p.maglev_table_size
            ));
        }
    }
    if s.algorithm.is_hash() {
        if s.hash_key.is_empty() {
            return Err("hash_key must list at least one source for ring_hash and maglev".into());
        }
    } else if !s.hash_key.is_empty() {
        return Err(format!("hash_key is only used by ring_hash and maglev, not {:?}", s.algorithm));
    }
    let mut hash_key = s.hash_key;
    for (i, k) in hash_key.iter_mut().enumerate() {
        match k {
            HashSource::Header(h) => {
                *h = header_name(&format!("hash_key[{i}].header"), h).map_err(|e| e.to_string())?;
            }
            HashSource::Cookie(c) if c.is_empty() || c.contains([';', '=', ' ']) => {
                return Err(format!("hash_key: cookie name `{c}` is not valid"));
            }
            _ => {}
        }
    }
    p.hash_key = hash_key;
    if let Some(o) = s.outlier_detection {
        p.outlier = if o.enabled {
            let d = OutlierPolicy::default();
            let policy = OutlierPolicy {
                consecutive_failures: o.consecutive_failures.unwrap_or(d.consecutive_failures),
                base_ejection_ms: o.base_ejection_time.map_or(d.base_ejection_ms, Duration::as_millis),
                max_ejection_ms: o.max_ejection_time.map_or(d.max_ejection_ms, Duration::as_millis),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(d.max_ejection_percent),
                interval_ms: o.interval.map_or(d.interval_ms, Duration::as_millis),
            };
            if policy.consecutive_failures == 0 {
                return Err("outlier_detection.consecutive_failures must be at least 1".into());
            }
            if policy.max_ejection_percent > 100 {
                return Err("outlier_detection.max_ejection_percent must be 0..=100".into());
            }
            if policy.base_ejection_ms == 0 {
                return Err("outlier_detection.base_ejection_time must be greater than 0".into());
            }
            if policy.max_ejection_ms < policy.base_ejection_ms {
                return Err("outlier_detection.max_ejection_time must be at least base_ejection_time".into());
            }
            Some(policy)
        } else {
            None
        };
    }
    if let Some(t) = s.panic_threshold_percent {
        if t > 100 {
            return Err(format!("panic_threshold_percent {t} must be 0..=100"));
        }
        p.panic_threshold_percent = t;
    }
    if let Some(ss) = s.slow_start {
        if s.algorithm.is_hash() {
            return Err("slow_start does not apply to ring_hash or maglev".into());
        }
        let policy = SlowStartPolicy {
            window_ms: ss.window.as_millis(),
            aggression: ss.aggression.unwrap_or(1.0),
            min_weight_percent: ss.min_weight_percent.unwrap_or(10),
        };
        if policy.window_ms == 0 {
            return Err("slow_start.window must be greater than 0".into());
        }
        if !(policy.aggression > 0.0 && policy.aggression <= 100.0) {
            // (No float formatting: it would pull float printing into the artifact.)
            return Err("slow_start.aggression must be in (0, 100]".into());
        }
        if !(1..=100).contains(&policy.min_weight_percent) {
            return Err("slow_start.min_weight_percent must be 1..=100".into());
        }
        p.slow_start = Some(policy);
    }
    if let Some(z) = s.zone_aware {
        if z.local_zone.is_empty() {
            return Err("zone_aware.local_zone must not be empty".into());
        }
        let min = z.min_healthy_percent.unwrap_or(70);
        if !(1..=100).contains(&min) {
            return Err("zone_aware.min_healthy_percent must be 1..=100".into());
        }
        p.zone_aware = Some(ZonePolicy { local_zone: z.local_zone, min_healthy_percent: min });
    }
    let endpoints = match s.endpoints {
        None => EndpointSource::Discovery,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for e in list {
                let ep = match e {
                    RawEndpoint::Address(a) => Endpoint::new(a),
                    RawEndpoint::Full(f) => {
                        if f.weight == 0 {
                            return Err(format!("endpoints: {}: weight must be at least 1", f.address));
                        }
                        let mut ep = Endpoint::new(f.address);
                        ep.weight = f.weight;
                        ep.zone = f.zone;
                        ep
                    }
                };
                if out.iter().any(|o: &Endpoint| o.address == ep.address) {
                    return Err(format!("endpoints: {} is listed twice", ep.address));
                }
                out.push(ep);
            }
            EndpointSource::Static(out)
        }
    };
    Ok(ServicePlan { name: name.to_owned(), policy: Rc::new(p), endpoints })
}

/// The JSON Schema of this filter's configuration, as committed in `schemas/` (the `schema`
/// feature; never in a .wasm build).
#[cfg(feature = "schema")]
pub fn json_schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<RawConfig>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Plan::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn full_example_parses() {
        let plan = Plan::from_json(
            br#"{
              "endpoint_header": "x-picked",
              "service_from": [{"route": {"prefix": "/api/", "service": "api"}}, {"header": "x-svc"}, "authority"],
              "seed": 7,
              "refresh_interval": "2s",
              "services": {
                "api": {
                  "algorithm": "maglev",
                  "hash_key": [{"header": "x-user"}, {"cookie": "sid"}, "source_ip", "path"],
                  "maglev": {"table_size": 251},
                  "endpoints": ["10.0.0.1:80", {"address": "10.0.0.2:80", "weight": 3, "zone": "b"}],
                  "outlier_detection": {"consecutive_failures": 3, "base_ejection_time": "10s",
                                        "max_ejection_time": "1m", "max_ejection_percent": 50, "interval": "5s"},
                  "panic_threshold_percent": 0,
                  "zone_aware": {"local_zone": "a", "min_healthy_percent": 60}
                },
                "web": {"algorithm": "least_request", "least_request": {"choice_count": 3},
                        "slow_start": {"window": "30s"}, "outlier_detection": {"enabled": false}}
              }
            }"#,
        )
        .unwrap();
        assert_eq!(plan.endpoint_header, "x-picked");
        assert_eq!(plan.refresh_interval_ms, 2000);
        let api = &plan.services[0];
        assert_eq!(api.policy.maglev_table_size, 251);
        assert_eq!(api.policy.outlier.as_ref().unwrap().base_ejection_ms, 10_000);
        let EndpointSource::Static(eps) = &api.endpoints else { panic!() };
        assert_eq!((eps[1].weight, eps[1].zone.as_deref()), (3, Some("b")));
        let web = &plan.services[1];
        assert_eq!(web.endpoints, EndpointSource::Discovery);
        assert_eq!(web.policy.choice_count, 3);
        assert!(web.policy.outlier.is_none());
        assert_eq!(web.policy.slow_start.as_ref().unwrap().window_ms, 30_000);
    }

    #[test]
    fn defaults() {
        let plan = Plan::from_json(br#"{"services": {"api": {}}}"#).unwrap();
        assert_eq!(plan.endpoint_header, "x-meshwasm-endpoint");
        assert_eq!(plan.steering, Steering::FilterState);
        assert_eq!(plan.endpoint_metrics_limit, DEFAULT_ENDPOINT_METRICS_LIMIT);
        assert_eq!(*plan.services[0].policy, Policy::default());
    }

    #[test]
    fn no_client_header_selects_a_service_by_default() {
        // One service: it is the only choice, no header is read.
        let plan = Plan::from_json(br#"{"services": {"api": {}}}"#).unwrap();
        assert_eq!(plan.service_from, [ServiceSource::Fixed("api".into())]);
        assert!(plan.selection_headers.is_empty());
        // Several: the config must say how to choose.
        assert!(err(r#"{"services": {"api": {}, "web": {}}}"#).contains("service_from is required"));
        // A header only when named, and then it is stripped before forwarding.
        let plan = Plan::from_json(
            br#"{"service_from": [{"header": "x-svc"}, "authority", {"header": "x-svc"}],
                 "services": {"api": {}, "web": {}}}"#,
        )
        .unwrap();
        assert_eq!(plan.selection_headers, ["x-svc"]);
        assert!(
            err(r#"{"service_from": [{"header": "x-meshwasm-endpoint"}], "services": {"api": {}}}"#)
                .contains("other than endpoint_header")
        );
    }

    #[test]
    fn route_prefixes_must_be_normal_paths() {
        for bad in ["api/", "//api/", "/%61pi/", "/a/../api/", "/api;x", "/api%2F", "/api?"] {
            let json = format!(
                r#"{{"service_from": [{{"route": {{"prefix": "{bad}", "service": "api"}}}}], "services": {{"api": {{}}}}}}"#
            );
            assert!(err(&json).contains("must be a normalized path"), "{bad}");
        }
        assert!(Plan::from_json(br#"{"service_from": [{"route": {"prefix": "/api/", "service": "api"}}], "services": {"api": {}}}"#).is_ok());
    }

    #[test]
    fn steering_and_metric_limit() {
        let plan = Plan::from_json(
            br#"{"steering": "header", "endpoint_metrics_limit": 0, "services": {"api": {}}}"#,
        )
        .unwrap();
        assert_eq!((plan.steering, plan.endpoint_metrics_limit), (Steering::Header, 0));
        assert!(err(r#"{"steering": "metadata", "services": {"api": {}}}"#).contains("metadata"));
        assert!(
            err(r#"{"endpoint_metrics_limit": 10001, "services": {"api": {}}}"#)
                .contains("endpoint_metrics_limit")
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"services": {"api": {"algoritm": "random"}}}"#).contains("algoritm"));
        assert!(err(r#"{"services": {"api": {"algorithm": "fastest"}}}"#).contains("fastest"));
        assert!(err(r#"{"services": {"api": {"algorithm": "maglev", "hash_key": ["path"], "maglev": {"table_size": 1000}}}}"#).contains("services.api.maglev.table_size: 1000 must be a prime"));
        assert!(err(r#"{"services": {"api": {"algorithm": "maglev"}}}"#).contains("hash_key"));
        assert!(
            err(r#"{"services": {"api": {"least_request": {}}}}"#)
                .contains("services.api.least_request: is set but")
        );
        assert!(
            err(r#"{"services": {"api": {"outlier_detection": {"base_ejection_time": "3 days"}}}}"#)
                .contains("not a duration")
        );
        assert!(
            err(r#"{"services": {"api": {"panic_threshold_percent": 101}}}"#)
                .contains("panic_threshold_percent")
        );
        assert!(
            err(r#"{"services": {"api": {"endpoints": ["10.0.0.1:80", "10.0.0.1:80"]}}}"#).contains("twice")
        );
        assert!(err(r#"{"services": {"api": {"endpoints": ["host:80"]}}}"#).contains("endpoint `host:80`"));
        assert!(
            err(r#"{"services": {"api": {"endpoints": [{"adress": "10.0.0.1:80"}]}}}"#).contains("adress")
        );
        assert!(err(r#"{"services": {"api": {"endpoints": [7]}}}"#).contains("an endpoint"));
        assert!(err(r#"{"service_from": [{"fixed": "nope"}], "services": {"api": {}}}"#).contains("`nope`"));
        assert!(
            err(r#"{"endpoint_header": "X-Bad Header", "services": {"api": {}}}"#)
                .contains("endpoint_header")
        );
        assert!(err(r#"{"services": {}}"#).contains("services: must name at least one service"));
    }

    #[test]
    fn durations_and_header_names_use_the_shared_checks() {
        let plan = Plan::from_json(
            br#"{"endpoint_header": "X-Picked", "service_from": [{"header": "X-Svc"}], "refresh_interval": "250ms",
                 "services": {"api": {"algorithm": "ring_hash", "hash_key": [{"header": "X-User"}],
                                      "outlier_detection": {"base_ejection_time": "1m", "interval": "2s"}}}}"#,
        )
        .unwrap();
        // Header names of any case are stored lower-cased, as requests carry them.
        assert_eq!(plan.endpoint_header, "x-picked");
        assert_eq!(plan.selection_headers, ["x-svc"]);
        assert_eq!(plan.service_from, [ServiceSource::Header("x-svc".into())]);
        assert_eq!(plan.services[0].policy.hash_key, [HashSource::Header("x-user".into())]);
        assert_eq!(plan.refresh_interval_ms, 250);
        let o = plan.services[0].policy.outlier.as_ref().unwrap();
        assert_eq!((o.base_ejection_ms, o.interval_ms), (60_000, 2000));
        // Errors carry the field path.
        let e = Plan::from_json(br#"{"refresh_interval": "5", "services": {"api": {}}}"#).unwrap_err();
        assert_eq!(e.path(), "refresh_interval");
        let e = Plan::from_json(
            br#"{"services": {"api": {"algorithm": "maglev", "hash_key": [{"header": "x y"}]}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.path(), "services.api.hash_key[0].header");
        let e = Plan::from_json(
            br#"{"service_from": [{"header": "X-Meshwasm-Endpoint"}], "services": {"api": {}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.path(), "service_from[0].header");
        let e = Plan::from_json(br#"{"services": {"api": {"slow_start": {"window": "0s"}}}}"#).unwrap_err();
        assert_eq!(e.path(), "services.api.slow_start.window");
    }
}
