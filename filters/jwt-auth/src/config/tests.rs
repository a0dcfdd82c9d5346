//! Configuration tests: every field, its defaults, and errors naming the field.
use super::*;

const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

fn cfg(extra: &str) -> String {
    format!(
        r#"{{"providers":{{"p":{{"issuer":"https://iss","algorithms":["HS256"],"local_jwks":{JWKS}{extra}}}}},
           "rules":[{{"match":{{"prefix":"/"}},"requires_any":["p"]}}]}}"#
    )
}

#[test]
fn minimal_config_builds_with_defaults() {
    let plan = Plan::from_json(cfg("").as_bytes()).unwrap();
    let p = &plan.providers[0];
    assert_eq!(p.policy.clock_skew_s, 60);
    assert!(p.policy.check_nbf);
    assert!(
        matches!(&p.sources[0], Source::Header { name, prefix: Some(pre) } if name == "authorization" && pre == "Bearer ")
    );
    assert_eq!(plan.rules[0].providers, vec![0]);
}

#[test]
fn unknown_fields_are_named() {
    let e = Plan::from_json(cfg(r#","isuer":"x""#).as_bytes()).unwrap_err();
    assert!(e.to_string().contains("unknown field `isuer`"), "{e}");
    let e = Plan::from_json(cfg(r#","algorithms":["RS1"]"#).as_bytes()).unwrap_err();
    assert!(e.to_string().contains("duplicate field") || e.to_string().contains("algorithms"), "{e}");
}

#[test]
fn semantic_errors_name_the_field() {
    let e = Plan::from_json(br#"{"providers":{"p":{"issuer":"x"}}}"#).unwrap_err();
    assert!(e.to_string().contains("provider `p`: set local_jwks, pem, remote_jwks or introspection"), "{e}");
    let e = Plan::from_json(br#"{"providers":{"p":{"remote_jwks":{"cluster":"c"}}}}"#).unwrap_err();
    assert!(e.to_string().contains("provider `p`.remote_jwks.uri"), "{e}");
    let e = Plan::from_json(br#"{"providers":{"p":{"remote_jwks":{"cluster":"c","uri":"ftp://x"}}}}"#)
        .unwrap_err();
    assert!(e.to_string().contains("must be an http(s) URL"), "{e}");
    let e = Plan::from_json(format!(r#"{{"providers":{{"p":{{"local_jwks":{JWKS}}}}}}}"#).as_bytes())
        .unwrap_err();
    assert!(e.to_string().contains("list HS256/384/512"), "{e}");
    let bad_rule = r#"{"providers":{"p":{"remote_jwks":{"cluster":"c","uri":"https://h/j"}}},
        "rules":[{"match":{"prefix":"/"},"requires_any":["q"]}]}"#;
    let e = Plan::from_json(bad_rule.as_bytes()).unwrap_err();
    assert!(e.to_string().contains("rules[0].requires: unknown provider `q`"), "{e}");
}

#[test]
fn allow_missing_or_failed_is_parsed_and_checked() {
    let base = r#"{"providers":{"p":{"remote_jwks":{"cluster":"c","uri":"https://h/j"}}},"rules":["#;
    let plan = Plan::from_json(
        format!(
            r#"{base}{{"match":{{"prefix":"/"}},"requires_any":["p"],"allow_missing_or_failed":true}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    assert!(plan.rules[0].allow_missing_or_failed && !plan.rules[0].allow_missing);
    let e = Plan::from_json(
        format!(r#"{base}{{"match":{{"prefix":"/"}},"allow_missing_or_failed":true}}]}}"#).as_bytes(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("rules[0]: scopes, claims, allow_missing and allow_missing_or_failed need"),
        "{e}"
    );
    let e = Plan::from_json(
        format!(
            r#"{base}{{"match":{{"prefix":"/"}},"requires_any":["p"],"allow_missing_or_failed":true,"scopes":["a"]}}]}}"#
        )
        .as_bytes(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("rules[0]: allow_missing_or_failed cannot be combined with scopes"),
        "{e}"
    );
    let e = Plan::from_json(
        format!(r#"{base}{{"match":{{"prefix":"/"}},"requires_any":["p"],"allow_missing_or_failed":1}}]}}"#)
            .as_bytes(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("invalid type"), "{e}");
}

#[test]
fn weak_keys_are_refused_naming_the_field() {
    let with = |algs: &str, keys: &str| {
        Plan::from_json(
            format!(r#"{{"providers":{{"p":{{"issuer":"i","algorithms":{algs},"local_jwks":{{"keys":{keys}}}}}}}}}"#)
                .as_bytes(),
        )
    };
    let k = |bytes: usize| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(vec![7u8; bytes])
    };
    // RFC 7518 §3.2: HS256 ≥ 32 bytes, HS384 ≥ 48, HS512 ≥ 64.
    for (alg, n) in [("HS256", 32), ("HS384", 48), ("HS512", 64)] {
        let ok = format!(r#"[{{"kty":"oct","k":"{}"}}]"#, k(n));
        with(&format!(r#"["{alg}"]"#), &ok).unwrap();
        let short = format!(r#"[{{"kty":"RSA","n":"AQAB","e":"AQAB"}},{{"kty":"oct","k":"{}"}}]"#, k(n - 1));
        let e = with(&format!(r#"["{alg}"]"#), &short).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "provider `p`.local_jwks.keys[1].k: the oct key is {} bytes, {alg} needs at least {n}",
                n - 1
            )),
            "{e}"
        );
    }
    // Without a JWK `alg`, the key must be long enough for every HS* the provider accepts…
    let e = with(r#"["HS256","HS512"]"#, &format!(r#"[{{"kty":"oct","k":"{}"}}]"#, k(32))).unwrap_err();
    assert!(e.to_string().contains("HS512 needs at least 64"), "{e}");
    // …with one, for that algorithm.
    with(r#"["HS256","HS512"]"#, &format!(r#"[{{"kty":"oct","alg":"HS256","k":"{}"}}]"#, k(32))).unwrap();
    let e = with(r#"["HS256"]"#, &format!(r#"[{{"kty":"oct","alg":"HS384","k":"{}"}}]"#, k(32))).unwrap_err();
    assert!(e.to_string().contains("keys[0].k") && e.to_string().contains("HS384 needs at least 48"), "{e}");
    // PEM RSA keys below 2048 bits (a JWK RSA key that small is skipped as unusable).
    let pem = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDH1PQ7ODLVDx7LMu+ao1s+X1UB\nHjag9GbHDGeeRtF8vxfYW3jsbvX9X7QKpozRv7aS8c4yJAd1yZwciREU5vxry0qN\n72yJk4tAT5EyqmWCZkgeMrST6oXTLALkZTIZjEPS5oMjKdSNLBKBa3KVv+6zFgS6\nBE6Ry50kJEcudHapPwIDAQAB\n-----END PUBLIC KEY-----\n";
    let cfg = serde_json::json!({"providers": {"p": {"issuer": "i", "pem": [pem]}}});
    let e = Plan::from_json(cfg.to_string().as_bytes()).unwrap_err();
    assert!(e.to_string().contains("provider `p`.pem[0]: RSA key of 1024 bits is too small"), "{e}");
}

#[test]
fn typ_requirement_and_warnings() {
    let plan = Plan::from_json(cfg(r#","typ":"application/AT+JWT""#).as_bytes()).unwrap();
    assert_eq!(plan.providers[0].policy.typ.as_deref(), Some("AT+JWT"));
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let e = Plan::from_json(cfg(r#","typ":"a t""#).as_bytes()).unwrap_err();
    assert!(e.to_string().contains("provider `p`.typ"), "{e}");
    let e = Plan::from_json(cfg(r#","typ":"application/""#).as_bytes()).unwrap_err();
    assert!(e.to_string().contains("provider `p`.typ"), "{e}");
    // Neither issuer nor audiences: legal, but warned about.
    let plan = Plan::from_json(
        br#"{"providers":{"open":{"remote_jwks":{"cluster":"c","uri":"https://h/j"}},
             "aud":{"audiences":["api"],"remote_jwks":{"cluster":"c","uri":"https://h/j"}}}}"#,
    )
    .unwrap();
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
    assert!(plan.warnings[0].starts_with("provider `open`: neither `issuer` nor `audiences`"));
}

#[test]
fn durations_in_the_new_and_the_deprecated_spelling() {
    let remote = |fields: &str| {
        Plan::from_json(
            format!(
                r#"{{"providers":{{"p":{{"issuer":"i","remote_jwks":{{"cluster":"c","uri":"https://h/j"{fields}}}}}}}}}"#
            )
            .as_bytes(),
        )
    };
    let new = remote(
        r#","timeout":"2s","cache_duration":"5m","max_stale":"1h","unknown_kid_refetch_interval":"10s","retry_interval":"1m""#,
    )
    .unwrap();
    assert!(new.warnings.is_empty(), "{:?}", new.warnings);
    let old = remote(
        r#","timeout_ms":2000,"cache_duration_s":300,"max_stale_s":3600,"unknown_kid_refetch_interval_s":10,"retry_interval_s":60"#,
    )
    .unwrap();
    for plan in [&new, &old] {
        let r = plan.providers[0].remote.as_ref().unwrap();
        assert_eq!(
            (
                r.timeout_ms,
                r.cache_duration_s,
                r.max_stale_s,
                r.unknown_kid_refetch_interval_s,
                r.retry_interval_s
            ),
            (2000, 300, 3600, 10, 60)
        );
    }
    assert_eq!(old.warnings.len(), 5, "{:?}", old.warnings);
    assert!(
        old.warnings[0].starts_with("`providers.p.remote_jwks.timeout_ms` is deprecated"),
        "{:?}",
        old.warnings
    );
    // Top level and provider durations, both spellings.
    let top = |json: &str| Plan::from_json(json.as_bytes());
    let n = top(&cfg(r#","clock_skew":"30s","max_lifetime":"1h""#).replacen(
        "{\"providers\"",
        "{\"cache_max_ttl\":\"10m\",\"key_wait_timeout\":\"500ms\",\"providers\"",
        1,
    ))
    .unwrap();
    let o = top(&cfg(r#","clock_skew_s":30,"max_lifetime_s":3600"#).replacen(
        "{\"providers\"",
        "{\"cache_max_ttl_s\":600,\"key_wait_timeout_ms\":500,\"providers\"",
        1,
    ))
    .unwrap();
    for plan in [&n, &o] {
        assert_eq!((plan.cache_max_ttl_s, plan.key_wait_timeout_ms), (600, 500));
        let pol = &plan.providers[0].policy;
        assert_eq!((pol.clock_skew_s, pol.max_lifetime_s), (30, Some(3600)));
    }
    assert!(n.warnings.is_empty(), "{:?}", n.warnings);
    assert_eq!(o.warnings.len(), 4, "{:?}", o.warnings);
    // Bad values name the field, in either spelling.
    let e = remote(r#","timeout":"2""#).unwrap_err();
    assert_eq!(e.path(), "providers.p.remote_jwks.timeout");
    assert!(e.reason().contains("`2` is not a duration"), "{e}");
    let e = remote(r#","timeout_ms":"2000""#).unwrap_err();
    assert_eq!(
        (e.path(), e.reason()),
        ("providers.p.remote_jwks.timeout_ms", "must be a whole number of milliseconds")
    );
    let e = remote(r#","cache_duration":"1500ms""#).unwrap_err();
    assert_eq!(e.path(), "provider `p`.remote_jwks.cache_duration");
    assert!(e.reason().contains("not a whole number of seconds"), "{e}");
    let e = remote(r#","timeout":"0s""#).unwrap_err();
    assert_eq!(e.path(), "provider `p`.remote_jwks.timeout");
    let e = remote(r#","timeout":"1s","timeout_ms":1000"#).unwrap_err();
    assert!(e.reason().contains("keep only `timeout`"), "{e}");
    let e = top(&cfg(r#","clock_skew":"1500ms""#)).unwrap_err();
    assert_eq!(e.path(), "provider `p`.clock_skew");
}

#[test]
fn introspection_uses_the_rfc_7591_method_names() {
    let with = |fields: &str| {
        Plan::from_json(
            format!(
                r#"{{"providers":{{"p":{{"issuer":"i","introspection":{{"cluster":"c","path":"/i","authority":"a",
                   "client_id":"rs","client_secret":"hunter2"{fields}}}}}}}}}"#
            )
            .as_bytes(),
        )
    };
    use crate::introspection::AuthMethod;
    let method = |p: &Plan| p.providers[0].introspection.as_ref().unwrap().auth_method;
    let p = with(r#","auth_method":"client_secret_post""#).unwrap();
    assert_eq!(method(&p), AuthMethod::ClientSecretPost);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    // jwt-auth's old spellings: accepted for one release, with a warning.
    for (old, m) in [("basic", AuthMethod::ClientSecretBasic), ("post", AuthMethod::ClientSecretPost)] {
        let p = with(&format!(r#","auth_method":"{old}""#)).unwrap();
        assert_eq!(method(&p), m);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(
            p.warnings[0]
                .starts_with(&format!("`providers.p.introspection.auth_method: \"{old}\"` is deprecated"))
        );
    }
    // private_key_jwt signs with a key: a secret as well is refused, naming it.
    let e = with(r#","auth_method":"private_key_jwt""#).unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_secret");
    assert!(e.reason().contains("not used with auth_method private_key_jwt"), "{e}");
    // Durations, both spellings; the secret never shows in the plan's Debug output.
    let n = with(r#","timeout":"1500ms","inactive_ttl":"30s","max_active_ttl":"2m""#).unwrap();
    let o = with(r#","timeout_ms":1500,"inactive_ttl_s":30,"max_active_ttl_s":120"#).unwrap();
    for p in [&n, &o] {
        let i = p.providers[0].introspection.as_ref().unwrap();
        assert_eq!((i.timeout_ms, i.inactive_ttl_s, i.max_active_ttl_s), (1500, 30, 120));
        assert!(!format!("{p:?}").contains("hunter2"));
    }
    assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
    let e = with(r#","timeout":"0s""#).unwrap_err();
    assert_eq!(e.path(), "provider `p`.introspection.timeout");
}

#[test]
fn header_names_use_the_shared_check() {
    let plan = Plan::from_json(
        cfg(r#","from_headers":[{"name":"X-Token"}],"forward_payload_header":"X-Payload!""#).as_bytes(),
    )
    .unwrap();
    assert!(matches!(&plan.providers[0].sources[0], Source::Header { name, .. } if name == "x-token"));
    assert_eq!(plan.providers[0].payload_header.as_deref(), Some("x-payload!"));
    let e = Plan::from_json(cfg(r#","claim_to_headers":[{"header":"x sub","claim":"sub"}]"#).as_bytes())
        .unwrap_err();
    assert_eq!(e.path(), "provider `p`.claim_to_headers[0].header");
}

#[test]
fn discovery_and_remote_paths() {
    let plan = Plan::from_json(
        br#"{"providers":{"p":{"issuer":"https://idp.example.com/realms/a/","remote_jwks":{"cluster":"idp"}}}}"#,
    )
    .unwrap();
    let r = plan.providers[0].remote.as_ref().unwrap();
    assert!(r.discovery);
    assert_eq!(r.authority, "idp.example.com");
    assert_eq!(r.path, "/realms/a/.well-known/openid-configuration");
    assert_eq!(split_url("http://h:8080"), Some(("h:8080".into(), "/".into())));
}

#[test]
fn introspection_client_secret_from_the_environment() {
    let env = |k: &str| (k == "JA_SECRET").then(|| "env-hunter2".to_owned());
    let with = |fields: &str| {
        Plan::from_json_with_env(
            format!(
                r#"{{"providers":{{"p":{{"issuer":"i","introspection":{{"cluster":"c","path":"/i","authority":"a",
                   "client_id":"rs"{fields}}}}}}}}}"#
            )
            .as_bytes(),
            &env,
        )
    };
    let p = with(r#","client_secret_env":"JA_SECRET""#).unwrap();
    let i = p.providers[0].introspection.as_ref().unwrap();
    assert_eq!(i.client_secret.as_ref().unwrap().expose(), "env-hunter2");
    assert!(!format!("{p:?}").contains("env-hunter2"));
    let e = with(r#","client_secret_env":"JA_MISSING""#).unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_secret_env");
    assert!(e.reason().contains("`JA_MISSING` is unset or empty"), "{e}");
    let e = with(r#","client_secret_env":"JA_SECRET","client_secret":"x""#).unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_secret_env");
    let e = with("").unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_secret");
    assert!(!format!("{e} {e:?}").contains("env-hunter2"));
}

#[test]
fn introspection_private_key_jwt_reads_the_key_from_the_environment() {
    let pem = include_str!("../../tests/keys/rsa1.pem");
    let env = |k: &str| (k == "JA_KEY").then(|| pem.to_owned());
    let with = |fields: &str| {
        Plan::from_json_with_env(
            format!(
                r#"{{"providers":{{"p":{{"issuer":"i","introspection":{{"cluster":"c","path":"/i","authority":"a",
                   "client_id":"rs","auth_method":"private_key_jwt"{fields}}}}}}}}}"#
            )
            .as_bytes(),
            &env,
        )
    };
    let p = with(r#","client_assertion":{"private_key_env":"JA_KEY","key_id":"k1"}"#).unwrap();
    let i = p.providers[0].introspection.as_ref().unwrap();
    assert!(i.client_assertion.as_ref().unwrap().key.is_some());
    assert!(i.client_secret.is_none());
    let shown = format!("{p:?}");
    assert!(!shown.contains("PRIVATE KEY") && !shown.contains(&pem[40..80]), "{shown}");
    // Each call carries a new assertion, signed with the key; the Debug of the state shows none.
    let mut state = crate::introspection_state::IntrospectionState::new(i.clone());
    let (_, a) = state.build_request("t1", 5_000, &mut || Some("j1".into())).unwrap();
    let (_, b) = state.build_request("t1", 5_000, &mut || Some("j2".into())).unwrap();
    let (a, b) = (String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
    assert!(a.contains("&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=ey"), "{a}");
    assert_ne!(a, b);
    let e = with(r#","client_assertion":{"private_key_env":"JA_NONE"}"#).unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_assertion.private_key_env");
    assert!(e.reason().contains("`JA_NONE` is unset or empty"), "{e}");
    let e = with("").unwrap_err();
    assert_eq!(e.path(), "provider `p`.introspection.client_assertion", "{e}");
    let e = with(r#","client_assertion":{"private_key_env":"JA_KEY","alg":"ES256"}"#).unwrap_err();
    assert_eq!(e.path(), "providers.p.introspection.client_assertion.private_key_env", "{e}");
    assert!(!format!("{e} {e:?}").contains("PRIVATE"));
}
