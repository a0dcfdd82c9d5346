//! `WWW-Authenticate: Bearer` challenges exactly per RFC 6750 §3.
//!
//! - No token in the request: `Bearer realm="…"` only, no `error` attribute (§3.1).
//! - A token that fails validation: 401 with `error="invalid_token"` and an `error_description`.
//! - A credential that is malformed or repeated: 401 with `error="invalid_request"`.
//! - A valid token without the required scope: 403 with `error="insufficient_scope"` and `scope="…"`.

/// Which challenge to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge<'a> {
    /// No credentials were sent.
    Missing,
    /// A token was sent but is not acceptable.
    InvalidToken(&'a str),
    /// The credential is malformed or sent more than once (RFC 6750 §3.1 `invalid_request`).
    InvalidRequest(&'a str),
    /// The token is valid but lacks scopes or claims the route requires.
    InsufficientScope { description: &'a str, scope: &'a str },
}

/// Quoted-string content for an auth-param: RFC 6750 limits error_description and scope to printable
/// ASCII without `"` and `\`, so anything else is replaced rather than escaped.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if (' '..='~').contains(&c) && c != '"' && c != '\\' { c } else { '?' }).collect()
}

/// The header value.
pub fn www_authenticate(realm: &str, challenge: &Challenge<'_>) -> String {
    let realm = sanitize(realm);
    match challenge {
        Challenge::Missing => format!("Bearer realm=\"{realm}\""),
        Challenge::InvalidToken(d) => {
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                sanitize(d)
            )
        }
        Challenge::InvalidRequest(d) => {
            format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{}\"",
                sanitize(d)
            )
        }
        Challenge::InsufficientScope { description, scope } => {
            let mut v = format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"{}\"",
                sanitize(description)
            );
            if !scope.is_empty() {
                v.push_str(&format!(", scope=\"{}\"", sanitize(scope)));
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_values() {
        assert_eq!(www_authenticate("api", &Challenge::Missing), r#"Bearer realm="api""#);
        assert_eq!(
            www_authenticate("api", &Challenge::InvalidToken("token has expired")),
            r#"Bearer realm="api", error="invalid_token", error_description="token has expired""#
        );
        assert_eq!(
            www_authenticate(
                "api",
                &Challenge::InsufficientScope { description: "scope required", scope: "read write" }
            ),
            r#"Bearer realm="api", error="insufficient_scope", error_description="scope required", scope="read write""#
        );
        assert_eq!(www_authenticate("a\"b\\", &Challenge::Missing), r#"Bearer realm="a?b?""#);
    }
}
