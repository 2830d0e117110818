//! Opening checkpoints from disk: files, indexes, directories, skipped tensors.

mod common;

use common::gguf_writer::{write_gguf, GgufTensor, GgufValue};
use common::st_file;
use hoist_format::{FileFormat, FormatError, MetaValue, TensorTable, INDEX_FILE_NAME};

fn u8_shard(names: &[&str]) -> Vec<u8> {
    let specs: Vec<(&str, &str, &[u64], u64)> =
        names.iter().map(|n| (*n, "U8", &[4u64][..], 4)).collect();
    st_file(&specs).0
}

#[test]
fn sharded_directory_and_index_file_agree() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.safetensors"), u8_shard(&["z"])).unwrap();
    std::fs::write(
        dir.path().join("a.safetensors"),
        u8_shard(&["x", "y", "stale"]),
    )
    .unwrap();
    let index = r#"{"metadata":{"total_size":12},"weight_map":{"z":"b.safetensors","x":"a.safetensors","y":"a.safetensors"}}"#;
    std::fs::write(dir.path().join(INDEX_FILE_NAME), index).unwrap();
    for root in [dir.path().to_path_buf(), dir.path().join(INDEX_FILE_NAME)] {
        let t = TensorTable::open(&root).unwrap();
        let names: Vec<&str> = t.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["x", "y", "z"],
            "sorted by (file, offset); files in name order"
        );
        assert!(t.files[0].path.ends_with("a.safetensors"));
        assert_eq!(t.metadata["total_size"], MetaValue::U64(12));
        assert_eq!(
            t.skipped.len(),
            1,
            "a tensor the weight map does not list is skipped"
        );
        assert_eq!(t.skipped[0].name, "stale");
        let e = t.select(&["stale".into()]).unwrap_err().to_string();
        assert!(e.contains("not listed in the index"), "{e}");
    }
}

#[test]
fn directory_of_safetensors_without_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1.safetensors"), u8_shard(&["x"])).unwrap();
    std::fs::write(dir.path().join("2.safetensors"), u8_shard(&["x"])).unwrap();
    let e = TensorTable::open(dir.path()).unwrap_err();
    assert!(matches!(e, FormatError::Duplicate { .. }), "{e}");
    std::fs::write(dir.path().join("2.safetensors"), u8_shard(&["y"])).unwrap();
    assert_eq!(TensorTable::open(dir.path()).unwrap().tensors.len(), 2);
}

#[test]
fn gguf_file_and_directory_with_an_unknown_type() {
    let dir = tempfile::tempdir().unwrap();
    let data = [0u8; 64];
    let tensors = [
        GgufTensor {
            name: "ok",
            shape: &[2, 8],
            ggml_type: 0,
            data: &data,
        },
        GgufTensor {
            name: "future",
            shape: &[16],
            ggml_type: 1000,
            data: &data,
        },
    ];
    let kvs = [(
        "general.architecture".to_string(),
        GgufValue::String("llama".into()),
    )];
    let path = dir.path().join("m.gguf");
    let offsets = write_gguf(&path, &kvs, &tensors, 128).unwrap();
    for root in [path.clone(), dir.path().to_path_buf()] {
        let t = TensorTable::open(&root).unwrap();
        assert_eq!(
            t.files[0].format,
            FileFormat::Gguf {
                version: 3,
                alignment: 128
            }
        );
        assert_eq!(t.get("ok").unwrap().offset, offsets[0]);
        assert_eq!(t.skipped[0].name, "future");
        assert!(t.skipped[0].reason.contains("unknown ggml type 1000"));
        assert!(t.select(&["future".into()]).is_err());
    }
    std::fs::copy(&path, dir.path().join("n.gguf")).unwrap();
    let e = TensorTable::open(dir.path()).unwrap_err().to_string();
    assert!(e.contains("2 .gguf files"), "{e}");
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let e = TensorTable::open("/nonexistent/hoist/model.safetensors").unwrap_err();
    assert!(matches!(e, FormatError::Io { .. }));
    assert!(e
        .to_string()
        .starts_with("/nonexistent/hoist/model.safetensors"));
}

#[test]
fn large_vocabulary_is_kept_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let n = 150_000;
    let toks = GgufValue::Array(
        (0..n)
            .map(|i| GgufValue::String(format!("token-{i}")))
            .collect(),
    );
    let types = GgufValue::Array((0..n).map(|i| GgufValue::I32(i as i32 % 6)).collect());
    let kvs = [
        ("tokenizer.ggml.tokens".to_string(), toks),
        ("tokenizer.ggml.token_type".to_string(), types),
    ];
    let data = [0u8; 34];
    let tensors = [GgufTensor {
        name: "q",
        shape: &[32],
        ggml_type: 8,
        data: &data,
    }];
    let path = dir.path().join("vocab.gguf");
    write_gguf(&path, &kvs, &tensors, 32).unwrap();
    let start = std::time::Instant::now();
    let t = TensorTable::open(&path).unwrap();
    let MetaValue::Array(got) = &t.metadata["tokenizer.ggml.tokens"] else {
        panic!("tokens")
    };
    assert_eq!(got.len(), n);
    assert_eq!(got[n - 1], MetaValue::String(format!("token-{}", n - 1)));
    assert_eq!(t.get("q").unwrap().len, 34);
    println!("parsed a {n}-token header in {:?}", start.elapsed());
}
