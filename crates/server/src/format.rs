//! Constrained decoding requests: Ollama's `format` and OpenAI's `response_format`, turned
//! into the engine's [`JsonGrammar`] (a bad schema is a 400 naming the keyword).

use std::sync::Arc;

use hoist_runtime::constrain::JsonGrammar;
use serde_json::{json, Value};

use crate::error::ApiError;

/// Ollama's `format`: absent, null or `""` (free text), `"json"` (any JSON value) or a JSON
/// schema object.
pub(crate) fn ollama(format: Option<&Value>) -> Result<Option<Arc<JsonGrammar>>, ApiError> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Arc::new(JsonGrammar::any()))),
        Some(schema @ Value::Object(_)) => schema_grammar(schema, "format").map(Some),
        Some(_) => Err(ApiError::bad_param(
            "format",
            "format must be \"json\" or a JSON schema object".to_string(),
        )),
    }
}

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` (a JSON object)
/// or `{"type": "json_schema", "json_schema": {"schema": {...}}}` (without `schema`, any JSON
/// object, as `json_object`).
pub(crate) fn openai(format: Option<&Value>) -> Result<Option<Arc<JsonGrammar>>, ApiError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let object = || schema_grammar(&json!({"type": "object"}), "response_format").map(Some);
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => object(),
        Some("json_schema") => match format.get("json_schema").and_then(|j| j.get("schema")) {
            None | Some(Value::Null) => object(),
            Some(schema) => schema_grammar(schema, "response_format").map(Some),
        },
        _ => Err(ApiError::bad_param(
            "response_format",
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"".to_string(),
        )),
    }
}

fn schema_grammar(schema: &Value, param: &'static str) -> Result<Arc<JsonGrammar>, ApiError> {
    JsonGrammar::from_schema(schema)
        .map(Arc::new)
        .map_err(|e| ApiError::bad_param(param, format!("{param}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_apis_shapes() {
        assert!(ollama(None).unwrap().is_none());
        assert!(ollama(Some(&json!(""))).unwrap().is_none());
        assert!(ollama(Some(&json!("json"))).unwrap().is_some());
        assert!(ollama(Some(&json!({"type": "object"}))).unwrap().is_some());
        assert_eq!(ollama(Some(&json!("yaml"))).unwrap_err().status, 400);
        let e = ollama(Some(&json!({"type": "string", "maxLength": 3}))).unwrap_err();
        assert!(e.message.contains("maxLength"), "{}", e.message);

        assert!(openai(Some(&json!({"type": "text"}))).unwrap().is_none());
        assert!(openai(Some(&json!({"type": "json_object"})))
            .unwrap()
            .is_some());
        let schema = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "oneOf": []}}});
        let e = openai(Some(&schema)).unwrap_err();
        assert!(e.message.contains("oneOf") && e.param == Some("response_format"));
        assert!(openai(Some(&json!({"type": "xml"}))).is_err());
    }
}
