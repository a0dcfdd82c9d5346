//! Properties (Envoy encoding, seeds, set_property), WASI as Envoy provides it, and foreign functions.

use crate::common::*;
use meshwasm_host::*;

/// Copies property `path` (a `(str ...)` with `\00` separators) into request header `name`.
fn copy_prop(path: &str, header: &str) -> String {
    format!(
        r#"
        (call $report (str "p_{header}") (call $get_property (str "{path}") (i32.const 100) (i32.const 104)))
        (drop (call $add_header (i32.const 0) (str "{header}") (i32.load (i32.const 100)) (i32.load (i32.const 104))))"#
    )
}

#[test]
fn properties_are_seeded_computed_and_settable() {
    let host = host();
    let mut body =
        String::from(r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)"#);
    for (p, h) in [
        ("plugin_name", "x-plugin"),
        ("plugin_root_id", "x-root"),
        ("plugin_vm_id", "x-vm"),
        ("request\\00path", "x-path"),
        ("request\\00method", "x-method"),
        ("request\\00headers\\00x-in", "x-in-copy"),
        ("node\\00id", "x-node"),
        ("source\\00address", "x-src"),
        ("connection\\00uri_san_peer_certificate", "x-san"),
    ] {
        body.push_str(&copy_prop(p, h));
    }
    body.push_str(r#"
        (call $report (str "mtls_status") (call $get_property (str "connection\00mtls") (i32.const 100) (i32.const 104)))
        (call $report (str "mtls_len") (i32.load (i32.const 104)))
        (call $report (str "mtls") (i32.load8_u (i32.load (i32.const 100))))
        (call $report (str "unknown") (call $get_property (str "no\00such") (i32.const 100) (i32.const 104)))
        (call $report (str "set") (call $set_property (str "my_key") (str "val")))
        (call $report (str "set_nested") (call $set_property (str "my\00nested") (str "x")))
        (call $report (str "get_nested") (call $get_property (str "my\00nested") (i32.const 100) (i32.const 104)))
        (drop (call $get_property (str "my_key") (i32.const 100) (i32.const 104)))
        (drop (call $add_header (i32.const 0) (str "x-mine") (i32.load (i32.const 100)) (i32.load (i32.const 104))))
        (i32.const 0))
      (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
        (call $report (str "code_status") (call $get_property (str "response\00code") (i32.const 100) (i32.const 104)))
        (call $report (str "code_len") (i32.load (i32.const 104)))
        (call $report (str "code") (i32.load (i32.load (i32.const 100))))
        (i32.const 0))
    "#);
    let m = load(&host, "props", &body);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m).name("props").root_id("r1").vm_id("vm1"))
        .property("node.id", b"sidecar~1")
        .property("connection.mtls", property::boolean(true))
        .build()
        .unwrap();
    let ex = proxy
        .send(
            0,
            Request::post("/a?b=1")
                .header("x-in", "hello")
                .property("source.address", b"10.1.2.3:4567")
                .property("connection.uri_san_peer_certificate", b"spiffe://mesh/ns/a/sa/b"),
            UpstreamReply::new(201),
        )
        .unwrap();
    let h = ex.upstream_request.unwrap().headers;
    assert_eq!(h.get("x-plugin"), Some("props"));
    assert_eq!(h.get("x-root"), Some("r1"));
    assert_eq!(h.get("x-vm"), Some("vm1"));
    assert_eq!(h.get("x-path"), Some("/a?b=1"));
    assert_eq!(h.get("x-method"), Some("POST"));
    assert_eq!(h.get("x-in-copy"), Some("hello"));
    assert_eq!(h.get("x-node"), Some("sidecar~1"));
    assert_eq!(h.get("x-src"), Some("10.1.2.3:4567"));
    assert_eq!(h.get("x-san"), Some("spiffe://mesh/ns/a/sa/b"));
    assert_eq!(h.get("x-mine"), Some("val"));
    assert_eq!(proxy.metric("mtls_status"), Some(0));
    assert_eq!(proxy.metric("mtls_len"), Some(1));
    assert_eq!(proxy.metric("mtls"), Some(1));
    assert_eq!(proxy.metric("unknown"), Some(status::NOT_FOUND as u64));
    assert_eq!(proxy.metric("set"), Some(0));
    assert_eq!(proxy.metric("code_status"), Some(0));
    assert_eq!(proxy.metric("code_len"), Some(8));
    assert_eq!(proxy.metric("code"), Some(201));
    assert_eq!(proxy.metric("set_nested"), Some(0));
    assert_eq!(
        proxy.metric("get_nested"),
        Some(status::NOT_FOUND as u64),
        "filter state is found by the first segment"
    );
    assert_eq!(
        ex.properties_set,
        vec![("my_key".to_string(), b"val".to_vec()), ("my.nested".to_string(), b"x".to_vec())]
    );
}

