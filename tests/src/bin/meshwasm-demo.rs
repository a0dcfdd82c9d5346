//! `make demo`: a mesh of Envoy sidecars running the meshwasm filters, in one command.
//!
//! Two services, `frontend` and `orders` (three instances, a fourth started but not yet registered),
//! each instance with its own real Envoy sidecar, and every workload with an X.509 SVID (URI SAN
//! `spiffe://cluster.local/ns/shop/sa/<sa>`) from a CA made at start:
//!
//! - each orders sidecar's inbound listener requires mTLS, then runs `authz` (only frontend's SPIFFE ID
//!   may call) and `jwt-auth` (a token from the OpenID Provider, for orders' audience);
//! - frontend's sidecar's outbound listener runs `token-injector` (client credentials from the OpenID
//!   Provider) and `balancer` (round robin, passive health), steering an ORIGINAL_DST cluster whose
//!   upstream TLS presents frontend's SVID and accepts only orders' SPIFFE ID; `discovery` (orders'
//!   instances from a registry) runs in that sidecar as a singleton Wasm service (`envoy.bootstrap.wasm`,
//!   one VM on the main thread, never in a request's path) and publishes for the balancer.
//!
//! The demo plays frontend's app (plain HTTP to its sidecar on loopback) and the callers without a
//! sidecar (curl), and shows and checks each step:
//!
//! 1. a plaintext client, and a TLS client without a certificate, are refused at orders' inbound;
//! 2. frontend → orders works over mTLS with an injected token, round robin over the three instances;
//! 3. a workload with another identity (`sa/rogue`, same CA, valid token) gets 403 from authz;
//! 4. frontend's identity with a token for another audience gets 401 from jwt-auth;
//! 5. a killed instance is ejected;
//! 6. a newly registered instance gets traffic;
//! 7. a workload with another identity that registers itself as orders is refused by frontend's
//!    sidecar (the callee's SPIFFE ID is checked) and ejected.
//!
//! The registry is a JSON file served over HTTP (default), real etcd (`--registry etcd`) or real
//! unbound serving SRV records over DNS-over-HTTPS (`--registry dns`). The demo exits non-zero when the
//! mesh does not behave as shown. Everything it started is stopped on exit.

#[path = "../demo/mesh.rs"]
mod mesh;
#[path = "../demo/registry.rs"]
mod registry;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Envoy, EnvoyConfig};
use meshwasm_tests::oidc::OidcProvider;
use meshwasm_tests::process::{HttpResponse, http_request, wait_until};

use mesh::{
    Caller, FRONTEND_CLIENT, Identities, ORDERS_AUDIENCE, ORDERS_HOST, PAYMENTS_AUDIENCE, curl,
    frontend_sidecar, impostor_sidecar, orders_sidecar, spiffe_id,
};
use registry::{Registry, RegistryKind};

/// Instances registered at start; one more is started and registered in step 6.
const INITIAL: usize = 3;
const USAGE: &str = "usage: meshwasm-demo [--registry file|etcd|dns]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmeshwasm demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<RegistryKind> {
    let mut kind = std::env::var("MESHWASM_DEMO_REGISTRY").unwrap_or_else(|_| "file".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--registry" => kind = args.next().context("--registry needs a value: file, etcd or dns")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` ({USAGE})"),
        }
    }
    RegistryKind::parse(&kind)
}

/// One orders instance: its app and its sidecar.
struct Instance {
    name: String,
    app: Backend,
    sidecar: Envoy,
}

impl Instance {
    fn inbound(&self) -> SocketAddr {
        self.sidecar.listener_addr("inbound")
    }
}

struct Mesh {
    ids: Identities,
    idp: OidcProvider,
    registry: Registry,
    frontend: Envoy,
    orders: Vec<Instance>,
    /// A workload with rogue's SVID that registers itself as orders (step 7).
    impostor: Instance,
}

