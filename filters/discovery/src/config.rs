//! The plugin configuration (JSON), validated once into an immutable [`Plan`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::cidr::Cidr;
use crate::debug::DebugAccess;
use crate::policy::AddressPolicy;
use crate::sources::Source;
use crate::sources::consul::{Consul, ConsulConfig};
use crate::sources::doh::{Doh, DohConfig};
use crate::sources::etcd::{Etcd, EtcdConfig};
use crate::sources::eureka::{Eureka, EurekaConfig};
use crate::sources::file::{File, FileConfig};
use crate::sources::kubernetes::{Kubernetes, KubernetesConfig};
use crate::sources::nacos::{Nacos, NacosConfig};
use crate::sources::static_list::{StaticConfig, StaticList};

/// A duration written as `"250ms"`, `"5s"`, `"2m"` or `"1h"`: the one duration type of meshwasm
/// configurations (the sources name it `Dur`).
pub use meshwasm_config::Duration as Dur;
use meshwasm_config::{ConfigError, header_name};

/// The plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub services: Vec<ServiceConfig>,
    /// How discovery is loaded: `filter` (default; an HTTP filter, one VM per worker, one poller
    /// elected through a lease) or `service` (an Envoy bootstrap Wasm service with `singleton: true`:
    /// one VM for the proxy, no lease).
    #[serde(default)]
    pub mode: Mode,
    /// How often the root context wakes up to poll, renew the lease and check deadlines.
    #[serde(default = "default_tick")]
    pub tick: Dur,
    /// The poller election (filter mode only; a service has none).
    #[serde(default)]
    pub lease: Option<LeaseConfig>,
    /// When set, a GET on this exact path from a loopback client (or with `debug_header`) is answered
    /// by the filter with the published sets (JSON); for operators and tests. Off by default. Other
    /// requests pass untouched.
    #[serde(default)]
    pub debug_path: Option<String>,
    /// A header that also opens the debug endpoint to non-loopback clients.
    #[serde(default)]
    pub debug_header: Option<DebugHeaderConfig>,
}

/// How discovery is loaded; see [`Config::mode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// An HTTP filter (`envoy.filters.http.wasm`, Istio's WasmPlugin): every worker's VM (and the main
    /// thread's) runs it; one of them polls, elected through the lease.
    #[default]
    Filter,
    /// A singleton Wasm service (`envoy.bootstrap.wasm`, `singleton: true`; `meshwasm-host`'s
    /// services): the only VM, so it polls without a lease, and it is never in a request's path.
    Service,
}

/// `{"name": "x-meshwasm-debug", "value": "<long random string>"}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DebugHeaderConfig {
    pub name: String,
    pub value: String,
}

fn default_tick() -> Dur {
    Dur(Duration::from_millis(200))
}

/// The poller election among the VMs (workers) of one proxy.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// A poller that has not renewed for this long is replaced.
    #[serde(default = "default_ttl")]
    pub ttl: Dur,
    /// Name of the lease; discovery filters with different service lists need different names.
    #[serde(default = "default_lease_name")]
    pub name: String,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self { ttl: default_ttl(), name: default_lease_name() }
    }
}

