//! GGUF v2/v3 headers: magic, version, counts, typed key/values, tensor infos.
//!
//! Hand-written rather than taken from a crate: the GGUF crates on crates.io either read the
//! whole file (or map it), stop at the first ggml type they do not know, or are unmaintained;
//! we need a header-only parser, bounded against hostile lengths, that keeps the tensors it
//! can size when a newer ggml type appears. The format is small enough to read here in full.
//!
//! Layout (all little-endian): `"GGUF"`, version `u32`, tensor count `u64`, key/value count
//! `u64`, the key/values, the tensor infos (name, `n_dims` `u32`, dims `u64` innermost first,
//! ggml type `u32`, offset `u64` relative to the data section), padding to `general.alignment`
//! (default 32), the data section.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufReader, Read};
use std::path::Path;

use crate::open::io_err;
use crate::{
    DType, FileFormat, FormatError, GgmlType, MetaValue, SkippedTensor, SourceFile, TensorInfo,
    TensorTable, MAX_HEADER_BYTES,
};

/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays accepted in a value (bounds recursion).
const MAX_ARRAY_DEPTH: u32 = 8;
/// Most metadata values (array elements included) one file may hold: bounds memory, since a
/// one-byte element becomes a [`MetaValue`]. Real vocabularies hold a few hundred thousand.
const MAX_META_VALUES: u64 = 1 << 22;

/// Opens and parses a GGUF file's header with buffered reads.
pub(crate) fn parse_gguf(path: &Path) -> Result<TensorTable, FormatError> {
    let (f, size_bytes) = crate::open::open_regular(path)?;
    parse_gguf_from(path, BufReader::with_capacity(1 << 20, f), size_bytes)
}

/// Parses a GGUF header from `r`, positioned at the start of a file of `size_bytes` bytes.
pub(crate) fn parse_gguf_from(
    path: &Path,
    r: impl Read,
    size_bytes: u64,
) -> Result<TensorTable, FormatError> {
    let mut s = Src {
        r,
        pos: 0,
        size: size_bytes,
        path,
        values: 0,
    };
    let magic = s.bytes(4, || "the GGUF magic".into())?;
    if magic != b"GGUF" {
        return Err(bad_magic(path, &magic));
    }
    let version = s.u32(|| "the GGUF version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(s.invalid(
                "GGUF v1 is not supported; re-convert the model with a current llama.cpp".into(),
            ))
        }
        v if (1..=3).contains(&v.swap_bytes()) => {
            return Err(s.invalid(format!(
                "version field {v:#010x} looks big-endian; only little-endian GGUF is supported"
            )))
        }
        v => return Err(s.invalid(format!("unsupported GGUF version {v} (supported: 2, 3)"))),
    }
    let n_tensors = s.u64(|| "the tensor count".into())?;
    let n_kv = s.u64(|| "the key/value count".into())?;
    // Smallest key/value: empty key (8), type (4), one-byte value (1).
    s.count_fits(n_kv, 13, "key/value")?;

    let mut metadata = BTreeMap::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key = s.string(|| format!("the key of key/value #{i}"))?;
        let ty = s.u32(|| format!("the type of key '{key}'"))?;
        let value = read_value(&mut s, ty, &key, 0)?;
        if key == "general.alignment" {
            alignment = match value {
                MetaValue::U64(a) if ty == 4 && a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(s.invalid(format!(
                        "general.alignment must be a nonzero power of two of type u32, got {value:?} of type {ty}"
                    )))
                }
            };
        }
        if metadata.contains_key(&key) {
            return Err(s.invalid(format!("duplicate key '{key}'")));
        }
        metadata.insert(key, value);
    }

    // Smallest tensor info: empty name (8), n_dims (4), type (4), offset (8).
    s.count_fits(n_tensors, 24, "tensor")?;
    let mut raw = Vec::with_capacity(initial_capacity(n_tensors));
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut s, i).map_err(|e| match e {
            // A count that lies high sends the reader past the real infos, into padding and
            // tensor data, where a "length" is any 8 bytes: say what is wrong, not the absurd
            // size such a length implies.
            FormatError::Truncated {
                what, have_bytes, ..
            } => FormatError::InvalidHeader {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor count {n_tensors} is larger than the file can hold: {what} would run past the end of the file ({have_bytes} bytes); {CORRUPT_HINT}"
                ),
            },
            other => other,
        })?;
        raw.push(info);
    }
    let header_end = s.pos;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| {
            s.invalid(format!(
                "header end {header_end} cannot be aligned to {alignment}"
            ))
        })?;

    let mut names = HashSet::with_capacity(raw.len());
    let mut tensors = Vec::with_capacity(raw.len());
    let mut skipped = Vec::new();
    for info in raw {
        if !names.insert(info.name.clone()) {
            return Err(FormatError::Duplicate {
                path: path.to_path_buf(),
                tensor: info.name,
            });
        }
        match size_tensor(path, info, alignment, data_offset, size_bytes)? {
            Ok(t) => tensors.push(t),
            Err(s) => skipped.push(s),
        }
    }
    let file = SourceFile {
        path: path.to_path_buf(),
        size_bytes,
        data_offset,
        format: FileFormat::Gguf { version, alignment },
    };
    TensorTable::from_parts(path.to_path_buf(), vec![file], tensors, metadata, skipped)
}

