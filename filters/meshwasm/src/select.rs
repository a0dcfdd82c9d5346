//! The root_ids of `meshwasm.wasm` and the filter each selects.

/// A filter linked into `meshwasm.wasm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    JwtAuth,
    TokenInjector,
    Discovery,
    Balancer,
    Authz,
}

/// Every root_id `meshwasm.wasm` serves, with its filter.
pub const ROOT_IDS: [(&str, Filter); 5] = [
    ("meshwasm.jwt_auth", Filter::JwtAuth),
    ("meshwasm.token_injector", Filter::TokenInjector),
    ("meshwasm.discovery", Filter::Discovery),
    ("meshwasm.balancer", Filter::Balancer),
    ("meshwasm.authz", Filter::Authz),
];

/// The filter `root_id` selects, or the configuration error naming `root_id` and the valid ones.
pub fn select(root_id: &str) -> Result<Filter, String> {
    ROOT_IDS.iter().find(|(id, _)| *id == root_id).map(|(_, f)| *f).ok_or_else(|| {
        let valid: Vec<&str> = ROOT_IDS.iter().map(|(id, _)| *id).collect();
        format!("meshwasm.wasm: root_id `{root_id}` selects no filter; valid root_ids: {}", valid.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_root_id_selects_its_filter() {
        for (id, f) in ROOT_IDS {
            assert_eq!(select(id), Ok(f));
        }
        assert_eq!(select("meshwasm.balancer"), Ok(Filter::Balancer));
    }

    #[test]
    fn unknown_and_empty_root_ids_are_refused_naming_the_valid_ones() {
        for bad in ["", "balancer", "meshwasm.jwt-auth", "MESHWASM.AUTHZ", "meshwasm.balancer "] {
            let err = select(bad).unwrap_err();
            assert!(err.contains(&format!("root_id `{bad}`")), "{err}");
            for (id, _) in ROOT_IDS {
                assert!(err.contains(id), "{err}");
            }
        }
    }
}
