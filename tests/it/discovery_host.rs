//! The discovery filter's real `.wasm` in the wasmtime host: each source against the real registry
//! (etcd, unbound) or its protocol fake, the poller election among workers, and registry trouble
//! keeping the last good set. Calls are forwarded to the real servers; virtual time drives ticks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use meshwasm_endpoints::{EndpointSet, set_key};
use meshwasm_host::{CallReply, Headers, Host, HostOptions, HttpCall, Plugin, Proxy, Upstream};
use meshwasm_tests::artifacts;
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::fakes::consul::{Consul, ConsulInstance};
use meshwasm_tests::fakes::eureka::{Eureka, EurekaInstance};
use meshwasm_tests::fakes::kubernetes::{Kubernetes, Slice, SliceEndpoint};
use meshwasm_tests::fakes::nacos::{Nacos, NacosInstance};
use meshwasm_tests::unbound::Unbound;

const VM: &str = "mesh";

fn proxy(workers: usize, config: &str, upstreams: Vec<(&str, Upstream)>) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    let mut b = Proxy::builder(&host)
        .workers(workers)
        .plugin(Plugin::new(module).name("discovery").vm_id(VM).config(config.as_bytes()));
    for (name, up) in upstreams {
        b = b.upstream(name, up);
    }
    b.build().unwrap()
}

fn published(p: &Proxy, service: &str) -> Option<EndpointSet> {
    p.shared_data(VM, &set_key(service)).map(|(b, _)| EndpointSet::decode(&b).unwrap())
}

fn addrs(set: &EndpointSet) -> Vec<String> {
    set.endpoints.iter().map(|e| e.address.to_string()).collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Advances in 100 ms steps until `f` holds (at most `limit` of virtual time).
fn advance_until(p: &mut Proxy, limit: Duration, mut f: impl FnMut(&Proxy) -> bool) -> bool {
    let mut t = Duration::ZERO;
    while t < limit {
        if f(p) {
            return true;
        }
        p.advance(Duration::from_millis(100));
        t += Duration::from_millis(100);
    }
    f(p)
}

#[test]
fn etcd_one_poller_follows_changes_and_survives_outage() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", r#"{"address":"10.0.0.1:8080","weight":3,"zone":"z1"}"#).unwrap();
    etcd.put("/services/api/b", "10.0.0.2:8080").unwrap();
    etcd.put("/services/other/x", "10.9.9.9:1").unwrap();
    let config = r#"{"tick":"100ms","lease":{"ttl":"2s"},"services":[
        {"name":"api","refresh":"1s","timeout":"1s","source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#;
    let mut p = proxy(3, config, vec![("etcd", Upstream::forward(etcd.addr()))]);

    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").is_some()));
    let set = published(&p, "api").unwrap();
    assert_eq!(addrs(&set), ["10.0.0.1:8080", "10.0.0.2:8080"]);
    assert_eq!((set.version, set.endpoints[0].weight, set.endpoints[0].zone.as_deref()), (1, 3, Some("z1")));

    // One poller for three workers: all calls from one worker, about one per refresh.
    p.advance(Duration::from_secs(5));
    let calls = p.calls();
    let workers: std::collections::BTreeSet<usize> = calls.iter().map(|c| c.worker).collect();
    assert_eq!(workers.len(), 1, "one worker polls: {workers:?}");
    assert!((5..=8).contains(&calls.len()), "about one poll per second, got {}", calls.len());
    assert_eq!(calls[0].headers.get(":path"), Some("/v3/kv/range"));
    assert_eq!(published(&p, "api").unwrap().version, 1, "no change, no new version");

    // A new instance and a removal in etcd.
    etcd.put("/services/api/c", r#"{"address":"10.0.0.3:8080"}"#).unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").unwrap().version == 2));
    assert_eq!(addrs(&published(&p, "api").unwrap()).len(), 3);
    etcd.delete("/services/api/a").unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").unwrap().version == 3));
    assert_eq!(addrs(&published(&p, "api").unwrap()), ["10.0.0.2:8080", "10.0.0.3:8080"]);

    // etcd down: the set stays, errors are counted and logged.
    etcd.stop();
    p.advance(Duration::from_secs(6));
    let set = published(&p, "api").unwrap();
    assert_eq!((set.version, addrs(&set).len()), (3, 2));
    assert!(p.metric("meshwasm_discovery.api.errors").unwrap_or(0) >= 2, "{:?}", p.metrics());
    assert!(p.logged("keeping the last 2 endpoints"));

    // Back up with a change: followed again.
    etcd.restart().unwrap();
    etcd.put("/services/api/d", "10.0.0.4:8080").unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(40), |p| published(p, "api").unwrap().version == 4));
    assert_eq!(addrs(&published(&p, "api").unwrap()).len(), 3);
    assert_eq!(p.metric("meshwasm_discovery.api.updates"), Some(4));
    assert_eq!(p.metric("meshwasm_discovery.api.endpoints"), Some(3));
}

