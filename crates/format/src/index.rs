//! Sharded checkpoints through `model.safetensors.index.json`:
//! `{"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}`.
//!
//! Shards are resolved relative to the index's directory. The weight map is the authority on
//! what the checkpoint holds:
//! - a shard it names that does not exist is [`FormatError::MissingShard`];
//! - a tensor it maps to a shard that lacks it is [`FormatError::MissingInShard`];
//! - a tensor present in two shards is [`FormatError::Duplicate`], whatever the map says;
//! - a tensor present in one shard but absent from the map is left out of the table and listed
//!   in [`crate::TensorTable::skipped`] (it was never meant to be loaded; a stale index is common).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::json::{Entries, Strict};
use crate::open::io_err;
use crate::safetensors::Parsed;
use crate::{FormatError, MetaValue, SkippedTensor, TensorTable, MAX_HEADER_BYTES};

/// An index's contents, before any shard is opened.
pub(crate) struct ShardIndex {
    /// The index's `metadata` object (e.g. `total_size`).
    pub metadata: BTreeMap<String, MetaValue>,
    /// `(tensor, shard file)` in file order; tensor names unique.
    pub weight_map: Vec<(String, String)>,
}

/// Opens an index file and every shard it names.
pub(crate) fn parse_index(path: &Path) -> Result<TensorTable, FormatError> {
    let (f, size) = crate::open::open_regular(path)?;
    if size > MAX_HEADER_BYTES {
        return Err(FormatError::HeaderTooLarge {
            path: path.to_path_buf(),
            len_bytes: size,
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(MAX_HEADER_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_err(path, e))?;
    let index = parse_index_bytes(path, &bytes)?;
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    resolve(path, &index, |shard, i| {
        let p = dir.join(shard);
        // Only an absent shard is "missing"; one that is there but is not a regular file (or
        // cannot be read) gets its own error from the parser.
        if matches!(p.try_exists(), Ok(false)) {
            return Err(FormatError::MissingShard {
                index: path.to_path_buf(),
                shard: shard.to_owned(),
                expected: p,
            });
        }
        crate::safetensors::parse_safetensors(&p, i)
    })
}

/// Parses an index's JSON; `path` is only used in messages.
pub(crate) fn parse_index_bytes(path: &Path, bytes: &[u8]) -> Result<ShardIndex, FormatError> {
    let invalid = |reason: String| FormatError::InvalidHeader {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("index is not UTF-8 ({e})")))?;
    let doc: IndexDoc = serde_json::from_str(text)
        .map_err(|e| invalid(format!("index is not valid JSON ({e})")))?;
    if let Some(k) = doc.duplicate_field {
        return Err(invalid(format!("key '{k}' appears more than once")));
    }
    let entries = doc
        .weight_map
        .ok_or_else(|| invalid("no 'weight_map' object".into()))?;
    if let Some(tensor) = entries.first_duplicate {
        return Err(FormatError::Duplicate {
            path: path.to_path_buf(),
            tensor,
        });
    }
    let mut weight_map = Vec::with_capacity(entries.list.len());
    for (tensor, Strict(shard)) in entries.list {
        let Value::String(shard) = shard else {
            return Err(invalid(format!(
                "weight_map value of '{tensor}' is not a file name"
            )));
        };
        let rel = Path::new(&shard);
        if shard.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(invalid(format!(
                "weight_map maps '{tensor}' to '{shard}', which is not a file name inside the index's directory"
            )));
        }
        weight_map.push((tensor, shard));
    }
    let mut metadata = BTreeMap::new();
    match doc.metadata {
        None | Some(Strict(Value::Null)) => {}
        Some(Strict(Value::Object(m))) => {
            for (k, v) in m {
                if let Some(v) = meta_value(v) {
                    metadata.insert(k, v);
                }
            }
        }
        Some(_) => return Err(invalid("'metadata' is not an object".into())),
    }
    Ok(ShardIndex {
        metadata,
        weight_map,
    })
}

/// Opens every shard the index names (in name order, through `open_shard(name, file_index)`)
/// and checks the weight map against their contents.
pub(crate) fn resolve(
    path: &Path,
    index: &ShardIndex,
    mut open_shard: impl FnMut(&str, usize) -> Result<Parsed, FormatError>,
) -> Result<TensorTable, FormatError> {
    let shard_names: Vec<&str> = index
        .weight_map
        .iter()
        .map(|(_, s)| s.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mapped: HashMap<&str, &str> = index
        .weight_map
        .iter()
        .map(|(t, s)| (t.as_str(), s.as_str()))
        .collect();
    let mut files = Vec::with_capacity(shard_names.len());
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    let mut metadata = index.metadata.clone();
    // Tensor name → shard index, over every tensor of every shard.
    let mut found: HashMap<String, usize> = HashMap::new();
    for (i, shard) in shard_names.iter().enumerate() {
        let (file, ts, meta) = open_shard(shard, i)?;
        for t in &ts {
            if found.insert(t.name.clone(), i).is_some() {
                return Err(FormatError::Duplicate {
                    path: file.path.clone(),
                    tensor: t.name.clone(),
                });
            }
        }
        for (k, v) in meta {
            metadata.entry(k).or_insert(v);
        }
        tensors.push(ts);
        files.push(file);
    }
    for (tensor, shard) in &index.weight_map {
        let i = shard_names.binary_search(&shard.as_str()).unwrap_or(0);
        if found.get(tensor) != Some(&i) {
            return Err(FormatError::MissingInShard {
                index: path.to_path_buf(),
                shard: files[i].path.clone(),
                tensor: tensor.clone(),
            });
        }
    }
    let mut kept = Vec::with_capacity(index.weight_map.len());
    for (i, ts) in tensors.into_iter().enumerate() {
        for t in ts {
            if mapped.contains_key(t.name.as_str()) {
                kept.push(t);
            } else {
                let reason = format!(
                    "present in {} but not listed in the index's weight_map",
                    files[i].path.display()
                );
                skipped.push(SkippedTensor {
                    name: t.name,
                    file: i,
                    reason,
                });
            }
        }
    }
    TensorTable::from_parts(path.to_path_buf(), files, kept, metadata, skipped)
}

/// A JSON metadata value as a [`MetaValue`]; `null` is dropped, objects are kept as JSON text.
fn meta_value(v: Value) -> Option<MetaValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => MetaValue::Bool(b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => MetaValue::U64(u),
            (None, Some(i)) => MetaValue::I64(i),
            _ => MetaValue::F64(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => MetaValue::String(s),
        Value::Array(a) => MetaValue::Array(a.into_iter().filter_map(meta_value).collect()),
        obj @ Value::Object(_) => MetaValue::String(obj.to_string()),
    })
}

/// The index document: its two known fields, other fields ignored, duplicates noted.
struct IndexDoc {
    metadata: Option<Strict>,
    weight_map: Option<Entries<Strict>>,
    duplicate_field: Option<String>,
}

impl<'de> Deserialize<'de> for IndexDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(IndexVisitor)
    }
}

