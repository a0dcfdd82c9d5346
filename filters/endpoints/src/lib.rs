//! The endpoint-set format that meshwasm's `discovery` filter publishes and its `balancer` filter reads.
//!
//! Discovery and balancer run as separate plugins that share one Envoy `vm_id`, so they meet in proxy-wasm
//! shared data (which Envoy keys by `vm_id`). This crate holds the contract between them and nothing else:
//!
//! - [`EndpointSet`]: one service's endpoints with a monotonically increasing `version`, encoded as compact
//!   JSON (short keys, empty fields omitted) under the shared-data key [`set_key`]`(service)`. Publishers
//!   write the endpoints sorted by address with no duplicate addresses (the first entry for an address
//!   wins), so readers may binary-search by address and compare sets element-wise. Weights are in
//!   `1..=`[`MAX_WEIGHT`] (discovery clamps larger registry weights), so readers may sum them in a `u64`
//!   without care and in a `u32` for up to 4,294 endpoints.
//! - [`SERVICES_KEY`]: the list of service names discovery publishes (a JSON array of strings).
//! - Change notification: every subscriber VM registers its own shared queue (a queue is consumed by one VM,
//!   so one queue per VM is the only way to broadcast), named [`notify_queue_name`]`(seq)` where `seq` comes
//!   from CAS-incrementing the decimal counter under [`QUEUE_SEQ_KEY`], and adds that name to the subscriber
//!   list under [`SUBSCRIBERS_KEY`] (CAS-updated, [`Subscribers::add`]). After publishing a new set, the
//!   publisher enqueues the service name on each subscriber queue, resolving each name with
//!   `resolve_shared_queue(vm_id, name)` where `vm_id` is the publisher's own `plugin_vm_id` property (queues
//!   are keyed by vm_id, like shared data, so both plugins must share one). A listed queue that does not
//!   resolve (NOT_FOUND: its VM was reloaded or destroyed) or refuses the message is dead: the publisher
//!   removes it from the list with a CAS update ([`Subscribers::prune`]), retrying on CAS mismatch so that
//!   concurrent additions are never lost. Readers still re-check versions on a slow tick, so a lost
//!   notification only delays an update.
//!
//! ```
//! use meshwasm_endpoints::{Endpoint, EndpointSet};
//! let set = EndpointSet { version: 3, endpoints: vec![Endpoint::new("10.0.0.1:8080".parse().unwrap())] };
//! let bytes = set.encode();
//! assert_eq!(EndpointSet::decode(&bytes).unwrap(), set);
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Version of the encoding itself; bumped if the layout ever changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Shared-data key prefix of published endpoint sets.
pub const SET_KEY_PREFIX: &str = "meshwasm.endpoints.v1.set.";
/// Shared-data key holding the JSON array of published service names.
pub const SERVICES_KEY: &str = "meshwasm.endpoints.v1.services";
/// Shared-data key holding the JSON array of subscriber queue names.
pub const SUBSCRIBERS_KEY: &str = "meshwasm.endpoints.v1.subscribers";
/// Prefix of each subscriber VM's shared-queue name.
pub const NOTIFY_QUEUE_PREFIX: &str = "meshwasm.endpoints.v1.notify.";
/// Shared-data key of the decimal counter subscribers CAS-increment to get a unique [`notify_queue_name`].
pub const QUEUE_SEQ_KEY: &str = "meshwasm.endpoints.v1.queue_seq";

/// Largest endpoint weight a publisher writes. Registries may report any `u32` (a Nacos weight of 10000 is
/// published as 1,000,000, the largest legitimate value); beyond that a weight only serves to starve every
/// other endpoint, so discovery clamps it. Like Envoy's rule that a locality's weights sum to at most
/// `u32::MAX`, it keeps sums of thousands of endpoints within 32 bits.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Name of the notify queue a subscriber registers after drawing `seq` from [`QUEUE_SEQ_KEY`].
pub fn notify_queue_name(seq: u64) -> String {
    format!("{NOTIFY_QUEUE_PREFIX}{seq}")
}

/// Shared-data key under which the endpoint set of `service` is published.
pub fn set_key(service: &str) -> String {
    format!("{SET_KEY_PREFIX}{service}")
}

/// Why bytes could not be read as an endpoint set.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("endpoint set is not valid: {0}")]
    Invalid(#[from] serde_json::Error),
    #[error("endpoint set has format version {0}, this build reads version {FORMAT_VERSION}")]
    UnsupportedFormat(u32),
}

