//! Host cost: one request through a chain of N no-op filters (N = 1, 4, 8), and VM start from a cached
//! module. Needs the noop filter built:
//! `cargo build --profile wasm --target wasm32-wasip1 -p meshwasm-noop`.
//!
//! Besides criterion's figures, prints the marginal cost of one filter callback round trip, derived
//! from the difference between the 8-filter and the 1-filter chains.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshwasm_host::{Host, HostOptions, Module, Plugin, Proxy, Request, UpstreamReply};

fn noop(host: &Host) -> Module {
    let dir = std::env::var("MESHWASM_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"));
    let path = dir.join("meshwasm_noop.wasm");
    host.load(&path).unwrap_or_else(|e| {
        panic!("{e:#} (build it: cargo build --profile wasm --target wasm32-wasip1 -p meshwasm-noop)")
    })
}

fn chain(host: &Host, module: &Module, n: usize) -> Proxy {
    let mut b = Proxy::builder(host);
    for i in 0..n {
        // Distinct vm_ids: one VM per filter, as for a chain of different filters.
        b = b.plugin(Plugin::new(module.clone()).name(&format!("noop{i}")).vm_id(&format!("vm{i}")));
    }
    b.build().expect("chain")
}

fn request() -> Request {
    Request::post("/api/items?x=1")
        .header("authorization", "Bearer abc")
        .header("content-type", "application/json")
        .body("{}")
}

fn reply() -> UpstreamReply {
    UpstreamReply::new(200).header("content-type", "application/json").body("{\"ok\":true}")
}

fn per_request(proxy: &mut Proxy, iters: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let ex = proxy.send(0, request(), reply()).expect("send");
        assert_eq!(ex.status, 200);
    }
    start.elapsed() / iters
}

fn summary(host: &Host, module: &Module) {
    let mut one = chain(host, module, 1);
    let mut eight = chain(host, module, 8);
    let callbacks_per_filter = one.send(0, request(), reply()).expect("send").callbacks.len();
    per_request(&mut one, 200);
    per_request(&mut eight, 200);
    let t1 = per_request(&mut one, 3000);
    let t8 = per_request(&mut eight, 3000);
    let per_cb = (t8.saturating_sub(t1)) / (7 * callbacks_per_filter as u32);
    let vm_start = {
        let start = Instant::now();
        let n = 50;
        for _ in 0..n {
            drop(chain(host, module, 1));
        }
        start.elapsed() / n
    };
    println!(
        "meshwasm-host summary: {callbacks_per_filter} callbacks per filter per request; request through 1 filter {t1:?}, \
         through 8 filters {t8:?}; marginal cost per filter callback round trip {per_cb:?}; VM start (cached module) {vm_start:?}"
    );
}

fn benches(c: &mut Criterion) {
    let host = Host::new(HostOptions::default()).expect("host");
    let module = noop(&host);
    summary(&host, &module);
    let mut g = c.benchmark_group("request_through_noop_chain");
    for n in [1, 4, 8] {
        let mut proxy = chain(&host, &module, n);
        g.bench_function(format!("{n}_filters"), |b| {
            b.iter(|| proxy.send(0, request(), reply()).expect("send"))
        });
    }
    g.finish();
    c.bench_function("vm_start_cached_module", |b| b.iter(|| chain(&host, &module, 1)));
}

criterion_group! {
    name = host;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(host);
