//! A real OpenID Provider for tests: npm `oidc-provider` v8 (tests/oidc/provider.mjs) run by node on a
//! free loopback port, killed on drop.
//!
//! It issues client-credentials access tokens: JWTs signed RS256 or ES256 for the resource indicators
//! `urn:meshwasm:rs256` / `urn:meshwasm:es256` (the `aud` is the resource), opaque tokens for
//! `urn:meshwasm:opaque` or without a resource (introspectable at the RFC 7662 endpoint; oidc-provider
//! does not introspect its JWT access tokens: they report `active: false`; revoked ones too, see
//! [`OidcProvider::revoke`]). Signing keys are generated at start and can be rotated
//! ([`OidcProvider::rotate_keys`]); failures and delays of the token and introspection endpoints can be
//! scripted ([`OidcProvider::fail_token_requests`], [`OidcProvider::delay_introspection_requests`], ...).
//!
//! ```no_run
//! use meshwasm_tests::oidc::{OidcOptions, OidcProvider, BASIC_CLIENT, RS256_RESOURCE};
//! let idp = OidcProvider::start(OidcOptions::default()).unwrap();
//! let token = idp.client_credentials(&BASIC_CLIENT, "read", Some(RS256_RESOURCE)).unwrap();
//! let claims = idp.verify(&token, RS256_RESOURCE).unwrap();
//! assert_eq!(claims["client_id"], "meshwasm-basic");
//! ```
//!
//! Needs `tests/oidc/node_modules` (`make setup-node`, i.e. `npm ci` in tests/oidc).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::artifacts::workspace_root;
use crate::process::{ChildGuard, HttpResponse, http_request, wait_until};

/// Resource indicator whose access tokens are JWTs signed with RS256.
pub const RS256_RESOURCE: &str = "urn:meshwasm:rs256";
/// Resource indicator whose access tokens are JWTs signed with ES256.
pub const ES256_RESOURCE: &str = "urn:meshwasm:es256";
/// Resource indicator whose access tokens are opaque (introspectable).
pub const OPAQUE_RESOURCE: &str = "urn:meshwasm:opaque";

/// How a client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum AuthMethod {
    #[serde(rename = "client_secret_basic")]
    Basic,
    #[serde(rename = "client_secret_post")]
    Post,
}

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub id: &'static str,
    pub secret: &'static str,
    pub method: AuthMethod,
}

/// Default client using `client_secret_basic`.
pub const BASIC_CLIENT: Client =
    Client { id: "meshwasm-basic", secret: "basic-secret", method: AuthMethod::Basic };
/// Default client using `client_secret_post`.
pub const POST_CLIENT: Client =
    Client { id: "meshwasm-post", secret: "post-secret", method: AuthMethod::Post };
/// Default client whose id and secret need form-urlencoding inside Basic credentials (RFC 6749 §2.3.1).
pub const SPECIAL_CLIENT: Client =
    Client { id: "svc:a b", secret: "p@ss:w+rd/%&=", method: AuthMethod::Basic };
/// Default client a resource server uses to call the introspection endpoint.
pub const INTROSPECTION_CLIENT: Client =
    Client { id: "meshwasm-rs", secret: "rs-secret", method: AuthMethod::Basic };

/// A resource server (API) the provider issues tokens for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceServer {
    /// `RS256` or `ES256` (JWT format only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Space-separated scopes the resource server knows.
    pub scope: String,
    /// Access-token lifetime in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// `jwt` or `opaque`.
    pub format: String,
    /// The `aud` value (default: the resource indicator).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl ResourceServer {
    /// A JWT resource server signing with `alg`.
    pub fn jwt(alg: &str) -> Self {
        Self {
            alg: Some(alg.into()),
            scope: "read write admin".into(),
            ttl: None,
            format: "jwt".into(),
            audience: None,
        }
    }

    /// An opaque-token resource server.
    pub fn opaque() -> Self {
        Self {
            alg: None,
            scope: "read write admin".into(),
            ttl: None,
            format: "opaque".into(),
            audience: None,
        }
    }

    /// With this access-token lifetime in seconds.
    pub fn ttl(mut self, seconds: u64) -> Self {
        self.ttl = Some(seconds);
        self
    }
}

