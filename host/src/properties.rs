//! Properties (`proxy_get_property`) with Envoy's binary encoding, and encoders for seeding them.
//!
//! Lookup order: values the filters set (`proxy_set_property`, Envoy's filter state `wasm.<path>`, found by
//! the first path segment) for paths Envoy does not know, per-request seeds ([`crate::Request::property`]), proxy seeds
//! ([`crate::ProxyBuilder::property`]), then values computed from the stream and plugin.

use crate::abi::serialize_pairs;
use crate::vm::{Ctx, VmState, sd};

/// Encoders for property values in Envoy's binary format.
pub mod encode {
    /// int64 as 8 bytes little-endian (e.g. `response.code`, `source.port`).
    pub fn int64(v: i64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    /// uint64 as 8 bytes little-endian (e.g. `connection.id`).
    pub fn uint64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }
    /// bool as one byte (e.g. `connection.mtls`).
    pub fn boolean(v: bool) -> Vec<u8> {
        vec![u8::from(v)]
    }
    /// A timestamp or duration as int64 nanoseconds.
    pub fn nanos(ns: i64) -> Vec<u8> {
        ns.to_le_bytes().to_vec()
    }
    /// A string map in the header-map pairs format (e.g. `request.headers`).
    pub fn map(pairs: &[(&str, &str)]) -> Vec<u8> {
        let p: Vec<(Vec<u8>, Vec<u8>)> =
            pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        super::serialize_pairs(&p)
    }
}

/// A `\0`-separated path as a dotted key.
pub(crate) fn dotted(path: &[u8]) -> String {
    let parts: Vec<String> = path
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    parts.join(".")
}

/// Root paths Envoy computes itself (set_property cannot shadow them).
const KNOWN_ROOTS: &[&str] = &[
    "request",
    "response",
    "connection",
    "upstream",
    "source",
    "destination",
    "metadata",
    "filter_state",
    "node",
    "plugin_name",
    "plugin_root_id",
    "plugin_vm_id",
    "cluster_name",
    "cluster_metadata",
    "route_name",
    "route_metadata",
    "listener_direction",
    "listener_metadata",
    "upstream_host_metadata",
    "xds",
];

pub(crate) fn lookup(st: &VmState, path: &[u8]) -> Option<Vec<u8>> {
    let key = dotted(path);
    if key.is_empty() {
        return None;
    }
    let root = key.split('.').next().unwrap_or("");
    let stream = match st.contexts.get(&st.effective) {
        Some(Ctx::Stream { data, .. }) => Some(data.clone()),
        _ => None,
    };
    // Filter state set by the guest (last write wins). Like Envoy, only the first path segment names
    // the filter-state key; the value is bytes, so a longer path finds nothing.
    if !KNOWN_ROOTS.contains(&root) {
        let first =
            path.split(|b| *b == 0).find(|p| !p.is_empty()).map(|p| String::from_utf8_lossy(p).into_owned());
        let single = first.as_deref() == Some(key.as_str());
        if let Some(s) = &stream
            && let Some(first) = &first
            && let Some((_, v)) = sd(s).properties_set.iter().rev().find(|(k, _)| k == first)
        {
            return if single { Some(v.clone()) } else { None };
        }
    }
    if let Some(s) = &stream
        && let Some((_, v)) = sd(s).props.iter().rev().find(|(k, _)| *k == key)
    {
        return Some(v.clone());
    }
    if let Some(shared) = &st.shared
        && let Some((_, v)) = shared.seeds.iter().rev().find(|(k, _)| *k == key)
    {
        return Some(v.clone());
    }
    let info = st.root_info(st.effective);
    match key.as_str() {
        "plugin_name" => return info.map(|i| i.plugin_name.as_bytes().to_vec()),
        "plugin_root_id" => return info.map(|i| i.root_id.as_bytes().to_vec()),
        "plugin_vm_id" => return info.map(|i| i.vm_id.as_bytes().to_vec()),
        _ => {}
    }
    let s = stream?;
    let d = sd(&s);
    let rh = &d.req_headers;
    let path_of = || rh.get_bytes(":path").map(|p| p.to_vec());
    let v = match key.as_str() {
        "request.path" => path_of()?,
        "request.url_path" => {
            let p = path_of()?;
            p.split(|b| *b == b'?').next().unwrap_or(&[]).to_vec()
        }
        "request.host" => rh.get_bytes(":authority")?.to_vec(),
        "request.scheme" => rh.get_bytes(":scheme")?.to_vec(),
        "request.method" => rh.get_bytes(":method")?.to_vec(),
        "request.headers" => serialize_pairs(rh.pairs()),
        "request.referer" => rh.get_bytes("referer")?.to_vec(),
        "request.useragent" => rh.get_bytes("user-agent")?.to_vec(),
        "request.id" => rh.get_bytes("x-request-id")?.to_vec(),
        "request.protocol" => b"HTTP/1.1".to_vec(),
        "request.time" => encode::nanos(d.start_unix_ns as i64),
        "request.size" => encode::int64(d.request_size as i64),
        "request.total_size" => encode::int64(d.request_size as i64),
        "response.code" => encode::int64(i64::from(d.response_code?)),
        "response.headers" => serialize_pairs(d.resp_headers.pairs()),
        "response.trailers" => serialize_pairs(d.resp_trailers.as_ref()?.pairs()),
        "response.size" => encode::int64(d.response_size as i64),
        "response.total_size" => encode::int64(d.response_size as i64),
        "source.address" => b"127.0.0.1:50000".to_vec(),
        "source.port" => encode::int64(50000),
        "destination.address" => b"127.0.0.1:10000".to_vec(),
        "destination.port" => encode::int64(10000),
        "connection.mtls" => encode::boolean(false),
        // Envoy 1.40 answers "" on any connection without an SNI (plaintext included).
        "connection.requested_server_name" => Vec::new(),
        "connection.id" => encode::uint64(u64::from(d.id.id)),
        "upstream.address" => d.upstream_address.as_ref()?.as_bytes().to_vec(),
        other => {
            if let Some(h) = other.strip_prefix("request.headers.") {
                return rh.get_bytes(h).map(|v| v.to_vec());
            }
            if let Some(h) = other.strip_prefix("response.headers.") {
                return d.resp_headers.get_bytes(h).map(|v| v.to_vec());
            }
            return None;
        }
    };
    Some(v)
}
