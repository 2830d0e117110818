//! The model store as the server's model source: a Hugging Face cache holding the fixture is
//! listed, shown and served by its store name; the store's refusals keep their meaning.

mod common;

use std::sync::Arc;

use common::{config, request, Server};
use hoist_store::{Store, StoreConfig};
use serde_json::json;

/// A store whose Hugging Face cache holds the fixture as `test/tiny` (ref `main`).
fn store_with_fixture() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo = dir.path().join("hub/models--test--tiny");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    hoist_testkit::models::copy_chat_model(&snapshot).unwrap();
    let store = Store::open(StoreConfig {
        root: dir.path().join("hoist"),
        hf_cache: Some(dir.path().join("hub")),
        ollama_models: None,
        hf_endpoint: "http://127.0.0.1:9".into(),
        ollama_registry: "http://127.0.0.1:9".into(),
        hf_token: None,
    });
    (store, dir)
}

#[test]
fn store_models_are_listed_shown_and_served() {
    let (store, dir) = store_with_fixture();
    let server = Server::start_with(Arc::new(store), dir, config(2));
    let tags = server.get("/api/tags").json();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{tags}");
    let name = models[0]["name"].as_str().unwrap().to_string();
    assert!(name.contains("test/tiny"), "{name}");
    assert!(models[0]["size"].as_u64().unwrap() > 0);

    let show = server.post("/api/show", &json!({"model": name}));
    assert_eq!(show.status, 200, "{}", show.body);
    let show = show.json();
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert!(
        show["model_info"]["general.parameter_count"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(show["details"]["format"], "safetensors");

    let r = server.post(
        "/v1/chat/completions",
        &json!({"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], name.as_str());

    // The Hugging Face cache is read-only to hoist: a delete is refused, the model stays.
    let r = request(
        server.addr,
        "DELETE",
        "/api/delete",
        Some(&json!({"model": name})),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        server.get("/api/tags").json()["models"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = server.post("/api/show", &json!({"model": "test/absent"}));
    assert_eq!(r.status, 404, "{}", r.body);
}
