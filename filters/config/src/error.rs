//! [`ConfigError`] and the deserialization entry points that fill in its field path.

use std::fmt;

use serde::de::DeserializeOwned;

/// A rejected plugin configuration: which field, and why. Displayed as `path: reason` (just the
/// reason when the whole document is at fault). The filter prefixes its own name when it logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    path: String,
    reason: String,
}

impl ConfigError {
    /// `path` is dotted, with `[i]` for list entries: `rules[0].match.prefix`.
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }

    /// The field path; empty when the error is about the whole document.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// An error from a check that reports a plain message starting with the field, `field: reason`
    /// or `field.sub reason` (a dotted, snake_case path), placed under `parent`. A message that does
    /// not start with such a path stays whole, at `parent`.
    pub fn split(parent: &str, message: &str) -> Self {
        let end = message
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c)))
            .unwrap_or(message.len());
        let (field, rest) = message.split_at(end);
        let is_path = field.contains(['_', '.', '[']);
        let reason = match rest.strip_prefix(':') {
            Some(r) if !field.is_empty() => r.trim_start(),
            _ if is_path && rest.starts_with(' ') => rest.trim_start(),
            _ => return Self::new(parent, message),
        };
        Self::new(join(parent, field), reason)
    }

    /// The same error, for a configuration nested under `parent` (`parent.path`).
    pub fn within(mut self, parent: &str) -> Self {
        self.path = join(parent, &self.path);
        self
    }
}

/// `parent.child`, or whichever is non-empty; `[i]` segments attach without a dot.
pub(crate) fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_owned(),
        (_, true) => parent.to_owned(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Deserializes a JSON document; a type error, an unknown field or a bad value names its path.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    // Trailing data after the document is an error too.
    de.end().map_err(|e| ConfigError::new("", e.to_string()))?;
    Ok(value)
}

/// As [`from_json`], from a document already parsed (after [`crate::Legacy`] rewrote it).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

fn path_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = e.path().to_string();
    let path = if path == "." { String::new() } else { path };
    ConfigError::new(path, e.into_inner().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        rules: Vec<Inner>,
        name: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        prefix: String,
        weight: Option<u32>,
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let e = from_json::<Outer>(br#"{"rules": [{"prefix": "/"}, {"prefix": "/a", "weight": "2"}]}"#)
            .unwrap_err();
        assert_eq!(e.path(), "rules[1].weight");
        assert!(e.reason().contains("invalid type: string \"2\""), "{e}");
        assert!(e.to_string().starts_with("rules[1].weight: invalid type"), "{e}");
    }

    #[test]
    fn unknown_and_missing_fields_name_where() {
        let e = from_json::<Outer>(br#"{"rules": [{"prefx": "/"}]}"#).unwrap_err();
        assert_eq!(e.path(), "rules[0].prefx");
        assert!(e.reason().contains("unknown field `prefx`"), "{e}");
        let e = from_json::<Outer>(br#"{"rules": [{}]}"#).unwrap_err();
        assert_eq!(e.path(), "rules[0]");
        assert!(e.reason().contains("missing field `prefix`"), "{e}");
    }

    #[test]
    fn document_errors_have_no_path() {
        let e = from_json::<Outer>(b"not json").unwrap_err();
        assert_eq!(e.path(), "");
        assert!(!e.to_string().starts_with(':'), "{e}");
        let e = from_json::<Outer>(br#"{} {}"#).unwrap_err();
        assert!(e.reason().contains("trailing"), "{e}");
        let e = from_value::<Outer>(serde_json::json!({"name": 1})).unwrap_err();
        assert_eq!(e.path(), "name");
    }

    #[test]
    fn split_finds_the_field_at_the_start_of_a_message() {
        let e = ConfigError::split("services.api", "maglev.table_size 1000 must be a prime");
        assert_eq!((e.path(), e.reason()), ("services.api.maglev.table_size", "1000 must be a prime"));
        let e = ConfigError::split("services[0]", "source.etcd.prefix: must not be empty");
        assert_eq!((e.path(), e.reason()), ("services[0].source.etcd.prefix", "must not be empty"));
        let e = ConfigError::split("s", "endpoints: 10.0.0.1:80 is listed twice");
        assert_eq!((e.path(), e.reason()), ("s.endpoints", "10.0.0.1:80 is listed twice"));
        let e = ConfigError::split("s", "hash_key must list at least one source");
        assert_eq!((e.path(), e.reason()), ("s.hash_key", "must list at least one source"));
        // Prose, not a path: kept whole.
        for msg in ["a service name must have 1 to 253 characters", "Bad thing", "", ": x"] {
            let e = ConfigError::split("s", msg);
            assert_eq!((e.path(), e.reason()), ("s", msg));
        }
    }

    #[test]
    fn within_prefixes_the_path() {
        assert_eq!(ConfigError::new("timeout", "x").within("introspection").path(), "introspection.timeout");
        assert_eq!(ConfigError::new("[2]", "x").within("rules").path(), "rules[2]");
        assert_eq!(ConfigError::new("", "x").within("a").path(), "a");
        assert_eq!(ConfigError::new("a", "x").within("").path(), "a");
        assert_eq!(ConfigError::new("a.b", "bad").to_string(), "a.b: bad");
    }
}