#[test]
fn consul_blocking_queries_return_on_change() {
    let consul = Consul::start().unwrap();
    consul.set_instances(
        "redis",
        vec![
            ConsulInstance::new("n1", addr("10.1.0.1:6379")).weight(10).tag("primary"),
            ConsulInstance::new("n2", addr("10.1.0.2:6379")).node_address_only(),
            ConsulInstance::new("n3", addr("10.1.0.3:6379")).status("critical"),
        ],
    );
    let config = r#"{"tick":"100ms","services":[
        {"name":"redis","timeout":"2s","source":{"consul":{"cluster":"consul","wait":"3s"}}}]}"#;
    let mut p = proxy(2, config, vec![("consul", Upstream::forward(consul.addr()))]);
    assert!(advance_until(&mut p, Duration::from_secs(2), |p| published(p, "redis").is_some()));
    let set = published(&p, "redis").unwrap();
    assert_eq!(addrs(&set), ["10.1.0.1:6379", "10.1.0.2:6379"], "critical instance left out by ?passing");
    assert_eq!(
        (set.endpoints[0].weight, set.endpoints[0].tags.as_slice()),
        (10, &["primary".to_owned()][..])
    );

    // The next query blocks in the fake (the forwarded call holds real time) until a change.
    let index = consul.index();
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            consul.set_instances("redis", vec![ConsulInstance::new("n4", addr("10.1.0.4:6379"))]);
        });
        assert!(
            advance_until(&mut p, Duration::from_secs(2), |p| published(p, "redis").unwrap().version == 2)
        );
    });
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the blocked query returned on the change, before wait expired"
    );
    assert_eq!(addrs(&published(&p, "redis").unwrap()), ["10.1.0.4:6379"]);
    let blocking =
        consul.requests().into_iter().find(|r| r.param("index") == Some(&index.to_string())).unwrap();
    assert_eq!(blocking.param("wait"), Some("3000ms"));
    assert!(blocking.param("passing").is_some());
    assert!(p.calls().iter().all(|c| c.timeout > Duration::from_secs(3)
        || c.headers.get(":path").is_some_and(|p| !p.contains("index="))));

    // Consul garbage, then Consul gone: the last set stays.
    consul.fail(meshwasm_tests::fakes::server::Failure::Garbage("<html>maintenance</html>".into()));
    p.advance(Duration::from_secs(4));
    consul.recover();
    let mut consul = consul;
    consul.stop();
    p.advance(Duration::from_secs(6));
    assert_eq!(addrs(&published(&p, "redis").unwrap()), ["10.1.0.4:6379"]);
    assert!(p.metric("meshwasm_discovery.redis.errors").unwrap_or(0) >= 2);
}

