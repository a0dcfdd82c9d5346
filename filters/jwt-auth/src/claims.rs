//! Claims as rules and headers see them: a claim path walked through nested objects, a claim rendered
//! as a safe header value, the token's scopes (`scope` or `scp`), and claim matchers. Pure.

use serde_json::{Map, Value};

use crate::config::{ClaimHeader, ClaimMatch};

/// Walks a claim path (`a.b.c`) through nested objects.
pub fn claim_at<'v>(claims: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A claim rendered as a header value; `None` when absent or when it cannot be a safe header value.
pub fn claim_header_value(claims: &Map<String, Value>, ch: &ClaimHeader) -> Option<String> {
    let v = claim_at(claims, &ch.path)?;
    let s = match v {
        Value::Array(items) => {
            let parts: Vec<String> =
                items.iter().map(|i| scalar_string(i).unwrap_or_else(|| i.to_string())).collect();
            parts.join(&ch.separator)
        }
        Value::Object(_) => v.to_string(),
        Value::Null => return None,
        other => scalar_string(other)?,
    };
    // Never let a claim inject header syntax (CR, LF, NUL or other controls).
    if s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) { None } else { Some(s) }
}

pub fn token_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    let mut out = Vec::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split(' ').filter(|x| !x.is_empty())),
            Some(Value::Array(a)) => out.extend(a.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

pub fn claim_ok(claims: &Map<String, Value>, m: &ClaimMatch) -> bool {
    let Some(v) = claim_at(claims, &m.path) else { return false };
    let Some(matcher) = &m.matcher else { return !v.is_null() };
    match v {
        Value::Array(items) => items.iter().filter_map(scalar_string).any(|s| matcher.matches(&s)),
        other => scalar_string(other).is_some_and(|s| matcher.matches(&s)),
    }
}
