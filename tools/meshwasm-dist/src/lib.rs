//! Reproducible OCI image layouts (opencontainers image-spec) of proxy-wasm filters, in the two shapes
//! that Istio's and Envoy Gateway's image fetchers accept (istio `pkg/wasm/imagefetcher.go`, forked as
//! envoyproxy/gateway `internal/wasm/imagefetcher.go`):
//!
//! - [`Variant::Oci`], solo-io's "oci" wasm image spec: exactly two layers, the runtime config
//!   (`application/vnd.module.wasm.config.v1+json`, also the manifest's config) and the raw module
//!   (`application/vnd.module.wasm.content.layer.v1+wasm`). The fetchers reject any other layer count.
//! - [`Variant::Compat`], solo-io's "compat" spec: one `application/vnd.oci.image.layer.v1.tar+gzip`
//!   layer holding `plugin.wasm`, and the manifest annotation `module.wasm.image/variant=compat`.
//!
//! Same input bytes give the same blobs and digests: tar entries have fixed mode, owner and mtime, the
//! gzip header has no timestamp or name, and every JSON document is written with sorted keys and no
//! time stamps. [`extract_wasm`] applies the fetchers' rules to a manifest, for tests of pulled images.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const WASM_CONFIG: &str = "application/vnd.module.wasm.config.v1+json";
pub const WASM_CONTENT: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The file name the fetchers look for in a compat layer (they compare the base name).
pub const PLUGIN_FILE: &str = "plugin.wasm";
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const TITLE: &str = "org.opencontainers.image.title";
/// The proxy-wasm ABI the Rust SDK (proxy-wasm 0.2) exports, recorded in the runtime config.
pub const ABI_VERSION: &str = "proxy_abi_version_0_2_1";

/// The image shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Oci,
    Compat,
}

impl Variant {
    pub const ALL: [Variant; 2] = [Variant::Oci, Variant::Compat];

    /// Tag suffix: `<version>-oci` / `<version>-compat`.
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Oci => "oci",
            Variant::Compat => "compat",
        }
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One content-addressed blob and its descriptor fields.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
    pub annotations: BTreeMap<String, String>,
}

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Self { media_type, bytes, annotations: BTreeMap::new() }
    }

    fn title(mut self, title: &str) -> Self {
        self.annotations.insert(TITLE.to_owned(), title.to_owned());
        self
    }

    pub fn digest(&self) -> String {
        digest(&self.bytes)
    }

    /// The OCI descriptor (serde_json maps are BTreeMaps: keys come out sorted).
    pub fn descriptor(&self) -> Value {
        let mut d =
            json!({ "digest": self.digest(), "mediaType": self.media_type, "size": self.bytes.len() });
        if !self.annotations.is_empty() {
            d["annotations"] = json!(self.annotations);
        }
        d
    }
}

/// JSON bytes with sorted keys, without a trailing newline (the bytes are what the digest covers).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sort(v))).collect();
                json!(sorted)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // Serializing a Value cannot fail (all keys are strings).
    serde_json::to_vec(&sort(value)).unwrap_or_default()
}

/// The solo-io runtime config of an Envoy filter.
pub fn runtime_config(root_ids: &[&str]) -> Vec<u8> {
    canonical_json(&json!({
        "abi_version": ABI_VERSION,
        "config": { "root_ids": root_ids },
        "type": "envoy_proxy",
    }))
}

/// A tar holding only `plugin.wasm`, with fixed metadata so the bytes depend on `wasm` alone.
pub fn plugin_tar(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_size(wasm.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, wasm)?;
    Ok(builder.into_inner()?)
}

/// gzip without a timestamp or file name, at a fixed level.
pub fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new().mtime(0).write(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes)?;
    Ok(enc.finish()?)
}

/// A built image: its manifest and the blobs it references (config first).
#[derive(Debug, Clone)]
pub struct Image {
    pub variant: Variant,
    pub manifest: Blob,
    pub blobs: Vec<Blob>,
}

