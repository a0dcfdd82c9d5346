//! Policy semantics and configuration errors, natively.

use crate::attributes::{Attributes, Peer};
use crate::config::Plan;
use crate::pattern::source_ip;
use crate::policy::{Decision, Verdict, evaluate};

fn plan(json: &str) -> Plan {
    Plan::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

fn err(json: &str) -> (String, String) {
    let e = Plan::from_json(json.as_bytes()).err().unwrap_or_else(|| panic!("accepted: {json}"));
    (e.path().to_owned(), e.reason().to_owned())
}

/// One policy with one rule made of `rule` (a JSON object body).
fn one(action: &str, rule: &str) -> Plan {
    plan(&format!(r#"{{"policies": [{{"name": "p", "action": "{action}", "rules": [{{{rule}}}]}}]}}"#))
}

fn mtls(uri: &str) -> Peer {
    Peer::new(true, Some(uri.into()), None, None, None)
}

fn req(peer: Peer) -> Attributes {
    Attributes {
        method: b"GET".to_vec(),
        path: "/".into(),
        authority: b"orders".to_vec(),
        peer,
        ..Default::default()
    }
}

fn allowed(p: &Plan, a: &Attributes) -> bool {
    evaluate(&p.policies, a).verdict == Verdict::Allow
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const ROGUE: &str = "spiffe://cluster.local/ns/shop/sa/rogue";
const OTHER_TD: &str = "spiffe://evil.example/ns/shop/sa/frontend";

#[test]
fn principals_exact_prefix_suffix_and_any() {
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]"#);
    assert!(allowed(&p, &req(mtls(FRONTEND))));
    assert!(!allowed(&p, &req(mtls(ROGUE))));
    assert!(!allowed(&p, &req(mtls(OTHER_TD))));
    // The whole SPIFFE ID is accepted too.
    let p = one("ALLOW", &format!(r#""from": [{{"source": {{"principals": ["{FRONTEND}"]}}}}]"#));
    assert!(allowed(&p, &req(mtls(FRONTEND))) && !allowed(&p, &req(mtls(ROGUE))));
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["cluster.local/ns/shop/*"]}}]"#);
    assert!(allowed(&p, &req(mtls(ROGUE))) && !allowed(&p, &req(mtls(OTHER_TD))));
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["*/sa/frontend"]}}]"#);
    assert!(allowed(&p, &req(mtls(OTHER_TD))) && !allowed(&p, &req(mtls(ROGUE))));
    // `*`: any SPIFFE principal; a plaintext connection and a non-SPIFFE SAN have none.
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["*"]}}]"#);
    assert!(allowed(&p, &req(mtls(ROGUE))));
    assert!(!allowed(&p, &req(Peer::default())));
    assert!(!allowed(&p, &req(mtls("https://cluster.local/ns/shop/sa/frontend"))));
    assert!(!allowed(&p, &req(Peer::new(false, Some(FRONTEND.into()), None, None, None))));
}

