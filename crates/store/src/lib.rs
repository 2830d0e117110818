//! hoist's model store: names for models, wherever they are on the machine, and pulls.
//!
//! # Sources
//!
//! - **hoist's own store** ([`Source::Hoist`]), the only one hoist writes to: `HOIST_MODELS`,
//!   else `$XDG_DATA_HOME/hoist/models`, else `~/.local/share/hoist/models`. It holds
//!   Ollama-layout models (`manifests/registry.ollama.ai/NAMESPACE/NAME/TAG` JSON manifests and
//!   `blobs/sha256-HEX`), Hugging Face repositories in the hub's cache layout under `hub/`
//!   (`hub/models--ORG--NAME/{blobs,refs,snapshots}`: `HF_HUB_CACHE=$HOIST_MODELS/hub` lets
//!   transformers use them too), and aliases made by [`Store::copy`] (`aliases/NAME/TAG`).
//! - **The Hugging Face cache** ([`Source::HuggingFace`], read-only): `HF_HUB_CACHE`, else
//!   `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
//! - **Ollama's store** ([`Source::Ollama`], read-only): `OLLAMA_MODELS`, else
//!   `~/.ollama/models`. Its GGUF blobs run as they are, without a copy.
//!
//! # Names
//!
//! - `NAME[:TAG]` (Ollama style; the tag defaults to `latest`) names an Ollama-layout model in
//!   the `library` namespace; `NAMESPACE/NAME:TAG` (the tag spelled out) one in another
//!   namespace. A name with a `:` is always Ollama style.
//! - `ORG/NAME[@REVISION]` (Hugging Face style, no `:`; the revision defaults to `main`) names a
//!   Hugging Face repository at a branch, tag or 40-hex commit.
//!
//! [`Store::list`] shows every model under the name [`Store::resolve`] takes (Ollama names
//! always with their tag). When two sources hold the same name, **hoist's own store wins**
//! (its manifests, then its aliases), then Ollama's store for Ollama names, or the Hugging Face
//! cache for Hugging Face names; `list` shows every copy, each with its [`Source`].
//!
//! # Safety
//!
//! Every name, tag, revision, digest and file name is checked by [`name`] before it becomes
//! part of a path (Ollama's CVE-2024-37032 came from an unchecked digest): nothing is ever
//! written outside the store's root. Downloads land in `*.partial` files (kept for a resumed
//! pull) and are renamed to their final name only once their size and hash are verified.

#![warn(missing_docs)]

mod describe;
mod error;
mod fetch;
mod files;
mod hf;
pub mod name;
mod ollama;
mod pull;
mod store;

use std::path::PathBuf;
use std::time::SystemTime;

pub use describe::{describe, ModelDetails};
pub use error::StoreError;
pub use name::ModelName;
pub use store::{Store, StoreConfig};

/// Where a model was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// hoist's own store (the only one [`Store::remove`] changes).
    Hoist,
    /// The Hugging Face hub cache (read-only).
    HuggingFace,
    /// Ollama's model store (read-only).
    Ollama,
}

impl Source {
    /// A short word for listings: `hoist`, `huggingface`, `ollama`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Hoist => "hoist",
            Source::HuggingFace => "huggingface",
            Source::Ollama => "ollama",
        }
    }
}

/// A checkpoint's file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// One GGUF file.
    Gguf,
    /// A directory of safetensors files with config.json and the tokenizer.
    Safetensors,
}

/// A model the store knows, under one name.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ModelEntry {
    /// The name [`Store::list`] shows and [`Store::resolve`] takes.
    pub name: String,
    /// What `hoist_engine::Engine::load` and `hoist_format::TensorTable::open` take: a GGUF file
    /// or a model directory.
    pub path: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// Bytes of its files (the weights, the tokenizer, the configuration).
    pub size_bytes: u64,
    /// When it was last written (its manifest, ref or snapshot).
    #[serde(skip)]
    pub modified: SystemTime,
    /// `sha256:HEX` of its Ollama manifest; `None` for Hugging Face repositories.
    pub digest: Option<String>,
    /// Its file format.
    pub format: ModelFormat,
}

/// A step of a pull, in Ollama's words, for progress displays and `/api/pull`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PullStatus {
    /// `pulling manifest`, `pulling <digest or file>`, `verifying sha256 digest`,
    /// `writing manifest`, `success`.
    pub status: String,
    /// The blob being pulled (`sha256:HEX`), where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes of it on disk so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed: Option<u64>,
}

impl PullStatus {
    /// A status with no blob.
    pub fn step(status: &str) -> PullStatus {
        PullStatus {
            status: status.to_string(),
            ..PullStatus::default()
        }
    }
}
