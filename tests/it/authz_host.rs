//! The authz filter as the real `.wasm` in the wasmtime host: the peer identity comes from the
//! `connection.*` properties Envoy fills from the mTLS handshake (set here per request), the token's
//! identity from the filter-state properties jwt-auth writes, and the decisions, replies, metrics and
//! logs are the filter's.

use meshwasm_host::{Exchange, Host, HostOptions, LogLevel, Plugin, Proxy, Request, UpstreamReply, property};
use meshwasm_tests::artifacts;

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ROGUE: &str = "spiffe://cluster.local/ns/shop/sa/rogue";

fn proxy(config: &str) -> Proxy {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_authz")).unwrap();
    Proxy::builder(&host)
        .log_level(LogLevel::Debug)
        .plugin(Plugin::new(module).name("authz").config(config.as_bytes()))
        .build()
        .unwrap()
}

/// A request over mTLS whose peer certificate has `uri` as its (first) URI SAN.
fn over_mtls(req: Request, uri: &str) -> Request {
    req.property("connection.mtls", property::boolean(true))
        .property("connection.uri_san_peer_certificate", uri)
        .property("connection.dns_san_peer_certificate", "frontend.shop.svc")
        .property("connection.subject_peer_certificate", "CN=frontend,O=shop")
        .property("connection.sha256_peer_certificate_digest", "0a1b2c")
}

fn send(p: &mut Proxy, req: Request) -> Exchange {
    p.send(0, req, UpstreamReply::new(200).header("x-from", "upstream").body("upstream")).unwrap()
}

fn passed(ex: &Exchange) -> bool {
    ex.local_reply.is_none() && ex.upstream_request.is_some() && ex.status == 200
}

fn refused(ex: &Exchange, status: u16) -> bool {
    ex.upstream_request.is_none() && ex.status == status
}

fn metric(p: &Proxy, name: &str) -> u64 {
    p.metric(&format!("meshwasm_authz.{name}")).unwrap_or(0)
}

const POLICIES: &str = r#"{"policies": [
    {"name": "deny-rogue", "action": "DENY",
     "rules": [{"from": [{"source": {"service_accounts": ["shop/rogue"]}}]}]},
    {"name": "allow-shop", "action": "ALLOW",
     "rules": [{"from": [{"source": {"namespaces": ["shop"]}}], "to": [{"operation": {"paths": ["/orders/*"]}}]}]}
]}"#;

#[test]
fn peer_identity_from_the_connection_decides() {
    let mut p = proxy(POLICIES);
    assert!(passed(&send(&mut p, over_mtls(Request::get("/orders/1"), FRONTEND))));
    assert_eq!(metric(&p, "policy.allow-shop.allowed"), 1);
    assert!(p.logged("allowed by policy `allow-shop`"), "the deciding policy at debug level");

    // Another identity: the DENY policy wins, with a body that names no policy.
    let ex = send(&mut p, over_mtls(Request::get("/orders/1"), ROGUE));
    assert!(refused(&ex, 403), "{:?}", ex.local_reply);
    let body = String::from_utf8_lossy(&ex.response_body);
    assert_eq!(body, "access denied\n");
    assert_eq!(metric(&p, "policy.deny-rogue.denied"), 1);
    assert!(p.logged("denied by policy `deny-rogue`"));

    // Plaintext: no principal, so no ALLOW policy matches. The certificate properties of a
    // plaintext connection are not trusted even if present.
    let ex = send(
        &mut p,
        over_mtls(Request::get("/orders/1"), FRONTEND).property("connection.mtls", property::boolean(false)),
    );
    assert!(refused(&ex, 403));
    let ex = send(&mut p, Request::get("/orders/1"));
    assert!(refused(&ex, 403));
    assert!(p.logged("denied: no ALLOW policy matched"));

    // A SAN that is not a valid SPIFFE ID (upper-case trust domain) has no namespace.
    let ex = send(&mut p, over_mtls(Request::get("/orders/1"), "spiffe://Cluster.Local/ns/shop/sa/frontend"));
    assert!(refused(&ex, 403));

    assert_eq!((metric(&p, "allowed"), metric(&p, "denied")), (1, 4));
}

#[test]
fn the_path_is_normalized_and_ambiguous_paths_get_400_before_any_policy() {
    let mut p = proxy(
        r#"{"policies": [{"name": "deny-admin", "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin", "/admin/*"]}}]}]}]}"#,
    );
    for path in
        ["/admin", "/%61dmin", "//admin", "/public/../admin", "/public/%2e%2e/admin", "/admin/", "/admin/x?y"]
    {
        let ex = send(&mut p, Request::get(path));
        assert!(refused(&ex, 403), "{path}: {}", ex.status);
    }
    for path in ["/admin;x", "/%2Fadmin", "/public\\..\\admin", "admin", "/a%zz"] {
        let ex = send(&mut p, Request::get(path));
        assert!(refused(&ex, 400), "{path}: {}", ex.status);
    }
    assert_eq!(metric(&p, "bad_path"), 5);
    assert!(passed(&send(&mut p, Request::get("/public/x"))));
}

