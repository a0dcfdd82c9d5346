//! Artifact sizes: every `.wasm` in the artifact directory, raw and after `wasm-opt -Oz --strip-debug`,
//! against the size targets, plus the linear memory each module declares.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Feature flags Rust's wasm32-wasip1 output uses; wasm-opt 108 needs them spelled out.
pub const WASM_OPT_FEATURES: [&str; 4] = [
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-nontrapping-float-to-int",
    "--enable-mutable-globals",
];

/// One artifact's sizes.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSize {
    pub file: String,
    pub raw_bytes: u64,
    /// After `wasm-opt -Oz --strip-debug`, or why that failed.
    pub opt_bytes: Result<u64, String>,
    /// The issue's size target in bytes.
    pub target_bytes: u64,
    /// Initial linear memory the module declares, in 64 KiB pages (None if imported or unreadable).
    pub initial_pages: Option<u64>,
}

impl ArtifactSize {
    pub fn within_target(&self) -> bool {
        self.raw_bytes <= self.target_bytes || matches!(self.opt_bytes, Ok(b) if b <= self.target_bytes)
    }
}

/// Target: jwt-auth ≤ 500 KB, every other filter ≤ 200 KB (KB = 1000 bytes).
pub fn target_for(file: &str) -> u64 {
    if file.contains("jwt_auth") { 500_000 } else { 200_000 }
}

/// Measures every `.wasm` in `dir`, writing optimized copies into `scratch`.
pub fn measure(dir: &Path, scratch: &Path) -> Result<Vec<ArtifactSize>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("meshwasm bench: reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = std::fs::read(&path)?;
        let opt_path = scratch.join(format!("opt-{file}"));
        let opt_bytes = wasm_opt(&path, &opt_path).map_err(|e| format!("{e:#}"));
        out.push(ArtifactSize {
            target_bytes: target_for(&file),
            raw_bytes: bytes.len() as u64,
            opt_bytes,
            initial_pages: initial_memory_pages(&bytes),
            file,
        });
    }
    Ok(out)
}

fn wasm_opt(input: &Path, output: &Path) -> Result<u64> {
    let out = Command::new("wasm-opt")
        .args(["-Oz", "--strip-debug"])
        .args(WASM_OPT_FEATURES)
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .context("running wasm-opt (binaryen; `make setup-system`)")?;
    if !out.status.success() {
        bail!("wasm-opt failed: {}", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or_default());
    }
    Ok(std::fs::metadata(output)?.len())
}

fn leb_u64(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut result = 0u64;
    let mut shift = 0;
    loop {
        let byte = *data.get(*pos)?;
        *pos += 1;
        result |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(result);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// The minimum of the first memory the module defines (memory section, id 5).
pub fn initial_memory_pages(module: &[u8]) -> Option<u64> {
    if module.get(..4)? != b"\0asm" {
        return None;
    }
    let mut pos = 8;
    while pos < module.len() {
        let id = *module.get(pos)?;
        pos += 1;
        let size = usize::try_from(leb_u64(module, &mut pos)?).ok()?;
        let end = pos.checked_add(size)?;
        if id == 5 {
            let mut p = pos;
            let count = leb_u64(module, &mut p)?;
            if count == 0 {
                return None;
            }
            let _flags = *module.get(p)?;
            p += 1;
            return leb_u64(module, &mut p);
        }
        pos = end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_memory_section() {
        // (module (memory 17)) with a type section before it.
        let m = [0, b'a', b's', b'm', 1, 0, 0, 0, 1, 1, 0, 5, 3, 1, 0, 17];
        assert_eq!(initial_memory_pages(&m), Some(17));
        assert_eq!(initial_memory_pages(&m[..8]), None);
        assert_eq!(initial_memory_pages(b"not wasm"), None);
    }

    #[test]
    fn targets_follow_the_issues() {
        assert_eq!(target_for("meshwasm_jwt_auth.wasm"), 500_000);
        assert_eq!(target_for("meshwasm_balancer.wasm"), 200_000);
    }
}
