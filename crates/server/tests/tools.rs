//! Tool calling end to end on the tiny random CPU fixture: a model whose chat template never
//! reads `tools` refuses them with a 400 on both APIs; with a Hermes-style template the tools
//! and the history's calls and results are rendered (the prompt grows by the schema) and the
//! request answers 200, streamed or not. A random model does not write calls by itself: the
//! parsing of replies into calls is tested on fixed outputs in the crate's unit tests
//! (`tools`, `ollama`, `openai`), through the same code that builds these responses.

mod common;

use std::sync::Arc;

use common::{config, sse, Server};
use hoist_server::{Models, StaticModels};
use serde_json::{json, Value};

/// A Hermes-style template, terse (the fixture's context holds 256 positions): schemas first,
/// calls as `<tool_call>` blocks, results as their own turns.
const HERMES: &str = r#"{%- if tools %}{{ tools | tojson }}
{% endif %}
{%- for m in messages %}
{%- if m.tool_calls %}a:{% for tc in m.tool_calls %}<tool_call>{{ tc.function | tojson }}</tool_call>{% endfor %}
{% elif m.role == 'tool' %}r:{{ m.content }}
{% else %}{{ m.role[0] }}:{{ m.content }}
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}a:{% endif %}"#;

fn weather_tool() -> Value {
    // Small: the fixture's context holds 256 positions.
    json!({"type": "function", "function": {"name": "w", "parameters": {}}})
}

