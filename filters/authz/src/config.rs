//! The plugin configuration, validated once into a [`Plan`]: every pattern parsed, every name
//! checked, and what the policies look at collected ([`Needs`]), so a request reads only that.

use meshwasm_config::{ConfigError, header_name};
use serde::Deserialize;

use crate::pattern::{Cidr, Pattern};
use crate::policy::{Action, Condition, Field, Key, Operation, Policy, Rule, Source};

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    policies: Vec<RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    #[serde(default)]
    action: RawAction,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
enum RawAction {
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
    #[serde(rename = "AUDIT")]
    Audit,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    from: Option<Vec<RawFrom>>,
    #[serde(default)]
    to: Option<Vec<RawTo>>,
    #[serde(default)]
    when: Option<Vec<RawCondition>>,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: RawSource,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: RawOperation,
}

type List = Option<Vec<String>>;

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawSource {
    principals: List,
    not_principals: List,
    trust_domains: List,
    not_trust_domains: List,
    namespaces: List,
    not_namespaces: List,
    service_accounts: List,
    not_service_accounts: List,
    uri_sans: List,
    not_uri_sans: List,
    dns_sans: List,
    not_dns_sans: List,
    subjects: List,
    not_subjects: List,
    certificate_sha256: List,
    not_certificate_sha256: List,
    request_principals: List,
    not_request_principals: List,
    ip_blocks: List,
    not_ip_blocks: List,
}

#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawOperation {
    hosts: List,
    not_hosts: List,
    methods: List,
    not_methods: List,
    paths: List,
    not_paths: List,
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawCondition {
    key: String,
    values: List,
    not_values: List,
}

/// What the policies look at, so the glue reads nothing else per request (`:path` is always read:
/// a path that does not normalize gets a 400 before any policy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Any peer-certificate field: `connection.mtls` (a plaintext connection has no identity), then
    /// the certificate properties below that are set.
    pub peer: bool,
    /// `connection.uri_san_peer_certificate`: principals, trust domains, namespaces, service
    /// accounts (the SPIFFE ID) and raw URI SANs.
    pub uri_san: bool,
    /// `connection.dns_san_peer_certificate`.
    pub dns_san: bool,
    /// `connection.subject_peer_certificate`.
    pub subject: bool,
    /// `connection.sha256_peer_certificate_digest`.
    pub sha256: bool,
    /// The `:method` header.
    pub method: bool,
    /// The `:authority` header (operation hosts).
    pub authority: bool,
    pub source_ip: bool,
    pub request_principal: bool,
    pub request_provider: bool,
    /// Claim names (`meshwasm.jwt.claim.<name>`).
    pub claims: Vec<String>,
    /// Lower-case header names.
    pub headers: Vec<String>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Plan {
    pub policies: Vec<Policy>,
    pub needs: Needs,
    /// Said once at configure time.
    pub warnings: Vec<String>,
}

const MAX_NAME_LEN: usize = 63;

impl Plan {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new("", "the configuration is empty (authz needs `policies`)"));
        }
        let raw: RawConfig = meshwasm_config::from_json(bytes)?;
        let mut needs = Needs::default();
        let mut policies = Vec::with_capacity(raw.policies.len());
        let mut warnings = Vec::new();
        for (i, p) in raw.policies.into_iter().enumerate() {
            let at = format!("policies[{i}]");
            let name_ok = |b: u8| b.is_ascii_alphanumeric() || b"_-".contains(&b);
            if p.name.is_empty() || p.name.len() > MAX_NAME_LEN || !p.name.bytes().all(name_ok) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("`{}` must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 _ -", p.name),
                ));
            }
            if policies.iter().any(|q: &Policy| q.name == p.name) {
                return Err(ConfigError::new(format!("{at}.name"), format!("`{}` is used twice", p.name)));
            }
            let action = match p.action {
                RawAction::Allow => Action::Allow,
                RawAction::Deny => Action::Deny,
                RawAction::Audit => Action::Audit,
            };
            if p.dry_run && action == Action::Audit {
                return Err(ConfigError::new(
                    format!("{at}.dry_run"),
                    "applies to ALLOW and DENY policies (AUDIT decides nothing)",
                ));
            }
            if p.rules.is_empty() {
                warnings.push(format!(
                    "policy `{}` has no rules: it matches no request{}",
                    p.name,
                    if action == Action::Allow {
                        " (an ALLOW policy without rules denies everything)"
                    } else {
                        ""
                    }
                ));
            }
            let mut rules = Vec::with_capacity(p.rules.len());
            for (j, r) in p.rules.into_iter().enumerate() {
                rules.push(rule(&format!("{at}.rules[{j}]"), r, &mut needs)?);
            }
            policies.push(Policy { name: p.name, action, dry_run: p.dry_run, rules });
        }
        if policies.is_empty() {
            warnings.push("no policies: every request is allowed".into());
        }
        Ok(Self { policies, needs, warnings })
    }
}

