//! [`Store`]: the sources, resolution order, and the operations on names.

use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::name::ModelName;
use crate::{hf, ollama, pull, ModelEntry, PullStatus, Source, StoreError};

/// Where the Hugging Face hub is when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// Where Ollama's registry is when `OLLAMA_REGISTRY` is not set.
pub const DEFAULT_OLLAMA_REGISTRY: &str = "https://registry.ollama.ai";

/// The store's roots and remote endpoints, given explicitly (tests) or read from the
/// environment ([`StoreConfig::from_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// hoist's own store, the only directory written to.
    pub root: PathBuf,
    /// The Hugging Face hub cache (read-only); `None`: not searched.
    pub hf_cache: Option<PathBuf>,
    /// Ollama's model store (read-only); `None`: not searched.
    pub ollama_models: Option<PathBuf>,
    /// The Hugging Face hub's base URL, without a trailing `/`.
    pub hf_endpoint: String,
    /// Ollama's registry's base URL, without a trailing `/`.
    pub ollama_registry: String,
    /// A Hugging Face access token, sent to the hub (for gated or private repositories).
    pub hf_token: Option<String>,
}

/// A non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_path(name: &str) -> Option<PathBuf> {
    env_var(name).map(PathBuf::from)
}

impl StoreConfig {
    /// The configuration the environment gives: `HOIST_MODELS` (else
    /// `$XDG_DATA_HOME/hoist/models`, else `~/.local/share/hoist/models`); `HF_HUB_CACHE` (else
    /// `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
    /// `~/.cache/huggingface/hub`); `OLLAMA_MODELS` (else `~/.ollama/models`); `HF_ENDPOINT`,
    /// `OLLAMA_REGISTRY`, `HF_TOKEN`.
    pub fn from_env() -> Result<StoreConfig, StoreError> {
        let home = env_path("HOME");
        let root = env_path("HOIST_MODELS")
            .or_else(|| env_path("XDG_DATA_HOME").map(|d| d.join("hoist/models")))
            .or_else(|| home.as_ref().map(|h| h.join(".local/share/hoist/models")))
            .ok_or(StoreError::NoHome)?;
        let hf_cache = env_path("HF_HUB_CACHE")
            .or_else(|| env_path("HF_HOME").map(|d| d.join("hub")))
            .or_else(|| env_path("XDG_CACHE_HOME").map(|d| d.join("huggingface/hub")))
            .or_else(|| home.as_ref().map(|h| h.join(".cache/huggingface/hub")));
        let ollama_models =
            env_path("OLLAMA_MODELS").or_else(|| home.as_ref().map(|h| h.join(".ollama/models")));
        let url = |var: &str, default: &str| {
            env_var(var)
                .unwrap_or_else(|| default.to_string())
                .trim_end_matches('/')
                .to_string()
        };
        Ok(StoreConfig {
            root,
            hf_cache,
            ollama_models,
            hf_endpoint: url("HF_ENDPOINT", DEFAULT_HF_ENDPOINT),
            ollama_registry: url("OLLAMA_REGISTRY", DEFAULT_OLLAMA_REGISTRY),
            hf_token: env_var("HF_TOKEN"),
        })
    }
}

/// hoist's model store and the read-only sources beside it.
#[derive(Clone, Debug)]
pub struct Store {
    config: StoreConfig,
}

impl Store {
    /// The store the environment names ([`StoreConfig::from_env`]).
    pub fn open_default() -> Result<Store, StoreError> {
        Ok(Store::open(StoreConfig::from_env()?))
    }

    /// A store with explicit roots. Nothing is created until something is written.
    pub fn open(config: StoreConfig) -> Store {
        Store { config }
    }

    /// Its configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// hoist's own store's root.
    pub fn root(&self) -> &Path {
        &self.config.root
    }

    /// hoist's own Hugging Face cache (hub layout).
    pub(crate) fn hub_dir(&self) -> PathBuf {
        self.config.root.join(hf::HUB_DIR)
    }

    /// Every model of every source, hoist's own first, each source sorted by name. A name held
    /// by several sources appears once per source; [`Store::resolve`] picks the first.
    pub fn list(&self) -> Result<Vec<ModelEntry>, StoreError> {
        let mut all = ollama::discover(&self.config.root, Source::Hoist)?;
        all.extend(ollama::discover_aliases(&self.config.root)?);
        all.extend(hf::discover(&self.hub_dir(), Source::Hoist)?);
        if let Some(dir) = &self.config.ollama_models {
            all.extend(ollama::discover(dir, Source::Ollama)?);
        }
        if let Some(dir) = &self.config.hf_cache {
            all.extend(hf::discover(dir, Source::HuggingFace)?);
        }
        Ok(all)
    }

