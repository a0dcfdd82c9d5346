//! `make demo`: the meshwasm mesh in one command.
//!
//! Starts real Envoy with three meshwasm filters in one chain — `jwt-auth` (keys found through OIDC
//! discovery from a real OpenID Provider), `discovery` (endpoints from a registry) and `balancer` (round
//! robin with passive health, steering Envoy's ORIGINAL_DST cluster) — three backend instances, the
//! registry and the token issuer, then shows what a user would check by hand:
//!
//! 1. a request without a token gets 401 with an RFC 6750 challenge;
//! 2. with a client-credentials token, requests are answered by A, B, C in turn;
//! 3. B is killed: its failure ejects it and traffic continues on the others;
//! 4. D is registered in the registry and receives traffic.
//!
//! The registry is a JSON file served over HTTP (the default; the file lives in a temporary directory and the
//! demo rewrites it to register D), or real etcd with `--registry etcd`. Every step is checked: the demo
//! exits non-zero when the mesh does not behave as shown. Everything it started is stopped on exit.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use meshwasm_tests::artifacts::wasm_path;
use meshwasm_tests::backend::{Backend, INSTANCE_HEADER};
use meshwasm_tests::envoy::{Cluster, Envoy, EnvoyConfig, Listener, WasmFilter};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::oidc::{BASIC_CLIENT, OidcOptions, OidcProvider, RS256_RESOURCE};
use meshwasm_tests::process::{HttpResponse, http_request, wait_until};
use serde_json::json;

const SERVICE: &str = "demo";
const ETCD_PREFIX: &str = "/services/demo/";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nmeshwasm demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RegistryKind {
    File,
    Etcd,
}