fn rule(at: &str, r: RawRule, needs: &mut Needs) -> Result<Rule, ConfigError> {
    let mut out = Rule::default();
    if let Some(from) = r.from {
        non_empty(&format!("{at}.from"), from.len())?;
        for (k, f) in from.into_iter().enumerate() {
            out.from.push(source(&format!("{at}.from[{k}].source"), f.source, needs)?);
        }
    }
    if let Some(to) = r.to {
        non_empty(&format!("{at}.to"), to.len())?;
        for (k, t) in to.into_iter().enumerate() {
            out.to.push(operation(&format!("{at}.to[{k}].operation"), t.operation, needs)?);
        }
    }
    if let Some(when) = r.when {
        non_empty(&format!("{at}.when"), when.len())?;
        for (k, c) in when.into_iter().enumerate() {
            out.when.push(condition(&format!("{at}.when[{k}]"), c, needs)?);
        }
    }
    Ok(out)
}

fn non_empty(at: &str, len: usize) -> Result<(), ConfigError> {
    if len == 0 {
        return Err(ConfigError::new(
            at,
            "must not be an empty list (leave the field out to match anything)",
        ));
    }
    Ok(())
}

/// One field pair (`principals`, `not_principals`) parsed with `parse`.
fn field<T>(
    at: &str,
    name: &str,
    any: List,
    not: List,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Field<T>, ConfigError> {
    let list = |field: String, values: List| -> Result<Vec<T>, ConfigError> {
        let Some(values) = values else { return Ok(Vec::new()) };
        non_empty(&format!("{at}.{field}"), values.len())?;
        values
            .iter()
            .enumerate()
            .map(|(i, v)| parse(v).map_err(|e| ConfigError::new(format!("{at}.{field}[{i}]"), e)))
            .collect()
    };
    Ok(Field { any: list(name.to_owned(), any)?, not: list(format!("not_{name}"), not)? })
}

fn plain(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s, false)
}

fn lower(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s, true)
}

/// A principal pattern: Istio's form (`td/ns/a/sa/b`), or a whole SPIFFE ID (`spiffe://` is dropped).
fn principal(s: &str) -> Result<Pattern, String> {
    Pattern::parse(s.strip_prefix("spiffe://").unwrap_or(s), false)
}

fn cidr(s: &str) -> Result<Cidr, String> {
    Cidr::parse(s)
}

/// A path pattern: starts with `/` (or is `*`, `*suffix`), and an exact or prefix path is already
/// normalized — `/a/../b` could never match the normalized path a request is matched on.
fn path(s: &str) -> Result<Pattern, String> {
    let p = Pattern::parse(s, false)?;
    let check = |v: &str, prefix: bool| -> Result<(), String> {
        // A prefix may end in the middle of a segment (`/api/v*`): check it with a stand-in end.
        let probe = if prefix { format!("{v}x") } else { v.to_owned() };
        match meshwasm_path::normalize(&probe) {
            Ok(n) if n == probe => Ok(()),
            Ok(n) => Err(format!(
                "`{s}` is not a normalized path (requests are matched on the normalized path, e.g. `{n}`)"
            )),
            Err(e) => Err(format!("`{s}`: {e}")),
        }
    };
    match &p {
        Pattern::Exact(v) => check(v, false)?,
        Pattern::Prefix(v) => check(v, true)?,
        Pattern::Suffix(v) if v.contains(['?', '#', ';', '\\']) => {
            return Err(format!("`{s}`: a normalized path has no `?`, `#`, `;` or `\\`"));
        }
        _ => {}
    }
    Ok(p)
}

