//! CIDR blocks (`10.0.0.0/8`, `fd00::/8`) for the address policy's `allow_cidrs` / `deny_cidrs`.
//! Small and pure on purpose: no crate for this is worth its weight in a wasm filter.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An address block: a network address and a prefix length. Host bits must be zero
/// (`10.0.0.1/8` is refused: it is almost always a typo for a host or for another block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

/// Why a string is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not a CIDR block like \"10.0.0.0/8\" or \"fd00::/8\"")]
    Syntax(String),
    #[error("`{0}`: prefix length must be at most {1}")]
    Prefix(String, u8),
    #[error("`{0}` has host bits set (did you mean {1}?)")]
    HostBits(String, Cidr),
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

/// The mask of the top `prefix` bits of a `width`-bit address.
fn mask(prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
        (all << (width - prefix)) & all
    }
}

impl Cidr {
    /// Whether `ip` is in the block. An IPv4 block never contains an IPv6 address and the other way
    /// round; callers map `::ffff:a.b.c.d` to IPv4 themselves.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let (net, width) = bits(self.network);
        let (addr, addr_width) = bits(ip);
        width == addr_width && (addr & mask(self.prefix, width)) == net
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (ip, prefix) = s.split_once('/').ok_or_else(syntax)?;
        let network: IpAddr = ip.parse().map_err(|_| syntax())?;
        // Digits only: `u8::from_str` would take a leading `+`.
        if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        let prefix: u8 = prefix.parse().map_err(|_| syntax())?;
        let (net, width) = bits(network);
        if prefix > width {
            return Err(CidrError::Prefix(s.to_owned(), width));
        }
        let masked = net & mask(prefix, width);
        if masked != net {
            let fixed = match network {
                IpAddr::V4(_) => IpAddr::from(u32::try_from(masked).unwrap_or(0).to_be_bytes()),
                IpAddr::V6(_) => IpAddr::from(masked.to_be_bytes()),
            };
            return Err(CidrError::HostBits(s.to_owned(), Cidr { network: fixed, prefix }));
        }
        Ok(Cidr { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_blocks_contain_their_addresses_only() {
        let b = c("10.1.0.0/16");
        assert!(b.contains(ip("10.1.0.0")));
        assert!(b.contains(ip("10.1.255.255")));
        assert!(!b.contains(ip("10.2.0.0")));
        assert!(!b.contains(ip("10.0.255.255")));
        assert!(c("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(c("192.0.2.7/32").contains(ip("192.0.2.7")));
        assert!(!c("192.0.2.7/32").contains(ip("192.0.2.8")));
        assert!(c("128.0.0.0/1").contains(ip("200.0.0.1")));
        assert!(!c("128.0.0.0/1").contains(ip("127.255.255.255")));
    }

    #[test]
    fn v6_blocks_contain_their_addresses_only() {
        let b = c("fd00::/8");
        assert!(b.contains(ip("fd12:3456::1")));
        assert!(!b.contains(ip("fe80::1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("2001:db8::1/128").contains(ip("2001:db8::1")));
        assert!(!c("2001:db8::1/128").contains(ip("2001:db8::2")));
        assert!(c("2001:db8:8000::/33").contains(ip("2001:db8:ffff::1")));
        assert!(!c("2001:db8:8000::/33").contains(ip("2001:db8:7fff::1")));
    }

    #[test]
    fn families_never_mix() {
        assert!(!c("0.0.0.0/0").contains(ip("::1")));
        assert!(!c("::/0").contains(ip("10.0.0.1")));
        // The mapped form is the caller's business.
        assert!(!c("10.0.0.0/8").contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn bad_blocks_are_refused_with_a_reason() {
        for bad in
            ["10.0.0.0", "10.0.0.0/", "/8", "10.0.0/8", "10.0.0.0/+8", "10.0.0.0/ 8", "x/8", "10.0.0.0/8/8"]
        {
            assert!(matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))), "{bad}");
        }
        assert!(matches!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::Prefix(_, 32))));
        assert!(matches!("::/129".parse::<Cidr>(), Err(CidrError::Prefix(_, 128))));
        assert!(matches!("10.0.0.0/1000".parse::<Cidr>(), Err(CidrError::Syntax(_))));
        let err = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(err.to_string(), "`10.1.2.3/8` has host bits set (did you mean 10.0.0.0/8?)");
        let err = "fd00::1/8".parse::<Cidr>().unwrap_err();
        assert!(err.to_string().contains("did you mean fd00::/8?"), "{err}");
    }

    #[test]
    fn displays_as_written() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("fd00::/8").to_string(), "fd00::/8");
    }
}
