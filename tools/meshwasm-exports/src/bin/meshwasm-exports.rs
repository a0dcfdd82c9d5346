//! `meshwasm-exports MODULE.wasm --keep LIST [--out OUT.wasm]`: removes the `proxy_on_*` exports that
//! LIST (a filter's `callbacks` file) does not name, in place unless `--out` is given. Run by
//! `make wasm` after the cargo build; running it again changes nothing.
//!
//! `meshwasm-exports MODULE.wasm` alone prints the module's exports.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: meshwasm-exports MODULE.wasm [--keep LIST [--out OUT.wasm]]";

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mut module: Option<PathBuf> = None;
    let mut keep: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--keep") => keep = Some(args.next().context(USAGE)?.into()),
            Some("--out") => out = Some(args.next().context(USAGE)?.into()),
            Some("-h" | "--help") => {
                println!("{USAGE}");
                return Ok(());
            }
            _ if module.is_none() => module = Some(a.into()),
            _ => bail!("{USAGE}"),
        }
    }
    let module = module.context(USAGE)?;
    let wasm = std::fs::read(&module).with_context(|| format!("reading {}", module.display()))?;
    let Some(keep) = keep else {
        for e in meshwasm_exports::exports(&wasm).with_context(|| module.display().to_string())? {
            println!("{e}");
        }
        return Ok(());
    };
    let list = std::fs::read_to_string(&keep).with_context(|| format!("reading {}", keep.display()))?;
    let list = meshwasm_exports::parse_list(&list).with_context(|| keep.display().to_string())?;
    let names: Vec<&str> = list.iter().map(String::as_str).collect();
    let trimmed = meshwasm_exports::keep_callbacks(&wasm, &names)
        .with_context(|| format!("{} with {}", module.display(), keep.display()))?;
    let out = out.unwrap_or_else(|| module.clone());
    // Written beside and renamed, so a hard link cargo keeps to the file is not changed under it.
    let tmp = out.with_extension("wasm.tmp");
    std::fs::write(&tmp, &trimmed.wasm).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("renaming to {}", out.display()))?;
    if !trimmed.removed.is_empty() {
        eprintln!(
            "meshwasm-exports: {}: removed {} unused callbacks ({})",
            out.display(),
            trimmed.removed.len(),
            trimmed.removed.join(", ")
        );
    }
    Ok(())
}
