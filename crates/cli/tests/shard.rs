//! `hoist load --shard`: each rank's checksums equal those of slicing the whole tensors, the
//! summary counts bytes read against the whole, and bad shards fail with clear messages.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{assert_error_line, hoist, stderr, stdout_json};
use hoist_format::{DType, TensorTable};
use hoist_synth::write_random_safetensors;
use xxhash_rust::xxh3::xxh3_64;

fn checkpoint(dir: &Path) -> PathBuf {
    let specs = [
        ("w.q", DType::BF16, vec![64u64, 256]),
        ("w.o", DType::F16, vec![128, 64]),
        ("w.up", DType::F32, vec![32, 8, 16]),
        ("norm", DType::F32, vec![256]),
    ];
    let path = dir.join("tp.safetensors");
    write_random_safetensors(&path, &specs, 3).unwrap();
    path
}

/// xxh3 of each tensor's rank `rank` of `world` slice along `dim` (whole when `slice` says
/// no), sliced from the file's bytes index by index.
fn reference(
    path: &Path,
    dim: usize,
    rank: u64,
    world: u64,
    slice: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    let table = TensorTable::open(path).unwrap();
    let file = std::fs::read(path).unwrap();
    let mut out = BTreeMap::new();
    for t in &table.tensors {
        let full = &file[t.offset as usize..t.end() as usize];
        let bytes = if slice(&t.name) {
            let outer: u64 = t.shape[..dim].iter().product();
            let size = t.shape[dim];
            let cell = (full.len() as u64 / outer / size) as usize;
            let part = size / world;
            let mut v = Vec::new();
            for o in 0..outer {
                for x in rank * part..(rank + 1) * part {
                    let at = (o * size + x) as usize * cell;
                    v.extend_from_slice(&full[at..at + cell]);
                }
            }
            v
        } else {
            full.to_vec()
        };
        out.insert(t.name.clone(), format!("{:016x}", xxh3_64(&bytes)));
    }
    out
}

fn load(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["load", path.to_str().unwrap(), "--json", "--checksum"];
    args.extend_from_slice(extra);
    stdout_json(&hoist(&args))
}

#[test]
fn every_rank_loads_its_slice_of_rows_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path());
    let whole = load(&path, &[]);
    let full_bytes = whole["bytes"].as_u64().unwrap();
    for world in [1u64, 2, 4] {
        for rank in 0..world {
            // Rows: every tensor (the 1-D norm too).
            let spec = format!("0:{rank}/{world}");
            let doc = load(&path, &["--shard", &spec]);
            let got: BTreeMap<String, String> =
                serde_json::from_value(doc["checksums"].clone()).unwrap();
            assert_eq!(got, reference(&path, 0, rank, world, |_| true), "{spec}");
            assert_eq!(doc["shard"]["spec"], spec.as_str());
            assert_eq!(doc["shard"]["full_bytes"].as_u64(), Some(full_bytes));
            assert_eq!(doc["bytes"].as_u64(), Some(full_bytes / world));
            assert_eq!(doc["shard"]["sharded_tensors"].as_u64(), Some(4));

            // Columns: the weights only; the norm is replicated.
            let spec = format!("1:{rank}/{world}");
            let doc = load(&path, &["--shard", &spec, "--shard-only", "w.*"]);
            let got: BTreeMap<String, String> =
                serde_json::from_value(doc["checksums"].clone()).unwrap();
            let want = reference(&path, 1, rank, world, |n| n.starts_with("w."));
            assert_eq!(got, want, "{spec}");
            assert_eq!(doc["shard"]["whole_tensors"].as_u64(), Some(1));
        }
    }
    // The text summary says what was sliced and read.
    let out = hoist(&["load", path.to_str().unwrap(), "--shard", "0:1/2"]);
    let text = common::success(&out);
    assert!(
        text.contains("shard 0:1/2: 4 of 4 tensors sliced;"),
        "{text}"
    );
}

#[test]
fn bad_shards_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path());
    let p = path.to_str().unwrap();
    // Specs are checked as arguments (clap's usage error).
    for (spec, says) in [
        ("0:4/4", "rank 4 is out of range for world 4"),
        ("0:0/0", "world must be at least 1"),
        ("rows", "expected DIM:RANK/WORLD"),
    ] {
        let out = hoist(&["load", p, "--shard", spec]);
        assert!(!out.status.success(), "{spec}");
        assert!(stderr(&out).contains(says), "{spec}: {}", stderr(&out));
    }
    assert_error_line(
        &hoist(&["load", p, "--shard", "1:0/2"]),
        "1-D tensor along dim 1",
        &["'norm'", "no dimension 1", "--shard-only"],
    );
    assert_error_line(
        &hoist(&["load", p, "--shard", "0:0/3"]),
        "uneven",
        &["'w.q'", "cannot be split evenly", "world 3"],
    );
    assert_error_line(
        &hoist(&["load", p, "--shard", "3:0/2", "--shard-only", "w.*"]),
        "dim out of range",
        &["'w.q'", "no dimension 3"],
    );
    assert_error_line(
        &hoist(&["load", p, "--shard", "0:0/2", "--device", "cuda:0"]),
        "GPU",
        &["not yet supported for GPU loads", "--device cpu"],
    );
    assert_error_line(
        &hoist(&["load", p, "--shard", "0:0/2", "--shard-only", "nothing.*"]),
        "filter",
        &["'nothing.*' matches no tensor"],
    );
}
