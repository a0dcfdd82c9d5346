//! An open-loop load generator: requests are *scheduled* at a fixed rate for a fixed time, whatever
//! the answers do (a slow or failing proxy does not slow the load down, as with wrk's closed loop),
//! and every request's schedule time, start, end, status and answering backend is recorded.
//!
//! A pool of worker threads, each with one keep-alive HTTP/1.1 connection, takes the scheduled
//! requests in order; a transport error (refused, reset, timeout) is recorded as status 0 and the
//! worker reconnects. The bearer token can be swapped while the load runs ([`Load::set_token`]):
//! each record carries the generation of the token it sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use meshwasm_tests::backend::INSTANCE_HEADER;

/// One request as the client saw it. Times are microseconds since the load started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the request was due (open loop: latency counts from here).
    pub due_us: u64,
    pub start_us: u64,
    pub end_us: u64,
    /// HTTP status; 0 for a transport error (connect refused, reset, timeout, bad answer).
    pub status: u16,
    /// `x-backend-instance` of the answer, if any.
    pub instance: Option<String>,
    /// Generation of the bearer token sent ([`Load::set_token`]).
    pub token_gen: u32,
}

impl Record {
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// What the load sends.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub path: String,
    /// Requests per second.
    pub rate: u32,
    pub duration: Duration,
    /// Worker threads (connections).
    pub workers: usize,
    /// Per-request timeout.
    pub timeout: Duration,
}

struct Shared {
    start: Instant,
    token: RwLock<(u32, Option<String>)>,
    records: Mutex<Vec<Record>>,
}

/// A running load. [`Load::finish`] waits for its end and returns the records in schedule order.
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts the load now.
    pub fn start(spec: LoadSpec, token: Option<String>) -> Self {
        let shared = Arc::new(Shared {
            start: Instant::now(),
            token: RwLock::new((0, token)),
            records: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel::<u64>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..spec.workers.max(1) {
            let rx = rx.clone();
            let shared = shared.clone();
            let spec = spec.clone();
            threads.push(std::thread::spawn(move || worker(&spec, &shared, &rx)));
        }
        let sched = shared.clone();
        threads.push(std::thread::spawn(move || {
            let period_us = 1_000_000 / u64::from(spec.rate.max(1));
            let end_us = spec.duration.as_micros() as u64;
            let mut i = 0u64;
            loop {
                let due = i * period_us;
                if due >= end_us {
                    break;
                }
                let now = sched.start.elapsed().as_micros() as u64;
                if due > now {
                    std::thread::sleep(Duration::from_micros(due - now));
                }
                if tx.send(due).is_err() {
                    break;
                }
                i += 1;
            }
        }));
        Self { shared, threads }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Microseconds since the load started.
    pub fn now_us(&self) -> u64 {
        self.elapsed().as_micros() as u64
    }

    /// Sends `token` from now on (None: no authorization header); returns its generation.
    pub fn set_token(&self, token: Option<String>) -> u32 {
        let mut t = self.shared.token.write().unwrap_or_else(PoisonError::into_inner);
        t.0 += 1;
        t.1 = token;
        t.0
    }

    /// Waits until the schedule is done and every request answered; records sorted by due time.
    pub fn finish(self) -> Vec<Record> {
        for t in self.threads {
            let _ = t.join();
        }
        let mut records =
            std::mem::take(&mut *self.shared.records.lock().unwrap_or_else(PoisonError::into_inner));
        records.sort_by_key(|r| r.due_us);
        records
    }
}

fn worker(spec: &LoadSpec, shared: &Shared, rx: &Mutex<mpsc::Receiver<u64>>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    loop {
        let due = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match rx.recv() {
                Ok(d) => d,
                Err(_) => return,
            }
        };
        let (token_gen, token) = shared.token.read().unwrap_or_else(PoisonError::into_inner).clone();
        let start_us = shared.start.elapsed().as_micros() as u64;
        let result = request(spec, &mut conn, token.as_deref());
        let end_us = shared.start.elapsed().as_micros() as u64;
        let (status, instance) = match result {
            Ok(r) => r,
            Err(_) => {
                conn = None;
                (0, None)
            }
        };
        let record = Record { due_us: due, start_us, end_us, status, instance, token_gen };
        shared.records.lock().unwrap_or_else(PoisonError::into_inner).push(record);
    }
}

fn request(
    spec: &LoadSpec,
    conn: &mut Option<BufReader<TcpStream>>,
    token: Option<&str>,
) -> std::io::Result<(u16, Option<String>)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&spec.target, spec.timeout)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(spec.timeout))?;
        s.set_write_timeout(Some(spec.timeout))?;
        *conn = Some(BufReader::new(s));
    }
    let Some(reader) = conn.as_mut() else { return Err(std::io::ErrorKind::NotConnected.into()) };
    let mut head = format!("GET {} HTTP/1.1\r\nhost: mesh.local\r\n", spec.path);
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    reader.get_mut().write_all(head.as_bytes())?;
    let (status, instance, close) = read_answer(reader)?;
    if close {
        *conn = None;
    }
    Ok((status, instance))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads one answer: (status, instance header, connection closes).
