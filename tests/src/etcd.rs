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

/// A real multi-member etcd cluster on loopback (each member its own process, data directory, client
/// and peer port), for registry-failure tests: kill the leader or a follower, restart it with its data.
///
/// ```no_run
/// let cluster = meshwasm_tests::etcd::EtcdCluster::start(3).unwrap();
/// cluster.put("/services/api/a", r#"{"address":"127.0.0.1:8080"}"#).unwrap();
/// let leader = cluster.leader().unwrap();
/// cluster.kill(leader); // a new leader is elected among the other two
/// cluster.restart(leader).unwrap(); // rejoins with its data
/// ```
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<ClusterMember>,
}

struct ClusterMember {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Mutex<Option<ChildGuard>>,
}

impl ClusterMember {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ChildGuard>> {
        self.child.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl EtcdCluster {
    /// Starts `n` members on free loopback ports and waits until every one reports `/health` true
    /// (a leader is elected).
    pub fn start(n: usize) -> Result<Self> {
        let bin = etcd_binary();
        if !bin.is_file() {
            bail!(
                "meshwasm tests: {} is missing: install the Debian package etcd-server (make setup)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("meshwasm-etcd-cluster-").tempdir()?;
        let members: Vec<ClusterMember> = (0..n)
            .map(|i| ClusterMember {
                name: format!("meshwasm-{i}"),
                client: SocketAddr::from(([127, 0, 0, 1], process::free_port())),
                peer: SocketAddr::from(([127, 0, 0, 1], process::free_port())),
                child: Mutex::new(None),
            })
            .collect();
        let cluster = Self { dir, members };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i, Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect::<Vec<_>>().join(",")
    }

    fn spawn(&self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let client = format!("http://{}", m.client);
        let peer = format!("http://{}", m.peer);
        let mut cmd = Command::new(etcd_binary());
        cmd.arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", self.dir.path().join(&m.name).display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster()))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=meshwasm-tests")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .env_remove("ETCDCTL_API");
        let log = self.dir.path().join(format!("{}.log", m.name));
        let child = ChildGuard::spawn_logging_to(&m.name, cmd, &log)?;
        *m.lock() = Some(child);
        Ok(())
    }

    fn wait_healthy(&self, i: usize, timeout: Duration) -> Result<()> {
        let m = &self.members[i];
        let healthy = process::wait_until(timeout, || {
            m.lock().as_ref().is_some_and(ChildGuard::is_running)
                && process::http_get(m.client, "/health")
                    .is_ok_and(|r| r.status == 200 && r.text().contains("true"))
        });
        if !healthy {
            if let Some(c) = m.lock().as_ref() {
                c.print_tail(50);
            }
            bail!("meshwasm tests: etcd member {} did not become healthy at {}", m.name, m.client);
        }
        Ok(())
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True for a cluster of no members (never, after [`EtcdCluster::start`]).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client addresses of all members, in member order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// True while member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].lock().as_ref().is_some_and(ChildGuard::is_running)
    }

    /// The index of the member that is leader, as the running members report it (None while there
    /// is none, e.g. during an election).
    pub fn leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            let status = if m.lock().as_ref().is_some_and(ChildGuard::is_running) {
                post(m.client, "/v3/maintenance/status", json!({}), Duration::from_millis(500)).ok()
            } else {
                None
            };
            let id = status.as_ref().and_then(|s| s["header"]["member_id"].as_str().map(str::to_owned));
            if leader.is_none() {
                leader = status.as_ref().and_then(|s| s["leader"].as_str().map(str::to_owned));
            }
            ids.push(id);
        }
        let leader = leader.filter(|l| l != "0")?;
        ids.iter().position(|id| id.as_deref() == Some(leader.as_str())).filter(|&i| self.is_running(i))
    }

    /// Kills member `i` (SIGKILL). Its data stays for [`EtcdCluster::restart`].
    pub fn kill(&self, i: usize) {
        if let Some(c) = self.members[i].lock().take() {
            c.kill();
        }
    }

    /// Starts member `i` again with its data and waits until it is healthy.
    pub fn restart(&self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_healthy(i, Duration::from_secs(30))
    }

    /// Writes a key through the first running member that accepts it; returns the revision.
    pub fn put(&self, key: &str, value: &str) -> Result<i64> {
        self.write("/v3/kv/put", json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)}))
    }

    /// Deletes a key through the first running member that accepts it; returns the revision.
    pub fn delete(&self, key: &str) -> Result<i64> {
        self.write("/v3/kv/deleterange", json!({"key": STANDARD.encode(key)}))
    }

    fn write(&self, path: &str, body: serde_json::Value) -> Result<i64> {
        let mut last = None;
        for (i, m) in self.members.iter().enumerate() {
            if !self.is_running(i) {
                continue;
            }
            match post(m.client, path, body.clone(), Duration::from_secs(3)).and_then(|v| revision(&v)) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("meshwasm tests: no etcd member is running")))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn post(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let body = serde_json::to_vec(&body)?;
    let r =
        process::http_request(addr, "POST", path, &[("content-type", "application/json")], &body, timeout)?;
    if r.status != 200 {
        bail!("etcd {path}: HTTP {}: {}", r.status, r.text());
    }
    r.json()
}
