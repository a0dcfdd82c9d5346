//! The admin endpoint: `GET /stats` and `GET /ready`, on its own connection cap.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use meshwasm_host::ProxyState;

use super::downstream::ConnectionLimit;

/// Open connections to the admin endpoint (a few scrapers and probes; it answers small GETs).
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin endpoint: `GET /stats` lists the filters' metrics (`<listener>.<metric>: <value>`, one per
/// line; histograms show their sample count), `GET /ready` answers `LIVE`.
pub(super) async fn serve(socket: tokio::net::TcpListener, states: Arc<Vec<(String, ProxyState)>>) {
    let limit = Arc::new(ConnectionLimit::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. EMFILE: back off as accept_loop does instead of spinning.
                eprintln!("meshwasm-host serve: admin: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the cap the connection is closed at once, as on the listeners.
        let Ok(slot) = limit.acquire() else { continue };
        let states = states.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: hyper::Request<Incoming>| {
                let states = states.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/ready" => (200, "LIVE\n".to_string()),
                        "/stats" => {
                            let filter = req.uri().query().and_then(|q| {
                                q.split('&').find_map(|kv| kv.strip_prefix("filter=")).map(str::to_string)
                            });
                            let mut out = String::new();
                            for (listener, state) in states.iter() {
                                for (name, value) in state.metrics() {
                                    let line = format!("{listener}.{name}: {value}\n");
                                    if filter.as_deref().is_none_or(|f| line.contains(f)) {
                                        out.push_str(&line);
                                    }
                                }
                            }
                            (200, out)
                        }
                        _ => (404, "admin: GET /stats[?filter=substring] or /ready\n".to_string()),
                    };
                    let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    r.headers_mut()
                        .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
