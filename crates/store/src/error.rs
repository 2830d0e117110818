//! The store's errors: each names the model, file or URL concerned and what to do.

use std::path::PathBuf;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name, tag, revision, digest or file name that is not allowed.
    #[error("'{value}' is not a valid {what}: {reason}")]
    Invalid {
        /// What it was meant to be (`model name`, `digest`, …).
        what: &'static str,
        /// The value as given (escaped for display).
        value: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// No source holds the name.
    #[error("no model named '{name}' (see `hoist list`, or `hoist pull {name}`)")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The name is in a store hoist does not change.
    #[error("'{name}' is in {source_name}'s store at {path}, which hoist only reads; remove it with {source_name}'s own tools")]
    ReadOnly {
        /// The name asked for.
        name: String,
        /// `ollama` or `huggingface`.
        source_name: &'static str,
        /// Where it lives.
        path: PathBuf,
    },
    /// The destination of a copy already exists in hoist's store.
    #[error("'{name}' already exists in hoist's store; `hoist rm {name}` first")]
    Exists {
        /// The name asked for.
        name: String,
    },
    /// No default store directory can be found.
    #[error("cannot find hoist's store: set HOIST_MODELS (or HOME)")]
    NoHome,
    /// A file system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest, ref or listing that cannot be understood.
    #[error("{what}: {reason}")]
    Malformed {
        /// The file or URL.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// A request to a registry or hub failed.
    #[error("{url}: {reason}")]
    Http {
        /// The URL asked for.
        url: String,
        /// The status or transport error.
        reason: String,
    },
    /// A download's bytes are not what the manifest or listing promised.
    #[error("{url}: {reason}; the partial download was deleted, pull again")]
    Verify {
        /// The URL downloaded.
        url: String,
        /// Which check failed (size or sha256, expected and got).
        reason: String,
    },
    /// Reading a model's metadata for [`crate::describe`] failed.
    #[error(transparent)]
    Format(#[from] hoist_format::FormatError),
    /// A model's configuration cannot be read.
    #[error(transparent)]
    Config(#[from] hoist_runtime::config::ConfigError),
}

/// An I/O error on `path`.
pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { path, source }
}
