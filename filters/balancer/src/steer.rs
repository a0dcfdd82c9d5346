//! Steering Envoy to the pick without a request header: the arguments of Envoy's
//! `set_envoy_filter_state` foreign function for the filter-state key an `ORIGINAL_DST` cluster reads.
//!
//! Envoy's `OriginalDstCluster::LoadBalancer::filterStateOverrideHost` looks this key up first, before
//! metadata and the (optional) header; the key has a registered object factory
//! (`OriginalDstClusterFilterStateFactory`) that parses `ip:port`, so `set_envoy_filter_state`
//! accepts it. A client cannot set filter state, so whatever it sends cannot steer the cluster.

use std::net::SocketAddr;

/// The foreign function that sets Envoy filter state from wasm.
pub const SET_FILTER_STATE: &str = "set_envoy_filter_state";

/// The filter-state key Envoy's `ORIGINAL_DST` cluster takes the upstream address from.
pub const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Serialized `envoy.source.extensions.common.wasm.SetEnvoyFilterStateArguments`
/// `{path: 1, value: 2, span: 3}` for `ORIGINAL_DST_KEY = address`. `span` stays at its default,
/// `FilterChain` (0, not encoded): the pick is for this pass through the chain only.
pub fn original_dst_args(address: SocketAddr) -> Vec<u8> {
    let value = address.to_string();
    let mut out = Vec::with_capacity(ORIGINAL_DST_KEY.len() + value.len() + 6);
    field(&mut out, 1, ORIGINAL_DST_KEY.as_bytes());
    field(&mut out, 2, value.as_bytes());
    out
}

/// A length-delimited protobuf field.
fn field(out: &mut Vec<u8>, number: u8, bytes: &[u8]) {
    out.push(number << 3 | 2);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_the_key_and_the_address() {
        let args = original_dst_args("10.0.0.1:8080".parse().unwrap());
        let mut want = vec![0x0a, ORIGINAL_DST_KEY.len() as u8];
        want.extend_from_slice(ORIGINAL_DST_KEY.as_bytes());
        want.extend_from_slice(&[0x12, 13]);
        want.extend_from_slice(b"10.0.0.1:8080");
        assert_eq!(args, want);
        let v6 = original_dst_args("[::1]:80".parse().unwrap());
        assert!(v6.ends_with(b"\x12\x08[::1]:80"));
    }

    #[test]
    fn long_fields_use_multi_byte_lengths() {
        let mut out = Vec::new();
        field(&mut out, 2, &[b'x'; 300]);
        assert_eq!(&out[..3], &[0x12, 0xac, 0x02]);
        assert_eq!(out.len(), 303);
    }
}
