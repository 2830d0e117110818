//! `hoist inspect`: the tensor table and metadata of a checkpoint.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use hoist_format::{MetaValue, TensorTable};

use crate::util::human_bytes;

/// Arguments of `hoist inspect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .safetensors or .gguf file, a model.safetensors.index.json, or a directory.
    path: PathBuf,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Show only tensors whose names match this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    filter: Vec<String>,
}

/// Longest metadata value shown in the table view; token lists run to 150k entries.
const MAX_META_CHARS: usize = 120;

/// Runs `hoist inspect`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let table = TensorTable::open(&a.path)
        .with_context(|| format!("cannot inspect {}", a.path.display()))?;
    let selection = table.select(&a.filter)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    match a.json {
        true => write_json(&mut out, &table, &selection),
        false => write_table(&mut out, &table, &selection),
    }
    .and_then(|()| out.flush())
    .context("cannot write to stdout")
}

fn write_json(out: &mut impl Write, table: &TensorTable, selection: &[usize]) -> io::Result<()> {
    let tensors: Vec<_> = selection.iter().map(|&i| &table.tensors[i]).collect();
    let doc = serde_json::json!({
        "root": table.root,
        "files": table.files,
        "tensors": tensors,
        "skipped": table.skipped,
        "metadata": table.metadata,
        "summary": summary(table, selection),
    });
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)
}

fn write_table(out: &mut impl Write, table: &TensorTable, selection: &[usize]) -> io::Result<()> {
    let name_w = selection
        .iter()
        .map(|&i| table.tensors[i].name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 80);
    writeln!(
        out,
        "{:<name_w$}  {:<8} {:<22} {:>12}  {:>4}  {:>14}",
        "name", "dtype", "shape", "bytes", "file", "offset"
    )?;
    for &i in selection {
        let t = &table.tensors[i];
        let shape = format!("{:?}", t.shape);
        writeln!(
            out,
            "{:<name_w$}  {:<8} {:<22} {:>12}  {:>4}  {:>14}",
            t.name,
            t.dtype.name(),
            shape,
            t.len,
            t.file,
            t.offset
        )?;
    }
    writeln!(out)?;
    let s = summary(table, selection);
    writeln!(out, "tensors:    {}", s["tensors"])?;
    writeln!(
        out,
        "bytes:      {} ({})",
        s["bytes"],
        human_bytes(s["bytes"].as_u64().unwrap_or(0))
    )?;
    writeln!(out, "parameters: {}", s["parameters"])?;
    writeln!(out, "dtypes:     {}", s["dtypes"])?;
    for (i, f) in table.files.iter().enumerate() {
        writeln!(
            out,
            "file {i}:     {} ({}, {})",
            f.path.display(),
            human_bytes(f.size_bytes),
            f.format
        )?;
    }
    for sk in &table.skipped {
        writeln!(out, "skipped:    {} ({})", sk.name, sk.reason)?;
    }
    if !table.metadata.is_empty() {
        writeln!(out, "metadata:")?;
        for (k, v) in &table.metadata {
            writeln!(out, "  {k} = {}", short(v))?;
        }
    }
    Ok(())
}

fn summary(table: &TensorTable, selection: &[usize]) -> serde_json::Value {
    let mut dtypes: BTreeMap<&str, u64> = BTreeMap::new();
    for &i in selection {
        *dtypes.entry(table.tensors[i].dtype.name()).or_default() += 1;
    }
    serde_json::json!({
        "tensors": selection.len(),
        "bytes": selection.iter().map(|&i| table.tensors[i].len).sum::<u64>(),
        "parameters": selection.iter().map(|&i| table.tensors[i].elements()).sum::<u64>(),
        "dtypes": dtypes,
        "files": table.files.len(),
        "skipped": table.skipped.len(),
    })
}

fn short(v: &MetaValue) -> String {
    let s = match v {
        MetaValue::Array(a) => {
            let head = serde_json::to_string(&a[..a.len().min(8)]).unwrap_or_default();
            format!("[{} items] {head}", a.len())
        }
        MetaValue::String(s) => format!("{s:?}"),
        other => serde_json::to_string(other).unwrap_or_default(),
    };
    if s.chars().count() > MAX_META_CHARS {
        let cut: String = s.chars().take(MAX_META_CHARS).collect();
        format!("{cut}…")
    } else {
        s
    }
}
