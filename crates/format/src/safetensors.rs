//! safetensors: an 8-byte little-endian header length, a JSON header, then the data section.
//!
//! The header is read with plain reads (never a map of the file) and checked against the file
//! size before any tensor is trusted.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::open::io_err;
use crate::{DType, FileFormat, FormatError, MetaValue, SourceFile, TensorInfo, MAX_HEADER_BYTES};

/// Parses one safetensors file's header; `file_index` is what its tensors' `file` field gets.
pub(crate) fn parse_safetensors(
    path: &Path,
    file_index: usize,
) -> Result<(SourceFile, Vec<TensorInfo>, BTreeMap<String, MetaValue>), FormatError> {
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let size_bytes = f.metadata().map_err(|e| io_err(path, e))?.len();
    if size_bytes < 8 {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the 8-byte header length".into(),
            need_bytes: 8,
            have_bytes: size_bytes,
        });
    }
    let mut len_buf = [0u8; 8];
    f.read_exact(&mut len_buf).map_err(|e| io_err(path, e))?;
    let header_bytes = u64::from_le_bytes(len_buf);
    if header_bytes > MAX_HEADER_BYTES {
        return Err(FormatError::HeaderTooLarge {
            path: path.to_path_buf(),
            len_bytes: header_bytes,
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    let data_offset = 8 + header_bytes;
    if data_offset > size_bytes {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: format!("the {header_bytes}-byte JSON header"),
            need_bytes: data_offset,
            have_bytes: size_bytes,
        });
    }
    let mut header = vec![0u8; header_bytes as usize];
    f.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let invalid = |reason: String| FormatError::InvalidHeader { path: path.to_path_buf(), reason };
    let text = std::str::from_utf8(&header)
        .map_err(|e| invalid(format!("header is not UTF-8 ({e})")))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("header is not valid JSON ({e})")))?;
    let serde_json::Value::Object(entries) = json else {
        return Err(invalid("header is not a JSON object".into()));
    };

    let data_bytes = size_bytes - data_offset;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for (name, entry) in entries {
        if name == "__metadata__" {
            let serde_json::Value::Object(meta) = entry else {
                return Err(invalid("__metadata__ is not an object of strings".into()));
            };
            for (k, v) in meta {
                let serde_json::Value::String(s) = v else {
                    return Err(invalid(format!("__metadata__ value of '{k}' is not a string")));
                };
                metadata.insert(k, MetaValue::String(s));
            }
            continue;
        }
        let bad = |reason: String| FormatError::BadTensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            reason,
        };
        let dtype_str = entry.get("dtype").and_then(|v| v.as_str()).ok_or_else(|| bad("no string 'dtype'".into()))?;
        let dtype = DType::from_safetensors(dtype_str).ok_or_else(|| bad(format!("unknown dtype '{dtype_str}'")))?;
        let shape_json = entry.get("shape").and_then(|v| v.as_array()).ok_or_else(|| bad("no array 'shape'".into()))?;
        let mut shape = Vec::with_capacity(shape_json.len());
        for d in shape_json {
            shape.push(d.as_u64().ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?);
        }
        let offsets = entry
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad("no 'data_offsets' pair".into()))?;
        let (Some(begin), Some(end)) = (offsets[0].as_u64(), offsets[1].as_u64()) else {
            return Err(bad("data_offsets are not non-negative integers".into()));
        };
        if begin > end {
            return Err(bad(format!("data_offsets [{begin}, {end}] run backwards")));
        }
        if end > data_bytes {
            return Err(bad(format!(
                "data_offsets end {end} is past the data section ({data_bytes} bytes); the file is truncated"
            )));
        }
        let elems = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("shape {shape:?} has more elements than fit in 64 bits")))?;
        let want = dtype
            .byte_len(elems)
            .ok_or_else(|| bad(format!("{elems} elements of {dtype} are not a whole number of bytes")))?;
        if want != end - begin {
            return Err(bad(format!(
                "{dtype} × {shape:?} is {want} bytes but data_offsets span {} bytes",
                end - begin
            )));
        }
        tensors.push(TensorInfo { name, dtype, shape, file: file_index, offset: data_offset + begin, len: end - begin });
    }
    let file = SourceFile { path: path.to_path_buf(), size_bytes, data_offset, format: FileFormat::Safetensors };
    Ok((file, tensors, metadata))
}
