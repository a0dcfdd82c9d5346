//! Certificates made at test time with Debian's `openssl`: a CA and SVID-style leaf certificates
//! (URI SAN `spiffe://<td>/ns/<ns>/sa/<sa>`) in a temporary directory, so that no private key is
//! committed. The real-Envoy mTLS tests (authz, TLS conformance) share it.
//!
//! ```no_run
//! use meshwasm_tests::pki::Pki;
//! let pki = Pki::new("meshwasm-example-");
//! let (cert, key) = pki.leaf("frontend", "URI:spiffe://cluster.local/ns/shop/sa/frontend", "/O=shop/CN=frontend", &[]);
//! let digest = pki.sha256(&cert);
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA (`ca.pem`, `ca.key`) and the leaves made from it, in a temporary directory removed on drop.
pub struct Pki {
    dir: tempfile::TempDir,
}

/// Runs `openssl args` in `dir`.
///
/// # Panics
/// When openssl cannot run or fails (the test cannot go on without its certificates).
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Pki {
    /// A new P-256 CA valid for a day, in a temporary directory named with `prefix`.
    pub fn new(prefix: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().expect("a temporary directory");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=meshwasm test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self { dir }
    }

    /// A file in the directory (`ca.pem`, `<leaf>.pem`, `<leaf>.key`).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A new P-256 key and certificate request for leaf `name` (subject `subject`, more `openssl req`
    /// arguments `req_args`), and the extension file giving it SANs `sans` and client+server use.
    /// Returns the file names (key, request, certificate to write, extension file).
    fn request(
        &self,
        name: &str,
        sans: &str,
        subject: &str,
        req_args: &[&str],
    ) -> (String, String, String, String) {
        let (key, csr, pem, extf) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        let ext = format!(
            "subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\n"
        );
        std::fs::write(self.path(&extf), ext).expect("the extension file is written");
        let mut args = vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            subject,
        ];
        args.extend_from_slice(req_args);
        openssl(self.dir.path(), &args);
        (key, csr, pem, extf)
    }

    /// A short-lived leaf `name` signed by the CA, with SANs `sans` (`URI:…,DNS:…`) and subject
    /// `subject`, usable as client and server certificate. `req_args`: more arguments to
    /// `openssl req` (e.g. `-utf8`, `-multivalue-rdn`). Returns (certificate, key).
    pub fn leaf(&self, name: &str, sans: &str, subject: &str, req_args: &[&str]) -> (PathBuf, PathBuf) {
        let (key, csr, pem, extf) = self.request(name, sans, subject, req_args);
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "1",
                "-extfile",
                &extf,
            ],
        );
        (self.path(&pem), self.path(&key))
    }

    /// A leaf like [`Pki::leaf`] but valid only from `not_before` to `not_after` (openssl dates,
    /// `YYYYMMDDHHMMSSZ`), e.g. an expired SVID (`"20200101000000Z"`, `"20200102000000Z"`) or one
    /// not valid yet. Signed with `openssl ca`, the one openssl 3.0 command that takes explicit
    /// dates. Only the subject's `O` and `CN` are kept (the `openssl ca` policy). Returns
    /// (certificate, key).
    pub fn leaf_between(
        &self,
        name: &str,
        sans: &str,
        subject: &str,
        not_before: &str,
        not_after: &str,
    ) -> (PathBuf, PathBuf) {
        let (key, csr, pem, extf) = self.request(name, sans, subject, &[]);
        // `openssl ca` keeps a database of what it issued; a minimal one, in the same directory.
        if !self.path("ca.cnf").exists() {
            let cnf = "[ca]\ndefault_ca = test_ca\n[test_ca]\ndatabase = ca-index.txt\nnew_certs_dir = .\n\
                       serial = ca-serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                       [any]\ncommonName = optional\norganizationName = optional\n";
            std::fs::write(self.path("ca.cnf"), cnf).expect("the openssl ca config is written");
            std::fs::write(self.path("ca-index.txt"), "").expect("the openssl ca database is written");
            std::fs::write(self.path("ca-serial"), "1000\n").expect("the openssl ca serial is written");
        }
        openssl(
            self.dir.path(),
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-batch",
                "-notext",
                "-cert",
                "ca.pem",
                "-keyfile",
                "ca.key",
                "-in",
                &csr,
                "-out",
                &pem,
                "-startdate",
                not_before,
                "-enddate",
                not_after,
                "-extfile",
                &extf,
            ],
        );
        (self.path(&pem), self.path(&key))
    }

    /// The DER bytes of leaf `name`.
    pub fn der(&self, name: &str) -> Vec<u8> {
        let der = format!("{name}.der");
        openssl(self.dir.path(), &["x509", "-in", &format!("{name}.pem"), "-outform", "DER", "-out", &der]);
        std::fs::read(self.path(&der)).expect("the DER file is written")
    }

    /// The lower-case hex SHA-256 of a certificate (its DER), as Envoy reports it.
    pub fn sha256(&self, pem: &Path) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(pem)
            .output()
            .expect("openssl runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().rsplit('=').next().unwrap_or_default().replace(':', "").to_ascii_lowercase()
    }
}