fn parse_args() -> Result<RegistryKind> {
    let mut kind = std::env::var("MESHWASM_DEMO_REGISTRY").unwrap_or_else(|_| "file".into());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--registry" => kind = args.next().context("--registry needs a value: file or etcd")?,
            "-h" | "--help" => {
                println!("usage: meshwasm-demo [--registry file|etcd]");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}` (usage: meshwasm-demo [--registry file|etcd])"),
        }
    }
    match kind.as_str() {
        "file" | "" => Ok(RegistryKind::File),
        "etcd" => Ok(RegistryKind::Etcd),
        other => bail!("unknown registry `{other}`: use `file` or `etcd`"),
    }
}

/// Where the discovery filter finds the demo service.
enum Registry {
    File(FileRegistry),
    Etcd(Etcd),
}

impl Registry {
    fn start(kind: RegistryKind, initial: &[&Backend]) -> Result<Self> {
        let registry = match kind {
            RegistryKind::File => Registry::File(FileRegistry::start()?),
            RegistryKind::Etcd => Registry::Etcd(Etcd::start().context("starting etcd")?),
        };
        for b in initial {
            registry.register(b)?;
        }
        Ok(registry)
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Registry::File(f) => f.addr,
            Registry::Etcd(e) => e.addr(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Registry::File(f) => {
                format!("file {} served on http://{}{}", f.path.display(), f.addr, FileRegistry::PATH)
            }
            Registry::Etcd(e) => format!("etcd on {} (keys under {ETCD_PREFIX})", e.addr()),
        }
    }

    /// The discovery filter's `source` for this registry.
    fn source(&self) -> serde_json::Value {
        match self {
            Registry::File(_) => json!({"file": {"cluster": "registry", "path": FileRegistry::PATH}}),
            Registry::Etcd(_) => json!({"etcd": {"cluster": "registry", "prefix": ETCD_PREFIX}}),
        }
    }

    fn register(&self, b: &Backend) -> Result<()> {
        let entry = json!({"address": b.addr().to_string(), "metadata": {"instance": b.name()}});
        match self {
            Registry::File(f) => f.add(entry),
            Registry::Etcd(e) => {
                e.put(&format!("{ETCD_PREFIX}{}", b.name()), &entry.to_string())?;
                Ok(())
            }
        }
    }
}

/// A registry that is just a JSON file (`{"endpoints": [...]}`), served over HTTP so that the discovery
/// filter — which cannot open files inside Envoy — can poll it.
struct FileRegistry {
    addr: SocketAddr,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileRegistry {
    const PATH: &'static str = "/registry.json";

    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("registry.json");
        std::fs::write(&path, json!({"endpoints": []}).to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let served = path.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve_file(conn, &served);
            }
        });
        Ok(Self { addr, path, _dir: dir })
    }

    fn add(&self, entry: serde_json::Value) -> Result<()> {
        let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.path)?)?;
        doc["endpoints"].as_array_mut().context("registry file has no endpoints array")?.push(entry);
        // Write then rename, so a poll never reads a half-written file.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
        std::fs::rename(tmp, &self.path)?;
        Ok(())
    }
}

fn serve_file(conn: std::net::TcpStream, path: &Path) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    // Request line and headers; the body of a GET is empty.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = std::fs::read(path)?;
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    Ok(())
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn get(envoy: &Envoy, token: Option<&str>) -> Result<HttpResponse> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    http_request(envoy.listener_addr("mesh"), "GET", "/hello", &headers, b"", Duration::from_secs(5))
}

/// Sends one request and prints it as a transcript line; returns the answering instance (200 only).
fn show(envoy: &Envoy, token: Option<&str>) -> Result<Option<String>> {
    let r = get(envoy, token)?;
    let who = r.header(INSTANCE_HEADER).map(str::to_owned);
    let auth = if token.is_some() { "with token   " } else { "without token" };
    match (&who, r.status) {
        (Some(w), 200) => println!("   GET /hello {auth} -> 200 from instance {w}"),
        _ => {
            let mut line = format!("   GET /hello {auth} -> {}", r.status);
            if let Some(c) = r.header("www-authenticate") {
                line.push_str(&format!("  www-authenticate: {c}"));
            } else if !r.body.is_empty() {
                line.push_str(&format!("  ({})", r.text().trim()));
            }
            println!("{line}");
        }
    }
    Ok(if r.status == 200 { who } else { None })
}

fn quiet_instance(envoy: &Envoy, token: &str) -> Option<String> {
    let r = get(envoy, Some(token)).ok()?;
    (r.status == 200).then(|| r.header(INSTANCE_HEADER).unwrap_or_default().to_owned())
}

fn run() -> Result<()> {
    let kind = parse_args()?;
    println!(
        "meshwasm demo: Envoy + jwt-auth + discovery + balancer, three backends, a registry, a token issuer"
    );

    let a = Backend::start("A")?;
    let b = Backend::start("B")?;
    let c = Backend::start("C")?;
    let idp = OidcProvider::start(OidcOptions::default())
        .context("starting the OpenID Provider (oidc-provider)")?;
    let registry = Registry::start(kind, &[&a, &b, &c])?;

    let jwt = json!({
        "realm": "demo",
        "providers": {"demo-idp": {
            "issuer": idp.issuer(),
            "audiences": [RS256_RESOURCE],
            // No `uri`: the keys are found through OIDC discovery from the issuer alone.
            "remote_jwks": {"cluster": "idp"},
            "claim_to_headers": [{"header": "x-client-id", "claim": "client_id"}]
        }},
        "rules": [{"match": {"prefix": "/"}, "requires_any": ["demo-idp"]}]
    });
    let discovery = json!({
        // The demo's backends listen on loopback, so the service opts in to loopback addresses.
        "services": [{"name": SERVICE, "refresh": "300ms", "timeout": "2s", "allow_loopback": true,
                      "source": registry.source()}]
    });
    let balancer = json!({
        "service_from": [{"fixed": SERVICE}],
        "refresh_interval": "500ms",
        "services": {SERVICE: {
            "algorithm": "round_robin",
            // Eject on the first failure so the demo shows it at once (the default is 5, as Envoy).
            "outlier_detection": {"consecutive_failures": 1, "base_ejection_time": "30s"}
        }}
    });

    let envoy = EnvoyConfig::new()
        .concurrency(1)
        .listener(
            Listener::new("mesh", "picked")
                .wasm(WasmFilter::new("jwt-auth", wasm_path("meshwasm_jwt_auth")).config(jwt.to_string()))
                .wasm(
                    WasmFilter::new("discovery", wasm_path("meshwasm_discovery"))
                        .vm_id("meshwasm")
                        .config(discovery.to_string()),
                )
                .wasm(
                    WasmFilter::new("balancer", wasm_path("meshwasm_balancer"))
                        .vm_id("meshwasm")
                        .config(balancer.to_string()),
                ),
        )
        .cluster(Cluster::original_dst("picked"))
        .cluster(Cluster::static_hosts("idp", &[idp.addr()]))
        .cluster(Cluster::static_hosts("registry", &[registry.addr()]))
        .start()
        .context("starting Envoy")?;

    println!("   Envoy      http://{}  (admin http://{})", envoy.listener_addr("mesh"), envoy.admin_addr());
    println!("   backends   A {}, B {}, C {}", a.addr(), b.addr(), c.addr());
    println!("   registry   {}", registry.describe());
    println!("   issuer     {}", idp.issuer());

    step(1, "A request without a token is refused");
    let r = get(&envoy, None)?;
    show(&envoy, None)?;
    ensure!(r.status == 401, "expected 401 without a token, got {}", r.status);
    ensure!(
        r.header("www-authenticate").is_some_and(|c| c.starts_with("Bearer realm=\"demo\"")),
        "401 without an RFC 6750 challenge"
    );

    step(2, "With a client-credentials token from the issuer, A, B and C answer in turn");
    let token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE))?;
    println!(
        "   token: {}… ({} bytes, RS256, aud {RS256_RESOURCE})",
        &token[..token.len().min(24)],
        token.len()
    );
    let all: BTreeSet<String> = ["A", "B", "C"].map(String::from).into();
    ensure!(
        wait_until(Duration::from_secs(15), || (0..3).filter_map(|_| quiet_instance(&envoy, &token)).count()
            == 3),
        "requests with a valid token did not succeed (keys or endpoints never loaded)"
    );
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(show(&envoy, Some(&token))?.context("a request with a valid token failed")?);
    }
    ensure!(seen.iter().cloned().collect::<BTreeSet<_>>() == all, "A, B and C did not all answer: {seen:?}");
    ensure!(
        seen[..3].iter().collect::<BTreeSet<_>>().len() == 3,
        "three requests in a row were not A, B, C in turn"
    );

    step(3, "Instance B is killed: its failure ejects it and traffic continues on A and C");
    b.stop();
    let mut after = Vec::new();
    for _ in 0..8 {
        if let Some(w) = show(&envoy, Some(&token))? {
            after.push(w);
        }
    }
    let tail: BTreeSet<&str> = after.iter().rev().take(4).map(String::as_str).collect();
    ensure!(tail == BTreeSet::from(["A", "C"]), "after B died, traffic did not settle on A and C: {after:?}");
    println!("   (the balancer ejected B on its failure; every later request went to A or C)");

    step(4, "Instance D is registered and receives traffic");
    let d = Backend::start("D")?;
    let t = Instant::now();
    registry.register(&d)?;
    println!(
        "   registered D {} in the {}",
        d.addr(),
        if kind == RegistryKind::File { "file" } else { "etcd registry" }
    );
    ensure!(
        wait_until(Duration::from_secs(10), || quiet_instance(&envoy, &token).as_deref() == Some("D")),
        "the newly registered instance D never received traffic"
    );
    println!("   (D got its first request {:?} after registration)", t.elapsed());
    let mut last = BTreeSet::new();
    for _ in 0..6 {
        last.insert(show(&envoy, Some(&token))?.context("a request failed after D joined")?);
    }
    ensure!(last == BTreeSet::from(["A", "C", "D"].map(String::from)), "traffic after D joined: {last:?}");

    println!("\nDone: 401 without a token, round robin over A B C, B ejected, D discovered. Cleaning up.");
    Ok(())
}
