//! The wasmtime engine, the hostcall linker and the module cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use wasmtime::{Engine, InstancePre, Linker};

use crate::vm::VmState;

/// Options for a [`Host`].
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// Directory for wasmtime's on-disk cache of compiled modules (None: in-memory cache only).
    /// A second process loading the same .wasm then skips compilation.
    pub cache_dir: Option<PathBuf>,
    /// Real time one callback may run before it is interrupted (a guest looping forever). Default 1 s.
    pub callback_deadline: Duration,
    /// Most linear memory (and table growth is bounded alike) one VM may have, in bytes. A guest
    /// growing past it gets `memory.grow` = -1, so its allocator fails and it traps; the stream fails
    /// and the VM is reloaded as after any trap. Default 256 MiB.
    pub max_memory_bytes: usize,
    /// Where WASI `random_get` takes its bytes from. Default [`RandomSource::Os`], as Envoy (BoringSSL's
    /// `RAND_bytes`): filters seed hash keys and draw ids and nonces from it.
    pub random: RandomSource,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            cache_dir: None,
            callback_deadline: Duration::from_secs(1),
            max_memory_bytes: 256 << 20,
            random: RandomSource::Os,
        }
    }
}

/// The source of WASI `random_get` bytes ([`HostOptions::random`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RandomSource {
    /// The operating system's CSPRNG (`getrandom`): unpredictable, different in every VM and process.
    #[default]
    Os,
    /// A deterministic generator (xorshift64*) seeded from this value, the worker index and the VM index:
    /// the same bytes on every run, for tests that need repeatable randomness. Predictable: never serve
    /// real traffic with it.
    Seeded(u64),
}

/// How often the epoch ticker thread bumps the engine epoch; the callback deadline is measured in these.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The host: a wasmtime [`Engine`] configured for proxy-wasm, the linker with every hostcall (`env`,
/// `wasi_snapshot_preview1`, `wasi_unstable`) and a cache of compiled modules. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Arc<HostInner>,
}

pub(crate) struct HostInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<VmState>,
    pub(crate) options: HostOptions,
    cache: Mutex<HashMap<[u8; 32], Module>>,
}

impl Host {
    /// Creates an engine (epoch interruption on, optional on-disk cache) and the linker, and starts the
    /// epoch ticker thread (it stops when the last clone of the host is dropped).
    pub fn new(options: HostOptions) -> Result<Self> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        if let Some(dir) = &options.cache_dir {
            let mut cc = wasmtime::CacheConfig::new();
            cc.with_directory(dir);
            let cache = wasmtime::Cache::new(cc)
                .map_err(|e| anyhow!("meshwasm-host: cache dir {}: {}", dir.display(), one_line_w(&e)))?;
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config)
            .map_err(|e| anyhow!("meshwasm-host: creating the wasmtime engine: {}", one_line_w(&e)))?;
        let mut linker = Linker::new(&engine);
        crate::abi::add_to_linker(&mut linker)
            .map_err(|e| anyhow!("meshwasm-host: hostcalls: {}", one_line_w(&e)))?;
        crate::wasi::add_to_linker(&mut linker)
            .map_err(|e| anyhow!("meshwasm-host: WASI: {}", one_line_w(&e)))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("meshwasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| anyhow!("meshwasm-host: starting the epoch thread: {e}"))?;
        Ok(Self { inner: Arc::new(HostInner { engine, linker, options, cache: Mutex::new(HashMap::new()) }) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The options this host was built with.
    pub fn options(&self) -> &HostOptions {
        &self.inner.options
    }

    /// Loads and compiles a module from a `.wasm` (or `.wat`) file, once per content: loading the same
    /// bytes again returns the cached [`Module`]. Errors are one line naming the file and the cause
    /// (malformed, not proxy-wasm, unsupported ABI, missing exports, imports the host lacks).
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Module> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("meshwasm-host: module {}: cannot read: {e}", path.display()))?;
        self.load_bytes(&path.display().to_string(), &bytes)
    }

    /// Like [`Host::load`] from bytes (binary wasm or WAT text); `name` is used in errors and logs.
    pub fn load_bytes(&self, name: &str, bytes: &[u8]) -> Result<Module> {
        let binary = to_binary(name, bytes)?;
        let key = sha256(&binary);
        if let Some(m) = lock(&self.inner.cache).get(&key) {
            return Ok(m.clone());
        }
        let module = compile(self, name, &binary)?;
        let report = report_for(self, name, &module);
        if let Some(problem) = report.problem() {
            bail!("meshwasm-host: module {name}: {problem}");
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow!("meshwasm-host: module {name}: cannot link: {}", one_line_w(&e)))?;
        let m = Module { inner: Arc::new(ModuleInner { name: name.to_string(), key, pre, report }) };
        lock(&self.inner.cache).insert(key, m.clone());
        Ok(m)
    }

    /// Reports a module's ABI, exports and the imports this host does not provide, without failing on
    /// them (for `meshwasm-host check`). Fails only if the file cannot be read or parsed.
    pub fn inspect(&self, path: impl AsRef<Path>) -> Result<ModuleReport> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow!("meshwasm-host: module {}: cannot read: {e}", path.display()))?;
        self.inspect_bytes(&path.display().to_string(), &bytes)
    }

    /// Like [`Host::inspect`] from bytes.
    pub fn inspect_bytes(&self, name: &str, bytes: &[u8]) -> Result<ModuleReport> {
        let binary = to_binary(name, bytes)?;
        inspect_binary(self, name, &binary)
    }
}

