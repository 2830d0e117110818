//! The Ollama layout (`manifests/registry.ollama.ai/NAMESPACE/NAME/TAG` + `blobs/sha256-HEX`),
//! read in Ollama's store and in hoist's, written in hoist's; and hoist's aliases.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::files::{self, modified, names_in, prune_empty, sha256_of, write_atomic};
use crate::name::{Digest, ModelName};
use crate::{ModelEntry, ModelFormat, Source, StoreError};

/// The registry directory under `manifests/` that holds Ollama's own models.
pub(crate) const REGISTRY_DIR: &str = "registry.ollama.ai";
/// The media type of the layer holding the GGUF weights.
pub(crate) const MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";
/// The manifest media type asked of the registry.
pub(crate) const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Most bytes of a manifest read (they are a few kB).
pub(crate) const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// hoist's aliases directory (see [`write_alias`]).
const ALIASES_DIR: &str = "aliases";

/// One blob a manifest references.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Layer {
    /// What the blob holds.
    pub media_type: String,
    /// `sha256:HEX`, checked by [`Manifest::parse`].
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    #[serde(default)]
    config: Option<Layer>,
    layers: Vec<Layer>,
}

/// A parsed manifest whose every digest is checked.
pub(crate) struct Manifest {
    /// The bytes as stored (their sha256 is the model's digest).
    pub raw: Vec<u8>,
    /// The config blob, then the layers, with their checked digests.
    pub blobs: Vec<(Digest, Layer)>,
}

impl Manifest {
    /// Parses a manifest and checks every digest in it (`what` names it in errors).
    pub fn parse(raw: Vec<u8>, what: &str) -> Result<Manifest, StoreError> {
        let json: ManifestJson =
            serde_json::from_slice(&raw).map_err(|e| StoreError::Malformed {
                what: what.to_string(),
                reason: format!("not an Ollama manifest: {e}"),
            })?;
        let blobs = json
            .config
            .into_iter()
            .chain(json.layers)
            .map(|l| Ok((Digest::parse(&l.digest)?, l)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Manifest { raw, blobs })
    }

    /// The GGUF weights' blob, if any.
    pub fn model(&self) -> Option<&(Digest, Layer)> {
        self.blobs
            .iter()
            .find(|(_, l)| l.media_type == MODEL_MEDIA_TYPE)
    }
}

/// The manifest path of an Ollama-style name under `root`; `None` for a Hugging Face name.
pub(crate) fn manifest_path(root: &Path, name: &ModelName) -> Option<PathBuf> {
    match name {
        ModelName::Ollama {
            namespace,
            name,
            tag,
        } => Some(
            root.join("manifests")
                .join(REGISTRY_DIR)
                .join(namespace)
                .join(name)
                .join(tag),
        ),
        ModelName::HuggingFace { .. } => None,
    }
}

fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join("blobs").join(digest.file_name())
}

fn read_manifest(path: &Path) -> Result<Manifest, StoreError> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    Manifest::parse(raw, &path.display().to_string())
}

/// The entry of a manifest under `root`; `None` when there is none, or when it has no model
/// layer or its model blob is missing (an interrupted pull: nothing to run).
fn entry(root: &Path, source: Source, name: &ModelName) -> Result<Option<ModelEntry>, StoreError> {
    let Some(path) = manifest_path(root, name).filter(|p| p.is_file()) else {
        return Ok(None);
    };
    let manifest = read_manifest(&path)?;
    let Some((digest, _)) = manifest.model() else {
        return Ok(None);
    };
    let blob = blob_path(root, digest);
    if !blob.is_file() {
        return Ok(None);
    }
    Ok(Some(ModelEntry {
        name: name.to_string(),
        path: blob,
        source,
        size_bytes: manifest.blobs.iter().map(|(_, l)| l.size).sum(),
        modified: modified(&path),
        digest: Some(sha256_of(&manifest.raw).to_string()),
        format: ModelFormat::Gguf,
    }))
}

/// The model `name` means in the Ollama-layout store at `root`.
pub(crate) fn find(
    root: &Path,
    source: Source,
    name: &ModelName,
) -> Result<Option<ModelEntry>, StoreError> {
    entry(root, source, name)
}

/// Every model of the Ollama-layout store at `root` (manifests whose path parts are not valid
/// names, or that cannot be read, are passed over: they are not hoist's to judge).
pub(crate) fn discover(root: &Path, source: Source) -> Result<Vec<ModelEntry>, StoreError> {
    let reg = root.join("manifests").join(REGISTRY_DIR);
    Ok(walk_names(&reg)?
        .into_iter()
        .filter_map(|(name, _)| entry(root, source, &name).ok().flatten())
        .collect())
}

/// Every `NAMESPACE/MODEL/TAG` file under `dir` (Ollama's manifest layout, and hoist's
/// aliases) whose parts make a valid name, with its path; others are passed over.
fn walk_names(dir: &Path) -> Result<Vec<(ModelName, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for namespace in names_in(dir)? {
        for model in names_in(&dir.join(&namespace))? {
            for tag in names_in(&dir.join(&namespace).join(&model))? {
                if let Ok(name) = ModelName::parse(&format!("{namespace}/{model}:{tag}")) {
                    out.push((name, dir.join(&namespace).join(&model).join(&tag)));
                }
            }
        }
    }
    Ok(out)
}

