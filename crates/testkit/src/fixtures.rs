//! Small checkpoints with awkward layouts, for the GPU correctness checks: tensors of 0, 1 and
//! 4097 bytes, data sections that start at unaligned offsets, shards of very different sizes,
//! GGUF files with non-default alignments. Contents are pseudo-random (never zeros).

use std::path::{Path, PathBuf};

use hoist_format::DType;
use hoist_synth::{fill_random, write_safetensors, TensorSpec};

/// One written checkpoint.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// Short name for reports.
    pub name: String,
    /// What to open (a file or a directory).
    pub path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

fn u8s(name: &str, len: u64) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dtype: DType::U8,
        shape: vec![len],
    }
}

/// Writes every fixture under `dir`; returns them.
pub fn write_fixtures(dir: &Path) -> Result<Vec<Fixture>, String> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut out = Vec::new();
    let fill =
        |seed: u64| move |i: usize, off: u64, buf: &mut [u8]| fill_random(buf, seed, i as u64, off);

    // One file, odd sizes, every tensor at an offset that is not 4 KiB aligned.
    let odd = dir.join("odd.safetensors");
    let specs = vec![
        u8s("a.one", 1),
        u8s("b.three", 3),
        u8s("c.empty", 0),
        u8s("d.page_minus_one", 4095),
        u8s("e.page", 4096),
        u8s("f.page_plus_one", 4097),
        u8s("g.one_again", 1),
        TensorSpec {
            name: "h.bf16".into(),
            dtype: DType::BF16,
            shape: vec![3, 5],
        },
        TensorSpec {
            name: "i.f32".into(),
            dtype: DType::F32,
            shape: vec![7],
        },
        u8s("j.64k_plus_one", 65537),
        u8s("k.big_odd", (8 << 20) + 5),
        u8s("l.one_more", 1),
        u8s("m.prime", 123_457),
        u8s("n.two", 2),
    ];
    write_safetensors(&odd, &specs, &[("format", "pt")], fill(11)).map_err(|e| e.to_string())?;
    out.push(Fixture {
        name: "odd-safetensors".into(),
        path: odd,
    });

    // Two shards of very different sizes, hub-style, with an index.
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).map_err(io(&sharded))?;
    let shard_a = vec![u8s("s.a.one", 1), u8s("s.a.small", 777)];
    let shard_b = vec![
        u8s("s.b.big", (3 << 20) + 1),
        u8s("s.b.one", 1),
        u8s("s.b.mid", 300_001),
    ];
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    write_safetensors(
        &sharded.join(names[0]),
        &shard_a,
        &[("format", "pt")],
        fill(12),
    )
    .map_err(|e| e.to_string())?;
    write_safetensors(
        &sharded.join(names[1]),
        &shard_b,
        &[("format", "pt")],
        fill(13),
    )
    .map_err(|e| e.to_string())?;
    let mut map = serde_json::Map::new();
    for t in &shard_a {
        map.insert(t.name.clone(), names[0].into());
    }
    for t in &shard_b {
        map.insert(t.name.clone(), names[1].into());
    }
    let index = serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": map });
    let ip = sharded.join(hoist_format::INDEX_FILE_NAME);
    std::fs::write(&ip, index.to_string()).map_err(io(&ip))?;
    out.push(Fixture {
        name: "sharded-uneven".into(),
        path: sharded,
    });

    // The synthetic tiny Llama (two shards).
    let tiny = dir.join("tiny");
    let spec = hoist_synth::preset("tiny").ok_or("no tiny preset")?.spec;
    let root = hoist_synth::write_checkpoint(&spec, &tiny, 14).map_err(|e| e.to_string())?;
    out.push(Fixture {
        name: "tiny-llama".into(),
        path: root,
    });

    // GGUF with non-default alignments.
    for alignment in [16u64, 64, 4096] {
        let p = dir.join(format!("align{alignment}.gguf"));
        write_gguf(&p, alignment, 20 + alignment)?;
        out.push(Fixture {
            name: format!("gguf-align{alignment}"),
            path: p,
        });
    }
    Ok(out)
}

/// A GGUF v3 file: F32, F16, I8 and Q8_0 tensors of odd sizes, data aligned to `alignment`.
fn write_gguf(path: &Path, alignment: u64, seed: u64) -> Result<(), String> {
    // (name, shape outermost first, ggml type, bytes)
    let tensors: Vec<(&str, Vec<u64>, u32, u64)> = vec![
        ("token_embd.weight", vec![5], 0, 20),
        ("one.i8", vec![1], 24, 1),
        ("f16.three", vec![3], 1, 6),
        ("i8.page_plus_one", vec![4097], 24, 4097),
        ("q8.blocks", vec![2, 64], 8, 2 * 2 * 34),
        ("f32.big", vec![300_007], 0, 1_200_028),
        ("one.more.i8", vec![1], 24, 1),
    ];
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let align = |n: u64| n.next_multiple_of(alignment);
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(2u64.to_le_bytes());
    put_str(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    put_str(&mut out, "llama");
    put_str(&mut out, "general.alignment");
    out.extend(4u32.to_le_bytes());
    out.extend((alignment as u32).to_le_bytes());
    let mut rel = 0u64;
    let mut offsets = Vec::new();
    for (name, shape, ty, len) in &tensors {
        put_str(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(rel.to_le_bytes());
        offsets.push(rel);
        rel = align(rel + len);
    }
    let data = align(out.len() as u64);
    out.resize(data as usize, 0);
    for (i, ((_, _, _, len), off)) in tensors.iter().zip(&offsets).enumerate() {
        out.resize((data + off) as usize, 0);
        let mut buf = vec![0u8; *len as usize];
        fill_random(&mut buf, seed, i as u64, 0);
        out.extend_from_slice(&buf);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    std::fs::write(path, out).map_err(io(path))
}
