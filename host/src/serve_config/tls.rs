//! TLS for `serve`: listener (TLS and mTLS) and upstream cluster configurations built with rustls
//! (the `ring` provider), and Envoy's `connection.*` properties read from a finished handshake.
//!
//! The properties are what Envoy's attributes give a wasm filter for a TLS downstream connection:
//! the first URI and DNS SAN, the subject in RFC 2253 form, the hex SHA-256 of the peer certificate,
//! the negotiated version and the SNI, plus the local certificate's SANs and subject. They are computed
//! once per connection and seeded into every stream on it, as Envoy reads them from the connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tls::{self, CertInfo};
use anyhow::{Context, bail};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

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
    client_certificate_required: bool,
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
        let client_certificate_required = spec.client_ca.is_some() && spec.require_client_certificate;
        Ok(ListenerTls { config: Arc::new(config), local, client_certificate_required })
    }

    /// Whether every client must present a certificate from the client CA (mTLS).
    pub fn requires_client_certificate(&self) -> bool {
        self.client_certificate_required
    }

    /// Envoy's `connection.*` properties of one handshake, for every stream on the connection.
    pub fn connection_properties(&self, conn: &rustls::ServerConnection) -> Vec<(String, Vec<u8>)> {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        };
        // The handshake verified the chain, so the peer certificate parses; if it somehow did not,
        // the connection has no peer identity (connection.mtls false) rather than a wrong one.
        let peer = conn.peer_certificates().and_then(|c| c.first()).and_then(|c| CertInfo::parse(c).ok());
        tls::connection_properties(peer.as_ref(), Some(&self.local), version, conn.server_name())
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