/// Writes a manifest pulled from a registry under hoist's store.
pub(crate) fn write_manifest(
    root: &Path,
    name: &ModelName,
    manifest: &Manifest,
) -> Result<(), StoreError> {
    let path = manifest_path(root, name).ok_or_else(|| not_ollama(name))?;
    write_atomic(&path, &manifest.raw)
}

fn not_ollama(name: &ModelName) -> StoreError {
    StoreError::Invalid {
        what: "Ollama-style name",
        value: name.to_string(),
        reason: "use NAME[:TAG]".into(),
    }
}

/// Gives the manifest of `src` a second name, `dst`, in hoist's store.
pub(crate) fn copy_manifest(
    root: &Path,
    src: &ModelName,
    dst: &ModelName,
) -> Result<(), StoreError> {
    let from = manifest_path(root, src).ok_or_else(|| not_ollama(src))?;
    let manifest = read_manifest(&from)?;
    write_manifest(root, dst, &manifest)
}

/// Removes the manifest of `name` from hoist's store and the blobs no other manifest there
/// uses. Returns false when there is no such manifest.
pub(crate) fn remove(root: &Path, name: &ModelName) -> Result<bool, StoreError> {
    let Some(path) = manifest_path(root, name).filter(|p| p.is_file()) else {
        return Ok(false);
    };
    let removed = read_manifest(&path)?;
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    if let Some(dir) = path.parent() {
        prune_empty(dir, &root.join("manifests"));
    }
    let still_used: Vec<Digest> = discover_manifests(root)?
        .into_iter()
        .flat_map(|m| m.blobs.into_iter().map(|(d, _)| d))
        .collect();
    for (digest, _) in removed.blobs {
        if !still_used.contains(&digest) {
            let blob = blob_path(root, &digest);
            match std::fs::remove_file(&blob) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&blob)(e)),
                _ => {}
            }
        }
    }
    Ok(true)
}

/// Every readable manifest under `root`.
fn discover_manifests(root: &Path) -> Result<Vec<Manifest>, StoreError> {
    let reg = root.join("manifests").join(REGISTRY_DIR);
    Ok(walk_names(&reg)?
        .into_iter()
        .filter_map(|(_, path)| read_manifest(&path).ok())
        .collect())
}

/// An alias: a name in hoist's store for a model elsewhere (another source, or a Hugging Face
/// repository in hoist's store), by its path.
#[derive(Deserialize, Serialize)]
struct Alias {
    path: PathBuf,
}

fn alias_path(root: &Path, name: &ModelName) -> Option<PathBuf> {
    match name {
        ModelName::Ollama {
            namespace,
            name,
            tag,
        } => Some(root.join(ALIASES_DIR).join(namespace).join(name).join(tag)),
        ModelName::HuggingFace { .. } => None,
    }
}

/// Records `name` as an alias of the model at `target`.
pub(crate) fn write_alias(root: &Path, name: &ModelName, target: &Path) -> Result<(), StoreError> {
    let path = alias_path(root, name).ok_or_else(|| not_ollama(name))?;
    let json = serde_json::to_vec_pretty(&Alias {
        path: target.to_path_buf(),
    })
    .map_err(|e| StoreError::Malformed {
        what: path.display().to_string(),
        reason: e.to_string(),
    })?;
    write_atomic(&path, &json)
}

/// The model an alias names; `None` when there is no alias, or its target is gone.
pub(crate) fn find_alias(root: &Path, name: &ModelName) -> Result<Option<ModelEntry>, StoreError> {
    let Some(path) = alias_path(root, name).filter(|p| p.is_file()) else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let alias: Alias = serde_json::from_slice(&bytes).map_err(|e| StoreError::Malformed {
        what: path.display().to_string(),
        reason: format!("not a hoist alias: {e}"),
    })?;
    let Some((target, format)) = files::checkpoint_in(&alias.path) else {
        return Ok(None);
    };
    Ok(Some(ModelEntry {
        name: name.to_string(),
        size_bytes: files::size_of(&target),
        path: target,
        source: Source::Hoist,
        modified: modified(&path),
        digest: None,
        format,
    }))
}

/// Every alias in hoist's store whose target is still there.
pub(crate) fn discover_aliases(root: &Path) -> Result<Vec<ModelEntry>, StoreError> {
    Ok(walk_names(&root.join(ALIASES_DIR))?
        .into_iter()
        .filter_map(|(name, _)| find_alias(root, &name).ok().flatten())
        .collect())
}

/// Removes an alias (only the name: its target is untouched).
pub(crate) fn remove_alias(root: &Path, name: &ModelName) -> Result<(), StoreError> {
    let path = alias_path(root, name).ok_or_else(|| not_ollama(name))?;
    std::fs::remove_file(&path).map_err(io_err(&path))?;
    if let Some(dir) = path.parent() {
        prune_empty(dir, &root.join(ALIASES_DIR));
    }
    Ok(())
}
