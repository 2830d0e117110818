//! Every endpoint against the tiny CPU fixture: shapes, framing (NDJSON, SSE), text equal to
//! the engine's own for the same greedy request, auth, errors, keep-alive.

mod common;

use common::{config, request, sse, Server};
use hoist_engine::{Device, Engine, EngineOptions, Input, Request};
use hoist_runtime::chat::Message;
use hoist_runtime::placement::Placement;
use hoist_runtime::sampler::SamplingParams;
use serde_json::{json, Value};

const TOKENS: usize = 12;

/// What the engine itself generates greedily for `input`: the text, the reason it ended as the
/// APIs name it, and its token count.
fn engine_text(server: &Server, input: Input) -> (String, &'static str, usize) {
    let options = EngineOptions {
        device: Device::Cpu,
        ..EngineOptions::default()
    };
    let engine = Engine::load(server.dir.path(), Placement::default(), options).unwrap();
    let request = Request::new(input, SamplingParams::default(), TOKENS);
    let c = engine
        .generate(request)
        .unwrap()
        .complete(&mut |_| {})
        .unwrap();
    let reason = hoist_server::generation::finish_reason(&c.stats.stop);
    (c.text, reason, c.stats.generated_tokens)
}

fn greedy() -> Value {
    json!({"temperature": 0, "repeat_penalty": 1.0, "num_predict": TOKENS, "seed": 1})
}

fn ndjson(body: &str) -> Vec<Value> {
    assert!(body.ends_with('\n'), "NDJSON ends with a newline: {body:?}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

#[test]
fn ollama_generate_and_chat_match_the_engine() {
    let server = Server::start(config(4));
    let hello = "Hello there";
    let (expected, reason, count) =
        engine_text(&server, Input::Messages(vec![Message::new("user", hello)]));
    assert!(!expected.is_empty());

    let r = server.post(
        "/api/generate",
        &json!({"model": "tiny", "prompt": hello, "stream": false, "options": greedy()}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["response"], expected.as_str());
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], reason);
    assert_eq!(v["eval_count"], count);
    for key in [
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_duration",
    ] {
        assert!(v[key].as_u64().is_some(), "{key} in {v}");
    }
    assert!(v["total_duration"].as_u64().unwrap() >= v["eval_duration"].as_u64().unwrap());
    assert!(
        v["load_duration"].as_u64().unwrap() > 0,
        "this request loaded the model"
    );

    // Streamed (the default): NDJSON lines whose pieces make the same text.
    let r = server.post(
        "/api/generate",
        &json!({"model": "tiny", "prompt": hello, "options": greedy()}),
    );
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines = ndjson(&r.body);
    assert!(lines.len() >= 2, "a text line and the last");
    let text: String = lines
        .iter()
        .map(|l| l["response"].as_str().unwrap())
        .collect();
    assert_eq!(text, expected);
    let (last, rest) = lines.split_last().unwrap();
    assert!(rest.iter().all(|l| l["done"] == false));
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], reason);

    // Chat: the same conversation, streamed and not.
    let messages = json!([{"role": "user", "content": hello}]);
    let r = server.post(
        "/api/chat",
        &json!({"model": "tiny:latest", "messages": messages, "stream": false, "options": greedy()}),
    );
    let v = r.json();
    assert_eq!(v["load_duration"], 0, "the model was loaded already");
    assert_eq!(v["message"]["role"], "assistant");
    assert_eq!(v["message"]["content"], expected.as_str());
    let r = server.post(
        "/api/chat",
        &json!({"model": "tiny", "messages": messages, "options": greedy()}),
    );
    let text: String = ndjson(&r.body)
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, expected);
}

#[test]
fn openai_chat_and_completions_match_the_engine() {
    let server = Server::start(config(4));
    let hello = "Tell me";
    let (expected, reason, count) =
        engine_text(&server, Input::Messages(vec![Message::new("user", hello)]));
    let body = json!({
        "model": "tiny", "messages": [{"role": "user", "content": hello}],
        "temperature": 0, "max_tokens": TOKENS,
    });
    let r = server.post("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], expected.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], reason);
    assert_eq!(v["usage"]["completion_tokens"], count);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let r = server.post("/v1/chat/completions", &streamed);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let frames = sse(&r.body);
    assert_eq!(frames[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = frames.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], count);
    let finish = &frames[frames.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], reason);
    let text: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected);
    assert!(frames[..frames.len() - 2]
        .iter()
        .all(|f| f["choices"][0]["finish_reason"].is_null()));

    // Completions continue raw text.
    let (expected, _, _) = engine_text(&server, Input::Text("Once upon".into()));
    let body =
        json!({"model": "tiny", "prompt": "Once upon", "temperature": 0, "max_tokens": TOKENS});
    let v = server.post("/v1/completions", &body).json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], expected.as_str());
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let frames = sse(&server.post("/v1/completions", &streamed).body);
    let text: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, expected);
    assert!(
        frames.iter().all(|f| f.get("usage").is_none()),
        "no usage unless asked"
    );
}