#[test]
fn eureka_nacos_and_kubernetes_sources() {
    let eureka = Eureka::start("/eureka/v2").unwrap();
    eureka.set_instances(
        "orders",
        vec![
            EurekaInstance::up(addr("10.2.0.1:8080")).meta("zone", "a"),
            EurekaInstance::up(addr("10.2.0.2:8080")).status("DOWN"),
            EurekaInstance::up(addr("10.2.0.3:8080")).port_disabled(),
        ],
    );
    let nacos = Nacos::start().unwrap();
    nacos.set_instances(
        "billing",
        vec![
            NacosInstance::new(addr("10.3.0.1:9000")).weight(2.0),
            NacosInstance::new(addr("10.3.0.2:9000")).unhealthy(),
            NacosInstance::new(addr("10.3.0.3:9000")).disabled(),
            NacosInstance::new(addr("10.3.0.4:9000")),
        ],
    );
    let kube = Kubernetes::start().unwrap();
    kube.require_token("s3cr3t");
    kube.set_slices(
        "shop",
        "checkout",
        vec![
            Slice {
                endpoints: vec![
                    SliceEndpoint::ready("10.4.0.1".parse().unwrap()).zone("us-a"),
                    SliceEndpoint::not_ready("10.4.0.2".parse().unwrap()),
                ],
                ports: vec![("http".into(), 8080), ("metrics".into(), 9090)],
            },
            Slice {
                endpoints: vec![SliceEndpoint::ready("10.4.0.3".parse().unwrap())],
                ports: vec![("http".into(), 8080)],
            },
        ],
    );
    let config = r#"{"tick":"100ms","services":[
        {"name":"orders","source":{"eureka":{"cluster":"eureka","path_prefix":"/eureka/v2"}}},
        {"name":"billing","source":{"nacos":{"cluster":"nacos"}}},
        {"name":"checkout","source":{"kubernetes":{"cluster":"kube","namespace":"shop","port_name":"http",
            "headers":{"authorization":"Bearer s3cr3t"}}}}]}"#;
    let mut p = proxy(
        2,
        config,
        vec![
            ("eureka", Upstream::forward(eureka.addr())),
            ("nacos", Upstream::forward(nacos.addr())),
            ("kube", Upstream::forward(kube.addr())),
        ],
    );
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| ["orders", "billing", "checkout"]
        .iter()
        .all(|s| published(p, s).is_some())));
    let orders = published(&p, "orders").unwrap();
    assert_eq!(addrs(&orders), ["10.2.0.1:8080"], "single-instance object form, status and enabled ports");
    assert_eq!(orders.endpoints[0].zone.as_deref(), Some("a"));
    let billing = published(&p, "billing").unwrap();
    assert_eq!(addrs(&billing), ["10.3.0.1:9000", "10.3.0.4:9000"]);
    assert_eq!((billing.endpoints[0].weight, billing.endpoints[1].weight), (200, 100));
    let checkout = published(&p, "checkout").unwrap();
    assert_eq!(addrs(&checkout), ["10.4.0.1:8080", "10.4.0.3:8080"]);
    assert_eq!(checkout.endpoints[0].zone.as_deref(), Some("us-a"));
    assert!(eureka.requests().iter().all(|r| r.header("accept") == Some("application/json")));

    // Changes are followed (default refresh 5 s); the list form with several instances too.
    eureka.set_instances(
        "orders",
        vec![EurekaInstance::up(addr("10.2.0.1:8080")), EurekaInstance::up(addr("10.2.0.9:8080"))],
    );
    eureka.single_as_object(false);
    assert!(advance_until(&mut p, Duration::from_secs(7), |p| published(p, "orders").unwrap().version == 2));
    assert_eq!(addrs(&published(&p, "orders").unwrap()), ["10.2.0.1:8080", "10.2.0.9:8080"]);

    // Garbage and errors from each registry keep each service's last set.
    use meshwasm_tests::fakes::server::Failure;
    eureka.fail(Failure::Garbage("{\"applications\":".into()));
    nacos.fail(Failure::Status(500));
    kube.fail(Failure::Garbage("<html>".into()));
    p.advance(Duration::from_secs(12));
    for (s, n) in [("orders", 2), ("billing", 2), ("checkout", 2)] {
        assert_eq!(addrs(&published(&p, s).unwrap()).len(), n, "{s}");
        assert!(p.metric(&format!("meshwasm_discovery.{s}.errors")).unwrap_or(0) >= 1, "{s}");
    }
}

/// Forwards DoH calls to unbound over cleartext HTTP/2 (prior knowledge), as Envoy's
/// `http2_protocol_options` cluster would.
fn h2c_upstream(target: SocketAddr) -> Upstream {
    let rt =
        Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    Upstream::handler(move |call: &HttpCall| {
        let path = call.headers.get(":path").unwrap_or("/").to_owned();
        let method = call.headers.get(":method").unwrap_or("GET").to_owned();
        let mut req = hyper::Request::builder().method(method.as_str()).uri(format!("http://{target}{path}"));
        for (k, v) in call.headers.iter() {
            if !k.starts_with(b":") {
                req = req.header(k, v);
            }
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(call.body.clone()))).unwrap();
        let client = client.clone();
        let result = rt.block_on(async move {
            use http_body_util::BodyExt;
            let resp = client.request(req).await?;
            let status = resp.status().as_u16();
            let mut headers = Headers::new();
            for (k, v) in resp.headers() {
                headers.add(k.as_str(), v.as_bytes());
            }
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, headers, body))
        });
        match result {
            Ok((status, headers, body)) => CallReply::response(status, headers, body),
            Err(_) => CallReply::failure(),
        }
    })
}

