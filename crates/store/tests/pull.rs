//! Pulls from a fake Ollama registry and a fake Hugging Face hub served on 127.0.0.1, and
//! discovery of fake Hugging Face and Ollama stores.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hoist_store::{ModelFormat, Source, Store, StoreConfig, StoreError};
use sha2::{Digest as _, Sha256};

const GGUF: &str = "../runtime/tests/fixtures/gguf/qwen3-q4_0.gguf";

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// (path, `Range` start) of each request the fake server saw.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A route's body, and whether its first request is cut off halfway.
#[derive(Clone)]
struct Route {
    body: Vec<u8>,
    drop_first: bool,
}

/// A tiny HTTP/1.1 server: GET only, `Range: bytes=N-` honoured, one connection at a time.
struct Server {
    base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    /// (path, Range header) of each request.
    log: RequestLog,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let log: RequestLog = Arc::default();
        let (r, l) = (routes.clone(), log.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or("").to_string();
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = v.trim().trim_end_matches('-').parse::<usize>().ok();
                    }
                }
                l.lock()
                    .unwrap()
                    .push((path.clone(), range.map(|r| r.to_string())));
                let route = r
                    .lock()
                    .unwrap()
                    .get(path.split('?').next().unwrap())
                    .cloned();
                let Some(route) = route else {
                    let _ = conn.write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                };
                let start = range.unwrap_or(0).min(route.body.len());
                let body = &route.body[start..];
                let status = if range.is_some() {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                if route.drop_first {
                    r.lock().unwrap().get_mut(&path).unwrap().drop_first = false;
                    let _ = conn.write_all(&body[..body.len() / 2]);
                    continue; // dropped: the connection closes with half the body sent
                }
                let _ = conn.write_all(body);
            }
        });
        Server { base, routes, log }
    }

    fn route(&self, path: &str, body: Vec<u8>, drop_first: bool) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.into(), Route { body, drop_first });
    }
}

/// A store under `tmp/store` (beside a `tmp/outside` canary directory) pointed at `server`.
fn store(tmp: &Path, server: &Server) -> Store {
    std::fs::create_dir_all(tmp.join("outside")).unwrap();
    Store::open(StoreConfig {
        root: tmp.join("store"),
        hf_cache: Some(tmp.join("hf")),
        ollama_models: Some(tmp.join("ollama")),
        hf_endpoint: server.base.clone(),
        ollama_registry: server.base.clone(),
        hf_token: None,
    })
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            out.extend(tree(&e.path()));
        }
    }
    out.sort();
    out
}