/// Options for [`OidcProvider::start`]. The default registers [`BASIC_CLIENT`], [`POST_CLIENT`],
/// [`SPECIAL_CLIENT`] and [`INTROSPECTION_CLIENT`] and the three `urn:meshwasm:*` resources with
/// 600 s tokens.
#[derive(Debug, Clone, Default)]
pub struct OidcOptions {
    /// Replaces the default clients when set.
    pub clients: Option<Vec<Client>>,
    /// Replaces the default resource servers when set.
    pub resources: Option<BTreeMap<String, ResourceServer>>,
    /// Lifetime of tokens issued without a resource indicator (and default for resources), seconds.
    pub token_ttl: Option<u64>,
    /// Clients that authenticate with `private_key_jwt` (RFC 7523), added to the others.
    pub key_clients: Vec<KeyClient>,
}

/// A client registered with `token_endpoint_auth_method: private_key_jwt` and its public keys: it
/// signs client assertions with the private half (also for introspection, whose auth method
/// oidc-provider takes from the token endpoint's).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyClient {
    pub id: String,
    /// The client's JWKS (`{"keys": [public JWK, ...]}`).
    pub jwks: Value,
}

impl OidcOptions {
    /// Sets the default token lifetime (seconds) for all tokens.
    pub fn token_ttl(mut self, seconds: u64) -> Self {
        self.token_ttl = Some(seconds);
        self
    }

    /// Adds (or replaces) a resource server; the defaults are kept.
    pub fn resource(mut self, indicator: &str, rs: ResourceServer) -> Self {
        let map = self.resources.get_or_insert_with(default_resources);
        map.insert(indicator.to_owned(), rs);
        self
    }

    fn to_json(&self) -> Value {
        let mut cfg = serde_json::Map::new();
        if let Some(clients) = &self.clients {
            let list: Vec<Value> = clients
                .iter()
                .map(|c| json!({"client_id": c.id, "client_secret": c.secret, "token_endpoint_auth_method": c.method}))
                .collect();
            cfg.insert("clients".into(), Value::Array(list));
        }
        if let Some(resources) = &self.resources {
            cfg.insert("resources".into(), serde_json::to_value(resources).unwrap_or(Value::Null));
        }
        if let Some(ttl) = self.token_ttl {
            cfg.insert("client_credentials_ttl".into(), json!(ttl));
        }
        if !self.key_clients.is_empty() {
            let list: Vec<Value> = self
                .key_clients
                .iter()
                .map(|c| json!({"client_id": c.id, "token_endpoint_auth_method": "private_key_jwt", "jwks": c.jwks}))
                .collect();
            cfg.insert("extra_clients".into(), Value::Array(list));
        }
        Value::Object(cfg)
    }
}

fn default_resources() -> BTreeMap<String, ResourceServer> {
    BTreeMap::from([
        (RS256_RESOURCE.to_owned(), ResourceServer::jwt("RS256")),
        (ES256_RESOURCE.to_owned(), ResourceServer::jwt("ES256")),
        (OPAQUE_RESOURCE.to_owned(), ResourceServer::opaque()),
    ])
}

/// A successful token-endpoint response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: String,
    pub scope: Option<String>,
}

/// The running provider. Killed on drop.
pub struct OidcProvider {
    child: ChildGuard,
    addr: SocketAddr,
    issuer: String,
}

/// The provider's directory (tests/oidc).
pub fn oidc_dir() -> PathBuf {
    workspace_root().join("tests").join("oidc")
}

impl OidcProvider {
    /// Starts node with tests/oidc/provider.mjs on a free loopback port and waits until the discovery
    /// document is served.
    pub fn start(opts: OidcOptions) -> Result<Self> {
        let dir = oidc_dir();
        if !dir.join("node_modules").join("oidc-provider").is_dir() {
            bail!(
                "meshwasm tests: {}/node_modules is missing: run `make setup-node` (npm ci in tests/oidc)",
                dir.display()
            );
        }
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("provider.mjs")
            .arg("0")
            .env("MESHWASM_OIDC_CONFIG", opts.to_json().to_string());
        let child = ChildGuard::spawn("oidc-provider", cmd)?;
        let mut addr = None;
        wait_until(Duration::from_secs(20), || {
            addr = child
                .logs()
                .lines()
                .find_map(|l| l.strip_prefix("meshwasm-oidc listening on http://"))
                .and_then(|a| a.trim().parse::<SocketAddr>().ok());
            addr.is_some() || !child.is_running()
        });
        let Some(addr) = addr else {
            child.print_tail(50);
            bail!("meshwasm tests: the OpenID Provider did not start (see its log above)");
        };
        let provider = Self { child, addr, issuer: format!("http://{addr}") };
        let discovery = provider.get("/.well-known/openid-configuration")?;
        if discovery.status != 200 {
            bail!("OpenID Provider discovery answered {}: {}", discovery.status, discovery.text());
        }
        Ok(provider)
    }

