//! Which registry addresses may be published. A registry is not a trusted party: an open Eureka or
//! Nacos, or a compromised etcd key, could otherwise steer client traffic to Envoy's admin port on
//! loopback or to a cloud metadata service (`169.254.169.254`). Every source's answer goes through
//! [`AddressPolicy::screen`] before it is published, in one place (the engine).
//!
//! Always refused: unspecified (`0.0.0.0/8`, `::`), link-local (`169.254.0.0/16`, `fe80::/10`),
//! multicast (`224.0.0.0/4`, `ff00::/8`), broadcast (`255.255.255.255`) and port 0. Loopback
//! (`127.0.0.0/8`, `::1`) only with `allow_loopback`. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is judged as
//! the IPv4 address it carries. Then `deny_cidrs` (wins) and `allow_cidrs` (when set, only those).
//! Weights above [`MAX_WEIGHT`] are clamped to it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use meshwasm_endpoints::{Endpoint, MAX_WEIGHT};

use crate::cidr::Cidr;

/// Why an address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PortZero,
    Unspecified,
    LinkLocal,
    Multicast,
    Broadcast,
    /// Loopback without `allow_loopback`.
    Loopback,
    /// In one of `deny_cidrs`.
    Denied(Cidr),
    /// `allow_cidrs` is set and none contains it.
    NotAllowed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::PortZero => f.write_str("port 0"),
            Refusal::Unspecified => f.write_str("unspecified address"),
            Refusal::LinkLocal => f.write_str("link-local address"),
            Refusal::Multicast => f.write_str("multicast address"),
            Refusal::Broadcast => f.write_str("broadcast address"),
            Refusal::Loopback => f.write_str("loopback address (allow_loopback is false)"),
            Refusal::Denied(c) => write!(f, "in deny_cidrs {c}"),
            Refusal::NotAllowed => f.write_str("not in allow_cidrs"),
        }
    }
}

/// The per-service address policy, built once at configure time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allow_loopback: bool,
    /// `None`: any address that passes the other rules. `Some`: only addresses in one of these.
    pub allow_cidrs: Option<Vec<Cidr>>,
    pub deny_cidrs: Vec<Cidr>,
}

/// An answer after the policy: what may be published, and what was refused or clamped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Screened {
    pub endpoints: Vec<Endpoint>,
    pub refused: Vec<(SocketAddr, Refusal)>,
    /// Endpoints whose weight was lowered to [`MAX_WEIGHT`], with the weight the registry gave.
    pub clamped: Vec<(SocketAddr, u32)>,
}