/// The proxy-wasm ABI a module declares through its `proxy_abi_version_*` export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_2_1` (proxy-wasm Rust SDK ≥ 0.2.0).
    V0_2_1,
    /// `proxy_abi_version_0_2_0` (served with the same hostcalls).
    V0_2_0,
    /// Anything else, e.g. `0_1_0`: not supported by this host.
    Unsupported(String),
}

/// What [`Host::inspect`] found in a module.
#[derive(Clone, Debug)]
pub struct ModuleReport {
    /// The module name (path) used in messages.
    pub name: String,
    /// The declared ABI, or None when the module has no `proxy_abi_version_*` export (not proxy-wasm).
    pub abi: Option<AbiVersion>,
    /// Imports (`module::name`) the host does not provide.
    pub missing_imports: Vec<String>,
    /// Required exports that are missing (`memory`, `proxy_on_memory_allocate`/`malloc`, `proxy_on_context_create`).
    pub missing_exports: Vec<String>,
    /// Every export name.
    pub exports: Vec<String>,
}

impl ModuleReport {
    /// The first reason this module cannot run, as a phrase, or None if it can.
    pub fn problem(&self) -> Option<String> {
        match &self.abi {
            None => return Some("not a proxy-wasm module (no proxy_abi_version_* export)".into()),
            Some(AbiVersion::Unsupported(v)) => {
                return Some(format!("unsupported proxy-wasm ABI {v} (this host speaks 0.2.1 and 0.2.0)"));
            }
            _ => {}
        }
        if !self.missing_exports.is_empty() {
            return Some(format!("missing required exports: {}", self.missing_exports.join(", ")));
        }
        if !self.missing_imports.is_empty() {
            return Some(format!("imports the host does not provide: {}", self.missing_imports.join(", ")));
        }
        None
    }
}

/// A compiled proxy-wasm module, ready to instantiate (wasmtime `InstancePre`). Cheap to clone.
#[derive(Clone)]
pub struct Module {
    pub(crate) inner: Arc<ModuleInner>,
}

pub(crate) struct ModuleInner {
    pub(crate) name: String,
    pub(crate) key: [u8; 32],
    pub(crate) pre: InstancePre<VmState>,
    pub(crate) report: ModuleReport,
}

impl Module {
    /// Name (path) used in messages.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The declared ABI.
    pub fn abi(&self) -> Option<&AbiVersion> {
        self.inner.report.abi.as_ref()
    }

    /// The inspection report.
    pub fn report(&self) -> &ModuleReport {
        &self.inner.report
    }

    /// Whether two handles are the same compiled module (same bytes): plugins with the same vm_id and
    /// the same module share one VM per worker, as in Envoy.
    pub fn same_as(&self, other: &Module) -> bool {
        self.inner.key == other.inner.key
    }
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module").field("name", &self.inner.name).field("abi", &self.inner.report.abi).finish()
    }
}

fn to_binary(name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| {
        anyhow!("meshwasm-host: module {name}: malformed: not a wasm binary (bad magic) nor WAT text")
    })?;
    wat::parse_str(text).map_err(|e| {
        anyhow!(
            "meshwasm-host: module {name}: malformed: not a wasm binary and not valid WAT: {}",
            e.to_string().replace('\n', " ")
        )
    })
}

fn compile(host: &Host, name: &str, binary: &[u8]) -> Result<wasmtime::Module> {
    wasmtime::Module::new(&host.inner.engine, binary)
        .map_err(|e| anyhow!("meshwasm-host: module {name}: malformed: {}", one_line_w(&e)))
}

fn inspect_binary(host: &Host, name: &str, binary: &[u8]) -> Result<ModuleReport> {
    let module = compile(host, name, binary)?;
    Ok(report_for(host, name, &module))
}

fn report_for(host: &Host, name: &str, module: &wasmtime::Module) -> ModuleReport {
    let exports: Vec<String> = module.exports().map(|e| e.name().to_string()).collect();
    let abi = exports.iter().find_map(|e| {
        e.strip_prefix("proxy_abi_version_").map(|v| match v {
            "0_2_1" => AbiVersion::V0_2_1,
            "0_2_0" => AbiVersion::V0_2_0,
            other => AbiVersion::Unsupported(other.replace('_', ".")),
        })
    });
    let mut missing_exports = Vec::new();
    let has = |n: &str| exports.iter().any(|e| e == n);
    if !has("memory") {
        missing_exports.push("memory".to_string());
    }
    if !has("proxy_on_memory_allocate") && !has("malloc") {
        missing_exports.push("proxy_on_memory_allocate (or malloc)".to_string());
    }
    if !has("proxy_on_context_create") {
        missing_exports.push("proxy_on_context_create".to_string());
    }
    let mut missing_imports = Vec::new();
    let mut store = wasmtime::Store::new(&host.inner.engine, VmState::placeholder());
    for imp in module.imports() {
        let provided = host.inner.linker.get(&mut store, imp.module(), imp.name()).is_ok();
        if !provided {
            missing_imports.push(format!("{}::{}", imp.module(), imp.name()));
        }
    }
    ModuleReport { name: name.to_string(), abi, missing_imports, missing_exports, exports }
}

pub(crate) fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// Formats a wasmtime error chain on one line (without the wasm backtrace).
pub(crate) fn one_line_w(e: &wasmtime::Error) -> String {
    crate::vm::trap_text(e)
}

/// Locks a mutex, recovering from poisoning (a panicking test thread must not break others).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