/// Builds the image of `wasm` in the shape `variant`.
pub fn build_image(wasm: &[u8], variant: Variant, root_ids: &[&str]) -> Result<Image> {
    let mut annotations = BTreeMap::new();
    let (config, layers) = match variant {
        Variant::Oci => {
            // Istio requires exactly two layers; like solo-io's `wasme`, the runtime config is both
            // the manifest config and the first layer.
            let config = Blob::new(WASM_CONFIG, runtime_config(root_ids)).title("runtime-config.json");
            let content = Blob::new(WASM_CONTENT, wasm.to_vec()).title(PLUGIN_FILE);
            (config.clone(), vec![config, content])
        }
        Variant::Compat => {
            let tar = plugin_tar(wasm)?;
            let config = Blob::new(
                OCI_IMAGE_CONFIG,
                canonical_json(&json!({
                    "architecture": "wasm",
                    "config": {},
                    "os": "wasip1",
                    "rootfs": { "diff_ids": [digest(&tar)], "type": "layers" },
                })),
            );
            let content = Blob::new(OCI_LAYER_TAR_GZIP, gzip(&tar)?);
            annotations.insert(VARIANT_ANNOTATION.to_owned(), "compat".to_owned());
            (config, vec![content])
        }
    };
    let mut manifest = json!({
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
    });
    if !annotations.is_empty() {
        manifest["annotations"] = json!(annotations);
    }
    let manifest = Blob::new(OCI_MANIFEST, canonical_json(&manifest));
    let mut blobs = vec![config];
    blobs.extend(layers.into_iter().filter(|l| l.media_type != WASM_CONFIG));
    Ok(Image { variant, manifest, blobs })
}

/// What [`write_layout`] wrote for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `<version>-<variant>`, the `org.opencontainers.image.ref.name` and the tag to push.
    pub tag: String,
    pub variant: Variant,
    /// The manifest digest: what Istio pins for an `oci://` URL.
    pub manifest_digest: String,
    /// Digest of the raw module (the `.wasm` file's sha256), which the http(s) pin uses.
    pub wasm_digest: String,
    /// Digest of the blob holding the module as served by a registry: the raw module for `oci`,
    /// the gzipped tar for `compat`.
    pub layer_digest: String,
}

/// Writes an OCI image layout at `dir` holding both variants of `wasm`, tagged `<version>-oci` and
/// `<version>-compat`. An existing layout at `dir` is replaced.
pub fn write_layout(dir: &Path, wasm: &[u8], version: &str, root_ids: &[&str]) -> Result<Vec<Written>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let blob_dir = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
    let mut manifests = Vec::new();
    let mut written = Vec::new();
    for variant in Variant::ALL {
        let image = build_image(wasm, variant, root_ids)?;
        for blob in image.blobs.iter().chain([&image.manifest]) {
            let hex = blob.digest().trim_start_matches("sha256:").to_owned();
            std::fs::write(blob_dir.join(hex), &blob.bytes)?;
        }
        let tag = format!("{version}-{}", variant.suffix());
        let mut desc = image.manifest.descriptor();
        desc["annotations"] = json!({ REF_NAME: tag });
        manifests.push(desc);
        let layer = image.blobs.last().map(Blob::digest).unwrap_or_default();
        written.push(Written {
            tag,
            variant,
            manifest_digest: image.manifest.digest(),
            wasm_digest: digest(wasm),
            layer_digest: layer,
        });
    }
    let index = json!({ "manifests": manifests, "mediaType": OCI_INDEX, "schemaVersion": 2 });
    std::fs::write(dir.join("index.json"), canonical_json(&index))?;
    std::fs::write(dir.join("oci-layout"), canonical_json(&json!({ "imageLayoutVersion": "1.0.0" })))?;
    Ok(written)
}

/// The image repository name of a filter file: `meshwasm_jwt_auth.wasm` → `meshwasm-jwt-auth`.
pub fn image_name(wasm_path: &Path) -> String {
    wasm_path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default()
}

/// One filter's dist output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistImage {
    pub name: String,
    pub layout: PathBuf,
    pub images: Vec<Written>,
}

/// Writes `<out>/oci/<name>/` (an OCI layout) for every module in `wasm_files`, copies each module
/// into `<out>` unless it is there already, and writes `<out>/SHA256SUMS` (sha256sum format, sorted
/// by file name) and `<out>/DIGESTS` (one `name:tag sha256:…` line per image).
pub fn build_dist(out: &Path, wasm_files: &[PathBuf], version: &str) -> Result<Vec<DistImage>> {
    std::fs::create_dir_all(out)?;
    let mut sums = BTreeMap::new();
    let mut dist = Vec::new();
    for path in wasm_files {
        let wasm = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(wasm.starts_with(b"\0asm"), "{} is not a wasm module", path.display());
        let file_name =
            path.file_name().context("wasm path without a file name")?.to_string_lossy().into_owned();
        let copy = out.join(&file_name);
        if std::fs::read(&copy).ok().as_deref() != Some(&wasm[..]) {
            std::fs::write(&copy, &wasm)?;
        }
        sums.insert(file_name, digest(&wasm));
        let name = image_name(path);
        let layout = out.join("oci").join(&name);
        let images = write_layout(&layout, &wasm, version, &[])?;
        dist.push(DistImage { name, layout, images });
    }
    let sums: String =
        sums.iter().map(|(f, d)| format!("{}  {f}\n", d.trim_start_matches("sha256:"))).collect();
    std::fs::write(out.join("SHA256SUMS"), sums)?;
    let digests: String = dist
        .iter()
        .flat_map(|d| d.images.iter().map(move |i| format!("{}:{} {}\n", d.name, i.tag, i.manifest_digest)))
        .collect();
    std::fs::write(out.join("DIGESTS"), digests)?;
    Ok(dist)
}

