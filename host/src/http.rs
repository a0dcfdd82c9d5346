//! HTTP messages as the host sees them: header maps, requests, upstream replies and the record of an
//! exchange (what went up, what came down, what each filter callback returned).

use std::fmt;

/// An ordered header map. Keys are stored lower-cased (as Envoy's codecs and hostcalls do); values are
/// bytes because clients may send anything. Repeated keys keep their order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Headers {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key: value` (the key is lower-cased).
    pub fn add(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.pairs.push((key.as_ref().to_ascii_lowercase(), value.as_ref().to_vec()));
    }

    /// Builder form of [`Headers::add`].
    pub fn with(mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Self {
        self.add(key, value);
        self
    }

    /// Replaces every value of `key` with one `value` (kept at the position of the first occurrence).
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref().to_ascii_lowercase();
        match self.pairs.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                self.pairs[i].1 = value.as_ref().to_vec();
                let mut n = 0;
                self.pairs.retain(|(k, _)| {
                    n += 1;
                    n - 1 <= i || *k != key
                });
            }
            None => self.pairs.push((key, value.as_ref().to_vec())),
        }
    }

    /// Envoy's `HeaderMapImpl::addCopy`: a pseudo-header (`:name`) goes after the existing pseudo-headers,
    /// any other header at the end.
    pub fn add_copy(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref().to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        if key.first() == Some(&b':') {
            let at =
                self.pairs.iter().position(|(k, _)| k.first() != Some(&b':')).unwrap_or(self.pairs.len());
            self.pairs.insert(at, (key, value));
        } else {
            self.pairs.push((key, value));
        }
    }

    /// Envoy's `HeaderMapImpl::setCopy` (what `proxy_replace_header_map_value` does): removes every value
    /// of `key`, then [`Headers::add_copy`]s the new one, so the header moves to the end.
    pub fn set_copy(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.remove(key.as_ref());
        self.add_copy(key, value);
    }

    /// Removes every value of `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        let key = key.as_ref().to_ascii_lowercase();
        self.pairs.retain(|(k, _)| *k != key);
    }

    /// The first value of `key` as UTF-8 (None if absent or not UTF-8).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_bytes(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of `key` as bytes.
    pub fn get_bytes(&self, key: &str) -> Option<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.pairs.iter().find(|(k, _)| k.as_slice() == key.as_bytes()).map(|(_, v)| v.as_slice())
    }

    /// Every value of `key`, in order.
    pub fn get_all(&self, key: &str) -> Vec<&[u8]> {
        let key = key.to_ascii_lowercase();
        self.pairs.iter().filter(|(k, _)| k.as_slice() == key.as_bytes()).map(|(_, v)| v.as_slice()).collect()
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.get_bytes(key).is_some()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The raw pairs.
    pub fn pairs(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.pairs
    }

    pub(crate) fn pairs_mut(&mut self) -> &mut Vec<(Vec<u8>, Vec<u8>)> {
        &mut self.pairs
    }

    pub(crate) fn from_raw(pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        Self { pairs }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.pairs.iter().map(|(k, v)| (String::from_utf8_lossy(k), String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.add(k, v);
        }
        h
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(a: [(K, V); N]) -> Self {
        a.into_iter().collect()
    }
}

impl<K: AsRef<[u8]>, V: AsRef<[u8]>> From<Vec<(K, V)>> for Headers {
    fn from(a: Vec<(K, V)>) -> Self {
        a.into_iter().collect()
    }
}

impl<K: AsRef<[u8]> + Clone, V: AsRef<[u8]> + Clone> From<&[(K, V)]> for Headers {
    fn from(a: &[(K, V)]) -> Self {
        a.iter().cloned().collect()
    }
}

/// A downstream request: headers (with the `:method`, `:path`, `:authority`, `:scheme` pseudo-headers),
/// a body delivered in one or more chunks, optional trailers, and per-request properties.
#[derive(Clone, Debug)]
pub struct Request {
    pub(crate) headers: Headers,
    pub(crate) chunks: Vec<Vec<u8>>,
    pub(crate) trailers: Option<Headers>,
    pub(crate) properties: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// A request with the given method and path, `:scheme: http` and `:authority: localhost`.
    pub fn new(method: &str, path: &str) -> Self {
        let headers = Headers::new()
            .with(":authority", "localhost")
            .with(":path", path)
            .with(":method", method)
            .with(":scheme", "http");
        Self { headers, chunks: Vec::new(), trailers: None, properties: Vec::new() }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path`.
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Sets `:authority` (the Host).
    pub fn authority(mut self, authority: &str) -> Self {
        self.headers.set(":authority", authority);
        self
    }

    /// Adds a header (key lower-cased, like Envoy's HTTP codecs).
    pub fn header(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(key, value);
        self
    }

    /// Sets `:scheme` (`https` for a request that came over TLS).
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.headers.set(":scheme", scheme);
        self
    }

    /// Replaces the body with one chunk.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.chunks = vec![body.as_ref().to_vec()];
        self
    }

    /// Appends one more body chunk (each chunk is one `on_request_body` delivery).
    pub fn chunk(mut self, chunk: impl AsRef<[u8]>) -> Self {
        self.chunks.push(chunk.as_ref().to_vec());
        self
    }

    /// Adds a trailer (the request then ends with trailers).
    pub fn trailer(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers.get_or_insert_with(Headers::new).add(key, value);
        self
    }

    /// Sets a property for this request only (e.g. `source.address`, `connection.mtls`), raw bytes in
    /// Envoy's encoding (see [`crate::property`] for encoders). Overrides proxy-level seeds.
    pub fn property(mut self, path: &str, value: impl AsRef<[u8]>) -> Self {
        self.properties.push((path.to_string(), value.as_ref().to_vec()));
        self
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The whole body.
    pub fn body_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

/// A response from the upstream (the backend behind the chain), scripted by a test or read from a real
/// server.
#[derive(Clone, Debug)]
pub struct UpstreamReply {
    pub(crate) headers: Headers,
    pub(crate) chunks: Vec<Vec<u8>>,
    pub(crate) trailers: Option<Headers>,
}

impl UpstreamReply {
    /// A response with `:status` only.
    pub fn new(status: u16) -> Self {
        Self {
            headers: Headers::new().with(":status", status.to_string()),
            chunks: Vec::new(),
            trailers: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.add(key, value);
        self
    }

    /// Replaces the body with one chunk.
    pub fn body(mut self, body: impl AsRef<[u8]>) -> Self {
        self.chunks = vec![body.as_ref().to_vec()];
        self
    }

    /// Appends a body chunk (each chunk is one `on_response_body` delivery).
    pub fn chunk(mut self, chunk: impl AsRef<[u8]>) -> Self {
        self.chunks.push(chunk.as_ref().to_vec());
        self
    }

    /// Adds a trailer.
    pub fn trailer(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.trailers.get_or_insert_with(Headers::new).add(key, value);
        self
    }

    /// From parts (headers must include `:status`).
    pub fn from_parts(headers: Headers, body: Vec<u8>, trailers: Option<Headers>) -> Self {
        Self { headers, chunks: if body.is_empty() { Vec::new() } else { vec![body] }, trailers }
    }
}

/// The request as it left the chain towards the upstream.
#[derive(Clone, Debug, Default)]
pub struct ForwardedRequest {
    /// Headers including pseudo-headers.
    pub headers: Headers,
    /// The whole body.
    pub body: Vec<u8>,
    /// Trailers, if the request had any.
    pub trailers: Option<Headers>,
    /// The stream's Envoy filter state (`set_envoy_filter_state`: key, value), which the router's
    /// cluster may read, e.g. ORIGINAL_DST's `envoy.network.transport_socket.original_dst_address`.
    pub filter_state: Vec<(String, Vec<u8>)>,
}

/// A local reply sent by a filter with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    /// Name of the plugin (filter) that sent it.
    pub plugin: String,
    /// HTTP status code.
    pub status: u32,
    /// Response code details (shown in Envoy's access log as `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    /// The headers the filter passed (lower-cased).
    pub headers: Headers,
    /// The body the filter passed.
    pub body: Vec<u8>,
    /// gRPC status (-1 = none, which is what the Rust SDK passes).
    pub grpc_status: i32,
}

/// What a filter callback returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// 0: go on to the next filter.
    Continue,
    /// 1: stop iteration (Envoy: StopAllIterationAndWatermark for headers, StopIterationAndBuffer for bodies).
    Pause,
}

/// A stream callback, in the names of the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Callback {
    /// `proxy_on_context_create` for the stream context.
    ContextCreate,
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_request_body`.
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
    /// `proxy_on_http_call_response` (on the root context).
    HttpCallResponse,
    /// `proxy_on_log`.
    Log,
    /// `proxy_on_done`.
    Done,
    /// `proxy_on_delete`.
    Delete,
}

/// One callback run for a stream: which filter, which callback, what it returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackRecord {
    /// Index of the filter in the chain.
    pub filter: usize,
    /// Plugin name.
    pub plugin: String,
    /// The callback.
    pub callback: Callback,
    /// The returned action for header/body/trailer callbacks; None for the others or when the VM failed.
    pub action: Option<Action>,
}

/// Where a stream is in the filter chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Request headers.
    RequestHeaders,
    /// Request body.
    RequestBody,
    /// Request trailers.
    RequestTrailers,
    /// Response headers.
    ResponseHeaders,
    /// Response body.
    ResponseBody,
    /// Response trailers.
    ResponseTrailers,
}

/// The state of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Stopped by filter `filter` in `phase` (waiting for `continue_stream`, e.g. after an http call).
    Paused {
        /// Index of the filter that paused.
        filter: usize,
        /// Plugin name of that filter.
        plugin: String,
        /// The phase.
        phase: Phase,
    },
    /// The request went through the whole chain; waiting for the upstream response.
    WaitingUpstream,
    /// The response was sent downstream (or a local reply, or a VM failure reply).
    Complete,
    /// The stream was reset (`proxy_close_stream`, or a second local response, which hangs in Envoy).
    Reset,
}

/// Identifies a stream: the worker it runs on and its number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    /// Worker index.
    pub worker: usize,
    /// Stream number within the worker (starts at 1).
    pub id: u32,
}

/// The full record of one request/response exchange through the chain.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The stream.
    pub stream: StreamId,
    /// State when this record was taken.
    pub state: StreamState,
    /// Status sent downstream (0 while no response has been sent, or after a reset).
    pub status: u16,
    /// Response headers as sent downstream (including `:status`).
    pub response_headers: Headers,
    /// Response body as sent downstream.
    pub response_body: Vec<u8>,
    /// Response trailers as sent downstream.
    pub response_trailers: Option<Headers>,
    /// The request as forwarded to the upstream (None if it never got there).
    pub upstream_request: Option<ForwardedRequest>,
    /// The local reply, if a filter sent one.
    pub local_reply: Option<LocalReply>,
    /// Every callback run for this stream, in order.
    pub callbacks: Vec<CallbackRecord>,
    /// A VM failure (trap, panic, deadline, bad memory access) or host-side error for this stream, as one
    /// line naming the plugin and module.
    pub error: Option<String>,
    /// Properties set by the filters with `proxy_set_property` (path with `.` separators → value).
    pub properties_set: Vec<(String, Vec<u8>)>,
}

impl Exchange {
    /// The actions returned by one filter, in order, for header/body/trailer callbacks.
    pub fn actions(&self, filter: usize) -> Vec<(Callback, Action)> {
        self.callbacks
            .iter()
            .filter(|c| c.filter == filter)
            .filter_map(|c| c.action.map(|a| (c.callback, a)))
            .collect()
    }

    /// Response body as lossy UTF-8 (for assertions).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.response_body).into_owned()
    }
}
