//! JSON Schemas of the values whose wire form is not what their Rust type would derive, for the
//! API's OpenAPI document (`cube_api::openapi`): timestamps and durations are strings.
//!
//! Fields name these with `#[schemars(with = "...")]`; the types are never built.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

/// A UTC timestamp in RFC 3339, e.g. `"2026-12-02T12:00:00Z"` (how `jiff::Timestamp` is
/// written).
pub struct Rfc3339;

impl JsonSchema for Rfc3339 {
    fn schema_name() -> Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "A UTC time in RFC 3339, e.g. \"2026-12-02T12:00:00Z\".",
        })
    }
}

/// A duration with units, e.g. `"10s"`, `"1m30s"` or `"500ms"`
/// (`crate::units::duration_serde`); a bare number is refused.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with units, e.g. \"10s\", \"1m30s\" or \"500ms\".",
            "examples": ["10s", "500ms", "1m30s"],
        })
    }
}