const WASI_IMPORTS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_unstable" "fd_write" (func $fd_write_old (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $env_sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $env_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

#[test]
fn wasi_matches_envoy() {
    let host = host();
    // Imports must come first in a module: splice the WASI imports before the common ones.
    let body = r#"
      (func $write (param $fd i32) (param $p i32) (param $l i32) (result i32)
        (i32.store (i32.const 300) (local.get $p))
        (i32.store (i32.const 304) (local.get $l))
        (call $fd_write (local.get $fd) (i32.const 300) (i32.const 1) (i32.const 308)))
      (func (export "_initialize")
        (drop (call $write (i32.const 1) (str "hello stdout\0a")))
        (drop (call $write (i32.const 2) (str "oops\0a")))
        (drop (call $write_old (str "old"))))
      (func $write_old (param $p i32) (param $l i32) (result i32)
        (i32.store (i32.const 300) (local.get $p))
        (i32.store (i32.const 304) (local.get $l))
        (call $fd_write_old (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308)))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "bad_fd") (call $write (i32.const 7) (str "x")))
        (call $report (str "env_sizes") (call $env_sizes (i32.const 400) (i32.const 404)))
        (call $report (str "env_count") (i32.load (i32.const 400)))
        (call $report (str "env_bytes") (i32.load (i32.const 404)))
        (drop (call $env_get (i32.const 410) (i32.const 500)))
        (drop (call $add_header (i32.const 0) (str "x-env") (i32.const 500) (i32.sub (i32.load (i32.const 404)) (i32.const 1))))
        (call $report (str "clock_rt") (call $clock (i32.const 0) (i64.const 1) (i32.const 600)))
        (call $report (str "clock_rt_s") (i32.wrap_i64 (i64.div_u (i64.load (i32.const 600)) (i64.const 1000000000))))
        (call $report (str "clock_bad") (call $clock (i32.const 2) (i64.const 1) (i32.const 600)))
        (call $report (str "random") (call $random (i32.const 700) (i32.const 16)))
        (call $report (str "random_big") (call $random (i32.const 700) (i32.const 70000)))
        (call $report (str "fd_read") (call $fd_read (i32.const 0) (i32.const 300) (i32.const 1) (i32.const 308)))
        (call $report (str "prestat") (call $prestat (i32.const 3) (i32.const 300)))
        (call $report (str "path_open") (call $path_open (i32.const 3) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i64.const 0) (i64.const 0) (i32.const 0) (i32.const 300)))
        (call $proc_exit (i32.const 3))
        (i32.const 0))
    "#;
    let wat = guest(body).replacen("(module\n", &format!("(module\n{WASI_IMPORTS}"), 1);
    let m = host.load_bytes("wasi", wat.as_bytes()).unwrap();
    let mut proxy =
        Proxy::builder(&host).plugin(Plugin::new(m).name("wasi").env("MODE", "test")).build().unwrap();
    let logs = proxy.logs();
    assert!(logs.iter().any(|l| l.level == LogLevel::Info && l.message == "hello stdout"), "{logs:?}");
    assert!(logs.iter().any(|l| l.level == LogLevel::Error && l.message == "oops"), "{logs:?}");
    assert!(logs.iter().any(|l| l.message == "old"), "wasi_unstable works too: {logs:?}");
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "proc_exit does not trap: {:?}", ex.error);
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m("bad_fd"), 8);
    assert_eq!(m("env_sizes"), 0);
    assert_eq!(m("env_count"), 1, "only the VM config's variables");
    assert_eq!(m("env_bytes"), 10);
    assert_eq!(ex.upstream_request.unwrap().headers.get("x-env"), Some("MODE=test"));
    assert_eq!(m("clock_rt"), 0);
    assert_eq!(m("clock_rt_s"), 1_767_225_600, "virtual wall clock starts at 2026-01-01");
    assert_eq!(m("clock_bad"), 58);
    assert_eq!(m("random"), 0);
    assert_eq!(m("random_big"), 28);
    assert_eq!(m("fd_read"), 52);
    assert_eq!(m("prestat"), 8);
    assert_eq!(m("path_open"), 44);
    assert!(proxy.logged("proc_exit(3)"));
}

