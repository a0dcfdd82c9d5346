//! `guest_rsa` / `guest_ec`: the in-guest RSA and ECDSA verifiers are compiled in native builds (tests,
//! the standalone engine) always, and in .wasm builds only with the `guest-rsa` / `guest-ec` features:
//! the default artifact verifies RS*/ES* through the host's `verify_signature` (see README.md).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(guest_rsa)");
    println!("cargo::rustc-check-cfg=cfg(guest_ec)");
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    if !wasm || std::env::var_os("CARGO_FEATURE_GUEST_RSA").is_some() {
        println!("cargo::rustc-cfg=guest_rsa");
    }
    if !wasm || std::env::var_os("CARGO_FEATURE_GUEST_EC").is_some() {
        println!("cargo::rustc-cfg=guest_ec");
    }
}
