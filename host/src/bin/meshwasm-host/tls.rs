//! TLS for `serve`: listener (TLS and mTLS) and upstream cluster configurations built with rustls
//! (the `ring` provider), and Envoy's `connection.*` properties read from a finished handshake.
//!
//! The properties are what Envoy's attributes give a wasm filter for a TLS downstream connection:
//! the first URI and DNS SAN, the subject in RFC 2253 form, the hex SHA-256 of the peer certificate,
//! the negotiated version and the SNI, plus the local certificate's SANs and subject. They are computed
//! once per connection and seeded into every stream on it, as Envoy reads them from the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use meshwasm_host::property;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// A listener's `tls:` block, paths resolved.
#[derive(Debug, Clone)]
pub struct ListenerTlsSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to these (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Without a client certificate the handshake fails (default true with `client_ca`).
    pub require_client_certificate: bool,
}

/// A cluster's `tls:` block, paths resolved.
#[derive(Debug, Clone)]
pub struct ClusterTlsSpec {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub sni: Option<String>,
    /// The upstream certificate must carry one of these SANs (URI, DNS or IP); it replaces the name check.
    pub verify_san: Vec<String>,
}

/// rustls over ring: it builds with the system C compiler (aws-lc-rs needs cmake). rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange, which a test proxy can do without.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path, at: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{at}: cannot read PEM certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{at}: no certificate in {}", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path, at: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| anyhow::anyhow!("{at}: cannot read a PEM private key from {}: {e}", path.display()))
}

fn read_roots(path: &Path, at: &str) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, at)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("{at}: bad CA certificate in {}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A TLS listener: its rustls configuration and the local certificate's properties.
#[derive(Debug)]
pub struct ListenerTls {
    pub config: Arc<rustls::ServerConfig>,
    local: CertInfo,
}

impl ListenerTls {
    /// Loads and checks the files; `at` names the listener (`listeners[0].tls`) in errors.
    pub fn new(spec: &ListenerTlsSpec, at: &str) -> anyhow::Result<Self> {
        let certs = read_certs(&spec.cert, &format!("{at}.cert"))?;
        let key = read_key(&spec.key, &format!("{at}.key"))?;
        let local = CertInfo::parse(&certs[0]).with_context(|| format!("{at}.cert"))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match &spec.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let roots = read_roots(ca, &format!("{at}.client_ca"))?;
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier =
                    if spec.require_client_certificate { verifier } else { verifier.allow_unauthenticated() };
                builder.with_client_cert_verifier(
                    verifier.build().map_err(|e| anyhow::anyhow!("{at}.client_ca: {e}"))?,
                )
            }
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| anyhow::anyhow!("{at}.key: does not fit {at}.cert: {e}"))?;
        Ok(ListenerTls { config: Arc::new(config), local })
    }

    /// Envoy's `connection.*` properties of one handshake, for every stream on the connection.
    pub fn connection_properties(&self, conn: &rustls::ServerConnection) -> Vec<(String, Vec<u8>)> {
        let peer = conn.peer_certificates().and_then(|c| c.first()).and_then(|c| CertInfo::parse(c).ok());
        let mut props = vec![("connection.mtls".to_string(), property::boolean(peer.is_some()))];
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        props.push(("connection.tls_version".into(), version.into()));
        if let Some(sni) = conn.server_name() {
            props.push(("connection.requested_server_name".into(), sni.into()));
        }
        self.local.push_properties("local", &mut props);
        if let Some(peer) = peer {
            peer.push_properties("peer", &mut props);
            props.push(("connection.sha256_peer_certificate_digest".into(), peer.sha256_hex.into_bytes()));
        }
        props
    }
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
    pub fn parse(der: &CertificateDer<'_>) -> anyhow::Result<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
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
        let digest = Sha256::digest(der.as_ref());
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
        for (j, atv) in rdn.iter().enumerate() {
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

/// A cluster's client configuration and the server name it sends.
#[derive(Debug)]
pub struct ClusterTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI (and, without `verify_san`, the name checked); None: the endpoint's IP address.
    pub sni: Option<ServerName<'static>>,
}

impl ClusterTls {
    pub fn new(spec: &ClusterTlsSpec, at: &str) -> anyhow::Result<Self> {
        let roots = read_roots(&spec.ca, &format!("{at}.ca"))?;
        let sni = match &spec.sni {
            None => None,
            Some(s) => Some(
                ServerName::try_from(s.clone())
                    .map_err(|e| anyhow::anyhow!("{at}.sni: `{s}` is not a valid server name: {e}"))?,
            ),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| anyhow::anyhow!("{at}.ca: {e}"))?;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = if spec.verify_san.is_empty() {
            builder.with_webpki_verifier(webpki)
        } else {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(SanVerifier {
                inner: webpki,
                allowed: spec.verify_san.clone(),
            }))
        };
        let config = match (&spec.cert, &spec.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert, &format!("{at}.cert"))?;
                let key = read_key(key, &format!("{at}.key"))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| anyhow::anyhow!("{at}.key: does not fit {at}.cert: {e}"))?
            }
            (Some(_), None) => bail!("{at}.key: `cert` needs its private key"),
            (None, Some(_)) => bail!("{at}.cert: `key` needs its certificate"),
        };
        Ok(ClusterTls { config: Arc::new(config), sni })
    }
}

/// Chain verification as webpki does it, with the name check replaced by a SAN list (Envoy's
/// `match_typed_subject_alt_names`): a SPIFFE workload certificate names a URI, not the host dialled.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    allowed: Vec<String>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the name only after the chain, so a name error means the chain is trusted.
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let (_, cert) = x509_parser::parse_x509_certificate(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let matches = cert.subject_alternative_name().ok().flatten().is_some_and(|san| {
            san.value.general_names.iter().any(|n| {
                let text = match n {
                    x509_parser::extensions::GeneralName::URI(u) => u.to_string(),
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default()).to_string(),
                        16 => {
                            std::net::IpAddr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default()).to_string()
                        }
                        _ => return false,
                    },
                    _ => return false,
                };
                self.allowed.contains(&text)
            })
        });
        if matches {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = CertInfo::parse(cert.der()).unwrap();
        // Envoy (OpenSSL XN_FLAG_RFC2253): most specific first, no spaces after commas.
        assert_eq!(info.subject, r"CN=\ #front\+end\ ,O=Acme\, Inc.,C=US");
        assert_eq!(info.sha256_hex.len(), 64);
        assert_eq!(info.uri_san, None);
    }
}
