//! The small HTTP/1.1 server under every registry fake: a tokio runtime of its own, a handler that
//! gets the whole request, a record of requests, and injectable failures (status or garbage body).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A request as a fake sees it.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    pub method: String,
    pub path: String,
    /// Decoded query parameters in order (a bare `passing` has an empty value).
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A reply from a fake's handler.
#[derive(Debug, Clone)]
pub struct FakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FakeResponse {
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// What a fake does instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Answer with this status and a short text body.
    Status(u16),
    /// Answer 200 with this (non-JSON) body.
    Garbage(String),
}

pub type Handler =
    Arc<dyn Fn(FakeRequest) -> Pin<Box<dyn Future<Output = FakeResponse> + Send>> + Send + Sync>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

/// A running fake server. Stopped on drop (its runtime shuts down).
pub struct FakeServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<FakeRequest>>>,
    failure: Arc<Mutex<Option<Failure>>>,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    /// Serves `handler` on a free loopback port.
    pub fn start(name: &str, handler: Handler) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("fake-{name}"))
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let requests: Arc<Mutex<Vec<FakeRequest>>> = Arc::default();
        let failure: Arc<Mutex<Option<Failure>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let (reqs, fail) = (requests.clone(), failure.clone());
        rt.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
                };
                let (handler, reqs, fail) = (handler.clone(), reqs.clone(), fail.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let (handler, reqs, fail) = (handler.clone(), reqs.clone(), fail.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body =
                                body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                            let path = parts.uri.path().to_owned();
                            let query = parse_query(parts.uri.query().unwrap_or(""));
                            let headers = parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            let r =
                                FakeRequest { method: parts.method.to_string(), path, query, headers, body };
                            lock(&reqs).push(r.clone());
                            let failure = lock(&fail).clone();
                            let resp = match failure {
                                Some(Failure::Status(s)) => FakeResponse::text(s, "injected failure"),
                                Some(Failure::Garbage(g)) => FakeResponse::text(200, &g),
                                None => handler(r).await,
                            };
                            let mut b = hyper::Response::builder().status(resp.status);
                            for (k, v) in &resp.headers {
                                b = b.header(k, v);
                            }
                            Ok::<_, Infallible>(
                                b.body(Full::new(Bytes::from(resp.body)))
                                    .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new()))),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, requests, failure, shutdown: Mutex::new(Some(tx)), rt: Some(rt) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// All requests so far.
    pub fn requests(&self) -> Vec<FakeRequest> {
        lock(&self.requests).clone()
    }

    /// Makes every request fail this way until [`FakeServer::recover`].
    pub fn fail(&self, failure: Failure) {
        *lock(&self.failure) = Some(failure);
    }

    pub fn recover(&self) {
        *lock(&self.failure) = None;
    }

    /// Stops accepting and drops open connections (registry down).
    pub fn stop(&mut self) {
        if let Some(tx) = lock(&self.shutdown).take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses a Go-style duration as Consul and Kubernetes accept it: `"30s"`, `"500ms"`, `"5m"`, `"1h"`.
pub fn go_duration(s: &str) -> Option<std::time::Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            parse_query("passing&index=5&labelSelector=kubernetes.io%2Fservice-name%3Dapi"),
            vec![
                ("passing".into(), "".into()),
                ("index".into(), "5".into()),
                ("labelSelector".into(), "kubernetes.io/service-name=api".into())
            ]
        );
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
