//! Property tests: mutated valid files never make a parser panic; generated valid files parse
//! back to exactly what was written.

mod common;

use std::path::Path;

use common::gguf_writer::{gguf_bytes, GgufTensor, GgufValue};
use common::st_file;
use hoist_format::{fuzzing, DType, GgmlType, MetaValue};
use proptest::prelude::*;

/// A small valid safetensors file.
fn st_seed() -> Vec<u8> {
    st_file(&[
        ("a", "F32", &[2, 3], 24),
        ("b.bias", "BF16", &[4], 8),
        ("c", "F4", &[2, 2], 2),
    ])
    .0
}

/// A small valid GGUF file with every value type, a nested array and three tensors.
fn gguf_seed() -> Vec<u8> {
    let kvs = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String("llama".into()),
        ),
        ("u8".into(), GgufValue::U8(1)),
        ("i16".into(), GgufValue::I16(-2)),
        ("f64".into(), GgufValue::F64(0.5)),
        ("b".into(), GgufValue::Bool(true)),
        (
            "toks".into(),
            GgufValue::Array(vec![
                GgufValue::String("a".into()),
                GgufValue::String("bc".into()),
            ]),
        ),
        (
            "nested".into(),
            GgufValue::Array(vec![GgufValue::Array(vec![
                GgufValue::I32(1),
                GgufValue::I32(2),
            ])]),
        ),
    ];
    let q = vec![0u8; 34 * 2];
    let f = vec![0u8; 4 * 8];
    let tensors = [
        GgufTensor {
            name: "q",
            shape: &[2, 32],
            ggml_type: 8,
            data: &q,
        },
        GgufTensor {
            name: "f",
            shape: &[2, 4],
            ggml_type: 0,
            data: &f,
        },
        GgufTensor {
            name: "unknown",
            shape: &[4],
            ggml_type: 4242,
            data: &f,
        },
    ];
    gguf_bytes(&kvs, &tensors, 64).0
}

fn shard(names: &[&str]) -> Vec<u8> {
    let specs: Vec<(&str, &str, &[u64], u64)> =
        names.iter().map(|n| (*n, "U8", &[1u64][..], 1)).collect();
    st_file(&specs).0
}

const INDEX_SEED: &[u8] =
    br#"{"metadata":{"total_size":3},"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"b.safetensors"}}"#;

