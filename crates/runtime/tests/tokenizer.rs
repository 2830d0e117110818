//! Tokenizers against the reference encodings made by the Python `tokenizers` package
//! (`tests/fixtures/tokenizer/`), the same tokenizer rebuilt from GGUF metadata, a
//! SentencePiece-style GGUF vocabulary, streaming detokenization, and chat templates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hoist_format::{MetaValue, TensorTable};
use hoist_runtime::chat::{ChatTemplate, Message};
use hoist_runtime::tokenizer::{TextStream, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> Vec<(String, Vec<u32>)> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer/reference.json")).unwrap(),
    )
    .unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap();
            (
                c["text"].as_str().unwrap().to_string(),
                ids.iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            )
        })
        .collect()
}

#[test]
fn tokenizer_json_matches_python() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    for (text, ids) in cases() {
        assert_eq!(tok.encode(&text, false).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn tokenizer_config_gives_special_tokens_and_template() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let (begin, end) = (tok.token_to_id("<|begin|>"), tok.token_to_id("<|end|>"));
    assert_eq!(tok.bos(), begin);
    assert!(tok.eos().contains(&end.unwrap()));
    // A tokenizer.json's post-processor adds its special tokens itself.
    assert!(!tok.adds_bos());
    let t = ChatTemplate::for_tokenizer(&tok, "tokenizer_config.json chat_template")
        .unwrap()
        .unwrap();
    let text = t.render(&[Message::new("user", " hi\n")], true).unwrap();
    assert_eq!(text, "<|begin|><|user|>hi<|end|><|assistant|>");
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(
        ids[..2],
        [begin.unwrap(), tok.token_to_id("<|user|>").unwrap()]
    );
}

#[test]
fn gguf_gpt2_tokenizer_matches_python() {
    let path = fixtures().join("gguf/llama-q8_0.gguf");
    let table = TensorTable::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&table.metadata, &path).unwrap();
    for (text, ids) in cases() {
        assert_eq!(tok.encode(&text, false).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    // add_bos_token = true in the file.
    assert!(tok.adds_bos());
    let with = tok.encode("Hello", true).unwrap();
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &tok.encode("Hello", false).unwrap()[..]);
    assert_eq!((tok.bos(), tok.eos()), (Some(1), &[2][..]));
    // Special tokens are left out when asked.
    let ids = tok.encode("<|user|>hi<|end|>", false).unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "hi");

    // The chat template stored in the file renders with the file's special tokens.
    let t = ChatTemplate::new(
        tok.chat_template().unwrap(),
        "llama-q8_0.gguf tokenizer.chat_template",
        "",
        "<|end|>",
    )
    .unwrap();
    let text = t.render(&[Message::new("user", " hi ")], true).unwrap();
    assert_eq!(text, "<|user|>hi<|end|><|assistant|>");
    let ids = tok.encode(&text, false).unwrap();
    assert_eq!(ids[0], tok.token_to_id("<|user|>").unwrap());
    assert_eq!(
        *ids.last().unwrap(),
        tok.token_to_id("<|assistant|>").unwrap()
    );
}

/// A SentencePiece-style vocabulary: `<unk>`, `<s>`, `</s>`, 256 byte tokens, then pieces.
fn spm_meta() -> BTreeMap<String, MetaValue> {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i64, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "ll", "▁he", "llo", "▁hello", "▁w", "or",
        "▁wor", "ld", "▁world", "▁hell",
    ];
    let mut scores = vec![0.0f64; tokens.len()];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        // Longer pieces made later in training have lower scores, as in SentencePiece.
        scores.push(-(i as f64));
    }
    let s = |v: &str| MetaValue::String(v.into());
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), s("llama"));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        MetaValue::Array(tokens.iter().map(|t| s(t)).collect()),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        MetaValue::Array(scores.into_iter().map(MetaValue::F64).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        MetaValue::Array(types.into_iter().map(MetaValue::I64).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), MetaValue::U64(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), MetaValue::U64(2));
    m.insert("tokenizer.ggml.unknown_token_id".into(), MetaValue::U64(0));
    m
}

#[test]
fn gguf_sentencepiece_tokenizer() {
    let tok = Tokenizer::from_gguf(&spm_meta(), Path::new("spm.gguf")).unwrap();
    let id = |t: &str| tok.token_to_id(t).unwrap();
    let pieces = |text: &str| -> Vec<String> {
        tok.encode(text, false)
            .unwrap()
            .iter()
            .map(|&i| tok.id_to_token(i).unwrap())
            .collect()
    };
    assert_eq!(pieces("hello world"), ["▁hello", "▁world"]);
    // é is not a piece: its UTF-8 bytes are.
    assert_eq!(pieces("hello é"), ["▁hello", "▁", "<0xC3>", "<0xA9>"]);
    // "hell" is a piece too, but "▁hello" outranks the split "▁hell" + "o".
    assert_eq!(pieces("hellow"), ["▁hello", "w"]);
    // add_bos defaults to true for llama-style GGUF tokenizers; <s> in text is the control token.
    let ids = tok.encode("hello", true).unwrap();
    assert_eq!(ids, vec![1, id("▁hello")]);
    assert_eq!(tok.encode("<s>hello", false).unwrap(), ids);
    for text in ["hello world", "hello é", "  two  spaces", "wörld"] {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
}

#[test]
fn gguf_tokenizer_errors_name_the_key() {
    let mut m = spm_meta();
    m.insert(
        "tokenizer.ggml.model".into(),
        MetaValue::String("rwkv".into()),
    );
    let e = Tokenizer::from_gguf(&m, Path::new("x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.gguf") && e.contains("tokenizer.ggml.model") && e.contains("rwkv"),
        "{e}"
    );
    let mut m = spm_meta();
    m.remove("tokenizer.ggml.scores");
    let e = Tokenizer::from_gguf(&m, Path::new("x.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("tokenizer.ggml.scores") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn streaming_holds_back_partial_characters() {
    let tok = Tokenizer::from_hf_dir(&fixtures().join("tokenizer")).unwrap();
    let text = "café 日本語 🙂 done";
    let ids = tok.encode(text, false).unwrap();
    let mut stream = TextStream::new();
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        match stream.push(&tok, id).unwrap() {
            Some(piece) => {
                assert!(
                    !piece.contains('\u{fffd}'),
                    "partial character leaked: {piece:?}"
                );
                out.push_str(&piece);
            }
            None => held += 1,
        }
    }
    assert_eq!(out, text);
    assert!(
        held > 0,
        "the emoji's bytes come as several tokens, some held back"
    );
}
