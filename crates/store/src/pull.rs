//! Pulls: Ollama's registry protocol and the Hugging Face hub's.

use std::path::Path;

use serde::Deserialize;

use crate::fetch::{Client, Want};
use crate::hf;
use crate::name::{check_blob_id, check_commit, check_file_path, Digest, ModelName};
use crate::ollama::{self, Manifest, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES};
use crate::{PullStatus, Store, StoreError};

/// Most bytes of a hub file listing read.
const MAX_LISTING_BYTES: u64 = 16 << 20;
/// Weight formats not downloaded when a repository has safetensors (hoist reads those).
const OTHER_WEIGHTS: [&str; 9] = [
    ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".ckpt", ".gguf",
];

/// Downloads one blob (unless already there with the right size) to `dest`, reporting progress.
fn fetch_blob(
    client: &Client,
    url: &str,
    dest: &Path,
    label: String,
    digest: Option<String>,
    want: &Want,
    progress: &mut dyn FnMut(&PullStatus),
) -> Result<(), StoreError> {
    let status = |completed| PullStatus {
        status: label.clone(),
        digest: digest.clone(),
        total: Some(want.size_bytes),
        completed: Some(completed),
    };
    let done = std::fs::metadata(dest).is_ok_and(|m| m.is_file() && m.len() == want.size_bytes);
    if !done {
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(crate::error::io_err(dir))?;
        }
        progress(&status(0));
        client.download(url, dest, want, &mut |n| progress(&status(n)))?;
    }
    progress(&status(want.size_bytes));
    Ok(())
}

/// `NAME[:TAG]` from Ollama's registry into hoist's store, in Ollama's layout.
pub(crate) fn pull_ollama(
    store: &Store,
    name: &ModelName,
    progress: &mut dyn FnMut(&PullStatus),
) -> Result<(), StoreError> {
    let ModelName::Ollama {
        namespace,
        name: model,
        tag,
    } = name
    else {
        unreachable!("pull_ollama is called with Ollama names only");
    };
    let config = store.config();
    let client = Client::new(None);
    let base = format!("{}/v2/{namespace}/{model}", config.ollama_registry);
    progress(&PullStatus::step("pulling manifest"));
    let url = format!("{base}/manifests/{tag}");
    let raw = client.get_small(&url, MANIFEST_MEDIA_TYPE, MAX_MANIFEST_BYTES)?;
    // Every digest is checked here, before any becomes a file name.
    let manifest = Manifest::parse(raw, &url)?;
    if manifest.model().is_none() {
        return Err(StoreError::Malformed {
            what: url,
            reason: "the manifest has no model layer (nothing hoist can run)".into(),
        });
    }
    let blobs_dir = store.root().join("blobs");
    for (digest, layer) in &manifest.blobs {
        let want = Want {
            size_bytes: layer.size,
            sha256: Some(digest.clone()),
        };
        fetch_blob(
            &client,
            &format!("{base}/blobs/{digest}"),
            &blobs_dir.join(digest.file_name()),
            format!("pulling {digest}"),
            Some(digest.to_string()),
            &want,
            progress,
        )?;
    }
    progress(&PullStatus::step("verifying sha256 digest"));
    progress(&PullStatus::step("writing manifest"));
    ollama::write_manifest(store.root(), name, &manifest)
}

#[derive(Deserialize)]
struct Listing {
    sha: String,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sibling {
    rfilename: String,
    size: Option<u64>,
    blob_id: Option<String>,
    lfs: Option<Lfs>,
}

#[derive(Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

/// A file to download, checked.
struct HubFile {
    path: String,
    blob_id: String,
    want: Want,
}

fn hub_file(s: Sibling, url: &str) -> Result<HubFile, StoreError> {
    check_file_path(&s.rfilename)?;
    let missing = |what: &str| StoreError::Malformed {
        what: url.to_string(),
        reason: format!("the listing gives no {what} for {}", s.rfilename),
    };
    let (blob_id, want) = match &s.lfs {
        Some(lfs) => {
            let digest = Digest::from_hex(&lfs.sha256)?;
            let want = Want {
                size_bytes: lfs.size,
                sha256: Some(digest.clone()),
            };
            (digest.hex().to_string(), want)
        }
        None => {
            let id = s.blob_id.clone().ok_or_else(|| missing("blobId"))?;
            let size_bytes = s.size.ok_or_else(|| missing("size"))?;
            (
                id,
                Want {
                    size_bytes,
                    sha256: None,
                },
            )
        }
    };
    check_blob_id(&blob_id)?;
    Ok(HubFile {
        path: s.rfilename,
        blob_id,
        want,
    })
}

/// `ORG/NAME[@REVISION]` from the Hugging Face hub into hoist's store, in the hub's layout.
pub(crate) fn pull_hf(
    store: &Store,
    name: &ModelName,
    progress: &mut dyn FnMut(&PullStatus),
) -> Result<(), StoreError> {
    let ModelName::HuggingFace {
        org,
        name: repo_name,
        revision,
    } = name
    else {
        unreachable!("pull_hf is called with Hugging Face names only");
    };
    let config = store.config();
    let client = Client::new(config.hf_token.as_deref());
    progress(&PullStatus::step("pulling manifest"));
    let url = format!(
        "{}/api/models/{org}/{repo_name}/revision/{revision}?blobs=true",
        config.hf_endpoint
    );
    let raw = client.get_small(&url, "application/json", MAX_LISTING_BYTES)?;
    let listing: Listing = serde_json::from_slice(&raw).map_err(|e| StoreError::Malformed {
        what: url.clone(),
        reason: format!("not a hub file listing: {e}"),
    })?;
    check_commit(&listing.sha)?;
    let files = listing
        .siblings
        .into_iter()
        .map(|s| hub_file(s, &url))
        .collect::<Result<Vec<_>, _>>()?;
    let has_safetensors = files.iter().any(|f| f.path.ends_with(".safetensors"));
    let files: Vec<HubFile> = files
        .into_iter()
        .filter(|f| !(has_safetensors && OTHER_WEIGHTS.iter().any(|ext| f.path.ends_with(ext))))
        .collect();
    let repo = hf::repo_dir(&store.hub_dir(), org, repo_name);
    for f in &files {
        fetch_blob(
            &client,
            &format!(
                "{}/{org}/{repo_name}/resolve/{}/{}",
                config.hf_endpoint, listing.sha, f.path
            ),
            &repo.join("blobs").join(&f.blob_id),
            format!("pulling {}", f.path),
            f.want.sha256.as_ref().map(Digest::to_string),
            &f.want,
            progress,
        )?;
    }
    progress(&PullStatus::step("verifying sha256 digest"));
    progress(&PullStatus::step("writing manifest"));
    for f in &files {
        hf::link_file(&repo, &listing.sha, &f.path, &f.blob_id)?;
    }
    hf::write_ref(&repo, revision, &listing.sha)
}
