//! Checkpoint formats parsed into one [`TensorTable`].
//!
//! Only headers are read: a safetensors header, a sharded index, a GGUF header with its
//! key/values and tensor infos. Tensor data is never mapped or read here; the table says where
//! each tensor's bytes are (file, absolute offset, length) and the I/O crate reads them.
//!
//! Every malformed input is a typed [`FormatError`] whose message names the file and, where
//! known, the tensor, and says what to do.
//!
//! [`fuzzing`] runs the same parsers on bytes in memory, for fuzzers and property tests.

#![warn(missing_docs)]

mod dtype;
mod error;
pub mod fuzzing;
mod gguf;
mod index;
mod json;
mod open;
mod safetensors;
mod table;

pub use dtype::{element_count, DType, GgmlType};
pub use error::FormatError;
pub use open::{open_files, INDEX_FILE_NAME};
pub use table::{FileFormat, MetaValue, SkippedTensor, SourceFile, TensorInfo, TensorTable};

/// Largest header (safetensors JSON header, GGUF key/values + tensor infos) we accept.
///
/// Real checkpoints have headers of a few MiB at most (GGUF vocabularies); a larger value is a
/// corrupt or hostile file, and refusing it bounds the memory a parse can take.
pub const MAX_HEADER_BYTES: u64 = 100 * 1000 * 1000;
