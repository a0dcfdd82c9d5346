//! Envoy's `connection.*` attributes of a TLS connection, computed from real certificates, so a filter
//! sees in this host exactly what Envoy gives it: `serve` fills them from each handshake, and tests seed
//! them per request from certificates they made ([`connection_properties`], [`CertInfo`]).
//!
//! ```no_run
//! # fn demo(peer_der: &[u8], local_der: &[u8]) -> anyhow::Result<()> {
//! use meshwasm_host::{Request, tls};
//! let peer = tls::CertInfo::parse(peer_der)?;
//! let local = tls::CertInfo::parse(local_der)?;
//! let mut request = Request::get("/orders");
//! for (path, value) in tls::connection_properties(Some(&peer), Some(&local), "TLSv1.3", Some("orders.shop.svc")) {
//!     request = request.property(&path, value);
//! }
//! # Ok(()) }
//! ```

use sha2::{Digest, Sha256};

use crate::properties::encode as property;

/// Envoy's `connection.*` properties of one TLS connection: `mtls` (a peer certificate was presented
/// and verified), `tls_version`, `requested_server_name` (the SNI; "" without, as Envoy), the first URI and
/// DNS SAN and the subject of the peer and local certificates, and the peer certificate's
/// `sha256_peer_certificate_digest`. Names absent from a certificate are absent, as in Envoy.
pub fn connection_properties(
    peer: Option<&CertInfo>,
    local: Option<&CertInfo>,
    tls_version: &str,
    sni: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    let mut props = vec![
        ("connection.mtls".to_string(), property::boolean(peer.is_some())),
        ("connection.tls_version".to_string(), tls_version.as_bytes().to_vec()),
    ];
    // Envoy reports "" without SNI (status OK, not absent).
    props.push(("connection.requested_server_name".into(), sni.unwrap_or("").as_bytes().to_vec()));
    if let Some(local) = local {
        local.push_properties("local", &mut props);
    }
    if let Some(peer) = peer {
        peer.push_properties("peer", &mut props);
        props
            .push(("connection.sha256_peer_certificate_digest".into(), peer.sha256_hex.clone().into_bytes()));
    }
    props
}

/// What Envoy's attributes expose of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The first URI SAN (Envoy exposes only the first).
    pub uri_san: Option<String>,
    pub dns_san: Option<String>,
    /// RFC 2253, as OpenSSL's `X509_NAME_print_ex(XN_FLAG_RFC2253)` (Envoy's format).
    pub subject: String,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256_hex: String,
}

impl CertInfo {
    /// Reads a DER certificate.
    pub fn parse(der: &[u8]) -> anyhow::Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| anyhow::anyhow!("cannot parse the certificate: {e}"))?;
        let (mut uri_san, mut dns_san) = (None, None);
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::URI(u) if uri_san.is_none() => {
                        uri_san = Some(u.to_string())
                    }
                    x509_parser::extensions::GeneralName::DNSName(d) if dns_san.is_none() => {
                        dns_san = Some(d.to_string())
                    }
                    _ => {}
                }
            }
        }
        let digest = Sha256::digest(der);
        let sha256_hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok(CertInfo { uri_san, dns_san, subject: rfc2253(cert.subject()), sha256_hex })
    }

    fn push_properties(&self, side: &str, props: &mut Vec<(String, Vec<u8>)>) {
        if let Some(uri) = &self.uri_san {
            props.push((format!("connection.uri_san_{side}_certificate"), uri.clone().into_bytes()));
        }
        if let Some(dns) = &self.dns_san {
            props.push((format!("connection.dns_san_{side}_certificate"), dns.clone().into_bytes()));
        }
        props.push((format!("connection.subject_{side}_certificate"), self.subject.clone().into_bytes()));
    }
}

/// A distinguished name as OpenSSL prints it with `XN_FLAG_RFC2253`: the last RDN first, `,` between
/// RDNs, `+` inside one, short names, RFC 2253 escapes, bytes outside printable ASCII as `\XX`, and
/// attributes without a short name as the dotted OID with `#` and the value's hex DER.
pub fn rfc2253(name: &x509_parser::x509::X509Name<'_>) -> String {
    let mut out = String::new();
    for (i, rdn) in name.iter().collect::<Vec<_>>().into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // OpenSSL (Envoy) prints the name's entries last first, the values of one multi-valued RDN
        // included (`OU=b+OU=a` for DER `OU=a`,`OU=b`).
        for (j, atv) in rdn.iter().collect::<Vec<_>>().into_iter().rev().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let oid = atv.attr_type().to_id_string();
            let short = short_name(&oid);
            match (short, atv.as_str()) {
                (Some(sn), Ok(value)) => {
                    out.push_str(sn);
                    out.push('=');
                    escape_2253(value.as_bytes(), &mut out);
                }
                (sn, _) => {
                    out.push_str(sn.unwrap_or(&oid));
                    out.push_str("=#");
                    let any = atv.attr_value();
                    // The DER of the value: tag, length, content (short or long form length).
                    let data = any.as_bytes();
                    let mut der = vec![any.header.tag().0 as u8];
                    let len = data.len();
                    if len < 0x80 {
                        der.push(len as u8);
                    } else {
                        let bytes: Vec<u8> =
                            len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
                        der.push(0x80 | bytes.len() as u8);
                        der.extend(bytes);
                    }
                    der.extend_from_slice(data);
                    for b in der {
                        out.push_str(&format!("{b:02X}"));
                    }
                }
            }
        }
    }
    out
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.4" => "SN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "street",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.12" => "title",
        "2.5.4.42" => "GN",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

fn escape_2253(value: &[u8], out: &mut String) {
    let last = value.len().saturating_sub(1);
    for (i, &b) in value.iter().enumerate() {
        match b {
            b',' | b'+' | b'"' | b'\\' | b'<' | b'>' | b';' => {
                out.push('\\');
                out.push(b as char);
            }
            b'#' if i == 0 => out.push_str("\\#"),
            b' ' if i == 0 || i == last => out.push_str("\\ "),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:02X}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_print_as_openssl_rfc2253() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CountryName, "US");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme, Inc.");
        params.distinguished_name.push(rcgen::DnType::CommonName, " #front+end ");
        params.distinguished_name.push(rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]), "xyz");
        params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, "caf\u{e9}");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der().as_ref()).unwrap();
        // Envoy (OpenSSL XN_FLAG_RFC2253): most specific first, no spaces after commas, escapes, UTF-8
        // bytes as \XX, an attribute without a short name as its OID and hex DER. The expected string is
        // what `openssl x509 -noout -subject -nameopt RFC2253` (OpenSSL 3) prints for this certificate.
        assert_eq!(info.subject, r"OU=caf\C3\A9,1.2.3.4=#0C0378797A,CN=\ #front\+end\ ,O=Acme\, Inc.,C=US");
        assert_eq!(info.sha256_hex.len(), 64);

        assert_eq!(info.uri_san, None);
    }
}
