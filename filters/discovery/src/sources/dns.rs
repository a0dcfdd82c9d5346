//! DNS wire format (RFC 1035, SRV from RFC 2782, AAAA from RFC 3596): just what discovery needs,
//! strictly bounded. Queries are built with id 0 and RD set (RFC 8484 recommends id 0 for caching).
//! Responses are parsed defensively: every read is bounds-checked, compression pointers must point
//! strictly backwards (no loops), names are limited to 255 bytes and labels to 63, and any record
//! whose data does not fit its RDLENGTH rejects the whole message.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const TYPE_SRV: u16 = 33;
const CLASS_IN: u16 = 1;
const MAX_NAME: usize = 255;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_NXDOMAIN: u8 = 3;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("invalid query name: {0}")]
    BadName(String),
    #[error("message truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("not a response to our query: {0}")]
    Mismatch(&'static str),
    #[error("answer truncated (TC): DNS over HTTPS must not truncate")]
    Truncated,
    #[error("server answered rcode {0}")]
    Rcode(u8),
}

/// Record data discovery understands; everything else is kept as `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Srv { priority: u16, weight: u16, port: u16, target: String },
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Lower-case, without the trailing dot.
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: RData,
}

/// A parsed, validated response. `rcode` is NOERROR or NXDOMAIN (others are errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub rcode: u8,
    pub answers: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// Normalizes a configured name: lower-case, no trailing dot, valid labels.
pub fn normalize_name(name: &str) -> Result<String, DnsError> {
    let n = name.trim_end_matches('.').to_ascii_lowercase();
    if n.is_empty() || n.len() + 2 > MAX_NAME {
        return Err(DnsError::BadName(name.to_owned()));
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 || !label.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DnsError::BadName(name.to_owned()));
        }
    }
    Ok(n)
}

/// A standard query for `name`/`qtype`, class IN, RD set, id 0.
pub fn build_query(name: &str, qtype: u16) -> Result<Vec<u8>, DnsError> {
    let name = normalize_name(name)?;
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&[0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(q)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DnsError> {
        let s = self.buf.get(self.pos..self.pos + n).ok_or(DnsError::Malformed(self.pos))?;
        self.pos += n;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, DnsError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DnsError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Reads a possibly compressed name; the reader ends after the name's in-place part.
    fn name(&mut self) -> Result<String, DnsError> {
        let mut out = String::new();
        let mut pos = self.pos;
        // Where the in-place part ends (set at the first pointer).
        let mut end: Option<usize> = None;
        // Every pointer must go strictly below the start of the labels that led to it: no loops.
        let mut limit = pos;
        loop {
            let len = *self.buf.get(pos).ok_or(DnsError::Malformed(pos))?;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    pos += 1;
                    break;
                }
                0x00 => {
                    let len = usize::from(len);
                    let label = self.buf.get(pos + 1..pos + 1 + len).ok_or(DnsError::Malformed(pos))?;
                    if !label.iter().all(|b| b.is_ascii_graphic() && *b != b'.') {
                        return Err(DnsError::Malformed(pos));
                    }
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                    if out.len() + 2 > MAX_NAME {
                        return Err(DnsError::Malformed(pos));
                    }
                    pos += 1 + len;
                }
                0xc0 => {
                    let lo = *self.buf.get(pos + 1).ok_or(DnsError::Malformed(pos))?;
                    let target = (usize::from(len & 0x3f) << 8) | usize::from(lo);
                    if end.is_none() {
                        end = Some(pos + 2);
                    }
                    if target >= limit {
                        return Err(DnsError::Malformed(pos));
                    }
                    limit = target;
                    pos = target;
                }
                // 0x40 / 0x80: extended label types, obsolete and unsupported.
                _ => return Err(DnsError::Malformed(pos)),
            }
        }
        self.pos = end.unwrap_or(pos);
        Ok(out)
    }

    fn record(&mut self) -> Result<Record, DnsError> {
        let name = self.name()?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = self.u32()?;
        // RFC 2181 §8: a TTL with the top bit set is treated as zero.
        let ttl = if ttl > i32::MAX as u32 { 0 } else { ttl };
        let rdlen = usize::from(self.u16()?);
        let start = self.pos;
        let end = start + rdlen;
        if end > self.buf.len() {
            return Err(DnsError::Malformed(start));
        }
        let data = if class != CLASS_IN {
            RData::Other
        } else {
            match rtype {
                TYPE_A => {
                    let b = self.bytes(rdlen)?;
                    let b: [u8; 4] = b.try_into().map_err(|_| DnsError::Malformed(start))?;
                    RData::A(Ipv4Addr::from(b))
                }
                TYPE_AAAA => {
                    let b = self.bytes(rdlen)?;
                    let b: [u8; 16] = b.try_into().map_err(|_| DnsError::Malformed(start))?;
                    RData::Aaaa(Ipv6Addr::from(b))
                }
                TYPE_CNAME => RData::Cname(self.name()?),
                TYPE_SRV => {
                    let priority = self.u16()?;
                    let weight = self.u16()?;
                    let port = self.u16()?;
                    let target = self.name()?;
                    RData::Srv { priority, weight, port, target }
                }
                _ => RData::Other,
            }
        };
        if matches!(data, RData::Other) {
            self.pos = end;
        }
        if self.pos != end {
            return Err(DnsError::Malformed(start));
        }
        Ok(Record { name, rtype, ttl, data })
    }
}

