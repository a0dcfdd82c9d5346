//! Policies as evaluated, and the decision (Istio's AuthorizationPolicy semantics).
//!
//! - A policy matches a request when any of its rules does; a rule matches when its `from` (any
//!   source) and its `to` (any operation) and every `when` condition match; an absent part matches.
//! - Within a source, operation or condition every field that is set must match: a positive field
//!   when some value of the attribute matches some pattern, a `not_` field when none does (so an
//!   absent attribute never matches a positive field, and always matches a `not_` one).
//! - DENY policies first: one that matches denies. Then ALLOW: when any ALLOW policy exists, a
//!   request that matches none is denied. No ALLOW policy: allowed.
//! - `dry_run` policies decide nothing; the decision they would make is computed as well, and
//!   counted and logged when it would deny a request that is allowed. AUDIT policies only mark the
//!   requests they match.

use std::net::IpAddr;

use crate::attributes::Attributes;
use crate::pattern::{Cidr, Pattern};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
    Audit,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub action: Action,
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

/// Positive and negative patterns of one field; empty lists are fields that are not set.
#[derive(Debug, Clone)]
pub struct Field<T> {
    pub any: Vec<T>,
    pub not: Vec<T>,
}

impl<T> Default for Field<T> {
    fn default() -> Self {
        Self { any: Vec::new(), not: Vec::new() }
    }
}

impl<T> Field<T> {
    pub fn is_set(&self) -> bool {
        !self.any.is_empty() || !self.not.is_empty()
    }

    /// Matches the attribute's `values` with `hit(pattern, value)`.
    fn matches<'v, V: 'v + ?Sized>(
        &self,
        values: impl Iterator<Item = &'v V> + Clone,
        hit: impl Fn(&T, &V) -> bool,
    ) -> bool {
        let any_hit = |pats: &[T]| values.clone().any(|v| pats.iter().any(|p| hit(p, v)));
        (self.any.is_empty() || any_hit(&self.any)) && (self.not.is_empty() || !any_hit(&self.not))
    }
}

/// An attribute with at most one value.
fn one(v: Option<&str>) -> std::option::IntoIter<&[u8]> {
    v.map(str::as_bytes).into_iter()
}

fn pat(p: &Pattern, v: &[u8]) -> bool {
    p.matches(v)
}

/// Who is calling: the peer of the mTLS connection, the token, the address.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// SPIFFE IDs without `spiffe://` (`td/ns/a/sa/b`).
    pub principals: Field<Pattern>,
    pub trust_domains: Field<Pattern>,
    pub namespaces: Field<Pattern>,
    /// `<ns>/<sa>`.
    pub service_accounts: Field<Pattern>,
    /// Raw SANs, SPIFFE or not.
    pub uri_sans: Field<Pattern>,
    pub dns_sans: Field<Pattern>,
    pub subjects: Field<Pattern>,
    pub certificate_sha256: Field<Pattern>,
    pub request_principals: Field<Pattern>,
    pub ip_blocks: Field<Cidr>,
}

impl Source {
    fn matches(&self, a: &Attributes) -> bool {
        let peer = &a.peer;
        let id = peer.spiffe.as_ref();
        self.principals.matches(one(id.map(|i| i.principal.as_str())), pat)
            && self.trust_domains.matches(one(id.map(|i| i.trust_domain())), pat)
            && self.namespaces.matches(one(id.and_then(|i| i.namespace())), pat)
            && (!self.service_accounts.is_set()
                || self.service_accounts.matches(one(id.and_then(|i| i.service_account()).as_deref()), pat))
            && self.uri_sans.matches(one(peer.uri_san.as_deref()), pat)
            && self.dns_sans.matches(one(peer.dns_san.as_deref()), pat)
            && self.subjects.matches(one(peer.subject.as_deref()), pat)
            && self.certificate_sha256.matches(one(peer.sha256.as_deref()), pat)
            && self.request_principals.matches(a.request_principal.as_deref().into_iter(), pat)
            && self.ip_blocks.matches(a.source_ip.iter(), |c: &Cidr, ip: &IpAddr| c.contains(*ip))
    }
}

/// What is asked: method, normalized path, host.
#[derive(Debug, Clone, Default)]
pub struct Operation {
    pub hosts: Field<Pattern>,
    pub methods: Field<Pattern>,
    pub paths: Field<Pattern>,
}

/// The host part of a lower-cased authority (`example.com:8080` → `example.com`, `[::1]:80` →
/// `[::1]`); `None` when there is no port.
fn without_port(authority: &[u8]) -> Option<&[u8]> {
    let colon = authority.iter().rposition(|&b| b == b':')?;
    let (host, port) = (&authority[..colon], &authority[colon + 1..]);
    let bracketed_or_plain = !host.contains(&b':') || (host.starts_with(b"[") && host.ends_with(b"]"));
    (bracketed_or_plain && !port.is_empty() && port.iter().all(u8::is_ascii_digit)).then_some(host)
}

