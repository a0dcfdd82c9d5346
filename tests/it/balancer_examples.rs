//! No example we ship lets a client steer an ORIGINAL_DST cluster: the Envoy examples' ORIGINAL_DST
//! clusters read no request header (`use_http_header` absent or false), and the `serve` examples whose
//! listeners run the balancer route to `original_dst` clusters without a `header`.

use std::path::{Path, PathBuf};

use meshwasm_tests::artifacts;
use serde_yaml::Value;

/// Every `.yaml` file under `examples/`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml") {
            out.push(p);
        }
    }
}

/// Every mapping in the document, depth first.
fn mappings<'a>(v: &'a Value, out: &mut Vec<&'a serde_yaml::Mapping>) {
    match v {
        Value::Mapping(m) => {
            out.push(m);
            m.values().for_each(|x| mappings(x, out));
        }
        Value::Sequence(s) => s.iter().for_each(|x| mappings(x, out)),
        _ => {}
    }
}

fn str_of<'a>(m: &'a serde_yaml::Mapping, k: &str) -> Option<&'a str> {
    m.get(k).and_then(Value::as_str)
}

#[test]
fn no_example_original_dst_cluster_reads_a_client_header() {
    let mut files = Vec::new();
    yaml_files(&artifacts::workspace_root().join("examples"), &mut files);
    let (mut envoy_clusters, mut serve_clusters) = (0, 0);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        // Multi-document files (Kubernetes manifests) are skipped: they hold no Envoy clusters.
        let Ok(doc) = serde_yaml::from_str::<Value>(&text) else { continue };
        let mut all = Vec::new();
        mappings(&doc, &mut all);
        for m in all {
            if str_of(m, "type") == Some("ORIGINAL_DST") {
                envoy_clusters += 1;
                let header = m
                    .get("original_dst_lb_config")
                    .and_then(|c| c.get("use_http_header"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                assert!(
                    !header,
                    "{}: ORIGINAL_DST cluster {:?} reads a request header",
                    f.display(),
                    m.get("name")
                );
            }
        }
        // A `serve` config: a balancer in a listener routing to an `original_dst` cluster with a header.
        let (Some(listeners), Some(clusters)) = (doc.get("listeners"), doc.get("clusters")) else { continue };
        for l in listeners.as_sequence().into_iter().flatten() {
            let runs_balancer =
                l.get("filters").and_then(Value::as_sequence).into_iter().flatten().any(|fl| {
                    fl.get("wasm").and_then(Value::as_str).is_some_and(|w| w.contains("meshwasm_balancer"))
                });
            let Some(target) = l.get("route").and_then(|r| r.get("cluster")).and_then(Value::as_str) else {
                continue;
            };
            for c in clusters.as_sequence().into_iter().flatten() {
                if c.get("name").and_then(Value::as_str) == Some(target)
                    && c.get("type").and_then(Value::as_str) == Some("original_dst")
                    && runs_balancer
                {
                    serve_clusters += 1;
                    assert!(
                        c.get("header").is_none(),
                        "{}: cluster {target} reads a request header",
                        f.display()
                    );
                }
            }
        }
    }
    assert!(envoy_clusters >= 1, "examples/balancer/envoy.yaml has an ORIGINAL_DST cluster");
    assert!(
        serve_clusters >= 1,
        "examples/serve/balancer.yaml routes the balancer to an original_dst cluster"
    );
}
