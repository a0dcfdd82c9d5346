//! `meshwasm-dist --out DIR [--version V] FILE.wasm...`: writes an OCI image layout per module
//! (`DIR/oci/<name>/`, tags `<V>-oci` and `<V>-compat`), `DIR/SHA256SUMS` and `DIR/DIGESTS`, and
//! prints the manifest digests for `sha256:` pinning.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut out = None;
    let mut version = env!("CARGO_PKG_VERSION").to_owned();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a directory")?)),
            "--version" => version = args.next().context("--version needs a value")?,
            "-h" | "--help" => {
                println!("usage: meshwasm-dist --out DIR [--version V] FILE.wasm...");
                return Ok(());
            }
            a if a.starts_with('-') => bail!("unknown option {a}"),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    let out = out.context("--out DIR is required")?;
    if files.is_empty() {
        bail!("no .wasm files given");
    }
    let dist = meshwasm_dist::build_dist(&out, &files, &version)?;
    println!(
        "{:<28} {:<16} {:<72} module sha256 (http(s) pin)",
        "image", "tag", "manifest digest (oci:// pin)"
    );
    for d in &dist {
        for i in &d.images {
            println!("{:<28} {:<16} {:<72} {}", d.name, i.tag, i.manifest_digest, i.wasm_digest);
        }
    }
    println!("layouts in {}/oci/, digests in {}/DIGESTS", out.display(), out.display());
    Ok(())
}
