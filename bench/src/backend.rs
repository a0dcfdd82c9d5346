//! A minimal, fast HTTP/1.1 backend for load tests: keep-alive, pipelining-safe, one thread per
//! connection, a fixed 2-byte body and the instance name in `x-backend-instance` (the same header as
//! the test harness's backends, whose JSON echo and request log are too costly under load).
//!
//! It runs as a child process (`meshwasm-bench backend --port P --name N`) so that it can be pinned to
//! a CPU apart from Envoy with `taskset`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use anyhow::{Context, Result};

use meshwasm_tests::backend::INSTANCE_HEADER;

/// Serves forever on `127.0.0.1:port`.
pub fn serve(port: u16, name: &str) -> Result<()> {
    let listener =
        TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("backend {name}: bind {port}"))?;
    let response: &'static [u8] = Box::leak(
        format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n{INSTANCE_HEADER}: {name}\r\n\r\nok")
            .into_bytes()
            .into_boxed_slice(),
    );
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = handle(stream, response);
        });
    }
    Ok(())
}

/// Answers every request head (`\r\n\r\n`-terminated, no bodies: the load is GETs) on one connection.
fn handle(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    let mut out = Vec::with_capacity(response.len() * 4);
    loop {
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        filled += n;
        // Answer every complete request head in the buffer (pipelined requests get one write).
        let mut start = 0;
        while let Some(end) = find_head_end(&buf[start..filled]) {
            out.extend_from_slice(response);
            start += end;
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            // A head larger than 16 KiB: not something the benchmark sends.
            return Ok(());
        }
    }
}

/// Offset just past the first `\r\n\r\n`.
fn find_head_end(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_head_ends() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nhost: x\r\n"), None);
    }

    #[test]
    fn answers_pipelined_requests_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let _ = handle(s, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < 2 * 40 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(String::from_utf8(got).unwrap().matches("200 OK").count(), 2);
    }
}