#[test]
fn doh_srv_and_a_through_real_unbound() {
    let dns = Unbound::start(
        "svc.test.",
        &[
            "_http._tcp.api.svc.test. 30 IN SRV 10 5 8080 node1.svc.test.",
            "_http._tcp.api.svc.test. 30 IN SRV 20 5 8081 backup.svc.test.",
            "node1.svc.test. 30 IN A 127.0.0.11",
            "backup.svc.test. 30 IN A 127.0.0.99",
            "web.svc.test. 5 IN A 127.0.0.21",
            "web.svc.test. 5 IN A 127.0.0.22",
        ],
    )
    .unwrap();
    let config = r#"{"tick":"100ms","services":[
        {"name":"api","allow_loopback":true,"source":{"dns":{"cluster":"doh","name":"_http._tcp.api.svc.test","type":"SRV"}}},
        {"name":"web","allow_loopback":true,"source":{"dns":{"cluster":"doh","name":"web.svc.test","type":"A","port":9000,"method":"POST"}}}]}"#;
    let mut p = proxy(2, config, vec![("doh", h2c_upstream(dns.addr()))]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").is_some()
        && published(p, "web").is_some()));
    let api = published(&p, "api").unwrap();
    assert_eq!(
        addrs(&api),
        ["127.0.0.11:8080"],
        "lowest SRV priority only, target resolved by a follow-up A query"
    );
    assert_eq!(api.endpoints[0].weight, 5);
    assert_eq!(addrs(&published(&p, "web").unwrap()), ["127.0.0.21:9000", "127.0.0.22:9000"]);
    let paths: Vec<String> =
        p.calls().iter().filter_map(|c| c.headers.get(":path").map(str::to_owned)).collect();
    assert!(paths.iter().any(|p| p.starts_with("/dns-query?dns=")), "GET with ?dns=");
    assert!(p.calls().iter().any(|c| c.headers.get(":method") == Some("POST")
        && c.headers.get("content-type") == Some("application/dns-message")));

    // TTL-driven refresh: web (TTL 5 s) sees a new address within about 5 s; api (TTL 30 s) only later.
    dns.add_record("web.svc.test. 5 IN A 127.0.0.23").unwrap();
    dns.add_record("_http._tcp.api.svc.test. 30 IN SRV 10 5 8080 node2.svc.test.").unwrap();
    dns.add_record("node2.svc.test. 30 IN A 127.0.0.12").unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(7), |p| published(p, "web").unwrap().version == 2));
    assert_eq!(published(&p, "api").unwrap().version, 1, "api's TTL of 30 s has not run out");
    assert!(advance_until(&mut p, Duration::from_secs(30), |p| published(p, "api").unwrap().version == 2));
    assert_eq!(addrs(&published(&p, "api").unwrap()), ["127.0.0.11:8080", "127.0.0.12:8080"]);

    // DNS down: sets stay.
    dns.stop();
    p.advance(Duration::from_secs(40));
    assert_eq!(published(&p, "api").unwrap().version, 2);
    assert!(p.metric("meshwasm_discovery.api.errors").unwrap_or(0) >= 1);
}

#[test]
fn garbage_failures_timeouts_and_empty_answers_keep_the_last_set() {
    // A scripted etcd gateway whose behaviour the test switches.
    let mode = Arc::new(AtomicUsize::new(0));
    let m = mode.clone();
    let good =
        r#"{"header":{"revision":"7"},"kvs":[{"key":"L3MvYS94","value":"MTAuMC4wLjE6ODA="}],"count":"1"}"#;
    let empty = r#"{"header":{"revision":"8"},"count":"0"}"#;
    let upstream = Upstream::handler(move |_call: &HttpCall| match m.load(Ordering::SeqCst) {
        0 => CallReply::response(200, [("content-type", "application/json")], good),
        1 => CallReply::response(200, [("content-type", "text/html")], "<html>oops</html>"),
        2 => CallReply::failure(),
        3 => CallReply::no_answer(),
        4 => CallReply::response(503, Headers::new(), "upstream connect error"),
        _ => CallReply::response(200, [("content-type", "application/json")], empty),
    });
    let config = r#"{"tick":"100ms","services":[
        {"name":"strict","refresh":"1s","timeout":"1s","max_retry":"1s","source":{"etcd":{"cluster":"reg","prefix":"/s/a/"}}},
        {"name":"lenient","refresh":"1s","timeout":"1s","max_retry":"1s","allow_empty":true,
         "source":{"etcd":{"cluster":"reg","prefix":"/s/a/"}}}]}"#;
    let mut p = proxy(2, config, vec![("reg", upstream)]);
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "strict").is_some()
        && published(p, "lenient").is_some()));
    for (m, what) in [(1, "garbage"), (2, "reset"), (3, "timeout"), (4, "503")] {
        mode.store(m, Ordering::SeqCst);
        let errors = p.metric("meshwasm_discovery.strict.errors").unwrap_or(0);
        p.advance(Duration::from_secs(5));
        assert!(
            p.metric("meshwasm_discovery.strict.errors").unwrap_or(0) > errors,
            "{what} counted as an error"
        );
        for s in ["strict", "lenient"] {
            let set = published(&p, s).unwrap();
            assert_eq!((set.version, addrs(&set)), (1, vec!["10.0.0.1:80".to_owned()]), "{s} after {what}");
        }
    }
    // An explicitly empty answer: honoured only with allow_empty.
    mode.store(5, Ordering::SeqCst);
    p.advance(Duration::from_secs(5));
    assert_eq!(addrs(&published(&p, "strict").unwrap()).len(), 1);
    assert!(p.metric("meshwasm_discovery.strict.empty_rejected").unwrap_or(0) >= 1);
    let lenient = published(&p, "lenient").unwrap();
    assert_eq!((lenient.version, lenient.endpoints.len()), (2, 0));
}

