//! `sign_rsa` / `sign_es256` / `sign_es384`: which private_key_jwt signers are compiled. Native builds
//! (tests, the standalone engines) have all of them; .wasm builds those the `sign-*` features ask for,
//! since each signer is tens to hundreds of KB of a filter artifact (see Cargo.toml).
fn main() {
    let wasm = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "wasm32");
    for (cfg, feature) in [
        ("sign_rsa", "CARGO_FEATURE_SIGN_RSA"),
        ("sign_es256", "CARGO_FEATURE_SIGN_ES256"),
        ("sign_es384", "CARGO_FEATURE_SIGN_ES384"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if !wasm || std::env::var_os(feature).is_some() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