#[test]
fn trust_domain_namespace_and_service_account() {
    let p = one("ALLOW", r#""from": [{"source": {"trust_domains": ["cluster.local"]}}]"#);
    assert!(allowed(&p, &req(mtls(FRONTEND))) && !allowed(&p, &req(mtls(OTHER_TD))));
    let p = one("ALLOW", r#""from": [{"source": {"namespaces": ["shop"]}}]"#);
    assert!(allowed(&p, &req(mtls(FRONTEND))));
    assert!(!allowed(&p, &req(mtls("spiffe://cluster.local/ns/other/sa/frontend"))));
    // Only the ns/<ns>/sa/<sa> form has a namespace.
    assert!(!allowed(&p, &req(mtls("spiffe://cluster.local/shop/frontend"))));
    let p = one("ALLOW", r#""from": [{"source": {"service_accounts": ["shop/frontend"]}}]"#);
    assert!(allowed(&p, &req(mtls(FRONTEND))) && !allowed(&p, &req(mtls(ROGUE))));
    // All fields of a source must match (AND).
    let p = one(
        "ALLOW",
        r#""from": [{"source": {"trust_domains": ["cluster.local"], "service_accounts": ["shop/frontend"]}}]"#,
    );
    assert!(allowed(&p, &req(mtls(FRONTEND))) && !allowed(&p, &req(mtls(OTHER_TD))));
}

#[test]
fn a_san_that_is_not_spiffe_matches_only_raw_san_rules() {
    // Upper-case trust domain: not a SPIFFE ID.
    let bad = "spiffe://Cluster.Local/ns/shop/sa/frontend";
    for rule in [
        r#""principals": ["*"]"#,
        r#""principals": ["Cluster.Local/ns/shop/sa/frontend"]"#,
        r#""trust_domains": ["*"]"#,
        r#""namespaces": ["shop"]"#,
        r#""service_accounts": ["shop/frontend"]"#,
    ] {
        let p = one("ALLOW", &format!(r#""from": [{{"source": {{{rule}}}}}]"#));
        assert!(!allowed(&p, &req(mtls(bad))), "{rule}");
    }
    let p = one("ALLOW", &format!(r#""from": [{{"source": {{"uri_sans": ["{bad}"]}}}}]"#));
    assert!(allowed(&p, &req(mtls(bad))));
    let p = one("ALLOW", r#""from": [{"source": {"uri_sans": ["spiffe://Cluster.Local/*"]}}]"#);
    assert!(allowed(&p, &req(mtls(bad))));
    // A path with `..`: no SPIFFE principal either.
    let dots = "spiffe://cluster.local/ns/shop/sa/../sa/frontend";
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["cluster.local/ns/shop/*"]}}]"#);
    assert!(!allowed(&p, &req(mtls(dots))));
}

#[test]
fn dns_san_subject_and_digest() {
    let peer = Peer::new(
        true,
        None,
        Some("orders.shop.svc".into()),
        Some("CN=orders,O=shop".into()),
        Some("AbCd01".into()),
    );
    for (rule, hit) in [
        (r#""dns_sans": ["*.shop.svc"]"#, true),
        (r#""dns_sans": ["other.svc"]"#, false),
        (r#""subjects": ["CN=orders,*"]"#, true),
        (r#""certificate_sha256": ["ABCD01"]"#, true),
        (r#""certificate_sha256": ["abcd02"]"#, false),
        (r#""not_dns_sans": ["orders.shop.svc"]"#, false),
    ] {
        let p = one("ALLOW", &format!(r#""from": [{{"source": {{{rule}}}}}]"#));
        assert_eq!(allowed(&p, &req(peer.clone())), hit, "{rule}");
    }
}

#[test]
fn not_fields_match_when_no_value_matches_and_when_absent() {
    let p = one("DENY", r#""from": [{"source": {"not_principals": ["cluster.local/ns/shop/sa/frontend"]}}]"#);
    assert!(allowed(&p, &req(mtls(FRONTEND))));
    assert!(!allowed(&p, &req(mtls(ROGUE))));
    assert!(!allowed(&p, &req(Peer::default())), "plaintext: no principal, so not the allowed one");
    let p = one("DENY", r#""from": [{"source": {"not_namespaces": ["shop"]}}]"#);
    assert!(!allowed(&p, &req(mtls("spiffe://cluster.local/ns/x/sa/y"))));
    assert!(allowed(&p, &req(mtls(ROGUE))));
}

#[test]
fn request_principals_from_jwt_auth() {
    let p = one("ALLOW", r#""from": [{"source": {"request_principals": ["https://idp.example/*"]}}]"#);
    let mut a = req(Peer::default());
    assert!(!allowed(&p, &a), "no token: no request principal");
    a.request_principal = Some(b"https://idp.example/alice".to_vec());
    assert!(allowed(&p, &a));
    a.request_principal = Some(b"https://evil.example/alice".to_vec());
    assert!(!allowed(&p, &a));
    let p = one("ALLOW", r#""from": [{"source": {"request_principals": ["*"]}}]"#);
    assert!(allowed(&p, &a));
}

#[test]
fn ip_blocks_on_the_source_address() {
    let p = one("ALLOW", r#""from": [{"source": {"ip_blocks": ["10.0.0.0/8", "2001:db8::/32"]}}]"#);
    let with = |addr: &[u8]| Attributes { source_ip: source_ip(addr), ..req(Peer::default()) };
    assert!(allowed(&p, &with(b"10.1.2.3:5000")));
    assert!(allowed(&p, &with(b"[::ffff:10.1.2.3]:5000")));
    assert!(allowed(&p, &with(b"[2001:db8::7]:1")));
    assert!(!allowed(&p, &with(b"192.0.2.1:5000")));
    assert!(!allowed(&p, &with(b"nonsense")));
    let p = one("DENY", r#""from": [{"source": {"not_ip_blocks": ["10.0.0.0/8"]}}]"#);
    assert!(allowed(&p, &with(b"10.1.2.3:5000")) && !allowed(&p, &with(b"192.0.2.1:1")));
}

#[test]
fn methods_paths_and_hosts() {
    let p = one(
        "ALLOW",
        r#""to": [{"operation": {"methods": ["GET", "HEAD"], "paths": ["/orders/*", "/health"]}}]"#,
    );
    let at = |m: &str, path: &str| Attributes {
        method: m.as_bytes().to_vec(),
        path: path.into(),
        ..req(Peer::default())
    };
    assert!(allowed(&p, &at("GET", "/orders/1")));
    assert!(allowed(&p, &at("HEAD", "/health")));
    assert!(allowed(&p, &at("GET", "/health/")), "exact paths match with one trailing slash");
    assert!(!allowed(&p, &at("POST", "/orders/1")));
    assert!(!allowed(&p, &at("get", "/orders/1")), "methods are case-sensitive");
    assert!(!allowed(&p, &at("GET", "/admin")));
    assert!(!allowed(&p, &at("GET", "/ordersx")));
    let p = one("DENY", r#""to": [{"operation": {"not_methods": ["GET"]}}]"#);
    assert!(allowed(&p, &at("GET", "/")) && !allowed(&p, &at("DELETE", "/")));

    let p = one("ALLOW", r#""to": [{"operation": {"hosts": ["Orders.Shop", "*.example.com"]}}]"#);
    let host = |h: &str| Attributes { authority: h.as_bytes().to_vec(), ..req(Peer::default()) };
    assert!(allowed(&p, &host("orders.shop")));
    assert!(allowed(&p, &host("orders.shop:8080")), "the port is ignored");
    assert!(allowed(&p, &host("api.example.com")));
    assert!(!allowed(&p, &host("orders.shop.evil")));
    assert!(!allowed(&p, &host("example.com")));
    let p = one("DENY", r#""to": [{"operation": {"hosts": ["[::1]"]}}]"#);
    assert!(!allowed(&p, &host("[::1]:80")));
}

#[test]
fn when_conditions_on_headers_claims_principal_provider_and_ip() {
    let with_headers = |pairs: &[(&str, &[&str])]| Attributes {
        headers: pairs
            .iter()
            .map(|(n, vs)| ((*n).to_owned(), vs.iter().map(|v| v.as_bytes().to_vec()).collect()))
            .collect(),
        ..req(Peer::default())
    };
    // exact, prefix, suffix, present.
    for (values, value, hit) in [
        (r#"["v1"]"#, "v1", true),
        (r#"["v1"]"#, "v10", false),
        (r#"["v*"]"#, "v10", true),
        (r#"["*-beta"]"#, "v2-beta", true),
        (r#"["*"]"#, "", true),
    ] {
        let p = one(
            "ALLOW",
            &format!(r#""when": [{{"key": "request.headers[X-Version]", "values": {values}}}]"#),
        );
        assert_eq!(allowed(&p, &with_headers(&[("x-version", &[value])])), hit, "{values} {value}");
        assert!(!allowed(&p, &with_headers(&[])), "absent header never matches values");
    }
    // A repeated header: a DENY on one value is not dodged by sending another first.
    let p = one("DENY", r#""when": [{"key": "request.headers[x-debug]", "values": ["on"]}]"#);
    assert!(!allowed(&p, &with_headers(&[("x-debug", &["off", "on"])])));
    let p = one("DENY", r#""when": [{"key": "request.headers[x-debug]", "not_values": ["*"]}]"#);
    assert!(!allowed(&p, &with_headers(&[])), "not_values [*]: header absent");
    assert!(allowed(&p, &with_headers(&[("x-debug", &["1"])])));

    let mut a = req(Peer::default());
    a.claims = vec![("groups".into(), vec![b"staff".to_vec(), b"admin".to_vec()])];
    let p = one("ALLOW", r#""when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]"#);
    assert!(allowed(&p, &a));
    a.claims.clear();
    assert!(!allowed(&p, &a));
    let p = one("ALLOW", r#""when": [{"key": "request.auth.principal", "values": ["iss/alice"]}]"#);
    a.request_principal = Some(b"iss/alice".to_vec());
    assert!(allowed(&p, &a));
    let p = one("ALLOW", r#""when": [{"key": "request.auth.provider", "values": ["idp"]}]"#);
    assert!(!allowed(&p, &a));
    a.request_provider = Some(b"idp".to_vec());
    assert!(allowed(&p, &a));
    let p = one("ALLOW", r#""when": [{"key": "source.ip", "values": ["192.0.2.0/24"]}]"#);
    a.source_ip = source_ip(b"192.0.2.9:1");
    assert!(allowed(&p, &a));
    a.source_ip = source_ip(b"198.51.100.1:1");
    assert!(!allowed(&p, &a));
}

#[test]
fn from_to_and_when_are_anded_lists_are_ored() {
    let p = one(
        "ALLOW",
        r#""from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}, {"source": {"namespaces": ["admin"]}}],
           "to": [{"operation": {"methods": ["GET"]}}],
           "when": [{"key": "request.headers[x-a]", "values": ["1"]}]"#,
    );
    let mut a = req(mtls(FRONTEND));
    a.headers = vec![("x-a".into(), vec![b"1".to_vec()])];
    assert!(allowed(&p, &a));
    a.peer = mtls("spiffe://cluster.local/ns/admin/sa/x");
    assert!(allowed(&p, &a), "the second source");
    a.method = b"POST".to_vec();
    assert!(!allowed(&p, &a), "`to` must match too");
    a.method = b"GET".to_vec();
    a.headers.clear();
    assert!(!allowed(&p, &a), "`when` must match too");
    // An empty rule matches everything; a policy with no rules matches nothing.
    let p = plan(r#"{"policies": [{"name": "all", "rules": [{}]}]}"#);
    assert!(allowed(&p, &req(Peer::default())));
    let p = plan(r#"{"policies": [{"name": "nothing"}]}"#);
    assert!(!allowed(&p, &req(Peer::default())), "allow-nothing");
    assert!(p.warnings[0].contains("denies everything"), "{:?}", p.warnings);
}

const DENY_ROGUE: &str = r#"{"name": "deny-rogue", "action": "DENY",
    "rules": [{"from": [{"source": {"service_accounts": ["shop/rogue"]}}]}]}"#;
const ALLOW_SHOP: &str = r#"{"name": "allow-shop", "action": "ALLOW",
    "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]}"#;
const ALLOW_FRONTEND: &str = r#"{"name": "allow-frontend", "action": "ALLOW",
    "rules": [{"from": [{"source": {"service_accounts": ["shop/frontend"]}}]}]}"#;

fn policies(list: &[&str]) -> Plan {
    plan(&format!(r#"{{"policies": [{}]}}"#, list.join(",")))
}

fn decide(p: &Plan, peer: Peer) -> Decision {
    evaluate(&p.policies, &req(peer))
}

#[test]
fn deny_first_then_allow_and_none_matching_is_denied() {
    // DENY listed after ALLOW still wins.
    let p = policies(&[ALLOW_SHOP, DENY_ROGUE]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by), (Verdict::Deny, Some(1)));
    let d = decide(&p, mtls(FRONTEND));
    assert_eq!((d.verdict, d.by), (Verdict::Allow, Some(0)));
    // ALLOW policies exist and none matches: denied, by no policy.
    let d = decide(&p, mtls("spiffe://cluster.local/ns/other/sa/x"));
    assert_eq!((d.verdict, d.by), (Verdict::Deny, None));
    let d = decide(&p, Peer::default());
    assert_eq!((d.verdict, d.by), (Verdict::Deny, None));
    // Only DENY policies: what they do not match is allowed.
    let p = policies(&[DENY_ROGUE]);
    assert_eq!(decide(&p, Peer::default()).verdict, Verdict::Allow);
    assert_eq!(decide(&p, mtls(ROGUE)).verdict, Verdict::Deny);
    // No policies: allowed (with a warning).
    let p = plan(r#"{"policies": []}"#);
    assert_eq!(
        decide(&p, Peer::default()),
        Decision { verdict: Verdict::Allow, by: None, dry_run_denied: vec![], audited: vec![] }
    );
    assert!(p.warnings[0].contains("every request is allowed"));
    // The first matching ALLOW policy decides.
    let p = policies(&[ALLOW_FRONTEND, ALLOW_SHOP]);
    assert_eq!(decide(&p, mtls(FRONTEND)).by, Some(0));
    assert_eq!(decide(&p, mtls(ROGUE)).by, Some(1));
}

#[test]
fn dry_run_policies_count_what_they_would_deny_and_let_it_through() {
    let dry_deny = DENY_ROGUE
        .replace(r#""action": "DENY""#, r#""action": "DENY", "dry_run": true"#)
        .replace("deny-rogue", "dry-deny-rogue");
    let p = policies(&[&dry_deny]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by, d.dry_run_denied), (Verdict::Allow, None, vec![0]));
    assert!(decide(&p, mtls(FRONTEND)).dry_run_denied.is_empty());

    // A dry-run ALLOW with no enforced ALLOW: what it does not match would be denied.
    let dry_allow = ALLOW_FRONTEND
        .replace(r#""action": "ALLOW""#, r#""action": "ALLOW", "dry_run": true"#)
        .replace("allow-frontend", "dry-allow-frontend");
    let p = policies(&[&dry_allow]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.dry_run_denied), (Verdict::Allow, vec![0]));
    assert!(decide(&p, mtls(FRONTEND)).dry_run_denied.is_empty());
    // With an enforced ALLOW that matches, the dry-run ALLOW changes nothing.
    let p = policies(&[&dry_allow, ALLOW_SHOP]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by, d.dry_run_denied), (Verdict::Allow, Some(1), vec![]));
    // A request the enforced policies deny is not counted as dry-run denied.
    let p = policies(&[&dry_deny, DENY_ROGUE]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by, d.dry_run_denied), (Verdict::Deny, Some(1), vec![]));
}

#[test]
fn audit_policies_mark_and_decide_nothing() {
    let audit = r#"{"name": "audit-rogue", "action": "AUDIT",
        "rules": [{"from": [{"source": {"service_accounts": ["shop/rogue"]}}]}]}"#;
    let p = policies(&[audit]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by, d.audited), (Verdict::Allow, None, vec![0]));
    let p = policies(&[audit, DENY_ROGUE]);
    let d = decide(&p, mtls(ROGUE));
    assert_eq!((d.verdict, d.by, d.audited), (Verdict::Deny, Some(1), vec![0]));
    assert!(decide(&p, mtls(FRONTEND)).audited.is_empty());
}

#[test]
fn needs_collect_what_policies_read() {
    let p = plan(
        r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"ip_blocks": ["10.0.0.0/8"]}}],
            "when": [{"key": "request.headers[X-A]", "values": ["1"]}, {"key": "request.auth.claims[groups]", "values": ["x"]},
                     {"key": "request.headers[x-a]", "not_values": ["2"]}]}]}]}"#,
    );
    assert!(!p.needs.peer && p.needs.source_ip && !p.needs.request_principal);
    assert_eq!(p.needs.headers, ["x-a"]);
    assert_eq!(p.needs.claims, ["groups"]);
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["*"], "request_principals": ["*"]}}]"#);
    assert!(p.needs.peer && p.needs.request_principal && !p.needs.source_ip);
}

#[test]
fn needs_are_exactly_the_attributes_a_policy_looks_at() {
    use crate::config::Needs;
    // The bench's policy: principals and method + path. The SPIFFE ID comes from the URI SAN, and
    // `connection.mtls` says whether it is trusted; no DNS SAN, subject, digest, host or token.
    let p = plan(
        r#"{"policies": [
        {"name": "deny-rogue", "action": "DENY",
         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/rogue"]}}]}]},
        {"name": "frontend-reads", "action": "ALLOW",
         "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}],
                    "to": [{"operation": {"methods": ["GET"], "paths": ["/*"]}}]}]}]}"#,
    );
    assert_eq!(p.needs, Needs { peer: true, uri_san: true, method: true, ..Needs::default() });
    // A principal-only policy: nothing from the request.
    let p = one("ALLOW", r#""from": [{"source": {"principals": ["cluster.local/ns/shop/sa/frontend"]}}]"#);
    assert_eq!(p.needs, Needs { peer: true, uri_san: true, ..Needs::default() });
    // Every SPIFFE field reads the URI SAN only.
    for f in ["trust_domains", "namespaces", "service_accounts", "uri_sans", "not_principals"] {
        let p = one("DENY", &format!(r#""from": [{{"source": {{"{f}": ["x/y"]}}}}]"#));
        assert_eq!(p.needs, Needs { peer: true, uri_san: true, ..Needs::default() }, "{f}");
    }
    let p = one("DENY", r#""from": [{"source": {"dns_sans": ["a"]}}]"#);
    assert_eq!(p.needs, Needs { peer: true, dns_san: true, ..Needs::default() });
    let p = one("DENY", r#""from": [{"source": {"not_subjects": ["CN=a"]}}]"#);
    assert_eq!(p.needs, Needs { peer: true, subject: true, ..Needs::default() });
    let p = one("DENY", r#""from": [{"source": {"certificate_sha256": ["ab"]}}]"#);
    assert_eq!(p.needs, Needs { peer: true, sha256: true, ..Needs::default() });
    // The request: hosts read `:authority`, methods `:method`; paths nothing more (`:path` is always
    // read); no peer property at all.
    let p = one("ALLOW", r#""to": [{"operation": {"hosts": ["a.example"]}}]"#);
    assert_eq!(p.needs, Needs { authority: true, ..Needs::default() });
    let p = one("ALLOW", r#""to": [{"operation": {"not_methods": ["POST"], "paths": ["/a"]}}]"#);
    assert_eq!(p.needs, Needs { method: true, ..Needs::default() });
    let p = one("ALLOW", r#""to": [{"operation": {"paths": ["/a"]}}]"#);
    assert_eq!(p.needs, Needs::default());
    let p = one("ALLOW", r#""when": [{"key": "request.auth.provider", "values": ["idp"]}]"#);
    assert_eq!(p.needs, Needs { request_provider: true, ..Needs::default() });
}

#[test]
fn bad_configs_name_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "", "empty"),
        ("{}", "", "missing field `policies`"),
        (r#"{"policies": [], "extra": 1}"#, "extra", "unknown field"),
        (r#"{"policies": [{"name": "a", "acton": "DENY"}]}"#, "policies[0].acton", "unknown field"),
        (r#"{"policies": [{"name": "a", "action": "deny"}]}"#, "policies[0].action", "unknown variant"),
        (r#"{"policies": [{"name": "a", "action": "CUSTOM"}]}"#, "policies[0].action", "unknown variant"),
        (r#"{"policies": [{"name": "a b"}]}"#, "policies[0].name", "characters"),
        (r#"{"policies": [{"name": ""}]}"#, "policies[0].name", "characters"),
        (r#"{"policies": [{"name": "a"}, {"name": "a"}]}"#, "policies[1].name", "used twice"),
        (
            r#"{"policies": [{"name": "a", "action": "AUDIT", "dry_run": true}]}"#,
            "policies[0].dry_run",
            "AUDIT",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"form": []}]}]}"#,
            "policies[0].rules[0].form",
            "unknown field",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": []}]}]}"#,
            "policies[0].rules[0].from",
            "empty list",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {}}]}]}]}"#,
            "policies[0].rules[0].from[0].source",
            "at least one field",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"principal": ["x"]}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.principal",
            "unknown field",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"principals": []}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.principals",
            "empty list",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"principals": ["a*b"]}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.principals[0]",
            "first or last",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"from": [{"source": {"not_ip_blocks": ["10.0.0.0/8", "10.0.0.0/40"]}}]}]}]}"#,
            "policies[0].rules[0].from[0].source.not_ip_blocks[1]",
            "prefix length",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"to": [{"operation": {}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation",
            "at least one field",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"to": [{"operation": {"paths": ["/a/../admin"]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.paths[0]",
            "not a normalized path",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"to": [{"operation": {"paths": ["admin"]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.paths[0]",
            "does not start with `/`",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"to": [{"operation": {"not_paths": ["/%61dmin*"]}}]}]}]}"#,
            "policies[0].rules[0].to[0].operation.not_paths[0]",
            "not a normalized path",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"when": [{"key": "request.headers[a b]", "values": ["1"]}]}]}]}"#,
            "policies[0].rules[0].when[0].key",
            "not a valid header name",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"when": [{"key": "request.auth.claims[a][b]", "values": ["1"]}]}]}]}"#,
            "policies[0].rules[0].when[0].key",
            "nested claims",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"when": [{"key": "request.auth.audiences", "values": ["1"]}]}]}]}"#,
            "policies[0].rules[0].when[0].key",
            "unknown key",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"when": [{"key": "source.ip"}]}]}]}"#,
            "policies[0].rules[0].when[0]",
            "`values` or `not_values`",
        ),
        (
            r#"{"policies": [{"name": "a", "rules": [{"when": [{"key": "source.ip", "not_values": ["x"]}]}]}]}"#,
            "policies[0].rules[0].when[0].not_values[0]",
            "not an IP address",
        ),
    ];
    for (json, path, reason) in cases {
        let (p, r) = err(json);
        assert_eq!(&p, path, "{json}: {r}");
        assert!(r.contains(reason), "{json}: {r}");
    }
}