    /// The model a name means (see the crate docs for the order of sources).
    pub fn resolve(&self, name: &str) -> Result<ModelEntry, StoreError> {
        let parsed = ModelName::parse(name)?;
        let found = match &parsed {
            ModelName::Ollama { .. } => {
                let mut found = ollama::find(&self.config.root, Source::Hoist, &parsed)?;
                if found.is_none() {
                    found = ollama::find_alias(&self.config.root, &parsed)?;
                }
                match (found, &self.config.ollama_models) {
                    (None, Some(dir)) => ollama::find(dir, Source::Ollama, &parsed)?,
                    (found, _) => found,
                }
            }
            ModelName::HuggingFace { .. } => {
                let found = hf::find(&self.hub_dir(), Source::Hoist, &parsed)?;
                match (found, &self.config.hf_cache) {
                    (None, Some(dir)) => hf::find(dir, Source::HuggingFace, &parsed)?,
                    (found, _) => found,
                }
            }
        };
        found.ok_or_else(|| StoreError::NotFound {
            name: name.to_string(),
        })
    }

    /// Removes a name from hoist's own store, and the blobs only it used. Names found only in
    /// the read-only sources are refused with [`StoreError::ReadOnly`].
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let entry = self.resolve(name)?;
        let parsed = ModelName::parse(name)?;
        match entry.source {
            Source::Hoist => {}
            Source::Ollama | Source::HuggingFace => {
                return Err(StoreError::ReadOnly {
                    name: name.to_string(),
                    source_name: entry.source.name(),
                    path: entry.path,
                })
            }
        }
        match &parsed {
            ModelName::Ollama { .. } => {
                if !ollama::remove(&self.config.root, &parsed)? {
                    ollama::remove_alias(&self.config.root, &parsed)?;
                }
                Ok(())
            }
            ModelName::HuggingFace { .. } => hf::remove(&self.hub_dir(), &parsed),
        }
    }

    /// Gives the model `src` names a second name, `dst` (Ollama style: `NAME[:TAG]`), in hoist's
    /// store, sharing its files: a copy of the manifest when `src` is in hoist's Ollama-layout
    /// store, else an alias recording the model's path. No weights are copied.
    pub fn copy(&self, src: &str, dst: &str) -> Result<(), StoreError> {
        let entry = self.resolve(src)?;
        let dst_name = ModelName::parse(dst)?;
        if !matches!(dst_name, ModelName::Ollama { .. }) {
            return Err(StoreError::Invalid {
                what: "copy destination",
                value: dst.to_string(),
                reason: "use an Ollama-style name, NAME[:TAG]".into(),
            });
        }
        if self.resolve_own(&dst_name)?.is_some() {
            return Err(StoreError::Exists {
                name: dst_name.to_string(),
            });
        }
        let src_name = ModelName::parse(src)?;
        let own_manifest = entry.source == Source::Hoist
            && ollama::manifest_path(&self.config.root, &src_name).is_some_and(|p| p.is_file());
        if own_manifest {
            ollama::copy_manifest(&self.config.root, &src_name, &dst_name)
        } else {
            ollama::write_alias(&self.config.root, &dst_name, &entry.path)
        }
    }

    /// A name's entry in hoist's own store only.
    fn resolve_own(&self, name: &ModelName) -> Result<Option<ModelEntry>, StoreError> {
        match name {
            ModelName::Ollama { .. } => Ok(ollama::find(&self.config.root, Source::Hoist, name)?
                .or(ollama::find_alias(&self.config.root, name)?)),
            ModelName::HuggingFace { .. } => hf::find(&self.hub_dir(), Source::Hoist, name),
        }
    }

    /// Downloads a model into hoist's store: `NAME[:TAG]` from Ollama's registry,
    /// `ORG/NAME[@REVISION]` from the Hugging Face hub. Files already there (same size and
    /// hash) are not downloaded again; a `.partial` file left by an interrupted pull is
    /// resumed. `progress` sees each step.
    pub fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&PullStatus),
    ) -> Result<ModelEntry, StoreError> {
        let parsed = ModelName::parse(name)?;
        std::fs::create_dir_all(&self.config.root).map_err(io_err(&self.config.root))?;
        match &parsed {
            ModelName::Ollama { .. } => pull::pull_ollama(self, &parsed, progress)?,
            ModelName::HuggingFace { .. } => pull::pull_hf(self, &parsed, progress)?,
        }
        let entry = self
            .resolve_own(&parsed)?
            .ok_or_else(|| StoreError::Malformed {
                what: name.to_string(),
                reason: "the pulled files hold no checkpoint hoist can open".into(),
            })?;
        progress(&PullStatus::step("success"));
        Ok(entry)
    }
}
