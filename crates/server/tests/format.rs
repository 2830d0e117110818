//! Constrained decoding through both APIs on the tiny random CPU fixture: with Ollama's
//! `format` or OpenAI's `response_format` the reply parses as JSON (and matches the schema);
//! without, for the same request and seed, it does not, so the constraint is what makes it
//! valid. The seeds are ones whose constrained reply completes within the token budget (a
//! random model rarely closes a string): the replies are deterministic on the CPU.

mod common;

use common::{config, Server};
use serde_json::{json, Value};

const PROMPT: &str = "Give me JSON.";

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "ok": {"type": "boolean"},
            "n": {"type": "integer"},
        },
        "required": ["ok", "n"],
    })
}

/// Whether `v` matches [`schema`] (only declared keys, the required ones, the types).
fn matches_schema(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    o.keys().all(|k| ["name", "ok", "n"].contains(&k.as_str()))
        && o.get("ok").is_some_and(Value::is_boolean)
        && o.get("n").is_some_and(|n| n.is_i64() || n.is_u64())
        && o.get("name").is_none_or(Value::is_string)
}

fn parses(text: &str) -> Option<Value> {
    serde_json::from_str(text).ok()
}

/// `/api/chat` (or `/api/generate`, the same conversation) with `format`: the reason it ended
/// and the text.
fn ollama(server: &Server, path: &str, format: Option<Value>, seed: u64) -> (String, String) {
    let mut body = json!({
        "model": "tiny", "stream": false,
        "options": {"temperature": 0.7, "seed": seed, "num_predict": 200},
    });
    if path == "/api/chat" {
        body["messages"] = json!([{"role": "user", "content": PROMPT}]);
    } else {
        body["prompt"] = json!(PROMPT);
    }
    if let Some(f) = format {
        body["format"] = f;
    }
    let r = server.post(path, &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let text = match path {
        "/api/chat" => &v["message"]["content"],
        _ => &v["response"],
    };
    (
        v["done_reason"].as_str().unwrap_or_default().into(),
        text.as_str().unwrap_or_default().into(),
    )
}

/// `/v1/chat/completions` with `response_format`.
fn openai(server: &Server, format: Option<Value>, seed: u64) -> (String, String) {
    let mut body = json!({
        "model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0.7, "seed": seed, "max_tokens": 200,
    });
    if let Some(f) = format {
        body["response_format"] = f;
    }
    let r = server.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.json()["choices"][0];
    (
        c["finish_reason"].as_str().unwrap_or_default().into(),
        c["message"]["content"].as_str().unwrap_or_default().into(),
    )
}

#[test]
fn ollama_format_json_and_schema() {
    let server = Server::start(config(4));
    let (reason, free) = ollama(&server, "/api/chat", None, 1);
    assert!(parses(&free).is_none(), "{reason}: {free:?}");
    let (reason, text) = ollama(&server, "/api/chat", Some(json!("json")), 1);
    assert_eq!(reason, "stop", "{text:?}");
    assert!(parses(&text).is_some(), "{text:?}");

    let (reason, free) = ollama(&server, "/api/generate", None, 2);
    assert!(parses(&free).is_none(), "{reason}: {free:?}");
    let (reason, text) = ollama(&server, "/api/generate", Some(schema()), 2);
    assert_eq!(reason, "stop", "{text:?}");
    let v = parses(&text).unwrap_or_else(|| panic!("not JSON: {text:?}"));
    assert!(matches_schema(&v), "{v}");

    // Streamed, the same reply.
    let body = json!({
        "model": "tiny", "prompt": PROMPT, "format": schema(),
        "options": {"temperature": 0.7, "seed": 2, "num_predict": 200},
    });
    let r = server.post("/api/generate", &body);
    let streamed: String = r
        .body
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["response"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(streamed, text);
}

#[test]
fn openai_response_format_json_object_and_schema() {
    let server = Server::start(config(4));
    let (reason, free) = openai(&server, None, 2);
    assert!(parses(&free).is_none(), "{reason}: {free:?}");
    let (reason, text) = openai(&server, Some(json!({"type": "json_object"})), 2);
    assert_eq!(reason, "stop", "{text:?}");
    assert!(parses(&text).is_some_and(|v| v.is_object()), "{text:?}");
    let format = json!({"type": "json_schema", "json_schema": {"name": "thing", "strict": true, "schema": schema()}});
    let (reason, text) = openai(&server, Some(format), 2);
    assert_eq!(reason, "stop", "{text:?}");
    let v = parses(&text).unwrap_or_else(|| panic!("not JSON: {text:?}"));
    assert!(matches_schema(&v), "{v}");
    // `text` is free text.
    let (_, same) = openai(&server, Some(json!({"type": "text"})), 2);
    assert_eq!(same, free);
}

#[test]
fn bad_formats_are_400_naming_the_keyword() {
    let server = Server::start(config(4));
    let msgs = json!([{"role": "user", "content": "x"}]);
    let pattern =
        json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}});
    for (path, body, needle) in [
        (
            "/api/generate",
            json!({"model": "tiny", "prompt": "x", "format": pattern}),
            "pattern",
        ),
        (
            "/api/chat",
            json!({"model": "tiny", "messages": msgs, "format": "yaml"}),
            "format",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "response_format":
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"anyOf": []}}}}),
            "anyOf",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "response_format": {"type": "xml"}}),
            "response_format",
        ),
    ] {
        let r = server.post(path, &body);
        assert_eq!(r.status, 400, "{path} {body}");
        assert!(r.body.contains(needle), "{}", r.body);
        if path.starts_with("/v1") {
            let e = &r.json()["error"];
            assert_eq!(e["param"], "response_format", "{e}");
        }
    }
}