fn default_ttl() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_lease_name() -> String {
    "default".into()
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The service name the balancer looks up (shared-data key suffix).
    pub name: String,
    pub source: SourceConfig,
    /// Poll interval (for Consul blocking queries: the pause between queries). Default 5s.
    #[serde(default = "default_refresh")]
    pub refresh: Dur,
    /// Timeout of each registry call (added to a blocking query's wait). Default 5s.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Publish an empty answer (otherwise the last good set stays). Default false.
    #[serde(default)]
    pub allow_empty: bool,
    /// Longest pause between retries after errors (they back off from the smaller of 1s, `refresh`
    /// and this, doubling). At least 100ms. Default 30s.
    #[serde(default = "default_max_retry")]
    pub max_retry: Dur,
    /// Publish loopback addresses (`127.0.0.0/8`, `::1`). Default false: a registry entry pointing at
    /// loopback reaches the proxy's own ports (Envoy admin).
    #[serde(default)]
    pub allow_loopback: bool,
    /// When set, only addresses in one of these blocks are published.
    #[serde(default)]
    pub allow_cidrs: Option<Vec<String>>,
    /// Addresses in these blocks are never published (wins over `allow_cidrs`).
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
/// The floor of `max_retry`: a registry that keeps failing is asked at most 10 times a second.
pub const MIN_RETRY: Duration = Duration::from_millis(100);

fn default_max_retry() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum SourceConfig {
    Static(StaticConfig),
    File(FileConfig),
    Etcd(EtcdConfig),
    Consul(ConsulConfig),
    Eureka(EurekaConfig),
    Nacos(NacosConfig),
    Kubernetes(KubernetesConfig),
    Dns(DohConfig),
}

/// Where a source's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Envoy cluster name.
    pub cluster: String,
    /// `:authority` of the calls (default: the cluster name).
    pub authority: String,
}

/// One validated service.
#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: String,
    pub kind: &'static str,
    pub upstream: Option<Upstream>,
    pub refresh: Duration,
    pub timeout: Duration,
    pub allow_empty: bool,
    pub max_retry: Duration,
    /// Which addresses may be published.
    pub policy: AddressPolicy,
    source: SourceConfig,
}

impl ServicePlan {
    /// A fresh source state machine for this service (validated once in [`Plan::from_config`]).
    pub fn new_source(&self) -> Result<Source, String> {
        let at = format!("source.{}", self.kind);
        Ok(match &self.source {
            SourceConfig::Static(c) => {
                Source::Static(StaticList::new(c.clone()).map_err(|e| format!("{at}.{e}"))?)
            }
            SourceConfig::File(c) => {
                Source::File(File::new(c, self.timeout).map_err(|e| format!("{at}.{e}"))?)
            }
            SourceConfig::Etcd(c) => {
                Source::Etcd(Etcd::new(c, self.timeout).map_err(|e| format!("{at}.{e}"))?)
            }
            SourceConfig::Consul(c) => Source::Consul(Consul::new(c.clone(), &self.name, self.timeout)),
            SourceConfig::Eureka(c) => Source::Eureka(
                Eureka::new(c.clone(), &self.name, self.timeout).map_err(|e| format!("{at}.{e}"))?,
            ),
            SourceConfig::Nacos(c) => Source::Nacos(Nacos::new(c, &self.name, self.timeout)),
            SourceConfig::Kubernetes(c) => Source::Kubernetes(Kubernetes::new(c, &self.name, self.timeout)),
            SourceConfig::Dns(c) => {
                Source::Dns(Doh::new(c.clone(), self.timeout, self.refresh).map_err(|e| format!("{at}.{e}"))?)
            }
        })
    }
}

/// The validated configuration, built once in `on_configure`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub services: Vec<ServicePlan>,
    pub mode: Mode,
    pub tick: Duration,
    pub lease_ttl: Duration,
    pub lease_name: String,
    /// The debug endpoint, if configured.
    pub debug: Option<DebugAccess>,
}

/// Shared-data and metric names must stay simple.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_cidrs(list: &[String], at: &str) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, c)| c.parse::<Cidr>().map_err(|e| ConfigError::new(format!("{at}[{i}]"), e.to_string())))
        .collect()
}

fn debug_access(config: &Config) -> Result<Option<DebugAccess>, ConfigError> {
    let Some(path) = &config.debug_path else {
        return match config.debug_header {
            Some(_) => Err(ConfigError::new("debug_header", "needs debug_path")),
            None => Ok(None),
        };
    };
    if !path.starts_with('/') {
        return Err(ConfigError::new("debug_path", "must start with `/`"));
    }
    let header = match &config.debug_header {
        None => None,
        Some(h) => {
            let name = header_name("debug_header.name", &h.name)?;
            // The value is a shared secret: long enough not to be guessed, never echoed in errors.
            if h.value.len() < 16 {
                return Err(ConfigError::new("debug_header.value", "must be at least 16 characters"));
            }
            if h.value.bytes().any(|b| b.is_ascii_control()) {
                return Err(ConfigError::new("debug_header.value", "contains a control character"));
            }
            Some((name, h.value.as_bytes().to_vec()))
        }
    };
    Ok(Some(DebugAccess { path: path.clone(), header }))
}