/// Parses and validates the response to a query for `qname`/`qtype`.
pub fn parse_response(buf: &[u8], qname: &str, qtype: u16) -> Result<Response, DnsError> {
    let mut r = Reader { buf, pos: 0 };
    let _id = r.u16()?;
    let flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    if flags & 0x8000 == 0 {
        return Err(DnsError::Mismatch("QR bit not set"));
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(DnsError::Mismatch("opcode is not QUERY"));
    }
    if flags & 0x0200 != 0 {
        return Err(DnsError::Truncated);
    }
    let rcode = (flags & 0xf) as u8;
    if rcode != RCODE_NOERROR && rcode != RCODE_NXDOMAIN {
        return Err(DnsError::Rcode(rcode));
    }
    if counts[0] != 1 {
        return Err(DnsError::Mismatch("question count is not 1"));
    }
    // Every resource record takes at least 11 bytes: refuse counts the buffer cannot hold.
    let records: usize = counts[1..].iter().map(|c| usize::from(*c)).sum();
    if records * 11 > buf.len() {
        return Err(DnsError::Malformed(12));
    }
    let name = r.name()?;
    let t = r.u16()?;
    let c = r.u16()?;
    if name != qname.trim_end_matches('.').to_ascii_lowercase() || t != qtype || c != CLASS_IN {
        return Err(DnsError::Mismatch("question differs from the query"));
    }
    let mut answers = Vec::with_capacity(usize::from(counts[1]));
    for _ in 0..counts[1] {
        answers.push(r.record()?);
    }
    for _ in 0..counts[2] {
        r.record()?;
    }
    let mut additionals = Vec::with_capacity(usize::from(counts[3]));
    for _ in 0..counts[3] {
        additionals.push(r.record()?);
    }
    if r.pos != buf.len() {
        return Err(DnsError::Malformed(r.pos));
    }
    Ok(Response { rcode, answers, additionals })
}

