//! Rank-local loading against slicing the whole tensor: every rank of worlds 1-4, rows and
//! columns, f16/bf16/f32 safetensors and quantized GGUF, several read-plan shapes; and the
//! errors.

use std::path::{Path, PathBuf};

use hoist_format::{DType, GgmlType, TensorInfo, TensorTable};
use hoist_io::shard::{Part, ShardConfig, ShardError};
use hoist_io::{load_host_sharded, EngineConfig, LoadError, PlanConfig, Shard, ShardPlan};
use hoist_synth::gguf::{write_gguf, GgufTensor};
use hoist_synth::{fill_random, write_random_safetensors};

fn safetensors_file(dir: &Path) -> PathBuf {
    let specs = [
        ("a", DType::F16, vec![48u64, 96]),
        ("b", DType::BF16, vec![120, 48]),
        ("c", DType::F32, vec![24, 6144]),
        ("d", DType::F32, vec![12, 24, 36]),
        ("e", DType::BF16, vec![1200, 2400]),
        ("norm", DType::F32, vec![96]),
    ];
    let path = dir.join("m.safetensors");
    write_random_safetensors(&path, &specs, 7).unwrap();
    path
}

fn gguf_file(dir: &Path) -> PathBuf {
    let specs: [(&str, GgmlType, [u64; 2]); 5] = [
        ("q8", GgmlType::Q8_0, [24, 384]),
        ("q4", GgmlType::Q4_0, [48, 768]),
        ("f32", GgmlType::F32, [12, 36]),
        ("qk", GgmlType::Q4_K, [12, 3072]),
        ("f16", GgmlType::F16, [36, 120]),
    ];
    let data: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, (_, ty, shape))| {
            let len = DType::Ggml(*ty).byte_len(shape[0] * shape[1]).unwrap();
            let mut v = vec![0u8; len as usize];
            fill_random(&mut v, 11, i as u64, 0);
            v
        })
        .collect();
    let tensors: Vec<GgufTensor<'_>> = specs
        .iter()
        .zip(&data)
        .map(|((name, ty, shape), d)| GgufTensor {
            name,
            shape,
            ggml_type: ty.0,
            data: d,
        })
        .collect();
    let path = dir.join("m.gguf");
    write_gguf(&path, &[], &tensors, 32).unwrap();
    path
}

/// The slice of `full` (the tensor's bytes) along `dim` for `rank` of `world`, by whole
/// "cells": the bytes of one index of `dim` and everything inside it. Independent of the
/// planner: it walks indices, not runs.
fn reference_slice(t: &TensorInfo, full: &[u8], dim: usize, rank: u64, world: u64) -> Vec<u8> {
    let outer: u64 = t.shape[..dim].iter().product();
    // Quantized types: along the innermost dimension the unit is a block, not an element.
    let per = match t.dtype {
        DType::Ggml(g) if dim + 1 == t.shape.len() => g.block().unwrap().0,
        _ => 1,
    };
    let size = t.shape[dim] / per;
    let cell = full.len() as u64 / outer / size; // bytes per index (block) of `dim`
    let part = size / world;
    let mut out = Vec::new();
    for o in 0..outer {
        for x in rank * part..(rank + 1) * part {
            let at = ((o * size + x) * cell) as usize;
            out.extend_from_slice(&full[at..at + cell as usize]);
        }
    }
    out
}

fn configs() -> Vec<(ShardConfig, PlanConfig)> {
    vec![
        (ShardConfig::default(), PlanConfig::default()),
        // Every run its own span, every span its own batch.
        (
            ShardConfig {
                gap_bytes: 0,
                span_bytes: 1,
                batch_bytes: 1,
            },
            PlanConfig::default(),
        ),
        // Read-through with spans across several small chunks, a few batches.
        (
            ShardConfig {
                gap_bytes: u64::MAX,
                span_bytes: 200_000,
                batch_bytes: 300_000,
            },
            PlanConfig {
                chunk_bytes: 64 << 10,
                align_bytes: 4096,
            },
        ),
    ]
}