fn check_headers(h: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (k, v) in h {
        header_name("headers", k)?;
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(ConfigError::new("headers", format!("value of `{k}` contains a line break")));
        }
    }
    Ok(())
}

impl Plan {
    /// Parses and validates; the error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::from_config(meshwasm_config::from_json(bytes)?)
    }

    pub fn from_config(config: Config) -> Result<Self, ConfigError> {
        if config.services.is_empty() {
            return Err(ConfigError::new("services", "at least one service is required"));
        }
        if config.tick.0 < Duration::from_millis(10) {
            return Err(ConfigError::new("tick", "must be at least 10ms"));
        }
        if config.mode == Mode::Service {
            // A service is alone (no lease) and sees no request (no debug endpoint).
            if config.lease.is_some() {
                return Err(ConfigError::new(
                    "lease",
                    "a service (`mode: service`) is the only discovery VM and needs no lease; remove it",
                ));
            }
            if config.debug_path.is_some() {
                return Err(ConfigError::new(
                    "debug_path",
                    "a service (`mode: service`) sees no requests; the debug endpoint needs `mode: filter`",
                ));
            }
        }
        let lease = config.lease.clone().unwrap_or_default();
        if lease.ttl.0 < config.tick.0 * 2 {
            return Err(ConfigError::new("lease.ttl", "must be at least twice the tick"));
        }
        let debug = debug_access(&config)?;
        if !valid_name(&lease.name) {
            return Err(ConfigError::new("lease.name", "use letters, digits, `-`, `_` or `.`"));
        }
        let mut services = Vec::with_capacity(config.services.len());
        for (i, s) in config.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            if !valid_name(&s.name) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("`{}` must be 1-128 letters, digits, `-`, `_` or `.`", s.name),
                ));
            }
            if services.iter().any(|p: &ServicePlan| p.name == s.name) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("service `{}` is listed twice", s.name),
                ));
            }
            if s.timeout.0.is_zero() {
                return Err(ConfigError::new(format!("{at}.timeout"), "must be above 0"));
            }
            if let SourceConfig::Consul(c) = &s.source
                && c.wait.0 > Duration::from_secs(600)
            {
                return Err(ConfigError::new(
                    format!("{at}.source.consul.wait"),
                    "Consul caps blocking queries at 10m",
                ));
            }
            let policy = AddressPolicy {
                allow_loopback: s.allow_loopback,
                allow_cidrs: match &s.allow_cidrs {
                    Some(list) if list.is_empty() => {
                        return Err(ConfigError::new(
                            format!("{at}.allow_cidrs"),
                            "an empty list would refuse every address; leave it out to allow any",
                        ));
                    }
                    Some(list) => Some(parse_cidrs(list, &format!("{at}.allow_cidrs"))?),
                    None => None,
                },
                deny_cidrs: parse_cidrs(&s.deny_cidrs, &format!("{at}.deny_cidrs"))?,
            };
            // A static list is known now: an address the policy refuses is a configuration error.
            if let SourceConfig::Static(c) = &s.source {
                for (j, e) in c.endpoints.iter().enumerate() {
                    if let Err(why) = policy.check(e.address) {
                        return Err(ConfigError::new(
                            format!("{at}.source.static.endpoints[{j}].address"),
                            format!("{} is refused: {why}", e.address),
                        ));
                    }
                }
            }
            let at = format!("{at}.source");
            let (kind, upstream, headers) = match &s.source {
                SourceConfig::Static(_) => ("static", None, None),
                SourceConfig::File(c) => ("file", Some((&c.cluster, &c.authority)), Some(&c.headers)),
                SourceConfig::Etcd(c) => ("etcd", Some((&c.cluster, &c.authority)), Some(&c.headers)),
                SourceConfig::Consul(c) => ("consul", Some((&c.cluster, &c.authority)), Some(&c.headers)),
                SourceConfig::Eureka(c) => ("eureka", Some((&c.cluster, &c.authority)), Some(&c.headers)),
                SourceConfig::Nacos(c) => ("nacos", Some((&c.cluster, &c.authority)), Some(&c.headers)),
                SourceConfig::Kubernetes(c) => {
                    ("kubernetes", Some((&c.cluster, &c.authority)), Some(&c.headers))
                }
                SourceConfig::Dns(c) => ("dns", Some((&c.cluster, &c.authority)), Some(&c.headers)),
            };
            if let Some(h) = headers {
                check_headers(h).map_err(|e| e.within(&format!("{at}.{kind}")))?;
            }
            let upstream = match upstream {
                Some((cluster, _)) if cluster.is_empty() => {
                    return Err(ConfigError::new(format!("{at}.{kind}.cluster"), "must not be empty"));
                }
                Some((cluster, authority)) => Some(Upstream {
                    cluster: cluster.clone(),
                    authority: authority.clone().unwrap_or_else(|| cluster.clone()),
                }),
                None => None,
            };
            let plan = ServicePlan {
                name: s.name,
                kind,
                upstream,
                refresh: s.refresh.0,
                timeout: s.timeout.0,
                allow_empty: s.allow_empty,
                max_retry: s.max_retry.0.max(MIN_RETRY),
                policy,
                source: s.source,
            };
            plan.new_source().map_err(|e| ConfigError::split(&format!("services[{i}]"), &e))?;
            services.push(plan);
        }
        Ok(Plan {
            services,
            mode: config.mode,
            tick: config.tick.0,
            lease_ttl: lease.ttl.0,
            lease_name: lease.name,
            debug,
        })
    }
}

