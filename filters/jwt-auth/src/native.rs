//! Envoy's `verify_signature` foreign function (BoringSSL) as the signature verifier for RS256/384/512
//! and ES256/384, with the pure-Rust path as fallback. Used only after a self-test at configure time:
//! a known-valid and a tampered signature (Wycheproof JWS vectors) must be answered true and false.
//! Hosts without the function use the pure-Rust verifiers where the artifact has them (`guest-rsa`,
//! `guest-ec`), and otherwise refuse RS*/ES* tokens (logged at configure time).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use crate::crypto::{self, Material};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_call_foreign_function(
        name_data: *const u8,
        name_size: usize,
        args_data: *const u8,
        args_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

fn varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, number: u8, data: &[u8]) {
    out.push((number << 3) | 2);
    varint(out, data.len());
    out.extend_from_slice(data);
}

/// `VerifySignatureResult.result` (field 1, varint) from the reply, if present.
fn parse_result(mut b: &[u8]) -> Option<bool> {
    let mut result = false;
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        let read_varint = |b: &mut &[u8]| -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&x, rest) = b.split_first()?;
                *b = rest;
                v |= u64::from(x & 0x7f) << shift;
                if x < 0x80 {
                    return Some(v);
                }
            }
            None
        };
        match tag & 7 {
            0 => {
                let v = read_varint(&mut b)?;
                if tag >> 3 == 1 {
                    result = v != 0;
                }
            }
            2 => {
                let len = usize::try_from(read_varint(&mut b)?).ok()?;
                b = b.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(result)
}

fn call(hash: &str, spki: &[u8], sig: &[u8], msg: &[u8]) -> Option<bool> {
    let mut args = Vec::with_capacity(spki.len() + sig.len() + msg.len() + 32);
    field(&mut args, 1, hash.as_bytes());
    field(&mut args, 2, spki);
    field(&mut args, 3, sig);
    field(&mut args, 4, msg);
    let name = "verify_signature";
    let mut out: *mut u8 = std::ptr::null_mut();
    let mut out_len: usize = 0;
    // SAFETY: the host reads the name and argument buffers, which live until the call returns, and
    // writes a buffer it allocated through this module's allocator (proxy_on_memory_allocate), which we
    // take ownership of exactly once, as the SDK does for its own hostcalls.
    let status = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            args.as_ptr(),
            args.len(),
            &mut out,
            &mut out_len,
        )
    };
    let reply = if out.is_null() {
        Vec::new()
    } else {
        // SAFETY: see above: `out` was allocated with capacity `out_len` by our allocator.
        unsafe { Vec::from_raw_parts(out, out_len, out_len) }
    };
    if status != 0 {
        return None;
    }
    parse_result(&reply)
}

const EC_X: &str = "04N0xi21hshyvBp7I167sbE_bXqyqkAPfefdklMO7wY";
const EC_Y: &str = "UI8exy-C06a7DUnjIdENkxeFtHM4-l_41LqEw9nVgmw";
const EC_JWS: &str = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImtpZC1lYy1zaWduIn0.Zm9v.5cA0OHyMP7ezamUd5c9kV-FrGxdx4hbGXOdplQkutrqWrte5P-pAvsE3Ve6xSyU3YDQwUHjVVOtvcrEbbnZ8yA";
const RSA_N: &str = "kqGboBfAWttWPCA-0cGRgsY6SaYoIARt0B_PkaEcIq9HPYNdu9n6UuWHuuTHrjF_ZoQW97r5HaAorNvrMEGTGdxCHZdEtkHvNVVmrtxTBLiQCbCozXhFoIrVcr3qUBrdGnNn_M3jJi7Wg7p_-x62nS5gNG875oyheRkutHsQXikFZwsN3q_TsPNOVlCiHy8mxzaFTUQGm-X8UYexFyAivlDSjgDJLAZSWfxd7k9Gxuwa3AUfQqQcVcegmgKGCaErQ3qQbh1x7WB6iopE3_-GZ8HMAVtR9AmrVscqYsnjhaCehfAI0iKKs8zXr8tISc0ORbaalrkk03H1ZrsEnDKEWQ";
const RSA_JWS: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtpZC1yc2Etc2lnbiJ9.Zm9v.HUwxI1-cZrZgcuOgBQ7G7NE-GrqK79l6GV1KT4DKXnSMFwC8pfZCzE7pmLE7mYpLCIvzC87yuOjuhT0uW5oe6aaAEtR978cm-q8dfly45flqMrd_ifhi9GCsMlyi8dpQ42Ou1etZljFZuWjfyk8CN1c5DaHRwhqjScAPIFp6xmzKIRUJ_xdQfUSfSlujLaixtScU518EoNP4oo1v7E8RAz6ZO4g2N4Xqs8OvSxYydcoTEg42QnLHe9JnXgI37Q5gSwinwaPsG3Ry56UYiLoL8mCUa74S51y02VsIgVmmGWgaXjM-i_lCiKQDBiBnvWlka4XhVuvd6ZWibM9cbCPtPg";

fn self_test(key: &Material, alg: Algorithm, jws: &str) -> bool {
    let Some((input, sig)) = jws.rsplit_once('.') else { return false };
    let Ok(mut sig) = URL_SAFE_NO_PAD.decode(sig) else { return false };
    let good = crypto::verify(key, alg, input.as_bytes(), &sig);
    if let Some(b) = sig.last_mut() {
        *b ^= 1;
    }
    let bad = crypto::verify(key, alg, input.as_bytes(), &sig);
    good && !bad
}

/// Installs the host verifier when the self-test passes. Returns whether it is in use.
pub fn install() -> bool {
    let d = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap_or_default();
    let ec = [vec![4u8], d(EC_X), d(EC_Y)].concat();
    let (Some(ec), Some(rsa)) = (Material::p256(&ec), Material::rsa(&d(RSA_N), &[1, 0, 1])) else {
        return false;
    };
    // Probe the host without the pure-Rust fallback answering for it.
    crypto::set_native_verifier(Some(|h, k, s, m| Some(call(h, k, s, m).unwrap_or(false))));
    let ok = self_test(&ec, Algorithm::ES256, EC_JWS) && self_test(&rsa, Algorithm::RS256, RSA_JWS);
    crypto::set_native_verifier(if ok { Some(call) } else { None });
    let refused = match (crypto::built_in(Algorithm::RS256), crypto::built_in(Algorithm::ES256)) {
        (true, true) => None,
        (true, false) => Some("ES256 and ES384"),
        (false, true) => Some("RS* and PS*"),
        (false, false) => Some("RS*, PS*, ES256 and ES384"),
    };
    if let (false, Some(refused)) = (ok, refused) {
        // Fail closed, and say so once per configuration.
        let _ = proxy_wasm::hostcalls::log(
            proxy_wasm::types::LogLevel::Critical,
            &format!(
                "meshwasm jwt-auth: the host has no working `verify_signature` foreign function (Envoy's, \
                 in every Envoy this project supports) and this artifact verifies {refused} only through it: \
                 such tokens are rejected. On this host use the artifact built with the `guest-rsa` and \
                 `guest-ec` features (`make wasm-full`)."
            ),
        );
    }
    ok
}
