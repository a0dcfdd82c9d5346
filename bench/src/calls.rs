//! What each filter costs per request, counted exactly in the meshwasm wasmtime host: the wasm entries
//! (`proxy_on_*` callbacks the host called, `proxy_on_memory_allocate` included) and the hostcalls the
//! module made, by name, plus the host's wall time per request.
//!
//! The counts do not depend on the machine: they are what Envoy's host does for the same module and
//! the same requests (the host skips callbacks a module does not export exactly as Envoy does), so
//! they explain the Envoy CPU figures of the throughput tables. The µs column is the wasmtime host's
//! own time (Cranelift, not V8), on whatever else the machine is doing: a relative figure.
//!
//! The same artifacts and configurations as the throughput loads ([`crate::filters`]), one worker, a
//! warm-up (keys parsed, caches filled, endpoints published) before counting.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use meshwasm_host::{Host, HostOptions, Plugin, Proxy, Request, UpstreamReply, property};
use meshwasm_tests::envoy::WasmFilter;
use serde::{Deserialize, Serialize};

use crate::filters::FilterSet;
use crate::jwt::{Alg, TokenSet};

/// One filter (VM) in one load, per request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilterCalls {
    /// The load, as in the throughput tables (`wasm-jwt/rs256-repeated`).
    pub load: String,
    /// The plugin (VM) counted.
    pub filter: String,
    /// Requests counted (after the warm-up).
    pub requests: u64,
    /// Wasm entries per request, by export name.
    pub callbacks: BTreeMap<String, f64>,
    /// Hostcalls per request, by import name.
    pub hostcalls: BTreeMap<String, f64>,
    /// Host wall time per request of the whole load (every filter of the chain), µs.
    pub host_us_per_request: f64,
}

impl FilterCalls {
    pub fn callbacks_per_request(&self) -> f64 {
        self.callbacks.values().fold(0.0, |a, b| a + b)
    }

    pub fn hostcalls_per_request(&self) -> f64 {
        self.hostcalls.values().fold(0.0, |a, b| a + b)
    }
}

/// A load: its filter chain and the requests it sends.
struct Case {
    load: String,
    /// Singleton Wasm services (discovery's service form): in no chain, never entered by a request.
    services: Vec<WasmFilter>,
    filters: Vec<WasmFilter>,
    /// Request `i` (warm-up requests come first, with their own indexes).
    request: Box<dyn Fn(usize) -> Request>,
}

fn bearer(token: &str) -> Request {
    Request::get("/").header("authorization", format!("Bearer {token}"))
}

/// A load that could not be set up (an artifact not built, say): counted as skipped with the reason.
pub struct Skipped {
    pub load: String,
    pub reason: String,
}

