//! proxy-wasm glue: reads what the plan needs from Envoy, decides with [`evaluate`], replies and
//! counts. Compiled for wasm32 only.
//!
//! Fails closed: without a valid plan, or when a hostcall fails, the request gets a 503; a path that
//! does not normalize gets a 400 before any policy.

use std::borrow::Cow;
use std::rc::Rc;

use meshwasm_filter_runtime::glue::{define, increment, log, plugin_config};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

use crate::attributes::{
    Attributes, DNS_SAN, MTLS, Peer, REQUEST_CLAIM_PREFIX, REQUEST_PRINCIPAL, REQUEST_PROVIDER,
    SHA256_DIGEST, SOURCE_ADDRESS, SUBJECT, URI_SAN, claim_values,
};
use crate::config::Plan;
use crate::pattern::source_ip;
use crate::policy::{Verdict, evaluate};

const PREFIX: &str = "meshwasm_authz";

// The filter's own `.wasm` entry point; off (feature `standalone`) when linked into the combined
// meshwasm.wasm, whose entry point selects this filter by root_id through [`root_context`].
#[cfg(feature = "standalone")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    meshwasm_filter_runtime::glue::install_panic_hook("authz");
    proxy_wasm::set_root_context(root_context);
}}

/// This filter's root context (one per plugin and worker).
pub fn root_context(_context_id: u32) -> Box<dyn RootContext> {
    Box::new(Root { filter: None })
}

/// Counter ids, defined once per VM at configure time: the totals.
struct Counters {
    allowed: Option<u32>,
    denied: Option<u32>,
    dry_run_denied: Option<u32>,
    audited: Option<u32>,
    bad_path: Option<u32>,
    errors: Option<u32>,
}

impl Counters {
    fn new() -> Self {
        let c = |name: &str| define(MetricType::Counter, &format!("{PREFIX}.{name}"));
        Self {
            allowed: c("allowed"),
            denied: c("denied"),
            dry_run_denied: c("dry_run_denied"),
            audited: c("audited"),
            bad_path: c("bad_path"),
            errors: c("errors"),
        }
    }
}

/// One policy's counters (`meshwasm_authz.policy.<name>.*`).
struct PolicyCounters {
    allowed: Option<u32>,
    denied: Option<u32>,
    dry_run_denied: Option<u32>,
    audited: Option<u32>,
}

impl PolicyCounters {
    fn new(policy: &str) -> Self {
        let c = |name: &str| define(MetricType::Counter, &format!("{PREFIX}.policy.{policy}.{name}"));
        Self {
            allowed: c("allowed"),
            denied: c("denied"),
            dry_run_denied: c("dry_run_denied"),
            audited: c("audited"),
        }
    }
}

fn bump(id: Option<u32>) {
    if let Some(id) = id {
        increment(id, 1);
    }
}

struct Filter {
    plan: Plan,
    total: Counters,
    /// Per policy, in plan order (`meshwasm_authz.policy.<name>.*`).
    per_policy: Vec<PolicyCounters>,
}

struct Root {
    filter: Option<Rc<Filter>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // A rejected reconfiguration leaves no plan behind: requests then get 503, never a pass.
        self.filter = None;
        let plan = match Plan::from_json(&plugin_config()) {
            Ok(p) => p,
            Err(e) => {
                log(LogLevel::Error, &format!("meshwasm authz: rejected configuration: {e}"));
                return false;
            }
        };
        for w in &plan.warnings {
            log(LogLevel::Warn, &format!("meshwasm authz: {w}"));
        }
        let per_policy = plan.policies.iter().map(|p| PolicyCounters::new(&p.name)).collect();
        log(LogLevel::Info, &format!("meshwasm authz: {} policies", plan.policies.len()));
        self.filter = Some(Rc::new(Filter { plan, total: Counters::new(), per_policy }));
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { context_id, filter: self.filter.clone() }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    context_id: u32,
    filter: Option<Rc<Filter>>,
}

impl Context for Http {}

/// Whether Envoy logs debug lines now (checked before formatting one: the per-request path).
fn debug_on() -> bool {
    matches!(hostcalls::get_log_level(), Ok(LogLevel::Trace | LogLevel::Debug))
}

fn reply(status: u32, body: &str) -> Action {
    let _ = hostcalls::send_http_response(
        status,
        vec![("content-type", "text/plain; charset=utf-8")],
        Some(body.as_bytes()),
    );
    Action::Pause
}

fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    hostcalls::get_property(path.to_vec())
}

fn string(path: &[&str]) -> Result<Option<String>, Status> {
    Ok(property(path)?
        .map(|v| String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())))
}

/// A certificate property when the policies look at it (`None` otherwise, as if absent).
fn cert(needed: bool, path: &[&str]) -> Result<Option<String>, Status> {
    if needed { string(path) } else { Ok(None) }
}

fn header(name: &str) -> Result<Vec<u8>, Status> {
    Ok(hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)?.unwrap_or_default())
}

