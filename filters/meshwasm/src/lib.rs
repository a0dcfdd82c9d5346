//! `meshwasm.wasm`: every meshwasm filter in one module. Envoy's `root_id` selects the filter of each
//! plugin, so filters that share one `vm_id` and this module run in one VM per worker instead of one VM
//! per filter and worker.
//!
//! [`select`] maps a root_id onto a filter (pure, tested natively); `glue` (wasm32 only) is the module's
//! entry point: a root context that reads `plugin_root_id`, builds that filter's root context and hands
//! every callback to it. HTTP contexts are the filter's own, so requests cost what they cost in the
//! filter's own `.wasm`, except for the callbacks the union of all filters exports (see `callbacks`).

mod select;

pub use select::{Filter, ROOT_IDS, select};

#[cfg(target_arch = "wasm32")]
mod glue;

#[cfg(test)]
mod tests {
    /// The features of `key = [..]` on the line that starts with `line_start` in `toml`.
    fn features(toml: &str, line_start: &str, key: &str) -> Vec<String> {
        let line = toml.lines().find(|l| l.starts_with(line_start)).unwrap_or_default();
        let Some((_, list)) = line.split_once(&format!("{key} = [")) else { return Vec::new() };
        let list = list.split(']').next().unwrap_or_default();
        let mut out: Vec<String> = list
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .filter(|f| !f.is_empty())
            .collect();
        out.sort();
        out
    }

    /// Each filter runs here with the default features of its own .wasm, less `standalone`.
    #[test]
    fn defaults_match_the_filters() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let ours = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        for filter in ["jwt-auth", "token-injector", "discovery", "balancer", "authz"] {
            let theirs = std::fs::read_to_string(dir.join("..").join(filter).join("Cargo.toml")).unwrap();
            let mut defaults = features(&theirs, "default = ", "default");
            assert!(defaults.contains(&"standalone".to_owned()), "{filter}: no `standalone` default");
            defaults.retain(|f| f != "standalone");
            let dep = format!("meshwasm-{filter} = ");
            assert!(ours.lines().any(|l| l.starts_with(&dep)), "{filter} is not a dependency");
            assert_eq!(features(&ours, &dep, "features"), defaults, "meshwasm-{filter}'s features");
        }
    }
}
