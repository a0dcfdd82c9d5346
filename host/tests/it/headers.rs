//! Header-map hostcalls with Envoy's rules: lower-cased keys, first of repeated values, NOT_FOUND,
//! remove-when-absent OK, maps gone after Continue, unavailable maps read as empty.

use crate::common::*;
use meshwasm_host::*;

const GUEST: &str = r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $report (i32.const 2000) (i32.const 3) (call $add_header (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 1040) (i32.const 2)))
    (drop (call $add_header (i32.const 0) (i32.const 1030) (i32.const 4) (i32.const 1044) (i32.const 2)))
    ;; get X-UP: first value, key matched case-insensitively
    (call $report (i32.const 2010) (i32.const 3) (call $get_header (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 100) (i32.const 104)))
    (call $report (i32.const 2020) (i32.const 6) (i32.load (i32.const 104)))
    (call $report (i32.const 2030) (i32.const 5) (i32.load8_u (i32.add (i32.load (i32.const 100)) (i32.const 1))))
    (call $report (i32.const 2040) (i32.const 7) (call $get_header (i32.const 0) (i32.const 1050) (i32.const 7) (i32.const 100) (i32.const 104)))
    (call $report (i32.const 2050) (i32.const 13) (call $remove_header (i32.const 0) (i32.const 1050) (i32.const 7)))
    (call $report (i32.const 2070) (i32.const 7) (call $replace_header (i32.const 0) (i32.const 1060) (i32.const 5) (i32.const 1070) (i32.const 1)))
    (drop (call $remove_header (i32.const 0) (i32.const 1080) (i32.const 6)))
    ;; response headers are not available in the request phase
    (call $report (i32.const 2080) (i32.const 11) (call $add_header (i32.const 2) (i32.const 1060) (i32.const 5) (i32.const 1070) (i32.const 1)))
    (call $report (i32.const 2100) (i32.const 10) (call $get_pairs (i32.const 2) (i32.const 100) (i32.const 104)))
    (call $report (i32.const 2110) (i32.const 12) (i32.load (i32.const 104)))
    (call $report (i32.const 2130) (i32.const 6) (call $get_pairs (i32.const 9) (i32.const 100) (i32.const 104)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $len i32) (param $eos i32) (result i32)
    ;; the request headers are gone after Continue
    (call $report (i32.const 2140) (i32.const 8) (call $add_header (i32.const 0) (i32.const 1060) (i32.const 5) (i32.const 1070) (i32.const 1)))
    (call $report (i32.const 2150) (i32.const 8) (call $get_header (i32.const 0) (i32.const 1024) (i32.const 4) (i32.const 100) (i32.const 104)))
    (call $report (i32.const 2160) (i32.const 10) (call $get_pairs (i32.const 0) (i32.const 100) (i32.const 104)))
    (call $report (i32.const 2170) (i32.const 9) (i32.load (i32.const 104)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (drop (call $replace_header (i32.const 2) (i32.const 1090) (i32.const 6) (i32.const 1100) (i32.const 4)))
    (i32.const 0))
  (data (i32.const 1024) "X-Up")
  (data (i32.const 1030) "x-up")
  (data (i32.const 1040) "v1")
  (data (i32.const 1044) "v2")
  (data (i32.const 1050) "missing")
  (data (i32.const 1060) "X-Rep")
  (data (i32.const 1070) "r")
  (data (i32.const 1080) "X-GONE")
  (data (i32.const 1090) "SERVER")
  (data (i32.const 1100) "wasm")
  (data (i32.const 2000) "add")
  (data (i32.const 2010) "get")
  (data (i32.const 2020) "getlen")
  (data (i32.const 2030) "first")
  (data (i32.const 2040) "missing")
  (data (i32.const 2050) "remove_absent")
  (data (i32.const 2070) "replace")
  (data (i32.const 2080) "resp_in_req")
  (data (i32.const 2100) "resp_pairs")
  (data (i32.const 2110) "resp_pairs_n")
  (data (i32.const 2130) "badmap")
  (data (i32.const 2140) "late_add")
  (data (i32.const 2150) "late_get")
  (data (i32.const 2160) "late_pairs")
  (data (i32.const 2170) "late_plen")
"#;

#[test]
fn header_map_rules_match_envoy() {
    let host = host();
    let m = load(&host, "headers", GUEST);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("h")).build().unwrap();
    let ex = proxy
        .send(
            0,
            Request::post("/").header("x-gone", "1").body("b"),
            UpstreamReply::new(200).header("server", "upstream"),
        )
        .unwrap();
    assert_eq!(ex.status, 200, "{ex:?}");
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m("add"), status::OK as u64);
    assert_eq!(m("get"), status::OK as u64);
    assert_eq!(m("getlen"), 2);
    assert_eq!(m("first"), u64::from(b'1'), "first of repeated values");
    assert_eq!(m("missing"), status::NOT_FOUND as u64);
    assert_eq!(m("remove_absent"), status::OK as u64);
    assert_eq!(m("replace"), status::OK as u64);
    assert_eq!(m("resp_in_req"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("resp_pairs"), status::OK as u64);
    assert_eq!(m("resp_pairs_n"), 0);
    assert_eq!(m("badmap"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("late_add"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("late_get"), status::BAD_ARGUMENT as u64);
    assert_eq!(m("late_pairs"), status::OK as u64);
    assert_eq!(m("late_plen"), 0);
    let up = ex.upstream_request.as_ref().unwrap();
    assert_eq!(
        up.headers.get_all("x-up"),
        vec![&b"v1"[..], &b"v2"[..]],
        "keys lower-cased: {:?}",
        up.headers
    );
    assert!(up.headers.iter().all(|(k, _)| k.iter().all(|c| !c.is_ascii_uppercase())));
    assert_eq!(up.headers.get("x-rep"), Some("r"));
    assert!(!up.headers.contains("x-gone"));
    assert_eq!(ex.response_headers.get("server"), Some("wasm"));
    assert_eq!(ex.response_headers.get_all("server").len(), 1);
}

#[test]
fn pairs_roundtrip_with_set_header_map_pairs() {
    let host = host();
    // x-forwarded-proto stays (Envoy would find no route without it).
    let map = pairs(&[("A", "1"), ("b", "2"), ("x-forwarded-proto", "http")]);
    let body = format!(
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (i32.const 3000) (i32.const 3) (call $set_pairs (i32.const 0) (i32.const 1024) (i32.const {len})))
        (call $report (i32.const 3010) (i32.const 4) (call $map_size (i32.const 0) (i32.const 100)))
        (call $report (i32.const 3020) (i32.const 5) (i32.load (i32.const 100)))
        (i32.const 0))
      (data (i32.const 1024) "{data}")
      (data (i32.const 3000) "set")
      (data (i32.const 3010) "size")
      (data (i32.const 3020) "bytes")
    "#,
        len = map.len(),
        data = wat_bytes(&map)
    );
    let m = load(&host, "pairs", &body);
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m)).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("set"), Some(0));
    assert_eq!(proxy.metric("size"), Some(0));
    assert_eq!(proxy.metric("bytes"), Some(25), "Envoy's byteSize: key and value lengths");
    let up = ex.upstream_request.unwrap();
    assert_eq!(
        up.headers.pairs(),
        &[
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"2".to_vec()),
            (b"x-forwarded-proto".to_vec(), b"http".to_vec())
        ]
    );
}

