//! Agreement with independent writers: files written by Python's `safetensors` and `gguf`
//! packages (tests/py_agree.py) must parse to the tensors those writers were given, with byte
//! ranges whose file contents are exactly the tensors' bytes.

mod common;

use std::path::Path;

use common::python::{python_with, run_script};
use hoist_format::{FileFormat, MetaValue, TensorTable};
use serde_json::Value;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn tables_agree_with_python_writers() {
    let Some(py) = python_with(&["safetensors", "numpy", "gguf"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py_agree.py");
    let report: Value = serde_json::from_slice(&run_script(py, &script, &[dir.path()])).unwrap();
    let mut checked = 0;
    for file in report.as_array().unwrap() {
        let path = file["path"].as_str().unwrap();
        let table = TensorTable::open(path).unwrap_or_else(|e| panic!("{e}"));
        let want = file["tensors"].as_array().unwrap();
        assert_eq!(table.tensors.len(), want.len(), "{path}: tensor count");
        assert!(table.skipped.is_empty());
        for w in want {
            let name = w["name"].as_str().unwrap();
            let t = table
                .get(name)
                .unwrap_or_else(|| panic!("{path}: no tensor {name}"));
            assert_eq!(
                t.dtype.name(),
                w["dtype"].as_str().unwrap(),
                "{name}: dtype"
            );
            let shape: Vec<u64> = w["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.shape, shape, "{name}: shape");
            let bytes = std::fs::read(&table.files[t.file].path).unwrap();
            let range = &bytes[t.offset as usize..t.end() as usize];
            assert_eq!(
                hex(range),
                w["hex"].as_str().unwrap(),
                "{name}: bytes at [{}, {})",
                t.offset,
                t.end()
            );
            if let Some(r) = w.get("reader_range") {
                assert_eq!(
                    [t.offset, t.len],
                    [r[0].as_u64().unwrap(), r[1].as_u64().unwrap()],
                    "{name}: GGUFReader range"
                );
            }
            checked += 1;
        }
        match file["kind"].as_str().unwrap() {
            "gguf" => {
                assert_eq!(
                    table.files[0].format,
                    FileFormat::Gguf {
                        version: 3,
                        alignment: 64
                    }
                );
                assert_eq!(table.metadata["general.alignment"], MetaValue::U64(64));
                assert_eq!(
                    table.metadata["general.name"],
                    MetaValue::String("agreement".into())
                );
                let MetaValue::Array(toks) = &table.metadata["tokenizer.ggml.tokens"] else {
                    panic!("tokens")
                };
                assert_eq!(toks.len() as u64, file["n_tokens"].as_u64().unwrap());
                assert_eq!(toks[299], MetaValue::String("tok299".into()));
            }
            _ => {
                for (k, v) in file["meta"].as_object().unwrap() {
                    let got = &table.metadata[k.as_str()];
                    match v {
                        Value::String(s) => assert_eq!(got, &MetaValue::String(s.clone())),
                        n => assert_eq!(got, &MetaValue::U64(n.as_u64().unwrap())),
                    }
                }
            }
        }
    }
    println!(
        "python agreement: {checked} tensors in {} checkpoints agree",
        report.as_array().unwrap().len()
    );
    assert!(checked >= 15);
}
