//! The router: the request that left the filter chain goes to the route's cluster; upstream failures
//! become Envoy's local replies.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use meshwasm_host::{ForwardedRequest, Headers};

use crate::upstream::{HOP_BY_HOP, UpstreamFailure};

use super::downstream::{ListenerCtx, RouteInfo};

/// A response built here (upstream or failure), in the shape the worker takes.
pub(super) struct RoutedResponse {
    pub(super) headers: Headers,
    pub(super) body: Vec<u8>,
}

/// Sends the request that left the chain to the route's cluster; upstream failures become Envoy's
/// local replies (503 no healthy upstream / connect failure, 504 timeout).
pub(super) async fn route(ctx: &ListenerCtx, req: &ForwardedRequest) -> (RoutedResponse, RouteInfo) {
    let l = &ctx.listener;
    let result = match ctx.upstreams.get(&l.route_cluster) {
        None => Err((UpstreamFailure::NoHealthyUpstream, None)),
        Some(cluster) => match cluster.pick_forwarded(req) {
            None => Err((UpstreamFailure::NoHealthyUpstream, None)),
            Some(addr) => match build_upstream_request(&req.headers, &req.body) {
                Err(e) => Err((UpstreamFailure::ConnectFailure(e), Some(addr))),
                Ok(hreq) => match cluster.send(addr, hreq, l.route_timeout).await {
                    Ok(r) => Ok((r, addr)),
                    Err(f) => Err((f, Some(addr))),
                },
            },
        },
    };
    match result {
        Ok((r, addr)) => {
            let mut headers = Headers::new().with(":status", r.status.to_string());
            for (k, v) in &r.headers {
                headers.add(k, v);
            }
            (
                RoutedResponse { headers, body: r.body.to_vec() },
                RouteInfo { upstream: Some(addr), flags: "-", details: "via_upstream".into() },
            )
        }
        Err((failure, addr)) => {
            let (status, body, flags, details) = failure.local_reply();
            let headers = Headers::new()
                .with(":status", status.to_string())
                .with("content-length", body.len().to_string())
                .with("content-type", "text/plain");
            (
                RoutedResponse { headers, body: body.into_bytes() },
                RouteInfo { upstream: addr, flags, details: details.into() },
            )
        }
    }
}

/// An HTTP/1.1 request for an upstream from a header map with pseudo-headers. Hop-by-hop headers and
/// `content-length` are dropped (the body may have been changed by a filter; hyper sets the length).
pub(super) fn build_upstream_request(
    headers: &Headers,
    body: &[u8],
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let method = headers.get(":method").unwrap_or("GET");
    let path = headers.get(":path").unwrap_or("/");
    let mut b = hyper::Request::builder().method(method).uri(path);
    if let Some(authority) = headers.get_bytes(":authority") {
        let v = HeaderValue::from_bytes(authority).map_err(|_| "invalid :authority".to_string())?;
        b = b.header(hyper::header::HOST, v);
    }
    for (k, v) in headers.iter() {
        if k.starts_with(b":") || k == b"host" || k == b"content-length" {
            continue;
        }
        let name = HeaderName::from_bytes(k)
            .map_err(|_| format!("invalid header name {:?}", String::from_utf8_lossy(k)))?;
        if HOP_BY_HOP.contains(&name.as_str()) {
            continue;
        }
        let value =
            HeaderValue::from_bytes(v).map_err(|_| format!("invalid value for header {}", name.as_str()))?;
        b = b.header(name, value);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| format!("invalid request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_requests_drop_hop_by_hop_headers_and_take_host_from_authority() {
        let headers = Headers::new()
            .with(":authority", "api.test")
            .with(":path", "/v1?q=1")
            .with(":method", "PUT")
            .with(":scheme", "http")
            .with("connection", "keep-alive")
            .with("content-length", "999")
            .with("x-a", "1");
        let r = build_upstream_request(&headers, b"body").unwrap();
        assert_eq!(r.method(), "PUT");
        assert_eq!(r.uri(), "/v1?q=1");
        assert_eq!(r.headers()["host"], "api.test");
        assert_eq!(r.headers()["x-a"], "1");
        assert!(r.headers().get("connection").is_none() && r.headers().get("content-length").is_none());

        let bad = Headers::new().with(":path", "/").with("x-b", "a\nb");
        assert!(build_upstream_request(&bad, b"").unwrap_err().contains("x-b"));
    }
}
