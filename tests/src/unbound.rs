//! Real unbound (Debian `unbound` 1.17) serving DNS over HTTPS in cleartext HTTP/2 (h2c, prior
//! knowledge) on a free loopback port, with local zone data from the test. Records can be changed
//! while it runs through `unbound-control` over a Unix socket in the temporary directory.
//!
//! ```no_run
//! use meshwasm_tests::unbound::Unbound;
//! let dns = Unbound::start("svc.test.", &[
//!     "_http._tcp.api.svc.test. 30 IN SRV 10 5 8080 node1.svc.test.",
//!     "node1.svc.test. 30 IN A 127.0.0.11",
//! ]).unwrap();
//! dns.add_record("node2.svc.test. 30 IN A 127.0.0.12").unwrap();
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::{self, ChildGuard};

/// The path unbound serves DoH on.
pub const DOH_PATH: &str = "/dns-query";

/// A running unbound. Killed on drop.
pub struct Unbound {
    child: ChildGuard,
    addr: SocketAddr,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\\\""))
}

impl Unbound {
    /// Starts unbound with `zone` as a static local zone holding `records` (zone-file syntax).
    pub fn start(zone: &str, records: &[&str]) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(zone, records) {
                Ok(u) => return Ok(u),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("unbound did not start")))
    }

    fn try_start(zone: &str, records: &[&str]) -> Result<Self> {
        let bin = Path::new("/usr/sbin/unbound");
        if !bin.is_file() {
            bail!(
                "meshwasm tests: /usr/sbin/unbound is missing: install the Debian package unbound (make setup)"
            );
        }
        let dir = tempfile::Builder::new().prefix("meshwasm-unbound-").tempdir()?;
        let port = process::free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  https-port: {port}\n  http-notls-downstream: yes\n  \
             http-endpoint: \"{DOH_PATH}\"\n  do-daemonize: no\n  chroot: \"\"\n  username: \"\"\n  directory: \"{d}\"\n  \
             pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  do-ip6: no\n  \
             do-udp: no\n  num-threads: 1\n  module-config: \"iterator\"\n  \
             local-zone: {} static\n",
            quote(zone)
        );
        for r in records {
            conf.push_str(&format!("  local-data: {}\n", quote(r)));
        }
        conf.push_str(&format!(
            "remote-control:\n  control-enable: yes\n  control-interface: \"{d}/control.sock\"\n  control-use-cert: no\n"
        ));
        let conf_path = dir.path().join("unbound.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-d").arg("-c").arg(&conf_path);
        let child = ChildGuard::spawn_logging_to("unbound", cmd, &dir.path().join("unbound.log"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if !process::wait_until(Duration::from_secs(10), || child.is_running() && process::port_open(addr)) {
            child.print_tail(50);
            bail!("meshwasm tests: unbound did not listen on {addr}");
        }
        Ok(Self { child, addr, conf: conf_path, _dir: dir })
    }

    /// Where DoH is served (h2c, path [`DOH_PATH`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn control(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("/usr/sbin/unbound-control")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .output()
            .context("running unbound-control")?;
        if !out.status.success() {
            bail!(
                "unbound-control {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Adds a record (zone-file syntax) to the running server.
    pub fn add_record(&self, record: &str) -> Result<()> {
        self.control(&["local_data", record])
    }

    /// Removes all records of `name`.
    pub fn remove_name(&self, name: &str) -> Result<()> {
        self.control(&["local_data_remove", name])
    }

    /// Kills unbound (DNS down).
    pub fn stop(&self) {
        self.child.kill();
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        self.child.logs()
    }
}
