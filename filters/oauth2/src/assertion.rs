//! `private_key_jwt` (RFC 7523 §2.2, as OpenID Connect Core §9 defines it): the client proves who it
//! is with a JWT it signs with its own private key, sent as `client_assertion` with
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`. The key comes from
//! an environment variable at configure time ([`ClientAssertionConfig::load_key`]); the assertion has
//! `iss` = `sub` = the client id, `aud` = the endpoint, a random `jti`, `iat` and a short `exp`.
//!
//! OpenID Connect Core §9 says an assertion "MUST only be used once, unless conditions for reuse were
//! negotiated between the parties", and common providers (npm oidc-provider, Keycloak) refuse a
//! `jti` they have seen. So by default every request gets a freshly signed assertion; with
//! `reuse: true` (for a server that accepts reuse) one assertion is kept and sent until shortly
//! before its `exp` ([`AssertionSigner::assertion`], with the clock as input).

use std::fmt;

use base64::Engine as _;
use meshwasm_config::{ConfigError, Duration};
use serde::Deserialize;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Signature algorithms for the assertion (asymmetric only: `client_secret_jwt`'s HMAC would put the
/// shared secret back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum AssertionAlg {
    #[default]
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
}

impl AssertionAlg {
    /// The JWS `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            AssertionAlg::RS256 => "RS256",
            AssertionAlg::RS384 => "RS384",
            AssertionAlg::RS512 => "RS512",
            AssertionAlg::PS256 => "PS256",
            AssertionAlg::PS384 => "PS384",
            AssertionAlg::PS512 => "PS512",
            AssertionAlg::ES256 => "ES256",
            AssertionAlg::ES384 => "ES384",
        }
    }

    /// Whether this build has the signer for the algorithm, and if not which `sign-*` feature of
    /// meshwasm-oauth2 (forwarded by the filters as `assertion-*`) has it.
    pub fn built_in(self) -> Result<(), &'static str> {
        match self {
            AssertionAlg::ES256 if !cfg!(sign_es256) => Err("es256"),
            AssertionAlg::ES384 if !cfg!(sign_es384) => Err("es384"),
            AssertionAlg::ES256 | AssertionAlg::ES384 => Ok(()),
            _ if !cfg!(sign_rsa) => Err("rsa"),
            _ => Ok(()),
        }
    }
}

/// A parsed signing key (the RustCrypto primitives, as jwt-auth verifies with: no JOSE library,
/// whose algorithm tables would all be linked into the filter). Only the built signers' variants exist.
#[derive(Clone)]
enum Key {
    #[cfg(sign_rsa)]
    Rsa(rsa::RsaPrivateKey),
    #[cfg(sign_es256)]
    P256(p256::ecdsa::SigningKey),
    #[cfg(sign_es384)]
    P384(p384::ecdsa::SigningKey),
    /// Never made: keeps the type inhabited in a build without any signer.
    #[cfg(not(any(sign_rsa, sign_es256, sign_es384)))]
    #[allow(dead_code)]
    Unbuilt,
}