fn ollama_manifest(blobs: &[(&str, &str, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = blobs
        .iter()
        .map(|(mt, d, size)| serde_json::json!({"mediaType": mt, "digest": d, "size": size}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers})).unwrap()
}

const MODEL: &str = "application/vnd.ollama.image.model";

#[test]
fn ollama_pull_resumes_verifies_and_resolves() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path(), &server);
    let gguf = std::fs::read(GGUF).unwrap();
    let digest = format!("sha256:{}", sha(&gguf));
    server.route(
        "/v2/library/tiny/manifests/q4",
        ollama_manifest(&[(MODEL, &digest, gguf.len() as u64)]),
        false,
    );
    server.route(
        &format!("/v2/library/tiny/blobs/{digest}"),
        gguf.clone(),
        true,
    );
    let mut statuses = Vec::new();
    let entry = store
        .pull("tiny:q4", &mut |s| statuses.push(s.status.clone()))
        .unwrap();
    assert_eq!(entry.name, "tiny:q4");
    assert_eq!(entry.source, Source::Hoist);
    assert_eq!(entry.format, ModelFormat::Gguf);
    assert_eq!(std::fs::read(&entry.path).unwrap(), gguf);
    assert!(entry.path.ends_with(format!("blobs/sha256-{}", sha(&gguf))));
    assert_eq!(
        statuses.first().map(String::as_str),
        Some("pulling manifest")
    );
    assert_eq!(statuses.last().map(String::as_str), Some("success"));
    // The dropped connection was resumed from where it stopped.
    let ranges: Vec<_> = server
        .log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(_, r)| r.clone())
        .collect();
    assert_eq!(ranges, vec![(gguf.len() / 2).to_string()]);
    // No partial file is left, and hoist-format opens what resolve finds.
    assert!(tree(tmp.path())
        .iter()
        .all(|p| !p.to_string_lossy().ends_with(".partial")));
    let found = store.resolve("tiny:q4").unwrap();
    hoist_format::TensorTable::open(&found.path).unwrap();
    // cp shares the blob; rm of one name keeps it for the other, rm of both removes it.
    store.copy("tiny:q4", "other").unwrap();
    assert_eq!(store.resolve("other:latest").unwrap().path, found.path);
    store.remove("tiny:q4").unwrap();
    assert!(found.path.is_file());
    store.remove("other").unwrap();
    assert!(!found.path.exists());
    assert!(matches!(
        store.resolve("other"),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn ollama_pull_refuses_wrong_hash_lying_size_and_escapes() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path(), &server);
    let gguf = std::fs::read(GGUF).unwrap();
    let good = format!("sha256:{}", sha(&gguf));
    let wrong = format!("sha256:{}", sha(b"something else"));
    server.route(
        "/v2/library/badhash/manifests/latest",
        ollama_manifest(&[(MODEL, &wrong, gguf.len() as u64)]),
        false,
    );
    server.route(
        &format!("/v2/library/badhash/blobs/{wrong}"),
        gguf.clone(),
        false,
    );
    server.route(
        "/v2/library/liar/manifests/latest",
        ollama_manifest(&[(MODEL, &good, 100)]),
        false,
    );
    server.route(
        &format!("/v2/library/liar/blobs/{good}"),
        gguf.clone(),
        false,
    );
    server.route(
        "/v2/library/escape/manifests/latest",
        ollama_manifest(&[(MODEL, "sha256:../../outside/x", 4)]),
        false,
    );
    let outside_before = tree(&tmp.path().join("outside"));
    let e = store.pull("badhash", &mut |_| {}).unwrap_err();
    assert!(matches!(e, StoreError::Verify { .. }), "{e}");
    let e = store.pull("liar", &mut |_| {}).unwrap_err();
    assert!(matches!(e, StoreError::Verify { .. }), "{e}");
    let e = store.pull("escape", &mut |_| {}).unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }), "{e}");
    for bad in ["../x", "a/../../b:t", "..:latest", "/etc/passwd"] {
        assert!(
            matches!(
                store.pull(bad, &mut |_| {}),
                Err(StoreError::Invalid { .. })
            ),
            "{bad}"
        );
    }
    assert_eq!(tree(&tmp.path().join("outside")), outside_before);
    // Nothing under a final name: no manifests, no blobs, no partial files.
    let left: Vec<PathBuf> = tree(&tmp.path().join("store"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn hf_pull_lands_in_the_hub_layout() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path(), &server);
    let fixture = Path::new("../runtime/tests/fixtures/llama");
    let weights = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let config = std::fs::read(fixture.join("config.json")).unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let listing = serde_json::json!({
        "sha": commit,
        "siblings": [
            {"rfilename": "config.json", "size": config.len(), "blobId": "1".repeat(40)},
            {"rfilename": "model.safetensors", "size": weights.len(), "blobId": "2".repeat(40),
             "lfs": {"sha256": sha(&weights), "size": weights.len()}},
            {"rfilename": "pytorch_model.bin", "size": 3, "blobId": "3".repeat(40)},
        ]
    });
    server.route(
        "/api/models/org/tiny/revision/main",
        serde_json::to_vec(&listing).unwrap(),
        false,
    );
    server.route(
        &format!("/org/tiny/resolve/{commit}/config.json"),
        config.clone(),
        false,
    );
    server.route(
        &format!("/org/tiny/resolve/{commit}/model.safetensors"),
        weights.clone(),
        true,
    );
    let entry = store.pull("org/tiny", &mut |_| {}).unwrap();
    assert_eq!(entry.name, "org/tiny");
    assert_eq!(entry.format, ModelFormat::Safetensors);
    let repo = tmp.path().join("store/hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    let link = repo
        .join("snapshots")
        .join(commit)
        .join("model.safetensors");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("../../blobs").join(sha(&weights))
    );
    assert_eq!(std::fs::read(&link).unwrap(), weights);
    assert!(!repo
        .join("snapshots")
        .join(commit)
        .join("pytorch_model.bin")
        .exists());
    assert_eq!(entry.path, repo.join("snapshots").join(commit));
    hoist_format::TensorTable::open(&entry.path).unwrap();
    // A listing whose file names escape is refused before anything is written.
    let evil = serde_json::json!({"sha": commit, "siblings": [
        {"rfilename": "../../../outside/x", "size": 1, "blobId": "4".repeat(40)}]});
    server.route(
        "/api/models/org/evil/revision/main",
        serde_json::to_vec(&evil).unwrap(),
        false,
    );
    assert!(matches!(
        store.pull("org/evil", &mut |_| {}),
        Err(StoreError::Invalid { .. })
    ));
    assert!(tree(&tmp.path().join("outside")).is_empty());
    store.remove("org/tiny").unwrap();
    assert!(!repo.exists());
}

