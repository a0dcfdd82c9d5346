//! A small blocking HTTP/1.1 client for forwarding calls and requests to real servers in tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::http::Headers;

/// Sends one request (`Connection: close`) and reads the whole response. Err on connection failure or
/// an unparseable response.
pub(crate) fn send(
    addr: SocketAddr,
    headers: &Headers,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<(Headers, Vec<u8>)> {
    let timeout = if timeout.is_zero() { Duration::from_secs(30) } else { timeout };
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let method = headers.get(":method").unwrap_or("GET");
    let path = headers.get(":path").unwrap_or("/");
    let authority = headers.get(":authority").unwrap_or("localhost");
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
        out.extend_from_slice(k);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\nconnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    s.write_all(&out)?;
    let mut r = BufReader::new(s);
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).ok_or_else(|| bad("no status line"))?.to_string();
    let mut h = Headers::new().with(":status", &status);
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
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
            r.read_line(&mut l)?;
            let size = usize::from_str_radix(l.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
        if !h.contains("content-length") {
            h.add("content-length", body.len().to_string());
        }
    } else if let Some(n) = content_length {
        body = vec![0; n];
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((h, body))
}
