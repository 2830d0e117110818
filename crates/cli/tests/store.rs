//! `hoist list|show|rm|cp` and `hoist run NAME` through the binary, with the store's
//! directories pointed at temporary ones.

use std::path::Path;
use std::process::{Command, Output};

use sha2::{Digest as _, Sha256};

const GGUF: &str = "../runtime/tests/fixtures/gguf/qwen3-q4_0.gguf";

/// Runs hoist with HOIST_MODELS, HF_HOME and OLLAMA_MODELS under `tmp`.
fn hoist(tmp: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .env("HOIST_MODELS", tmp.join("store"))
        .env("HF_HOME", tmp.join("hf"))
        .env_remove("HF_HUB_CACHE")
        .env("OLLAMA_MODELS", tmp.join("ollama"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A fake Ollama store holding the qwen3 fixture as `qwen:tiny`.
fn ollama_store(tmp: &Path) {
    let gguf = std::fs::read(GGUF).unwrap();
    let hex: String = Sha256::digest(&gguf)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = tmp.join("ollama");
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join(format!("blobs/sha256-{hex}")), &gguf).unwrap();
    let man = root.join("manifests/registry.ollama.ai/library/qwen/tiny");
    std::fs::create_dir_all(man.parent().unwrap()).unwrap();
    let json = serde_json::json!({"schemaVersion": 2, "layers": [{
        "mediaType": "application/vnd.ollama.image.model",
        "digest": format!("sha256:{hex}"), "size": gguf.len()}]});
    std::fs::write(man, serde_json::to_vec(&json).unwrap()).unwrap();
}

/// A fake Hugging Face cache holding the llama fixture and its tokenizer as `org/llama`.
fn hf_store(tmp: &Path) {
    let commit = "a".repeat(40);
    let repo = tmp.join("hf/hub/models--org--llama");
    let snap = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    let f = Path::new("../runtime/tests/fixtures");
    for src in [
        "llama/config.json",
        "llama/model.safetensors",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    ] {
        std::fs::copy(f.join(src), snap.join(Path::new(src).file_name().unwrap())).unwrap();
    }
}

#[test]
fn list_show_cp_rm_and_run_a_store_name() {
    let tmp = tempfile::tempdir().unwrap();
    ollama_store(tmp.path());
    hf_store(tmp.path());
    let o = hoist(tmp.path(), &["list"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("qwen:tiny") && text(&o).contains("ollama"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("org/llama") && text(&o).contains("huggingface"),
        "{}",
        text(&o)
    );

    let o = hoist(tmp.path(), &["show", "qwen:tiny", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["architecture"], "qwen3");
    assert!(v["parameters"].as_u64().unwrap() > 0);

    let o = hoist(tmp.path(), &["rm", "qwen:tiny"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("only reads"), "{}", text(&o));

    let o = hoist(tmp.path(), &["cp", "org/llama", "mine"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = hoist(
        tmp.path(),
        &[
            "run",
            "mine",
            "--device",
            "cpu",
            "--prompt",
            "hi",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = hoist(tmp.path(), &["rm", "mine"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = hoist(
        tmp.path(),
        &["run", "mine", "--device", "cpu", "--prompt", "hi"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("no model named 'mine'"), "{}", text(&o));
    let o = hoist(tmp.path(), &["show", "../../etc/passwd:x"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not a valid"), "{}", text(&o));
}
