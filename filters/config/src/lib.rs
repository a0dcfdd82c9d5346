//! The plugin-configuration convention every meshwasm filter follows:
//!
//! - one entry point per filter, `Plan::from_json(&[u8]) -> Result<Plan, ConfigError>`, which
//!   deserializes with [`from_json`] (or [`from_value`]) and then validates;
//! - one error, [`ConfigError`]: the field path (`providers.idp.remote_jwks.timeout`) and the reason.
//!   Type errors, unknown fields and bad values get their path from where serde_json stopped
//!   (see [`from_json`]); a filter's own checks name theirs;
//! - one duration type, [`Duration`], written `"250ms"`, `"5s"`, `"1m"` or `"1h"`;
//! - one header-name check, [`header_name`];
//! - one shim for the spellings deprecated by this convention ([`Legacy`]): integer `*_ms` / `*_s`
//!   fields are rewritten to duration strings before deserialization, with a warning the filter logs
//!   at configure time.
//!
//! ```
//! use meshwasm_config::{Duration, Legacy, Unit};
//!
//! #[derive(Debug, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Raw { timeout: Duration }
//!
//! let mut json: serde_json::Value = serde_json::from_str(r#"{"timeout_ms": 1500}"#).unwrap();
//! let mut legacy = Legacy::default();
//! legacy.duration(&mut json, "", "timeout_ms", Unit::Millis, "timeout").unwrap();
//! let raw: Raw = meshwasm_config::from_value(json).unwrap();
//! assert_eq!(raw.timeout.as_millis(), 1500);
//! assert!(legacy.warnings[0].contains("`timeout_ms` is deprecated"));
//!
//! let e = meshwasm_config::from_json::<Raw>(br#"{"timeout": "5 s"}"#).unwrap_err();
//! assert_eq!(e.path(), "timeout");
//! ```

mod duration;
mod error;
mod header;
mod legacy;
#[cfg(feature = "schema")]
pub mod schema;

pub use duration::{Duration, millis, secs};
pub use error::{ConfigError, from_json, from_value};
pub use header::header_name;
pub use legacy::{Legacy, Unit};
