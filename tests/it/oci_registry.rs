//! Distribution through a real registry: the images `make dist` writes (built here by the same Rust
//! builder, `meshwasm-dist`) are pushed with Debian's `skopeo` to Debian's `docker-registry` (the CNCF
//! distribution registry) on loopback, pulled back, and checked the way Istio's and Envoy Gateway's
//! fetchers check them. Envoy then loads a filter straight from the registry's blob URL through
//! `vm_config.code.remote` (http_uri + sha256), and refuses to run it when the sha256 is wrong.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use meshwasm_dist::{
    OCI_IMAGE_CONFIG, OCI_LAYER_TAR_GZIP, OCI_MANIFEST, VARIANT_ANNOTATION, Variant, WASM_CONFIG,
    WASM_CONTENT,
};
use meshwasm_tests::artifacts;
use meshwasm_tests::envoy::{Cluster, EnvoyConfig};
use meshwasm_tests::process::{self, ChildGuard, HttpResponse};
use serde_json::{Value, json};

/// The Makefile's DIST_FILTERS; `dist_filters_match_the_makefile` keeps the two in step.
const DIST_FILTERS: [&str; 6] = [
    "meshwasm_jwt_auth",
    "meshwasm_token_injector",
    "meshwasm_discovery",
    "meshwasm_balancer",
    "meshwasm_authz",
    "meshwasm",
];
const VERSION: &str = "0.1.0";
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";

/// A `docker-registry` on a free loopback port, storing into a temporary directory. Killed on drop.
struct Registry {
    addr: SocketAddr,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Result<Self> {
        let bin = which("docker-registry")?;
        let dir = tempfile::Builder::new().prefix("meshwasm-registry-").tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", process::free_port()).parse()?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("storage").display()
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg(&config);
        let child = ChildGuard::spawn_logging_to("docker-registry", cmd, &dir.path().join("registry.log"))?;
        let up = process::wait_until(Duration::from_secs(15), || {
            process::http_get(addr, "/v2/").is_ok_and(|r| r.status == 200)
        });
        if !up {
            child.print_tail(50);
            bail!("docker-registry did not answer /v2/ at {addr} within 15 s");
        }
        Ok(Self { addr, _child: child, _dir: dir })
    }

    fn get(&self, path: &str, accept: &str) -> Result<HttpResponse> {
        let r = process::http_request(
            self.addr,
            "GET",
            path,
            &[("accept", accept)],
            b"",
            Duration::from_secs(10),
        )?;
        ensure!(r.status == 200, "GET {path}: {} {}", r.status, r.text());
        Ok(r)
    }

    /// The manifest of `name:reference` as a fetcher asks for it, and the digest the registry names.
    fn manifest(&self, name: &str, reference: &str) -> Result<(String, Value, Vec<u8>)> {
        let r = self.get(&format!("/v2/{name}/manifests/{reference}"), MANIFEST_ACCEPT)?;
        let digest = r.header("docker-content-digest").context("no Docker-Content-Digest")?.to_owned();
        Ok((digest, r.json()?, r.body))
    }

    fn blob(&self, name: &str, digest: &str) -> Result<Vec<u8>> {
        let body = self.get(&format!("/v2/{name}/blobs/{digest}"), "*/*")?.body;
        ensure!(meshwasm_dist::digest(&body) == digest, "blob {digest} of {name} does not match its digest");
        Ok(body)
    }
}

fn which(bin: &str) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .with_context(|| format!("meshwasm tests: `{bin}` is not installed: run `make setup-system`"))
}

