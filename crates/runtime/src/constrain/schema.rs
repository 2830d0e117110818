//! JSON schemas compiled to the nodes the automaton ([`super::automaton`]) walks.
//!
//! The subset: `type` (a name or a list of names among object, array, string, number,
//! integer, boolean, null), `properties`, `required`, `additionalProperties`, `items` (one
//! schema), `minItems`, `maxItems` (at most [`MAX_ITEMS`]), `enum` and `const`. Annotations (`title`, `description`, `default`, `examples`,
//! `format`, `$schema`, `$id`, `$comment`, `readOnly`, `writeOnly`, `deprecated`) are ignored.
//! Any other keyword is refused with [`SchemaError::Unsupported`], naming it: generating
//! something the schema does not really constrain would hand back JSON that fails the
//! caller's own validation.
//!
//! An object with `properties` gets only its declared keys, each at most once (extra keys would
//! be allowed by the schema unless `additionalProperties` is false, but a reply without them
//! still validates, and a model cannot wander off into keys nobody asked for).

use serde_json::{Map, Value};

/// Node kinds, as bits of [`Node::kinds`].
pub(crate) const OBJECT: u8 = 1;
pub(crate) const ARRAY: u8 = 2;
pub(crate) const STRING: u8 = 4;
pub(crate) const NUMBER: u8 = 8;
pub(crate) const INTEGER: u8 = 16;
pub(crate) const BOOLEAN: u8 = 32;
pub(crate) const NULL: u8 = 64;
const ALL: u8 = 127;

/// The node that accepts any JSON value.
pub(crate) const ANY: u32 = 0;

/// Most declared properties of one object (the automaton tracks the keys seen in a `u64`).
pub const MAX_PROPERTIES: usize = 64;

/// Most values of one `enum`, and most bytes of one value as JSON text (the automaton indexes
/// and walks them with 16-bit counters; beyond, a value would wrap and be matched wrongly).
pub const MAX_LITERALS: usize = u16::MAX as usize;

/// Largest `minItems`/`maxItems` (the automaton counts an array's items in 16 bits).
pub const MAX_ITEMS: u64 = u16::MAX as u64;

/// Keywords that only describe: accepted and ignored.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$schema",
    "$id",
    "$comment",
    "readOnly",
    "writeOnly",
    "deprecated",
];

