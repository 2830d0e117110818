//! JSON parsing that refuses duplicate object keys.
//!
//! `serde_json::Value` silently keeps the last of two equal keys, so a header naming one tensor
//! twice would parse as if it named it once. These visitors keep every key and report the first
//! duplicate instead.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A JSON value in which no object, at any depth, has a duplicate key.
pub(crate) struct Strict(pub Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key '{k}'")));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A JSON object's entries in file order, with the first key that appeared twice (if any), so
/// that the caller can report it as a typed error (a duplicate tensor name, say).
pub(crate) struct Entries<V> {
    /// Every entry, duplicates included.
    pub list: Vec<(String, V)>,
    /// The first key seen a second time.
    pub first_duplicate: Option<String>,
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntriesVisitor(PhantomData))
    }
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
        let mut seen = HashSet::new();
        let mut list = Vec::new();
        let mut first_duplicate = None;
        while let Some(k) = map.next_key::<String>()? {
            if !seen.insert(k.clone()) && first_duplicate.is_none() {
                first_duplicate = Some(k.clone());
            }
            list.push((k, map.next_value()?));
        }
        Ok(Entries {
            list,
            first_duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_rejects_nested_duplicates() {
        let r: Result<Strict, _> = serde_json::from_str(r#"{"a": {"b": 1, "b": 2}}"#);
        assert!(r.err().unwrap().to_string().contains("duplicate key 'b'"));
        let ok: Strict = serde_json::from_str(r#"{"a": [1, -2, 3.5, "x", null, true]}"#).unwrap();
        assert_eq!(ok.0["a"][1], -2);
    }

    #[test]
    fn entries_report_first_duplicate() {
        let e: Entries<Strict> =
            serde_json::from_str(r#"{"x": 1, "y": 2, "x": 3, "y": 4}"#).unwrap();
        assert_eq!(e.list.len(), 4);
        assert_eq!(e.first_duplicate.as_deref(), Some("x"));
        assert!(serde_json::from_str::<Entries<Strict>>("[1]").is_err());
    }
}