impl Key {
    fn from_pem(pem: &str, alg: AssertionAlg) -> Option<Key> {
        match alg {
            // Either curve's key is taken, so that a key of the other curve is refused as such
            // (`alg`, by the trial signature) rather than as no key at all.
            #[cfg(any(sign_es256, sign_es384))]
            AssertionAlg::ES256 | AssertionAlg::ES384 => {
                #[cfg(sign_es256)]
                {
                    use p256::pkcs8::DecodePrivateKey as _;
                    let k =
                        p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem));
                    if let Ok(k) = k {
                        return Some(Key::P256(k.into()));
                    }
                }
                #[cfg(sign_es384)]
                {
                    use p384::pkcs8::DecodePrivateKey as _;
                    let k =
                        p384::SecretKey::from_pkcs8_pem(pem).or_else(|_| p384::SecretKey::from_sec1_pem(pem));
                    if let Ok(k) = k {
                        return Some(Key::P384(k.into()));
                    }
                }
                None
            }
            #[cfg(sign_rsa)]
            AssertionAlg::RS256
            | AssertionAlg::RS384
            | AssertionAlg::RS512
            | AssertionAlg::PS256
            | AssertionAlg::PS384
            | AssertionAlg::PS512 => {
                use rsa::pkcs1::DecodeRsaPrivateKey as _;
                use rsa::pkcs8::DecodePrivateKey as _;
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem));
                key.ok().map(Key::Rsa)
            }
            #[allow(unreachable_patterns)]
            _ => {
                let _ = pem;
                None
            }
        }
    }

    /// The JWS signature of `msg` (RFC 7518 §3: PKCS#1 v1.5 or PSS with RSA blinding, ECDSA as
    /// `r || s`), or `None` when the key does not fit `alg`.
    fn sign(&self, alg: AssertionAlg, msg: &[u8]) -> Option<Vec<u8>> {
        #[cfg(any(sign_es256, sign_es384))]
        use p256::ecdsa::signature::Signer as _;
        #[cfg(sign_rsa)]
        use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _};
        #[cfg(sign_rsa)]
        let mut rng = rand_core::OsRng;
        match (self, alg) {
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::RS256) => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::RS384) => rsa::pkcs1v15::SigningKey::<sha2::Sha384>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::RS512) => rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::PS256) => rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::PS384) => rsa::pss::BlindedSigningKey::<sha2::Sha384>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_rsa)]
            (Key::Rsa(k), AssertionAlg::PS512) => rsa::pss::BlindedSigningKey::<sha2::Sha512>::new(k.clone())
                .try_sign_with_rng(&mut rng, msg)
                .ok()
                .map(|s| s.to_vec()),
            #[cfg(sign_es256)]
            (Key::P256(k), AssertionAlg::ES256) => {
                let s: p256::ecdsa::Signature = k.try_sign(msg).ok()?;
                Some(s.to_bytes().to_vec())
            }
            #[cfg(sign_es384)]
            (Key::P384(k), AssertionAlg::ES384) => {
                let s: p384::ecdsa::Signature = k.try_sign(msg).ok()?;
                Some(s.to_bytes().to_vec())
            }
            _ => {
                let _ = msg;
                None
            }
        }
    }
}

/// A private key read from the environment. `Debug` never shows it; two keys compare equal when
/// their PEM text is the same.
#[derive(Clone)]
pub struct PrivateKey {
    pem: crate::Secret,
    key: Key,
}

impl PrivateKey {
    /// The PEM text: only to hash it into an identity (a rotated key must not share state with
    /// the old one), never for a log line.
    pub fn expose_pem(&self) -> &str {
        self.pem.expose()
    }
}

impl PartialEq for PrivateKey {
    fn eq(&self, other: &Self) -> bool {
        self.pem == other.pem
    }
}

impl Eq for PrivateKey {}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted private key>")
    }
}

/// The `client_assertion` settings of `auth_method: "private_key_jwt"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ClientAssertionConfig {
    /// Name of the environment variable holding the PEM private key (PKCS#8, or PKCS#1 / SEC1),
    /// read once at configure time. Pass it to the VM: `vm_config.environment_variables` in
    /// Envoy, `vmConfig.env` in Istio.
    pub private_key_env: String,
    /// `kid` of the assertion's header: the key's id in the JWKS registered for the client.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Signature algorithm (default `RS256`; `ES256`/`ES384` need an EC key).
    #[serde(default)]
    pub alg: AssertionAlg,
    /// The assertion's `aud` (default: the endpoint's URL, `https://<authority><path>`). Some
    /// servers want their issuer identifier here.
    #[serde(default)]
    pub audience: Option<String>,
    /// Lifetime of an assertion, `exp - iat` (default `"60s"`, between 1s and 5m, whole seconds).
    #[serde(default = "default_lifetime")]
    pub lifetime: Duration,
    /// Send one assertion until shortly before its `exp` instead of signing one per request
    /// (default false: OpenID Connect Core §9 allows reuse only when the server agrees to it).
    #[serde(default)]
    pub reuse: bool,
    /// The key itself, read from `private_key_env` by [`ClientAssertionConfig::load_key`].
    #[serde(skip)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub key: Option<PrivateKey>,
}

fn default_lifetime() -> Duration {
    Duration::from_secs(60)
}

/// Longest assertion lifetime accepted.
pub const MAX_LIFETIME_S: u64 = 300;