#[test]
fn discovers_read_only_stores_and_prefers_hoists_own() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path(), &server);
    // A fake Ollama store with one model.
    let gguf = std::fs::read(GGUF).unwrap();
    let hex = sha(&gguf);
    let ollama = tmp.path().join("ollama");
    std::fs::create_dir_all(ollama.join("blobs")).unwrap();
    std::fs::write(ollama.join("blobs").join(format!("sha256-{hex}")), &gguf).unwrap();
    let man = ollama.join("manifests/registry.ollama.ai/library/qwen/tiny");
    std::fs::create_dir_all(man.parent().unwrap()).unwrap();
    std::fs::write(
        &man,
        ollama_manifest(&[(MODEL, &format!("sha256:{hex}"), gguf.len() as u64)]),
    )
    .unwrap();
    // A fake Hugging Face cache with one repository.
    let commit = "a".repeat(40);
    let repo = tmp.path().join("hf/models--org--llama");
    let snap = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            Path::new("../runtime/tests/fixtures/llama").join(f),
            snap.join(f),
        )
        .unwrap();
    }
    let names: Vec<(String, Source)> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.source))
        .collect();
    assert_eq!(
        names,
        vec![
            ("qwen:tiny".into(), Source::Ollama),
            ("org/llama".into(), Source::HuggingFace)
        ]
    );
    assert_eq!(
        store.resolve(&format!("org/llama@{commit}")).unwrap().path,
        snap
    );
    let e = store.resolve("qwen:tiny").unwrap();
    assert!(e.path.starts_with(&ollama));
    let details = hoist_store::describe(&e).unwrap();
    assert_eq!(details.architecture.as_deref(), Some("qwen3"));
    assert!(details.parameters > 0);
    // Read-only sources are refused by rm; cp makes a name in hoist's store.
    assert!(matches!(
        store.remove("qwen:tiny"),
        Err(StoreError::ReadOnly { .. })
    ));
    store.copy("qwen:tiny", "mine").unwrap();
    assert_eq!(store.resolve("mine").unwrap().source, Source::Hoist);
    // hoist's own store wins a name held by two sources.
    store.copy("org/llama", "qwen:tiny").unwrap();
    let e = store.resolve("qwen:tiny").unwrap();
    assert_eq!(
        (e.source, e.format),
        (Source::Hoist, ModelFormat::Safetensors)
    );
    store.remove("qwen:tiny").unwrap();
    assert_eq!(store.resolve("qwen:tiny").unwrap().source, Source::Ollama);
    assert!(man.is_file());
}
