//! `meshwasm-host`: check a proxy-wasm module the way Envoy would load it, or run filter chains in a
//! small HTTP/1.1 reverse proxy — without Envoy.
//!
//! ```text
//! meshwasm-host check target/wasm32-wasip1/wasm/meshwasm_noop.wasm --config noop.json
//! meshwasm-host serve examples/serve/serve.yaml
//! ```

mod access_log;
mod check;
mod serve;
mod upstream;

// The configuration parser lives in the library (so the fuzz target can call it); the binary's
// modules keep naming it `crate::config` and `crate::tls`.
use meshwasm_host::serve_config as config;
use meshwasm_host::serve_config::tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "meshwasm-host",
    version,
    about = "Run proxy-wasm filters (ABI 0.2.1) the way Envoy does, without Envoy",
    long_about = "Run proxy-wasm filters (ABI 0.2.1) the way Envoy does, without Envoy.\n\n\
        `check` tells whether a .wasm module would load in Envoy with a given configuration;\n\
        `serve` runs filter chains in a small HTTP/1.1 reverse proxy so they can be tried end to end.",
    after_help = "Examples:\n  \
        meshwasm-host check target/wasm32-wasip1/wasm/meshwasm_noop.wasm\n  \
        meshwasm-host check filter.wasm --config plugin.json --root-id my_root\n  \
        meshwasm-host serve examples/serve/serve.yaml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load a module as Envoy would: ABI, exports, missing imports, vm_start and on_configure.
    ///
    /// Prints the module's ABI version, its exports of note and any imports this host (like Envoy)
    /// does not provide, then starts a VM, runs proxy_on_vm_start and proxy_on_configure with the
    /// given configuration and prints the filter's own log lines. Exits 0 when the module would load
    /// in Envoy, 1 with one error line naming the module and the cause otherwise.
    #[command(
        after_help = "Exit status: 0 the module would load, 1 it would not (the last line says why), 2 usage error."
    )]
    Check(check::CheckArgs),
    /// Run a reverse proxy that passes each request through a filter chain.
    ///
    /// The YAML or JSON config lists listeners (address: a bare port binds 127.0.0.1, any other
    /// address is written out and warned about; filters in order; route to a cluster) and
    /// clusters (`static` endpoint lists balanced round robin, or `original_dst` clusters that take
    /// the upstream from filter state a filter set, or from a request header if `header` is given). Clusters are also the
    /// targets of the filters' http calls. See examples/serve/README.md for the full format.
    /// One access log line per request goes to stderr; Ctrl-C or SIGTERM stops the proxy.
    #[command(after_long_help = "Example config (paths relative to the config file):\n  \
        listeners:\n    \
          - address: 127.0.0.1:10000\n      \
            filters:\n        \
              - {name: noop, wasm: target/wasm32-wasip1/wasm/meshwasm_noop.wasm, config: {}}\n      \
            route: {cluster: backend}\n  \
        clusters:\n    \
          - {name: backend, type: static, endpoints: [127.0.0.1:8081]}\n    \
          - {name: picked, type: original_dst}")]
    Serve {
        /// The config file (YAML or JSON).
        config: PathBuf,
        /// Check the config and start every filter's VMs (vm_start, configure), then exit without
        /// listening: 0 when serve would start, 1 with the reason otherwise.
        #[arg(long)]
        validate: bool,
    },
    /// Print the JSON Schema of serve's configuration file (as in schemas/serve.schema.json).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Command::Serve { config, validate } => match serve::run(&config, validate) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshwasm-host serve: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