impl ClientAssertionConfig {
    /// Reads, parses and tries the private key named by `private_key_env` (configure time), and
    /// checks the other fields. `at` is the path of this object (e.g. `client_assertion`). Errors
    /// name the field and the variable, never anything of the key.
    pub fn load_key(&mut self, at: &str, env: crate::Env<'_>) -> Result<(), ConfigError> {
        let field = |name: &str| format!("{at}.{name}");
        if let Err(feature) = self.alg.built_in() {
            return Err(ConfigError::new(
                field("alg"),
                format!(
                    "{:?} is not built into this artifact: build the filter with its `assertion-{feature}` \
                     feature (`make wasm-full` builds every algorithm)",
                    self.alg
                ),
            ));
        }
        let name = self.private_key_env.as_str();
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ConfigError::new(
                field("private_key_env"),
                "must name an environment variable (non-empty, no `=`)",
            ));
        }
        let Some(pem) = env(name).filter(|v| !v.trim().is_empty()) else {
            return Err(ConfigError::new(
                field("private_key_env"),
                format!(
                    "environment variable `{name}` is unset or empty (pass it to the VM: \
                     vm_config.environment_variables, or Istio's vmConfig.env)"
                ),
            ));
        };
        // A PEM passed through a one-line variable often has its line breaks written as `\n`.
        let pem = if pem.contains('\n') { pem } else { pem.replace("\\n", "\n") };
        let kind = match self.alg {
            AssertionAlg::ES256 | AssertionAlg::ES384 => "an EC",
            _ => "an RSA",
        };
        // The parser's error is not shown: it says nothing the user can act on beyond this.
        let Some(key) = Key::from_pem(&pem, self.alg) else {
            return Err(ConfigError::new(
                field("private_key_env"),
                format!("environment variable `{name}` does not hold {kind} private key in PEM form"),
            ));
        };
        // A trial signature: an EC key of another curve, say, only fails when used.
        if key.sign(self.alg, b"meshwasm").is_none() {
            return Err(ConfigError::new(
                field("alg"),
                format!("{:?} cannot sign with the key in `{name}` (wrong key type or curve)", self.alg),
            ));
        }
        if let Some(kid) = &self.key_id
            && (kid.is_empty() || kid.chars().any(char::is_control))
        {
            return Err(ConfigError::new(field("key_id"), "must be non-empty, without control characters"));
        }
        if self.audience.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::new(field("audience"), "must not be empty when set"));
        }
        match self.lifetime.as_whole_secs() {
            Ok(s) if (1..=MAX_LIFETIME_S).contains(&s) => {}
            Ok(_) => return Err(ConfigError::new(field("lifetime"), "must be between 1s and 5m")),
            Err(e) => return Err(ConfigError::new(field("lifetime"), e)),
        }
        self.key = Some(PrivateKey { pem: crate::Secret::new(pem), key });
        Ok(())
    }
}

/// Why no assertion could be had. Never carries the key or an assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// The configuration was not loaded with [`ClientAssertionConfig::load_key`].
    NoKey,
    /// No randomness for the `jti`.
    NoRandomness,
    /// Signing failed.
    Sign(String),
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::NoKey => f.write_str("no private key loaded for private_key_jwt"),
            AssertionError::NoRandomness => f.write_str("no randomness for the client assertion's jti"),
            AssertionError::Sign(kind) => write!(f, "signing the client assertion failed ({kind})"),
        }
    }
}

impl std::error::Error for AssertionError {}

struct Cached {
    jwt: String,
    iat: u64,
    exp: u64,
}

/// Signs client assertions for one client and endpoint; keeps the last one when `reuse` is set.
/// Per worker (it is mutable); `Debug` shows neither the key nor an assertion.
pub struct AssertionSigner {
    client_id: String,
    audience: String,
    alg: AssertionAlg,
    key_id: Option<String>,
    key: Key,
    lifetime_s: u64,
    reuse: bool,
    cached: Option<Cached>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("alg", &self.alg)
            .field("key_id", &self.key_id)
            .field("lifetime_s", &self.lifetime_s)
            .field("reuse", &self.reuse)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: &'a str,
    iat: u64,
    exp: u64,
}