/// One service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// IP literal and port: what Envoy's ORIGINAL_DST cluster accepts.
    #[serde(rename = "a")]
    pub address: SocketAddr,
    /// Relative weight, `1..=MAX_WEIGHT`.
    #[serde(rename = "w", default = "default_weight")]
    pub weight: u32,
    /// Locality zone, if the registry reports one.
    #[serde(rename = "z", default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(rename = "m", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl Endpoint {
    /// An endpoint with weight 1 and no zone, tags or metadata.
    pub fn new(address: SocketAddr) -> Self {
        Self { address, weight: 1, zone: None, tags: Vec::new(), metadata: BTreeMap::new() }
    }
}

/// A service's endpoints at one version.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointSet {
    /// Increases with every published change; readers rebuild their tables only when it changes.
    pub version: u64,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    #[serde(rename = "f")]
    format: u32,
    #[serde(rename = "v")]
    version: u64,
    #[serde(rename = "e", borrow)]
    endpoints: std::borrow::Cow<'a, [Endpoint]>,
}

impl EndpointSet {
    /// Compact JSON encoding, as stored in shared data.
    pub fn encode(&self) -> Vec<u8> {
        let wire =
            Wire { format: FORMAT_VERSION, version: self.version, endpoints: (&self.endpoints[..]).into() };
        // Serializing plain structs of strings and numbers into a Vec cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Reads an encoded set, rejecting other format versions.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let wire: Wire<'_> = serde_json::from_slice(bytes)?;
        if wire.format != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedFormat(wire.format));
        }
        Ok(Self { version: wire.version, endpoints: wire.endpoints.into_owned() })
    }
}

/// The subscriber queue names stored under [`SUBSCRIBERS_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Subscribers(pub Vec<String>);

impl Subscribers {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Adds `queue` unless present; returns whether the list changed.
    pub fn add(&mut self, queue: &str) -> bool {
        if self.0.iter().any(|q| q == queue) {
            return false;
        }
        self.0.push(queue.to_owned());
        true
    }

    /// Removes `queue` if present; returns whether the list changed.
    pub fn remove(&mut self, queue: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|q| q != queue);
        self.0.len() != before
    }

    /// Removes every queue named in `dead`, keeping the others in order; returns whether the list changed.
    pub fn prune(&mut self, dead: &[String]) -> bool {
        let before = self.0.len();
        self.0.retain(|q| !dead.contains(q));
        self.0.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_all_fields() {
        let mut e = Endpoint::new("[::1]:9000".parse().unwrap());
        e.weight = 7;
        e.zone = Some("us-east-1a".into());
        e.tags = vec!["primary".into()];
        e.metadata.insert("version".into(), "v2".into());
        let set =
            EndpointSet { version: 42, endpoints: vec![e, Endpoint::new("10.0.0.2:80".parse().unwrap())] };
        assert_eq!(EndpointSet::decode(&set.encode()).unwrap(), set);
    }

    #[test]
    fn omits_empty_fields() {
        let set = EndpointSet { version: 1, endpoints: vec![Endpoint::new("10.0.0.1:80".parse().unwrap())] };
        assert_eq!(
            String::from_utf8(set.encode()).unwrap(),
            r#"{"f":1,"v":1,"e":[{"a":"10.0.0.1:80","w":1}]}"#
        );
    }

    #[test]
    fn rejects_other_formats_and_garbage() {
        assert!(matches!(
            EndpointSet::decode(br#"{"f":2,"v":1,"e":[]}"#),
            Err(DecodeError::UnsupportedFormat(2))
        ));
        assert!(EndpointSet::decode(b"not json").is_err());
        assert!(EndpointSet::decode(br#"{"f":1,"v":1,"e":[{"a":"host:80"}]}"#).is_err());
    }

    #[test]
    fn subscribers_add_is_idempotent() {
        let mut s = Subscribers::decode(b"").unwrap();
        assert!(s.add("q1"));
        assert!(!s.add("q1"));
        assert_eq!(Subscribers::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn subscribers_remove_and_prune_keep_the_rest() {
        let mut s = Subscribers(vec!["q1".into(), "q2".into(), "q3".into(), "q4".into()]);
        assert!(s.remove("q2"));
        assert!(!s.remove("q2"));
        assert_eq!(s.0, ["q1", "q3", "q4"]);
        assert!(s.prune(&["q4".into(), "q1".into(), "never-listed".into()]));
        assert_eq!(s.0, ["q3"]);
        assert!(!s.prune(&["q1".into()]));
        assert!(!s.prune(&[]));
        assert_eq!(s.0, ["q3"]);
    }

    #[test]
    fn queue_names_are_unique_per_seq_and_prefixed() {
        assert_eq!(notify_queue_name(7), "meshwasm.endpoints.v1.notify.7");
        assert_ne!(notify_queue_name(1), notify_queue_name(11));
        assert!(notify_queue_name(u64::MAX).starts_with(NOTIFY_QUEUE_PREFIX));
    }
}