/// The loads, the same as the throughput loads' wasm side; a load whose artifact is missing is skipped.
fn cases(filters: &FilterSet, tokens: &TokenSet, n: usize) -> Result<(Vec<Case>, Vec<Skipped>)> {
    let backends: Vec<SocketAddr> = (1..=3).map(|p| SocketAddr::from(([127, 0, 0, 1], 18_000 + p))).collect();
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let mut add = |load: &str,
                   chain: Result<(Vec<WasmFilter>, Vec<WasmFilter>)>,
                   request: Box<dyn Fn(usize) -> Request>| match chain {
        Ok((services, filters)) => out.push(Case { load: load.to_owned(), services, filters, request }),
        Err(e) => skipped.push(Skipped { load: load.to_owned(), reason: format!("{e:#}") }),
    };
    let plain = || -> Box<dyn Fn(usize) -> Request> { Box::new(|_| Request::get("/")) };
    add("noop", filters.noop().map(|f| (vec![], vec![f])), plain());
    add("noop-headers", filters.noop_headers().map(|f| (vec![], vec![f])), plain());
    for alg in Alg::ALL {
        let one = tokens.mint(alg, "repeated")?;
        add(
            &format!("wasm-jwt/{}-repeated", alg.slug()),
            filters.jwt_auth(tokens).map(|f| (vec![], vec![f])),
            Box::new(move |_| bearer(&one)),
        );
        let unique: Vec<String> =
            (0..WARMUP + n).map(|i| tokens.mint(alg, &format!("u{i}"))).collect::<Result<_>>()?;
        add(
            &format!("wasm-jwt/{}-unique", alg.slug()),
            filters.jwt_auth(tokens).map(|f| (vec![], vec![f])),
            Box::new(move |i| bearer(&unique[i % unique.len()])),
        );
    }
    add("wasm-balancer", filters.discovery_balancer(&backends).map(|fs| (vec![], fs)), plain());
    add(
        "wasm-balancer-service",
        filters.discovery_service_balancer(&backends).map(|(s, b)| (vec![s], vec![b])),
        plain(),
    );
    let one = tokens.mint(Alg::Rs256, "chain")?;
    let token = move || -> Box<dyn Fn(usize) -> Request> {
        let one = one.clone();
        Box::new(move |_| bearer(&one))
    };
    add(
        "wasm-chain/rs256-repeated",
        filters.jwt_auth(tokens).and_then(|j| {
            let mut chain = vec![j];
            chain.extend(filters.discovery_balancer(&backends)?);
            Ok((vec![], chain))
        }),
        token(),
    );
    add(
        "wasm-chain-service/rs256-repeated",
        filters.jwt_auth(tokens).and_then(|j| {
            let (service, balancer) = filters.discovery_service_balancer(&backends)?;
            Ok((vec![service], vec![j, balancer]))
        }),
        token(),
    );
    add(
        "wasm-chain-combined/rs256-repeated",
        filters.combined_chain(tokens, &backends, false).map(|c| (c.services, c.filters)),
        token(),
    );
    add(
        "wasm-authz",
        filters.authz(&crate::mtls::authz_config()).map(|f| (vec![], vec![f])),
        Box::new(|_| {
            Request::get("/")
                .property("connection.mtls", property::boolean(true))
                .property("connection.uri_san_peer_certificate", crate::mtls::FRONTEND)
        }),
    );
    Ok((out, skipped))
}

/// Requests before counting starts.
const WARMUP: usize = 20;

fn run_case(host: &Host, case: &Case, n: usize) -> Result<Vec<FilterCalls>> {
    // The tokens are minted for the real clock.
    let mut b = Proxy::builder(host).start_time(std::time::SystemTime::now());
    let plugin = |f: &WasmFilter| -> Result<Plugin> {
        let module = host.load(&f.path)?;
        let mut p = Plugin::new(module).name(&f.name).root_id(&f.root_id).vm_id(&f.vm_id).config(&f.config);
        for (k, v) in &f.env {
            p = p.env(k, v);
        }
        Ok(p)
    };
    for f in &case.services {
        b = b.service(plugin(f)?);
    }
    for f in &case.filters {
        b = b.plugin(plugin(f)?);
    }
    let mut proxy = b.build().with_context(|| format!("{}: the host refused the chain", case.load))?;
    // Timers first (discovery publishes on its first tick), then the warm-up requests.
    proxy.advance(Duration::from_secs(1));
    for i in 0..WARMUP {
        let ex = proxy.send(0, (case.request)(i), UpstreamReply::new(200).body("ok"))?;
        if ex.status != 200 {
            bail!("{}: warm-up request {i} got {} ({:?})", case.load, ex.status, ex.error);
        }
    }
    proxy.reset_call_counts();
    let start = Instant::now();
    for i in 0..n {
        let ex = proxy.send(0, (case.request)(WARMUP + i), UpstreamReply::new(200).body("ok"))?;
        if ex.status != 200 {
            bail!("{}: request {i} got {} ({:?})", case.load, ex.status, ex.error);
        }
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let per = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| (k.clone(), *v as f64 / n as f64)).collect();
    let mut counts: Vec<_> = proxy.call_counts().into_iter().collect();
    // Services first, then chain order.
    counts.sort_by_key(|(name, _)| case.filters.iter().position(|f| &f.name == name));
    Ok(counts
        .into_iter()
        .map(|(filter, c)| FilterCalls {
            load: case.load.clone(),
            filter,
            requests: n as u64,
            callbacks: per(&c.callbacks),
            hostcalls: per(&c.hostcalls),
            host_us_per_request: us,
        })
        .collect())
}

