//! meshwasm-path: the request path that route rules match, shared by every filter that decides on a
//! path (jwt-auth rules, the balancer's `route` service selection, and authz).
//!
//! A rule on `/admin` must hold however a client spells `/admin`: `/%61dmin`, `//admin`,
//! `/public/../admin` and `/public/%2e%2e/admin` all reach `/admin` in common upstreams (Go, Tomcat,
//! Spring). [`normalize`] turns the raw `:path` into the one form rules see:
//!
//! - the query (from `?`) is excluded;
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the hex digits of
//!   every other escape are upper-cased (RFC 3986 §6.2.2.1 and §6.2.2.2);
//! - runs of `/` are merged into one;
//! - `.` and `..` segments are removed (RFC 3986 §5.2.4; `..` never climbs above the root).
//!
//! Paths that upstreams read in different ways are refused instead ([`PathError`]), as Envoy refuses
//! them with `path_with_escaped_slashes_action: REJECT_REQUEST`: an encoded `/` or `\`, a raw `\`,
//! path parameters (`;`), a fragment (`#`), bad percent-encoding, an encoded NUL or control character,
//! bytes outside visible ASCII, and a path that does not start with `/`. The filters answer these
//! with 400 and never forward them.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused. Each is a path that some upstream would read differently from the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Empty, or not starting with `/` (`*`, an absolute URI, a relative path).
    NotAbsolute,
    /// `%2F` or `%5C`: some upstreams decode it into a separator, others keep it in the segment.
    EncodedSlash,
    /// A raw `\`: Windows-style and some Java servers treat it as a separator.
    Backslash,
    /// `;` path parameters: Tomcat and Spring drop them (`/admin;x` is `/admin` there).
    PathParameter,
    /// A `#` fragment: never sent by a conforming client; upstreams disagree on stripping it.
    Fragment,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
    /// A raw byte outside visible ASCII, or an encoded NUL or control character.
    BadCharacter,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the path does not start with `/`",
            Self::EncodedSlash => "the path has an encoded `/` or `\\`",
            Self::Backslash => "the path has a `\\`",
            Self::PathParameter => "the path has `;` path parameters",
            Self::Fragment => "the path has a `#` fragment",
            Self::BadPercentEncoding => "the path has bad percent-encoding",
            Self::BadCharacter => "the path has a control or non-ASCII character",
        })
    }
}

impl std::error::Error for PathError {}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// The path part of `raw` (without the query), checked; `Ok(true)` when it needs rewriting (an
/// escape, `//`, or a dot segment), `Ok(false)` when it is already in normal form.
fn check(path: &str) -> Result<bool, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut rewrite = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) =
                    (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
                else {
                    return Err(PathError::BadPercentEncoding);
                };
                match h << 4 | l {
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    c if c < 0x20 || c == 0x7f => return Err(PathError::BadCharacter),
                    _ => {}
                }
                rewrite = true;
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b';' => return Err(PathError::PathParameter),
            b'#' => return Err(PathError::Fragment),
            c if !(0x21..=0x7e).contains(&c) => return Err(PathError::BadCharacter),
            b'/' if b.get(i + 1) == Some(&b'/') => rewrite = true,
            b'.' if b[i - 1] == b'/' => {
                // `.` or `..` as a whole segment.
                let rest = &b[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    rewrite = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(rewrite)
}

/// The normalized path of a raw `:path` (query excluded), or why it is refused. Borrows when the
/// path is already normal (the common case: no allocation).
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    if !check(path)? {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes, upper-case the others.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // `check` proved two hex digits follow.
            let v = b.get(i + 1..i + 3).and_then(|h| Some(hex(h[0])? << 4 | hex(h[1])?)).unwrap_or(0);
            if unreserved(v) {
                decoded.push(char::from(v));
            } else {
                // The escape kept, its hex digits upper-cased (no allocation per escape).
                decoded.push('%');
                decoded.push(char::from(b[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(b[i + 2].to_ascii_uppercase()));
            }
            i += 3;
        } else {
            decoded.push(char::from(b[i]));
            i += 1;
        }
    }
    // Merge slashes and remove dot segments, segment by segment.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// Whether the normalized `path` is the `exact` rule path, with or without one trailing `/` (Spring and
/// others route `/admin/` to `/admin`, so a rule on one covers both).
pub fn exact_matches(path: &str, exact: &str) -> bool {
    if path == exact {
        return true;
    }
    match (path.strip_suffix('/'), exact.strip_suffix('/')) {
        (Some(p), _) if !p.is_empty() => p == exact,
        (None, Some(e)) if !e.is_empty() => path == e,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn spellings_of_admin_all_normalize_to_admin() {
        for p in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "//admin",
            "///admin",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/.%2e/admin",
            "/./admin",
            "/../admin",
            "/a/b/../../admin",
            "/admin?x=/../y",
        ] {
            assert_eq!(n(p).as_deref(), Ok("/admin"), "{p}");
        }
        assert_eq!(n("/admin/.").as_deref(), Ok("/admin/"));
        assert_eq!(n("/admin/x/..").as_deref(), Ok("/admin/"));
        assert_eq!(n("/admin//x/").as_deref(), Ok("/admin/x/"));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for (p, e) in [
            ("/%2Fadmin", PathError::EncodedSlash),
            ("/%2fadmin", PathError::EncodedSlash),
            ("/public%5C..%5Cadmin", PathError::EncodedSlash),
            ("/public\\..\\admin", PathError::Backslash),
            ("/admin;x", PathError::PathParameter),
            ("/admin;jsessionid=1/x", PathError::PathParameter),
            ("/admin#x", PathError::Fragment),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%", PathError::BadPercentEncoding),
            ("/a%00", PathError::BadCharacter),
            ("/a%0A", PathError::BadCharacter),
            ("/a b", PathError::BadCharacter),
            ("/caf\u{e9}", PathError::BadCharacter),
            ("admin", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("http://h/admin", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("?a", PathError::NotAbsolute),
        ] {
            assert_eq!(n(p), Err(e), "{p}");
        }
        // The query is not the path: what it holds is the upstream's business.
        assert_eq!(n("/x?a=%2F;b\\c").as_deref(), Ok("/x"));
    }

    #[test]
    fn normal_paths_are_borrowed_and_escapes_canonical() {
        assert!(matches!(normalize("/api/v1/items?x=1"), Ok(Cow::Borrowed("/api/v1/items"))));
        assert!(matches!(normalize("/"), Ok(Cow::Borrowed("/"))));
        assert!(matches!(normalize("/a.b/.hidden/..x/x.."), Ok(Cow::Borrowed(_))));
        assert_eq!(
            n("/a%c3%a9").as_deref(),
            Ok("/a%C3%A9"),
            "reserved and non-ASCII escapes stay, upper-cased"
        );
        assert_eq!(n("/a%3b%25%3F").as_deref(), Ok("/a%3B%25%3F"));
        assert_eq!(n("/%7euser").as_deref(), Ok("/~user"));
        assert_eq!(n("/..").as_deref(), Ok("/"));
        assert_eq!(n("//").as_deref(), Ok("/"));
    }

    #[test]
    fn exact_rules_cover_one_trailing_slash() {
        assert!(exact_matches("/admin", "/admin"));
        assert!(exact_matches("/admin/", "/admin"));
        assert!(exact_matches("/admin", "/admin/"));
        assert!(!exact_matches("/admin/x", "/admin"));
        assert!(!exact_matches("/adminx", "/admin"));
        assert!(exact_matches("/", "/"));
        assert!(!exact_matches("/", "/x"));
    }
}
