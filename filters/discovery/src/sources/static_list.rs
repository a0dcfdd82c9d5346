//! A fixed list of endpoints from the plugin configuration.

use meshwasm_endpoints::Endpoint;
use serde::Deserialize;

use super::{EndpointSpec, Outcome, canonicalize};

/// `{"static": {"endpoints": [{"address": "127.0.0.1:8081", "weight": 2}]}}`
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    pub endpoints: Vec<EndpointSpec>,
}

#[derive(Debug)]
pub struct StaticList {
    endpoints: Vec<Endpoint>,
}

impl StaticList {
    pub fn new(config: StaticConfig) -> Result<Self, String> {
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (i, spec) in config.endpoints.into_iter().enumerate() {
            endpoints.push(spec.into_endpoint().map_err(|e| format!("endpoints[{i}]: {e}"))?);
        }
        Ok(Self { endpoints: canonicalize(endpoints) })
    }

    pub fn outcome(&self) -> Outcome {
        Outcome::Endpoints { endpoints: self.endpoints.clone(), skipped: 0, next: None }
    }
}