fn skopeo_copy(src: &str, dest: &str) -> Result<()> {
    let out = Command::new(which("skopeo")?)
        // No signature policy is needed for a loopback registry; don't depend on /etc/containers.
        .args(["--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false"])
        .args([src, dest])
        .output()?;
    ensure!(
        out.status.success(),
        "skopeo copy {src} {dest}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Builds the dist images of `filters` from the test artifacts into `out`.
fn build_dist(out: &Path, filters: &[&str]) -> Result<Vec<meshwasm_dist::DistImage>> {
    let files: Vec<PathBuf> = filters.iter().map(|f| artifacts::wasm_path(f)).collect();
    meshwasm_dist::build_dist(out, &files, VERSION)
}

/// What the fetchers check, on one manifest of the given variant.
fn assert_shape(variant: Variant, m: &Value, what: &str) {
    assert_eq!(m["mediaType"], OCI_MANIFEST, "{what}");
    let layers = m["layers"].as_array().cloned().unwrap_or_default();
    let types: Vec<&str> = layers.iter().map(|l| l["mediaType"].as_str().unwrap_or_default()).collect();
    match variant {
        Variant::Oci => {
            assert_eq!(m["config"]["mediaType"], WASM_CONFIG, "{what}");
            assert_eq!(types, [WASM_CONFIG, WASM_CONTENT], "{what}: exactly two layers, config and module");
            assert!(m["annotations"].get(VARIANT_ANNOTATION).is_none(), "{what}");
        }
        Variant::Compat => {
            assert_eq!(m["config"]["mediaType"], OCI_IMAGE_CONFIG, "{what}");
            assert_eq!(types, [OCI_LAYER_TAR_GZIP], "{what}: one tar+gzip layer");
            assert_eq!(m["annotations"][VARIANT_ANNOTATION], "compat", "{what}");
        }
    }
}

#[test]
fn dist_filters_match_the_makefile() {
    let makefile = std::fs::read_to_string(artifacts::workspace_root().join("Makefile")).unwrap();
    let line =
        makefile.lines().find(|l| l.starts_with("DIST_FILTERS :=")).expect("DIST_FILTERS in the Makefile");
    let listed: Vec<&str> = line.trim_start_matches("DIST_FILTERS :=").split_whitespace().collect();
    assert_eq!(listed, DIST_FILTERS);
}

#[test]
fn dist_images_are_reproducible_and_round_trip_through_a_real_registry() {
    // Two builds into two directories give the same bytes and digests.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let dist = build_dist(a.path(), &DIST_FILTERS).unwrap();
    let again = build_dist(b.path(), &DIST_FILTERS).unwrap();
    assert_eq!(
        dist.iter().map(|d| &d.images).collect::<Vec<_>>(),
        again.iter().map(|d| &d.images).collect::<Vec<_>>()
    );
    for file in ["SHA256SUMS", "DIGESTS"] {
        assert_eq!(
            std::fs::read(a.path().join(file)).unwrap(),
            std::fs::read(b.path().join(file)).unwrap(),
            "{file}"
        );
    }
    let sums = std::fs::read_to_string(a.path().join("SHA256SUMS")).unwrap();
    assert_eq!(sums.lines().count(), DIST_FILTERS.len(), "{sums}");

    let registry = Registry::start().unwrap();
    let pulled = tempfile::tempdir().unwrap();
    for d in &dist {
        let module = std::fs::read(artifacts::wasm_path(&d.name)).unwrap();
        let module_digest = meshwasm_dist::digest(&module);
        // SHA256SUMS names the module's sha256 (the http(s) pin).
        let file = format!("{}.wasm", d.name.replace('-', "_"));
        assert!(sums.contains(&format!("{}  {file}", module_digest.trim_start_matches("sha256:"))), "{sums}");
        for image in &d.images {
            let what = format!("{}:{}", d.name, image.tag);
            let src = format!("oci:{}:{}", d.layout.display(), image.tag);
            skopeo_copy(&src, &format!("docker://{}/{}:{}", registry.addr, d.name, image.tag)).unwrap();

            // The registry serves the manifest under the digest we print for `sha256:` pinning.
            let (digest, manifest, body) = registry.manifest(&d.name, &image.tag).unwrap();
            assert_eq!(digest, image.manifest_digest, "{what}: registry digest");
            assert_eq!(meshwasm_dist::digest(&body), image.manifest_digest, "{what}: manifest bytes");
            assert_shape(image.variant, &manifest, &what);
            // The fetchers' extraction, over the registry API, yields the module byte for byte.
            let wasm = meshwasm_dist::extract_wasm(&manifest, |dg| registry.blob(&d.name, dg)).unwrap();
            assert_eq!(meshwasm_dist::digest(&wasm), module_digest, "{what}: plugin.wasm digest");
            let by_digest = registry.manifest(&d.name, &image.manifest_digest).unwrap();
            assert_eq!(by_digest.0, image.manifest_digest, "{what}: pull by digest");

            // Pulled back into a fresh layout with skopeo: same manifest digest, same module.
            let layout = pulled.path().join(&d.name);
            let dest = format!("oci:{}:{}", layout.display(), image.tag);
            skopeo_copy(&format!("docker://{}/{}:{}", registry.addr, d.name, image.tag), &dest).unwrap();
            let (pulled_digest, pulled_manifest) =
                meshwasm_dist::layout_manifest(&layout, &image.tag).unwrap();
            assert_eq!(pulled_digest, image.manifest_digest, "{what}: pulled digest");
            assert_shape(image.variant, &pulled_manifest, &what);
            let wasm =
                meshwasm_dist::extract_wasm(&pulled_manifest, |dg| meshwasm_dist::layout_blob(&layout, dg))
                    .unwrap();
            assert_eq!(wasm, module, "{what}: pulled plugin.wasm");
        }
    }
}

/// A registry holding the noop filter's image, and the blob URL path of its raw module.
fn registry_with_noop() -> (Registry, tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let dist = build_dist(dir.path(), &["meshwasm_noop"]).unwrap();
    let registry = Registry::start().unwrap();
    let image = dist[0].images.iter().find(|i| i.variant == Variant::Oci).unwrap();
    let src = format!("oci:{}:{}", dist[0].layout.display(), image.tag);
    skopeo_copy(&src, &format!("docker://{}/{}:{}", registry.addr, dist[0].name, image.tag)).unwrap();
    // In the oci variant the module layer is the raw module: its blob digest is the module's sha256.
    assert_eq!(image.layer_digest, image.wasm_digest);
    let uri = format!("http://{}/v2/{}/blobs/{}", registry.addr, dist[0].name, image.wasm_digest);
    let sha = image.wasm_digest.trim_start_matches("sha256:").to_owned();
    (registry, dir, uri, sha)
}

/// Envoy with one listener `main` whose wasm filter's code is fetched from `uri`, pinned by `sha256`.
fn envoy_with_remote_code(registry: &Registry, uri: &str, sha256: &str) -> meshwasm_tests::envoy::Envoy {
    let listener = json!({
        "name": "main",
        "address": { "socket_address": { "address": "127.0.0.1", "port_value": 0 } },
        "filter_chains": [{ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "main",
                "route_config": { "virtual_hosts": [{ "name": "all", "domains": ["*"], "routes": [{
                    "match": { "prefix": "/" },
                    "direct_response": { "status": 200, "body": { "inline_string": "served" } },
                }]}]},
                "http_filters": [
                    { "name": "envoy.filters.http.wasm", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                        "config": { "name": "noop", "root_id": "noop", "vm_config": {
                            "vm_id": "noop",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": { "remote": {
                                "http_uri": { "uri": uri, "cluster": "oci-registry", "timeout": "5s" },
                                "sha256": sha256,
                                "retry_policy": { "num_retries": 1 },
                            }},
                        }},
                    }},
                    { "name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } },
                ],
            },
        }]}],
    });
    let mut config = EnvoyConfig::new()
        .raw_listener(&listener.to_string())
        .cluster(Cluster::static_hosts("oci-registry", &[registry.addr]));
    // `config:debug` shows the remote data fetcher's verdict.
    config.component_log_level = Some("wasm:debug,config:debug".to_owned());
    config.start().unwrap()
}