/// A Llama 3.1-style template, terse: the whole reply is the call's JSON (after
/// `<|python_tag|>`, which the fixture's tokenizer does not have).
const LLAMA3: &str = r#"{%- if tools %}{{ tools | tojson }}
{% endif %}
{%- for m in messages %}{{ m.role[0] }}:{{ m.content }}
{% endfor %}
{%- if add_generation_prompt %}a:{% endif %}
{#- <|python_tag|> #}"#;

/// The fixture model with `template` as its chat template.
fn server_with(template: &str) -> Server {
    let dir = common::model_dir();
    let path = dir.path().join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["chat_template"] = json!(template);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let models: Arc<dyn Models> = Arc::new(StaticModels::new([(
        "tiny".to_string(),
        dir.path().to_path_buf(),
    )]));
    Server::start_with(models, dir, config(4))
}

#[test]
fn a_template_without_tools_refuses_them() {
    let server = Server::start(config(4));
    let msgs = json!([{"role": "user", "content": "weather?"}]);
    for path in ["/api/chat", "/v1/chat/completions"] {
        let body =
            json!({"model": "tiny", "messages": msgs, "tools": [weather_tool()], "stream": false});
        let r = server.post(path, &body);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(
            r.body
                .contains("this model's chat template does not support tools"),
            "{}",
            r.body
        );
        // Without tools, the same request is fine.
        let r = server.post(
            path,
            &json!({"model": "tiny", "messages": msgs, "stream": false, "max_tokens": 2, "options": {"num_predict": 2}}),
        );
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    let r = server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": msgs, "tools": [weather_tool()]}),
    );
    assert_eq!(r.json()["error"]["param"], "tools");
    // A malformed schema is refused before the model is asked (on a template that takes tools,
    // so that the refusal is the schema's).
    let server = server_with(HERMES);
    let r = server.post(
        "/api/chat",
        &json!({"model": "tiny", "messages": msgs, "tools": [{"type": "function"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("each of `tools` must be"), "{}", r.body);
}

#[test]
fn a_hermes_template_renders_tools_and_history() {
    let server = server_with(HERMES);
    let history = json!([
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "w", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "w"},
    ]);
    let ollama = |tools: bool, stream: bool| {
        let mut body = json!({
            "model": "tiny", "messages": history, "stream": stream,
            "options": {"num_predict": 4, "seed": 1, "temperature": 0},
        });
        if tools {
            body["tools"] = json!([weather_tool()]);
        }
        let r = server.post("/api/chat", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        r
    };
    let with = ollama(true, false).json();
    let without = ollama(false, false).json();
    assert_eq!(with["done"], true);
    assert!(with["message"]["content"].is_string());
    let (a, b) = (
        with["prompt_eval_count"].as_u64().unwrap(),
        without["prompt_eval_count"].as_u64().unwrap(),
    );
    assert!(a > b + 10, "the schema is in the prompt: {a} vs {b} tokens");
    // The history's call is rendered too: without it the prompt is shorter.
    let mut bare = history.clone();
    bare[1] = json!({"role": "assistant", "content": ""});
    let r = server.post(
        "/api/chat",
        &json!({"model": "tiny", "messages": bare, "tools": [weather_tool()], "stream": false,
                "options": {"num_predict": 1}}),
    );
    let c = r.json()["prompt_eval_count"].as_u64().unwrap();
    assert!(a > c + 10, "the call is in the prompt: {a} vs {c} tokens");

    // Streamed: NDJSON lines ending with done.
    let streamed = ollama(true, true);
    let lines: Vec<Value> = streamed
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["prompt_eval_count"].as_u64(), Some(a));

    // OpenAI's history shape: arguments as a JSON string, results by call id.
    let messages = json!([
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "w", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]);
    for stream in [false, true] {
        let r = server.post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": messages, "tools": [weather_tool()],
                    "max_tokens": 4, "seed": 1, "stream": stream,
                    "stream_options": {"include_usage": true}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let usage = if stream {
            assert!(r.body.ends_with("data: [DONE]\n\n"));
            sse(&r.body).last().unwrap()["usage"].clone()
        } else {
            let v = r.json();
            assert!(v["choices"][0]["finish_reason"].is_string());
            v["usage"].clone()
        };
        assert_eq!(usage["prompt_tokens"].as_u64(), Some(a), "same prompt");
    }
    // Arguments that are not JSON are the client's fault.
    let r = server.post(
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "messages", "{}", r.body);
}

/// A chat request forcing a call by `choice` of the one tool `w` (no parameters), sampled
/// with `seed`; and a check that its non-streamed reply is exactly that call.
fn forced_request(choice: Value, seed: u64) -> impl Fn(bool) -> Value {
    let tool = json!({"type": "function", "function": {"name": "w",
        "parameters": {"type": "object", "properties": {}}}});
    move |stream: bool| {
        json!({"model": "tiny", "messages": [{"role": "user", "content": "Paris?"}],
               "tools": [tool], "tool_choice": choice, "max_tokens": 150, "seed": seed,
               "temperature": 0.7, "stream": stream})
    }
}

/// The non-streamed reply `v` is the one call `w` with no arguments.
fn assert_one_empty_call(v: &Value) {
    let choice0 = &v["choices"][0];
    assert_eq!(choice0["finish_reason"], "tool_calls", "{v}");
    assert!(choice0["message"]["content"].is_null(), "{v}");
    let call = &choice0["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "w", "{v}");
    assert_eq!(call["function"]["arguments"], "{}", "{v}");
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{v}");
}

/// `tool_choice` naming a function whose arguments are fixed (`{}`) forces the reply into the
/// call, whole: the random model's constrained reply comes back as a call through each API's
/// response path, streamed or not.
#[test]
fn tool_choice_forces_a_call_in_a_json_format() {
    let server = server_with(LLAMA3);
    let body = forced_request(json!({"type": "function", "function": {"name": "w"}}), 3);
    let r = server.post("/v1/chat/completions", &body(false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_one_empty_call(&r.json());

    let r = server.post("/v1/chat/completions", &body(true));
    assert_eq!(r.status, 200, "{}", r.body);
    let frames = sse(&r.body);
    let deltas: Vec<&Value> = frames.iter().map(|f| &f["choices"][0]["delta"]).collect();
    assert!(
        deltas
            .iter()
            .all(|d| d.get("content").is_none_or(|c| c == "")),
        "no call text as content: {}",
        r.body
    );
    let named: Vec<&Value> = deltas
        .iter()
        .filter_map(|d| d["tool_calls"][0]["function"]["name"].as_str().map(|_| *d))
        .collect();
    assert_eq!(named.len(), 1, "{}", r.body);
    assert_eq!(named[0]["tool_calls"][0]["index"], 0);
    assert_eq!(
        frames.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // A choice naming no tool is the client's fault.
    let mut bad = body(false);
    bad["tool_choice"] = json!({"type": "function", "function": {"name": "nope"}});
    let r = server.post("/v1/chat/completions", &bad);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "tool_choice");
}

/// A Hermes call is forced too: its opening tag is written for the model after the prompt,
/// the call's JSON generated under the grammar, the closing tag added once it is complete; the
/// reply comes back as the call through both response paths.
#[test]
fn tool_choice_forces_a_hermes_call() {
    let server = server_with(HERMES);
    let body = forced_request(json!("required"), 5);
    let r = server.post("/v1/chat/completions", &body(false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_one_empty_call(&v);
    // The opening tag went to the model with the prompt.
    let mut auto = body(false);
    auto["tool_choice"] = json!("auto");
    let prompt = |v: Value| v["usage"]["prompt_tokens"].as_u64().unwrap();
    let plain = prompt(server.post("/v1/chat/completions", &auto).json());
    assert!(prompt(v.clone()) > plain, "{v}");

    let r = server.post("/v1/chat/completions", &body(true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        !r.body.contains("tool_call>"),
        "tags never reach the client: {}",
        r.body
    );
    assert!(r.body.contains("\"tool_calls\""), "{}", r.body);
    assert!(
        r.body.contains("\"finish_reason\":\"tool_calls\""),
        "{}",
        r.body
    );
}