#[test]
fn model_management_endpoints() {
    let server = Server::start(config(4));
    let r = server.get("/");
    assert_eq!((r.status, r.body.as_str()), (200, "Ollama is running"));
    assert_eq!(request(server.addr, "HEAD", "/", None, &[]).status, 200);
    assert!(server.get("/api/version").json()["version"].is_string());

    let tags = server.get("/api/tags").json();
    assert_eq!(tags["models"][0]["name"], "tiny:latest");
    assert!(tags["models"][0]["size"].as_u64().unwrap() > 0);
    assert_eq!(tags["models"][0]["details"]["family"], "llama");

    let show = server.post("/api/show", &json!({"model": "tiny"})).json();
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert_eq!(show["model_info"]["llama.context_length"], 256);

    assert_eq!(server.get("/api/ps").json()["models"], json!([]));
    let r = server.post("/api/generate", &json!({"model": "tiny"}));
    assert_eq!(r.json()["done_reason"], "load");
    let ps = server.get("/api/ps").json();
    assert_eq!(ps["models"][0]["name"], "tiny:latest");
    assert_eq!(ps["models"][0]["size_vram"], 0);
    assert!(ps["models"][0]["expires_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let r = server.post(
        "/api/copy",
        &json!({"source": "tiny", "destination": "copy:v1"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let models = server.get("/v1/models").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["copy:v1", "tiny:latest"]);
    assert_eq!(server.get("/v1/models/copy:v1").json()["id"], "copy:v1");
    let r = request(
        server.addr,
        "DELETE",
        "/api/delete",
        Some(&json!({"model": "copy:v1"})),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(
        server.addr,
        "DELETE",
        "/api/delete",
        Some(&json!({"model": "copy:v1"})),
        &[],
    );
    assert_eq!(r.status, 404);

    // No store behind this server: a pull is refused, as is embedding.
    let r = server.post("/api/pull", &json!({"model": "other"}));
    assert_eq!(r.status, 501);
    assert!(r.json()["error"].as_str().unwrap().contains("cannot pull"));
    let r = server.post("/api/embed", &json!({"model": "tiny", "input": "x"}));
    assert_eq!(r.status, 501);
}

#[test]
fn errors_have_each_apis_shape() {
    let server = Server::start(config(4));
    let r = server.post(
        "/api/chat",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("'nope:latest' not found"));
    let r = server.post(
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(r.status, 404);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "model_not_found");
    assert!(e["message"].is_string() && e.get("type").is_some() && e.get("param").is_some());
    assert_eq!(server.get("/v1/models/nope").status, 404);

    // Tools on a model whose template never reads them: refused, naming the field.
    let msgs = json!([{"role": "user", "content": "x"}]);
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {}}});
    for path in ["/api/chat", "/v1/chat/completions"] {
        let body = json!({"model": "tiny", "messages": msgs, "tools": [tool]});
        let r = server.post(path, &body);
        assert_eq!(r.status, 400, "{path} {body}");
        assert!(
            r.body.contains("does not support tools") && r.body.contains("tools"),
            "{}",
            r.body
        );
    }
    // A prompt beyond the context (256 positions).
    let long = "word ".repeat(400);
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": long}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let r = server.post(
        "/api/generate",
        &json!({"model": "tiny", "prompt": "x", "keep_alive": "soon"}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn api_key_guards_every_route_but_root() {
    let mut c = config(4);
    c.api_key = Some("s3cret".into());
    let server = Server::start(c);
    assert_eq!(server.get("/").status, 200);
    let r = server.get("/api/tags");
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].is_string());
    let r = request(
        server.addr,
        "GET",
        "/v1/models",
        None,
        &[("Authorization", "Bearer wrong")],
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    let r = request(
        server.addr,
        "GET",
        "/v1/models",
        None,
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn keep_alive_zero_unloads_after_the_request() {
    let server = Server::start(config(4));
    let r = server.post(
        "/api/generate",
        &json!({"model": "tiny", "prompt": "hi", "stream": false, "keep_alive": 0, "options": greedy()}),
    );
    assert_eq!(r.status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.get("/api/ps").json()["models"] != json!([]) {
        assert!(std::time::Instant::now() < deadline, "still loaded");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Loaded again, then unloaded on request.
    server.post("/api/generate", &json!({"model": "tiny", "keep_alive": -1}));
    assert_eq!(
        server.get("/api/ps").json()["models"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = server.post("/api/generate", &json!({"model": "tiny", "keep_alive": 0}));
    assert_eq!(r.json()["done_reason"], "unload");
    assert_eq!(server.get("/api/ps").json()["models"], json!([]));
}

#[test]
fn bodies_beyond_the_limit_are_refused() {
    let mut c = config(4);
    c.body_limit_bytes = 1024;
    let server = Server::start(c);
    let big = "x".repeat(2048);
    let r = server.post("/api/generate", &json!({"model": "tiny", "prompt": big}));
    assert_eq!(r.status, 413, "{}", r.body);
    let r = server.post("/v1/completions", &json!({"model": "tiny", "prompt": big}));
    assert_eq!(r.status, 413, "{}", r.body);
    let r = server.post("/api/show", &json!({"model": "tiny"}));
    assert_eq!(r.status, 200, "small bodies still pass");
}