    /// `http://127.0.0.1:<port>` — also the `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The discovery document URL.
    pub fn discovery_uri(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/token/introspection", self.issuer)
    }

    /// The child-process guard (logs).
    pub fn process(&self) -> &ChildGuard {
        &self.child
    }

    fn get(&self, path: &str) -> Result<HttpResponse> {
        http_request(self.addr, "GET", path, &[("host", &self.authority())], b"", Duration::from_secs(10))
    }

    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<HttpResponse> {
        let authority = self.authority();
        let mut all = vec![("host", authority.as_str())];
        all.extend_from_slice(headers);
        http_request(self.addr, "POST", path, &all, body, Duration::from_secs(10))
    }

    fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// A form POST authenticated as `client` by its method.
    fn client_post(&self, path: &str, client: &Client, params: &[(&str, &str)]) -> Result<HttpResponse> {
        let mut params: Vec<(&str, &str)> = params.to_vec();
        let basic;
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        match client.method {
            AuthMethod::Basic => {
                basic = basic_authorization(client.id, client.secret);
                headers.push(("authorization", basic.as_str()));
            }
            AuthMethod::Post => {
                params.push(("client_id", client.id));
                params.push(("client_secret", client.secret));
            }
        }
        self.post(path, &headers, form_encode(&params).as_bytes())
    }

    /// The raw token-endpoint reply for a client-credentials request.
    pub fn token_request(
        &self,
        client: &Client,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<HttpResponse> {
        let mut params = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            params.push(("scope", scope));
        }
        if let Some(r) = resource {
            params.push(("resource", r));
        }
        self.client_post("/token", client, &params)
    }

    /// Client-credentials grant; the full response.
    pub fn token_response(
        &self,
        client: &Client,
        scope: &str,
        resource: Option<&str>,
    ) -> Result<TokenResponse> {
        let resp = self.token_request(client, scope, resource)?;
        if resp.status != 200 {
            bail!("token endpoint answered {}: {}", resp.status, resp.text());
        }
        let v = resp.json()?;
        Ok(TokenResponse {
            access_token: v["access_token"].as_str().context("no access_token")?.to_owned(),
            expires_in: v["expires_in"].as_u64().context("no expires_in")?,
            token_type: v["token_type"].as_str().unwrap_or_default().to_owned(),
            scope: v["scope"].as_str().map(str::to_owned),
        })
    }

    /// Client-credentials grant: the access token.
    pub fn client_credentials(&self, client: &Client, scope: &str, resource: Option<&str>) -> Result<String> {
        Ok(self.token_response(client, scope, resource)?.access_token)
    }

    /// RFC 7662 introspection of `token`, authenticated as [`INTROSPECTION_CLIENT`].
    pub fn introspect(&self, token: &str) -> Result<Value> {
        let resp = self.client_post("/token/introspection", &INTROSPECTION_CLIENT, &[("token", token)])?;
        if resp.status != 200 {
            bail!("introspection endpoint answered {}: {}", resp.status, resp.text());
        }
        resp.json()
    }

    /// The published JWKS.
    pub fn jwks(&self) -> Result<Value> {
        let resp = self.get("/jwks")?;
        if resp.status != 200 {
            bail!("jwks answered {}", resp.status);
        }
        resp.json()
    }

    /// New RS256 and ES256 signing keys become current; the previous ones stay published.
    /// Returns the published kids, current first.
    pub fn rotate_keys(&self) -> Result<Vec<String>> {
        self.admin_kids("/admin/rotate")
    }

