//! Child processes that always die with the test, free loopback ports, polling, and a tiny blocking
//! HTTP/1.1 client for tests.
//!
//! ```no_run
//! use meshwasm_tests::process::{ChildGuard, wait_until};
//! use std::{process::Command, time::Duration};
//! let mut cmd = Command::new("sleep");
//! cmd.arg("30");
//! let child = ChildGuard::spawn("sleeper", cmd).unwrap();
//! assert!(wait_until(Duration::from_secs(1), || child.is_running()));
//! // dropped here: killed and reaped; its log tail is printed if the test panicked
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free TCP port on 127.0.0.1 (bound then released; prefer binding port 0 directly when the
/// component supports it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or_else(|e| {
        panic!("meshwasm tests: cannot bind a loopback port: {e}");
    })
}

/// Polls `ready` every 20 ms until it returns true (→ true) or `timeout` passes (→ false).
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when something accepts TCP connections at `addr`.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// A spawned child process whose stdout and stderr go to a log file. On drop it is killed and reaped;
/// when the current thread is panicking (a failing test) the tail of its log is printed first.
pub struct ChildGuard {
    name: String,
    child: Mutex<Child>,
    log_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout/stderr appended to a log file in a fresh temporary directory.
    pub fn spawn(name: &str, cmd: Command) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(&format!("meshwasm-{name}-")).tempdir()?;
        let log_path = dir.path().join(format!("{name}.log"));
        let mut guard = Self::spawn_logging_to(name, cmd, &log_path)?;
        guard._dir = Some(dir);
        Ok(guard)
    }

    /// Spawns `cmd` with stdout/stderr written to `log_path` (the caller owns its directory).
    pub fn spawn_logging_to(name: &str, mut cmd: Command, log_path: &Path) -> Result<Self> {
        let out = File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
        let child = cmd.spawn().with_context(|| format!("meshwasm tests: cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Mutex::new(child),
            log_path: log_path.to_owned(),
            _dir: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.lock().id()
    }

    /// The log file (stdout and stderr interleaved).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let logs = self.logs();
        let all: Vec<&str> = logs.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the last `lines` lines of the log to stderr (shown by the test runner on failure).
    pub fn print_tail(&self, lines: usize) {
        eprintln!(
            "----- last {lines} lines of {} ({}) -----\n{}\n----- end of {} -----",
            self.name,
            self.log_path.display(),
            self.log_tail(lines),
            self.name
        );
    }

    /// True while the process has not exited.
    pub fn is_running(&self) -> bool {
        matches!(self.lock().try_wait(), Ok(None))
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.lock().try_wait().ok().flatten()
    }

    /// Kills the process and waits for it (idempotent).
    pub fn kill(&self) {
        let mut child = self.lock();
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then kills.
    pub fn terminate(&self, grace: Duration) {
        let pid = self.pid();
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        if !wait_until(grace, || !self.is_running()) {
            self.kill();
        }
        self.kill();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_tail(200);
        }
        self.kill();
    }
}

/// A response read by [`http_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Headers in wire order, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(k, _)| *k == name).map(|(_, v)| v.as_str()).collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }
}

/// `GET path` on `addr` with a 10 s timeout.
pub fn http_get(addr: impl ToSocketAddrs, path: &str) -> Result<HttpResponse> {
    http_request(addr, "GET", path, &[], b"", Duration::from_secs(10))
}

/// A blocking HTTP/1.1 request with `Connection: close`. `Host` defaults to `localhost` unless given
/// in `headers`. Understands `Content-Length`, chunked and read-to-EOF bodies.
pub fn http_request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let addr = addr.to_socket_addrs()?.next().context("no address")?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str("host: localhost\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_len = headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_len && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        req.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    req.push_str("connection: close\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    stream.write_all(body)?;
    read_response(BufReader::new(stream), method == "HEAD")
        .with_context(|| format!("{method} {path} at {addr}"))
}

fn read_response(mut r: impl BufRead, head: bool) -> Result<HttpResponse> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            bail!("connection closed inside the response head");
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v): &(String, String)| v.clone());
    let mut body = Vec::new();
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = find("content-length") {
        let len: usize = len.parse()?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(HttpResponse { status, headers, body })
}