/// Starts the Envoys in parallel (each loads and compiles its wasm modules on start-up).
fn start_all(mut configs: Vec<EnvoyConfig>) -> Result<Vec<Envoy>> {
    // Six Envoys compiling their wasm modules at once on a small, busy machine (`make test`) can take
    // longer than the harness's 30 s.
    for c in &mut configs {
        c.start_timeout = Duration::from_secs(90);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = configs.iter().map(|c| s.spawn(move || c.start())).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an Envoy start-up thread panicked"))))
            .collect()
    })
}

fn start(kind: RegistryKind) -> Result<Mesh> {
    // The certificates (openssl), the OpenID Provider (node) and the registry are made side by side.
    let (ids, idp, registry) = std::thread::scope(|s| {
        let ids = s.spawn(|| Identities::issue(INITIAL + 1));
        let idp = s.spawn(|| OidcProvider::start(mesh::oidc_options()));
        let registry = Registry::start(kind);
        let idp = idp.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the OpenID Provider thread panicked")));
        let ids = ids.join().map_err(|_| anyhow::anyhow!("making the certificates failed (openssl)"));
        (ids, idp, registry)
    });
    let ids = ids?;
    let idp = idp.context("starting the OpenID Provider (oidc-provider)")?;
    let registry = registry?;

    let names: Vec<String> = (1..=INITIAL + 1).map(|i| format!("orders-{i}")).collect();
    let apps = names.iter().map(|n| Backend::start(n)).collect::<Result<Vec<_>>>()?;
    let ca = ids.ca();
    let mut configs = vec![frontend_sidecar(&ids.frontend, &ca, idp.addr(), &registry)];
    for ((name, app), svid) in names.iter().zip(&apps).zip(&ids.orders) {
        configs.push(orders_sidecar(name, svid, &ca, app.addr(), idp.addr(), idp.issuer()));
    }
    let impostor_app = Backend::start("impostor")?;
    configs.push(impostor_sidecar(&ids.rogue, &ca, impostor_app.addr()));
    let mut envoys = start_all(configs).context("starting the Envoy sidecars")?;
    let impostor = Instance {
        name: "impostor".into(),
        app: impostor_app,
        sidecar: envoys.pop().context("the impostor's sidecar")?,
    };
    let mut envoys = envoys.into_iter();
    let frontend = envoys.next().context("frontend's sidecar")?;
    let orders = names
        .into_iter()
        .zip(apps)
        .zip(envoys)
        .map(|((name, app), sidecar)| Instance { name, app, sidecar })
        .collect();
    Ok(Mesh { ids, idp, registry, frontend, orders, impostor })
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

/// frontend's app calls orders through its sidecar: plain HTTP on loopback, `Host: orders.shop.svc`.
fn call_orders(m: &Mesh) -> Result<HttpResponse> {
    http_request(
        m.frontend.listener_addr("outbound"),
        "GET",
        "/orders",
        &[("host", ORDERS_HOST)],
        b"",
        Duration::from_secs(5),
    )
}

/// The client id the orders app saw (jwt-auth's `x-client-id` from the verified token).
fn client_id_seen(r: &HttpResponse) -> Option<String> {
    let echo = r.json().ok()?;
    echo["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == "x-client-id")
        .and_then(|h| h[1].as_str())
        .map(str::to_owned)
}

/// Calls orders through frontend's sidecar and prints the transcript line; returns the answering
/// instance (200 only), after checking that the app saw frontend's client id and no token.
fn show(m: &Mesh) -> Result<Option<String>> {
    let r = call_orders(m)?;
    let who = r.header(INSTANCE_HEADER).map(str::to_owned);
    match (&who, r.status) {
        (Some(w), 200) => {
            let client = client_id_seen(&r);
            println!(
                "   frontend -> GET http://{ORDERS_HOST}/orders -> 200 from {w}  (token's client_id: {})",
                client.as_deref().unwrap_or("none")
            );
            ensure!(
                client.as_deref() == Some(FRONTEND_CLIENT.id),
                "{w} did not see frontend's token (client_id {client:?})"
            );
            let echo = r.json()?;
            let leaked = echo["headers"].as_array().into_iter().flatten().any(|h| h[0] == "authorization");
            ensure!(!leaked, "the token reached {w}'s app (jwt-auth should have removed it)");
            Ok(Some(w.clone()))
        }
        _ => {
            println!("   frontend -> GET http://{ORDERS_HOST}/orders -> {}  ({})", r.status, r.text().trim());
            Ok(None)
        }
    }
}

fn quiet_instance(m: &Mesh) -> Option<String> {
    let r = call_orders(m).ok()?;
    (r.status == 200).then(|| r.header(INSTANCE_HEADER).unwrap_or_default().to_owned())
}

/// The sum of a stat whose name ends with `suffix` over the given sidecars.
fn stat_sum<'a>(envoys: impl IntoIterator<Item = &'a Envoy>, suffix: &str) -> u64 {
    envoys
        .into_iter()
        .filter_map(|e| e.stats().ok())
        .flat_map(|s| s.into_iter())
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| v)
        .sum()
}

