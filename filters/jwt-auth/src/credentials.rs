//! Where a token is: reading one token source (header, query parameter, cookie) into a token, nothing,
//! or a credential that cannot be read unambiguously, and removing a token from the request sent
//! upstream (query parameter, cookies). Pure.

use std::borrow::Cow;

use crate::config::Source;
use crate::engine::Request;

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A token value must be visible ASCII without separators (`,` and `;` would let one header or cookie
/// carry two tokens).
fn clean_token(t: &str) -> Option<String> {
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b';') {
        None
    } else {
        Some(t.to_string())
    }
}

/// The value of header `name` in a request's header list (names lower-case, as hosts pass them); several
/// copies joined with `,` (`; ` for `cookie`), as [`Request::header`] wants them, so that a repeated
/// credential is seen rather than only its first copy. A single copy is borrowed, not copied.
pub fn combined_header<'a>(all: &[(&'a str, &'a [u8])], name: &str) -> Option<Cow<'a, [u8]>> {
    let sep: &[u8] = if name == "cookie" { b"; " } else { b"," };
    let mut out: Option<Cow<'a, [u8]>> = None;
    for &(_, v) in all.iter().filter(|(k, _)| *k == name) {
        match &mut out {
            None => out = Some(Cow::Borrowed(v)),
            Some(o) => {
                let o = o.to_mut();
                o.extend_from_slice(sep);
                o.extend_from_slice(v);
            }
        }
    }
    out
}

/// A header map as proxy-wasm serializes it (`proxy_get_header_map_pairs`: a u32 count, a (name
/// length, value length) u32 pair per header, then each name and value followed by a NUL; little
/// endian), as borrowed (name, value) pairs: one allocation for the list instead of two per header.
/// `None` when the buffer is not such a map (lengths past its end); names that are not UTF-8 (never
/// from Envoy) are skipped.
pub fn parse_header_pairs(buf: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(0)?;
    let mut data = n.checked_mul(8)?.checked_add(4)?;
    if data > buf.len() {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let mut take = |len: usize| -> Option<&[u8]> {
        let end = data.checked_add(len)?;
        let s = buf.get(data..end)?;
        data = end.checked_add(1)?;
        Some(s)
    };
    for i in 0..n {
        let (k_len, v_len) = (u32_at(4 + i * 8)?, u32_at(8 + i * 8)?);
        let k = take(k_len)?;
        let v = take(v_len)?;
        if let Ok(k) = std::str::from_utf8(k) {
            out.push((k, v));
        }
    }
    Some(out)
}

/// What one token source holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing for this source: the credential is missing here.
    Absent,
    Token(String),
    /// A credential is there but cannot be read unambiguously (a bad scheme separator, trailing data,
    /// bad characters, or the carrier repeated). It is refused: an upstream might read it differently,
    /// so it is never treated as missing and never forwarded unverified.
    Malformed(String),
}

/// A header value carrying `scheme`-prefixed credentials (`prefix` as configured, e.g. `Bearer `).
fn from_prefixed(name: &str, v: &str, prefix: &str) -> Found {
    let scheme = prefix.trim_end_matches(' ');
    let is_auth_scheme = scheme.len() < prefix.len();
    // Whether a (comma-separated) element is a credential of this scheme: anything that starts with
    // it (`Bearer`, `bearer <t>`, `Bearer\t<t>`, even `Bearer<t>`, which lenient upstreams strip and
    // accept); `Basic …` is another scheme's business.
    let ours = |e: &str| {
        let e = e.trim_start_matches([' ', '\t']);
        e.get(..scheme.len()).is_some_and(|h| h.eq_ignore_ascii_case(scheme))
    };
    if !v.split(',').any(ours) {
        return Found::Absent;
    }
    let malformed = |why: &str| Found::Malformed(format!("`{name}` {why}"));
    if v.contains(',') {
        return malformed("carries more than one credential");
    }
    let v = v.trim_start_matches([' ', '\t']);
    let rest = &v[scheme.len()..];
    if !is_auth_scheme {
        return clean_token(rest).map_or_else(|| malformed("has a malformed token"), Found::Token);
    }
    // RFC 7235: scheme 1*SP token68, nothing after it.
    let token = rest.trim_start_matches(' ');
    if token.len() == rest.len() {
        return malformed("has no space after the scheme");
    }
    // Whitespace or a separator inside is trailing data an upstream may read differently; any other
    // character is left to verification (an `invalid_token`, as jwt_authn answers).
    clean_token(token.trim_end_matches([' ', '\t']))
        .map_or_else(|| malformed("has trailing data"), Found::Token)
}