/// A path pattern on the normalized path: an exact one also matches with or without one trailing
/// `/`, as jwt-auth's rules do (upstreams route `/admin/` to `/admin`).
fn path_hit(p: &Pattern, path: &[u8]) -> bool {
    match (p, std::str::from_utf8(path)) {
        (Pattern::Exact(e), Ok(path)) => meshwasm_path::exact_matches(path, e),
        _ => p.matches(path),
    }
}

impl Operation {
    fn matches(&self, a: &Attributes) -> bool {
        let host = without_port(&a.authority);
        let hosts = std::iter::once(a.authority.as_slice()).chain(host);
        self.hosts.matches(hosts, pat)
            && self.methods.matches(std::iter::once(a.method.as_slice()), pat)
            && self.paths.matches(std::iter::once(a.path.as_bytes()), path_hit)
    }
}

/// The attribute a `when` condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `request.headers[<name>]` (lower-case name).
    Header(String),
    /// `request.auth.principal`.
    RequestPrincipal,
    /// `request.auth.provider`.
    RequestProvider,
    /// `request.auth.claims[<name>]`.
    Claim(String),
}

#[derive(Debug, Clone)]
pub enum Condition {
    Strings(Key, Field<Pattern>),
    /// `source.ip`: values are IP blocks.
    SourceIp(Field<Cidr>),
}

impl Condition {
    fn matches(&self, a: &Attributes) -> bool {
        match self {
            Self::SourceIp(f) => f.matches(a.source_ip.iter(), |c: &Cidr, ip: &IpAddr| c.contains(*ip)),
            Self::Strings(key, f) => match key {
                Key::Header(name) => f.matches(a.header(name).iter().map(Vec::as_slice), pat),
                Key::Claim(name) => f.matches(a.claim(name).iter().map(Vec::as_slice), pat),
                Key::RequestPrincipal => f.matches(a.request_principal.as_deref().into_iter(), pat),
                Key::RequestProvider => f.matches(a.request_provider.as_deref().into_iter(), pat),
            },
        }
    }
}

impl Rule {
    fn matches(&self, a: &Attributes) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(a)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(a)))
            && self.when.iter().all(|c| c.matches(a))
    }
}

impl Policy {
    /// Whether any rule matches (a policy without rules matches nothing).
    pub fn matches(&self, a: &Attributes) -> bool {
        self.rules.iter().any(|r| r.matches(a))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// The outcome for one request; policies are named by their index in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The policy that decided: the DENY policy that matched, or the ALLOW policy that matched.
    /// `None` when no policy applies (allowed) or when ALLOW policies exist and none matched (denied).
    pub by: Option<usize>,
    /// Dry-run policies that would have denied this allowed request.
    pub dry_run_denied: Vec<usize>,
    /// AUDIT policies that matched.
    pub audited: Vec<usize>,
}

/// Decides on a request.
pub fn evaluate(policies: &[Policy], a: &Attributes) -> Decision {
    let mut deny_by = None;
    let mut allow_by = None;
    let mut has_allow = false;
    let mut dry_deny = Vec::new();
    let mut dry_allow = Vec::new();
    let mut dry_allow_matched = false;
    let mut audited = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        match (p.action, p.dry_run) {
            (Action::Audit, _) => {
                if p.matches(a) {
                    audited.push(i);
                }
            }
            (Action::Deny, false) => {
                if deny_by.is_none() && p.matches(a) {
                    deny_by = Some(i);
                }
            }
            (Action::Allow, false) => {
                has_allow = true;
                if deny_by.is_none() && allow_by.is_none() && p.matches(a) {
                    allow_by = Some(i);
                }
            }
            (Action::Deny, true) => {
                if p.matches(a) {
                    dry_deny.push(i);
                }
            }
            (Action::Allow, true) => {
                dry_allow.push(i);
                dry_allow_matched = dry_allow_matched || p.matches(a);
            }
        }
    }
    let (verdict, by) = match (deny_by, has_allow, allow_by) {
        (Some(i), _, _) => (Verdict::Deny, Some(i)),
        (None, true, Some(i)) => (Verdict::Allow, Some(i)),
        (None, true, None) => (Verdict::Deny, None),
        (None, false, _) => (Verdict::Allow, None),
    };
    // What the dry-run policies would add to an allowed request: a DENY that matches, or (when
    // no enforced ALLOW policy exists) dry-run ALLOW policies none of which matches.
    let dry_run_denied = match verdict {
        Verdict::Deny => Vec::new(),
        Verdict::Allow if !dry_deny.is_empty() => dry_deny,
        Verdict::Allow if !has_allow && !dry_allow.is_empty() && !dry_allow_matched => dry_allow,
        Verdict::Allow => Vec::new(),
    };
    Decision { verdict, by, dry_run_denied, audited }
}
