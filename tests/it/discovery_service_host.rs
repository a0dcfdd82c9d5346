//! Discovery as a singleton Wasm service in the wasmtime host (`ProxyBuilder::service`, `"mode":
//! "service"`), the balancer as the only filter, one `vm_id`: the one discovery VM (main thread) polls
//! real etcd, the balancer's VMs on both workers steer by what it publishes, and requests never enter
//! the discovery VM (exact wasm entry counts), where the filter form pays a few entries per request.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshwasm_host::{BuildError, Host, HostOptions, Module, Plugin, Proxy, Upstream};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::process::{http_request, wait_until};

use crate::balancer_discovery_host::{advance_until, picks, set};

const VM: &str = "meshwasm";
const BALANCER: &[u8] = br#"{"seed": 5, "services": {"api": {}}}"#;

fn discovery_config(mode: &str) -> String {
    format!(
        r#"{{"mode": "{mode}", "tick": "100ms", "services": [{{"name": "api", "refresh": "300ms", "timeout": "1s",
             "source": {{"etcd": {{"cluster": "etcd", "prefix": "/services/api/"}}}}}}]}}"#
    )
}

fn modules(host: &Host) -> (Module, Module) {
    (host.load(wasm_path("meshwasm_discovery")).unwrap(), host.load(wasm_path("meshwasm_balancer")).unwrap())
}

/// Wasm entries of VM `name` per request over 100 requests on each worker, without time passing.
fn entries_per_request(p: &mut Proxy, name: &str) -> f64 {
    p.reset_call_counts();
    assert_eq!(picks(p, 100).len(), 2);
    let counts = p.call_counts();
    counts.get(name).map_or(0, |c| c.total_callbacks()) as f64 / 200.0
}

#[test]
fn a_singleton_service_feeds_the_balancer_and_is_entered_zero_times_per_request() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", "10.0.0.1:8080").unwrap();
    etcd.put("/services/api/b", "10.0.0.2:8080").unwrap();

    let host = Host::new(HostOptions::default()).unwrap();
    let (discovery, balancer) = modules(&host);
    let mut p = Proxy::builder(&host)
        .workers(2)
        .service(
            Plugin::new(discovery.clone()).name("discovery").vm_id(VM).config(discovery_config("service")),
        )
        .plugin(Plugin::new(balancer.clone()).name("balancer").vm_id(VM).config(BALANCER))
        .upstream("etcd", Upstream::forward(etcd.addr()))
        .build()
        .unwrap();

    let first = set(&["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| picks(p, 4) == first));

    // One discovery VM: the main thread's, the poller from its first tick, no lease in shared data.
    let logs = p.logs();
    let configured = logs.iter().filter(|l| l.message.contains("as a singleton service (no lease)")).count();
    assert_eq!(configured, 1);
    let polling: Vec<_> = logs.iter().filter(|l| l.message.contains("is now the poller")).collect();
    assert_eq!(polling.len(), 1);
    assert_eq!(polling[0].worker, 2, "the main thread is worker index N");
    assert!(p.shared_data_keys(VM).iter().all(|k| !k.contains(".lease.")), "{:?}", p.shared_data_keys(VM));

    // Zero discovery entries per request; it still runs on the clock (ticks, http calls).
    let service_form = entries_per_request(&mut p, "discovery");
    assert_eq!(service_form, 0.0, "{:#?}", p.call_counts().get("discovery"));
    assert!(entries_per_request(&mut p, "balancer") > 0.0);
    p.reset_call_counts();
    p.advance(Duration::from_secs(1));
    let ticking = p.call_counts().remove("discovery").unwrap();
    assert!(ticking.callbacks.get("proxy_on_tick").copied().unwrap_or(0) >= 9, "{ticking:#?}");
    assert!(ticking.callbacks.get("proxy_on_http_call_response").copied().unwrap_or(0) >= 2, "{ticking:#?}");

    // A registry change reaches the picks on both workers.
    etcd.put("/services/api/c", r#"{"address": "10.0.0.3:8080"}"#).unwrap();
    etcd.delete("/services/api/a").unwrap();
    let changed = set(&["10.0.0.2:8080", "10.0.0.3:8080"]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| picks(p, 6) == changed));

    // The filter form of the same configuration: discovery is entered on every request.
    let mut f = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(discovery).name("discovery").vm_id(VM).config(discovery_config("filter")))
        .plugin(Plugin::new(balancer).name("balancer").vm_id(VM).config(BALANCER))
        .upstream("etcd", Upstream::forward(etcd.addr()))
        .build()
        .unwrap();
    assert!(advance_until(&mut f, Duration::from_secs(3), |p| picks(p, 6) == changed));
    let filter_form = entries_per_request(&mut f, "discovery");
    eprintln!("discovery wasm entries per request: service form {service_form}, filter form {filter_form}");
    assert!(filter_form >= 1.0, "{filter_form}");
}