impl AssertionSigner {
    /// A signer for `client_id`; `default_audience` is the endpoint URL, used when the config sets
    /// no `audience`.
    pub fn new(
        cfg: &ClientAssertionConfig,
        client_id: &str,
        default_audience: String,
    ) -> Result<Self, AssertionError> {
        let key = cfg.key.as_ref().ok_or(AssertionError::NoKey)?;
        Ok(AssertionSigner {
            client_id: client_id.to_owned(),
            audience: cfg.audience.clone().unwrap_or(default_audience),
            alg: cfg.alg,
            key_id: cfg.key_id.clone(),
            key: key.key.clone(),
            lifetime_s: cfg.lifetime.as_whole_secs().unwrap_or(60).clamp(1, MAX_LIFETIME_S),
            reuse: cfg.reuse,
            cached: None,
        })
    }

    /// The `aud` the assertions carry.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// How long before its `exp` a kept assertion is replaced: a sixth of the lifetime, at least
    /// 1 s and at most 30 s, so it never reaches the server about to expire.
    pub fn renew_margin_s(&self) -> u64 {
        (self.lifetime_s / 6).clamp(1, 30)
    }

    /// An assertion for a request at `now_s` (Unix seconds): a new one, signed with a `jti` from
    /// `jti`, unless `reuse` is set and the kept one still has more than [`Self::renew_margin_s`]
    /// to live (and was not issued in the future of `now_s`).
    pub fn assertion(
        &mut self,
        now_s: u64,
        jti: &mut dyn FnMut() -> Option<String>,
    ) -> Result<&str, AssertionError> {
        let fresh = self.cached.as_ref().is_some_and(|c| {
            self.reuse && c.iat <= now_s && now_s.saturating_add(self.renew_margin_s()) < c.exp
        });
        if !fresh {
            let jti = jti().ok_or(AssertionError::NoRandomness)?;
            let exp = now_s.saturating_add(self.lifetime_s);
            let claims = Claims {
                iss: &self.client_id,
                sub: &self.client_id,
                aud: &self.audience,
                jti: &jti,
                iat: now_s,
                exp,
            };
            let header = Header { alg: self.alg.name(), typ: "JWT", kid: self.key_id.as_deref() };
            let mut jwt = b64_json(&header)?;
            jwt.push('.');
            jwt.push_str(&b64_json(&claims)?);
            let sig = self
                .key
                .sign(self.alg, jwt.as_bytes())
                .ok_or_else(|| AssertionError::Sign(format!("{} signature", self.alg.name())))?;
            jwt.push('.');
            jwt.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig));
            self.cached = Some(Cached { jwt, iat: now_s, exp });
        }
        match &self.cached {
            Some(c) => Ok(&c.jwt),
            None => Err(AssertionError::NoKey),
        }
    }
}

