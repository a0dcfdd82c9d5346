//! The plugin configuration (JSON), validated once into an immutable [`Plan`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::sources::Source;
use crate::sources::consul::{Consul, ConsulConfig};
use crate::sources::doh::{Doh, DohConfig};
use crate::sources::etcd::{Etcd, EtcdConfig};
use crate::sources::eureka::{Eureka, EurekaConfig};
use crate::sources::file::{File, FileConfig};
use crate::sources::kubernetes::{Kubernetes, KubernetesConfig};
use crate::sources::nacos::{Nacos, NacosConfig};
use crate::sources::static_list::{StaticConfig, StaticList};

/// A duration written as `"250ms"`, `"5s"`, `"2m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like \"500ms\" or \"5s\""))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(format!("`{s}`: unit must be ms, s, m or h")),
        };
        Ok(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The plugin configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub services: Vec<ServiceConfig>,
    /// How often the root context wakes up to poll, renew the lease and check deadlines.
    #[serde(default = "default_tick")]
    pub tick: Dur,
    #[serde(default)]
    pub lease: LeaseConfig,
    /// When set, a GET on this exact path is answered by the filter with the published sets (JSON);
    /// for operators and tests. Other requests pass untouched.
    #[serde(default)]
    pub debug_path: Option<String>,
}

fn default_tick() -> Dur {
    Dur(Duration::from_millis(200))
}

/// The poller election among the VMs (workers) of one proxy.
#[derive(Debug, Clone, Deserialize)]
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
    /// Longest pause between retries after errors (they back off from 1s). Default 30s.
    #[serde(default = "default_max_retry")]
    pub max_retry: Dur,
}

fn default_refresh() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_max_retry() -> Dur {
    Dur(Duration::from_secs(30))
}

#[derive(Debug, Clone, Deserialize)]
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
    pub tick: Duration,
    pub lease_ttl: Duration,
    pub lease_name: String,
    pub debug_path: Option<String>,
}

/// Shared-data and metric names must stay simple.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn check_headers(h: &BTreeMap<String, String>) -> Result<(), String> {
    for (k, v) in h {
        if k.is_empty() || k.starts_with(':') || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("headers: `{k}` is not a valid header name"));
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("headers: value of `{k}` contains a line break"));
        }
    }
    Ok(())
}

impl Plan {
    /// Parses and validates; the error names the field.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let config: Config = serde_json::from_slice(bytes).map_err(|e| format!("configuration: {e}"))?;
        Self::from_config(config)
    }

    pub fn from_config(config: Config) -> Result<Self, String> {
        if config.services.is_empty() {
            return Err("services: at least one service is required".into());
        }
        if config.tick.0 < Duration::from_millis(10) {
            return Err("tick: must be at least 10ms".into());
        }
        if config.lease.ttl.0 < config.tick.0 * 2 {
            return Err("lease.ttl: must be at least twice the tick".into());
        }
        if config.debug_path.as_ref().is_some_and(|p| !p.starts_with('/')) {
            return Err("debug_path: must start with `/`".into());
        }
        if !valid_name(&config.lease.name) {
            return Err("lease.name: use letters, digits, `-`, `_` or `.`".into());
        }
        let mut services = Vec::with_capacity(config.services.len());
        for (i, s) in config.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            if !valid_name(&s.name) {
                return Err(format!(
                    "{at}.name: `{}` must be 1-128 letters, digits, `-`, `_` or `.`",
                    s.name
                ));
            }
            if services.iter().any(|p: &ServicePlan| p.name == s.name) {
                return Err(format!("{at}.name: service `{}` is listed twice", s.name));
            }
            if s.timeout.0.is_zero() {
                return Err(format!("{at}.timeout: must be above 0"));
            }
            if let SourceConfig::Consul(c) = &s.source
                && c.wait.0 > Duration::from_secs(600)
            {
                return Err(format!("{at}.source.consul.wait: Consul caps blocking queries at 10m"));
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
                check_headers(h).map_err(|e| format!("{at}.{kind}.{e}"))?;
            }
            let upstream = match upstream {
                Some((cluster, _)) if cluster.is_empty() => {
                    return Err(format!("{at}.{kind}.cluster: must not be empty"));
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
                max_retry: s.max_retry.0.max(Duration::from_secs(1)),
                source: s.source,
            };
            plan.new_source().map_err(|e| format!("services[{i}].{e}"))?;
            services.push(plan);
        }
        Ok(Plan {
            services,
            tick: config.tick.0,
            lease_ttl: config.lease.ttl.0,
            lease_name: config.lease.name,
            debug_path: config.debug_path,
        })
    }
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
    fn errors_name_the_field() {
        let err = |j: &str| Plan::from_json(j.as_bytes()).unwrap_err();
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
    }
}
