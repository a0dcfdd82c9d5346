//! A small blocking HTTP/1.1 client for forwarding calls and requests to real servers in tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::Headers;

/// A response body larger than this is an error (a hostile or broken server cannot make the host
/// allocate without bound).
const MAX_BODY: u64 = 64 << 20;

fn invalid(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// Header names and values (and the request line parts) must not contain CR or LF: they would end
/// the line early and let a guest inject headers or a second request.
fn check_field(what: &str, b: &[u8]) -> std::io::Result<()> {
    if b.iter().any(|&c| c == b'\r' || c == b'\n') {
        return Err(invalid(&format!("meshwasm host: {what} contains CR or LF; request not sent")));
    }
    Ok(())
}

/// The longest status, header or chunk-size line accepted (Envoy's default header limit is 60 KiB).
const MAX_LINE: u64 = 64 << 10;

/// `read_line`, but a line over `MAX_LINE` bytes is an error instead of unbounded growth.
fn read_line(r: &mut impl BufRead, line: &mut String) -> std::io::Result<usize> {
    let n = r.take(MAX_LINE + 1).read_line(line)?;
    if n as u64 > MAX_LINE {
        return Err(invalid("meshwasm host: response line over 64 KiB"));
    }
    Ok(n)
}

/// Reads exactly `n` more body bytes into `body`, refusing to grow it past `MAX_BODY`.
fn read_body_exact(r: &mut impl Read, body: &mut Vec<u8>, n: u64) -> std::io::Result<()> {
    if (body.len() as u64).saturating_add(n) > MAX_BODY {
        return Err(invalid("meshwasm host: upstream response body over 64 MiB"));
    }
    let got = r.take(n).read_to_end(body)?;
    if (got as u64) < n {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "response body truncated"));
    }
    Ok(())
}

/// Sends one request (`Connection: close`) and reads the whole response. Err on connection failure or
/// an unparseable response.
pub(crate) fn send(
    addr: SocketAddr,
    headers: &Headers,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(Headers, Vec<u8>)> {
    let timeout = if timeout.is_zero() { Duration::from_secs(30) } else { timeout };
    let method = headers.get(":method").unwrap_or("GET");
    let path = headers.get(":path").unwrap_or("/");
    let authority = headers.get(":authority").unwrap_or("localhost");
    check_field(":method", method.as_bytes())?;
    check_field(":path", path.as_bytes())?;
    check_field(":authority", authority.as_bytes())?;
    if method.contains(' ') || path.contains(' ') {
        return Err(invalid("meshwasm host: :method or :path contains a space; request not sent"));
    }
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {authority}\r\n").into_bytes();
    for (k, v) in headers.iter() {
        if k.starts_with(b":")
            || k == b"host"
            || k == b"content-length"
            || k == b"connection"
            || k == b"transfer-encoding"
        {
            continue;
        }
        check_field("header name", k)?;
        check_field("header value", v)?;
        out.extend_from_slice(k);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(&out)?;
    let mut r = BufReader::new(s);
    let bad = invalid;
    let mut line = String::new();
    read_line(&mut r, &mut line)?;
    let status = line.split_whitespace().nth(1).ok_or_else(|| bad("no status line"))?.to_string();
    let mut h = Headers::new().with(":status", &status);
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut l = String::new();
        if read_line(&mut r, &mut l)? == 0 {
            break;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else { return Err(bad("bad header line")) };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            content_length = v.parse::<usize>().ok();
        }
        if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
            continue;
        }
        h.add(&k, v);
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut l = String::new();
            read_line(&mut r, &mut l)?;
            let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            read_body_exact(&mut r, &mut body, size as u64)?;
            let mut crlf = String::new();
            read_line(&mut r, &mut crlf)?;
        }
        if !h.contains("content-length") {
            h.add("content-length", body.len().to_string());
        }
    } else if let Some(n) = content_length {
        read_body_exact(&mut r, &mut body, n as u64)?;
    } else {
        (&mut r).take(MAX_BODY + 1).read_to_end(&mut body)?;
        if body.len() as u64 > MAX_BODY {
            return Err(invalid("meshwasm host: upstream response body over 64 MiB"));
        }
    }
    Ok((h, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// Serves one connection: reads the request head, answers with `reply`; returns what it read.
    fn server(reply: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return Vec::new() };
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(reply);
            got
        });
        (addr, h)
    }

    fn get() -> Headers {
        Headers::new().with(":method", "GET").with(":path", "/").with(":authority", "a")
    }

    #[test]
    fn huge_content_length_is_an_error_not_an_abort() {
        let (addr, h) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551615\r\n\r\nabc");
        let err = send(addr, &get(), b"", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn huge_chunk_size_is_an_error_not_an_abort() {
        let (addr, h) = server(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffff\r\nabc");
        let err = send(addr, &get(), b"", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("64 MiB"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn bodies_within_the_cap_are_read() {
        let (addr, h) =
            server(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let (hd, body) = send(addr, &get(), b"", Duration::from_secs(5)).unwrap();
        assert_eq!(body, b"abcde");
        assert_eq!(hd.get("content-length"), Some("5"));
        h.join().unwrap();
        let (addr, h) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nxyz");
        assert_eq!(send(addr, &get(), b"", Duration::from_secs(5)).unwrap().1, b"xyz");
        h.join().unwrap();
        let (addr, h) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nxyz");
        assert!(send(addr, &get(), b"", Duration::from_secs(5)).is_err(), "short body is an error");
        h.join().unwrap();
    }

    #[test]
    fn an_endless_header_line_is_an_error() {
        static REPLY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut r = b"HTTP/1.1 200 OK\r\nx-long: ".to_vec();
            r.resize(r.len() + (1 << 20), b'a');
            r
        });
        let (addr, h) = server(&REPLY);
        let err = send(addr, &get(), b"", Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("over 64 KiB"), "{err}");
        h.join().unwrap();
    }

    #[test]
    fn header_injection_is_refused_before_sending() {
        let (addr, h) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        for bad in [
            get().with("x-a", "v\r\nx-injected: 1"),
            get().with("x-a\nb", "v"),
            Headers::new().with(":method", "GET").with(":path", "/ HTTP/1.1\r\nx: y"),
        ] {
            let err = send(addr, &bad, b"", Duration::from_secs(5)).unwrap_err();
            assert!(err.to_string().contains("request not sent"), "{err}");
        }
        // Nothing was sent: the one good request is the first the server sees.
        send(addr, &get().with("x-a", "ok"), b"", Duration::from_secs(5)).unwrap();
        let got = String::from_utf8(h.join().unwrap()).unwrap();
        assert!(got.starts_with("GET / HTTP/1.1\r\n") && got.contains("x-a: ok\r\n"), "{got}");
        assert!(!got.contains("injected"), "{got}");
    }
}