/// The names a query for `qname` answers for: `qname` and the CNAME chain found in `records`
/// (bounded to 8 hops).
pub fn alias_chain(records: &[Record], qname: &str) -> Vec<String> {
    let mut chain = vec![qname.trim_end_matches('.').to_ascii_lowercase()];
    for _ in 0..8 {
        let Some(last) = chain.last() else { break };
        let next = records.iter().find_map(|r| match &r.data {
            RData::Cname(t) if &r.name == last => Some(t.clone()),
            _ => None,
        });
        match next {
            Some(t) if !chain.contains(&t) => chain.push(t),
            _ => break,
        }
    }
    chain
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    // The verified exchange with unbound from the reference page.
    pub const SRV_QUERY: &str =
        "000001000001000000000000055f68747470045f746370036170690373766304746573740000210001";
    pub const SRV_ANSWER: &str = "000085800001000100000000055f68747470045f746370036170690373766304746573740000210001c00c002100010000001e0016000a00051f90056e6f64653103737663047465737400";

    #[test]
    fn builds_the_reference_query() {
        assert_eq!(build_query("_http._tcp.api.svc.test.", TYPE_SRV).unwrap(), hex(SRV_QUERY));
        assert!(build_query("a..b", TYPE_A).is_err());
        assert!(build_query(&"a".repeat(64), TYPE_A).is_err());
        assert!(build_query(&["abcdefghij"; 30].join("."), TYPE_A).is_err());
    }

    #[test]
    fn parses_the_reference_answer() {
        let r = parse_response(&hex(SRV_ANSWER), "_http._tcp.api.svc.test", TYPE_SRV).unwrap();
        assert_eq!(r.rcode, 0);
        assert_eq!(
            r.answers,
            vec![Record {
                name: "_http._tcp.api.svc.test".into(),
                rtype: TYPE_SRV,
                ttl: 30,
                data: RData::Srv { priority: 10, weight: 5, port: 8080, target: "node1.svc.test".into() }
            }]
        );
    }

    /// A small message builder for tests (names written with compression where asked).
    pub struct Msg {
        pub buf: Vec<u8>,
    }

    impl Msg {
        pub fn new(flags: u16, qname: &str, qtype: u16, counts: [u16; 3]) -> Self {
            let mut buf = Vec::new();
            buf.extend_from_slice(&[0, 0]);
            buf.extend_from_slice(&flags.to_be_bytes());
            buf.extend_from_slice(&1u16.to_be_bytes());
            for c in counts {
                buf.extend_from_slice(&c.to_be_bytes());
            }
            let mut m = Msg { buf };
            m.name(qname);
            m.buf.extend_from_slice(&qtype.to_be_bytes());
            m.buf.extend_from_slice(&1u16.to_be_bytes());
            m
        }
        pub fn name(&mut self, name: &str) {
            for l in name.split('.').filter(|l| !l.is_empty()) {
                self.buf.push(l.len() as u8);
                self.buf.extend_from_slice(l.as_bytes());
            }
            self.buf.push(0);
        }
        /// A record whose owner is a pointer to offset 12 (the question name).
        pub fn rr_ptr(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
            self.buf.extend_from_slice(&[0xc0, 12]);
            self.rr_tail(rtype, ttl, rdata);
        }
        pub fn rr(&mut self, owner: &str, rtype: u16, ttl: u32, rdata: &[u8]) {
            self.name(owner);
            self.rr_tail(rtype, ttl, rdata);
        }
        fn rr_tail(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) {
            self.buf.extend_from_slice(&rtype.to_be_bytes());
            self.buf.extend_from_slice(&1u16.to_be_bytes());
            self.buf.extend_from_slice(&ttl.to_be_bytes());
            self.buf.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            self.buf.extend_from_slice(rdata);
        }
    }

    pub fn srv_rdata(priority: u16, weight: u16, port: u16, target: &str) -> Vec<u8> {
        let mut m = Msg { buf: Vec::new() };
        m.buf.extend_from_slice(&priority.to_be_bytes());
        m.buf.extend_from_slice(&weight.to_be_bytes());
        m.buf.extend_from_slice(&port.to_be_bytes());
        m.name(target);
        m.buf
    }

    #[test]
    fn compression_pointers_and_additionals() {
        let mut m = Msg::new(0x8180, "api.svc.test", TYPE_A, [2, 0, 1]);
        m.rr_ptr(TYPE_CNAME, 60, &[3, b'w', b'e', b'b', 0xc0, 16]); // "web" + pointer to "svc.test"
        m.rr("web.svc.test", TYPE_A, 20, &[10, 0, 0, 1]);
        m.rr("other.test", TYPE_AAAA, 5, &Ipv6Addr::LOCALHOST.octets());
        let r = parse_response(&m.buf, "API.svc.test.", TYPE_A).unwrap();
        assert_eq!(r.answers[0].data, RData::Cname("web.svc.test".into()));
        assert_eq!(r.answers[1].data, RData::A(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(r.additionals[0].data, RData::Aaaa(Ipv6Addr::LOCALHOST));
        assert_eq!(alias_chain(&r.answers, "api.svc.test"), ["api.svc.test", "web.svc.test"]);
    }

    #[test]
    fn rejects_bad_messages() {
        let q = "api.svc.test";
        // Truncated, SERVFAIL, not a response, wrong question.
        assert_eq!(
            parse_response(&Msg::new(0x8380, q, TYPE_A, [0, 0, 0]).buf, q, TYPE_A),
            Err(DnsError::Truncated)
        );
        assert_eq!(
            parse_response(&Msg::new(0x8182, q, TYPE_A, [0, 0, 0]).buf, q, TYPE_A),
            Err(DnsError::Rcode(2))
        );
        assert!(matches!(
            parse_response(&Msg::new(0x0100, q, TYPE_A, [0, 0, 0]).buf, q, TYPE_A),
            Err(DnsError::Mismatch(_))
        ));
        assert!(matches!(
            parse_response(&Msg::new(0x8180, q, TYPE_A, [0, 0, 0]).buf, q, TYPE_SRV),
            Err(DnsError::Mismatch(_))
        ));
        // Pointer loop (points at itself) and forward pointer.
        let mut m = Msg::new(0x8180, q, TYPE_A, [1, 0, 0]);
        let at = m.buf.len() as u8;
        m.buf.extend_from_slice(&[0xc0, at]);
        m.rr_tail(TYPE_A, 1, &[1, 2, 3, 4]);
        assert!(matches!(parse_response(&m.buf, q, TYPE_A), Err(DnsError::Malformed(_))));
        // A record with RDLENGTH 3, and one running past the end.
        let mut m = Msg::new(0x8180, q, TYPE_A, [1, 0, 0]);
        m.rr_ptr(TYPE_A, 1, &[1, 2, 3]);
        assert!(matches!(parse_response(&m.buf, q, TYPE_A), Err(DnsError::Malformed(_))));
        let mut m = Msg::new(0x8180, q, TYPE_A, [1, 0, 0]);
        m.rr_ptr(TYPE_A, 1, &[1, 2, 3, 4]);
        m.buf.truncate(m.buf.len() - 1);
        assert!(matches!(parse_response(&m.buf, q, TYPE_A), Err(DnsError::Malformed(_))));
        // Counts the buffer cannot hold, trailing garbage, empty input.
        assert!(parse_response(&Msg::new(0x8180, q, TYPE_A, [9000, 0, 0]).buf, q, TYPE_A).is_err());
        let mut m = Msg::new(0x8180, q, TYPE_A, [0, 0, 0]);
        m.buf.push(0);
        assert!(parse_response(&m.buf, q, TYPE_A).is_err());
        assert!(parse_response(&[], q, TYPE_A).is_err());
    }

    #[test]
    fn never_panics_on_mutations() {
        // Every truncation and every single-byte corruption of a valid answer parses or errors.
        let good = hex(SRV_ANSWER);
        for n in 0..good.len() {
            let _ = parse_response(&good[..n], "_http._tcp.api.svc.test", TYPE_SRV);
            for v in [0x00, 0x3f, 0xc0, 0xff] {
                let mut bad = good.clone();
                bad[n] = v;
                let _ = parse_response(&bad, "_http._tcp.api.svc.test", TYPE_SRV);
            }
        }
    }
}