#[test]
fn bad_configuration_is_rejected_naming_the_field() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    let err =
        Proxy::builder(&host)
            .plugin(Plugin::new(module).name("discovery").vm_id(VM).config(
                br#"{"services":[{"name":"api","source":{"etcd":{"cluster":"etcd","prefx":"/x/"}}}]}"#,
            ))
            .build()
            .err()
            .expect("rejected");
    assert!(err.to_string().contains("prefx"), "{err}");
}

#[test]
fn balancer_in_the_same_vm_id_follows_discovered_endpoints() {
    let etcd = Etcd::start().unwrap();
    etcd.put("/services/api/a", "10.5.0.1:80").unwrap();
    etcd.put("/services/api/b", "10.5.0.2:80").unwrap();
    let host = Host::new(HostOptions::default()).unwrap();
    let discovery = host.load(artifacts::wasm_path("meshwasm_discovery")).unwrap();
    let balancer = host.load(artifacts::wasm_path("meshwasm_balancer")).unwrap();
    let mut p = Proxy::builder(&host)
        .workers(2)
        .plugin(Plugin::new(discovery).name("discovery").vm_id(VM).config(
            br#"{"tick":"100ms","services":[{"name":"api","refresh":"500ms",
                "source":{"etcd":{"cluster":"etcd","prefix":"/services/api/"}}}]}"#,
        ))
        .plugin(
            Plugin::new(balancer)
                .name("balancer")
                .vm_id(VM)
                // Steered by header so the test can read the pick; the service named by a header.
                .config(
                    br#"{"steering":"header","service_from":[{"header":"x-meshwasm-service"}],
                        "services":{"api":{"algorithm":"round_robin"}}}"#,
                ),
        )
        .upstream("etcd", Upstream::forward(etcd.addr()))
        .build()
        .unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").is_some()));
    // Give the balancers' refresh (notification or slow tick) a moment.
    p.advance(Duration::from_secs(2));
    let picks = |p: &mut Proxy, n: usize| -> std::collections::BTreeMap<String, usize> {
        let mut seen = std::collections::BTreeMap::new();
        for i in 0..n {
            let req = meshwasm_host::Request::get("/").header("x-meshwasm-service", "api");
            let ex = p.send(i % 2, req, meshwasm_host::UpstreamReply::new(200)).unwrap();
            let up = ex.upstream_request.expect("forwarded upstream");
            let picked = up.headers.get("x-meshwasm-endpoint").expect("endpoint header").to_owned();
            *seen.entry(picked).or_default() += 1;
        }
        seen
    };
    let seen = picks(&mut p, 20);
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), ["10.5.0.1:80", "10.5.0.2:80"], "{seen:?}");
    // A new instance in etcd receives traffic on both workers after the next poll.
    etcd.put("/services/api/c", "10.5.0.3:80").unwrap();
    assert!(advance_until(&mut p, Duration::from_secs(3), |p| published(p, "api").unwrap().version == 2));
    p.advance(Duration::from_secs(2));
    let seen = picks(&mut p, 30);
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The balancer VMs subscribed; the new set was announced on their queues.
    let line =
        p.logs().into_iter().map(|l| l.message).find(|m| m.contains("version 2,")).expect("publish log");
    assert!(line.contains("subscribers notified") && !line.contains(" 0 subscribers"), "{line}");
}
