//! `meshwasm-host serve`'s configuration file ([`meshwasm_host::serve_config`]): YAML or JSON text.
//!
//! The parser resolves the paths it names (filter modules, `config_file`, TLS PEM files) against the
//! directory of examples/serve/, and reads them. Inputs naming a device or a kernel file system
//! (`dev`, `proc`, `sys` anywhere) or holding a backslash (a YAML escape could spell those) are
//! skipped: reading `/dev/zero` or a FIFO would hang the fuzzer, and is the operator's own choice.
//! A configuration that loads must hold its documented invariants.

use std::collections::HashSet;
use std::path::PathBuf;

use meshwasm_host::serve_config::{ClusterKind, ServeConfig};

fn base() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/serve")
}

/// Whether the input may name a file that blocks or never ends when read.
fn names_special_files(data: &[u8]) -> bool {
    let lower = data.to_ascii_lowercase();
    lower.contains(&b'\\')
        || [&b"dev"[..], b"proc", b"sys"].iter().any(|n| lower.windows(n.len()).any(|w| w == *n))
}

/// The target.
pub fn serve_config(data: &[u8]) {
    if names_special_files(data) {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    match ServeConfig::parse(text, &base()) {
        Err(e) => assert!(!format!("{e:#}").trim().is_empty(), "an error without a message"),
        Ok(c) => {
            assert!((1..=64).contains(&c.workers), "workers {}", c.workers);
            assert!(!c.listeners.is_empty(), "no listener");
            let names: HashSet<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names.len(), c.clusters.len(), "duplicate cluster names");
            for cl in &c.clusters {
                assert!(!cl.name.is_empty());
                assert!(!cl.connect_timeout.is_zero());
                match &cl.kind {
                    ClusterKind::Static(eps) => {
                        assert!(!eps.is_empty(), "a static cluster without endpoints")
                    }
                    ClusterKind::OriginalDst { header: Some(h) } => {
                        assert!(!h.is_empty() && h.bytes().all(|b| !b.is_ascii_uppercase()), "header `{h}`")
                    }
                    ClusterKind::OriginalDst { header: None } => {}
                }
            }
            let mut addresses = HashSet::new();
            for l in &c.listeners {
                assert!(
                    names.contains(l.route_cluster.as_str()),
                    "route to unknown cluster {}",
                    l.route_cluster
                );
                assert!(l.address.port() == 0 || addresses.insert(l.address), "address {} twice", l.address);
                assert!((1..=1 << 20).contains(&l.max_connections));
                assert!(!l.route_timeout.is_zero() && !l.stream_idle_timeout.is_zero());
                assert!(!l.request_body_timeout.is_zero());
                for f in &l.filters {
                    assert!(!f.name.is_empty());
                    assert!(f.wasm.is_file(), "{} is not a file", f.wasm.display());
                }
            }
        }
    }
}
