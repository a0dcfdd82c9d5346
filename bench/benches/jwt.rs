//! Micro-benchmarks of jwt-auth's native logic: full validation per algorithm (parse, claims,
//! signature) and a verified-token cache hit (the keyed hash of the token, the lookup and the
//! comparison with the stored token), with the same keys and
//! tokens as the Envoy benchmark. The wasm build runs the same code; the Envoy side-by-side rounds
//! show what the VM adds.
//!
//! `cargo bench -p meshwasm-bench --bench jwt`

use std::hint::black_box;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use meshwasm_bench::jwt::{AUDIENCE, Alg, ISSUER, TokenSet};
use meshwasm_jwt_auth::cache::TokenCache;
use meshwasm_jwt_auth::engine::Authenticated;
use meshwasm_jwt_auth::jwks::parse_jwks_value;
use meshwasm_jwt_auth::validate::{Policy, validate};

fn jwt(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let set = TokenSet::generate(dir.path()).unwrap();
    let keys = parse_jwks_value(&serde_json::from_str(&set.jwks_json).unwrap()).unwrap();
    let policy =
        Policy { issuer: Some(ISSUER.into()), audiences: vec![AUDIENCE.into()], ..Policy::default() };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();

    let mut group = c.benchmark_group("jwt-auth");
    for alg in Alg::ALL {
        let token = set.mint(alg, "bench").unwrap();
        validate(&policy, &keys, &token, now).unwrap();
        group.bench_function(format!("validate/{}", alg.name()), |b| {
            b.iter(|| validate(&policy, &keys, black_box(&token), now).unwrap())
        });
    }
    let token = set.mint(Alg::Rs256, "cached").unwrap();
    let mut cache = TokenCache::new(100, 3600);
    let verified = validate(&policy, &keys, &token, now).unwrap();
    let hash = cache.hash(0, &token);
    cache.insert(0, &token, hash, Rc::new(Authenticated { verified, identity: Vec::new().into() }), now);
    group.bench_function("cache-hit", |b| {
        b.iter(|| {
            let token = black_box(token.as_str());
            cache.get(0, token, cache.hash(0, token), now).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
