//! One access log line per request on stderr, close to Envoy's default format:
//!
//! ```text
//! [2026-11-25T14:31:02.120Z] ingress "GET /users HTTP/1.1" 200 - via_upstream 0 17 3 "backend" "127.0.0.1:8080" worker=0
//! ```
//! Fields: time, listener, request line, status, response flags (`-`, `UH`, `UF`, `UT`, `SI`), response
//! code details, request and response body bytes, duration in ms, route cluster, upstream host, worker.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct AccessLogEntry<'a> {
    pub start: SystemTime,
    pub listener: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub flags: &'a str,
    pub details: &'a str,
    pub bytes_received: usize,
    pub bytes_sent: usize,
    pub duration: Duration,
    pub cluster: &'a str,
    pub upstream: Option<SocketAddr>,
    pub worker: usize,
}

impl AccessLogEntry<'_> {
    pub fn line(&self) -> String {
        let mut line = String::with_capacity(160);
        let upstream = self.upstream.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let _ = write!(
            line,
            "[{}] {} \"{} {} HTTP/1.1\" {} {} {} {} {} {} \"{}\" \"{}\" worker={}",
            rfc3339_millis(self.start),
            self.listener,
            self.method,
            escape(self.path),
            self.status,
            self.flags,
            if self.details.is_empty() { "-" } else { self.details },
            self.bytes_received,
            self.bytes_sent,
            self.duration.as_millis(),
            self.cluster,
            upstream,
            self.worker,
        );
        line
    }

    pub fn write(&self) {
        eprintln!("{}", self.line());
    }
}

/// Keeps a client-chosen path from breaking the line format.
fn escape(s: &str) -> String {
    s.chars().map(|c| if c.is_control() || c == '"' { '?' } else { c }).collect()
}

/// `2026-11-25T14:31:02.120Z` without a date crate (days-from-civil inverse, H. Hinnant's algorithm).
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_timestamps() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.5Z (a leap day).
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_500);
        assert_eq!(rfc3339_millis(t), "2024-02-29T23:59:59.500Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_600_000);
        assert_eq!(rfc3339_millis(t), "2026-11-25T09:46:40.000Z");
    }

    #[test]
    fn line_has_every_field() {
        let e = AccessLogEntry {
            start: UNIX_EPOCH,
            listener: "ingress",
            method: "GET",
            path: "/a\"b",
            status: 503,
            flags: "UH",
            details: "no_healthy_upstream",
            bytes_received: 0,
            bytes_sent: 19,
            duration: Duration::from_millis(2),
            cluster: "picked",
            upstream: None,
            worker: 1,
        };
        assert_eq!(
            e.line(),
            "[1970-01-01T00:00:00.000Z] ingress \"GET /a?b HTTP/1.1\" 503 UH no_healthy_upstream 0 19 2 \"picked\" \"-\" worker=1"
        );
    }
}
