//! `make demo` works as a new user runs it: the demo binary checks each step of its transcript and exits
//! non-zero when the mesh misbehaves, so running it is the test. The transcript is checked here too, so
//! that a demo that silently skipped a step would fail.

use std::process::Command;
use std::sync::Mutex;

/// One demo at a time: each starts six Envoys, and three demos side by side on a small machine make
/// each other's start-up slow.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn run_demo(registry: &str) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_meshwasm-demo"))
        .args(["--registry", registry])
        .output()
        .expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo with the {registry} registry failed\n{stdout}\n{stderr}");
    for expected in [
        // 1. refused at orders' inbound
        "plaintext HTTP             -> refused",
        "TLS, no client certificate -> refused",
        // 2. frontend -> orders, round robin, token injected
        "-> 200 from orders-1  (token's client_id: frontend)",
        "-> 200 from orders-2  (token's client_id: frontend)",
        "-> 200 from orders-3  (token's client_id: frontend)",
        "orders' authz allowed 6 requests from spiffe://cluster.local/ns/shop/sa/frontend",
        // 3. another identity
        "-> 403  (access denied)",
        // 4. wrong audience
        "payments token -> GET on orders-1 -> 401  www-authenticate: Bearer realm=\"orders\"",
        // 5. ejection, 6. the new instance
        "frontend's balancer ejected orders-2",
        "-> 200 from orders-4",
        // 7. an impostor registered as orders
        "frontend's sidecar refused the impostor's certificate: ssl.fail_verify_san = 1; the impostor's app got 0 requests",
        "Done in",
    ] {
        assert!(stdout.contains(expected), "demo transcript lacks `{expected}`:\n{stdout}");
    }
}

#[test]
fn demo_with_the_default_file_registry() {
    run_demo("file");
}

#[test]
fn demo_with_etcd() {
    run_demo("etcd");
}

#[test]
fn demo_with_dns() {
    run_demo("dns");
}