/// The JSON Schema of this filter's configuration, as committed in `schemas/` (the `schema`
/// feature; never in a .wasm build).
#[cfg(feature = "schema")]
pub fn json_schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<Config>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("s").is_err());
        assert!(Dur::parse("-1s").is_err());
    }

    #[test]
    fn full_example_parses() {
        let json = include_str!("../../../examples/discovery/all-sources.json");
        let plan = Plan::from_json(json.as_bytes()).unwrap();
        let kinds: Vec<_> = plan.services.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["static", "etcd", "consul", "eureka", "nacos", "kubernetes", "dns"]);
        assert_eq!(plan.services[1].upstream.as_ref().unwrap().authority, "etcd");
    }

    #[test]
    fn service_mode() {
        let svc =
            r#""services":[{"name":"a","source":{"static":{"endpoints":[{"address":"10.0.0.1:80"}]}}}]"#;
        let plan = |extra: &str| Plan::from_json(format!("{{{extra}{svc}}}").as_bytes());
        assert_eq!(plan("").unwrap().mode, Mode::Filter);
        assert_eq!(plan(r#""mode":"service","#).unwrap().mode, Mode::Service);
        let err = |extra: &str| plan(extra).unwrap_err().to_string();
        assert!(err(r#""mode":"singleton","#).contains("mode"));
        // A service has no lease and no debug endpoint: asking for either is a mistake.
        let e = err(r#""mode":"service","lease":{"ttl":"5s"},"#);
        assert!(e.starts_with("lease"), "{e}");
        let e = err(r#""mode":"service","debug_path":"/d","#);
        assert!(e.starts_with("debug_path"), "{e}");
        // The filter form keeps both.
        assert!(plan(r#""mode":"filter","lease":{"ttl":"5s"},"debug_path":"/d","#).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let err = |j: &str| Plan::from_json(j.as_bytes()).unwrap_err().to_string();
        assert!(err(r#"{"services":[]}"#).contains("services"));
        assert!(
            err(r#"{"services":[{"name":"a","source":{"static":{"endpoints":[]}}}],"tik":"1s"}"#)
                .contains("tik")
        );
        assert!(
            err(r#"{"services":[{"name":"a b","source":{"static":{"endpoints":[]}}}]}"#)
                .contains("services[0].name")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"etcd":{"cluster":"e","prefix":"/x/","prefx":1}}}]}"#)
                .contains("prefx")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"etcd":{"cluster":"e","prefix":""}}}]}"#)
                .contains("services[0].source.etcd.prefix")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"dns":{"cluster":"d","name":"x.test","type":"A"}}}]}"#)
                .contains("services[0].source.dns.port")
        );
        assert!(
            err(r#"{"services":[{"name":"a","refresh":"5 s","source":{"static":{"endpoints":[]}}}]}"#)
                .contains("5 s")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"static":{"endpoints":[{"address":"10.0.0.1:80","weight":0}]}}}]}"#)
                .contains("weight")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"static":{"endpoints":[]}}},{"name":"a","source":{"static":{"endpoints":[]}}}]}"#)
                .contains("twice")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"consul":{"cluster":"c","headers":{"x":"a\nb"}}}}]}"#)
                .contains("line break")
        );
        assert!(
            err(r#"{"services":[{"name":"a","source":{"consul":{"cluster":"c","wait":"11m"}}}]}"#)
                .contains("services[0].source.consul.wait")
        );
        // Paths from serde name the field too, and the sources' own checks are placed under the service.
        let e = Plan::from_json(
            br#"{"services":[{"name":"a","timeout":5,"source":{"static":{"endpoints":[]}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path(), "services[0].timeout");
        let e = Plan::from_json(
            br#"{"services":[{"name":"a","source":{"consul":{"cluster":"c","headers":{"x y":"v"}}}}]}"#,
        )
        .unwrap_err();
        assert_eq!(e.path(), "services[0].source.consul.headers");
        // Names that are not RFC 9110 tokens were accepted before and failed only when the call was
        // dispatched; now the configuration is refused.
        for bad in ["x(y", "a/b", "a\\\"b", "x@y"] {
            let cfg = serde_json::json!({"services": [{"name": "a",
                "source": {"consul": {"cluster": "c", "headers": {bad: "v"}}}}]});
            let e = Plan::from_json(cfg.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.path(), "services[0].source.consul.headers", "{bad}");
        }
        let e =
            Plan::from_json(br#"{"services":[{"name":"a","source":{"etcd":{"cluster":"e","prefix":""}}}]}"#)
                .unwrap_err();
        assert_eq!(e.path(), "services[0].source.etcd.prefix");
    }

    const ETCD: &str = r#""source":{"etcd":{"cluster":"e","prefix":"/x/"}}"#;

    #[test]
    fn address_policy_fields_are_validated_naming_the_field() {
        let err = |extra: &str| {
            Plan::from_json(format!(r#"{{"services":[{{"name":"a",{extra}{ETCD}}}]}}"#).as_bytes())
                .unwrap_err()
                .to_string()
        };
        let e = err(r#""allow_cidrs":["10.0.0.0/8","10.0.0.1/8"],"#);
        assert!(e.starts_with("services[0].allow_cidrs[1]: "), "{e}");
        assert!(e.contains("did you mean 10.0.0.0/8"), "{e}");
        let e = err(r#""deny_cidrs":["fd00::/129"],"#);
        assert!(e.starts_with("services[0].deny_cidrs[0]: "), "{e}");
        let e = err(r#""allow_cidrs":[],"#);
        assert!(e.starts_with("services[0].allow_cidrs: "), "{e}");
        let e = err(r#""allow_loopback":"yes","#);
        assert!(e.contains("allow_loopback") || e.contains("boolean"), "{e}");

        let plan = Plan::from_json(
            format!(
                r#"{{"services":[{{"name":"a","allow_loopback":true,"allow_cidrs":["10.0.0.0/8"],"deny_cidrs":["10.9.0.0/16"],{ETCD}}},
                {{"name":"b",{ETCD}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let p = &plan.services[0].policy;
        assert!(p.allow_loopback);
        assert_eq!(p.allow_cidrs.as_ref().unwrap()[0].to_string(), "10.0.0.0/8");
        assert_eq!(p.deny_cidrs[0].to_string(), "10.9.0.0/16");
        // Defaults: no loopback, no CIDR lists.
        assert_eq!(plan.services[1].policy, AddressPolicy::default());
    }

    #[test]
    fn static_endpoints_the_policy_refuses_fail_the_configuration() {
        let cfg = |extra: &str, addr: &str| {
            Plan::from_json(
                format!(
                    r#"{{"services":[{{"name":"a",{extra}"source":{{"static":{{"endpoints":[{{"address":"10.0.0.1:80"}},{{"address":"{addr}"}}]}}}}}}]}}"#
                )
                .as_bytes(),
            )
            .map_err(|e| e.to_string())
        };
        let e = cfg("", "127.0.0.1:9901").unwrap_err();
        assert_eq!(
            e,
            "services[0].source.static.endpoints[1].address: 127.0.0.1:9901 is refused: loopback address (allow_loopback is false)"
        );
        assert!(cfg("", "169.254.169.254:80").unwrap_err().contains("link-local"));
        assert!(cfg(r#""allow_loopback":true,"#, "169.254.169.254:80").is_err());
        assert!(cfg(r#""allow_loopback":true,"#, "127.0.0.1:8080").is_ok());
        assert!(cfg(r#""deny_cidrs":["10.0.0.0/8"],"#, "10.1.1.1:80").unwrap_err().contains("endpoints[0]"));
    }

    #[test]
    fn debug_endpoint_is_off_by_default_and_validated() {
        let plan = |top: &str| {
            Plan::from_json(format!(r#"{{{top}"services":[{{"name":"a",{ETCD}}}]}}"#).as_bytes())
                .map_err(|e| e.to_string())
        };
        assert_eq!(plan("").unwrap().debug, None);
        let d = plan(r#""debug_path":"/dbg","#).unwrap().debug.unwrap();
        assert_eq!((d.path.as_str(), d.header), ("/dbg", None));
        let d =
            plan(r#""debug_path":"/dbg","debug_header":{"name":"x-debug-key","value":"0123456789abcdef"},"#)
                .unwrap()
                .debug
                .unwrap();
        assert_eq!(d.header, Some(("x-debug-key".into(), b"0123456789abcdef".to_vec())));

        assert!(plan(r#""debug_path":"dbg","#).unwrap_err().starts_with("debug_path:"));
        let e = plan(r#""debug_header":{"name":"x-debug-key","value":"0123456789abcdef"},"#).unwrap_err();
        assert!(e.starts_with("debug_header: "), "{e}");
        // The one header-name check of every filter: any case (stored lower-cased, as Envoy hands
        // headers to filters), RFC 9110 token characters only.
        let d = plan(r#""debug_path":"/d","debug_header":{"name":"X-Debug","value":"0123456789abcdef"},"#)
            .unwrap()
            .debug
            .unwrap();
        assert_eq!(d.header.unwrap().0, "x-debug");
        let e = plan(r#""debug_path":"/d","debug_header":{"name":"x debug","value":"0123456789abcdef"},"#)
            .unwrap_err();
        assert!(e.starts_with("debug_header.name: "), "{e}");
        let e = plan(r#""debug_path":"/d","debug_header":{"name":"x-debug","value":"short-secret"},"#)
            .unwrap_err();
        assert!(e.starts_with("debug_header.value: "), "{e}");
        assert!(!e.contains("short-secret"), "the secret is never echoed: {e}");
        let e =
            plan(r#""debug_path":"/d","debug_header":{"name":"x","value":"0123456789abcdef","vlaue":1},"#)
                .unwrap_err();
        assert!(e.contains("vlaue"), "{e}");
    }
}