#[test]
fn bad_service_set_ups_are_refused_with_the_reason() {
    let host = Host::new(HostOptions::default()).unwrap();
    let (discovery, balancer) = modules(&host);
    let svc = |config: &str| Plugin::new(discovery.clone()).name("discovery").vm_id(VM).config(config);
    let good = r#"{"mode": "service", "services": [{"name": "api", "allow_loopback": true,
        "source": {"static": {"endpoints": [{"address": "127.0.0.1:9"}]}}}]}"#;
    let build_err = |b: meshwasm_host::ProxyBuilder| match b.build() {
        Ok(_) => panic!("built"),
        Err(e) => {
            e.downcast_ref::<BuildError>().map(|b| b.message.clone()).unwrap_or_else(|| format!("{e:#}"))
        }
    };

    // The service's configuration is checked like a filter's: refused at start, naming the field.
    let with_lease = good.replace(r#""mode": "service","#, r#""mode": "service", "lease": {"ttl": "5s"},"#);
    let e = build_err(Proxy::builder(&host).service(svc(&with_lease)));
    assert!(e.contains("plugin `discovery`") && e.contains("rejected configuration: lease"), "{e}");

    // Two services under one name cannot be told apart in logs and counts.
    let e = build_err(Proxy::builder(&host).service(svc(good)).service(svc(good)));
    assert!(e.contains("two services are named `discovery`"), "{e}");

    // Real-time drivers have no main thread to run a service on.
    let Err(e) = Proxy::builder(&host)
        .service(svc(good))
        .plugin(Plugin::new(balancer).name("balancer").vm_id(VM).config(BALANCER))
        .build_workers()
    else {
        panic!("build_workers accepted a service")
    };
    assert!(format!("{e:#}").contains("build_workers runs no main thread"), "{e:#}");

    // A service alone makes a proxy: it publishes on its first tick.
    let mut p = Proxy::builder(&host).service(svc(good)).build().unwrap();
    assert!(p.shared_data(VM, &meshwasm_endpoints::set_key("api")).is_none());
    p.advance(Duration::from_millis(500));
    let (bytes, _) = p.shared_data(VM, &meshwasm_endpoints::set_key("api")).expect("published");
    let set = meshwasm_endpoints::EndpointSet::decode(&bytes).unwrap();
    assert_eq!(set.endpoints[0].address.to_string(), "127.0.0.1:9");
}

/// `meshwasm-host serve` (next to this test binary; alone: `cargo build -p meshwasm-host`) on `config`,
/// killed on drop; its stderr is collected.
struct Serve {
    child: std::process::Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    fn start(config: &Path) -> Serve {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("meshwasm-host");
        assert!(bin.exists(), "{} is missing: build it with `cargo build -p meshwasm-host`", bin.display());
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Serve { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The address of the listener named `name`, from serve's start-up line.
    fn listener(&self, name: &str) -> SocketAddr {
        let prefix = format!("meshwasm-host serve: listener `{name}` on http://");
        let mut found = None;
        wait_until(Duration::from_secs(30), || {
            found = self
                .log()
                .lines()
                .find_map(|l| l.strip_prefix(&prefix)?.split_whitespace().next()?.parse().ok());
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("serve did not start:\n{}", self.log()))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_runs_discovery_as_a_singleton_service_on_its_main_thread() {
    let backends = Backend::start_many("v", 3).unwrap();
    let etcd = Etcd::start().unwrap();
    let register =
        |b: &Backend| etcd.put(&format!("/services/api/{}", b.addr()), &b.addr().to_string()).unwrap();
    register(&backends[0]);
    register(&backends[1]);
    let dir = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "workers": 2,
        "services": [{"name": "discovery", "wasm": wasm_path("meshwasm_discovery"), "vm_id": VM,
            "config": {"mode": "service", "tick": "100ms", "services": [{"name": "api", "refresh": "200ms",
                "timeout": "1s", "allow_loopback": true,
                "source": {"etcd": {"cluster": "etcd", "prefix": "/services/api/"}}}]}}],
        "listeners": [{"name": "main", "address": "127.0.0.1:0",
            "filters": [{"name": "balancer", "wasm": wasm_path("meshwasm_balancer"), "vm_id": VM,
                "config": {"service_from": [{"fixed": "api"}], "refresh_interval": "500ms", "services": {"api": {}}}}],
            "route": {"cluster": "picked"}}],
        "clusters": [{"name": "picked", "type": "original_dst"},
                     {"name": "etcd", "type": "static", "endpoints": [etcd.addr().to_string()]}]
    });
    let path = dir.path().join("serve.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let serve = Serve::start(&path);
    let addr = serve.listener("main");
    let instances = |n: usize| -> BTreeSet<String> {
        (0..n)
            .filter_map(|_| http_request(addr, "GET", "/", &[], b"", Duration::from_secs(5)).ok())
            .filter(|r| r.status == 200)
            .filter_map(|r| r.header(INSTANCE_HEADER).map(str::to_owned))
            .collect()
    };
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert!(
        wait_until(Duration::from_secs(10), || instances(8) == names(&["v-0", "v-1"])),
        "the etcd instances never both got traffic:\n{}",
        serve.log()
    );
    register(&backends[2]);
    assert!(
        wait_until(Duration::from_secs(10), || instances(12).contains("v-2")),
        "the new instance never got traffic:\n{}",
        serve.log()
    );
    // One discovery VM, on the main thread (worker index N = 2), polling through serve's cluster.
    let log = serve.log();
    let configured: Vec<&str> =
        log.lines().filter(|l| l.contains("as a singleton service (no lease)")).collect();
    assert_eq!(configured.len(), 1, "{log}");
    assert!(configured[0].contains("[worker 2]"), "{log}");
    assert!(!log.contains("loaded as an HTTP filter"), "{log}");
}