fn read_answer(r: &mut impl BufRead) -> std::io::Result<(u16, Option<String>, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before the answer"));
    }
    let status: u16 =
        line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("status"))?;
    let mut len = 0usize;
    let mut instance = None;
    let mut close = false;
    let mut chunked = false;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(bad("connection closed in the answer head"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "content-length" => len = v.parse().map_err(|_| bad("content-length"))?,
                "connection" => close = v.eq_ignore_ascii_case("close"),
                "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                k if k == INSTANCE_HEADER => instance = Some(v.to_owned()),
                _ => {}
            }
        }
    }
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("chunk size"))?;
            let mut skip = vec![0u8; size + 2];
            if size == 0 {
                // The last chunk's CRLF (no trailers expected).
                line.clear();
                r.read_line(&mut line)?;
                break;
            }
            r.read_exact(&mut skip)?;
        }
    } else {
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
    }
    Ok((status, instance, close))
}

/// Requests and failures per whole second of due time: (second, sent, failed).
pub fn per_second(records: &[Record], seconds: u64) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = (0..seconds).map(|s| (s, 0, 0)).collect();
    for r in records {
        let s = (r.due_us / 1_000_000) as usize;
        if let Some(b) = out.get_mut(s) {
            b.1 += 1;
            if !r.ok() {
                b.2 += 1;
            }
        }
    }
    out
}

/// Requests in flight (started, not answered) at time `t_us`.
pub fn in_flight_at(records: &[Record], t_us: u64) -> usize {
    records.iter().filter(|r| r.start_us <= t_us && r.end_us > t_us).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(due_s: f64, status: u16) -> Record {
        let us = (due_s * 1e6) as u64;
        Record { due_us: us, start_us: us, end_us: us + 1000, status, instance: None, token_gen: 0 }
    }

    #[test]
    fn counts_failures_per_second() {
        let r = [rec(0.1, 200), rec(0.5, 503), rec(1.2, 0), rec(1.3, 200), rec(5.0, 503)];
        assert_eq!(per_second(&r, 3), vec![(0, 2, 1), (1, 2, 1), (2, 0, 0)]);
        assert_eq!(in_flight_at(&r, 100_500), 1);
        assert_eq!(in_flight_at(&r, 102_000), 0);
    }

    #[test]
    fn reads_answers_with_length_chunks_and_close() {
        let mut a: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-backend-instance: b\r\n\r\nok";
        assert_eq!(read_answer(&mut a).unwrap(), (200, Some("b".into()), false));
        let mut c: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert_eq!(read_answer(&mut c).unwrap(), (503, None, true));
        let mut e: &[u8] = b"";
        assert!(read_answer(&mut e).is_err());
    }

    #[test]
    fn sends_at_the_fixed_rate_against_a_real_server() {
        let port = meshwasm_tests::process::free_port();
        std::thread::spawn(move || meshwasm_bench::backend::serve(port, "t"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(meshwasm_tests::process::wait_until(Duration::from_secs(5), || {
            meshwasm_tests::process::port_open(addr)
        }));
        let spec = LoadSpec {
            target: addr,
            path: "/".into(),
            rate: 100,
            duration: Duration::from_millis(500),
            workers: 4,
            timeout: Duration::from_secs(2),
        };
        let records = Load::start(spec, None).finish();
        assert_eq!(records.len(), 50);
        assert!(records.iter().all(|r| r.ok() && r.instance.as_deref() == Some("t")));
    }
}
