//! JSON Schema pieces of the configuration convention (the `schema` feature, used to generate
//! `schemas/*.schema.json`; filter `.wasm` builds never enable it): the schema of [`Duration`], and
//! transforms that add what the [`crate::Legacy`] shim still accepts — integer `*_ms` / `*_s` fields
//! and renamed values — marked `deprecated`, so the schema describes every configuration the filters
//! take.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use crate::{Duration, Unit};

/// The pattern [`Duration::parse`] accepts.
pub const DURATION_PATTERN: &str = r"^\s*[0-9]+(ms|s|m|h)\s*$";

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A whole number and a unit: \"250ms\", \"5s\", \"1m\" or \"1h\".",
            "examples": ["250ms", "5s", "1m"],
        })
    }
}

/// Adds the deprecated integer field `old` (in `unit`) that the shim rewrites to the duration field
/// `new` of the object `schema` describes. Where `new` is required, either spelling satisfies it.
pub fn legacy_duration(schema: &mut Schema, old: &str, unit: Unit, new: &str) {
    let what = match unit {
        Unit::Millis => "milliseconds",
        Unit::Seconds => "seconds",
    };
    let prop = json!({
        "type": "integer",
        "minimum": 0,
        "deprecated": true,
        "description": format!("Deprecated: `{new}` in {what}. Write `{new}` as a duration string instead."),
    });
    add_property(schema, old, prop);
    if let Some(Value::Array(required)) = schema.get_mut("required")
        && let Some(i) = required.iter().position(|r| r.as_str() == Some(new))
    {
        required.remove(i);
        let any = json!([{"required": [new]}, {"required": [old]}]);
        schema.insert("anyOf".into(), any);
    }
}

/// Adds the deprecated value `old` (rewritten to `new`) to the string enum of property `field`.
pub fn legacy_value(schema: &mut Schema, field: &str, old: &str, new: &str) {
    let Some(prop) = schema.get_mut("properties").and_then(|p| p.get_mut(field)) else { return };
    let alt =
        json!({"const": old, "deprecated": true, "description": format!("Deprecated spelling of `{new}`.")});
    let current = std::mem::take(prop);
    // Keep the field's own documentation next to the alternatives.
    let mut wrapped = serde_json::Map::new();
    if let Some(d) = current.get("description") {
        wrapped.insert("description".into(), d.clone());
    }
    if let Some(d) = current.get("default") {
        wrapped.insert("default".into(), d.clone());
    }
    wrapped.insert("anyOf".into(), json!([current, alt]));
    *prop = Value::Object(wrapped);
}

/// Adds `name` with schema `prop` to the object's properties.
pub fn add_property(schema: &mut Schema, name: &str, prop: Value) {
    let props = schema.ensure_object().entry("properties").or_insert_with(|| json!({}));
    if let Some(map) = props.as_object_mut() {
        map.insert(name.to_owned(), prop);
    }
}

/// Sets the `default` shown for property `field` (e.g. `"2s"` for a duration kept in milliseconds,
/// whose derived default would be the number).
pub fn set_default(schema: &mut Schema, field: &str, default: Value) {
    if let Some(Value::Object(p)) = schema.get_mut("properties").and_then(|p| p.get_mut(field)) {
        p.insert("default".into(), default);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_pattern_is_what_parse_accepts() {
        let re = |s: &str| {
            let s = s.trim();
            let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            digits > 0 && matches!(&s[digits..], "ms" | "s" | "m" | "h")
        };
        for s in ["250ms", "5s", " 1m ", "1h", "0s", "5", "5 s", "s", "1.5s", "5sec", "-1s"] {
            assert_eq!(Duration::parse(s).is_ok(), re(s), "{s}");
        }
    }

    #[test]
    fn legacy_fields_are_added_deprecated() {
        let mut s = json_schema!({"type": "object", "properties": {"timeout": {}}, "required": ["timeout"]});
        legacy_duration(&mut s, "timeout_ms", Unit::Millis, "timeout");
        assert_eq!(s.pointer("/properties/timeout_ms/deprecated"), Some(&json!(true)));
        assert_eq!(s.get("required"), Some(&json!([])));
        assert_eq!(s.get("anyOf"), Some(&json!([{"required": ["timeout"]}, {"required": ["timeout_ms"]}])));
        let mut s = json_schema!({"properties": {"m": {"enum": ["a"], "description": "d"}}});
        legacy_value(&mut s, "m", "b", "a");
        assert_eq!(s.pointer("/properties/m/description"), Some(&json!("d")));
        assert_eq!(s.pointer("/properties/m/anyOf/1/const"), Some(&json!("b")));
    }
}
