//! What can go wrong writing or removing a synthetic checkpoint.

use std::path::{Path, PathBuf};

/// Writing, reusing or removing a synthetic checkpoint failed. Every refusal happens before
/// hoist writes or removes anything.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What hoist was doing: "write", "read", "remove".
        action: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds files without hoist's marker: they may be anyone's, so hoist neither
    /// writes over them nor removes them.
    #[error(
        "{dir} holds files hoist did not make ({entries}); hoist writes a synthetic checkpoint \
         only into a new or empty directory or one it made: choose another directory"
    )]
    NotOurs {
        /// The directory.
        dir: PathBuf,
        /// Some of the entries, comma-separated.
        entries: String,
    },
    /// A file hoist wrote has been replaced or resized since: it may now be someone's data.
    #[error(
        "{path} is not the file hoist wrote there ({found}); hoist will not overwrite or remove \
         it: move it away or choose another directory"
    )]
    Changed {
        /// The file.
        path: PathBuf,
        /// How it differs ("1234 bytes, hoist wrote 5678", "now a directory", ...).
        found: String,
    },
    /// The marker file cannot be trusted, so neither can the file list it holds.
    #[error(
        "{path}: not a marker this hoist understands ({reason}); remove the directory yourself \
         if you no longer need it, or choose another directory"
    )]
    BadMarker {
        /// The marker file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The path given for the checkpoint exists and is not a directory.
    #[error("{path} is not a directory: choose a directory for the synthetic checkpoint")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
}

/// Maps an OS error on `path` during `action` to [`SynthError::Io`].
pub(crate) fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> SynthError + 'a {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}