fn ecdsa_fixture(text: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
    let sig: p256::ecdsa::Signature = sk.sign(text);
    let der = sk.verifying_key().to_public_key_der().unwrap().as_bytes().to_vec();
    (der, sig.to_der().as_bytes().to_vec())
}

#[test]
fn verify_signature_ecdsa_and_rsa() {
    let text = b"header.payload";
    let (key, sig) = ecdsa_fixture(text);
    let ok = foreign::verify_signature(&foreign::encode_verify_args("sha256", &key, &sig, text)).unwrap();
    assert_eq!(foreign::decode_verify_result(&ok), Some((true, String::new())));
    let bad =
        foreign::verify_signature(&foreign::encode_verify_args("sha256", &key, &sig, b"other")).unwrap();
    assert!(!foreign::decode_verify_result(&bad).unwrap().0);
    let md5 = foreign::verify_signature(&foreign::encode_verify_args("md4", &key, &sig, text)).unwrap();
    assert_eq!(foreign::decode_verify_result(&md5), Some((false, "md4 is not supported.".into())));
    assert_eq!(
        foreign::verify_signature(&foreign::encode_verify_args("sha256", b"junk", &sig, text)),
        Err(status::BAD_ARGUMENT)
    );
    assert_eq!(foreign::verify_signature(b"\xff\xff\xff"), Err(status::BAD_ARGUMENT));

    // RSA PKCS#1 v1.5 with a key and signature made by openssl.
    let dir = std::env::temp_dir().join(format!("meshwasm-host-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    std::fs::write(dir.join("text"), text).unwrap();
    run(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", "k.pem"]);
    run(&["pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "pub.der"]);
    run(&["dgst", "-sha256", "-sign", "k.pem", "-out", "sig.bin", "text"]);
    let key = std::fs::read(dir.join("pub.der")).unwrap();
    let sig = std::fs::read(dir.join("sig.bin")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let ok = foreign::verify_signature(&foreign::encode_verify_args("sha256", &key, &sig, text)).unwrap();
    assert!(foreign::decode_verify_result(&ok).unwrap().0);
    let bad = foreign::verify_signature(&foreign::encode_verify_args("sha384", &key, &sig, text)).unwrap();
    assert!(!foreign::decode_verify_result(&bad).unwrap().0);
}

#[test]
fn foreign_functions_from_the_guest() {
    let host = host();
    let text = b"a.b";
    let (key, sig) = ecdsa_fixture(text);
    let args = foreign::encode_verify_args("sha256", &key, &sig, text);
    let body = format!(
        r#"
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $report (str "verify") (call $foreign (str "verify_signature") (i32.const 1024) (i32.const {len}) (i32.const 100) (i32.const 104)))
        (call $report (str "result_len") (i32.load (i32.const 104)))
        (call $report (str "result_b1") (i32.load8_u (i32.add (i32.load (i32.const 100)) (i32.const 1))))
        (call $report (str "clear") (call $foreign (str "clear_route_cache") (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 104)))
        (call $report (str "unknown") (call $foreign (str "nope") (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 104)))
        (call $report (str "custom") (call $foreign (str "echo") (str "xyz") (i32.const 100) (i32.const 104)))
        (call $report (str "custom_len") (i32.load (i32.const 104)))
        (i32.const 0))
      (data (i32.const 1024) "{data}")
    "#,
        len = args.len(),
        data = wat_bytes(&args)
    );
    let m = load(&host, "foreign", &body);
    let mut proxy = Proxy::builder(&host)
        .plugin(Plugin::new(m))
        .foreign_function("echo", |a| Ok(a.to_vec()))
        .build()
        .unwrap();
    proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(proxy.metric("verify"), Some(0));
    assert_eq!(proxy.metric("result_len"), Some(2));
    assert_eq!(proxy.metric("result_b1"), Some(1), "VerifySignatureResult.result = true");
    assert_eq!(proxy.metric("clear"), Some(0));
    assert_eq!(proxy.metric("unknown"), Some(status::NOT_FOUND as u64));
    assert_eq!(proxy.metric("custom"), Some(0));
    assert_eq!(proxy.metric("custom_len"), Some(3));
}

#[test]
fn wasi_fd_write_and_environ_get_bound_guest_pointers() {
    let host = host();
    let body = r#"
      (func $iovs (param $n i32) (local $i i32)
        (loop $l
          (i32.store (i32.add (i32.const 1000) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
          (i32.store (i32.add (i32.const 1004) (i32.mul (local.get $i) (i32.const 8))) (i32.const 65536))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (local.get $n)))))
      (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
        (call $iovs (i32.const 20))
        (call $report (str "many") (call $fd_write (i32.const 1) (i32.const 1000) (i32.const 20) (i32.const 900)))
        (call $report (str "many_written") (i32.load (i32.const 900)))
        (call $report (str "too_many") (call $fd_write (i32.const 1) (i32.const 1000) (i32.const 1025) (i32.const 900)))
        (call $report (str "wrap") (call $fd_write (i32.const 1) (i32.const 0xfffffff8) (i32.const 3) (i32.const 900)))
        (call $report (str "huge_n") (call $fd_write (i32.const 1) (i32.const 0x40000000) (i32.const 0x20000001) (i32.const 900)))
        (call $report (str "env_wrap") (call $env_get (i32.const 0xfffffffe) (i32.const 500)))
        (call $report (str "env_buf_wrap") (call $env_get (i32.const 400) (i32.const 0xfffffffc)))
        (i32.const 0))
    "#;
    let wat = guest(body).replacen("(module\n", &format!("(module\n{WASI_IMPORTS}"), 1);
    let m = host.load_bytes("wasi_bounds", wat.as_bytes()).unwrap();
    let mut proxy =
        Proxy::builder(&host).plugin(Plugin::new(m).name("wasi").env("MODE", "test")).build().unwrap();
    let ex = proxy.send(0, Request::get("/"), UpstreamReply::new(200)).unwrap();
    assert_eq!(ex.status, 200, "{:?}", ex.error);
    let m = |n: &str| proxy.metric(n).unwrap_or_else(|| panic!("no report {n}"));
    assert_eq!(m("many"), 0, "a write over 1 MiB is a short write, not an error");
    assert_eq!(m("many_written"), 1 << 20, "only the first MiB is taken");
    assert_eq!(m("too_many"), 28, "more than IOV_MAX iovecs is EINVAL");
    assert_eq!(m("wrap"), 21, "an iovec array wrapping past 4 GiB is EFAULT");
    assert_eq!(m("huge_n"), 28);
    assert_eq!(m("env_wrap"), 21);
    assert_eq!(m("env_buf_wrap"), 21);
}
