//! Tool calling through both APIs. A request's `tools` reach the chat template as its `tools`
//! variable (a template that never reads `tools` gets a 400: the model would never see them);
//! the history's calls and results become [`Message`] fields. The reply is split into content
//! and calls in the format the template names ([`hoist_runtime::chat::tools`]); each API then
//! shapes the calls its own way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hoist_runtime::chat::tools::{Piece, ToolCallStream};
use hoist_runtime::chat::{Message, ToolCall, ToolFormat, ToolSchema};
use hoist_runtime::constrain::JsonGrammar;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::Lease;

/// Checks a request's `tools`: each a function schema (`{"type": "function", "function":
/// {"name": ...}}`); they are passed to the template as given.
pub(crate) fn schemas(tools: Option<&Vec<Value>>) -> Result<Vec<ToolSchema>, ApiError> {
    let tools = tools.cloned().unwrap_or_default();
    for tool in &tools {
        let named = tool
            .get("function")
            .and_then(|f| f.get("name"))
            .is_some_and(Value::is_string);
        if !named {
            return Err(ApiError::bad_param(
                "tools",
                "each of `tools` must be {\"type\": \"function\", \"function\": {\"name\": ..., \
                 \"parameters\": {...}}}",
            ));
        }
    }
    Ok(tools)
}

/// The format to read the reply's calls in, for a request with `tools` on the lease's model:
/// `None` without tools (the reply is all content). A model whose chat template never reads
/// `tools` (or that has none) is a 400; one that reads them but names no format hoist knows
/// gets its reply as content, with a warning.
pub(crate) fn reply_format(
    lease: &Lease,
    tools: &[ToolSchema],
) -> Result<Option<ToolFormat>, ApiError> {
    if tools.is_empty() {
        return Ok(None);
    }
    let template = lease.engine().checkpoint().template.as_ref();
    let Some(template) = template.filter(|t| t.supports_tools()) else {
        return Err(ApiError {
            code: Some("tools_unsupported"),
            ..ApiError::bad_param(
                "tools",
                format!(
                    "this model's chat template does not support tools ('{}' never reads \
                     `tools`); leave `tools` out",
                    lease.name()
                ),
            )
        });
    };
    let format = template.tool_format();
    if format.is_none() {
        tracing::warn!(
            model = lease.name(),
            "the chat template reads `tools` but names no tool-call format hoist knows \
             (<tool_call>, [TOOL_CALLS], <|python_tag|>); replies are returned as content"
        );
    }
    Ok(format)
}

/// A reply forced to be a call: the grammar of its JSON and, for a format whose calls sit
/// between tags, the text around it ([`ToolFormat::forced_wrapper`]).
#[derive(Debug)]
pub(crate) struct Forced {
    pub grammar: Arc<JsonGrammar>,
    /// `(before, after)`: `before` is written after the prompt, the model continues it.
    pub wrapper: Option<(&'static str, &'static str)>,
}

/// What forces the reply to be a call, for OpenAI's `tool_choice` `"required"` or a named
/// function (`{"type": "function", "function": {"name": ...}}`); `None` for `"auto"`, `"none"`
/// or none given, and for a template whose call format hoist does not know. Llama 3's object
/// and Mistral's list (of at least one call, without its marker) are the whole reply; a Hermes
/// call is one `<tool_call>` block, its opening tag written for the model. The arguments follow
/// the tool's `parameters` schema when one tool is possible and the schema is within the
/// constraint's subset; otherwise any object.
pub(crate) fn forced_call(
    format: Option<ToolFormat>,
    choice: Option<&Value>,
    tools: &[ToolSchema],
) -> Result<Option<Forced>, ApiError> {
    let bad = || {
        ApiError::bad_param(
            "tool_choice",
            "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \
             \"function\": {\"name\": ...}} naming one of `tools`",
        )
    };
    let name_of = |t: &Value| t.get("function")?.get("name")?.as_str().map(str::to_string);
    let names: Vec<String> = match choice {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "none" || s == "auto" => return Ok(None),
        Some(Value::String(s)) if s == "required" => tools.iter().filter_map(name_of).collect(),
        Some(v @ Value::Object(_)) => {
            let name = name_of(v).ok_or_else(bad)?;
            if !tools.iter().any(|t| name_of(t).as_deref() == Some(&name)) {
                return Err(bad());
            }
            vec![name]
        }
        Some(_) => return Err(bad()),
    };
    if names.is_empty() {
        return Err(bad());
    }
    // Mistral's calls are a list (a reply opening with `[` is read as calls), of at least one.
    let (key, list) = match format {
        Some(ToolFormat::Llama3Json) => ("parameters", false),
        Some(ToolFormat::Mistral) => ("arguments", true),
        Some(ToolFormat::Hermes) => ("arguments", false),
        None => return Ok(None),
    };
    let parameters = match names.as_slice() {
        [one] => tools
            .iter()
            .find(|t| name_of(t).as_deref() == Some(one.as_str()))
            .and_then(|t| t.get("function")?.get("parameters"))
            .cloned(),
        _ => None,
    };
    let call = |mut params: Value| {
        // Arguments are an object whatever the tool's schema leaves open (`"parameters": {}`
        // would allow a string or a number, which the parser rightly refuses as a call).
        if let Some(p) = params.as_object_mut() {
            p.insert("type".into(), json!("object"));
        }
        let call = json!({
            "type": "object",
            "properties": {"name": {"enum": names}, key: params},
            "required": ["name", key],
        });
        let schema = match list {
            true => json!({"type": "array", "items": call, "minItems": 1}),
            false => call,
        };
        JsonGrammar::from_schema(&schema)
    };
    let object = json!({"type": "object"});
    let grammar = match parameters.map(call) {
        Some(Ok(g)) => g,
        // A parameters schema beyond the subset: the call's shape is still forced.
        _ => call(object).map_err(|e| ApiError::internal(format!("tool-call grammar: {e}")))?,
    };
    Ok(Some(Forced {
        grammar: Arc::new(grammar),
        wrapper: format.and_then(ToolFormat::forced_wrapper),
    }))
}

