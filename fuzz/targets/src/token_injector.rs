//! token-injector: the token endpoint's answer and the plugin configuration.

use meshwasm_token_injector::config::Plan;
use meshwasm_token_injector::token::parse_token_response;

/// A token endpoint answer: 2 bytes of HTTP status (big-endian), then the body. A token that is
/// accepted goes into an `Authorization` header, and a refusal's reason into a reply: neither may
/// carry a line break.
pub fn token_response(data: &[u8]) {
    let Some((status, body)) = data.split_first_chunk::<2>() else { return };
    let status = u32::from(u16::from_be_bytes(*status));
    for status in [status, 200] {
        match parse_token_response(status, body) {
            Ok(t) => assert!(
                t.access_token.bytes().all(|b| b.is_ascii_graphic()),
                "a token that cannot be a header value was accepted"
            ),
            Err(e) => {
                let reason = e.client_reason();
                assert!(!reason.bytes().any(|b| b.is_ascii_control()), "control character in {reason:?}");
                let _ = e.to_string();
            }
        }
    }
}

/// The token-injector plugin configuration (`client_secret_env` reads a fixed environment); a plan
/// that configures is asked to match a few requests.
pub fn config(data: &[u8]) {
    let env = |name: &str| (name == "FUZZ_SECRET").then(|| "fuzz-secret-from-env".to_owned());
    let Ok(plan) = Plan::from_json_with_env(data, &env) else { return };
    for (authority, path) in [
        (&b"inventory.internal"[..], &b"/"[..]),
        (b"a:8080", b"/api/v1?x"),
        (b"", b""),
        (b"\xff", b"/%2e%2e"),
    ] {
        let _ = plan.matcher.matches(authority, path);
    }
}
