//! The two value matchers of the policy language: Istio's string patterns (`exact`, `prefix*`,
//! `*suffix`, `*`) and IP blocks (CIDRs).

use std::net::{IpAddr, SocketAddr};

/// A string pattern, as Istio writes them: `*` alone matches any present value, a leading `*` a
/// suffix, a trailing `*` a prefix, anything else the exact value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    /// Parses a pattern; `lower` lower-cases it (for case-insensitive values such as hosts). Refused:
    /// an empty value and a `*` anywhere but at one end.
    pub fn parse(s: &str, lower: bool) -> Result<Self, String> {
        let s = if lower { s.to_ascii_lowercase() } else { s.to_owned() };
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s == "*" {
            return Ok(Self::Any);
        }
        let p = if let Some(rest) = s.strip_prefix('*') {
            Self::Suffix(rest.to_owned())
        } else if let Some(rest) = s.strip_suffix('*') {
            Self::Prefix(rest.to_owned())
        } else {
            Self::Exact(s.clone())
        };
        match &p {
            Self::Exact(v) | Self::Prefix(v) | Self::Suffix(v) if v.contains('*') => {
                Err(format!("`{s}`: `*` is allowed only as the first or last character"))
            }
            _ => Ok(p),
        }
    }

    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(v) => value == v.as_bytes(),
            Self::Prefix(v) => value.starts_with(v.as_bytes()),
            Self::Suffix(v) => value.ends_with(v.as_bytes()),
        }
    }
}

/// An IP block: `10.0.0.0/8`, `2001:db8::/32`, or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            // Canonical digits only (no `+8`, no `08`).
            Some(raw) => match raw.parse::<u8>() {
                Ok(l) if l <= max && l.to_string() == raw => l,
                _ => return Err(format!("`{s}`: the prefix length must be 0 to {max}")),
            },
        };
        Ok(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let full = usize::from(len / 8);
    let rest = len % 8;
    if a.get(..full) != b.get(..full) {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    match (a.get(full), b.get(full)) {
        (Some(x), Some(y)) => x & mask == y & mask,
        _ => false,
    }
}

/// The IP of a `source.address` property (`ip:port`, `[v6]:port` or a bare IP); an IPv4-mapped
/// IPv6 address is its IPv4 address, so `10.0.0.0/8` covers `::ffff:10.1.2.3`.
pub fn source_ip(value: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(value).ok()?;
    let ip = s.parse::<SocketAddr>().map(|a| a.ip()).or_else(|_| s.parse::<IpAddr>()).ok()?;
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_as_istio_writes_them() {
        let p = |s| Pattern::parse(s, false).unwrap();
        assert!(p("*").matches(b"anything") && p("*").matches(b""));
        assert!(p("/api/*").matches(b"/api/x") && !p("/api/*").matches(b"/apix"));
        assert!(p("*/sa/orders").matches(b"td/ns/a/sa/orders") && !p("*/sa/orders").matches(b"x/sa/ordersx"));
        assert!(p("GET").matches(b"GET") && !p("GET").matches(b"get") && !p("GET").matches(b"GETX"));
        assert_eq!(Pattern::parse("Example.COM", true).unwrap(), Pattern::Exact("example.com".into()));
        for bad in ["", "a*b", "**", "*a*"] {
            assert!(Pattern::parse(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let c = |s| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(c("192.168.1.0/25").contains(ip("192.168.1.127")));
        assert!(!c("192.168.1.0/25").contains(ip("192.168.1.128")));
        assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(c("192.0.2.7").contains(ip("192.0.2.7")) && !c("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(c("2001:db8::/32").contains(ip("2001:db8:1::1")));
        assert!(!c("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(!c("10.0.0.0/8").contains(ip("::1")), "families never mix");
        for bad in ["", "10.0.0.0/33", "::/129", "10.0.0/8", "x/8", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/08"]
        {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn source_addresses_parse_with_mapped_v4() {
        assert_eq!(source_ip(b"10.1.2.3:4000"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(source_ip(b"[::ffff:10.1.2.3]:1"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(source_ip(b"[2001:db8::1]:80"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(source_ip(b"10.1.2.3"), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(source_ip(b"pipe:/x"), None);
        assert_eq!(source_ip(b"\xff"), None);
    }
}