/// A call in a request's history: `{"id"?, "function": {"name", "arguments"}}`, arguments an
/// object (Ollama) or a string holding one (OpenAI).
pub(crate) fn history_call(v: &Value) -> Result<ToolCall, ApiError> {
    let bad = || {
        ApiError::bad_param(
            "messages",
            "a message's tool_calls must be {\"function\": {\"name\": ..., \"arguments\": ...}} \
             with arguments a JSON object (or a string holding one)",
        )
    };
    let function = v.get("function").ok_or_else(bad)?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(bad)?;
    let arguments = match function.get("arguments") {
        None | Some(Value::Null) => json!({}),
        Some(a @ Value::Object(_)) => a.clone(),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(a @ Value::Object(_)) => a,
            _ => return Err(bad()),
        },
        Some(_) => return Err(bad()),
    };
    Ok(ToolCall {
        id: v.get("id").and_then(Value::as_str).map(str::to_string),
        name: name.to_string(),
        arguments,
    })
}

/// A history message with its tool fields.
pub(crate) fn message(
    role: &str,
    content: String,
    calls: Option<&Vec<Value>>,
    tool_call_id: Option<&String>,
    name: Option<&String>,
) -> Result<Message, ApiError> {
    let mut m = Message::new(role, content);
    m.tool_calls = calls
        .map(|c| c.iter().map(history_call).collect())
        .transpose()?
        .unwrap_or_default();
    m.tool_call_id = tool_call_id.cloned();
    m.name = name.cloned();
    Ok(m)
}

/// Splits a reply as it streams: with a format, through [`ToolCallStream`]; without, all
/// text.
pub(crate) struct Splitter(Option<ToolCallStream>);

impl Splitter {
    /// A splitter for replies in `format` (`None`: no tools).
    pub(crate) fn new(format: Option<ToolFormat>) -> Splitter {
        Splitter(format.map(ToolCallStream::new))
    }

    /// The pieces `text` completes.
    pub(crate) fn push(&mut self, text: String) -> Vec<Piece> {
        match &mut self.0 {
            Some(s) => s.push(&text),
            None if text.is_empty() => Vec::new(),
            None => vec![Piece::Text(text)],
        }
    }

    /// The held pieces, at the reply's end.
    pub(crate) fn finish(&mut self) -> Vec<Piece> {
        self.0
            .as_mut()
            .map(ToolCallStream::finish)
            .unwrap_or_default()
    }
}

/// A whole reply's content and calls (all content without a format).
pub(crate) fn split(format: Option<ToolFormat>, reply: &str) -> (String, Vec<ToolCall>) {
    match format {
        Some(f) => hoist_runtime::chat::tools::parse(f, reply),
        None => (reply.to_string(), Vec::new()),
    }
}

/// Ollama's shape of a call: `{"function": {"name", "arguments": {...}}}`.
pub(crate) fn ollama_call(c: &ToolCall) -> Value {
    json!({"function": {"name": c.name, "arguments": c.arguments}})
}

/// The call's id for OpenAI: the model's own, else a fresh `call_…`.
pub(crate) fn call_id(c: &ToolCall) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    c.id.clone().unwrap_or_else(|| {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let t = crate::generation::unix_seconds(std::time::SystemTime::now());
        format!("call_{t:x}{n:04x}")
    })
}

