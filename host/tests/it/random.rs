//! WASI `random_get`: the OS CSPRNG by default, a seeded generator only when a test asks for it.

use crate::common::*;
use meshwasm_host::{Host, HostOptions, Plugin, Proxy, RandomSource, Request, UpstreamReply};

const RANDOM_IMPORT: &str =
    r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))"#;

/// The first 8 bytes a fresh VM of `host` draws from `random_get`, on worker `worker`.
fn first_random_bytes(host: &Host, workers: usize, worker: usize) -> u64 {
    let body = r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "status") (call $random (i32.const 700) (i32.const 8)))
        (call $report (str "lo") (i32.load (i32.const 700)))
        (call $report (str "hi") (i32.load (i32.const 704)))
        (i32.const 0))
    "#;
    // Imports must come first in a module: splice the WASI import before the common ones.
    let wat = guest(body).replacen("(module\n", &format!("(module\n{RANDOM_IMPORT}\n"), 1);
    let module = host.load_bytes("random", wat.as_bytes()).unwrap();
    let mut proxy =
        Proxy::builder(host).workers(workers).plugin(Plugin::new(module).name("random")).build().unwrap();
    let ex = proxy.send(worker, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.error);
    assert_eq!(proxy.metric("status"), Some(0), "random_get succeeds");
    let word = |n: &str| proxy.metric(n).unwrap() & 0xffff_ffff;
    word("hi") << 32 | word("lo")
}

#[test]
fn the_default_source_is_the_os_csprng() {
    assert_eq!(HostOptions::default().random, RandomSource::Os);
    // Two hosts (as two processes would be) draw different bytes; a seeded generator would repeat them.
    let a = first_random_bytes(&host(), 1, 0);
    let b = first_random_bytes(&host(), 1, 0);
    assert_ne!(a, b, "two VMs drew the same random bytes");
}

#[test]
fn a_seeded_source_repeats_per_seed_and_differs_per_worker() {
    let seeded = |seed| Host::new(HostOptions { random: RandomSource::Seeded(seed), ..Default::default() });
    let a = first_random_bytes(&seeded(7).unwrap(), 2, 0);
    assert_eq!(a, first_random_bytes(&seeded(7).unwrap(), 2, 0), "same seed, same bytes");
    assert_ne!(a, first_random_bytes(&seeded(8).unwrap(), 2, 0), "another seed, other bytes");
    assert_ne!(a, first_random_bytes(&seeded(7).unwrap(), 2, 1), "each worker has its own stream");
}
