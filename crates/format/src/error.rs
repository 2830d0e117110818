//! The one error type of this crate. Every variant names the file, and the tensor where one is
//! involved, so that a user can tell which input is bad and what to do about it.

use std::path::PathBuf;

/// A checkpoint that cannot be read or does not follow its format.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a socket, a directory where a file is
    /// expected): refused before any read, since reading a FIFO or a device can block forever.
    #[error("{path}: not a regular file ({kind}); checkpoints are read from regular files")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead (`"a FIFO"`).
        kind: &'static str,
    },
    /// The path is neither a safetensors file, a GGUF file, an index, nor a directory holding
    /// one of them.
    #[error("{path}: not a checkpoint: {reason}")]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file ends before a structure it declares.
    #[error("{path}: truncated: {what} needs {need_bytes} bytes but the file has {have_bytes}; the file is incomplete (re-download or re-save it)")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The structure that does not fit.
        what: String,
        /// Bytes the structure needs from the start of the file.
        need_bytes: u64,
        /// The file's size.
        have_bytes: u64,
    },
    /// The declared header length is over [`crate::MAX_HEADER_BYTES`].
    #[error("{path}: header of {len_bytes} bytes is over the {max_bytes}-byte limit; the file is corrupt or not a checkpoint")]
    HeaderTooLarge {
        /// The file.
        path: PathBuf,
        /// Declared header length.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The header is not what the format requires (bad JSON, bad UTF-8, bad magic, bad version,
    /// bad alignment, a missing field).
    #[error("{path}: invalid header: {reason}")]
    InvalidHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One tensor's entry is inconsistent (unknown dtype, length not matching dtype × shape,
    /// offsets outside the data section, shape product overflowing).
    #[error("{path}: tensor '{tensor}': {reason}")]
    BadTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors' byte ranges overlap.
    #[error("{path}: tensors '{first}' and '{second}' overlap in the data section")]
    Overlap {
        /// The file.
        path: PathBuf,
        /// The tensor that starts first.
        first: String,
        /// The tensor whose range starts inside the first one's.
        second: String,
    },
    /// A tensor name appears twice (in one file, or in two shards).
    #[error("{path}: tensor '{tensor}' appears more than once")]
    Duplicate {
        /// The file (or index) where the second occurrence is.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A sharded index names a shard file that does not exist.
    #[error("{index}: shard '{shard}' is missing (expected at {expected}); download every shard the index lists")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The shard's name as the index writes it.
        shard: String,
        /// Where it was looked for.
        expected: PathBuf,
    },
    /// A sharded index maps a tensor to a shard that does not contain it.
    #[error("{index}: tensor '{tensor}' is mapped to {shard}, which does not contain it; the index and shards are from different versions")]
    MissingInShard {
        /// The index file.
        index: PathBuf,
        /// The shard file.
        shard: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A filter or a name matched nothing, or selected a tensor that cannot be loaded.
    #[error("{path}: {reason}")]
    Selection {
        /// The checkpoint.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },
}
