#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Public JWS test vectors (Wycheproof, RFC 7520 cookbook) against the filter's validation logic.
//! The vector files live in `tests/vectors/` at the workspace root (see its README for sources).

use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use meshwasm_jwt_auth::jwks::parse_jwks_value;
use meshwasm_jwt_auth::validate::{Policy, TokenError, verify_jws};
use serde_json::{Value, json};

fn vectors(rel: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/vectors").join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

/// A deliberately permissive policy: every algorithm allowed, so that only key selection (family, JWK
/// alg, kid) and the signature decide.
fn permissive() -> Policy {
    use Algorithm::*;
    Policy {
        algorithms: vec![HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA],
        ..Policy::default()
    }
}

#[test]
fn wycheproof_json_web_signature() {
    let v = vectors("wycheproof/json_web_signature_test.subset.json");
    let mut checked = 0;
    for group in v["testGroups"].as_array().unwrap() {
        let keys = parse_jwks_value(&json!({ "keys": [group["public"].clone()] })).unwrap();
        for t in group["tests"].as_array().unwrap() {
            let jws = t["jws"].as_str().unwrap();
            let res = verify_jws(&permissive(), &keys, jws);
            let id = &t["tcId"];
            match t["result"].as_str().unwrap() {
                "valid" => assert_eq!(res.as_deref(), Ok(&b"foo"[..]), "tcId {id}"),
                _ => assert!(res.is_err(), "tcId {id} ({}) must be rejected", t["comment"]),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 45);
}

#[test]
fn wycheproof_specific_reasons() {
    let v = vectors("wycheproof/json_web_signature_test.subset.json");
    let groups = v["testGroups"].as_array().unwrap();
    let find = |id: u64| -> (Value, String) {
        for g in groups {
            for t in g["tests"].as_array().unwrap() {
                if t["tcId"] == id {
                    return (g["public"].clone(), t["jws"].as_str().unwrap().to_string());
                }
            }
        }
        panic!("tcId {id}");
    };
    let check = |id: u64| {
        let (key, jws) = find(id);
        let keys = parse_jwks_value(&json!({ "keys": [key] })).unwrap();
        verify_jws(&permissive(), &keys, &jws).unwrap_err()
    };
    assert_eq!(check(16), TokenError::AlgNone, "alg none");
    // HS256 token whose HMAC key is the EC public key's bytes: no oct key, so no key fits.
    assert_eq!(check(31), TokenError::NoMatchingKey, "HS/EC confusion");
    // Attacker key embedded as `jwk`: ignored, the configured key does not verify it.
    assert_eq!(check(32), TokenError::BadSignature, "embedded jwk");
    assert_eq!(check(17), TokenError::Malformed, "JSON serialization");
}

#[test]
fn rfc7520_cookbook_jws() {
    for file in [
        "rfc7520/4_1.rsa_v15_signature.json",
        "rfc7520/4_2.rsa-pss_signature.json",
        "rfc7520/4_4.hmac-sha2_integrity_protection.json",
    ] {
        let v = vectors(file);
        let keys = parse_jwks_value(&json!({ "keys": [v["key"].clone()] })).unwrap();
        let compact = v["compact"].as_str().unwrap();
        let payload = verify_jws(&permissive(), &keys, compact).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(payload, v["payload"].as_str().unwrap().as_bytes(), "{file}");
        // Only the algorithms a provider names are accepted.
        let alg = meshwasm_jwt_auth::jwks::parse_alg(v["alg"].as_str().unwrap()).unwrap();
        let others = Policy {
            algorithms: permissive().algorithms.into_iter().filter(|a| *a != alg).collect(),
            ..permissive()
        };
        assert_eq!(verify_jws(&others, &keys, compact).unwrap_err(), TokenError::AlgNotAllowed, "{file}");
        // One flipped signature character fails.
        let mut bad = compact.to_string();
        let last = bad.pop().unwrap();
        bad.push(if last == 'A' { 'B' } else { 'A' });
        assert!(verify_jws(&permissive(), &keys, &bad).is_err(), "{file}");
    }
}

/// PEM keys (SPKI RSA, PKCS#1 RSA, EC P-256, Ed25519) from `tests/keys`, tokens signed by jsonwebtoken.
#[test]
fn pem_keys_of_every_family() {
    use jsonwebtoken::{EncodingKey, Header};
    use meshwasm_jwt_auth::jwks::{KeySet, parse_pem};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let cases = [
        ("rsa1.pem", "rsa1.pub.pem", Algorithm::RS256),
        ("rsa1.pem", "rsa1.pkcs1.pem", Algorithm::PS512),
        ("ec1.pem", "ec1.pub.pem", Algorithm::ES256),
        ("ed1.pem", "ed1.pub.pem", Algorithm::EdDSA),
    ];
    for (private, public, alg) in cases {
        let enc = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(read(private).as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(read(private).as_bytes()),
            _ => EncodingKey::from_rsa_pem(read(private).as_bytes()),
        }
        .unwrap();
        let token = jsonwebtoken::encode(&Header::new(alg), &json!({"sub": "x"}), &enc).unwrap();
        let keys = KeySet { keys: vec![parse_pem(&read(public)).unwrap()], skipped: 0 };
        assert_eq!(verify_jws(&permissive(), &keys, &token).unwrap(), br#"{"sub":"x"}"#, "{public} {alg:?}");
        let mut bad = token.clone();
        bad.insert(bad.rfind('.').unwrap() + 1, 'A');
        assert!(verify_jws(&permissive(), &keys, &bad).is_err());
    }
    assert!(parse_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err());
}