/// The token from one source: absent, found, or present but unreadable.
pub fn extract(source: &Source, req: &Request<'_, '_>) -> Found {
    match source {
        Source::Header { name, prefix } => {
            let Some(raw) = (req.header)(name) else { return Found::Absent };
            let Ok(v) = std::str::from_utf8(&raw) else {
                return Found::Malformed(format!("`{name}` is not UTF-8"));
            };
            match prefix {
                Some(pre) => from_prefixed(name, v, pre),
                None if v.contains(',') => {
                    Found::Malformed(format!("`{name}` carries more than one credential"))
                }
                None => clean_token(v.trim_matches([' ', '\t'])).map_or_else(
                    || Found::Malformed(format!("`{name}` has a malformed token")),
                    Found::Token,
                ),
            }
        }
        Source::Param(name) => {
            let Some((_, q)) = req.path.split_once('?') else { return Found::Absent };
            let q = q.split_once('#').map_or(q, |(q, _)| q);
            let mut found = Found::Absent;
            for kv in q.split('&') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if !param_name_is(k, name) {
                    continue;
                }
                if found != Found::Absent {
                    return Found::Malformed(format!("query parameter `{name}` is repeated"));
                }
                found = percent_decode(v).and_then(|v| clean_token(&v)).map_or_else(
                    || Found::Malformed(format!("query parameter `{name}` has a malformed token")),
                    Found::Token,
                );
            }
            found
        }
        Source::Cookie(name) => {
            let Some(raw) = (req.header)("cookie") else { return Found::Absent };
            let Ok(v) = std::str::from_utf8(&raw) else {
                // Other cookies may be binary; ours cannot hide in bytes we cannot read.
                return if String::from_utf8_lossy(&raw).contains(name.as_str()) {
                    Found::Malformed("`cookie` is not UTF-8".into())
                } else {
                    Found::Absent
                };
            };
            let mut found = Found::Absent;
            for kv in v.split(';') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                if k.trim() != name {
                    continue;
                }
                if found != Found::Absent {
                    return Found::Malformed(format!("cookie `{name}` is repeated"));
                }
                found = clean_token(v.trim().trim_matches('"')).map_or_else(
                    || Found::Malformed(format!("cookie `{name}` has a malformed token")),
                    Found::Token,
                );
            }
            found
        }
    }
}

/// Whether a raw (possibly percent-encoded) query parameter name is `name`, as the upstream would
/// decode it.
fn param_name_is(raw: &str, name: &str) -> bool {
    raw == name || (raw.contains(['%', '+']) && percent_decode(raw).is_some_and(|d| d == name))
}