#[test]
fn replace_and_add_order_headers_as_envoy() {
    let mut h = Headers::new().with(":method", "GET").with("a", "1").with("b", "2").with("a", "3");
    // Envoy's setCopy: every value removed, the new one appended.
    h.set_copy("A", "x");
    // Envoy's addCopy: pseudo-headers stay in front.
    h.add_copy(":path", "/");
    let keys: Vec<String> = h
        .iter()
        .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)))
        .collect();
    assert_eq!(keys, [":method=GET", ":path=/", "b=2", "a=x"]);
}

#[test]
fn dropping_x_forwarded_proto_leaves_no_route_as_in_envoy() {
    let host = host();
    // Envoy's connection manager adds x-forwarded-proto before the filters; without it the route lookup
    // finds nothing: 404 route_not_found, and the upstream is never reached.
    let m = load(
        &host,
        "dropper",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $remove_header (i32.const 0) (str "X-Forwarded-Proto")))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host)
        .forwarded_proto(true)
        .plugin(Plugin::new(m.clone()).name("dropper"))
        .build()
        .unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 404);
    assert!(ex.upstream_request.is_none());
    assert_eq!(ex.local_reply.unwrap().details, "route_not_found");

    // By default the host adds no x-forwarded-proto, so there is nothing to drop.
    let mut proxy = Proxy::builder(&host).plugin(Plugin::new(m).name("dropper")).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert!(ex.upstream_request.unwrap().headers.get("x-forwarded-proto").is_none());

    // Removing another header routes as usual.
    let m = load(
        &host,
        "other",
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (drop (call $remove_header (i32.const 0) (str "x-other")))
        (i32.const 0))
    "#,
    );
    let mut proxy = Proxy::builder(&host).forwarded_proto(true).plugin(Plugin::new(m)).build().unwrap();
    let ex = proxy.send(0, Request::get("/").header("x-other", "1"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200);
    assert_eq!(ex.upstream_request.unwrap().headers.get("x-forwarded-proto"), Some("http"));
}
