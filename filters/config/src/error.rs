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
    serde_json::from_slice(bytes).map_err(|e| located(bytes, &e))
}

/// As [`from_json`], from a document already parsed (after [`crate::Legacy`] rewrote it). It is
/// written out again so that an error has a position to find its path from.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    let bytes = serde_json::to_vec(&value).map_err(|e| ConfigError::new("", e.to_string()))?;
    from_json(&bytes)
}

/// serde_json knows where an error happened (line and column), not in which field. Rather than a
/// path-tracking deserializer (tens of KB of generic code in every filter), the path is recovered
/// by scanning the text up to that position.
fn located(text: &[u8], e: &serde_json::Error) -> ConfigError {
    let message = e.to_string();
    if e.line() == 0 {
        return ConfigError::new("", message);
    }
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let reason = message.strip_suffix(&suffix).unwrap_or(&message);
    ConfigError::new(path_at(text, e.line(), e.column()), reason)
}

enum Level {
    /// The key being read or whose value is being read.
    Object(Option<String>),
    Array(usize),
}

/// The path (`a.b[2].c`) of the value at `line`/`column` (1-based; the column counts bytes, as
/// serde_json's does) of a JSON text: the member or element being read there. An error at a `}` or
/// `]` (such as a missing field) is about the object or array it closes.
fn path_at(text: &[u8], line: usize, column: usize) -> String {
    let mut at = 0;
    for _ in 1..line {
        match text[at..].iter().position(|&b| b == b'\n') {
            Some(nl) => at += nl + 1,
            None => break,
        }
    }
    let end = (at + column.saturating_sub(1)).min(text.len());
    let mut stack: Vec<Level> = Vec::new();
    let mut expect_key = false;
    let mut i = 0;
    while i < end {
        match text[i] {
            b'{' => {
                stack.push(Level::Object(None));
                expect_key = true;
            }
            b'[' => {
                stack.push(Level::Array(0));
                expect_key = false;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
            }
            b',' => match stack.last_mut() {
                Some(Level::Object(key)) => {
                    *key = None;
                    expect_key = true;
                }
                Some(Level::Array(n)) => *n += 1,
                None => {}
            },
            b'"' => {
                let start = i + 1;
                i = start;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if expect_key && let Some(Level::Object(key)) = stack.last_mut() {
                    let raw = text.get(start..i.min(text.len())).unwrap_or_default();
                    *key = Some(String::from_utf8_lossy(raw).into_owned());
                    expect_key = false;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if matches!(text.get(end), Some(b'}' | b']'))
        && let Some(Level::Object(key)) = stack.last_mut()
    {
        *key = None;
    }
    let mut path = String::new();
    for level in &stack {
        match level {
            Level::Object(Some(key)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Level::Object(None) => {}
            Level::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    path
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
    fn paths_across_lines_nesting_and_escapes() {
        let text = b"{\n  \"a\": {\"b\\\"x\": [1, {\"c\": 2}]},\n  \"d\": [[], [3, 4]]\n}";
        // Line 2, at the 2 (inside a.b\"x[1].c).
        let col = text.split(|&b| b == b'\n').nth(1).unwrap().iter().position(|&b| b == b'2').unwrap() + 1;
        assert_eq!(path_at(text, 2, col), "a.b\\\"x[1].c");
        let col = text.split(|&b| b == b'\n').nth(2).unwrap().iter().position(|&b| b == b'4').unwrap() + 1;
        assert_eq!(path_at(text, 3, col), "d[1][1]");
        // Past the end: clamped, never a panic.
        assert_eq!(path_at(text, 99, 99), "");
        assert_eq!(path_at(b"", 1, 1), "");
        assert_eq!(path_at(b"{\"unterminated", 1, 40), "unterminated");
    }

    #[test]
    fn multi_line_documents_as_written_in_envoy_yaml() {
        let text = "{\n  \"name\": \"x\",\n  \"rules\": [\n    { \"prefix\": \"/\" },\n    {\n      \"prefix\": \"/a\",\n      \"weight\": -1\n    }\n  ]\n}\n";
        let e = from_json::<Outer>(text.as_bytes()).unwrap_err();
        assert_eq!(e.path(), "rules[1].weight", "{e}");
        assert!(!e.reason().contains("line"), "the position is replaced by the path: {e}");
        let text = "{\n  \"rules\": [\n    {\"prefix\": \"/\",\n     \"wieght\": 1}]}";
        assert_eq!(from_json::<Outer>(text.as_bytes()).unwrap_err().path(), "rules[0].wieght");
        let text = "{\"rules\": [{\"prefix\": \"/\"}],\n \"name\": [\"x\"]}";
        assert_eq!(from_json::<Outer>(text.as_bytes()).unwrap_err().path(), "name");
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