/// A JSON schema that this subset cannot constrain generation to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// A keyword outside the subset.
    #[error(
        "JSON schema keyword '{keyword}' (at {path}) is not supported; supported: type, \
         properties, required, additionalProperties, items, enum, const"
    )]
    Unsupported {
        /// The keyword.
        keyword: String,
        /// Where, as a JSON pointer into the schema (`#` is the root).
        path: String,
    },
    /// A keyword of the subset with a value it cannot use.
    #[error("JSON schema keyword '{keyword}' (at {path}): {reason}")]
    Invalid {
        /// The keyword.
        keyword: String,
        /// Where, as a JSON pointer into the schema.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

impl SchemaError {
    /// The keyword the error is about.
    pub fn keyword(&self) -> &str {
        match self {
            SchemaError::Unsupported { keyword, .. } | SchemaError::Invalid { keyword, .. } => {
                keyword
            }
        }
    }
}

fn invalid(keyword: &str, path: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        keyword: keyword.to_string(),
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// One schema, compiled.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// What a value may be (bits).
    pub kinds: u8,
    /// Whether objects take only `keys` (declared properties); otherwise any key, with
    /// `values` for every value.
    pub declared: bool,
    /// Declared keys as JSON text, quotes included, sorted by their bytes.
    pub keys: Vec<Vec<u8>>,
    /// The node of each key's value (same order as `keys`).
    pub key_nodes: Vec<u32>,
    /// Bits (indices into `keys`) of the required keys.
    pub required: u64,
    /// The node of values under undeclared keys.
    pub values: u32,
    /// The node of array items.
    pub items: u32,
    /// Fewest and most items of an array (`minItems`, `maxItems`).
    pub min_items: u16,
    pub max_items: u16,
    /// With `enum`/`const`: the allowed values as compact JSON text, sorted and distinct.
    pub literals: Option<Vec<Vec<u8>>>,
}

impl Node {
    fn any() -> Node {
        Node {
            kinds: ALL,
            declared: false,
            keys: Vec::new(),
            key_nodes: Vec::new(),
            required: 0,
            values: ANY,
            items: ANY,
            min_items: 0,
            max_items: u16::MAX,
            literals: None,
        }
    }
}

/// What generated text must be: any JSON value, or one matching a schema of the subset.
///
/// Compile once per request ([`JsonGrammar::any`], [`JsonGrammar::from_schema`]); it does not
/// depend on the tokenizer.
#[derive(Clone, Debug)]
pub struct JsonGrammar {
    pub(crate) nodes: Vec<Node>,
    pub(crate) root: u32,
    /// `false`, `true` and `null` as literals, for the automaton.
    pub(crate) bools: Vec<Vec<u8>>,
    pub(crate) null: Vec<Vec<u8>>,
}

impl JsonGrammar {
    /// Any JSON value (Ollama's `format: "json"`, OpenAI's `json_object`): objects, arrays,
    /// strings, numbers, booleans and null alike; the prompt decides which.
    pub fn any() -> JsonGrammar {
        JsonGrammar {
            nodes: vec![Node::any()],
            root: ANY,
            bools: vec![b"false".to_vec(), b"true".to_vec()],
            null: vec![b"null".to_vec()],
        }
    }

    /// A JSON document matching `schema` (the subset in this module's docs).
    ///
    /// # Errors
    /// [`SchemaError`] naming the first keyword outside the subset or with a value it cannot
    /// use.
    pub fn from_schema(schema: &Value) -> Result<JsonGrammar, SchemaError> {
        let mut g = JsonGrammar::any();
        g.root = g.compile(schema, "#")?;
        Ok(g)
    }

    fn compile(&mut self, schema: &Value, path: &str) -> Result<u32, SchemaError> {
        let map = match schema {
            Value::Bool(true) => return Ok(ANY),
            Value::Bool(false) => {
                return Err(invalid("false", path, "the schema false matches nothing"))
            }
            Value::Object(m) => m,
            _ => {
                return Err(invalid(
                    "schema",
                    path,
                    "a schema must be an object or a boolean",
                ))
            }
        };
        const KNOWN: &[&str] = &[
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "enum",
            "const",
        ];
        if let Some(k) = map
            .keys()
            .find(|k| !KNOWN.contains(&k.as_str()) && !ANNOTATIONS.contains(&k.as_str()))
        {
            return Err(SchemaError::Unsupported {
                keyword: k.clone(),
                path: path.to_string(),
            });
        }
        let mut node = Node::any();
        node.kinds = match map.get("type") {
            None if ["properties", "required", "additionalProperties"]
                .iter()
                .any(|k| map.contains_key(*k)) =>
            {
                OBJECT
            }
            None if ["items", "minItems", "maxItems"]
                .iter()
                .any(|k| map.contains_key(*k)) =>
            {
                ARRAY
            }
            None => ALL,
            Some(Value::String(t)) => kind(t, path)?,
            Some(Value::Array(ts)) if !ts.is_empty() => {
                let mut kinds = 0;
                for t in ts {
                    let t = t
                        .as_str()
                        .ok_or_else(|| invalid("type", path, "a list of type names is expected"))?;
                    kinds |= kind(t, path)?;
                }
                kinds
            }
            Some(_) => {
                return Err(invalid(
                    "type",
                    path,
                    "a type name or a non-empty list of them is expected",
                ))
            }
        };
        // Every integer is a number: with both, numbers (fractions, exponents) are allowed.
        if node.kinds & NUMBER != 0 {
            node.kinds &= !INTEGER;
        }
        let literals = match (map.get("const"), map.get("enum")) {
            (Some(c), _) => Some(vec![c]),
            (None, Some(Value::Array(values))) if !values.is_empty() => {
                Some(values.iter().collect())
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "enum",
                    path,
                    "a non-empty array of values is expected",
                ))
            }
            (None, None) => None,
        };
        if let Some(values) = literals {
            let keyword = if map.contains_key("const") {
                "const"
            } else {
                "enum"
            };
            let mut texts: Vec<Vec<u8>> = values
                .into_iter()
                .filter(|v| kinds_of(v) & node.kinds != 0)
                .map(|v| serde_json::to_vec(v).unwrap_or_default())
                .filter(|t| !t.is_empty())
                .collect();
            texts.sort();
            texts.dedup();
            if texts.len() > MAX_LITERALS || texts.iter().any(|t| t.len() > MAX_LITERALS) {
                return Err(invalid(
                    keyword,
                    path,
                    format!(
                        "at most {MAX_LITERALS} values of at most {MAX_LITERALS} bytes each are supported"
                    ),
                ));
            }
            if texts.is_empty() {
                return Err(invalid(
                    keyword,
                    path,
                    "no value has a type the schema allows",
                ));
            }
            node.literals = Some(texts);
        }
        self.object(map, path, &mut node)?;
        if let Some(items) = map.get("items") {
            if items.is_array() {
                return Err(invalid(
                    "items",
                    path,
                    "a list of schemas (tuple form) is not supported; give one schema",
                ));
            }
            node.items = self.compile(items, &format!("{path}/items"))?;
        }
        let count = |keyword: &str, default: u16| match map.get(keyword) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&n| n <= MAX_ITEMS)
                .map(|n| n as u16)
                .ok_or_else(|| {
                    invalid(
                        keyword,
                        path,
                        format!("a whole number from 0 to {MAX_ITEMS} is expected"),
                    )
                }),
        };
        node.min_items = count("minItems", 0)?;
        node.max_items = count("maxItems", u16::MAX)?;
        if node.min_items > node.max_items {
            return Err(invalid(
                "minItems",
                path,
                "minItems is larger than maxItems: no array fits",
            ));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as u32)
    }

    /// `properties`, `required` and `additionalProperties` into `node`.
    fn object(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        node: &mut Node,
    ) -> Result<(), SchemaError> {
        node.values = match map.get("additionalProperties") {
            None | Some(Value::Bool(true)) => ANY,
            Some(Value::Bool(false)) => {
                node.declared = true;
                ANY
            }
            Some(s) => self.compile(s, &format!("{path}/additionalProperties"))?,
        };
        let mut props: Vec<(Vec<u8>, &str, u32)> = Vec::new();
        if let Some(p) = map.get("properties") {
            let p = p
                .as_object()
                .ok_or_else(|| invalid("properties", path, "an object is expected"))?;
            if p.len() > MAX_PROPERTIES {
                return Err(invalid(
                    "properties",
                    path,
                    format!("at most {MAX_PROPERTIES} properties are supported"),
                ));
            }
            node.declared = true;
            for (name, sub) in p {
                let at = format!("{path}/properties/{}", pointer_escape(name));
                let id = self.compile(sub, &at)?;
                let text = serde_json::to_vec(name).unwrap_or_default();
                props.push((text, name, id));
            }
        }
        props.sort();
        if let Some(r) = map.get("required") {
            let r = r
                .as_array()
                .ok_or_else(|| invalid("required", path, "an array of names is expected"))?;
            for name in r {
                let name = name
                    .as_str()
                    .ok_or_else(|| invalid("required", path, "an array of names is expected"))?;
                let i = props.iter().position(|p| p.1 == name).ok_or_else(|| {
                    invalid(
                        "required",
                        path,
                        format!("'{name}' is required but not among the properties"),
                    )
                })?;
                node.required |= 1 << i;
            }
        }
        node.keys = props.iter().map(|p| p.0.clone()).collect();
        node.key_nodes = props.iter().map(|p| p.2).collect();
        Ok(())
    }
}

/// A `type` name's bit.
fn kind(name: &str, path: &str) -> Result<u8, SchemaError> {
    Ok(match name {
        "object" => OBJECT,
        "array" => ARRAY,
        "string" => STRING,
        "number" => NUMBER,
        "integer" => INTEGER,
        "boolean" => BOOLEAN,
        "null" => NULL,
        other => return Err(invalid("type", path, format!("unknown type '{other}'"))),
    })
}

/// The kinds a value belongs to (an integral number is a number and an integer).
fn kinds_of(v: &Value) -> u8 {
    match v {
        Value::Null => NULL,
        Value::Bool(_) => BOOLEAN,
        Value::Number(n) if n.is_i64() || n.is_u64() => NUMBER | INTEGER,
        Value::Number(_) => NUMBER,
        Value::String(_) => STRING,
        Value::Array(_) => ARRAY,
        Value::Object(_) => OBJECT,
    }
}

/// A property name as a JSON pointer segment.
fn pointer_escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
