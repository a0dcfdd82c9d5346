//! [`header_name`]: the one check of a header name a configuration gives.

use crate::ConfigError;

/// Checks a header name from the configuration and returns it lower-cased (the form Envoy hands
/// to filters, so it compares equal to what a request carries). A name is 1 to 256 RFC 9110 token
/// characters; pseudo-headers (`:path`) are refused.
pub fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > 256 || !name.bytes().all(tchar) {
        return Err(ConfigError::new(
            path,
            format!(
                "`{name}` is not a valid header name (1-256 RFC 9110 token characters, no pseudo-headers)"
            ),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_tokens_lowercased() {
        assert_eq!(header_name("h", "X-Forwarded-User").unwrap(), "x-forwarded-user");
        assert_eq!(header_name("h", "x_meshwasm.v1~!#$%&'*+^`|").unwrap(), "x_meshwasm.v1~!#$%&'*+^`|");
    }

    #[test]
    fn refuses_non_tokens_naming_the_field() {
        for bad in [
            "",
            ":authority",
            "x y",
            "x:y",
            "x\r\ny",
            "ü",
            "a\"b",
            "a/b",
            "a(b)",
            "a,b",
            "a;b",
            "a=b",
            "a@b",
            "a\\b",
        ] {
            let e = header_name("rules[0].header", bad).unwrap_err();
            assert_eq!(e.path(), "rules[0].header", "{bad:?}");
            assert!(e.reason().contains("is not a valid header name"), "{bad:?}: {e}");
        }
        assert!(header_name("h", &"x".repeat(257)).is_err());
        assert!(header_name("h", &"x".repeat(256)).is_ok());
    }
}