/// Reads a manifest from an OCI layout by its ref name (tag).
pub fn layout_manifest(dir: &Path, tag: &str) -> Result<(String, Value)> {
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let desc = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"][REF_NAME] == tag)
        .with_context(|| format!("no manifest tagged {tag} in {}", dir.display()))?;
    let digest = desc["digest"].as_str().context("manifest descriptor without digest")?.to_owned();
    let bytes = layout_blob(dir, &digest)?;
    Ok((digest, serde_json::from_slice(&bytes)?))
}

/// A blob of an OCI layout, checked against its digest.
pub fn layout_blob(dir: &Path, blob_digest: &str) -> Result<Vec<u8>> {
    let hex = blob_digest.strip_prefix("sha256:").context("digest is not sha256")?;
    let bytes = std::fs::read(dir.join("blobs").join("sha256").join(hex))?;
    ensure!(digest(&bytes) == blob_digest, "blob {blob_digest} does not match its digest");
    Ok(bytes)
}

/// The module in an image, by the rules of Istio's and Envoy Gateway's fetchers: first as "compat"
/// (the last layer is an OCI tar+gzip layer holding a file whose base name is `plugin.wasm`), then as
/// "oci" (exactly two layers, one of them the wasm content layer, read raw). `blob` fetches a blob by
/// digest. The error names both failures, as the fetchers do.
pub fn extract_wasm(manifest: &Value, mut blob: impl FnMut(&str) -> Result<Vec<u8>>) -> Result<Vec<u8>> {
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    let compat = (|| -> Result<Vec<u8>> {
        let last = layers.last().context("number of layers must be greater than zero")?;
        let mt = last["mediaType"].as_str().unwrap_or_default();
        ensure!(mt == OCI_LAYER_TAR_GZIP, "invalid media type {mt} (expect {OCI_LAYER_TAR_GZIP})");
        let gz = blob(last["digest"].as_str().unwrap_or_default())?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        for entry in archive.entries()? {
            let mut entry = entry?;
            if entry.path()?.file_name().is_some_and(|n| n == PLUGIN_FILE) {
                let mut wasm = Vec::new();
                entry.read_to_end(&mut wasm)?;
                return Ok(wasm);
            }
        }
        bail!("{PLUGIN_FILE} not found in the archive")
    })();
    let compat_err = match compat {
        Ok(wasm) => return Ok(wasm),
        Err(e) => e,
    };
    let oci = (|| -> Result<Vec<u8>> {
        ensure!(layers.len() == 2, "number of layers must be 2 but got {}", layers.len());
        let layer = layers
            .iter()
            .find(|l| l["mediaType"] == WASM_CONTENT)
            .with_context(|| format!("could not find the layer of type {WASM_CONTENT}"))?;
        blob(layer["digest"].as_str().unwrap_or_default())
    })();
    oci.map_err(|oci_err| {
        anyhow::anyhow!(
            "invalid image: could not parse as compat variant: {compat_err:#}; could not parse as oci variant: {oci_err:#}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WASM: &[u8] = b"\0asm\x01\0\0\0 a module body";

    fn from_layout(dir: &Path, tag: &str) -> Result<Vec<u8>> {
        let (_, manifest) = layout_manifest(dir, tag)?;
        extract_wasm(&manifest, |d| layout_blob(dir, d))
    }

    #[test]
    fn oci_variant_has_two_layers_config_and_raw_module() {
        let image = build_image(WASM, Variant::Oci, &["r"]).unwrap();
        let m: Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["config"]["mediaType"], WASM_CONFIG);
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        assert_eq!(layers[0]["mediaType"], WASM_CONFIG);
        assert_eq!(layers[1]["mediaType"], WASM_CONTENT);
        assert_eq!(layers[1]["digest"], digest(WASM));
        assert!(m.get("annotations").is_none());
        let cfg: Value = serde_json::from_slice(&image.blobs[0].bytes).unwrap();
        assert_eq!(
            cfg,
            json!({"abi_version": ABI_VERSION, "config": {"root_ids": ["r"]}, "type": "envoy_proxy"})
        );
    }

    #[test]
    fn compat_variant_has_one_tar_gzip_layer_with_plugin_wasm_and_the_annotation() {
        let image = build_image(WASM, Variant::Compat, &[]).unwrap();
        let m: Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(m["config"]["mediaType"], OCI_IMAGE_CONFIG);
        assert_eq!(m["layers"].as_array().unwrap().len(), 1);
        assert_eq!(m["layers"][0]["mediaType"], OCI_LAYER_TAR_GZIP);
        assert_eq!(m["annotations"][VARIANT_ANNOTATION], "compat");
        let gz = &image.blobs[1].bytes;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
        let entries: Vec<_> = archive.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        let h = entries[0].header();
        assert_eq!(h.path().unwrap().to_str(), Some(PLUGIN_FILE));
        assert_eq!(
            (h.mtime().unwrap(), h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()),
            (0, 0, 0, 0o644)
        );
        // gzip header: MTIME bytes 4..8 zero, FLG without FNAME.
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[3] & 0x08, 0);
        // diff_id is the uncompressed tar's digest.
        let cfg: Value = serde_json::from_slice(&image.blobs[0].bytes).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"][0], digest(&plugin_tar(WASM).unwrap()));
    }

    #[test]
    fn both_layout_variants_extract_to_the_module_by_the_fetcher_rules() {
        let dir = tempfile::tempdir().unwrap();
        let written = write_layout(dir.path(), WASM, "1.2.3", &[]).unwrap();
        assert_eq!(written.iter().map(|w| w.tag.as_str()).collect::<Vec<_>>(), ["1.2.3-oci", "1.2.3-compat"]);
        for w in &written {
            assert_eq!(from_layout(dir.path(), &w.tag).unwrap(), WASM, "{}", w.tag);
            let (d, _) = layout_manifest(dir.path(), &w.tag).unwrap();
            assert_eq!(d, w.manifest_digest);
        }
        let layout: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout, json!({"imageLayoutVersion": "1.0.0"}));
    }

    #[test]
    fn the_fetcher_rules_reject_the_shapes_istio_rejects() {
        let blob = |_: &str| Ok(WASM.to_vec());
        // A single raw wasm layer (higress#4528).
        let single = json!({"layers": [{"mediaType": WASM_CONTENT, "digest": digest(WASM)}]});
        let err = format!("{:#}", extract_wasm(&single, blob).unwrap_err());
        assert!(err.contains("number of layers must be 2 but got 1"), "{err}");
        // `oras push` defaults: an uncompressed tar layer.
        let oras =
            json!({"layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "x"}]});
        let err = format!("{:#}", extract_wasm(&oras, blob).unwrap_err());
        assert!(err.contains("invalid media type application/vnd.oci.image.layer.v1.tar"), "{err}");
        // The CNCF wasm artifact.
        let cncf = json!({"layers": [{"mediaType": "application/wasm", "digest": "x"}]});
        assert!(extract_wasm(&cncf, blob).is_err());
        // A compat layer without plugin.wasm.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("other.wasm").unwrap();
        h.set_size(WASM.len() as u64);
        h.set_cksum();
        b.append(&h, WASM).unwrap();
        let gz = gzip(&b.into_inner().unwrap()).unwrap();
        let m = json!({"layers": [{"mediaType": OCI_LAYER_TAR_GZIP, "digest": "x"}]});
        let err = format!("{:#}", extract_wasm(&m, |_| Ok(gz.clone())).unwrap_err());
        assert!(err.contains("plugin.wasm not found"), "{err}");
    }

    #[test]
    fn json_is_written_with_sorted_keys() {
        let bytes = canonical_json(&json!({"b": 1, "a": {"d": 2, "c": [ {"z": 0, "y": 1} ]}}));
        assert_eq!(String::from_utf8(bytes).unwrap(), r#"{"a":{"c":[{"y":1,"z":0}],"d":2},"b":1}"#);
    }

    #[test]
    fn two_builds_give_identical_files_and_digests() {
        let src = tempfile::tempdir().unwrap();
        let wasm = src.path().join("meshwasm_x_y.wasm");
        std::fs::write(&wasm, WASM).unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let da = build_dist(a.path(), std::slice::from_ref(&wasm), "0.1.0").unwrap();
        let db = build_dist(b.path(), std::slice::from_ref(&wasm), "0.1.0").unwrap();
        assert_eq!(da[0].name, "meshwasm-x-y");
        assert_eq!(da[0].images, db[0].images);
        assert_eq!(tree(a.path()), tree(b.path()));
        let sums = std::fs::read_to_string(a.path().join("SHA256SUMS")).unwrap();
        assert_eq!(sums, format!("{}  meshwasm_x_y.wasm\n", digest(WASM).trim_start_matches("sha256:")));
        // A different module changes every digest.
        std::fs::write(&wasm, b"\0asm\x01\0\0\0 another").unwrap();
        let dc = build_dist(b.path(), &[wasm], "0.1.0").unwrap();
        for (x, y) in da[0].images.iter().zip(&dc[0].images) {
            assert_ne!(x.manifest_digest, y.manifest_digest);
        }
    }

    /// Relative path → bytes of every file under `root`.
    fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.strip_prefix(root).unwrap().to_path_buf(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }
}