#[test]
fn envoy_loads_a_filter_from_the_registry_blob_url_pinned_by_sha256() {
    let (registry, _dir, uri, sha) = registry_with_noop();
    let envoy = envoy_with_remote_code(&registry, &uri, &sha);
    let r = process::http_get(envoy.listener_addr("main"), "/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "served"), "{}", envoy.logs());
    assert_eq!(envoy.stat("wasm.remote_load_fetch_successes").unwrap(), Some(1));
    assert_eq!(envoy.stat("wasm.remote_load_fetch_failures").unwrap(), Some(0));
    assert!(envoy.stat("wasm.envoy.wasm.runtime.v8.created").unwrap().unwrap_or(0) >= 1);
}

#[test]
fn envoy_refuses_a_registry_blob_with_the_wrong_sha256() {
    let (registry, _dir, uri, sha) = registry_with_noop();
    // Same URL, a pin one hex digit off.
    let wrong = format!("{}{}", if sha.starts_with('0') { '1' } else { '0' }, &sha[1..]);
    let envoy = envoy_with_remote_code(&registry, &uri, &wrong);
    // Envoy 1.40 still opens a static listener, but the plugin never loads and the filter, configured
    // fail closed (`fail_open: false`), answers 503 instead of running unverified code.
    let r = process::http_get(envoy.listener_addr("main"), "/").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let logs = envoy.logs();
    let shown: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("data is invalid") || l.contains("failed to load") || l.contains("Retry limit")
        })
        .collect();
    println!("Envoy's messages for a wrong sha256:\n{}", shown.join("\n"));
    assert!(logs.contains(&format!("fetch remote data [uri = {uri}]: data is invalid")), "{logs}");
    assert!(logs.contains("Plugin noop failed to load"), "{logs}");
    assert_eq!(envoy.stat("wasm.remote_load_fetch_successes").unwrap(), Some(0));
    assert!(envoy.stat("wasm.remote_load_fetch_failures").unwrap().unwrap_or(0) >= 1);
}