#[derive(Clone, Debug)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Overwrites 8 bytes with a little-endian integer (a length or count, often).
    Word(usize, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (
            any::<usize>(),
            prop_oneof![any::<u64>(), 0u64..300, Just(u64::MAX)]
        )
            .prop_map(|(i, w)| Mutation::Word(i, w)),
    ]
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        if b.is_empty() {
            break;
        }
        let n = b.len();
        match *m {
            Mutation::Set(i, v) => b[i % n] = v,
            Mutation::Insert(i, v) => b.insert(i % (n + 1), v),
            Mutation::Remove(i) => {
                b.remove(i % n);
            }
            Mutation::Truncate(i) => b.truncate(i % n),
            Mutation::Word(i, w) => {
                let at = i % n;
                let end = (at + 8).min(n);
                b[at..end].copy_from_slice(&w.to_le_bytes()[..end - at]);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_safetensors_never_panic(ms in prop::collection::vec(mutation(), 1..6)) {
        let _ = fuzzing::safetensors(Path::new("m.safetensors"), &mutate(st_seed(), &ms));
    }

    #[test]
    fn mutated_gguf_never_panics(ms in prop::collection::vec(mutation(), 1..6)) {
        let _ = fuzzing::gguf(Path::new("m.gguf"), &mutate(gguf_seed(), &ms));
    }

    #[test]
    fn mutated_index_never_panics(ms in prop::collection::vec(mutation(), 1..6), shard_ms in prop::collection::vec(mutation(), 0..3)) {
        let a = mutate(shard(&["x", "y"]), &shard_ms);
        let b = shard(&["z"]);
        let shards: [(&str, &[u8]); 2] = [("a.safetensors", &a), ("b.safetensors", &b)];
        let _ = fuzzing::index(Path::new("d/model.safetensors.index.json"), &mutate(INDEX_SEED.to_vec(), &ms), &shards);
    }
}

/// safetensors dtypes whose byte size is whole for any shape: (name, bytes per element).
const ST_DTYPES: &[(&str, u64)] = &[
    ("BOOL", 1),
    ("U8", 1),
    ("I16", 2),
    ("F16", 2),
    ("BF16", 2),
    ("F32", 4),
    ("I64", 8),
    ("F64", 8),
    ("F8_E4M3", 1),
    ("C64", 8),
];

fn st_tensors() -> impl Strategy<Value = Vec<(usize, Vec<u64>)>> {
    prop::collection::vec(
        (0..ST_DTYPES.len(), prop::collection::vec(0u64..5, 0..4)),
        0..12,
    )
}

/// ggml types for generated GGUF tensors: (id, elements per block, bytes per block).
const GGML: &[(u32, u64, u64)] = &[
    (0, 1, 4),
    (1, 1, 2),
    (30, 1, 2),
    (24, 1, 1),
    (8, 32, 34),
    (2, 32, 18),
    (12, 256, 144),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_round_trip(specs in st_tensors()) {
        let names: Vec<String> = (0..specs.len()).map(|i| format!("model.layers.{i}.w")).collect();
        let rows: Vec<(&str, &str, &[u64], u64)> = specs
            .iter()
            .zip(&names)
            .map(|((d, shape), n)| {
                let (dt, size) = ST_DTYPES[*d];
                (n.as_str(), dt, &shape[..], size * shape.iter().product::<u64>())
            })
            .collect();
        let (bytes, offsets) = st_file(&rows);
        let t = fuzzing::safetensors(Path::new("r.safetensors"), &bytes).unwrap();
        prop_assert_eq!(t.tensors.len(), rows.len());
        for ((name, dt, shape, len), off) in rows.iter().zip(&offsets) {
            let got = t.get(name).unwrap();
            prop_assert_eq!(got.dtype, DType::from_safetensors(dt).unwrap());
            prop_assert_eq!(&got.shape[..], *shape);
            prop_assert_eq!((got.offset, got.len), (*off, *len));
        }
    }

    #[test]
    fn gguf_round_trip(
        specs in prop::collection::vec((0..GGML.len(), 1u64..3, prop::collection::vec(1u64..4, 0..3)), 0..10),
        align_log in 0u32..9,
        n_toks in 0usize..50,
        u in any::<u32>(),
        i in any::<i64>(),
    ) {
        let alignment = 1u64 << align_log;
        let names: Vec<String> = (0..specs.len()).map(|i| format!("blk.{i}.ffn")).collect();
        let shapes: Vec<Vec<u64>> = specs
            .iter()
            .map(|(g, blocks, outer)| {
                let mut s = outer.clone();
                s.push(blocks * GGML[*g].1);
                s
            })
            .collect();
        let datas: Vec<Vec<u8>> = specs
            .iter()
            .zip(&shapes)
            .map(|((g, _, _), s)| vec![0u8; (s.iter().product::<u64>() / GGML[*g].1 * GGML[*g].2) as usize])
            .collect();
        let tensors: Vec<GgufTensor<'_>> = (0..specs.len())
            .map(|k| GgufTensor { name: &names[k], shape: &shapes[k], ggml_type: GGML[specs[k].0].0, data: &datas[k] })
            .collect();
        let toks: Vec<GgufValue> = (0..n_toks).map(|k| GgufValue::String(format!("tok{k}"))).collect();
        let kvs = vec![
            ("u".to_string(), GgufValue::U32(u)),
            ("i".to_string(), GgufValue::I64(i)),
            ("tokenizer.ggml.tokens".to_string(), GgufValue::Array(toks)),
        ];
        let (bytes, offsets) = gguf_bytes(&kvs, &tensors, alignment);
        let t = fuzzing::gguf(Path::new("r.gguf"), &bytes).unwrap();
        prop_assert_eq!(&t.metadata["u"], &MetaValue::U64(u.into()));
        prop_assert_eq!(&t.metadata["i"], &MetaValue::I64(i));
        let MetaValue::Array(got_toks) = &t.metadata["tokenizer.ggml.tokens"] else { panic!("tokens") };
        prop_assert_eq!(got_toks.len(), n_toks);
        prop_assert_eq!(t.tensors.len(), tensors.len());
        for (k, want) in tensors.iter().enumerate() {
            let got = t.get(want.name).unwrap();
            prop_assert_eq!(got.dtype, DType::Ggml(GgmlType(want.ggml_type)));
            prop_assert_eq!(&got.shape[..], want.shape);
            prop_assert_eq!((got.offset, got.len), (offsets[k], want.data.len() as u64));
            prop_assert_eq!(got.offset % alignment, 0);
        }
    }
}
