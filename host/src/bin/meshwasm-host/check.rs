//! `meshwasm-host check`: would this module load in Envoy with this configuration?

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use meshwasm_host::{AbiVersion, BuildError, Host, HostOptions, LogEntry, LogLevel, Plugin, Proxy};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The filter module (.wasm).
    pub module: PathBuf,
    /// Plugin configuration file, passed byte for byte (Envoy's `configuration`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// VM configuration file, passed byte for byte (Envoy's `vm_config.configuration`).
    #[arg(long, value_name = "FILE")]
    pub vm_config: Option<PathBuf>,
    /// The plugin's root_id (which root context the module creates).
    #[arg(long, value_name = "ID", default_value = "")]
    pub root_id: String,
    /// The VM's vm_id.
    #[arg(long, value_name = "ID", default_value = "")]
    pub vm_id: String,
    /// An environment variable the VM sees (Envoy's `vm_config.environment_variables`), e.g. the secret a
    /// configuration names in `client_secret_env`; repeatable. Nothing else from the environment is visible.
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Exports a proxy-wasm module is looked at for, in the order they are reported.
const EXPORTS_OF_NOTE: &[&str] = &[
    "_initialize",
    "_start",
    "main",
    "__main_void",
    "proxy_on_memory_allocate",
    "malloc",
    "proxy_on_context_create",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_tick",
    "proxy_on_queue_ready",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_request_trailers",
    "proxy_on_response_headers",
    "proxy_on_response_body",
    "proxy_on_response_trailers",
    "proxy_on_http_call_response",
    "proxy_on_foreign_function",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_done",
    "proxy_on_log",
    "proxy_on_delete",
];

pub fn run(args: &CheckArgs) -> ExitCode {
    match check(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("result: FAIL");
            eprintln!("error: {}", one_line(&e, &args.module));
            ExitCode::FAILURE
        }
    }
}

/// One line that names the module once: the library's own errors already say
/// `meshwasm-host: module <path>: <cause>`; others get the module prepended.
fn one_line(e: &anyhow::Error, module: &Path) -> String {
    let text = format!("{e:#}").split_whitespace().collect::<Vec<_>>().join(" ");
    let text = text.strip_prefix("meshwasm-host: ").unwrap_or(&text).to_string();
    let name = module.display().to_string();
    if text.contains(&name) { text } else { format!("module {name}: {text}") }
}

fn read_optional(path: Option<&Path>, what: &str) -> anyhow::Result<Vec<u8>> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => std::fs::read(p).with_context(|| format!("cannot read {what} file {}", p.display())),
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let config = read_optional(args.config.as_deref(), "--config")?;
    let vm_config = read_optional(args.vm_config.as_deref(), "--vm-config")?;
    let host = Host::new(HostOptions::default())?;

    // Static checks: what Envoy looks at before it starts a VM.
    let report = host.inspect(&args.module)?;
    println!("module: {}", args.module.display());
    let abi = match &report.abi {
        Some(AbiVersion::V0_2_1) => "0.2.1".to_string(),
        Some(AbiVersion::V0_2_0) => "0.2.0".to_string(),
        Some(AbiVersion::Unsupported(v)) => format!("{v} (unsupported)"),
        None => "none (no proxy_abi_version_* export)".to_string(),
    };
    println!("abi: {abi}");
    let noted: Vec<&str> =
        EXPORTS_OF_NOTE.iter().copied().filter(|n| report.exports.iter().any(|e| e == n)).collect();
    println!("exports: {}", if noted.is_empty() { "none of note".to_string() } else { noted.join(" ") });
    if report.missing_imports.is_empty() {
        println!("imports the host does not provide: none");
    } else {
        println!("imports the host does not provide: {}", report.missing_imports.join(" "));
    }
    if let Some(problem) = report.problem() {
        bail!("module {}: {problem}", args.module.display());
    }

    // Dynamic checks: start a VM as Envoy would, with this configuration.
    let module = host.load(&args.module)?;
    let mut plugin = Plugin::new(module)
        .name(&plugin_name(args))
        .root_id(&args.root_id)
        .vm_id(&args.vm_id)
        .config(&config)
        .vm_config(&vm_config);
    for (key, value) in &args.env {
        plugin = plugin.env(key, value);
    }
    println!(
        "configuration: {} bytes, vm configuration: {} bytes, root_id {:?}, vm_id {:?}",
        config.len(),
        vm_config.len(),
        args.root_id,
        args.vm_id
    );
    let proxy = match Proxy::builder(&host).log_level(LogLevel::Trace).plugin(plugin).build() {
        Ok(p) => p,
        Err(e) => {
            // The guest's log up to the failure (e.g. why on_configure rejected the configuration).
            if let Some(b) = e.downcast_ref::<BuildError>() {
                print_logs(&b.logs);
            }
            return Err(match schema_of(&args.module) {
                Some(schema) => anyhow::anyhow!("{e:#} (the configuration's JSON Schema: {schema})"),
                None => e,
            });
        }
    };
    print_logs(&proxy.logs());
    println!("vm_start: ok");
    println!("configure: ok");
    println!("result: OK, {} would load in Envoy", args.module.display());
    Ok(())
}

/// The schema file of a meshwasm filter's configuration, by the module's file name
/// (`meshwasm_jwt_auth.wasm` → `schemas/meshwasm_jwt_auth.schema.json` in the meshwasm repository).
fn schema_of(module: &Path) -> Option<String> {
    const FILTERS: [&str; 5] = [
        "meshwasm_jwt_auth",
        "meshwasm_token_injector",
        "meshwasm_discovery",
        "meshwasm_balancer",
        "meshwasm_authz",
    ];
    let stem = module.file_stem()?.to_str()?;
    FILTERS.contains(&stem).then(|| format!("schemas/{stem}.schema.json"))
}

fn print_logs(lines: &[LogEntry]) {
    for line in lines {
        println!(
            "log: [{}] {}: {}",
            format!("{:?}", line.level).to_ascii_lowercase(),
            line.plugin,
            line.message
        );
    }
}

fn plugin_name(args: &CheckArgs) -> String {
    args.module.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into())
}
