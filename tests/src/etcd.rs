//! Real etcd (Debian `etcd-server`, `/usr/bin/etcd`) for discovery tests: a single member with its
//! data directory in a temporary directory, client and peer ports free on loopback, and helpers that
//! write through its JSON gateway (the same gateway the discovery filter reads).
//!
//! ```no_run
//! let etcd = meshwasm_tests::etcd::Etcd::start().unwrap();
//! etcd.put("/services/api/a", r#"{"address":"127.0.0.1:8080"}"#).unwrap();
//! etcd.stop(); // registry down
//! etcd.restart().unwrap(); // same data, same port
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::process::{self, ChildGuard};

/// Path of the etcd binary: `$MESHWASM_ETCD`, else `/usr/bin/etcd`.
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("MESHWASM_ETCD").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// A running single-member etcd. Killed on drop.
pub struct Etcd {
    dir: tempfile::TempDir,
    client: SocketAddr,
    peer: SocketAddr,
    child: Mutex<Option<ChildGuard>>,
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits until `/health` says true.
    pub fn start() -> Result<Self> {
        let mut dir = tempfile::Builder::new().prefix("meshwasm-etcd-").tempdir()?;
        let mut last = None;
        // Free ports are only free until someone takes them: retry on a clash.
        for _ in 0..3 {
            let client = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
            let peer = SocketAddr::from(([127, 0, 0, 1], process::free_port()));
            let etcd = Self { dir, client, peer, child: Mutex::new(None) };
            match etcd.spawn() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    last = Some(e);
                    dir = etcd.into_dir();
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn into_dir(self) -> tempfile::TempDir {
        if let Some(c) = self.lock().take() {
            c.kill();
        }
        let Self { dir, .. } = self;
        dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ChildGuard>> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self) -> Result<()> {
        let bin = etcd_binary();
        if !bin.is_file() {
            bail!(
                "meshwasm tests: {} is missing: install the Debian package etcd-server (make setup)",
                bin.display()
            );
        }
        let client = format!("http://{}", self.client);
        let peer = format!("http://{}", self.peer);
        let mut cmd = Command::new(bin);
        cmd.arg("--name=meshwasm")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=meshwasm={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .env_remove("ETCDCTL_API");
        let log = self.dir.path().join(format!("etcd-{}.log", self.client.port()));
        let child = ChildGuard::spawn_logging_to("etcd", cmd, &log)?;
        let healthy = process::wait_until(Duration::from_secs(20), || {
            child.is_running()
                && process::http_get(self.client, "/health")
                    .is_ok_and(|r| r.status == 200 && r.text().contains("true"))
        });
        if !healthy {
            child.print_tail(50);
            child.kill();
            bail!("meshwasm tests: etcd did not become healthy at {}", self.client);
        }
        *self.lock() = Some(child);
        Ok(())
    }

    /// The client address (JSON gateway under `/v3/`).
    pub fn addr(&self) -> SocketAddr {
        self.client
    }

    fn post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        let body = serde_json::to_vec(&body)?;
        let r = process::http_request(
            self.client,
            "POST",
            path,
            &[("content-type", "application/json")],
            &body,
            Duration::from_secs(10),
        )?;
        if r.status != 200 {
            bail!("etcd {path}: HTTP {}: {}", r.status, r.text());
        }
        r.json()
    }

    /// Writes a key; returns the store revision after the write.
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        let v =
            self.post("/v3/kv/put", json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)}))?;
        revision(&v)
    }

    /// Deletes a key; returns the store revision after the delete.
    pub fn delete(&self, key: &str) -> Result<i64> {
        let v = self.post("/v3/kv/deleterange", json!({"key": STANDARD.encode(key)}))?;
        revision(&v)
    }

    /// The values under `prefix` (decoded), as etcd returns them.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.post(
            "/v3/kv/range",
            json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(&end)}),
        )?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let d = |f: &str| -> Result<String> {
                Ok(String::from_utf8(STANDARD.decode(kv[f].as_str().unwrap_or_default())?)?)
            };
            out.push((d("key")?, d("value")?));
        }
        Ok(out)
    }

    /// Kills etcd (registry down). Data stays for [`Etcd::restart`].
    pub fn stop(&self) {
        if let Some(c) = self.lock().take() {
            c.kill();
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.spawn().context("restarting etcd")
    }

    /// True while etcd runs.
    pub fn is_running(&self) -> bool {
        self.lock().as_ref().is_some_and(ChildGuard::is_running)
    }
}

fn revision(v: &serde_json::Value) -> Result<i64> {
    v["header"]["revision"]
        .as_str()
        .context("etcd answer without header.revision")?
        .parse()
        .context("revision")
}