/// `base64url(JSON(v))`, a JWS header or payload.
fn b64_json<T: serde::Serialize>(v: &T) -> Result<String, AssertionError> {
    let json = serde_json::to_vec(v).map_err(|e| AssertionError::Sign(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
}

/// A random `jti`: 128 bits from the OS (in a filter, WASI `random_get`), base64url.
pub fn random_jti() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    const RSA: &str = include_str!("../../jwt-auth/tests/keys/rsa1.pem");
    const RSA_PUB: &str = include_str!("../../jwt-auth/tests/keys/rsa1.pub.pem");

    fn config(extra: serde_json::Value) -> ClientAssertionConfig {
        let mut v = serde_json::json!({"private_key_env": "K"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        let mut c: ClientAssertionConfig = serde_json::from_value(v).unwrap();
        c.load_key("client_assertion", &|k: &str| (k == "K").then(|| RSA.to_owned())).unwrap();
        c
    }

    fn counter() -> impl FnMut() -> Option<String> {
        let mut n = 0;
        move || {
            n += 1;
            Some(format!("jti-{n}"))
        }
    }

    fn claims(jwt: &str) -> serde_json::Value {
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(RSA_PUB.as_bytes()).unwrap();
        let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v).unwrap().claims
    }

    #[test]
    fn one_use_by_default_every_request_signs_a_new_jti() {
        let mut s =
            AssertionSigner::new(&config(serde_json::json!({})), "svc", "https://idp/token".into()).unwrap();
        let mut jti = counter();
        let a = s.assertion(1000, &mut jti).unwrap().to_owned();
        let b = s.assertion(1000, &mut jti).unwrap().to_owned();
        assert_ne!(a, b);
        let c = claims(&a);
        assert_eq!(
            c,
            serde_json::json!({"iss": "svc", "sub": "svc", "aud": "https://idp/token", "jti": "jti-1",
                               "iat": 1000, "exp": 1060})
        );
        assert_eq!(claims(&b)["jti"], "jti-2");
    }

    #[test]
    fn reuse_keeps_one_assertion_until_shortly_before_exp() {
        let cfg = config(serde_json::json!({"reuse": true, "lifetime": "2m", "audience": "https://issuer"}));
        let mut s = AssertionSigner::new(&cfg, "svc", "https://idp/token".into()).unwrap();
        assert_eq!(s.renew_margin_s(), 20);
        assert_eq!(s.audience(), "https://issuer");
        let mut jti = counter();
        let first = s.assertion(1000, &mut jti).unwrap().to_owned();
        // Kept while more than the margin is left: exp 1120, margin 20 → until 1099.
        for now in [1000, 1050, 1099] {
            assert_eq!(s.assertion(now, &mut jti).unwrap(), first, "at {now}");
        }
        let second = s.assertion(1100, &mut jti).unwrap().to_owned();
        assert_ne!(second, first);
        assert_eq!(claims(&second)["iat"], 1100);
        assert_eq!(claims(&second)["jti"], "jti-2");
        // A clock that went back: never send an assertion issued "in the future".
        let third = s.assertion(1090, &mut jti).unwrap().to_owned();
        assert_eq!(claims(&third)["iat"], 1090);
        // Margins stay sensible for short and long lifetimes.
        let short = AssertionSigner::new(&config(serde_json::json!({"lifetime": "3s"})), "svc", "a".into());
        assert_eq!(short.unwrap().renew_margin_s(), 1);
        let long = AssertionSigner::new(&config(serde_json::json!({"lifetime": "5m"})), "svc", "a".into());
        assert_eq!(long.unwrap().renew_margin_s(), 30);
    }

    #[test]
    fn nothing_shows_the_key_or_an_assertion() {
        let cfg = config(serde_json::json!({"key_id": "k1", "reuse": true}));
        let mut s = AssertionSigner::new(&cfg, "svc", "aud".into()).unwrap();
        let jwt = s.assertion(5, &mut counter()).unwrap().to_owned();
        let shown = format!("{cfg:?} {s:?} {:?}", cfg.key);
        assert!(
            !shown.contains("PRIVATE") && !shown.contains(&RSA[40..90]) && !shown.contains(&jwt),
            "{shown}"
        );
        assert!(shown.contains("<redacted private key>"), "{shown}");
        // No jti, no key: errors say so.
        assert_eq!(s.assertion(1000, &mut || None).unwrap_err(), AssertionError::NoRandomness);
        let unloaded: ClientAssertionConfig =
            serde_json::from_value(serde_json::json!({"private_key_env": "K"})).unwrap();
        assert_eq!(AssertionSigner::new(&unloaded, "svc", "a".into()).unwrap_err(), AssertionError::NoKey);
        assert_eq!(random_jti().map(|j| j.len()), Some(22));
        assert_ne!(random_jti(), random_jti());
    }

    #[test]
    fn every_rsa_algorithm_verifies() {
        for (alg, name) in [
            (Algorithm::RS256, "RS256"),
            (Algorithm::RS384, "RS384"),
            (Algorithm::RS512, "RS512"),
            (Algorithm::PS256, "PS256"),
            (Algorithm::PS384, "PS384"),
            (Algorithm::PS512, "PS512"),
        ] {
            let cfg = config(serde_json::json!({"alg": name, "key_id": "k"}));
            let mut s = AssertionSigner::new(&cfg, "svc", "aud".into()).unwrap();
            let jwt = s.assertion(7, &mut counter()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(RSA_PUB.as_bytes()).unwrap();
            let mut v = jsonwebtoken::Validation::new(alg);
            v.validate_exp = false;
            v.set_audience(&["aud"]);
            let t = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v).unwrap();
            assert_eq!(
                (t.header.alg, t.header.kid.as_deref(), t.claims["sub"].as_str()),
                (alg, Some("k"), Some("svc"))
            );
        }
    }

    #[test]
    fn a_pem_with_escaped_line_breaks_is_accepted() {
        let one_line = RSA.replace('\n', "\\n");
        let mut c: ClientAssertionConfig =
            serde_json::from_value(serde_json::json!({"private_key_env": "K"})).unwrap();
        c.load_key("a", &|_: &str| Some(one_line.clone())).unwrap();
        assert_eq!(c.key, config(serde_json::json!({})).key);
    }
}
