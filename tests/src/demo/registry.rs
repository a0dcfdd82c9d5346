//! Where frontend's discovery filter finds the `orders` instances: a JSON file served over HTTP (the
//! default), real etcd, or real unbound serving SRV records over DNS-over-HTTPS (h2c).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use meshwasm_tests::etcd::Etcd;
use meshwasm_tests::unbound::{DOH_PATH, Unbound};
use serde_json::json;

const ETCD_PREFIX: &str = "/services/orders/";
const DNS_ZONE: &str = "shop.test.";
/// The SRV name of the orders service (RFC 2782 `_service._proto.name`).
const SRV_NAME: &str = "_http._tcp.orders.shop.test";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegistryKind {
    File,
    Etcd,
    Dns,
}

impl RegistryKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "file" | "" => Ok(Self::File),
            "etcd" => Ok(Self::Etcd),
            "dns" => Ok(Self::Dns),
            other => bail!("unknown registry `{other}`: use `file`, `etcd` or `dns`"),
        }
    }
}

/// A running registry.
pub enum Registry {
    File(FileRegistry),
    Etcd(Etcd),
    Dns(Unbound),
}

impl Registry {
    pub fn start(kind: RegistryKind) -> Result<Self> {
        Ok(match kind {
            RegistryKind::File => Registry::File(FileRegistry::start()?),
            RegistryKind::Etcd => Registry::Etcd(Etcd::start().context("starting etcd")?),
            // An empty static zone: NXDOMAIN until the instances are registered.
            RegistryKind::Dns => Registry::Dns(Unbound::start(DNS_ZONE, &[]).context("starting unbound")?),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Registry::File(f) => f.addr,
            Registry::Etcd(e) => e.addr(),
            Registry::Dns(u) => u.addr(),
        }
    }

    /// unbound speaks DoH over cleartext HTTP/2 only.
    pub fn http2(&self) -> bool {
        matches!(self, Registry::Dns(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Registry::File(f) => {
                format!("file {} served on http://{}{}", f.path.display(), f.addr, FileRegistry::PATH)
            }
            Registry::Etcd(e) => format!("etcd on {} (keys under {ETCD_PREFIX})", e.addr()),
            Registry::Dns(u) => {
                format!("unbound, DNS over HTTPS (h2c) on http://{}{DOH_PATH}, SRV {SRV_NAME}", u.addr())
            }
        }
    }

    /// Where a registration goes, for the transcript.
    pub fn noun(&self) -> &'static str {
        match self {
            Registry::File(_) => "the registry file",
            Registry::Etcd(_) => "etcd",
            Registry::Dns(_) => "DNS (an SRV record and an A record added to unbound's local zone)",
        }
    }

    /// The discovery filter's `source` for this registry (its cluster is `registry`).
    pub fn source(&self) -> serde_json::Value {
        match self {
            Registry::File(_) => json!({"file": {"cluster": "registry", "path": FileRegistry::PATH}}),
            Registry::Etcd(_) => json!({"etcd": {"cluster": "registry", "prefix": ETCD_PREFIX}}),
            // The records have a TTL of 1 s: a new instance is seen within about a second.
            Registry::Dns(_) => {
                json!({"dns": {"cluster": "registry", "name": SRV_NAME, "type": "SRV", "min_ttl": "1s", "max_ttl": "2s"}})
            }
        }
    }

    /// Registers instance `name` (e.g. `orders-1`), reachable at `addr` (its sidecar's inbound listener).
    pub fn register(&self, name: &str, addr: SocketAddr) -> Result<()> {
        let entry = json!({"address": addr.to_string(), "metadata": {"instance": name}});
        match self {
            Registry::File(f) => f.add(entry),
            Registry::Etcd(e) => {
                e.put(&format!("{ETCD_PREFIX}{name}"), &entry.to_string())?;
                Ok(())
            }
            Registry::Dns(u) => {
                // unbound-control local_data adds the record to the running server (no reload); a
                // second SRV record of the same name joins the existing RRset.
                let target = format!("{name}.{DNS_ZONE}");
                u.add_record(&format!("{target} 1 IN A {}", addr.ip()))?;
                u.add_record(&format!("{SRV_NAME}. 1 IN SRV 10 1 {} {target}", addr.port()))
            }
        }
    }
}

/// A registry that is just a JSON file (`{"endpoints": [...]}`), served over HTTP so that the discovery
/// filter — which cannot open files inside Envoy — can poll it.
pub struct FileRegistry {
    addr: SocketAddr,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl FileRegistry {
    const PATH: &'static str = "/registry.json";

    fn start() -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("meshwasm-demo-registry-").tempdir()?;
        let path = dir.path().join("registry.json");
        std::fs::write(&path, json!({"endpoints": []}).to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let served = path.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = serve_file(conn, &served);
            }
        });
        Ok(Self { addr, path, _dir: dir })
    }

    fn add(&self, entry: serde_json::Value) -> Result<()> {
        let mut doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.path)?)?;
        doc["endpoints"].as_array_mut().context("registry file has no endpoints array")?.push(entry);
        // Write then rename, so a poll never reads a half-written file.
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
        std::fs::rename(tmp, &self.path)?;
        Ok(())
    }
}

fn serve_file(conn: std::net::TcpStream, path: &Path) -> Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    // Request line and headers; the body of a GET is empty.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let body = std::fs::read(path)?;
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    Ok(())
}
