//! `hoist list`, `show`, `rm`, `cp`, `pull`: the model store (crates/store, docs/store.md).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context;
use hoist_store::{describe, PullStatus, Store, StoreError};

use crate::util::{bytes_bar, human_bytes};

/// Arguments of `hoist show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// A model name (`hoist list` shows them).
    pub name: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `hoist pull`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// `NAME[:TAG]` (Ollama's registry) or `ORG/NAME[@REVISION]` (the Hugging Face hub).
    pub name: String,
    /// Print each step as one JSON object per line (Ollama's `/api/pull` statuses).
    #[arg(long)]
    pub json: bool,
}

fn open() -> anyhow::Result<Store> {
    Store::open_default().context("cannot open the model store")
}

/// The checkpoint path a `hoist run MODEL` argument names when it is not an existing path:
/// the store's model of that name; an argument that is not a valid name keeps the file
/// system's error (a mistyped path reads "No such file or directory").
pub fn resolve_model_arg(model: &Path) -> anyhow::Result<PathBuf> {
    let not_a_path = || match std::fs::metadata(model) {
        Ok(_) => Ok(model.to_path_buf()),
        Err(e) => Err(anyhow::Error::new(e)),
    };
    let Some(name) = model.to_str() else {
        return not_a_path();
    };
    match open()?.resolve(name) {
        Ok(entry) => Ok(entry.path),
        Err(StoreError::Invalid { .. }) => not_a_path(),
        Err(e) => Err(e.into()),
    }
}

/// How long ago `t` was, in the largest whole unit.
fn age(t: SystemTime) -> String {
    let secs = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    match secs {
        0..60 => "just now".into(),
        60..3600 => format!("{} minutes ago", secs / 60),
        3600..86400 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// `hoist list`.
pub fn list() -> anyhow::Result<()> {
    let entries = open()?.list()?;
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<11}  {:<11}  {:>9}  MODIFIED",
        "NAME", "SOURCE", "FORMAT", "SIZE"
    );
    for e in &entries {
        println!(
            "{:<width$}  {:<11}  {:<11}  {:>9}  {}",
            e.name,
            e.source.name(),
            format!("{:?}", e.format).to_lowercase(),
            human_bytes(e.size_bytes),
            age(e.modified)
        );
    }
    Ok(())
}

/// `hoist show NAME`.
pub fn show(a: ShowArgs) -> anyhow::Result<()> {
    let entry = open()?.resolve(&a.name)?;
    let d = describe(&entry).with_context(|| format!("cannot read {}", entry.path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
        return Ok(());
    }
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("name          {}", entry.name);
    println!("path          {}", entry.path.display());
    println!("source        {}", entry.source.name());
    println!("architecture  {}", or_none(d.architecture.clone()));
    println!("parameters    {}", d.parameters);
    let dtypes: Vec<String> = d
        .dtypes
        .iter()
        .map(|(t, pct)| format!("{t} {pct:.1}%"))
        .collect();
    println!("dtypes        {}", dtypes.join(", "));
    println!(
        "context       {}",
        or_none(d.context_length.map(|c| c.to_string()))
    );
    println!("size          {}", human_bytes(entry.size_bytes));
    println!("license       {}", or_none(d.license.clone()));
    if let Some(err) = &d.config_error {
        println!("note          hoist cannot run it: {err}");
    }
    if let Some(t) = &d.chat_template {
        println!("template\n{t}");
    }
    Ok(())
}

/// `hoist rm NAME`.
pub fn rm(name: &str) -> anyhow::Result<()> {
    open()?.remove(name)?;
    println!("deleted '{name}'");
    Ok(())
}

/// `hoist cp SRC DST`.
pub fn cp(src: &str, dst: &str) -> anyhow::Result<()> {
    open()?.copy(src, dst)?;
    println!("copied '{src}' to '{dst}'");
    Ok(())
}

/// `hoist pull NAME`.
pub fn pull(a: PullArgs) -> anyhow::Result<()> {
    let store = open()?;
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    let mut show = |s: &PullStatus| {
        if a.json {
            if let Ok(line) = serde_json::to_string(s) {
                println!("{line}");
            }
            return;
        }
        match (s.total, s.completed) {
            (Some(total), Some(done)) => {
                if bar.as_ref().is_none_or(|(label, _)| *label != s.status) {
                    bar = Some((s.status.clone(), bytes_bar(total, &s.status)));
                }
                if let Some((_, b)) = &bar {
                    b.set_position(done);
                }
            }
            _ => {
                bar = None;
                eprintln!("{}", s.status);
            }
        }
    };
    let entry = store
        .pull(&a.name, &mut show)
        .with_context(|| format!("cannot pull {}", a.name))?;
    if !a.json {
        eprintln!("{} is at {}", entry.name, entry.path.display());
    }
    Ok(())
}