/// The address an IP stands for: `::ffff:a.b.c.d` is the IPv4 address `a.b.c.d` (a socket to it
/// reaches that IPv4 host), so it gets the IPv4 rules.
fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<Refusal> {
    // 0.0.0.0/8 is "this network" (RFC 1122): never a destination, and Linux connects 0.0.0.0 to
    // the local host, so it is as dangerous as loopback.
    if ip.octets()[0] == 0 {
        Some(Refusal::Unspecified)
    } else if ip.is_link_local() {
        Some(Refusal::LinkLocal)
    } else if ip.is_multicast() {
        Some(Refusal::Multicast)
    } else if ip.is_broadcast() {
        Some(Refusal::Broadcast)
    } else if ip.is_loopback() {
        Some(Refusal::Loopback)
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<Refusal> {
    if ip.is_unspecified() {
        Some(Refusal::Unspecified)
    } else if ip.is_unicast_link_local() {
        Some(Refusal::LinkLocal)
    } else if ip.is_multicast() {
        Some(Refusal::Multicast)
    } else if ip.is_loopback() {
        Some(Refusal::Loopback)
    } else {
        None
    }
}

impl AddressPolicy {
    /// Whether `addr` may be published.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Refusal> {
        if addr.port() == 0 {
            return Err(Refusal::PortZero);
        }
        let ip = addr.ip();
        let eff = effective(ip);
        let class = match eff {
            IpAddr::V4(v4) => v4_class(v4),
            IpAddr::V6(v6) => v6_class(v6),
        };
        match class {
            Some(Refusal::Loopback) if self.allow_loopback => {}
            Some(r) => return Err(r),
            None => {}
        }
        // A block written in either form matches a mapped address.
        let within = |c: &Cidr| c.contains(eff) || c.contains(ip);
        if let Some(c) = self.deny_cidrs.iter().find(|c| within(c)) {
            return Err(Refusal::Denied(*c));
        }
        if let Some(allow) = &self.allow_cidrs
            && !allow.iter().any(within)
        {
            return Err(Refusal::NotAllowed);
        }
        Ok(())
    }

    /// Drops refused endpoints and clamps weights; keeps the order of `endpoints`.
    pub fn screen(&self, endpoints: Vec<Endpoint>) -> Screened {
        let mut out = Screened { endpoints: Vec::with_capacity(endpoints.len()), ..Default::default() };
        for mut e in endpoints {
            if let Err(r) = self.check(e.address) {
                out.refused.push((e.address, r));
                continue;
            }
            if e.weight > MAX_WEIGHT {
                out.clamped.push((e.address, e.weight));
                e.weight = MAX_WEIGHT;
            }
            out.endpoints.push(e);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn check(p: &AddressPolicy, a: &str) -> Result<(), Refusal> {
        p.check(sa(a))
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn ordinary_unicast_addresses_pass_by_default() {
        let p = AddressPolicy::default();
        for ok in ["10.0.0.1:8080", "192.168.1.1:80", "203.0.113.5:443", "[2001:db8::1]:80", "[fd00::5]:9000"]
        {
            assert_eq!(check(&p, ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn each_refused_class_is_refused_by_default() {
        let p = AddressPolicy::default();
        let cases = [
            ("0.0.0.0:80", Refusal::Unspecified),
            ("0.1.2.3:80", Refusal::Unspecified),
            ("[::]:80", Refusal::Unspecified),
            ("169.254.169.254:80", Refusal::LinkLocal),
            ("169.254.0.1:80", Refusal::LinkLocal),
            ("[fe80::1]:80", Refusal::LinkLocal),
            ("[febf:ffff::1]:80", Refusal::LinkLocal),
            ("224.0.0.1:80", Refusal::Multicast),
            ("239.255.255.250:1900", Refusal::Multicast),
            ("[ff02::1]:80", Refusal::Multicast),
            ("255.255.255.255:80", Refusal::Broadcast),
            ("10.0.0.1:0", Refusal::PortZero),
            ("127.0.0.1:9901", Refusal::Loopback),
            ("127.8.9.10:80", Refusal::Loopback),
            ("[::1]:9901", Refusal::Loopback),
        ];
        for (addr, why) in cases {
            assert_eq!(check(&p, addr), Err(why), "{addr}");
        }
        // Next to the refused ranges, still fine.
        assert_eq!(check(&p, "169.253.255.255:80"), Ok(()));
        assert_eq!(check(&p, "[fec0::1]:80"), Ok(()));
        assert_eq!(check(&p, "223.255.255.255:80"), Ok(()));
        assert_eq!(check(&p, "128.0.0.1:80"), Ok(()));
    }

    #[test]
    fn ipv4_mapped_ipv6_gets_the_ipv4_rules() {
        let p = AddressPolicy::default();
        assert_eq!(check(&p, "[::ffff:169.254.169.254]:80"), Err(Refusal::LinkLocal));
        assert_eq!(check(&p, "[::ffff:127.0.0.1]:9901"), Err(Refusal::Loopback));
        assert_eq!(check(&p, "[::ffff:0.0.0.0]:80"), Err(Refusal::Unspecified));
        assert_eq!(check(&p, "[::ffff:224.0.0.1]:80"), Err(Refusal::Multicast));
        assert_eq!(check(&p, "[::ffff:255.255.255.255]:80"), Err(Refusal::Broadcast));
        assert_eq!(check(&p, "[::ffff:10.0.0.1]:80"), Ok(()));
        let deny = AddressPolicy { deny_cidrs: cidrs(&["10.0.0.0/8"]), ..Default::default() };
        assert_eq!(check(&deny, "[::ffff:10.1.1.1]:80"), Err(Refusal::Denied(cidrs(&["10.0.0.0/8"])[0])));
        let allow = AddressPolicy { allow_cidrs: Some(cidrs(&["10.0.0.0/8"])), ..Default::default() };
        assert_eq!(check(&allow, "[::ffff:10.1.1.1]:80"), Ok(()));
        assert_eq!(check(&allow, "[::ffff:11.1.1.1]:80"), Err(Refusal::NotAllowed));
    }

    #[test]
    fn loopback_needs_the_opt_in_and_nothing_else_does_it() {
        let p = AddressPolicy { allow_loopback: true, ..Default::default() };
        assert_eq!(check(&p, "127.0.0.1:9901"), Ok(()));
        assert_eq!(check(&p, "[::1]:80"), Ok(()));
        assert_eq!(check(&p, "[::ffff:127.0.0.1]:80"), Ok(()));
        // The opt-in is for loopback only.
        assert_eq!(check(&p, "169.254.169.254:80"), Err(Refusal::LinkLocal));
        assert_eq!(check(&p, "0.0.0.0:80"), Err(Refusal::Unspecified));
        assert_eq!(check(&p, "127.0.0.1:0"), Err(Refusal::PortZero));
        // allow_cidrs does not lift the built-in rules: loopback still needs allow_loopback.
        let allow = AddressPolicy {
            allow_cidrs: Some(cidrs(&["127.0.0.0/8", "169.254.0.0/16"])),
            ..Default::default()
        };
        assert_eq!(check(&allow, "127.0.0.1:80"), Err(Refusal::Loopback));
        assert_eq!(check(&allow, "169.254.169.254:80"), Err(Refusal::LinkLocal));
    }

    #[test]
    fn deny_wins_over_allow_and_allow_limits() {
        let p = AddressPolicy {
            allow_loopback: true,
            allow_cidrs: Some(cidrs(&["10.0.0.0/8", "127.0.0.0/8", "fd00::/8"])),
            deny_cidrs: cidrs(&["10.9.0.0/16", "127.0.0.1/32"]),
        };
        assert_eq!(check(&p, "10.1.0.1:80"), Ok(()));
        assert_eq!(check(&p, "[fd00::1]:80"), Ok(()));
        assert_eq!(check(&p, "127.0.0.2:80"), Ok(()));
        assert_eq!(check(&p, "10.9.0.1:80"), Err(Refusal::Denied(cidrs(&["10.9.0.0/16"])[0])));
        assert_eq!(check(&p, "127.0.0.1:9901"), Err(Refusal::Denied(cidrs(&["127.0.0.1/32"])[0])));
        assert_eq!(check(&p, "192.168.0.1:80"), Err(Refusal::NotAllowed));
        assert_eq!(check(&p, "[2001:db8::1]:80"), Err(Refusal::NotAllowed));
        // Deny alone refuses only its blocks.
        let deny = AddressPolicy { deny_cidrs: cidrs(&["192.168.0.0/16"]), ..Default::default() };
        assert_eq!(check(&deny, "192.168.3.4:80"), Err(Refusal::Denied(cidrs(&["192.168.0.0/16"])[0])));
        assert_eq!(check(&deny, "10.0.0.1:80"), Ok(()));
    }

    #[test]
    fn screen_drops_refused_clamps_weights_and_keeps_order() {
        let e = |a: &str, w: u32| Endpoint { weight: w, ..Endpoint::new(sa(a)) };
        let got = AddressPolicy::default().screen(vec![
            e("0.0.0.0:80", 1),
            e("10.0.0.1:80", 2),
            e("10.0.0.2:80", u32::MAX),
            e("127.0.0.1:9901", 1),
            e("10.0.0.3:80", MAX_WEIGHT),
            e("169.254.169.254:80", 5),
        ]);
        assert_eq!(
            got.endpoints,
            [e("10.0.0.1:80", 2), e("10.0.0.2:80", MAX_WEIGHT), e("10.0.0.3:80", MAX_WEIGHT)]
        );
        assert_eq!(
            got.refused,
            [
                (sa("0.0.0.0:80"), Refusal::Unspecified),
                (sa("127.0.0.1:9901"), Refusal::Loopback),
                (sa("169.254.169.254:80"), Refusal::LinkLocal)
            ]
        );
        assert_eq!(got.clamped, [(sa("10.0.0.2:80"), u32::MAX)]);
    }

    #[test]
    fn refusals_read_well_in_logs() {
        assert_eq!(Refusal::Loopback.to_string(), "loopback address (allow_loopback is false)");
        assert_eq!(Refusal::Denied(cidrs(&["10.0.0.0/8"])[0]).to_string(), "in deny_cidrs 10.0.0.0/8");
    }
}