/// Counts every load over `n` requests each, with the artifacts in `wasm_dir`. `scratch` holds the
/// benchmark's keys.
/// A load that could not be set up or counted is skipped with its reason instead of failing the rest.
pub fn measure(wasm_dir: &Path, scratch: &Path, n: usize) -> Result<(Vec<FilterCalls>, Vec<Skipped>)> {
    let host = Host::new(HostOptions::default())?;
    let tokens = TokenSet::generate(scratch)?;
    let filters = FilterSet::new(wasm_dir.to_owned());
    let mut out = Vec::new();
    let (cases, mut skipped) = cases(&filters, &tokens, n)?;
    for case in cases {
        match run_case(&host, &case, n) {
            Ok(rows) => out.extend(rows),
            Err(e) => skipped.push(Skipped { load: case.load.clone(), reason: format!("{e:#}") }),
        }
    }
    Ok((out, skipped))
}

/// The skipped loads as a Markdown list (empty when none was).
pub fn skipped_markdown(skipped: &[Skipped]) -> String {
    let mut md = String::new();
    if !skipped.is_empty() {
        let _ = writeln!(md, "Not counted:\n");
        for s in skipped {
            let _ = writeln!(md, "- `{}`: {}", s.load, s.reason.replace('\n', " "));
        }
        let _ = writeln!(md);
    }
    md
}

fn num(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 { format!("{v:.0}") } else { format!("{v:.2}") }
}

/// `name ×n, …` for the nonzero entries, most frequent first.
fn names(m: &BTreeMap<String, f64>) -> String {
    let mut v: Vec<(&String, &f64)> = m.iter().filter(|(_, n)| **n > 0.0).collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| {
            let short = k.strip_prefix("proxy_on_").or_else(|| k.strip_prefix("proxy_")).unwrap_or(k);
            if (**n - 1.0).abs() < 1e-9 { short.to_owned() } else { format!("{short} ×{}", num(**n)) }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-filter table for the report.
pub fn markdown(rows: &[FilterCalls]) -> String {
    let mut md = String::new();
    if rows.is_empty() {
        return md;
    }
    let _ = writeln!(
        md,
        "Counted exactly in the meshwasm wasmtime host (same artifacts and configurations, 1 worker, after a \
         warm-up of {WARMUP} requests, over {} requests). A callback is a crossing into the VM \
         (`proxy_on_memory_allocate` included: the host allocates every value it returns); Envoy makes the \
         same ones. µs is the wasmtime host's wall time for the whole chain, on a shared machine: relative \
         only.\n",
        rows.first().map_or(0, |r| r.requests)
    );
    let _ = writeln!(
        md,
        "| load | filter | callbacks/req | hostcalls/req | host µs/req | callbacks | hostcalls |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1} | {} | {} |",
            r.load,
            r.filter,
            num(r.callbacks_per_request()),
            num(r.hostcalls_per_request()),
            r.host_us_per_request,
            names(&r.callbacks),
            names(&r.hostcalls)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_lists_per_request_figures_most_frequent_first() {
        let row = FilterCalls {
            load: "wasm-jwt/rs256-repeated".into(),
            filter: "jwt-auth".into(),
            requests: 100,
            callbacks: [
                ("proxy_on_request_headers".to_owned(), 1.0),
                ("proxy_on_memory_allocate".to_owned(), 3.0),
            ]
            .into(),
            hostcalls: [("proxy_get_header_map_value".to_owned(), 2.5), ("proxy_log".to_owned(), 0.0)].into(),
            host_us_per_request: 12.34,
        };
        let md = markdown(&[row]);
        assert!(
            md.contains(
                "| wasm-jwt/rs256-repeated | jwt-auth | 4 | 2.50 | 12.3 | memory_allocate ×3, request_headers | get_header_map_value ×2.50 |"
            ),
            "{md}"
        );
        assert_eq!(markdown(&[]), "");
    }
}
