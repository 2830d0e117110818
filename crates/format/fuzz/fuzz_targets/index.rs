//! Any bytes as a sharded index over two fixed in-memory shards: a typed error or a table,
//! never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// A safetensors file holding U8 tensors of one element each, named `names`.
fn shard(names: &[&str]) -> Vec<u8> {
    let entries: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#""{n}":{{"dtype":"U8","shape":[1],"data_offsets":[{i},{}]}}"#,
                i + 1
            )
        })
        .collect();
    let header = format!(
        r#"{{"__metadata__":{{"format":"pt"}},{}}}"#,
        entries.join(",")
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + names.len(), 0);
    out
}

fuzz_target!(|data: &[u8]| {
    let a = shard(&["x", "y"]);
    let b = shard(&["z", "y2"]);
    let shards: [(&str, &[u8]); 2] = [("a.safetensors", &a), ("b.safetensors", &b)];
    let _ = hoist_format::fuzzing::index(
        std::path::Path::new("m/model.safetensors.index.json"),
        data,
        &shards,
    );
});