/// Loads every rank of every world along `dims` and checks each tensor against the file.
fn check_all_ranks(path: &Path, dims: &[usize], only: impl Fn(&TensorInfo, usize) -> bool) {
    let table = TensorTable::open(path).unwrap();
    let file = std::fs::read(path).unwrap();
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    let engine = EngineConfig {
        threads: 2,
        ..EngineConfig::default()
    };
    for &dim in dims {
        let only_idx: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| only(&table.tensors[i], dim))
            .collect();
        for world in 1..=4u64 {
            for rank in 0..world {
                for (shard_config, plan_config) in configs() {
                    let shard = Shard::new(dim, rank, world).unwrap();
                    let plan =
                        ShardPlan::new(&table, &all, shard, Some(&only_idx), shard_config).unwrap();
                    let (tensors, report) =
                        load_host_sharded(&table, &plan, plan_config, &engine).unwrap();
                    assert_eq!(tensors.len(), table.tensors.len());
                    for t in &tensors {
                        let src = table.get(&t.info.name).unwrap();
                        let full = &file[src.offset as usize..src.end() as usize];
                        let want = if only_idx.contains(&table.index_of(&src.name).unwrap()) {
                            let mut shape = src.shape.clone();
                            shape[dim] /= world;
                            assert_eq!(t.info.shape, shape, "{}", src.name);
                            reference_slice(src, full, dim, rank, world)
                        } else {
                            assert_eq!(t.info.shape, src.shape);
                            full.to_vec()
                        };
                        assert_eq!(t.info.len as usize, want.len(), "{}", src.name);
                        assert!(
                            t.bytes() == want.as_slice(),
                            "{} dim {dim} rank {rank}/{world} ({shard_config:?}): bytes differ",
                            src.name
                        );
                    }
                    // Never more than the file, plus alignment slack at each read's two ends.
                    let reads: usize = plan
                        .parts
                        .iter()
                        .map(|(_, p)| match p {
                            Part::Strided { spans, .. } => spans.len(),
                            _ => 1,
                        })
                        .sum();
                    assert!(report.read_bytes <= file.len() as u64 + 2 * 4096 * reads as u64);
                }
            }
        }
    }
}

#[test]
fn safetensors_rows_and_columns_match_slicing_for_every_rank() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(dir.path());
    check_all_ranks(&path, &[0, 1], |t, dim| t.shape.len() > dim);
    // dim 2 of the 3-D tensor: innermost, the finest stride.
    check_all_ranks(&path, &[2], |t, _| t.name == "d");
}

#[test]
fn gguf_quantized_rows_and_block_aligned_columns_match_slicing() {
    let dir = tempfile::tempdir().unwrap();
    let path = gguf_file(dir.path());
    check_all_ranks(&path, &[0, 1], |_, _| true);
}

#[test]
fn row_shards_read_about_a_world_th_of_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = safetensors_file(dir.path());
    let table = TensorTable::open(&path).unwrap();
    let e = table.index_of("e").unwrap();
    let plan = ShardPlan::new(
        &table,
        &[e],
        Shard::new(0, 1, 4).unwrap(),
        None,
        ShardConfig::default(),
    )
    .unwrap();
    assert!(matches!(plan.parts[0].1, Part::Contiguous(_)));
    let (_, report) = load_host_sharded(
        &table,
        &plan,
        PlanConfig::default(),
        &EngineConfig::default(),
    )
    .unwrap();
    let quarter = table.tensors[e].len / 4;
    assert!(report.read_bytes >= quarter && report.read_bytes <= quarter + 2 * 4096);
    assert_eq!(plan.loaded_bytes(&table), quarter);
    assert_eq!(plan.full_bytes(&table), table.tensors[e].len);
}

#[test]
fn errors_name_the_tensor_and_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let st = TensorTable::open(safetensors_file(dir.path())).unwrap();
    let all: Vec<usize> = (0..st.tensors.len()).collect();
    let plan = |t: &TensorTable, s: &str, only: Option<&[usize]>| {
        let all: Vec<usize> = (0..t.tensors.len()).collect();
        ShardPlan::new(t, &all, s.parse().unwrap(), only, ShardConfig::default())
    };
    // The 1-D norm has no dim 1: strict by default, fine once filtered out.
    let e = plan(&st, "1:0/2", None).unwrap_err();
    assert!(matches!(e, ShardError::DimOutOfRange { .. }), "{e}");
    assert!(e.to_string().contains("'norm'"), "{e}");
    let two_d: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| st.tensors[i].shape.len() > 1)
        .collect();
    assert!(plan(&st, "1:0/2", Some(&two_d)).is_ok());
    // 48 rows of 'a'... 'b' has 48 columns, 'a' 48 rows: world 5 divides neither.
    let e = plan(&st, "0:0/5", None).unwrap_err();
    assert!(e.to_string().contains("cannot be split evenly"), "{e}");
    assert!(e.to_string().contains("m.safetensors"), "{e}");

    // A Q8_0 column slice of half a block.
    let gguf_path = dir.path().join("bad.gguf");
    let data = vec![0u8; 4 * 2 * 34];
    write_gguf(
        &gguf_path,
        &[],
        &[GgufTensor {
            name: "blk.0.attn_q.weight",
            shape: &[4, 64],
            ggml_type: GgmlType::Q8_0.0,
            data: &data,
        }],
        32,
    )
    .unwrap();
    let g = TensorTable::open(&gguf_path).unwrap();
    let e = plan(&g, "1:0/4", None).unwrap_err();
    assert!(matches!(e, ShardError::Misaligned { .. }), "{e}");
    assert!(e.to_string().contains("blk.0.attn_q.weight") && e.to_string().contains("Q8_0"));
    assert!(
        plan(&g, "1:1/2", None).is_ok(),
        "one block per rank is aligned"
    );
    assert!(plan(&g, "0:3/4", None).is_ok(), "rows are whole blocks");

    // Errors pass through a load's error type too.
    let err: LoadError = plan(&g, "1:0/4", None).unwrap_err().into();
    assert!(err.to_string().contains("block boundaries"));
}
