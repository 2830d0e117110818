//! A small GGUF v3 writer, for tests and synthetic checkpoints: typed key/values, tensors of
//! any ggml type (data given as raw bytes), chosen alignment.
//!
//! It writes what it is given: shapes are not checked against data lengths and array elements
//! must share one type, so that tests can also make deliberately inconsistent files.

use std::io::Write;
use std::path::Path;

/// A GGUF metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// `GGUF_TYPE_UINT8`.
    U8(u8),
    /// `GGUF_TYPE_INT8`.
    I8(i8),
    /// `GGUF_TYPE_UINT16`.
    U16(u16),
    /// `GGUF_TYPE_INT16`.
    I16(i16),
    /// `GGUF_TYPE_UINT32`.
    U32(u32),
    /// `GGUF_TYPE_INT32`.
    I32(i32),
    /// `GGUF_TYPE_FLOAT32`.
    F32(f32),
    /// `GGUF_TYPE_BOOL`.
    Bool(bool),
    /// `GGUF_TYPE_STRING`.
    String(String),
    /// `GGUF_TYPE_ARRAY`; elements must share one type (an empty array is written as u8).
    Array(Vec<GgufValue>),
    /// `GGUF_TYPE_UINT64`.
    U64(u64),
    /// `GGUF_TYPE_INT64`.
    I64(i64),
    /// `GGUF_TYPE_FLOAT64`.
    F64(f64),
}

impl GgufValue {
    /// The GGUF type id.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// Appends the value's payload (without its type id) to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend(v.to_le_bytes()),
            GgufValue::U16(v) => out.extend(v.to_le_bytes()),
            GgufValue::I16(v) => out.extend(v.to_le_bytes()),
            GgufValue::U32(v) => out.extend(v.to_le_bytes()),
            GgufValue::I32(v) => out.extend(v.to_le_bytes()),
            GgufValue::F32(v) => out.extend(v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(u8::from(*v)),
            GgufValue::String(s) => put_str(out, s),
            GgufValue::Array(items) => {
                out.extend(items.first().map_or(0, GgufValue::type_id).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            GgufValue::U64(v) => out.extend(v.to_le_bytes()),
            GgufValue::I64(v) => out.extend(v.to_le_bytes()),
            GgufValue::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

/// One tensor to write.
#[derive(Clone, Debug)]
pub struct GgufTensor<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Shape, outermost dimension first (written innermost first, as GGUF stores it).
    pub shape: &'a [u64],
    /// ggml type id (0 = F32, 1 = F16, 2 = Q4_0, 8 = Q8_0, 30 = BF16, …).
    pub ggml_type: u32,
    /// The tensor's bytes, already in that type's encoding.
    pub data: &'a [u8],
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes a GGUF v3 file; returns its bytes and each tensor's absolute offset. `alignment`
/// (a power of two) pads the data section and every tensor; when it is not 32 and `kvs` has no
/// `general.alignment`, that key is added as a u32.
pub fn gguf_bytes(
    kvs: &[(String, GgufValue)],
    tensors: &[GgufTensor<'_>],
    alignment: u64,
) -> (Vec<u8>, Vec<u64>) {
    let align = |n: u64| n.next_multiple_of(alignment.max(1));
    let mut kvs = kvs.to_vec();
    if alignment != 32 && !kvs.iter().any(|(k, _)| k == "general.alignment") {
        kvs.push(("general.alignment".into(), GgufValue::U32(alignment as u32)));
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in &kvs {
        put_str(&mut out, k);
        out.extend(v.type_id().to_le_bytes());
        v.encode(&mut out);
    }
    let mut rel = Vec::with_capacity(tensors.len());
    let mut next = 0u64;
    for t in tensors {
        put_str(&mut out, t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ggml_type.to_le_bytes());
        out.extend(next.to_le_bytes());
        rel.push(next);
        next = align(next + t.data.len() as u64);
    }
    let data_offset = align(out.len() as u64);
    out.resize(data_offset as usize, 0);
    for (t, r) in tensors.iter().zip(&rel) {
        out.resize((data_offset + r) as usize, 0);
        out.extend_from_slice(t.data);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    (out, rel.iter().map(|r| data_offset + r).collect())
}

/// Writes a GGUF v3 file (see [`gguf_bytes`]); returns each tensor's absolute offset.
pub fn write_gguf(
    path: &Path,
    kvs: &[(String, GgufValue)],
    tensors: &[GgufTensor<'_>],
    alignment: u64,
) -> std::io::Result<Vec<u64>> {
    let (bytes, offsets) = gguf_bytes(kvs, tensors, alignment);
    std::fs::File::create(path)?.write_all(&bytes)?;
    Ok(offsets)
}