struct IndexVisitor;

impl<'de> Visitor<'de> for IndexVisitor {
    type Value = IndexDoc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with a 'weight_map'")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IndexDoc, A::Error> {
        let mut doc = IndexDoc {
            metadata: None,
            weight_map: None,
            duplicate_field: None,
        };
        let mut seen = BTreeSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) && doc.duplicate_field.is_none() {
                doc.duplicate_field = Some(k.clone());
            }
            match k.as_str() {
                "metadata" => doc.metadata = Some(map.next_value()?),
                "weight_map" => doc.weight_map = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weight_map_and_metadata() {
        let j = br#"{"metadata":{"total_size":10,"x":{"a":1},"n":null},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
        let ix = parse_index_bytes(Path::new("i.json"), j).unwrap();
        assert_eq!(ix.weight_map.len(), 2);
        assert_eq!(ix.metadata["total_size"], MetaValue::U64(10));
        assert_eq!(ix.metadata["x"], MetaValue::String(r#"{"a":1}"#.into()));
        assert!(!ix.metadata.contains_key("n"));
    }

    #[test]
    fn rejects_bad_indexes() {
        for (j, want) in [
            (
                &br#"{"weight_map":{"a":"s","a":"t"}}"#[..],
                "appears more than once",
            ),
            (br#"{"weight_map":{"a":"../s"}}"#, "not a file name"),
            (br#"{"weight_map":{"a":"/etc/s"}}"#, "not a file name"),
            (br#"{"weight_map":{"a":1}}"#, "not a file name"),
            (br#"{"metadata":{}}"#, "no 'weight_map'"),
            (br#"{"weight_map":{},"weight_map":{}}"#, "more than once"),
            (
                br#"{"weight_map":{"a":"s"},"metadata":{"k":1,"k":2}}"#,
                "duplicate key",
            ),
            (b"\xff", "UTF-8"),
        ] {
            let e = parse_index_bytes(Path::new("i.json"), j)
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want) && e.starts_with("i.json"), "{e}");
        }
    }
}
