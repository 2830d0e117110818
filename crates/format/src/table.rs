//! The tensor table: what every format parses into, and what planners and loaders consume.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{DType, FormatError};

/// The container format of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FileFormat {
    /// A safetensors file.
    Safetensors,
    /// A GGUF file.
    Gguf {
        /// GGUF version (2 or 3).
        version: u32,
        /// `general.alignment`, or 32 when absent.
        alignment: u64,
    },
}

impl std::fmt::Display for FileFormat {
    /// `safetensors`, or `GGUF v3, alignment 32`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileFormat::Safetensors => f.write_str("safetensors"),
            FileFormat::Gguf { version, alignment } => {
                write!(f, "GGUF v{version}, alignment {alignment}")
            }
        }
    }
}

/// One file of a checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct SourceFile {
    /// Path as opened.
    pub path: PathBuf,
    /// File size when the header was parsed.
    pub size_bytes: u64,
    /// Absolute offset where the data section starts.
    pub data_offset: u64,
    /// Container format.
    pub format: FileFormat,
}

/// A metadata value: safetensors `__metadata__` entries are strings; GGUF key/values are typed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetaValue {
    /// Unsigned integer (GGUF u8/u16/u32/u64).
    U64(u64),
    /// Signed integer (GGUF i8/i16/i32/i64).
    I64(i64),
    /// Float (GGUF f32/f64).
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    String(String),
    /// Array of values.
    Array(Vec<MetaValue>),
}

/// One tensor: where its bytes are and what they mean.
#[derive(Clone, Debug, Serialize)]
pub struct TensorInfo {
    /// Tensor name as stored.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost dimension first (GGUF's innermost-first order is reversed on parse).
    pub shape: Vec<u64>,
    /// Index into [`TensorTable::files`].
    pub file: usize,
    /// Absolute byte offset of the first byte in the file.
    pub offset: u64,
    /// Byte length.
    pub len: u64,
}

impl TensorInfo {
    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn elements(&self) -> u64 {
        // Checked at parse time: the product fits in u64.
        self.shape.iter().product()
    }

    /// One byte past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// A tensor that was listed but cannot be loaded (a ggml type this table does not know): an
/// error only for that tensor.
#[derive(Clone, Debug, Serialize)]
pub struct SkippedTensor {
    /// Tensor name.
    pub name: String,
    /// Index into [`TensorTable::files`].
    pub file: usize,
    /// Why it cannot be loaded.
    pub reason: String,
}

/// Every tensor of a checkpoint (one file or several shards), sorted by (file, offset).
#[derive(Clone, Debug, Serialize)]
pub struct TensorTable {
    /// What was opened (a file, an index, a directory).
    pub root: PathBuf,
    /// The files, in a stable order.
    pub files: Vec<SourceFile>,
    /// The tensors, sorted by `(file, offset)`, names unique.
    pub tensors: Vec<TensorInfo>,
    /// Format metadata, merged across files (first occurrence wins).
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensors that are listed but cannot be loaded.
    pub skipped: Vec<SkippedTensor>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

impl TensorTable {
    /// Opens a checkpoint: a `.safetensors` file, a `.gguf` file, a
    /// `model.safetensors.index.json`, or a directory holding one of those.
    pub fn open(path: impl AsRef<Path>) -> Result<TensorTable, FormatError> {
        crate::open::open(path.as_ref())
    }

    /// Builds a table from parsed parts: sorts the tensors, checks names are unique and that
    /// no two tensors of one file overlap.
    pub fn from_parts(
        root: PathBuf,
        files: Vec<SourceFile>,
        mut tensors: Vec<TensorInfo>,
        metadata: BTreeMap<String, MetaValue>,
        skipped: Vec<SkippedTensor>,
    ) -> Result<TensorTable, FormatError> {
        tensors.sort_by_key(|a| (a.file, a.offset, a.len));
        let mut by_name = HashMap::with_capacity(tensors.len());
        for (i, t) in tensors.iter().enumerate() {
            assert!(
                t.file < files.len(),
                "tensor '{}' names file {} of {}",
                t.name,
                t.file,
                files.len()
            );
            if by_name.insert(t.name.clone(), i).is_some() {
                return Err(FormatError::Duplicate {
                    path: files[t.file].path.clone(),
                    tensor: t.name.clone(),
                });
            }
        }
        for pair in tensors.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            // Zero-length tensors occupy no bytes and overlap nothing.
            if a.file == b.file && b.len > 0 && a.len > 0 && b.offset < a.end() {
                return Err(FormatError::Overlap {
                    path: files[a.file].path.clone(),
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
        Ok(TensorTable {
            root,
            files,
            tensors,
            metadata,
            skipped,
            by_name,
        })
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// Index into [`TensorTable::tensors`] of the tensor called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Sum of all tensors' byte lengths.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.len).sum()
    }

    /// Sum of all tensors' element counts.
    pub fn parameters(&self) -> u64 {
        self.tensors.iter().map(|t| t.elements()).sum()
    }

    /// Indices of the tensors whose names match any of `globs` (`*`, `?`, `[..]`, `{a,b}`);
    /// every tensor when `globs` is empty. A pattern that matches nothing, or that matches a
    /// skipped tensor by its exact name, is an error.
    pub fn select(&self, globs: &[String]) -> Result<Vec<usize>, FormatError> {
        if globs.is_empty() {
            return Ok((0..self.tensors.len()).collect());
        }
        let mut matchers = Vec::with_capacity(globs.len());
        for g in globs {
            let m = globset::Glob::new(g)
                .map_err(|e| FormatError::Selection {
                    path: self.root.clone(),
                    reason: format!("bad filter '{g}': {e}"),
                })?
                .compile_matcher();
            if let Some(s) = self.skipped.iter().find(|s| s.name == *g) {
                return Err(FormatError::Selection {
                    path: self.files[s.file].path.clone(),
                    reason: format!("tensor '{}' cannot be loaded: {}", s.name, s.reason),
                });
            }
            matchers.push((g, m));
        }
        let mut hit = vec![false; matchers.len()];
        let mut out = Vec::new();
        for (i, t) in self.tensors.iter().enumerate() {
            let mut any = false;
            for (j, (_, m)) in matchers.iter().enumerate() {
                if m.is_match(&t.name) {
                    hit[j] = true;
                    any = true;
                }
            }
            if any {
                out.push(i);
            }
        }
        if let Some(j) = hit.iter().position(|h| !h) {
            return Err(FormatError::Selection {
                path: self.root.clone(),
                reason: format!(
                    "filter '{}' matches no tensor (run `hoist inspect` to list names)",
                    matchers[j].0
                ),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_display_for_people() {
        let gguf = FileFormat::Gguf {
            version: 3,
            alignment: 32,
        };
        assert_eq!(gguf.to_string(), "GGUF v3, alignment 32");
        assert_eq!(FileFormat::Safetensors.to_string(), "safetensors");
    }
}