#[test]
fn every_peer_certificate_attribute_and_the_source_address() {
    for (source, hit) in [
        (r#""principals": ["cluster.local/ns/shop/sa/frontend"]"#, true),
        (r#""principals": ["spiffe://cluster.local/ns/shop/*"]"#, true),
        (r#""trust_domains": ["cluster.local"]"#, true),
        (r#""trust_domains": ["other.local"]"#, false),
        (r#""service_accounts": ["shop/frontend"]"#, true),
        (r#""uri_sans": ["spiffe://cluster.local/*"]"#, true),
        (r#""dns_sans": ["*.shop.svc"]"#, true),
        (r#""subjects": ["CN=frontend,*"]"#, true),
        (r#""certificate_sha256": ["0A1B2C"]"#, true),
        (r#""certificate_sha256": ["ffff"]"#, false),
        (r#""ip_blocks": ["192.0.2.0/24"]"#, true),
        (r#""ip_blocks": ["10.0.0.0/8"]"#, false),
    ] {
        let mut p = proxy(&format!(
            r#"{{"policies": [{{"name": "a", "rules": [{{"from": [{{"source": {{{source}}}}}]}}]}}]}}"#
        ));
        let req = over_mtls(Request::get("/"), FRONTEND).property("source.address", "192.0.2.7:40000");
        assert_eq!(passed(&send(&mut p, req)), hit, "{source}");
    }
}

#[test]
fn the_token_identity_jwt_auth_hands_on() {
    let mut p = proxy(
        r#"{"policies": [{"name": "admins", "rules": [{
            "from": [{"source": {"request_principals": ["https://idp.example/*"]}}],
            "when": [{"key": "request.auth.claims[groups]", "values": ["admin"]},
                     {"key": "request.auth.provider", "values": ["idp"]}]}]}]}"#,
    );
    let token = |req: Request, groups: &str| {
        req.property("meshwasm.jwt.principal", "https://idp.example/alice")
            .property("meshwasm.jwt.provider", "idp")
            .property("meshwasm.jwt.claim.groups", groups)
    };
    assert!(passed(&send(&mut p, token(Request::get("/"), r#"["staff", "admin"]"#))));
    assert!(refused(&send(&mut p, token(Request::get("/"), r#"["staff"]"#)), 403));
    assert!(refused(&send(&mut p, token(Request::get("/"), "admin")), 403), "not JSON: no claim");
    assert!(refused(&send(&mut p, Request::get("/")), 403), "no token: no request principal");
}

#[test]
fn headers_methods_and_hosts() {
    let mut p = proxy(
        r#"{"policies": [
            {"name": "no-debug", "action": "DENY", "rules": [{"when": [{"key": "request.headers[x-debug]", "values": ["on"]}]}]},
            {"name": "reads", "rules": [{"to": [{"operation": {"methods": ["GET"], "hosts": ["orders.shop"]}}]}]}]}"#,
    );
    assert!(passed(&send(&mut p, Request::get("/").authority("Orders.Shop:8080"))));
    assert!(refused(&send(&mut p, Request::post("/").authority("orders.shop")), 403));
    assert!(refused(&send(&mut p, Request::get("/").authority("evil.shop")), 403));
    // A repeated header cannot hide the denied value behind another one.
    let req = Request::get("/").authority("orders.shop").header("x-debug", "off").header("x-debug", "on");
    assert!(refused(&send(&mut p, req), 403));
    assert_eq!(metric(&p, "policy.no-debug.denied"), 1);
}

#[test]
fn dry_run_and_audit_count_and_let_through() {
    let mut p = proxy(
        r#"{"policies": [
            {"name": "would-deny-rogue", "action": "DENY", "dry_run": true,
             "rules": [{"from": [{"source": {"service_accounts": ["shop/rogue"]}}]}]},
            {"name": "watch-shop", "action": "AUDIT", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}]}"#,
    );
    assert!(passed(&send(&mut p, over_mtls(Request::get("/"), ROGUE))));
    assert_eq!(metric(&p, "policy.would-deny-rogue.dry_run_denied"), 1);
    assert_eq!(metric(&p, "dry_run_denied"), 1);
    assert!(p.logged("dry run: policy `would-deny-rogue` would deny"));
    assert_eq!(metric(&p, "policy.watch-shop.audited"), 1);
    assert!(passed(&send(&mut p, over_mtls(Request::get("/"), FRONTEND))));
    assert_eq!(metric(&p, "policy.would-deny-rogue.dry_run_denied"), 1);
    assert_eq!((metric(&p, "allowed"), metric(&p, "denied")), (2, 0));
}

#[test]
fn a_bad_config_is_rejected_naming_the_field() {
    let host = Host::new(HostOptions::default()).unwrap();
    let module = host.load(artifacts::wasm_path("meshwasm_authz")).unwrap();
    for (config, field) in [
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"principal": ["x"]}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.principal",
        ),
        ("", "the configuration is empty"),
    ] {
        let err = Proxy::builder(&host)
            .plugin(Plugin::new(module.clone()).name("authz").config(config.as_bytes()))
            .build()
            .err()
            .unwrap_or_else(|| panic!("accepted: {config}"));
        assert!(format!("{err:#}").contains(field), "{field}: {err:#}");
    }
}