/// OpenAI's shape of a call: `{"id", "type": "function", "function": {"name", "arguments":
/// "<JSON text>"}}`.
pub(crate) fn openai_call(c: &ToolCall, id: &str) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {"name": c.name, "arguments": c.arguments.to_string()},
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hoist_engine::{Completion, Stats, Stop};
    use std::time::{Duration, Instant};

    /// A finished reply with `text`, ended by an end token.
    pub(crate) fn completion(text: &str) -> Completion {
        let now = Instant::now();
        Completion {
            text: text.to_string(),
            tokens: vec![1, 2],
            stats: Stats {
                prompt_tokens: 5,
                cached_tokens: 0,
                generated_tokens: 2,
                prefill: Duration::ZERO,
                decode: Duration::ZERO,
                decode_tokens_per_s: 0.0,
                submitted: now,
                started: now,
                first_token: now,
                finished: now,
                stop: Stop::Eos(2),
            },
        }
    }

    /// Qwen-style output: text, then two calls.
    pub(crate) const HERMES_REPLY: &str = "Checking.\n<tool_call>\n{\"name\": \"weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";

    #[test]
    fn history_calls_in_both_shapes() {
        let ollama = json!({"function": {"name": "f", "arguments": {"a": 1}}});
        let openai = json!({"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}});
        let a = history_call(&ollama).unwrap();
        let b = history_call(&openai).unwrap();
        assert_eq!(a.arguments, b.arguments);
        assert_eq!(b.id.as_deref(), Some("call_9"));
        for bad in [
            json!({"function": {"arguments": {}}}),
            json!({"function": {"name": "f", "arguments": "not json"}}),
            json!({"function": {"name": "f", "arguments": [1]}}),
        ] {
            assert_eq!(history_call(&bad).unwrap_err().status, 400, "{bad}");
        }
        assert!(schemas(Some(&vec![json!({"type": "function"})])).is_err());
    }

    #[test]
    fn tool_choice_forces_a_call_in_every_known_format() {
        let tools = vec![
            json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}),
            json!({"type": "function", "function": {"name": "g", "parameters": {"type": "object", "properties": {"a": {"pattern": "x"}}}}}),
        ];
        let llama = Some(ToolFormat::Llama3Json);
        for choice in [json!("auto"), json!("none"), Value::Null] {
            assert!(forced_call(llama, Some(&choice), &tools).unwrap().is_none());
        }
        assert!(forced_call(llama, Some(&json!("required")), &tools)
            .unwrap()
            .is_some());
        // A parameters schema beyond the subset still forces the call's shape.
        let g = json!({"type": "function", "function": {"name": "g"}});
        assert!(forced_call(llama, Some(&g), &tools).unwrap().is_some());
        let mistral = Some(ToolFormat::Mistral);
        assert!(forced_call(mistral, Some(&json!("required")), &tools)
            .unwrap()
            .is_some());
        let hermes = Some(ToolFormat::Hermes);
        let forced = forced_call(hermes, Some(&json!("required")), &tools).unwrap();
        assert_eq!(
            forced.unwrap().wrapper,
            Some(("<tool_call>\n", "\n</tool_call>"))
        );
        assert!(forced_call(None, Some(&json!("required")), &tools)
            .unwrap()
            .is_none());
        for bad in [
            json!("always"),
            json!({"type": "function", "function": {"name": "h"}}),
            json!(3),
        ] {
            let e = forced_call(llama, Some(&bad), &tools).unwrap_err();
            assert_eq!(e.param, Some("tool_choice"), "{bad}");
        }
        let ok = json!({"type": "function", "function": {"name": "f"}});
        assert_eq!(schemas(Some(&vec![ok])).unwrap().len(), 1);
    }

    #[test]
    fn shapes_of_calls() {
        let (content, calls) = split(Some(ToolFormat::Hermes), HERMES_REPLY);
        assert_eq!(content, "Checking.");
        assert_eq!(
            ollama_call(&calls[0]),
            json!({"function": {"name": "weather", "arguments": {"city": "Paris"}}})
        );
        let id = call_id(&calls[0]);
        assert!(id.starts_with("call_"));
        assert_ne!(id, call_id(&calls[0]), "fresh ids");
        let v = openai_call(&calls[0], &id);
        assert_eq!(v["function"]["arguments"], json!("{\"city\":\"Paris\"}"));
        assert_eq!(v["type"], "function");
        // Without tools, the same text is all content.
        assert_eq!(split(None, HERMES_REPLY).0, HERMES_REPLY);
    }
}