fn run() -> Result<()> {
    let kind = parse_args()?;
    let t0 = Instant::now();
    println!(
        "meshwasm demo: a mesh of Envoy sidecars — frontend and orders (3 instances), mTLS with SPIFFE \
         identities, authz, jwt-auth, token-injector, balancer, and discovery as a singleton Wasm service"
    );
    let m = start(kind)?;
    println!(
        "   started in {:.1}s ({} Envoys in parallel: frontend, orders-1 to -{}, an impostor)",
        t0.elapsed().as_secs_f64(),
        m.orders.len() + 2,
        m.orders.len()
    );
    let result = demo(&m);
    if result.is_err() {
        eprintln!("\n--- frontend's sidecar log (tail) ---");
        m.frontend.print_log_tail(40);
        eprintln!("--- frontend's sidecar: orders and balancer stats ---");
        if let Ok(stats) = m.frontend.stats() {
            for (k, v) in stats {
                if v > 0 && (k.starts_with("cluster.orders.") || k.contains("meshwasm_balancer")) {
                    eprintln!("{k} {v}");
                }
            }
        }
    }
    result?;
    println!(
        "\nDone in {:.1}s: plaintext and certificate-less callers refused; frontend -> orders over mTLS with an \
         injected token, round robin; rogue 403; wrong audience 401; orders-2 ejected; orders-4 discovered; an \
         impostor refused. Cleaning up.",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn demo(m: &Mesh) -> Result<()> {
    let ca = m.ids.ca();
    println!("   CA           {} (openssl, made at start; SVIDs valid for a day)", m.ids.dir().display());
    println!(
        "   issuer       {} (client `{}`; orders' audience {ORDERS_AUDIENCE})",
        m.idp.issuer(),
        FRONTEND_CLIENT.id
    );
    println!("   registry     {}", m.registry.describe());
    println!(
        "   frontend     sidecar outbound http://{}  as {}",
        m.frontend.listener_addr("outbound"),
        m.ids.frontend.spiffe_id
    );
    for (i, o) in m.orders.iter().enumerate() {
        let note = if i < INITIAL { "" } else { "  (not registered yet)" };
        println!(
            "   {}     sidecar inbound https://{} (mTLS) -> app {}  as {}{note}",
            o.name,
            o.inbound(),
            o.app.addr(),
            m.ids.orders[i].spiffe_id
        );
    }
    for o in &m.orders[..INITIAL] {
        m.registry.register(&o.name, o.inbound())?;
    }

    let first = &m.orders[0];
    step(
        1,
        &format!(
            "{}'s inbound refuses a plaintext client and a TLS client without a certificate",
            first.name
        ),
    );
    let before = first.app.request_count();
    let plain = curl(first.inbound(), Caller::Plaintext, None)?;
    println!("   plaintext HTTP             -> {}", plain.summary());
    ensure!(
        plain.status == 0,
        "a plaintext client got an HTTP answer from orders' inbound: {}",
        plain.status
    );
    let anon = curl(first.inbound(), Caller::Tls { ca: &ca, client: None }, None)?;
    println!("   TLS, no client certificate -> {}", anon.summary());
    ensure!(anon.status == 0, "a client without a certificate got an HTTP answer: {}", anon.status);
    ensure!(first.app.request_count() == before, "a refused client reached the orders app");

    step(
        2,
        "frontend -> orders over mTLS (frontend's SVID; orders' SPIFFE ID verified) with an injected token: \
         round robin over orders-1, -2, -3",
    );
    // Until the token is fetched, the instances discovered and orders' keys loaded.
    let ready = wait_until(Duration::from_secs(20), || {
        (0..INITIAL).filter_map(|_| quiet_instance(m)).count() == INITIAL
    });
    if !ready {
        show(m)?;
        bail!("frontend could not reach orders (token, endpoints or keys never loaded)");
    }
    let allowed_before =
        stat_sum(m.orders.iter().map(|o| &o.sidecar), "meshwasm_authz.policy.frontend-calls-orders.allowed");
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(show(m)?.context("a request from frontend to orders failed")?);
    }
    let all: BTreeSet<String> = m.orders[..INITIAL].iter().map(|o| o.name.clone()).collect();
    ensure!(
        seen.iter().cloned().collect::<BTreeSet<_>>() == all,
        "not all three instances answered: {seen:?}"
    );
    ensure!(
        seen[..3].iter().collect::<BTreeSet<_>>().len() == 3,
        "three requests in a row were not round robin"
    );
    let allowed =
        stat_sum(m.orders.iter().map(|o| &o.sidecar), "meshwasm_authz.policy.frontend-calls-orders.allowed")
            - allowed_before;
    let handshakes = stat_sum([&m.frontend], "cluster.orders.ssl.handshake");
    println!(
        "   orders' authz allowed {allowed} requests from {}; frontend's sidecar made {handshakes} TLS \
         handshakes to orders",
        spiffe_id("frontend")
    );
    ensure!(allowed == 6, "orders' authz counted {allowed} allowed requests from frontend, not 6");
    ensure!(handshakes >= 3, "frontend's sidecar made {handshakes} TLS handshakes to orders");

    let token = m.idp.client_credentials(&FRONTEND_CLIENT, "read", Some(ORDERS_AUDIENCE))?;
    step(
        3,
        &format!(
            "A workload with another identity ({}, same CA) and a valid token gets 403 from authz",
            m.ids.rogue.spiffe_id
        ),
    );
    let before = first.app.request_count();
    let rogue = curl(first.inbound(), Caller::Tls { ca: &ca, client: Some(&m.ids.rogue) }, Some(&token))?;
    println!("   rogue -> GET https://{ORDERS_HOST}/orders on {} -> {}", first.name, rogue.summary());
    ensure!(rogue.status == 403, "rogue got {} from orders, not 403", rogue.status);
    ensure!(rogue.body.trim() == "access denied", "the 403 did not come from authz: {:?}", rogue.body);
    ensure!(first.app.request_count() == before, "rogue's request reached the orders app");

    step(
        4,
        &format!(
            "frontend's identity with a token for another audience ({PAYMENTS_AUDIENCE}) gets 401 from jwt-auth"
        ),
    );
    let payments = m.idp.client_credentials(&FRONTEND_CLIENT, "read", Some(PAYMENTS_AUDIENCE))?;
    let wrong =
        curl(first.inbound(), Caller::Tls { ca: &ca, client: Some(&m.ids.frontend) }, Some(&payments))?;
    println!("   frontend's SVID + payments token -> GET on {} -> {}", first.name, wrong.summary());
    ensure!(wrong.status == 401, "a token for {PAYMENTS_AUDIENCE} got {} from orders, not 401", wrong.status);
    ensure!(
        wrong.header("www-authenticate").is_some_and(|c| c.starts_with("Bearer realm=\"orders\"")),
        "the 401 has no RFC 6750 challenge from jwt-auth"
    );
    // The same caller with orders' audience passes both filters: the refusal was the audience.
    let right = curl(first.inbound(), Caller::Tls { ca: &ca, client: Some(&m.ids.frontend) }, Some(&token))?;
    println!("   frontend's SVID + orders token   -> GET on {} -> {}", first.name, right.summary());
    ensure!(right.status == 200, "frontend's SVID with a token for orders got {}", right.status);
    ensure!(
        first.app.request_count() == before + 1,
        "only the request with the right audience reaches the app"
    );

    let victim = &m.orders[1];
    step(
        5,
        &format!(
            "{} is killed (app and sidecar): its failure ejects it, traffic continues on the others",
            victim.name
        ),
    );
    victim.sidecar.stop();
    victim.app.stop();
    let mut after = Vec::new();
    for _ in 0..8 {
        if let Some(w) = show(m)? {
            after.push(w);
        }
    }
    let survivors: BTreeSet<&str> = [m.orders[0].name.as_str(), m.orders[2].name.as_str()].into();
    let tail: BTreeSet<&str> = after.iter().rev().take(4).map(String::as_str).collect();
    ensure!(tail == survivors, "after {} died, traffic did not settle on the others: {after:?}", victim.name);
    let ejected = stat_sum([&m.frontend], "meshwasm_balancer.orders.ejections");
    println!("   (frontend's balancer ejected {} on its failure: ejections = {ejected})", victim.name);
    ensure!(ejected == 1, "the balancer reports {ejected} ejections, not 1");

    let new = &m.orders[INITIAL];
    step(6, &format!("{} is registered and receives traffic", new.name));
    let t = Instant::now();
    m.registry.register(&new.name, new.inbound())?;
    println!("   registered {} ({}) in {}", new.name, new.inbound(), m.registry.noun());
    ensure!(
        wait_until(Duration::from_secs(10), || quiet_instance(m).as_deref() == Some(new.name.as_str())),
        "the newly registered instance {} never received traffic",
        new.name
    );
    println!("   ({} got its first request {:.1}s after registration)", new.name, t.elapsed().as_secs_f64());
    let mut last = BTreeSet::new();
    for _ in 0..6 {
        last.insert(show(m)?.context("a request failed after the new instance joined")?);
    }
    let want: BTreeSet<String> = [&m.orders[0], &m.orders[2], new].iter().map(|o| o.name.clone()).collect();
    ensure!(last == want, "traffic after {} joined: {last:?}", new.name);

    let imp = &m.impostor;
    step(
        7,
        &format!(
            "A workload with rogue's SVID registers itself as orders: frontend's sidecar refuses it (not {})",
            spiffe_id("orders")
        ),
    );
    m.registry.register(&imp.name, imp.inbound())?;
    println!("   registered {} ({}) in {}", imp.name, imp.inbound(), m.registry.noun());
    let refused = || stat_sum([&m.frontend], "cluster.orders.ssl.fail_verify_san");
    let ejections = || stat_sum([&m.frontend], "meshwasm_balancer.orders.ejections");
    let ejected_before = ejections();
    let before = refused();
    // Requests go on as before; the one that is steered to the impostor fails its TLS handshake.
    let mut failed = Vec::new();
    let picked = wait_until(Duration::from_secs(10), || {
        if let Ok(r) = call_orders(m)
            && r.status != 200
        {
            failed.push(format!("{}  ({})", r.status, r.text().trim()));
        }
        refused() > before
    });
    for f in &failed {
        println!("   frontend -> GET http://{ORDERS_HOST}/orders -> {f}");
    }
    ensure!(picked, "frontend's sidecar never tried the registered impostor");
    let mut last = BTreeSet::new();
    for _ in 0..6 {
        last.insert(show(m)?.context("a request failed after the impostor was ejected")?);
    }
    println!(
        "   (frontend's sidecar refused the impostor's certificate: ssl.fail_verify_san = {}; the impostor's \
         app got {} requests; ejections = {})",
        refused(),
        imp.app.request_count(),
        ejections()
    );
    ensure!(ejections() == ejected_before + 1, "the balancer did not eject the impostor");
    ensure!(imp.app.request_count() == 0, "a request from frontend reached the impostor's app");
    ensure!(last == want, "traffic after the impostor was ejected: {last:?}");
    Ok(())
}
