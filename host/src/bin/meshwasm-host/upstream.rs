//! Upstream clusters: picking an endpoint (round robin, or the original destination from a header) and
//! sending a buffered HTTP/1.1 request there, with Envoy's failure replies.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::config::{Cluster, ClusterKind};
use crate::tls::ClusterTls;

/// Headers that describe one hop of HTTP/1.1 and are never forwarded (RFC 9110 §7.6.1).
pub const HOP_BY_HOP: &[&str] =
    &["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"];

/// A response as the proxy handles it: everything buffered (filters see one body chunk).
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, in order, no pseudo-headers.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

/// Why the upstream gave no response; each maps to the reply Envoy's router sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// No endpoint: an `original_dst` header missing or not an IP:port literal (Envoy: 503, `UH`).
    NoHealthyUpstream,
    /// Connect refused / reset before the response started (Envoy: 503, `UF`).
    ConnectFailure(String),
    /// The route timeout passed (Envoy: 504, `UT`).
    Timeout,
}

impl UpstreamFailure {
    /// Envoy's local reply for this failure: status, body, response flag and response code details.
    pub fn local_reply(&self) -> (u16, String, &'static str, &'static str) {
        match self {
            UpstreamFailure::NoHealthyUpstream => {
                (503, "no healthy upstream".into(), "UH", "no_healthy_upstream")
            }
            UpstreamFailure::ConnectFailure(reason) => (
                503,
                format!(
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {reason}"
                ),
                "UF",
                "upstream_reset_before_response_started{connection_failure}",
            ),
            UpstreamFailure::Timeout => {
                (504, "upstream request timeout".into(), "UT", "upstream_response_timeout")
            }
        }
    }
}

/// One worker's view of a cluster: its own round-robin position and connection pool, like an Envoy worker.
pub struct UpstreamCluster {
    pub config: Cluster,
    next: Cell<usize>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl UpstreamCluster {
    pub fn new(config: Cluster) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        UpstreamCluster { config, next: Cell::new(0), client }
    }

    /// The endpoint for a request whose header values `header(name)` gives (lower-case names), or `None`
    /// (Envoy: no healthy upstream).
    pub fn pick<'a>(&self, header: impl Fn(&str) -> Option<&'a [u8]>) -> Option<SocketAddr> {
        match &self.config.kind {
            ClusterKind::Static(endpoints) => {
                let i = self.next.get();
                self.next.set(i.wrapping_add(1));
                endpoints.get(i % endpoints.len()).copied()
            }
            ClusterKind::OriginalDst { header: Some(name) } => parse_ip_port(header(name)?),
            ClusterKind::OriginalDst { header: None } => None,
        }
    }

    /// The endpoint for a request that left the filter chain. An `original_dst` cluster takes the
    /// filter-state override first, as Envoy's `filterStateOverrideHost` does, then its header.
    pub fn pick_forwarded(&self, req: &meshwasm_host::ForwardedRequest) -> Option<SocketAddr> {
        if matches!(self.config.kind, ClusterKind::OriginalDst { .. })
            && let Some(addr) = meshwasm_host::foreign::original_dst_from_filter_state(&req.filter_state)
        {
            return Some(addr);
        }
        self.pick(|k| req.headers.get_bytes(k))
    }

    /// Sends the request to `addr` and reads the whole response within `timeout`.
    pub async fn send(
        &self,
        addr: SocketAddr,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response, UpstreamFailure> {
        if let Some(tls) = &self.config.tls {
            return match tokio::time::timeout(timeout, self.send_tls(tls, addr, request)).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamFailure::Timeout),
            };
        }
        let (mut parts, body) = request.into_parts();
        let mut uri = format!("http://{addr}");
        uri.push_str(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
        parts.uri = uri.parse().map_err(|e| UpstreamFailure::ConnectFailure(format!("bad path: {e}")))?;
        let request = hyper::Request::from_parts(parts, body);
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason = s.to_string();
                    source = s.source();
                }
                UpstreamFailure::ConnectFailure(reason)
            })?;
            read_response(response).await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamFailure::Timeout),
        }
    }
}

