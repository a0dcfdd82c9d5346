//! Measures on real Envoy how many root contexts run a plugin's VM-level callbacks, a fact the
//! wasmtime host must reproduce: with `--concurrency N`, on_vm_start and on_configure run N + 2 times
//! (a configuration-check VM, the main thread's VM and one per worker) and a tick period set in
//! on_configure makes on_tick run on N + 1 root contexts (the main thread's and each worker's).

use std::time::Duration;

use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::Backend;
use meshwasm_tests::envoy::{Cluster, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::process::wait_until;

fn count(logs: &str, cb: &str) -> usize {
    let needle = format!("\"cb\":\"{cb}\"");
    logs.lines().filter(|l| l.contains("meshwasm-probe-root ") && l.contains(&needle)).count()
}

#[test]
fn root_callbacks_run_on_main_thread_and_every_worker() {
    let backend = Backend::start("a").unwrap();
    // One tick per root context: the tick turns the timer off again.
    let script = r#"{"name":"t","configure":{"ops":[{"op":"set_tick_period","ms":50}]},
                     "tick":{"ops":[{"op":"set_tick_period","ms":0}]}}"#;
    for workers in [1u32, 2] {
        let envoy = EnvoyConfig::new()
            .concurrency(workers)
            .listener(
                Listener::new("main", "a")
                    .wasm(WasmFilter::new("t", wasm_path("meshwasm_probe")).config(script)),
            )
            .cluster(Cluster::static_hosts("a", &[backend.addr()]))
            .start()
            .unwrap();
        let expected_ticks = workers as usize + 1;
        assert!(
            wait_until(Duration::from_secs(10), || count(&envoy.logs(), "tick") >= expected_ticks),
            "expected {expected_ticks} ticking root contexts with --concurrency {workers}"
        );
        // Give a wrong extra tick time to show up before counting exactly.
        std::thread::sleep(Duration::from_millis(300));
        let logs = envoy.logs();
        assert_eq!(count(&logs, "tick"), expected_ticks, "ticking root contexts, --concurrency {workers}");
        assert_eq!(
            count(&logs, "configure"),
            workers as usize + 2,
            "on_configure runs, --concurrency {workers}"
        );
        assert_eq!(
            count(&logs, "vm_start"),
            workers as usize + 2,
            "on_vm_start runs, --concurrency {workers}"
        );
    }
}