fn source(at: &str, s: RawSource, needs: &mut Needs) -> Result<Source, ConfigError> {
    let out = Source {
        principals: field(at, "principals", s.principals, s.not_principals, principal)?,
        trust_domains: field(at, "trust_domains", s.trust_domains, s.not_trust_domains, plain)?,
        namespaces: field(at, "namespaces", s.namespaces, s.not_namespaces, plain)?,
        service_accounts: field(at, "service_accounts", s.service_accounts, s.not_service_accounts, plain)?,
        uri_sans: field(at, "uri_sans", s.uri_sans, s.not_uri_sans, plain)?,
        dns_sans: field(at, "dns_sans", s.dns_sans, s.not_dns_sans, plain)?,
        subjects: field(at, "subjects", s.subjects, s.not_subjects, plain)?,
        certificate_sha256: field(
            at,
            "certificate_sha256",
            s.certificate_sha256,
            s.not_certificate_sha256,
            lower,
        )?,
        request_principals: field(
            at,
            "request_principals",
            s.request_principals,
            s.not_request_principals,
            plain,
        )?,
        ip_blocks: field(at, "ip_blocks", s.ip_blocks, s.not_ip_blocks, cidr)?,
    };
    let peer = [
        &out.principals,
        &out.trust_domains,
        &out.namespaces,
        &out.service_accounts,
        &out.uri_sans,
        &out.dns_sans,
        &out.subjects,
        &out.certificate_sha256,
    ];
    let any_peer = peer.iter().any(|f| f.is_set());
    if !any_peer && !out.request_principals.is_set() && !out.ip_blocks.is_set() {
        return Err(ConfigError::new(at, "a source must set at least one field"));
    }
    needs.peer |= any_peer;
    needs.uri_san |=
        [&out.principals, &out.trust_domains, &out.namespaces, &out.service_accounts, &out.uri_sans]
            .iter()
            .any(|f| f.is_set());
    needs.dns_san |= out.dns_sans.is_set();
    needs.subject |= out.subjects.is_set();
    needs.sha256 |= out.certificate_sha256.is_set();
    needs.request_principal |= out.request_principals.is_set();
    needs.source_ip |= out.ip_blocks.is_set();
    Ok(out)
}

fn operation(at: &str, o: RawOperation, needs: &mut Needs) -> Result<Operation, ConfigError> {
    let out = Operation {
        hosts: field(at, "hosts", o.hosts, o.not_hosts, lower)?,
        methods: field(at, "methods", o.methods, o.not_methods, plain)?,
        paths: field(at, "paths", o.paths, o.not_paths, path)?,
    };
    if !out.hosts.is_set() && !out.methods.is_set() && !out.paths.is_set() {
        return Err(ConfigError::new(at, "an operation must set at least one field"));
    }
    needs.method |= out.methods.is_set();
    needs.authority |= out.hosts.is_set();
    Ok(out)
}

/// `prefix[<name>]` → `name`.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_suffix(']')
}

fn condition(at: &str, c: RawCondition, needs: &mut Needs) -> Result<Condition, ConfigError> {
    let key_at = format!("{at}.key");
    if c.values.is_none() && c.not_values.is_none() {
        return Err(ConfigError::new(at, "a condition needs `values` or `not_values`"));
    }
    let key = if let Some(name) = bracketed(&c.key, "request.headers[") {
        Key::Header(header_name(&key_at, name)?)
    } else if let Some(name) = bracketed(&c.key, "request.auth.claims[") {
        let ok = |b: u8| b.is_ascii_alphanumeric() || b"_-.:/".contains(&b);
        if name.is_empty() || name.len() > 128 || !name.bytes().all(ok) {
            return Err(ConfigError::new(
                key_at,
                format!(
                    "`{name}` is not a claim name this filter reads (1-128 of A-Z a-z 0-9 _ - . : /; nested claims are not supported)"
                ),
            ));
        }
        Key::Claim(name.to_owned())
    } else {
        match c.key.as_str() {
            "request.auth.principal" => Key::RequestPrincipal,
            "request.auth.provider" => Key::RequestProvider,
            "source.ip" => {
                needs.source_ip = true;
                return Ok(Condition::SourceIp(field(at, "values", c.values, c.not_values, cidr)?));
            }
            other => {
                return Err(ConfigError::new(
                    key_at,
                    format!(
                        "unknown key `{other}` (expected request.headers[<name>], request.auth.principal, \
                         request.auth.provider, request.auth.claims[<name>] or source.ip)"
                    ),
                ));
            }
        }
    };
    match &key {
        Key::Header(h) if !needs.headers.contains(h) => needs.headers.push(h.clone()),
        Key::Claim(n) if !needs.claims.contains(n) => needs.claims.push(n.clone()),
        Key::RequestPrincipal => needs.request_principal = true,
        Key::RequestProvider => needs.request_provider = true,
        _ => {}
    }
    Ok(Condition::Strings(key, field(at, "values", c.values, c.not_values, plain)?))
}

/// The JSON Schema of this filter's configuration, as committed in `schemas/` (the `schema`
/// feature; never in a .wasm build).
#[cfg(feature = "schema")]
pub fn json_schema() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<RawConfig>()
}
