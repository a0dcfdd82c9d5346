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

/// The token's scopes: `scope` and `scp`, each a space-delimited string or an array of strings.
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

/// Whether a claim matcher holds: present (and not null) without a matcher; else the value, or one
/// element of an array, matches.
pub fn claim_ok(claims: &Map<String, Value>, m: &ClaimMatch) -> bool {
    let Some(v) = claim_at(claims, &m.path) else { return false };
    let Some(matcher) = &m.matcher else { return !v.is_null() };
    match v {
        Value::Array(items) => items.iter().filter_map(scalar_string).any(|s| matcher.matches(&s)),
        other => scalar_string(other).is_some_and(|s| matcher.matches(&s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::StringMatch;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn path(p: &str) -> Vec<String> {
        p.split('.').map(String::from).collect()
    }

    #[test]
    fn claim_paths_walk_nested_objects_only() {
        let c = claims(serde_json::json!({"a": {"b": {"c": 1}}, "l": [{"x": 1}], "a.b": "flat"}));
        assert_eq!(claim_at(&c, &path("a.b.c")), Some(&serde_json::json!(1)));
        assert_eq!(claim_at(&c, &path("a.b.d")), None);
        assert_eq!(claim_at(&c, &path("l.x")), None, "arrays are not walked");
        assert_eq!(claim_at(&c, &["a.b".to_string()]), Some(&serde_json::json!("flat")));
        assert_eq!(claim_at(&c, &[]), None);
    }

    #[test]
    fn header_values_are_rendered_and_never_carry_controls() {
        let c = claims(serde_json::json!({"s": "x", "n": 4.5, "b": false, "l": ["a", 1, {"k": "v"}],
            "o": {"k": "v"}, "null": null, "crlf": "a\r\nb", "del": "a\u{7f}b", "tab": "a\tb",
            "bad_list": ["ok", "a\nb"]}));
        let h = |claim: &str, sep: &str| {
            claim_header_value(
                &c,
                &ClaimHeader { header: "x".into(), path: path(claim), separator: sep.into() },
            )
        };
        assert_eq!(h("s", ","), Some("x".into()));
        assert_eq!(h("n", ","), Some("4.5".into()));
        assert_eq!(h("b", ","), Some("false".into()));
        assert_eq!(h("l", "; "), Some(r#"a; 1; {"k":"v"}"#.into()));
        assert_eq!(h("o", ","), Some(r#"{"k":"v"}"#.into()));
        assert_eq!(h("null", ","), None);
        assert_eq!(h("missing", ","), None);
        assert_eq!(h("crlf", ","), None);
        assert_eq!(h("del", ","), None);
        assert_eq!(h("tab", ","), Some("a\tb".into()), "a tab is a legal header character");
        assert_eq!(h("bad_list", ","), None, "a control inside an array element");
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let c = claims(serde_json::json!({"scope": " read  write ", "scp": ["admin", 7]}));
        assert_eq!(token_scopes(&c), vec!["read", "write", "admin"]);
        assert!(token_scopes(&Map::new()).is_empty());
    }

    #[test]
    fn claim_matchers() {
        let c = claims(serde_json::json!({"team": "ops", "groups": ["dev", "ops"], "n": 7, "z": null}));
        let m = |claim: &str, matcher: Option<StringMatch>| {
            claim_ok(&c, &ClaimMatch { path: path(claim), matcher, name: claim.into() })
        };
        assert!(m("team", Some(StringMatch::Exact("ops".into()))));
        assert!(!m("team", Some(StringMatch::Exact("op".into()))));
        assert!(m("groups", Some(StringMatch::Exact("ops".into()))), "one array element suffices");
        assert!(m("n", Some(StringMatch::Exact("7".into()))), "numbers compare as text");
        assert!(m("team", None), "presence");
        assert!(!m("z", None), "null is absent");
        assert!(!m("missing", None));
    }
}
