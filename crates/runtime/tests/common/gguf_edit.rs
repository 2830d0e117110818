//! A GGUF fixture in memory, to write edited copies of (metadata keys set or removed, tensors
//! dropped or added): the lying and incomplete files of the error tests.

use std::path::{Path, PathBuf};

use hoist_format::{DType, MetaValue, TensorTable};
use hoist_runtime::config::ConfigError;
use hoist_runtime::ModelConfig;
use hoist_synth::gguf::{write_gguf, GgufTensor, GgufValue};

use super::fixtures;

/// A GGUF file's metadata and tensors.
#[derive(Clone)]
pub struct Gguf {
    pub kvs: Vec<(String, GgufValue)>,
    /// `(name, shape, ggml type, bytes)`.
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

fn meta_to_gguf(v: &MetaValue) -> GgufValue {
    match v {
        MetaValue::U64(n) => GgufValue::U64(*n),
        MetaValue::I64(n) => GgufValue::I64(*n),
        MetaValue::F64(x) => GgufValue::F64(*x),
        MetaValue::Bool(b) => GgufValue::Bool(*b),
        MetaValue::String(s) => GgufValue::String(s.clone()),
        MetaValue::Array(a) => GgufValue::Array(a.iter().map(meta_to_gguf).collect()),
    }
}

impl Gguf {
    /// The fixture `tests/fixtures/gguf/{name}.gguf`.
    pub fn read(name: &str) -> Gguf {
        let path = fixtures().join(format!("gguf/{name}.gguf"));
        let table = TensorTable::open(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        Gguf {
            kvs: table
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), meta_to_gguf(v)))
                .collect(),
            tensors: table
                .tensors
                .iter()
                .map(|t| {
                    let DType::Ggml(g) = t.dtype else {
                        panic!("{}: not a ggml type", t.name)
                    };
                    let data = bytes[t.offset as usize..t.end() as usize].to_vec();
                    (t.name.clone(), t.shape.clone(), g.0, data)
                })
                .collect(),
        }
    }

    /// A copy with `edit` applied.
    pub fn edited(&self, edit: impl FnOnce(&mut Gguf) -> &mut Gguf) -> Gguf {
        let mut g = self.clone();
        edit(&mut g);
        g
    }

    pub fn set(&mut self, key: &str, value: GgufValue) -> &mut Gguf {
        self.remove(key);
        self.kvs.push((key.into(), value));
        self
    }

    pub fn remove(&mut self, key: &str) -> &mut Gguf {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    pub fn drop_tensor(&mut self, name: &str) -> &mut Gguf {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    /// Writes it as `dir/edited.gguf`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("edited.gguf");
        let tensors: Vec<GgufTensor<'_>> = self
            .tensors
            .iter()
            .map(|(name, shape, ty, data)| GgufTensor {
                name,
                shape,
                ggml_type: *ty,
                data,
            })
            .collect();
        write_gguf(&path, &self.kvs, &tensors, 32).unwrap();
        path
    }

    /// The configuration read from it as written.
    pub fn config(&self, dir: &Path) -> Result<ModelConfig, ConfigError> {
        ModelConfig::from_gguf(&TensorTable::open(self.write(dir)).unwrap())
    }
}
