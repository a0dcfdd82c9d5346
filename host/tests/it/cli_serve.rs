//! `meshwasm-host serve` end to end: the real binary, real backends on loopback, real HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use crate::cli_common::*;

// ---- a backend: a tiny HTTP/1.1 server that says who it is and what it got ----

pub(crate) struct Backend {
    pub(crate) addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Request heads seen (lower-cased header lines).
    seen: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    /// Answers every request with 200, `x-backend: <name>` and body `<name> <method> <path>`.
    pub(crate) fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (hits.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (h, s) = (h.clone(), s.clone());
                std::thread::spawn(move || serve_backend_conn(conn, name, &h, &s));
            }
        });
        Backend { addr, hits, seen }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves one backend connection (also behind TLS in `tls.rs`).
pub(crate) fn serve_backend_conn<C: Read + Write>(
    conn: C,
    name: &str,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut head = request_line.clone();
        let mut content_length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                content_length = v.trim().parse().unwrap_or(0);
            }
            head.push_str(&lower);
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        hits.fetch_add(1, Ordering::SeqCst);
        seen.lock().unwrap().push(head);
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let reply = format!("{name} {method} {path} {}", String::from_utf8_lossy(&body));
        let response = format!(
            "HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if reader.get_mut().write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

// ---- the proxy process ----

pub(crate) struct Serve {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Every listener's address, in config order.
    pub(crate) addrs: Vec<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `meshwasm-host serve <config>` and waits for its listener line.
    pub(crate) fn start(config: &Path) -> Serve {
        Self::start_listeners(config, 1)
    }

    /// Starts serve and waits for `n` listener lines.
    pub(crate) fn start_listeners(config: &Path, n: usize) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start meshwasm-host serve");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("meshwasm-host serve: listener `")
                    && let Some(rest) =
                        line.split("on http://").nth(1).or_else(|| line.split("on https://").nth(1))
                {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let mut addrs = Vec::new();
        while addrs.len() < n {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(a) => addrs.push(a.parse().expect("listener address")),
                Err(_) => {
                    let _ = child.kill();
                    panic!("serve did not start; stderr:\n{}", stderr.lock().unwrap().join("\n"));
                }
            }
        }
        Serve { child, addr: addrs[0], addrs, stderr }
    }

    pub(crate) fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the log has a line containing `needle`.
    pub(crate) fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- a client ----

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: example.test\r\nconnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    s.write_all(out.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no response head in {text:?}"));
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers, "")
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("serve.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---- tests ----

#[test]
fn static_cluster_round_robin_through_the_noop_filter() {
    let noop = required_artifact("meshwasm_noop.wasm", "meshwasm-noop");
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = scratch_dir("serve-rr");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - name: ingress
    address: 127.0.0.1:0
    filters:
      - name: noop
        wasm: {}
    route: {{cluster: backends}}
clusters:
  - name: backends
    type: static
    endpoints: ["{}", "{}"]
"#,
            noop.display(),
            a.addr,
            b.addr
        ),
    );
    let serve = Serve::start(&config);
    let mut order = Vec::new();
    for i in 0..4 {
        let r = request(serve.addr, "POST", &format!("/items/{i}?x=1"), &[], "payload");
        assert_eq!(r.status, 200, "{r:?}\n{}", serve.log());
        order.push(r.header("x-backend").unwrap().to_string());
        assert!(r.body.ends_with(&format!("POST /items/{i}?x=1 payload")), "{r:?}");
    }
    assert_eq!(order, ["a", "b", "a", "b"]);
    assert_eq!((a.hits(), b.hits()), (2, 2));
    // The upstream saw the Host, the forwarded proto and a request id, as behind Envoy.
    let head = a.seen.lock().unwrap()[0].clone();
    assert!(head.contains("host: example.test"), "{head}");
    assert!(head.contains("x-forwarded-proto: http") && head.contains("x-request-id: "), "{head}");
    // One access log line per request.
    assert!(serve.wait_log("\"POST /items/3?x=1 HTTP/1.1\" 200 - via_upstream"), "{}", serve.log());
    let lines = serve.log().lines().filter(|l| l.contains(" ingress \"POST /items/")).count();
    assert_eq!(lines, 4, "{}", serve.log());
}

#[test]
fn original_dst_cluster_routes_by_header_and_503s_without_a_literal() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = scratch_dir("serve-odst");
    let wat = wasm_file(&dir, "allow.wasm", &wat_local_reply());
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters: [{{name: guard, wasm: {}}}]
    route: {{cluster: picked}}
clusters:
  - {{name: picked, type: original_dst, header: x-meshwasm-endpoint}}
"#,
            wat.display()
        ),
    );
    let serve = Serve::start(&config);
    let to_b = b.addr.to_string();
    let r = get(serve.addr, "/x", &[("x-meshwasm-endpoint", &to_b)]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("b")), "{r:?}");
    let to_a = a.addr.to_string();
    let r = get(serve.addr, "/y", &[("x-meshwasm-endpoint", &to_a)]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("a")), "{r:?}");

    for bad in [None, Some("localhost:80"), Some("127.0.0.1"), Some("10.0.0.1:99999")] {
        let headers: Vec<(&str, &str)> = bad.map(|v| ("x-meshwasm-endpoint", v)).into_iter().collect();
        let r = get(serve.addr, "/z", &headers);
        assert_eq!(r.status, 503, "{bad:?}: {r:?}");
        assert_eq!(r.body, "no healthy upstream", "{bad:?}");
    }
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert!(serve.wait_log("503 UH no_healthy_upstream"), "{}", serve.log());
}

#[test]
fn a_filters_local_reply_never_reaches_the_upstream() {
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-local");
    let wat = wasm_file(&dir, "deny.wasm", &wat_local_reply());
    let config = write_config(
        &dir,
        &format!(
            r#"
workers: 2
listeners:
  - name: edge
    address: 127.0.0.1:0
    filters:
      - name: deny
        wasm: deny.wasm
    route: {{cluster: backend}}
clusters:
  - name: backend
    type: static
    endpoints: ["{}"]
"#,
            backend.addr
        ),
    );
    assert!(wat.is_file());
    let serve = Serve::start(&config);
    let r = get(serve.addr, "/secret", &[("x-deny", "1")]);
    assert_eq!(r.status, 403, "{r:?}\n{}", serve.log());
    assert_eq!(r.body, "denied by wat-filter");
    assert_eq!(r.header("x-denied-by"), Some("wat"));
    assert_eq!(backend.hits(), 0);
    let r = get(serve.addr, "/open", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("a")), "{r:?}");
    assert_eq!(backend.hits(), 1);
    assert!(serve.wait_log("edge \"GET /secret HTTP/1.1\" 403"), "{}", serve.log());
}

#[test]
fn an_unreachable_upstream_gives_envoys_503() {
    // A port nobody listens on: bind, note, close.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = scratch_dir("serve-dead");
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{address: '127.0.0.1:0', route: {{cluster: gone}}}}]\n\
             clusters: [{{name: gone, type: static, endpoints: ['{dead}']}}]\n"
        ),
    );
    let serve = Serve::start(&config);
    let r = get(serve.addr, "/", &[]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.starts_with("upstream connect error or disconnect/reset before headers"), "{r:?}");
    assert!(serve.wait_log("503 UF"), "{}", serve.log());
}

#[test]
fn a_rejected_filter_config_stops_serve_before_listening() {
    let dir = scratch_dir("serve-reject");
    let wat = wasm_file(&dir, "strict.wasm", &wat_config_rejecting());
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters: [{{name: strict, wasm: {}, config: {{mode: x}}}}]
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["127.0.0.1:9"]}}]
"#,
            wat.display()
        ),
    );
    let out = run(&["serve", config.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("strict") && stderr.contains("configuration: must be empty"), "{stderr}");
    assert!(!stderr.contains("on http://"), "{stderr}");

    // --validate says the same without trying to serve, and accepts the config once it is fixed.
    let out = run(&["serve", "--validate", config.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("configuration: must be empty"), "{stderr}");
    let fixed = std::fs::read_to_string(&config).unwrap().replace(", config: {mode: x}", "");
    std::fs::write(&config, fixed).unwrap();
    let out = run(&["serve", "--validate", config.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("OK: 1 listener(s), 1 filter(s)"), "{stdout}");
    assert!(!stderr.contains("on http://"), "{stderr}");
}

#[test]
fn config_errors_name_the_field() {
    let dir = scratch_dir("serve-bad-config");
    let config = write_config(
        &dir,
        "listeners: [{address: '127.0.0.1:0', route: {cluster: c, timeout: 5}}]\nclusters: []\n",
    );
    let out = run(&["serve", config.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listeners[0].route") && stderr.contains("unknown field `timeout`"), "{stderr}");
}

#[test]
fn sigterm_and_ctrl_c_stop_serve_cleanly() {
    let backend = Backend::start("a");
    for signal in ["-TERM", "-INT"] {
        let dir = scratch_dir(&format!("serve-signal{signal}"));
        let config = write_config(
            &dir,
            &format!(
                "listeners: [{{address: '127.0.0.1:0', route: {{cluster: c}}}}]\n\
                 clusters: [{{name: c, type: static, endpoints: ['{}']}}]\n",
                backend.addr
            ),
        );
        let mut serve = Serve::start(&config);
        assert_eq!(get(serve.addr, "/", &[]).status, 200);
        let pid = serve.child.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = serve.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "serve did not exit after {signal}:\n{}", serve.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{signal}: {status:?}\n{}", serve.log());
        assert!(serve.wait_log("meshwasm-host serve: stopped"), "{}", serve.log());
        assert!(TcpStream::connect(serve.addr).is_err(), "listener still open after exit");
    }
}

/// An upstream that accepts but never answers: 504 after the route timeout, like Envoy.
#[test]
fn a_silent_upstream_times_out_with_504() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let dir = scratch_dir("serve-timeout");
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{address: '127.0.0.1:0', route: {{cluster: c, timeout_ms: 300}}}}]\n\
             clusters: [{{name: c, type: static, endpoints: ['{silent_addr}']}}]\n"
        ),
    );
    let serve = Serve::start(&config);
    let r = get(serve.addr, "/slow", &[]);
    assert_eq!((r.status, r.body.as_str()), (504, "upstream request timeout"), "{r:?}");
    assert!(serve.wait_log("504 UT upstream_response_timeout"), "{}", serve.log());
    drop(silent);
}

/// The probe filter pauses each request, dispatches an http call to the `authz` cluster (forwarded to a
/// real server), and resumes the request from `on_http_call_response`.
#[test]
fn a_paused_request_resumes_after_a_real_http_call() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let (authz, app) = (Backend::start("authz"), Backend::start("app"));
    let dir = scratch_dir("serve-call");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: probe
        wasm: {}
        config:
          name: gate
          request_headers:
            ops:
              - op: http_call
                upstream: authz
                headers: [[":method", "GET"], [":path", "/check"], [":authority", "authz.local"]]
                timeout_ms: 5000
            action: pause
          http_call_response:
            ops:
              - {{op: get_header, map: http_call_response_headers, key: x-backend}}
              - {{op: continue_stream, stream: request}}
    route: {{cluster: app}}
clusters:
  - {{name: app, type: static, endpoints: ["{}"]}}
  - {{name: authz, type: static, endpoints: ["{}"]}}
"#,
            probe.display(),
            app.addr,
            authz.addr
        ),
    );
    let serve = Serve::start(&config);
    for i in 0..3 {
        let r = get(serve.addr, &format!("/r{i}"), &[]);
        assert_eq!((r.status, r.header("x-backend")), (200, Some("app")), "{r:?}\n{}", serve.log());
    }
    assert_eq!((authz.hits(), app.hits()), (3, 3));
    let head = authz.seen.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /check HTTP/1.1") && head.contains("host: authz.local"), "{head}");
    // The probe's stream trace (logged at on_delete) shows the call's response as the filter saw it.
    assert!(serve.wait_log("meshwasm-probe-stream"), "{}", serve.log());
    let event = call_response_event(&serve.log());
    assert!(event["headers"].as_u64().unwrap() > 0 && event["body"].as_u64().unwrap() > 0, "{event}");
    let x_backend = &event["ops"][0];
    assert_eq!(
        (x_backend["op"].as_str(), x_backend["status"].as_u64()),
        (Some("get_header"), Some(0)),
        "{event}"
    );
    assert!(x_backend.to_string().contains("authz"), "{event}");
}

/// The `http_call_response` event of the first probe stream trace in the log.
fn call_response_event(log: &str) -> serde_json::Value {
    let line = log.lines().find(|l| l.contains("meshwasm-probe-stream ")).expect("a probe stream trace");
    let json = line.split("meshwasm-probe-stream ").nth(1).unwrap();
    let trace: serde_json::Value = serde_json::from_str(json).unwrap();
    let events = trace["events"].as_array().unwrap();
    events
        .iter()
        .find(|e| e["cb"] == "http_call_response")
        .cloned()
        .unwrap_or_else(|| panic!("no call response: {trace}"))
}

/// A call whose upstream refuses the connection fails like in Envoy: the filter is called back with no
/// headers and can still resume the request.
#[test]
fn a_failed_http_call_is_delivered_as_a_failure() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let app = Backend::start("app");
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir = scratch_dir("serve-call-fail");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: probe
        wasm: {}
        config:
          name: gate
          request_headers:
            ops: [{{op: http_call, upstream: authz, headers: [[":method", "GET"], [":path", "/"], [":authority", "a"]]}}]
            action: pause
          http_call_response:
            ops: [{{op: get_status}}, {{op: continue_stream, stream: request}}]
    route: {{cluster: app}}
clusters:
  - {{name: app, type: static, endpoints: ["{}"]}}
  - {{name: authz, type: static, endpoints: ["{dead}"]}}
"#,
            probe.display(),
            app.addr,
        ),
    );
    let serve = Serve::start(&config);
    let r = get(serve.addr, "/", &[]);
    assert_eq!((r.status, r.header("x-backend")), (200, Some("app")), "{r:?}\n{}", serve.log());
    assert!(serve.wait_log("meshwasm-probe-stream"), "{}", serve.log());
    let event = call_response_event(&serve.log());
    assert_eq!((event["headers"].as_u64(), event["body"].as_u64()), (Some(0), Some(0)), "{event}");
    assert_eq!(event["ops"][0]["op"], "get_status", "{event}");
    assert_ne!(event["ops"][0]["code"], 0, "get_status reports the failure: {event}");
}

/// Ticks fire on real time in every worker, each on its own VM.
#[test]
fn ticks_fire_on_real_time_in_every_worker() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let dir = scratch_dir("serve-tick");
    let config = write_config(
        &dir,
        &format!(
            r#"
workers: 2
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: ticker
        wasm: {}
        config:
          name: ticker
          configure: {{ops: [{{op: set_tick_period, ms: 30}}]}}
          tick: {{ops: [{{op: log, msg: tock}}]}}
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["127.0.0.1:9"]}}]
"#,
            probe.display()
        ),
    );
    let serve = Serve::start(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = serve.log();
        let ticks = |w: usize| {
            log.lines().filter(|l| l.contains(&format!("[worker {w}]")) && l.ends_with("tock")).count()
        };
        if ticks(0) >= 3 && ticks(1) >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "expected ≥ 3 ticks per worker:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A VM that traps fails that request with 503; then `fail_closed` (Envoy's default) keeps failing,
/// `fail_reload` serves the next request from a fresh VM. Two listeners, each with its own chain.
#[test]
fn a_trapping_filter_fails_closed_or_reloads() {
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-trap");
    wasm_file(&dir, "crashy.wasm", &wat_local_reply());
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - name: closed
    address: 127.0.0.1:0
    filters: [{{name: crashy, wasm: crashy.wasm}}]
    route: {{cluster: c}}
  - name: reload
    address: 127.0.0.1:0
    failure_policy: fail_reload
    filters: [{{name: crashy, wasm: crashy.wasm}}]
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["{}"]}}]
"#,
            backend.addr
        ),
    );
    let serve = Serve::start_listeners(&config, 2);
    let (closed, reload) = (serve.addrs[0], serve.addrs[1]);
    for addr in [closed, reload] {
        assert_eq!(get(addr, "/ok", &[]).status, 200, "{}", serve.log());
        let r = get(addr, "/crash", &[("x-crash", "1")]);
        assert_eq!(r.status, 503, "{r:?}\n{}", serve.log());
    }
    assert_eq!(get(closed, "/after", &[]).status, 503, "fail_closed keeps the VM failed\n{}", serve.log());
    assert_eq!(get(reload, "/after", &[]).status, 200, "fail_reload recreates the VM\n{}", serve.log());
    assert_eq!(backend.hits(), 3);
    let log = serve.log();
    assert!(log.contains("crashy") && log.to_lowercase().contains("unreachable"), "{log}");
    assert!(log.contains("wasm_fail_stream"), "{log}");
}

/// A filter that pauses and never resumes: the client gets Envoy's 408 after the stream idle timeout,
/// and the filter's stream is torn down (its trace is logged at on_delete).
#[test]
fn a_request_held_forever_gets_408_after_the_idle_timeout() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-idle");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    stream_idle_timeout_ms: 300
    filters:
      - name: holder
        wasm: {}
        config: {{name: holder, request_headers: {{action: pause}}}}
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["{}"]}}]
"#,
            probe.display(),
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    let r = get(serve.addr, "/held", &[]);
    assert_eq!((r.status, r.body.as_str()), (408, "stream timeout"), "{r:?}");
    assert_eq!(backend.hits(), 0);
    assert!(serve.wait_log("408 SI stream_idle_timeout"), "{}", serve.log());
    assert!(serve.wait_log("meshwasm-probe-stream"), "the stream was not torn down:\n{}", serve.log());
}

/// Metrics the filters define are shared by the workers and shown at the admin `/stats` endpoint.
#[test]
fn admin_stats_show_the_filters_metrics_across_workers() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-admin");
    let config = write_config(
        &dir,
        &format!(
            r#"
workers: 2
admin: {{address: 127.0.0.1:0}}
listeners:
  - name: edge
    address: 127.0.0.1:0
    filters:
      - name: counter
        wasm: {}
        config:
          name: counter
          configure: {{ops: [{{op: define_metric, kind: counter, name: probe_requests}}]}}
          request_headers: {{ops: [{{op: increment_metric, name: probe_requests, delta: 1}}]}}
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["{}"]}}]
"#,
            probe.display(),
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    let log = serve.log();
    let admin: SocketAddr = log
        .lines()
        .find_map(|l| l.strip_prefix("meshwasm-host serve: admin on http://"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no admin line:\n{log}"))
        .parse()
        .unwrap();
    assert_eq!(get(admin, "/ready", &[]).body, "LIVE\n");
    // Separate connections, so both workers are likely to serve some; the counter is proxy-wide anyway.
    for _ in 0..6 {
        assert_eq!(get(serve.addr, "/", &[]).status, 200);
    }
    let stats = get(admin, "/stats?filter=probe_requests", &[]);
    assert_eq!(stats.status, 200);
    assert_eq!(stats.body, "edge.probe_requests: 6\n", "{}", serve.log());
}

/// The balancer filter picks an endpoint and sets `x-meshwasm-endpoint` (replacing a client's copy);
/// the `original_dst` cluster sends the request there, as Envoy's ORIGINAL_DST cluster would.
#[test]
fn the_balancer_filter_steers_through_the_original_dst_cluster() {
    let balancer = required_artifact("meshwasm_balancer.wasm", "meshwasm-balancer");
    let (a, b, spoofed) = (Backend::start("a"), Backend::start("b"), Backend::start("spoofed"));
    let dir = scratch_dir("serve-balancer");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: balancer
        wasm: {}
        config:
          service_from: [{{fixed: api}}]
          services: {{api: {{endpoints: ["{}", "{}"]}}}}
    route: {{cluster: picked}}
clusters:
  - {{name: picked, type: original_dst}}
"#,
            balancer.display(),
            a.addr,
            b.addr
        ),
    );
    let serve = Serve::start(&config);
    let spoof = spoofed.addr.to_string();
    for _ in 0..4 {
        let r = get(serve.addr, "/", &[("x-meshwasm-endpoint", &spoof)]);
        assert_eq!(r.status, 200, "{r:?}\n{}", serve.log());
    }
    assert_eq!((a.hits(), b.hits(), spoofed.hits()), (2, 2, 0), "{}", serve.log());
}

/// A filter that closes the stream (`proxy_close_stream`): the client's connection is reset without
/// a response, and the upstream is never called.
#[test]
fn a_filter_closing_the_stream_resets_the_connection() {
    let probe = required_artifact("meshwasm_probe.wasm", "meshwasm-probe");
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-close");
    let config = write_config(
        &dir,
        &format!(
            r#"
listeners:
  - address: 127.0.0.1:0
    filters:
      - name: closer
        wasm: {}
        config: {{name: closer, request_headers: {{ops: [{{op: close_stream, stream: request}}], action: pause}}}}
    route: {{cluster: c}}
clusters: [{{name: c, type: static, endpoints: ["{}"]}}]
"#,
            probe.display(),
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    let mut s = TcpStream::connect(serve.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /closed HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw); // EOF or a reset, either way no response
    assert!(raw.is_empty(), "expected no response, got {:?}", String::from_utf8_lossy(&raw));
    assert_eq!(backend.hits(), 0);
    assert!(serve.wait_log("\"GET /closed HTTP/1.1\" 0 - reset_by_filter"), "{}", serve.log());
}

// ---- hardening: random source, body timeout, connection cap, listen addresses ----

/// A filter that draws 16 bytes from WASI `random_get` in `proxy_on_vm_start` and logs them in hex
/// (`random <32 hex digits>`).
fn wat_random_logger() -> String {
    r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 1024) "random ")
  (data (i32.const 2048) "0123456789abcdef")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $n)) (i32.const 131000))
      (then (global.set $heap (i32.const 65536))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $n)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (local $i i32) (local $b i32)
    (if (call $random (i32.const 512) (i32.const 16)) (then (unreachable)))
    (loop $hex
      (local.set $b (i32.load8_u (i32.add (i32.const 512) (local.get $i))))
      (i32.store8 (i32.add (i32.const 1031) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 2048) (i32.shr_u (local.get $b) (i32.const 4)))))
      (i32.store8 (i32.add (i32.const 1032) (i32.shl (local.get $i) (i32.const 1)))
        (i32.load8_u (i32.add (i32.const 2048) (i32.and (local.get $b) (i32.const 15)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $hex (i32.lt_u (local.get $i) (i32.const 16))))
    (drop (call $log (i32.const 2) (i32.const 1024) (i32.const 39)))
    (i32.const 1)))"#
        .to_string()
}

/// The hex values the random logger printed, one per VM.
fn random_lines(stderr: &str) -> Vec<String> {
    stderr.lines().filter_map(|l| l.split("random ").nth(1)).map(str::to_string).collect()
}

/// serve's VMs draw WASI randomness from the OS: two runs of the same config (and two workers of one
/// run) never see the same bytes. A seeded generator gives both runs the same sequence.
#[test]
fn serve_vms_draw_random_bytes_from_the_os() {
    let dir = scratch_dir("serve-random");
    wasm_file(&dir, "random.wasm", &wat_random_logger());
    let config = write_config(
        &dir,
        "workers: 2\n\
         listeners: [{address: '127.0.0.1:0', filters: [{name: rnd, wasm: random.wasm}], route: {cluster: c}}]\n\
         clusters: [{name: c, type: static, endpoints: ['127.0.0.1:9']}]\n",
    );
    let mut runs = Vec::new();
    for _ in 0..2 {
        let out = run(&["serve", "--validate", config.to_str().unwrap()]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let values = random_lines(&stderr);
        assert_eq!(values.len(), 2, "one line per worker VM:\n{stderr}");
        assert!(values.iter().all(|v| v.len() == 32), "{values:?}");
        assert_ne!(values[0], values[1], "two workers drew the same bytes");
        runs.push(values);
    }
    assert!(runs[0].iter().all(|v| !runs[1].contains(v)), "two runs drew the same bytes: {runs:?}");
}

/// Reads one response (head and `content-length` body) from a keep-alive connection; None when the
/// connection is closed (or reset) before a response.
fn read_response(conn: &mut BufReader<TcpStream>) -> Option<Reply> {
    let mut status_line = String::new();
    if conn.read_line(&mut status_line).unwrap_or(0) == 0 {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len = headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap_or(0));
    let mut body = vec![0; len];
    conn.read_exact(&mut body).ok()?;
    Some(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Whether the server closed the connection: EOF or a reset, not a read timeout.
fn closed_by_server(conn: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match conn.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => {
            matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted)
        }
    }
}

/// A client that sends its head and then stalls (or trickles) its body gets 408 `request timeout` after
/// `request_body_timeout_ms` and the connection is closed; the upstream is never called.
#[test]
fn a_stalled_or_trickled_body_gets_408_and_the_connection_closes() {
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-body-timeout");
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{address: '127.0.0.1:0', request_body_timeout_ms: 300, route: {{cluster: c}}}}]\n\
             clusters: [{{name: c, type: static, endpoints: ['{}']}}]\n",
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    for trickle in [false, true] {
        let mut s = TcpStream::connect(serve.addr).unwrap();
        // Far longer than the configured timeout: without it the read below fails instead of answering.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nfirst bytes").unwrap();
        let writer = trickle.then(|| {
            let mut w = s.try_clone().unwrap();
            // One byte every 50 ms: the body keeps moving but would take 50 s to finish.
            std::thread::spawn(move || {
                for _ in 0..200 {
                    std::thread::sleep(Duration::from_millis(50));
                    if w.write_all(b"x").is_err() {
                        return;
                    }
                }
            })
        });
        let mut conn = BufReader::new(s);
        let r = read_response(&mut conn).unwrap_or_else(|| panic!("no response (trickle {trickle})"));
        assert_eq!((r.status, r.body.as_str()), (408, "request timeout"), "trickle {trickle}: {r:?}");
        assert_eq!(r.header("connection"), Some("close"), "{r:?}");
        assert!(closed_by_server(&mut conn), "trickle {trickle}: the connection stayed open");
        if let Some(w) = writer {
            w.join().unwrap();
        }
    }
    assert_eq!(backend.hits(), 0);
    assert!(serve.wait_log("\"POST /upload HTTP/1.1\" 408 - request_body_timeout"), "{}", serve.log());
    // A body that arrives in time is still served.
    let r = request(serve.addr, "POST", "/in-time", &[], "whole body");
    assert_eq!(r.status, 200, "{r:?}");
}

/// With `max_connections: 2` (over 2 workers), a third connection is closed without a response while
/// two are open; once one closes, a new connection is served again.
#[test]
fn the_connection_cap_closes_connections_past_it() {
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-conn-cap");
    let config = write_config(
        &dir,
        &format!(
            "workers: 2\n\
             listeners: [{{address: '127.0.0.1:0', max_connections: 2, route: {{cluster: c}}}}]\n\
             clusters: [{{name: c, type: static, endpoints: ['{}']}}]\n",
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    let open = |path: &str| {
        let s = TcpStream::connect(serve.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut conn = BufReader::new(s);
        let head = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        conn.get_mut().write_all(head.as_bytes()).ok()?;
        read_response(&mut conn).map(|r| (r, conn))
    };
    // Two keep-alive connections, each served once and left open.
    let (r1, first) = open("/one").expect("first connection served");
    let (r2, _second) = open("/two").expect("second connection served");
    assert_eq!((r1.status, r2.status), (200, 200));
    for _ in 0..3 {
        assert!(open("/three").is_none(), "a third connection was served past max_connections: 2");
    }
    assert!(serve.wait_log("closed a new connection"), "{}", serve.log());
    // Closing one frees its slot (the server notices the close asynchronously: retry, bounded).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some((r, _)) = open("/after") {
            assert_eq!(r.status, 200, "{r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed after a connection closed:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(backend.hits(), 3);
}

/// A bare port binds loopback; an explicit non-loopback address is bound but warned about at start-up.
#[test]
fn a_bare_port_listens_on_loopback_and_other_addresses_warn() {
    let backend = Backend::start("a");
    let dir = scratch_dir("serve-bind");
    let config = write_config(
        &dir,
        &format!(
            "listeners: [{{name: bare, address: 0, route: {{cluster: c}}}}]\n\
             clusters: [{{name: c, type: static, endpoints: ['{}']}}]\n",
            backend.addr
        ),
    );
    let serve = Serve::start(&config);
    assert!(serve.addr.ip().is_loopback() && serve.addr.is_ipv4(), "{}", serve.addr);
    assert_eq!(get(serve.addr, "/", &[]).status, 200);
    assert!(!serve.log().contains("warning"), "{}", serve.log());
    drop(serve);

    let wide = write_config(
        &dir,
        &format!(
            "listeners: [{{name: wide, address: '0.0.0.0:0', route: {{cluster: c}}}}]\n\
             clusters: [{{name: c, type: static, endpoints: ['{}']}}]\n",
            backend.addr
        ),
    );
    let serve = Serve::start(&wide);
    assert!(serve.addr.ip().is_unspecified(), "{}", serve.addr);
    let log = serve.log();
    assert!(
        log.contains("warning: listener `wide` binds 0.0.0.0:0, not a loopback address"),
        "no warning for a non-loopback listener:\n{log}"
    );
}

/// The example configs start (`--validate`) and listen on loopback only: no exposure warning.
#[test]
fn the_example_configs_validate_and_listen_on_loopback() {
    required_artifact("meshwasm_noop.wasm", "meshwasm-noop");
    required_artifact("meshwasm_balancer.wasm", "meshwasm-balancer");
    let dir = workspace_root().join("examples/serve");
    // mtls.yaml reads the certificates make-certs.sh writes under target/ (none are committed).
    let certs = std::process::Command::new(dir.join("make-certs.sh")).output().expect("run make-certs.sh");
    assert!(certs.status.success(), "make-certs.sh: {}", String::from_utf8_lossy(&certs.stderr));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = run(&["serve", "--validate", path.to_str().unwrap()]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{}: {stderr}", path.display());
        assert!(!stderr.contains("warning:"), "{}: {stderr}", path.display());
        checked += 1;
    }
    assert!(checked >= 3, "expected the example configs in {}", dir.display());
}
