//! Signing keys, the JWKS both Envoy's jwt_authn and meshwasm jwt-auth verify against, and the tokens
//! the load sends: one repeated token per algorithm, and a file of unique tokens for the cache-miss case.
//!
//! Keys come from `openssl genpkey` (fresh per run; nothing secret is committed), tokens from
//! `jsonwebtoken`. Every token carries the same claims shape: `iss`, `aud`, `sub`, `iat`, `exp` (+1 day)
//! and a `jti` that makes each unique token different.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The issuer both verifiers require.
pub const ISSUER: &str = "https://issuer.bench.meshwasm.test";
/// The audience both verifiers require.
pub const AUDIENCE: &str = "meshwasm-bench";
/// The subject of every token (the whole chain's authz allows `<ISSUER>/<SUBJECT>`).
pub const SUBJECT: &str = "bench-user";

/// The signature algorithms the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    pub const ALL: [Alg; 2] = [Alg::Rs256, Alg::Es256];

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    /// Lower-case, for configuration names.
    pub fn slug(self) -> &'static str {
        match self {
            Alg::Rs256 => "rs256",
            Alg::Es256 => "es256",
        }
    }

    fn kid(self) -> &'static str {
        match self {
            Alg::Rs256 => "bench-rsa-2048",
            Alg::Es256 => "bench-p256",
        }
    }

    fn jwt_alg(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }
}

/// One signing key with its public JWK.
pub struct SigningKey {
    pub alg: Alg,
    encoding: EncodingKey,
    pub jwk: Jwk,
}

/// Keys for every algorithm, the JWKS holding all their public halves, and token files.
pub struct TokenSet {
    pub keys: Vec<SigningKey>,
    /// `{"keys":[...]}` with both public keys (each with `kid`, `alg`, `use: sig`).
    pub jwks_json: String,
    dir: PathBuf,
}

impl TokenSet {
    /// Generates one RSA-2048 and one P-256 key in `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let mut keys = Vec::new();
        for alg in Alg::ALL {
            let pem_path = dir.join(format!("{}.pem", alg.slug()));
            let mut cmd = Command::new("openssl");
            cmd.arg("genpkey");
            match alg {
                Alg::Rs256 => cmd.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                Alg::Es256 => cmd.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
            };
            let out =
                cmd.arg("-out").arg(&pem_path).output().context("meshwasm bench: running openssl genpkey")?;
            if !out.status.success() {
                bail!("meshwasm bench: openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let pem = std::fs::read(&pem_path)?;
            let encoding = match alg {
                Alg::Rs256 => EncodingKey::from_rsa_pem(&pem)?,
                Alg::Es256 => EncodingKey::from_ec_pem(&pem)?,
            };
            let mut jwk = Jwk::from_encoding_key(&encoding, alg.jwt_alg())
                .with_context(|| format!("meshwasm bench: JWK of the {} key", alg.name()))?;
            jwk.common.key_id = Some(alg.kid().to_owned());
            jwk.common.public_key_use = Some(PublicKeyUse::Signature);
            jwk.common.key_algorithm = Some(match alg {
                Alg::Rs256 => KeyAlgorithm::RS256,
                Alg::Es256 => KeyAlgorithm::ES256,
            });
            keys.push(SigningKey { alg, encoding, jwk });
        }
        let set = JwkSet { keys: keys.iter().map(|k| k.jwk.clone()).collect() };
        Ok(Self { keys, jwks_json: serde_json::to_string(&set)?, dir: dir.to_owned() })
    }

    fn key(&self, alg: Alg) -> Result<&SigningKey> {
        self.keys.iter().find(|k| k.alg == alg).context("no key for algorithm")
    }

    /// A signed token; `jti` makes it unique.
    pub fn mint(&self, alg: Alg, jti: &str) -> Result<String> {
        let key = self.key(alg)?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut header = Header::new(alg.jwt_alg());
        header.kid = Some(alg.kid().to_owned());
        let claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": SUBJECT,
            "iat": now,
            "exp": now + 24 * 3600,
            "jti": jti,
        });
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
    }

    /// Writes `n` unique tokens (one per line) for `alg` and returns the file's path.
    /// RSA signing dominates: about 1 ms per token on this class of machine.
    pub fn unique_token_file(&self, alg: Alg, n: usize) -> Result<PathBuf> {
        let path = self.dir.join(format!("tokens-{}.txt", alg.slug()));
        let mut text = String::with_capacity(n * 700);
        for i in 0..n {
            text.push_str(&self.mint(alg, &format!("u{i}"))?);
            text.push('\n');
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_verify_against_the_published_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let set = TokenSet::generate(dir.path()).unwrap();
        let jwks: JwkSet = serde_json::from_str(&set.jwks_json).unwrap();
        assert_eq!(jwks.keys.len(), 2);
        for alg in Alg::ALL {
            let token = set.mint(alg, "t1").unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
            let mut v = Validation::new(alg.jwt_alg());
            v.set_audience(&[AUDIENCE]);
            v.set_issuer(&[ISSUER]);
            let data =
                jsonwebtoken::decode::<serde_json::Value>(&token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
                    .unwrap();
            assert_eq!(data.claims["jti"], "t1");
            assert_ne!(token, set.mint(alg, "t2").unwrap());
        }
    }
}
