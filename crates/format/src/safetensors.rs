//! safetensors: an 8-byte little-endian header length, a JSON header, then the data section.
//!
//! The header is read with plain reads (never a map of the file) and checked against the file
//! size before any tensor is trusted. Duplicate keys in the JSON are refused (see [`crate::json`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::json::{Entries, Strict};
use crate::open::io_err;
use crate::{DType, FileFormat, FormatError, MetaValue, SourceFile, TensorInfo, MAX_HEADER_BYTES};

/// What one safetensors file contributes to a table.
pub(crate) type Parsed = (SourceFile, Vec<TensorInfo>, BTreeMap<String, MetaValue>);

/// Parses one safetensors file's header; `file_index` is what its tensors' `file` field gets.
pub(crate) fn parse_safetensors(path: &Path, file_index: usize) -> Result<Parsed, FormatError> {
    let (f, size_bytes) = crate::open::open_regular(path)?;
    parse_safetensors_from(path, file_index, f, size_bytes)
}

/// Parses a safetensors header from `r`, positioned at the start of a file of `size_bytes`
/// bytes; `path` is only used in messages and in the returned [`SourceFile`].
pub(crate) fn parse_safetensors_from(
    path: &Path,
    file_index: usize,
    mut r: impl Read,
    size_bytes: u64,
) -> Result<Parsed, FormatError> {
    if size_bytes < 8 {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: "the 8-byte header length".into(),
            need_bytes: 8,
            have_bytes: size_bytes,
        });
    }
    let mut len_buf = [0u8; 8];
    r.read_exact(&mut len_buf).map_err(|e| io_err(path, e))?;
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
    // Bounded above: at most MAX_HEADER_BYTES and at most the file's size.
    let mut header = vec![0u8; header_bytes as usize];
    r.read_exact(&mut header).map_err(|e| io_err(path, e))?;
    let (tensors, metadata) = parse_header(path, file_index, &header, data_offset, size_bytes)?;
    let file = SourceFile {
        path: path.to_path_buf(),
        size_bytes,
        data_offset,
        format: FileFormat::Safetensors,
    };
    Ok((file, tensors, metadata))
}

type Header = (Vec<TensorInfo>, BTreeMap<String, MetaValue>);

/// Parses the JSON header; tensors' offsets become absolute (`data_offset` + begin).
fn parse_header(
    path: &Path,
    file_index: usize,
    header: &[u8],
    data_offset: u64,
    size_bytes: u64,
) -> Result<Header, FormatError> {
    let invalid = |reason: String| FormatError::InvalidHeader {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(header)
        .map_err(|e| invalid(format!("JSON header is not UTF-8 ({e})")))?;
    let entries: Entries<Strict> = serde_json::from_str(text)
        .map_err(|e| invalid(format!("JSON header is not a valid JSON object ({e})")))?;
    if let Some(name) = entries.first_duplicate {
        if name == "__metadata__" {
            return Err(invalid("__metadata__ appears more than once".into()));
        }
        return Err(FormatError::Duplicate {
            path: path.to_path_buf(),
            tensor: name,
        });
    }

    let data_bytes = size_bytes - data_offset;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.list.len());
    for (name, Strict(entry)) in entries.list {
        if name == "__metadata__" {
            let Value::Object(meta) = entry else {
                return Err(invalid("__metadata__ is not an object of strings".into()));
            };
            for (k, v) in meta {
                let Value::String(s) = v else {
                    return Err(invalid(format!(
                        "__metadata__ value of '{k}' is not a string"
                    )));
                };
                metadata.insert(k, MetaValue::String(s));
            }
            continue;
        }
        let t = parse_entry(path, file_index, name, &entry, data_offset, data_bytes)?;
        tensors.push(t);
    }
    Ok((tensors, metadata))
}

/// One tensor's `{"dtype", "shape", "data_offsets"}` entry.
fn parse_entry(
    path: &Path,
    file_index: usize,
    name: String,
    entry: &Value,
    data_offset: u64,
    data_bytes: u64,
) -> Result<TensorInfo, FormatError> {
    let bad = |reason: String| FormatError::BadTensor {
        path: path.to_path_buf(),
        tensor: name.clone(),
        reason,
    };
    if !entry.is_object() {
        return Err(bad("entry is not a JSON object".into()));
    }
    let dtype_str = entry
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no string 'dtype'".into()))?;
    let dtype = DType::from_safetensors(dtype_str)
        .ok_or_else(|| bad(format!("unknown dtype '{dtype_str}'")))?;
    let shape_json = entry
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no array 'shape'".into()))?;
    let mut shape = Vec::with_capacity(shape_json.len());
    for d in shape_json {
        shape.push(
            d.as_u64()
                .ok_or_else(|| bad(format!("shape entry {d} is not a non-negative integer")))?,
        );
    }
    let offsets = entry
        .get("data_offsets")
        .and_then(Value::as_array)
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
    let elems = crate::dtype::element_count(&shape).ok_or_else(|| {
        bad(format!(
            "shape {shape:?} has more elements than fit in 64 bits"
        ))
    })?;
    let want = dtype.byte_len(elems).ok_or_else(|| {
        bad(format!(
            "{elems} elements of {dtype} are not a whole number of bytes below 2^64"
        ))
    })?;
    if want != end - begin {
        return Err(bad(format!(
            "{dtype} × {shape:?} is {want} bytes but data_offsets span {} bytes",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        file: file_index,
        offset: data_offset + begin,
        len: end - begin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: usize) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    fn parse(bytes: &[u8]) -> Result<Parsed, FormatError> {
        parse_safetensors_from(Path::new("t.safetensors"), 0, bytes, bytes.len() as u64)
    }

    #[test]
    fn parses_and_makes_offsets_absolute() {
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,12]}}"#;
        let (f, t, m) = parse(&file(h, 12)).unwrap();
        assert_eq!(f.data_offset, 8 + h.len() as u64);
        assert_eq!(t[0].offset, f.data_offset);
        assert_eq!(t[0].len, 12);
        assert_eq!(m["format"], MetaValue::String("pt".into()));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let h = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        assert!(matches!(
            parse(&file(h, 2)),
            Err(FormatError::Duplicate { .. })
        ));
        let h = r#"{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#;
        assert!(matches!(
            parse(&file(h, 1)),
            Err(FormatError::InvalidHeader { .. })
        ));
    }

    #[test]
    fn bad_entries() {
        for (h, want) in [
            (
                r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,1]}}"#,
                "span",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,9]}}"#,
                "past the data",
            ),
            (
                r#"{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,1]}}"#,
                "64 bits",
            ),
            (r#"{"a":7}"#, "not a JSON object"),
            (r#"[1]"#, "valid JSON object"),
        ] {
            let e = parse(&file(h, 4)).unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("t.safetensors"), "{e}");
        }
    }
}