    /// Drops every non-current key from the JWKS. Returns the published kids.
    pub fn retire_old_keys(&self) -> Result<Vec<String>> {
        self.admin_kids("/admin/retire")
    }

    fn admin_kids(&self, path: &str) -> Result<Vec<String>> {
        let resp = self.post(path, &[], b"")?;
        if resp.status != 200 {
            bail!("{path} answered {}", resp.status);
        }
        let v = resp.json()?;
        Ok(v["kids"]
            .as_array()
            .context("no kids")?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect())
    }

    /// The kids currently used for signing: (RS256, ES256).
    pub fn current_kids(&self) -> Result<(String, String)> {
        let v = self.get("/admin/keys")?.json()?;
        let kid = |alg: &str| v["current"][alg].as_str().map(str::to_owned).context("no current kid");
        Ok((kid("RS256")?, kid("ES256")?))
    }

    /// The next `count` token-endpoint requests are answered with `status` and
    /// `{"error":"temporarily_unavailable"}` (count -1: until called again with count 0).
    pub fn fail_token_requests(&self, status: u16, count: i64) -> Result<()> {
        self.admin(&format!("/admin/fail?endpoint=token&status={status}&count={count}"))
    }

    /// Like [`Self::fail_token_requests`], for the introspection endpoint.
    pub fn fail_introspection_requests(&self, status: u16, count: i64) -> Result<()> {
        self.admin(&format!("/admin/fail?endpoint=introspection&status={status}&count={count}"))
    }

    /// Delays every answer of the token endpoint by `delay` (zero: no delay), to script timeouts.
    pub fn delay_token_requests(&self, delay: Duration) -> Result<()> {
        self.admin(&format!("/admin/delay?endpoint=token&ms={}", delay.as_millis()))
    }

    /// Delays every answer of the introspection endpoint by `delay` (zero: no delay).
    pub fn delay_introspection_requests(&self, delay: Duration) -> Result<()> {
        self.admin(&format!("/admin/delay?endpoint=introspection&ms={}", delay.as_millis()))
    }

    fn admin(&self, path_and_query: &str) -> Result<()> {
        let resp = self.post(path_and_query, &[], b"")?;
        if resp.status != 200 {
            bail!("{path_and_query} answered {}: {}", resp.status, resp.text());
        }
        Ok(())
    }

    /// RFC 7009 revocation of `token` by `client` (the client it was issued to): afterwards an opaque
    /// token introspects as inactive.
    pub fn revoke(&self, client: &Client, token: &str) -> Result<()> {
        let resp = self.client_post("/token/revocation", client, &[("token", token)])?;
        if resp.status != 200 {
            bail!("revocation endpoint answered {}: {}", resp.status, resp.text());
        }
        Ok(())
    }

    /// How many requests reached the token endpoint so far.
    pub fn token_request_count(&self) -> Result<u64> {
        self.get("/admin/stats")?.json()?["token_requests"].as_u64().context("no token_requests")
    }

    /// How many requests reached the introspection endpoint so far.
    pub fn introspection_request_count(&self) -> Result<u64> {
        self.get("/admin/stats")?.json()?["introspection_requests"]
            .as_u64()
            .context("no introspection_requests")
    }

    /// Verifies a JWT access token against the provider's current JWKS (signature by kid, issuer,
    /// audience, exp) and returns its claims.
    pub fn verify(&self, token: &str, audience: &str) -> Result<Value> {
        use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, jwk::JwkSet};
        let header = decode_header(token).context("token header")?;
        let kid = header.kid.context("token has no kid")?;
        let set: JwkSet = serde_json::from_value(self.jwks()?)?;
        let jwk = set.find(&kid).with_context(|| format!("kid {kid} is not in the JWKS"))?;
        let key = DecodingKey::from_jwk(jwk)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer()]);
        validation.set_audience(&[audience]);
        let data = decode::<Value>(token, &key, &validation).context("token does not verify")?;
        Ok(data.claims)
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` per RFC 6749 §2.3.1.
pub fn basic_authorization(id: &str, secret: &str) -> String {
    let raw = format!("{}:{}", form_urlencode(id), form_urlencode(secret));
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// `application/x-www-form-urlencoded` encoding of one value (space as `+`).
pub fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A whole form body.
pub fn form_encode(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", form_urlencode(k), form_urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