impl UpstreamCluster {
    /// One request over a new TLS connection (no pooling: a TLS cluster is for trying identities, and a
    /// fresh handshake per request keeps each exchange's peer certificate checked).
    async fn send_tls(
        &self,
        tls: &ClusterTls,
        addr: SocketAddr,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<Response, UpstreamFailure> {
        let fail =
            |what: &str, e: &dyn std::fmt::Display| UpstreamFailure::ConnectFailure(format!("{what}: {e}"));
        let tcp = tokio::time::timeout(self.config.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamFailure::ConnectFailure("connect timeout".into()))?
            .map_err(|e| fail("connect", &e))?;
        let _ = tcp.set_nodelay(true);
        let name = tls.sni.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        let stream = tokio::time::timeout(
            self.config.connect_timeout,
            tokio_rustls::TlsConnector::from(tls.config.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| UpstreamFailure::ConnectFailure("TLS handshake timeout".into()))?
        .map_err(|e| fail("TLS error", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail("http", &e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (mut parts, body) = request.into_parts();
        // Origin form on a direct connection; `host` already carries the authority.
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
        parts.uri = path.parse().map_err(|e| fail("bad path", &e))?;
        let response = sender
            .send_request(hyper::Request::from_parts(parts, body))
            .await
            .map_err(|e| fail("http", &e))?;
        read_response(response).await
    }
}

/// The largest upstream response body buffered; a larger one fails the exchange (503) instead of
/// growing without bound (Envoy likewise refuses a response over its buffer limit).
pub const MAX_RESPONSE_BODY: usize = 64 << 20;

/// Collects a body, failing once it passes `limit` bytes.
async fn collect_limited<B>(body: B, limit: usize) -> Result<Bytes, UpstreamFailure>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(UpstreamFailure::ConnectFailure(format!("response body over {} MiB", limit >> 20)))
        }
        Err(e) => Err(UpstreamFailure::ConnectFailure(format!("response body: {e}"))),
    }
}

async fn read_response(response: hyper::Response<Incoming>) -> Result<Response, UpstreamFailure> {
    let (parts, body) = response.into_parts();
    let body = collect_limited(body, MAX_RESPONSE_BODY).await?;
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP_BY_HOP.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    Ok(Response { status: parts.status.as_u16(), headers, body })
}

/// An `original_dst` header value: exactly an IP:port literal (IPv6 in brackets), as Envoy requires.
pub fn parse_ip_port(value: &[u8]) -> Option<SocketAddr> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn response_bodies_are_collected_up_to_the_limit() {
        let ok = collect_limited(Full::new(Bytes::from_static(b"0123456789")), 10).await;
        assert_eq!(ok.ok().as_deref(), Some(&b"0123456789"[..]));
        match collect_limited(Full::new(Bytes::from(vec![0u8; (1 << 20) + 1])), 1 << 20).await {
            Err(UpstreamFailure::ConnectFailure(reason)) => {
                assert!(reason.contains("over 1 MiB"), "{reason}")
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
    use crate::config::ClusterKind;

    fn cluster(kind: ClusterKind) -> Cluster {
        Cluster { name: "c".into(), kind, connect_timeout: Duration::from_secs(1), tls: None }
    }

    #[test]
    fn ip_port_literals_only() {
        assert_eq!(parse_ip_port(b"127.0.0.1:80"), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(parse_ip_port(b"[::1]:80"), Some("[::1]:80".parse().unwrap()));
        for bad in [&b"localhost:80"[..], b"127.0.0.1", b"127.0.0.1:99999", b"", b" 127.0.0.1:80", b"\xff"] {
            assert_eq!(parse_ip_port(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn picks_round_robin_and_from_the_header() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let rr = UpstreamCluster::new(cluster(ClusterKind::Static(vec![a, b])));
        let picks: Vec<_> = (0..4).map(|_| rr.pick(|_| None).unwrap()).collect();
        assert_eq!(picks, [a, b, a, b]);

        let od = UpstreamCluster::new(cluster(ClusterKind::OriginalDst { header: Some("x-to".into()) }));
        let headers = |value: &'static [u8]| move |k: &str| (k == "x-to").then_some(value);
        assert_eq!(od.pick(headers(b"127.0.0.1:2")), Some(b));
        assert_eq!(od.pick(headers(b"not-an-ip:2")), None);
        assert_eq!(od.pick(|_| None), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn original_dst_takes_filter_state_first_and_a_header_only_when_configured() {
        use meshwasm_host::foreign::ORIGINAL_DST_FILTER_STATE_KEY;
        let req = |to: &str, state: Option<&str>| meshwasm_host::ForwardedRequest {
            headers: meshwasm_host::Headers::new().with("x-to", to),
            filter_state: state
                .map(|s| (ORIGINAL_DST_FILTER_STATE_KEY.to_owned(), s.as_bytes().to_vec()))
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let no_header = UpstreamCluster::new(cluster(ClusterKind::OriginalDst { header: None }));
        assert_eq!(no_header.pick_forwarded(&req("127.0.0.1:2", None)), None, "the header steers nothing");
        let picked = Some("127.0.0.1:1".parse().unwrap());
        assert_eq!(no_header.pick_forwarded(&req("127.0.0.1:2", Some("127.0.0.1:1"))), picked);
        let with_header =
            UpstreamCluster::new(cluster(ClusterKind::OriginalDst { header: Some("x-to".into()) }));
        assert_eq!(with_header.pick_forwarded(&req("127.0.0.1:2", Some("127.0.0.1:1"))), picked);
        assert_eq!(
            with_header.pick_forwarded(&req("127.0.0.1:2", None)),
            Some("127.0.0.1:2".parse().unwrap())
        );
    }
}
