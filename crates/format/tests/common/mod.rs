//! Helpers shared by the integration tests: file builders for both formats.
#![allow(dead_code)]

/// The project's GGUF writer (crates/synth/src/gguf.rs), included by path so that these tests
/// need no dependency on the synth crate.
#[path = "../../../synth/src/gguf.rs"]
pub mod gguf_writer;

/// The reference Python, also shared with the runtime and CLI tests (by path).
pub mod python;

/// A safetensors file from a raw JSON header and `data_len` zero bytes of data.
pub fn st_raw(header: &[u8], data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.resize(out.len() + data_len, 0);
    out
}

/// A well-formed safetensors file of `(name, dtype, shape, byte length)` tensors packed in
/// order; returns the bytes and each tensor's absolute offset.
pub fn st_file(tensors: &[(&str, &str, &[u64], u64)]) -> (Vec<u8>, Vec<u64>) {
    let mut entries = Vec::new();
    let mut at = 0u64;
    let mut rel = Vec::new();
    for (name, dtype, shape, len) in tensors {
        entries.push(format!(
            "{}:{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{at},{}]}}",
            serde_json::to_string(name).unwrap(),
            at + len
        ));
        rel.push(at);
        at += len;
    }
    let header = format!("{{{}}}", entries.join(","));
    let bytes = st_raw(header.as_bytes(), at as usize);
    let data_offset = 8 + header.len() as u64;
    (bytes, rel.iter().map(|r| data_offset + r).collect())
}

/// Little-endian GGUF pieces, for hand-made (often malformed) files.
#[derive(Default)]
pub struct Raw(pub Vec<u8>);

impl Raw {
    /// `"GGUF"`, version, tensor count, key/value count.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    pub fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Raw {
        self.0.extend_from_slice(v);
        self
    }
    /// A u64-length-prefixed string of raw bytes.
    pub fn str(&mut self, v: &[u8]) -> &mut Raw {
        self.u64(v.len() as u64).bytes(v)
    }
    /// A u32 key/value.
    pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Raw {
        self.str(key.as_bytes()).u32(4).u32(v)
    }
    /// A tensor info; `dims` innermost first, as stored.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name.as_bytes()).u32(dims.len() as u32);
        for d in dims {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    /// Zero padding up to a multiple of `align`, then `data` zero bytes.
    pub fn data(&mut self, align: usize, data: usize) -> &mut Raw {
        let n = self.0.len().next_multiple_of(align) + data;
        self.0.resize(n, 0);
        self
    }
}
