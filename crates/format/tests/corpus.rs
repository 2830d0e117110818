//! The malformed-file corpus under `tests/corpus/`: every case must give a typed error whose
//! message names the file and says what is wrong, never a panic.
//!
//! The files are committed; `cargo test -p hoist-format --test corpus -- --ignored` rewrites
//! them from [`build_cases`].

mod common;

use std::path::{Path, PathBuf};

use common::{st_file, st_raw, Raw};
use hoist_format::TensorTable;

enum Case {
    File(Vec<u8>),
    /// A directory of `(file name, bytes)`.
    Dir(Vec<(&'static str, Vec<u8>)>),
}

/// `(case name, substring its error message must contain)`. A case name is a file (or, for
/// sharded-index cases, a directory) under `tests/corpus/`.
const CASES: &[(&str, &str)] = &[
    ("st_empty.safetensors", "truncated"),
    ("st_short_length.safetensors", "8-byte header length"),
    ("st_header_past_eof.safetensors", "truncated"),
    (
        "st_header_too_large.safetensors",
        "over the 100000000-byte limit",
    ),
    ("st_header_not_utf8.safetensors", "not UTF-8"),
    ("st_header_bad_json.safetensors", "not a valid JSON object"),
    (
        "st_header_not_object.safetensors",
        "not a valid JSON object",
    ),
    (
        "st_duplicate_tensor.safetensors",
        "'a' appears more than once",
    ),
    (
        "st_duplicate_key_in_entry.safetensors",
        "duplicate key 'dtype'",
    ),
    ("st_unknown_dtype.safetensors", "unknown dtype 'F17'"),
    ("st_length_mismatch.safetensors", "data_offsets span"),
    ("st_offsets_past_eof.safetensors", "past the data section"),
    ("st_offsets_backwards.safetensors", "run backwards"),
    ("st_overlap.safetensors", "overlap"),
    (
        "st_shape_overflow.safetensors",
        "more elements than fit in 64 bits",
    ),
    (
        "st_negative_shape.safetensors",
        "not a non-negative integer",
    ),
    (
        "st_metadata_not_string.safetensors",
        "__metadata__ value of 'n' is not a string",
    ),
    ("st_missing_offsets.safetensors", "no 'data_offsets' pair"),
    ("st_f4_half_byte.safetensors", "not a whole number of bytes"),
    ("idx_missing_shard", "shard 'b.safetensors' is missing"),
    ("idx_missing_in_shard", "tensor 'z' is mapped to"),
    (
        "idx_duplicate_across_shards",
        "tensor 'x' appears more than once",
    ),
    (
        "idx_duplicate_in_weight_map",
        "tensor 'x' appears more than once",
    ),
    ("idx_bad_json", "not valid JSON"),
    ("idx_no_weight_map", "no 'weight_map'"),
    ("idx_shard_outside_dir", "not a file name inside"),
    ("idx_truncated_shard", "b.safetensors: truncated"),
    ("gguf_bad_magic.gguf", "bad magic"),
    ("gguf_v1.gguf", "GGUF v1 is not supported"),
    ("gguf_big_endian.gguf", "big-endian"),
    ("gguf_version_99.gguf", "unsupported GGUF version 99"),
    ("gguf_truncated_header.gguf", "truncated"),
    (
        "gguf_huge_kv_count.gguf",
        "key/value count 1152921504606846976 is larger than the file can hold",
    ),
    (
        "gguf_huge_tensor_count.gguf",
        "tensor count 1099511627776 is larger than the file can hold",
    ),
    (
        "gguf_huge_string_length.gguf",
        "truncated: the value of key 's'",
    ),
    ("gguf_huge_array_length.gguf", "array of key 'arr'"),
    (
        "gguf_value_not_utf8.gguf",
        "the value of key 'name' is not UTF-8",
    ),
    ("gguf_key_not_utf8.gguf", "key/value #0 is not UTF-8"),
    ("gguf_alignment_not_pow2.gguf", "power of two"),
    ("gguf_alignment_zero.gguf", "power of two"),
    ("gguf_alignment_u64.gguf", "of type u32"),
    ("gguf_unknown_value_type.gguf", "unknown value type 13"),
    ("gguf_arrays_too_deep.gguf", "nested more than"),
    ("gguf_five_dims.gguf", "tensor 'w': has 5 dimensions"),
    (
        "gguf_misaligned_offset.gguf",
        "not a multiple of the alignment 32",
    ),
    ("gguf_data_past_eof.gguf", "tensor 'w'"),
    ("gguf_overlap.gguf", "overlap"),
    (
        "gguf_duplicate_tensor.gguf",
        "tensor 'w' appears more than once",
    ),
    ("gguf_duplicate_key.gguf", "duplicate key 'k'"),
    (
        "gguf_shape_overflow.gguf",
        "more elements than fit in 64 bits",
    ),
    (
        "gguf_block_mismatch.gguf",
        "not a multiple of the Q8_0 block size 32",
    ),
    ("gguf_named_not_gguf.gguf", "bad magic"),
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn st(header: &str, data: usize) -> Vec<u8> {
    st_raw(header.as_bytes(), data)
}

fn u8_shard(names: &[&str]) -> Vec<u8> {
    let specs: Vec<(&str, &str, &[u64], u64)> =
        names.iter().map(|n| (*n, "U8", &[1u64][..], 1)).collect();
    st_file(&specs).0
}

fn index(weight_map: &str) -> Vec<u8> {
    format!(r#"{{"metadata":{{"total_size":3}},"weight_map":{weight_map}}}"#).into_bytes()
}

/// A v3 GGUF with no key/values and one F32 tensor 'w' of dims [8] at offset 0, 32 data bytes.
fn one_tensor(version: u32) -> Vec<u8> {
    Raw::header(version, 1, 0)
        .tensor("w", &[8], 0, 0)
        .data(32, 32)
        .0
        .clone()
}

/// A v3 GGUF with one key/value of type `ty` whose payload is `value`.
fn one_kv(key: &[u8], ty: u32, value: &[u8]) -> Vec<u8> {
    Raw::header(3, 0, 1).str(key).u32(ty).bytes(value).0.clone()
}

fn build_cases() -> Vec<(&'static str, Case)> {
    use Case::{Dir, File};
    let ok_entry = r#""a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#;
    let mut huge_str = 3u64.to_le_bytes().to_vec();
    huge_str.extend(u64::MAX.to_le_bytes());
    let mut huge_arr = 4u32.to_le_bytes().to_vec();
    huge_arr.extend((1u64 << 50).to_le_bytes());
    let mut deep = Vec::new();
    for _ in 0..12 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    deep.extend(0u32.to_le_bytes());
    deep.extend(0u64.to_le_bytes());
    let mut big_endian = one_tensor(3);
    big_endian[4..8].copy_from_slice(&3u32.to_be_bytes());
    let mut truncated_header = one_tensor(3);
    truncated_header.truncate(30);
    let mut past_eof = one_tensor(3);
    past_eof.truncate(past_eof.len() - 4);
    let mut truncated_shard = u8_shard(&["z"]);
    truncated_shard.truncate(12);
    vec![
        ("st_empty.safetensors", File(Vec::new())),
        ("st_short_length.safetensors", File(vec![1, 0, 0, 0, 0])),
        (
            "st_header_past_eof.safetensors",
            File(st("{}", 0)).map_len(1000),
        ),
        (
            "st_header_too_large.safetensors",
            File(st("{}", 0)).map_len(200_000_000),
        ),
        (
            "st_header_not_utf8.safetensors",
            File(st_raw(b"{\"\xff\":1}", 0)),
        ),
        (
            "st_header_bad_json.safetensors",
            File(st(r#"{"a":{"dtype":"#, 0)),
        ),
        ("st_header_not_object.safetensors", File(st("[1,2,3]", 0))),
        (
            "st_duplicate_tensor.safetensors",
            File(st(&format!("{{{ok_entry},{ok_entry}}}"), 1)),
        ),
        (
            "st_duplicate_key_in_entry.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            )),
        ),
        (
            "st_unknown_dtype.safetensors",
            File(st(
                r#"{"a":{"dtype":"F17","shape":[1],"data_offsets":[0,1]}}"#,
                1,
            )),
        ),
        (
            "st_length_mismatch.safetensors",
            File(st(
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                4,
            )),
        ),
        (
            "st_offsets_past_eof.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]}}"#,
                4,
            )),
        ),
        (
            "st_offsets_backwards.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}"#,
                4,
            )),
        ),
        (
            "st_overlap.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                6,
            )),
        ),
        (
            "st_shape_overflow.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,1]}}"#,
                1,
            )),
        ),
        (
            "st_negative_shape.safetensors",
            File(st(
                r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                1,
            )),
        ),
        (
            "st_metadata_not_string.safetensors",
            File(st(r#"{"__metadata__":{"n":1}}"#, 0)),
        ),
        (
            "st_missing_offsets.safetensors",
            File(st(r#"{"a":{"dtype":"U8","shape":[1]}}"#, 1)),
        ),
        (
            "st_f4_half_byte.safetensors",
            File(st(
                r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#,
                1,
            )),
        ),
        (
            "idx_missing_shard",
            Dir(vec![
                (
                    "model.safetensors.index.json",
                    index(r#"{"x":"a.safetensors","z":"b.safetensors"}"#),
                ),
                ("a.safetensors", u8_shard(&["x"])),
            ]),
        ),
        (
            "idx_missing_in_shard",
            Dir(vec![
                (
                    "model.safetensors.index.json",
                    index(r#"{"x":"a.safetensors","z":"b.safetensors"}"#),
                ),
                ("a.safetensors", u8_shard(&["x"])),
                ("b.safetensors", u8_shard(&["y"])),
            ]),
        ),
        (
            "idx_duplicate_across_shards",
            Dir(vec![
                (
                    "model.safetensors.index.json",
                    index(r#"{"x":"a.safetensors","z":"b.safetensors"}"#),
                ),
                ("a.safetensors", u8_shard(&["x"])),
                ("b.safetensors", u8_shard(&["z", "x"])),
            ]),
        ),
        (
            "idx_duplicate_in_weight_map",
            Dir(vec![
                (
                    "model.safetensors.index.json",
                    index(r#"{"x":"a.safetensors","x":"a.safetensors"}"#),
                ),
                ("a.safetensors", u8_shard(&["x"])),
            ]),
        ),
        (
            "idx_bad_json",
            Dir(vec![(
                "model.safetensors.index.json",
                b"{\"weight_map\": {\"x\": ".to_vec(),
            )]),
        ),
        (
            "idx_no_weight_map",
            Dir(vec![(
                "model.safetensors.index.json",
                br#"{"metadata":{}}"#.to_vec(),
            )]),
        ),
        (
            "idx_shard_outside_dir",
            Dir(vec![(
                "model.safetensors.index.json",
                index(r#"{"x":"../a.safetensors"}"#),
            )]),
        ),
        (
            "idx_truncated_shard",
            Dir(vec![
                (
                    "model.safetensors.index.json",
                    index(r#"{"x":"a.safetensors","z":"b.safetensors"}"#),
                ),
                ("a.safetensors", u8_shard(&["x"])),
                ("b.safetensors", truncated_shard),
            ]),
        ),
        (
            "gguf_bad_magic.gguf",
            File({
                let mut b = one_tensor(3);
                b[0] = b'g';
                b
            }),
        ),
        ("gguf_v1.gguf", File(one_tensor(1))),
        ("gguf_big_endian.gguf", File(big_endian)),
        ("gguf_version_99.gguf", File(one_tensor(99))),
        ("gguf_truncated_header.gguf", File(truncated_header)),
        (
            "gguf_huge_kv_count.gguf",
            File(Raw::header(3, 0, 1 << 60).0),
        ),
        (
            "gguf_huge_tensor_count.gguf",
            File(Raw::header(3, 1 << 40, 0).0),
        ),
        (
            "gguf_huge_string_length.gguf",
            File(one_kv(b"s", 8, &u64::MAX.to_le_bytes())),
        ),
        (
            "gguf_huge_array_length.gguf",
            File(one_kv(b"arr", 9, &huge_arr)),
        ),
        (
            "gguf_value_not_utf8.gguf",
            File(one_kv(b"name", 8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xc3, 0x28])),
        ),
        (
            "gguf_key_not_utf8.gguf",
            File(one_kv(b"\xfe\xff", 4, &[1, 0, 0, 0])),
        ),
        (
            "gguf_alignment_not_pow2.gguf",
            File(one_kv(b"general.alignment", 4, &48u32.to_le_bytes())),
        ),
        (
            "gguf_alignment_zero.gguf",
            File(one_kv(b"general.alignment", 4, &0u32.to_le_bytes())),
        ),
        (
            "gguf_alignment_u64.gguf",
            File(one_kv(b"general.alignment", 10, &64u64.to_le_bytes())),
        ),
        (
            "gguf_unknown_value_type.gguf",
            File(one_kv(b"k", 13, &[0; 8])),
        ),
        ("gguf_arrays_too_deep.gguf", File(one_kv(b"deep", 9, &deep))),
        (
            "gguf_five_dims.gguf",
            File(
                Raw::header(3, 1, 0)
                    .tensor("w", &[1, 1, 1, 1, 8], 0, 0)
                    .data(32, 32)
                    .0
                    .clone(),
            ),
        ),
        (
            "gguf_misaligned_offset.gguf",
            File(
                Raw::header(3, 1, 0)
                    .tensor("w", &[8], 0, 4)
                    .data(32, 64)
                    .0
                    .clone(),
            ),
        ),
        ("gguf_data_past_eof.gguf", File(past_eof)),
        (
            "gguf_overlap.gguf",
            File(
                Raw::header(3, 2, 0)
                    .tensor("w", &[16], 0, 0)
                    .tensor("v", &[8], 0, 32)
                    .data(32, 96)
                    .0
                    .clone(),
            ),
        ),
        (
            "gguf_duplicate_tensor.gguf",
            File(
                Raw::header(3, 2, 0)
                    .tensor("w", &[8], 0, 0)
                    .tensor("w", &[8], 0, 32)
                    .data(32, 64)
                    .0
                    .clone(),
            ),
        ),
        (
            "gguf_duplicate_key.gguf",
            File(Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).0.clone()),
        ),
        (
            "gguf_shape_overflow.gguf",
            File(
                Raw::header(3, 1, 0)
                    .tensor("w", &[1 << 32, 1 << 32, 2], 0, 0)
                    .data(32, 32)
                    .0
                    .clone(),
            ),
        ),
        (
            "gguf_block_mismatch.gguf",
            File(
                Raw::header(3, 1, 0)
                    .tensor("w", &[33, 32], 8, 0)
                    .data(32, 2048)
                    .0
                    .clone(),
            ),
        ),
        (
            "gguf_named_not_gguf.gguf",
            File(st(&format!("{{{ok_entry}}}"), 1)),
        ),
    ]
}

impl Case {
    /// Rewrites a single file's 8-byte little-endian length prefix.
    fn map_len(self, len: u64) -> Case {
        match self {
            Case::File(mut b) => {
                b[..8].copy_from_slice(&len.to_le_bytes());
                Case::File(b)
            }
            dir => dir,
        }
    }
}

#[test]
#[ignore = "rewrites tests/corpus; run after changing build_cases"]
fn regenerate_corpus() {
    let dir = corpus_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, case) in build_cases() {
        match case {
            Case::File(b) => std::fs::write(dir.join(name), b).unwrap(),
            Case::Dir(files) => {
                std::fs::create_dir_all(dir.join(name)).unwrap();
                for (f, b) in files {
                    std::fs::write(dir.join(name).join(f), b).unwrap();
                }
            }
        }
    }
}

#[test]
fn corpus_cases_match_the_list() {
    let built: Vec<&str> = build_cases().iter().map(|(n, _)| *n).collect();
    let listed: Vec<&str> = CASES.iter().map(|(n, _)| *n).collect();
    assert_eq!(built, listed, "build_cases and CASES disagree");
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("fuzz_"))
        .collect();
    on_disk.sort();
    let mut want: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(
        on_disk, want,
        "tests/corpus is stale: run the ignored regenerate_corpus test"
    );
}

#[test]
fn every_corpus_case_is_a_typed_error_naming_the_file() {
    let dir = corpus_dir();
    let mut cases: Vec<(String, &str)> = CASES.iter().map(|(n, w)| (n.to_string(), *w)).collect();
    // Inputs the fuzzers found (named fuzz_<what>.<ext>); they only need to fail cleanly.
    for e in std::fs::read_dir(&dir).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        if n.starts_with("fuzz_") {
            cases.push((n, ""));
        }
    }
    assert!(cases.len() >= 25);
    for (name, want) in cases {
        let path = dir.join(&name);
        let result = std::panic::catch_unwind(|| TensorTable::open(&path));
        let Ok(result) = result else {
            panic!("{name}: the parser panicked")
        };
        let err = match result {
            Err(e) => e.to_string(),
            Ok(t) if name.starts_with("fuzz_") => {
                // A fuzz input that is a valid file is fine too; it must just not panic.
                let _ = t;
                continue;
            }
            Ok(_) => panic!("{name}: parsed without error"),
        };
        assert!(
            err.contains(&name),
            "{name}: message does not name the file: {err}"
        );
        assert!(err.contains(want), "{name}: message lacks '{want}': {err}");
    }
}