/// What to do about a header whose counts or lengths do not fit its file.
const CORRUPT_HINT: &str =
    "the file is truncated or its header corrupt (re-download or re-convert it)";

/// The error for a file whose first four bytes are not `GGUF`: they are shown as text (escaped
/// where not printable) and in hex, as a user compares them with a file dump.
pub(crate) fn bad_magic(path: &Path, magic: &[u8]) -> FormatError {
    let hex: Vec<String> = magic.iter().map(|b| format!("{b:02x}")).collect();
    FormatError::InvalidHeader {
        path: path.to_path_buf(),
        reason: format!(
            "bad magic \"{}\" ({}), expected \"GGUF\"",
            magic.escape_ascii(),
            hex.join(" ")
        ),
    }
}

/// A tensor info as stored, before its size is known.
struct RawInfo {
    name: String,
    /// Innermost first, as in the file.
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

fn read_tensor_info<R: Read>(s: &mut Src<'_, R>, i: u64) -> Result<RawInfo, FormatError> {
    let name = s.string(|| format!("the name of tensor #{i}"))?;
    let n_dims = s.u32(|| format!("the dimension count of tensor '{name}'"))?;
    if n_dims > MAX_DIMS {
        return Err(s.bad(
            &name,
            format!("has {n_dims} dimensions; GGUF allows at most {MAX_DIMS}"),
        ));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(s.u64(|| format!("the dimensions of tensor '{name}'"))?);
    }
    let ty = s.u32(|| format!("the type of tensor '{name}'"))?;
    let offset = s.u64(|| format!("the offset of tensor '{name}'"))?;
    Ok(RawInfo {
        name,
        dims,
        ty,
        offset,
    })
}

/// Sizes and places one tensor: `Ok(Ok(info))`, `Ok(Err(skipped))` for an unknown ggml type,
/// or an error for an inconsistent entry.
fn size_tensor(
    path: &Path,
    info: RawInfo,
    alignment: u64,
    data_offset: u64,
    size_bytes: u64,
) -> Result<Result<TensorInfo, SkippedTensor>, FormatError> {
    let RawInfo {
        name,
        dims,
        ty,
        offset,
    } = info;
    let bad = |reason: String| FormatError::BadTensor {
        path: path.to_path_buf(),
        tensor: name.clone(),
        reason,
    };
    let shape: Vec<u64> = dims.iter().rev().copied().collect();
    let elems = crate::dtype::element_count(&dims).ok_or_else(|| {
        bad(format!(
            "shape {shape:?} has more elements than fit in 64 bits"
        ))
    })?;
    let ggml = GgmlType(ty);
    let Some((block_elems, _)) = ggml.block() else {
        let reason = format!(
            "unknown ggml type {ty}: its byte size cannot be computed (a newer hoist may know it)"
        );
        return Ok(Err(SkippedTensor {
            name,
            file: 0,
            reason,
        }));
    };
    let inner = dims.first().copied().unwrap_or(1);
    if inner % block_elems != 0 {
        return Err(bad(format!(
            "innermost dimension {inner} is not a multiple of the {} block size {block_elems}",
            ggml.name()
        )));
    }
    let dtype = DType::Ggml(ggml);
    let len = dtype
        .byte_len(elems)
        .ok_or_else(|| bad(format!("{elems} elements of {dtype} overflow 64 bits")))?;
    if offset % alignment != 0 {
        return Err(bad(format!(
            "offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    let end = data_offset
        .checked_add(offset)
        .and_then(|start| start.checked_add(len))
        .ok_or_else(|| bad(format!("offset {offset} + {len} bytes overflow 64 bits")))?;
    if end > size_bytes {
        return Err(FormatError::Truncated {
            path: path.to_path_buf(),
            what: format!("tensor '{name}' ({len} bytes at data-section offset {offset})"),
            need_bytes: end,
            have_bytes: size_bytes,
        });
    }
    Ok(Ok(TensorInfo {
        name,
        dtype,
        shape,
        file: 0,
        offset: data_offset + offset,
        len,
    }))
}

/// Capacity to reserve for `n` items read from the file: `n` has been checked against the bytes
/// left, but an item in memory is larger than its smallest encoding, so reserve at most a
/// modest amount up front and let real content grow the vector.
fn initial_capacity(n: u64) -> usize {
    n.min(1 << 16) as usize
}

/// Smallest encoding in bytes of one value of GGUF type `ty`, or `None` for an unknown type.
fn min_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

/// Reads one value of GGUF type `ty` belonging to `key`.
fn read_value<R: Read>(
    s: &mut Src<'_, R>,
    ty: u32,
    key: &str,
    depth: u32,
) -> Result<MetaValue, FormatError> {
    s.values += 1;
    if s.values > MAX_META_VALUES {
        return Err(s.invalid(format!(
            "key '{key}': more than {MAX_META_VALUES} metadata values in the file"
        )));
    }
    let what = || format!("the value of key '{key}'");
    Ok(match ty {
        0 => MetaValue::U64(s.array::<1>(what)?[0].into()),
        1 => MetaValue::I64(i8::from_le_bytes(s.array(what)?).into()),
        2 => MetaValue::U64(u16::from_le_bytes(s.array(what)?).into()),
        3 => MetaValue::I64(i16::from_le_bytes(s.array(what)?).into()),
        4 => MetaValue::U64(s.u32(what)?.into()),
        5 => MetaValue::I64(i32::from_le_bytes(s.array(what)?).into()),
        6 => MetaValue::F64(f32::from_le_bytes(s.array(what)?).into()),
        7 => MetaValue::Bool(s.array::<1>(what)?[0] != 0),
        8 => MetaValue::String(s.string(what)?),
        9 => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(s.invalid(format!(
                    "key '{key}': arrays nested more than {MAX_ARRAY_DEPTH} deep"
                )));
            }
            let elem_ty = s.u32(what)?;
            let n = s.u64(what)?;
            let min = min_size(elem_ty).ok_or_else(|| {
                s.invalid(format!("key '{key}': unknown array element type {elem_ty}"))
            })?;
            s.need(n.saturating_mul(min), || {
                format!("the {n}-element array of key '{key}'")
            })?;
            if n > MAX_META_VALUES - s.values {
                return Err(s.invalid(format!(
                    "key '{key}': array of {n} elements takes the file over {MAX_META_VALUES} metadata values"
                )));
            }
            let mut out = Vec::with_capacity(initial_capacity(n));
            for _ in 0..n {
                out.push(read_value(s, elem_ty, key, depth + 1)?);
            }
            MetaValue::Array(out)
        }
        10 => MetaValue::U64(s.u64(what)?),
        11 => MetaValue::I64(i64::from_le_bytes(s.array(what)?)),
        12 => MetaValue::F64(f64::from_le_bytes(s.array(what)?)),
        other => return Err(s.invalid(format!("key '{key}': unknown value type {other}"))),
    })
}

/// The header being read: a reader, how far into the file it is, and the file's size, so that
/// every length is checked against the bytes left before anything is allocated.
struct Src<'p, R> {
    r: R,
    pos: u64,
    size: u64,
    path: &'p Path,
    /// Metadata values read so far.
    values: u64,
}

impl<R: Read> Src<'_, R> {
    fn invalid(&self, reason: String) -> FormatError {
        FormatError::InvalidHeader {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn bad(&self, tensor: &str, reason: String) -> FormatError {
        FormatError::BadTensor {
            path: self.path.to_path_buf(),
            tensor: tensor.to_owned(),
            reason,
        }
    }

    /// Checks that `count` entries of at least `min_bytes` each (a `what` count read from the
    /// header) fit in the bytes left and under the header limit, before any is read.
    fn count_fits(&self, count: u64, min_bytes: u64, what: &str) -> Result<(), FormatError> {
        let left_bytes = self.size.saturating_sub(self.pos);
        let most = left_bytes / min_bytes;
        if count > most {
            return Err(self.invalid(format!(
                "{what} count {count} is larger than the file can hold (at most {most} in the {left_bytes} bytes left); {CORRUPT_HINT}"
            )));
        }
        // Cannot overflow: count <= left_bytes / min_bytes.
        self.need(count * min_bytes, || format!("{count} {what} entries"))
    }

    /// Checks that `n` more header bytes exist in the file and stay under the header limit.
    fn need(&self, n: u64, what: impl FnOnce() -> String) -> Result<(), FormatError> {
        let end = self.pos.saturating_add(n);
        if end > self.size {
            return Err(FormatError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                need_bytes: end,
                have_bytes: self.size,
            });
        }
        if end > MAX_HEADER_BYTES {
            return Err(FormatError::HeaderTooLarge {
                path: self.path.to_path_buf(),
                len_bytes: end,
                max_bytes: MAX_HEADER_BYTES,
            });
        }
        Ok(())
    }

    fn bytes(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<Vec<u8>, FormatError> {
        self.need(n, what)?;
        // Bounded above by `need`: at most MAX_HEADER_BYTES.
        let mut buf = vec![0u8; n as usize];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += n;
        Ok(buf)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], FormatError> {
        self.need(N as u64, what)?;
        let mut buf = [0u8; N];
        self.r
            .read_exact(&mut buf)
            .map_err(|e| io_err(self.path, e))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64-length-prefixed UTF-8 string.
    fn string(&mut self, what: impl Fn() -> String) -> Result<String, FormatError> {
        let n = self.u64(&what)?;
        let buf = self.bytes(n, &what)?;
        String::from_utf8(buf)
            .map_err(|e| self.invalid(format!("{} is not UTF-8 ({})", what(), e.utf8_error())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Vec<u8> {
        let mut b = (v.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(v.as_bytes());
        b
    }

    /// A v3 file: one u32 alignment kv (if given), one F32 tensor of shape [2, 4] (dims 4, 2).
    fn file(alignment: Option<u32>, ty: u32) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(u64::from(alignment.is_some()).to_le_bytes());
        if let Some(a) = alignment {
            b.extend(s("general.alignment"));
            b.extend(4u32.to_le_bytes());
            b.extend(a.to_le_bytes());
        }
        b.extend(s("w"));
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        let a = alignment.unwrap_or(32) as usize;
        b.resize(b.len().next_multiple_of(a) + 32, 0);
        b
    }

    fn parse(b: &[u8]) -> Result<TensorTable, FormatError> {
        parse_gguf_from(Path::new("m.gguf"), b, b.len() as u64)
    }

    #[test]
    fn parses_shape_reversed_and_aligned() {
        for a in [None, Some(64), Some(1)] {
            let t = parse(&file(a, 0)).unwrap();
            let w = t.get("w").unwrap();
            assert_eq!(w.shape, vec![2, 4]);
            assert_eq!(w.len, 32);
            assert_eq!(w.offset % u64::from(a.unwrap_or(32)), 0);
            assert_eq!(
                t.files[0].format,
                FileFormat::Gguf {
                    version: 3,
                    alignment: a.unwrap_or(32).into()
                }
            );
        }
    }

    #[test]
    fn unknown_type_is_skipped() {
        let t = parse(&file(None, 999)).unwrap();
        assert!(t.tensors.is_empty());
        assert_eq!(t.skipped[0].name, "w");
    }

    #[test]
    fn bad_alignment_and_version() {
        let e = parse(&file(Some(48), 0)).unwrap_err().to_string();
        assert!(e.contains("power of two"), "{e}");
        let mut b = file(None, 0);
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(parse(&b).unwrap_err().to_string().contains("big-endian"));
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(parse(&b).unwrap_err().to_string().contains("v1"));
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = file(None, 0);
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "key/value count {} is larger than the file can hold",
                u64::MAX
            )),
            "{e}"
        );
        let mut b = file(None, 0);
        b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains("tensor count 1099511627776 is larger than the file can hold"),
            "{e}"
        );
    }

    #[test]
    fn a_tensor_count_that_lies_a_little_names_the_count() {
        // One real tensor info; the count says three, so the second and third are read from
        // the padding and the data, whose bytes make an absurd name length.
        let mut b = file(None, 0);
        let data_start = b.len() - 32;
        b[data_start..].fill(0xee);
        b[8..16].copy_from_slice(&3u64.to_le_bytes());
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains("tensor count 3 is larger than the file can hold") && !e.contains("needs"),
            "{e}"
        );
    }

    #[test]
    fn bad_magic_is_text_and_hex() {
        let mut b = file(None, 0);
        b[..4].copy_from_slice(b"GG\x00\xff");
        let e = parse(&b).unwrap_err().to_string();
        assert!(
            e.contains(r#"bad magic "GG\x00\xff" (47 47 00 ff), expected "GGUF""#),
            "{e}"
        );
    }
}
