//! authz: the plugin configuration, and a configured plan deciding a few requests.

use meshwasm_authz::attributes::{Attributes, Peer, claim_values};
use meshwasm_authz::config::Plan;
use meshwasm_authz::policy::evaluate;

/// The authz plugin configuration; a plan that configures decides a plaintext request, an mTLS
/// request with a SPIFFE identity and a token principal with claims.
pub fn config(data: &[u8]) {
    let _ = claim_values(data);
    let Ok(plan) = Plan::from_json(data) else { return };
    let mut a = Attributes {
        method: b"GET".to_vec(),
        path: "/".into(),
        authority: b"orders".to_vec(),
        ..Attributes::default()
    };
    let _ = evaluate(&plan.policies, &a);
    a.path = "/admin/x".into();
    a.peer = Peer::new(
        true,
        Some("spiffe://cluster.local/ns/shop/sa/frontend".into()),
        Some("frontend.shop".into()),
        Some("CN=frontend".into()),
        Some("AB".repeat(32)),
    );
    a.source_ip = Some([10, 0, 0, 1].into());
    a.request_principal = Some(b"https://iss/alice".to_vec());
    a.request_provider = Some(b"idp".to_vec());
    a.claims =
        vec![("groups".into(), claim_values(br#"["ops","dev"]"#)), ("sub".into(), vec![b"alice".to_vec()])];
    a.headers = vec![("x-env".into(), vec![b"prod".to_vec(), b"".to_vec()])];
    let _ = evaluate(&plan.policies, &a);
}
