//! The shim for spellings this configuration convention replaced: integer `*_ms` / `*_s` fields
//! (and other renamed values) are rewritten in the parsed JSON before it is deserialized, and each
//! rewrite leaves a warning that the filter logs at configure time. Accepted for one release.

use serde_json::{Map, Value};

use crate::ConfigError;
use crate::error::join;

/// The unit of a deprecated integer duration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Seconds,
}

/// Collects the deprecation warnings of one configuration.
#[derive(Debug, Default)]
pub struct Legacy {
    pub warnings: Vec<String>,
}

impl Legacy {
    /// If the object `obj` (at `path`) has the integer field `old` (in `unit`), replaces it with the
    /// duration string field `new`. Both set is an error: which one wins would be a guess.
    pub fn duration(
        &mut self,
        obj: &mut Value,
        path: &str,
        old: &str,
        unit: Unit,
        new: &str,
    ) -> Result<(), ConfigError> {
        let Some(map) = obj.as_object_mut() else { return Ok(()) };
        let Some(v) = map.get(old) else { return Ok(()) };
        let (suffix, what) = match unit {
            Unit::Millis => ("ms", "milliseconds"),
            Unit::Seconds => ("s", "seconds"),
        };
        let Some(n) = v.as_u64() else {
            return Err(ConfigError::new(join(path, old), format!("must be a whole number of {what}")));
        };
        let written = format!("{n}{suffix}");
        self.rename(map, path, old, new, Value::String(written.clone()))?;
        self.warnings.push(format!(
            "`{}` is deprecated and will be removed in the next release: write `\"{new}\": \"{written}\"`",
            join(path, old)
        ));
        Ok(())
    }

    /// If the string field `field` of `obj` (at `path`) is `old`, replaces it with `new`.
    pub fn value(&mut self, obj: &mut Value, path: &str, field: &str, old: &str, new: &str) {
        let Some(v) = obj.as_object_mut().and_then(|m| m.get_mut(field)) else { return };
        if v.as_str() == Some(old) {
            *v = Value::String(new.to_owned());
            self.warnings.push(format!(
                "`{}: \"{old}\"` is deprecated and will be removed in the next release: write `\"{new}\"`",
                join(path, field)
            ));
        }
    }

    fn rename(
        &mut self,
        map: &mut Map<String, Value>,
        path: &str,
        old: &str,
        new: &str,
        value: Value,
    ) -> Result<(), ConfigError> {
        if map.contains_key(new) {
            return Err(ConfigError::new(
                join(path, old),
                format!("is the deprecated spelling of `{new}`, which is also set: keep only `{new}`"),
            ));
        }
        map.remove(old);
        map.insert(new.to_owned(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn old_integer_fields_become_duration_strings_with_a_warning() {
        let mut v = json!({"timeout_ms": 1500, "ttl_s": 30, "other": 1});
        let mut l = Legacy::default();
        l.duration(&mut v, "remote", "timeout_ms", Unit::Millis, "timeout").unwrap();
        l.duration(&mut v, "remote", "ttl_s", Unit::Seconds, "ttl").unwrap();
        l.duration(&mut v, "remote", "absent_s", Unit::Seconds, "absent").unwrap();
        assert_eq!(v, json!({"timeout": "1500ms", "ttl": "30s", "other": 1}));
        assert_eq!(l.warnings.len(), 2);
        assert_eq!(
            l.warnings[0],
            "`remote.timeout_ms` is deprecated and will be removed in the next release: write `\"timeout\": \"1500ms\"`"
        );
        assert!(l.warnings[1].starts_with("`remote.ttl_s` is deprecated"), "{:?}", l.warnings);
    }

    #[test]
    fn bad_old_values_and_double_spellings_name_the_field() {
        let mut l = Legacy::default();
        for bad in [json!("1500"), json!(-1), json!(1.5), json!(null)] {
            let mut v = json!({ "timeout_ms": bad });
            let e = l.duration(&mut v, "a[0]", "timeout_ms", Unit::Millis, "timeout").unwrap_err();
            assert_eq!(e.path(), "a[0].timeout_ms");
            assert_eq!(e.reason(), "must be a whole number of milliseconds");
        }
        let mut v = json!({"timeout_ms": 5, "timeout": "5ms"});
        let e = l.duration(&mut v, "", "timeout_ms", Unit::Millis, "timeout").unwrap_err();
        assert_eq!(e.path(), "timeout_ms");
        assert!(e.reason().contains("keep only `timeout`"), "{e}");
        assert!(l.warnings.is_empty());
        // Not an object (a type error the typed parse reports): left alone.
        let mut v = json!([1]);
        l.duration(&mut v, "", "timeout_ms", Unit::Millis, "timeout").unwrap();
    }

    #[test]
    fn renamed_values() {
        let mut v = json!({"auth_method": "basic"});
        let mut l = Legacy::default();
        l.value(&mut v, "introspection", "auth_method", "basic", "client_secret_basic");
        l.value(&mut v, "introspection", "auth_method", "post", "client_secret_post");
        assert_eq!(v, json!({"auth_method": "client_secret_basic"}));
        assert_eq!(
            l.warnings,
            [
                "`introspection.auth_method: \"basic\"` is deprecated and will be removed in the next release: write `\"client_secret_basic\"`"
            ]
        );
    }
}