/// `path` without any `name` query parameter (every occurrence, whatever its value, also without `=`
/// or with a percent-encoded name), the other parameters kept byte for byte and in order, the `?`
/// dropped when none is left, a `#fragment` kept. `None` when the path has no such parameter.
pub fn strip_query_param(path: &str, name: &str) -> Option<String> {
    let (base, rest) = path.split_once('?')?;
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let is_token = |kv: &str| param_name_is(kv.split_once('=').map_or(kv, |(k, _)| k), name);
    if !query.split('&').any(is_token) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|kv| !is_token(kv)).collect();
    let mut out = String::with_capacity(path.len());
    out.push_str(base);
    // Empty segments (`a=1&&b=2`) are kept as they were, unless nothing else is left.
    if kept.iter().any(|kv| !kv.is_empty()) {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

/// One `cookie` header value without the `names` cookies, the others kept as written (joined with
/// `; `). `None` when it has none of them; `Some("")` when nothing is left.
pub fn strip_cookie_value(value: &str, names: &[String]) -> Option<String> {
    let is_token = |kv: &str| {
        let k = kv.split_once('=').map_or(kv, |(k, _)| k).trim();
        names.iter().any(|n| n == k)
    };
    if !value.split(';').any(is_token) {
        return None;
    }
    let kept: Vec<&str> =
        value.split(';').filter(|kv| !is_token(kv)).map(str::trim).filter(|kv| !kv.is_empty()).collect();
    Some(kept.join("; "))
}

/// The `cookie` header values to send upstream once the `names` cookies are removed from each (an
/// HTTP/2 client may send several `cookie` headers); values left empty are dropped. `None` when no
/// header carried such a cookie (leave the headers alone).
pub fn strip_cookie_headers(values: &[&[u8]], names: &[String]) -> Option<Vec<Vec<u8>>> {
    if names.is_empty() {
        return None;
    }
    let mut changed = false;
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        // A header that is not UTF-8 cannot hold a cookie we extracted; keep it as it is.
        match std::str::from_utf8(v).ok().and_then(|s| strip_cookie_value(s, names)) {
            Some(rest) => {
                changed = true;
                if !rest.is_empty() {
                    out.push(rest.into_bytes());
                }
            }
            None => out.push(v.to_vec()),
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_query_param_edge_cases() {
        let s = |p: &str| strip_query_param(p, "access_token");
        assert_eq!(s("/x?access_token=t"), Some("/x".into()), "the ? goes when nothing is left");
        assert_eq!(
            s("/x?a=1&access_token=t&b=%2F+2"),
            Some("/x?a=1&b=%2F+2".into()),
            "order and encoding kept"
        );
        assert_eq!(s("/x?access_token=t&a=1&access_token=u"), Some("/x?a=1".into()), "repeated: all removed");
        assert_eq!(s("/x?%61ccess_token=t&a=1"), Some("/x?a=1".into()), "percent-encoded name");
        assert_eq!(s("/x?access%5Ftoken=t"), Some("/x".into()));
        assert_eq!(s("/x?a=1&access_token=&b="), Some("/x?a=1&b=".into()), "empty values");
        assert_eq!(s("/x?access_token&a"), Some("/x?a".into()), "name without =");
        assert_eq!(s("/x?a=1&access_token=t#frag"), Some("/x?a=1#frag".into()), "fragment kept");
        assert_eq!(s("/x?access_token=t#f?access_token=u"), Some("/x#f?access_token=u".into()));
        assert_eq!(s("/x?a=1&&b=2&access_token=t"), Some("/x?a=1&&b=2".into()));
        assert_eq!(s("/x?&access_token=t"), Some("/x".into()));
        assert_eq!(s("/x?a=1&my_access_token=t&access_tokens=u"), None, "other names untouched");
        assert_eq!(s("/x?a=access_token"), None, "a value equal to the name is not the parameter");
        assert_eq!(s("/x"), None);
        assert_eq!(s("/x#access_token=t"), None, "a fragment is not a query");
        assert_eq!(s("/x?a=%zz&access_token=t"), Some("/x?a=%zz".into()), "bad encodings elsewhere kept");
    }

    #[test]
    fn strip_cookie_edge_cases() {
        let names = vec!["at".to_string()];
        let v = |c: &str| strip_cookie_value(c, &names);
        assert_eq!(v("a=1; at=t; b=2"), Some("a=1; b=2".into()));
        assert_eq!(v("at=t"), Some(String::new()));
        assert_eq!(v("a=1;at=t;b=2"), Some("a=1; b=2".into()), "no spaces after ;");
        assert_eq!(v("  at = t ;  a=1"), Some("a=1".into()), "spacing around the name");
        assert_eq!(v("at=t; a=1; at=u"), Some("a=1".into()), "repeated cookie");
        assert_eq!(v("at=; a="), Some("a=".into()), "empty values");
        assert_eq!(v("a=1; b=at; xat=1; at2=t"), None, "other cookies untouched");
        assert_eq!(v("a=1; b=2"), None);
        let h = |vals: &[&str]| {
            let b: Vec<&[u8]> = vals.iter().map(|v| v.as_bytes()).collect();
            strip_cookie_headers(&b, &names)
                .map(|o| o.into_iter().map(|v| String::from_utf8(v).unwrap()).collect::<Vec<_>>())
        };
        assert_eq!(h(&["a=1", "at=t", "b=2; at=u; c=3"]), Some(vec!["a=1".into(), "b=2; c=3".into()]));
        assert_eq!(h(&["at=t"]), Some(vec![]), "no cookie left: the header goes");
        assert_eq!(h(&["a=1", "b=2"]), None);
        assert_eq!(h(&[]), None);
        let bin: Vec<&[u8]> = vec![b"x=\xff", b"at=t; y=1"];
        assert_eq!(strip_cookie_headers(&bin, &names), Some(vec![b"x=\xff".to_vec(), b"y=1".to_vec()]));
        assert_eq!(strip_cookie_headers(&bin, &[]), None);
    }

    fn found(source: &Source, path: &str, headers: &[(&str, &[u8])]) -> Found {
        let get = |n: &str| headers.iter().find(|(k, _)| *k == n).map(|(_, v)| Cow::Borrowed(*v));
        extract(source, &Request { method: "GET", path, header: &get })
    }

    fn malformed(f: &Found) -> bool {
        matches!(f, Found::Malformed(_))
    }

    #[test]
    fn bearer_header() {
        let s = Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) };
        let h = |v: &[u8]| found(&s, "/", &[("authorization", v)]);
        assert_eq!(h(b"Bearer a.b.c"), Found::Token("a.b.c".into()));
        assert_eq!(h(b"bearer   a.b.c  "), Found::Token("a.b.c".into()), "scheme case, spaces around");
        assert_eq!(found(&s, "/", &[]), Found::Absent);
        assert_eq!(h(b"Basic dTpw"), Found::Absent, "another scheme");
        for bad in [
            &b"Bearer"[..],
            b"Bearer\ta.b.c",
            b"Bearera.b.c",
            b"Bearer a b",
            b"Bearer a,Bearer b",
            b"Bearer a;b",
        ] {
            assert!(malformed(&h(bad)), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(malformed(&h(b"Bearer \xff")), "not UTF-8");
        assert!(malformed(&h(b"Basic x, Bearer a")), "a bearer credential among others");
    }

    #[test]
    fn plain_header_param_and_cookie() {
        let s = Source::Header { name: "x-token".into(), prefix: None };
        assert_eq!(found(&s, "/", &[("x-token", b" t ")]), Found::Token("t".into()));
        assert!(malformed(&found(&s, "/", &[("x-token", b"a,b")])));
        let p = Source::Param("access_token".into());
        assert_eq!(found(&p, "/x?a=1&access_token=t%2Bu", &[]), Found::Token("t+u".into()));
        assert_eq!(found(&p, "/x?%61ccess_token=t", &[]), Found::Token("t".into()), "encoded name");
        assert_eq!(found(&p, "/x#access_token=t", &[]), Found::Absent, "a fragment is not a query");
        assert!(malformed(&found(&p, "/x?access_token=t&%61ccess_token=u", &[])), "repeated");
        assert!(malformed(&found(&p, "/x?access_token=%zz", &[])), "bad encoding");
        let c = Source::Cookie("at".into());
        assert_eq!(found(&c, "/", &[("cookie", b"a=1; at=\"t\"")]), Found::Token("t".into()));
        assert_eq!(found(&c, "/", &[("cookie", b"xat=1; at2=2")]), Found::Absent);
        assert!(malformed(&found(&c, "/", &[("cookie", b"at=t; at=u")])), "repeated");
        assert_eq!(found(&c, "/", &[("cookie", b"bin=\xff")]), Found::Absent, "binary cookies of others");
        assert!(malformed(&found(&c, "/", &[("cookie", b"bin=\xff; at=t")])), "ours cannot hide in bytes");
    }

    #[test]
    fn repeated_headers_are_joined_so_a_second_credential_is_seen() {
        let all: Vec<(&str, &[u8])> = vec![
            ("authorization", &b"Bearer a"[..]),
            ("cookie", b"x=1"),
            ("authorization", b"Bearer b"),
            ("cookie", b"at=t"),
            ("x-bin", b"\xff"),
        ];
        let c = |n: &str| combined_header(&all, n).map(|v| v.into_owned());
        assert_eq!(c("authorization"), Some(b"Bearer a,Bearer b".to_vec()));
        assert_eq!(c("cookie"), Some(b"x=1; at=t".to_vec()));
        assert_eq!(c("x-bin"), Some(b"\xff".to_vec()), "bytes kept as sent");
        assert_eq!(c("x-token"), None);
        assert!(matches!(combined_header(&all, "x-bin"), Some(Cow::Borrowed(_))), "one copy: borrowed");
        let get = |n: &str| combined_header(&all, n);
        let s = Source::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) };
        let f = extract(&s, &Request { method: "GET", path: "/", header: &get });
        assert!(matches!(f, Found::Malformed(_)), "two authorization headers: {f:?}");
    }

    /// The proxy-wasm serialization of `pairs` (as the host writes it).
    fn serialize(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn header_pairs_are_read_in_place_and_bad_buffers_refused() {
        let pairs: Vec<(&str, &[u8])> = vec![
            (":method", b"GET"),
            (":path", b"/x"),
            ("authorization", b"Bearer a.b.c"),
            ("x-bin", b"\xff\0"),
            ("e", b""),
        ];
        let buf = serialize(&pairs);
        assert_eq!(parse_header_pairs(&buf), Some(pairs.clone()));
        assert_eq!(parse_header_pairs(&[]), Some(vec![]));
        assert_eq!(parse_header_pairs(&serialize(&[])), Some(vec![]));
        for cut in 1..buf.len() - 1 {
            assert_eq!(parse_header_pairs(&buf[..cut]), None, "truncated at {cut}");
        }
        let mut huge = buf.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_header_pairs(&huge), None, "count past the end");
        let bad_name = serialize(&[("ok", b"1")]);
        let mut bad_name = bad_name;
        let at = 4 + 8;
        bad_name[at] = 0xff;
        assert_eq!(parse_header_pairs(&bad_name), Some(vec![]), "a name that is not UTF-8 is skipped");
    }
}