/// Reads what the plan needs, beyond the path (already normalized), and nothing else: an attribute no
/// policy looks at is left empty.
fn attributes(plan: &Plan, path: String) -> Result<Attributes, Status> {
    let needs = &plan.needs;
    let mut a = Attributes { path, ..Attributes::default() };
    if needs.method {
        a.method = header(":method")?;
    }
    if needs.authority {
        a.authority = header(":authority")?;
        a.authority.make_ascii_lowercase();
    }
    // `connection.mtls` first: a plaintext connection has no identity, whatever else is set.
    if needs.peer && property(MTLS)?.is_some_and(|v| v.first() == Some(&1)) {
        a.peer = Peer::new(
            true,
            cert(needs.uri_san, URI_SAN)?,
            cert(needs.dns_san, DNS_SAN)?,
            cert(needs.subject, SUBJECT)?,
            cert(needs.sha256, SHA256_DIGEST)?,
        );
    }
    if needs.source_ip {
        a.source_ip = property(SOURCE_ADDRESS)?.as_deref().and_then(source_ip);
    }
    if needs.request_principal {
        a.request_principal = property(&[REQUEST_PRINCIPAL])?;
    }
    if needs.request_provider {
        a.request_provider = property(&[REQUEST_PROVIDER])?;
    }
    for name in &needs.claims {
        let value = property(&[&format!("{REQUEST_CLAIM_PREFIX}{name}")])?;
        a.claims.push((name.clone(), value.as_deref().map(claim_values).unwrap_or_default()));
    }
    if !needs.headers.is_empty() {
        // Every value of a repeated header (the single-value hostcall returns only the first).
        let all = hostcalls::get_map_bytes(MapType::HttpRequestHeaders)?;
        for name in &needs.headers {
            let values = all.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect();
            a.headers.push((name.clone(), values));
        }
    }
    Ok(a)
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(f) = self.filter.clone() else {
            log(
                LogLevel::Error,
                &format!("meshwasm authz: {}: no valid configuration: 503", self.context_id),
            );
            return reply(503, "authorization unavailable\n");
        };
        let raw = match hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path") {
            Ok(p) => p.unwrap_or_default(),
            Err(s) => return self.internal_error(&f, s),
        };
        // A path already in normal form (the usual case) is taken as it is, without a copy.
        let normalized = std::str::from_utf8(&raw).map_err(|_| None).and_then(|p| {
            meshwasm_path::normalize(p)
                .map(|n| match n {
                    Cow::Owned(changed) => Some(changed),
                    Cow::Borrowed(_) => None,
                })
                .map_err(Some)
        });
        let path = match normalized {
            Ok(Some(changed)) => changed,
            Ok(None) => String::from_utf8(raw).unwrap_or_default(),
            Err(e) => {
                bump(f.total.bad_path);
                let why = e.map_or_else(|| "the path is not UTF-8".to_owned(), |e| e.to_string());
                if debug_on() {
                    log(LogLevel::Debug, &format!("meshwasm authz: {}: 400: {why}", self.context_id));
                }
                return reply(400, "bad request path\n");
            }
        };
        let a = match attributes(&f.plan, path) {
            Ok(a) => a,
            Err(s) => return self.internal_error(&f, s),
        };
        let d = evaluate(&f.plan.policies, &a);
        let name = |i: usize| f.plan.policies.get(i).map_or("?", |p| p.name.as_str());
        let counters = |i: usize| f.per_policy.get(i);
        for &i in &d.audited {
            bump(f.total.audited);
            bump(counters(i).and_then(|c| c.audited));
            log(
                LogLevel::Info,
                &format!("meshwasm authz: {}: audit: policy `{}` matched", self.context_id, name(i)),
            );
        }
        if !d.dry_run_denied.is_empty() {
            bump(f.total.dry_run_denied);
            for &i in &d.dry_run_denied {
                bump(counters(i).and_then(|c| c.dry_run_denied));
                log(
                    LogLevel::Info,
                    &format!("meshwasm authz: {}: dry run: policy `{}` would deny", self.context_id, name(i)),
                );
            }
        }
        // The log level can change at runtime: asked once per request, and only when there is a debug
        // line to write, which is formatted only when it will be logged.
        match d.verdict {
            Verdict::Allow => {
                bump(f.total.allowed);
                if let Some(i) = d.by {
                    bump(counters(i).and_then(|c| c.allowed));
                    if debug_on() {
                        let msg =
                            format!("meshwasm authz: {}: allowed by policy `{}`", self.context_id, name(i));
                        log(LogLevel::Debug, &msg);
                    }
                }
                Action::Continue
            }
            Verdict::Deny => {
                bump(f.total.denied);
                if let Some(i) = d.by {
                    bump(counters(i).and_then(|c| c.denied));
                }
                if debug_on() {
                    let msg = match d.by {
                        Some(i) => {
                            format!("meshwasm authz: {}: denied by policy `{}`", self.context_id, name(i))
                        }
                        None => {
                            format!("meshwasm authz: {}: denied: no ALLOW policy matched", self.context_id)
                        }
                    };
                    log(LogLevel::Debug, &msg);
                }
                // The body does not say which policy, or why.
                reply(403, "access denied\n")
            }
        }
    }
}

impl Http {
    fn internal_error(&self, f: &Filter, status: Status) -> Action {
        bump(f.total.errors);
        log(
            LogLevel::Error,
            &format!("meshwasm authz: {}: hostcall failed ({status:?}): 503", self.context_id),
        );
        reply(503, "authorization unavailable\n")
    }
}
