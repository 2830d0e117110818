//! Validation of everything that becomes part of a path: model names, tags, revisions,
//! digests, blob ids and repository file names. Nothing reaches the file system unchecked.

use std::fmt;

use crate::StoreError;

/// Longest name part (namespace, name, organisation) accepted, bytes.
pub const MAX_PART_BYTES: usize = 96;
/// Longest tag or revision accepted, bytes.
pub const MAX_TAG_BYTES: usize = 128;
/// Longest repository file path accepted, bytes.
pub const MAX_FILE_PATH_BYTES: usize = 1024;
/// Most directory levels in a repository file path.
pub const MAX_FILE_PATH_DEPTH: usize = 8;
/// The Ollama namespace of names without one.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag of Ollama names without one.
pub const DEFAULT_TAG: &str = "latest";
/// The revision of Hugging Face names without one.
pub const DEFAULT_REVISION: &str = "main";

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid {
        what,
        value: value.escape_debug().to_string(),
        reason: reason.into(),
    }
}

/// Checks one name part, tag or revision: 1 to `max_bytes` of ASCII letters, digits, `.`, `_`
/// and `-`, starting with a letter or digit, without `..` (so never `.` or `..`, nor a
/// separator, NUL or anything a shell or file system reads specially).
fn check_part(what: &'static str, s: &str, max_bytes: usize) -> Result<(), StoreError> {
    if s.is_empty() {
        return Err(invalid(what, s, "it is empty"));
    }
    if s.len() > max_bytes {
        return Err(invalid(
            what,
            s,
            format!("it is longer than {max_bytes} bytes"),
        ));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid(what, s, "it must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            what,
            s,
            format!(
                "'{}' is not allowed (letters, digits, '.', '_', '-' only)",
                c.escape_debug()
            ),
        ));
    }
    if s.contains("..") {
        return Err(invalid(what, s, "'..' is not allowed"));
    }
    Ok(())
}

/// Checks a Hugging Face organisation or repository name: a name part without `--` (which
/// separates the parts in the cache's directory names).
fn check_hf_part(what: &'static str, s: &str) -> Result<(), StoreError> {
    check_part(what, s, MAX_PART_BYTES)?;
    if s.contains("--") {
        return Err(invalid(what, s, "'--' is not allowed"));
    }
    Ok(())
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A sha256 digest, checked: 64 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:HEX` (the form manifests and registries use).
    pub fn parse(s: &str) -> Result<Digest, StoreError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid("digest", s, "it must start with 'sha256:'"))?;
        Digest::from_hex(hex)
            .map_err(|_| invalid("digest", s, "64 lowercase hex digits must follow 'sha256:'"))
    }

    /// Parses 64 lowercase hex digits.
    pub fn from_hex(hex: &str) -> Result<Digest, StoreError> {
        if !is_lower_hex(hex, 64) {
            return Err(invalid("sha256", hex, "it must be 64 lowercase hex digits"));
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }

    /// Parses a blob's file name in an Ollama-layout store, `sha256-HEX`.
    pub fn from_file_name(name: &str) -> Option<Digest> {
        Digest::from_hex(name.strip_prefix("sha256-")?).ok()
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The blob's file name in an Ollama-layout store, `sha256-HEX`.
    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex)
    }
}

impl fmt::Display for Digest {
    /// `sha256:HEX`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Checks a Hugging Face commit id: 40 lowercase hex digits.
pub fn check_commit(s: &str) -> Result<(), StoreError> {
    match is_lower_hex(s, 40) {
        true => Ok(()),
        false => Err(invalid("commit", s, "it must be 40 lowercase hex digits")),
    }
}

/// Checks a Hugging Face blob id (a git object id or an LFS sha256): 40 or 64 lowercase hex
/// digits.
pub fn check_blob_id(s: &str) -> Result<(), StoreError> {
    match is_lower_hex(s, 40) || is_lower_hex(s, 64) {
        true => Ok(()),
        false => Err(invalid(
            "blob id",
            s,
            "it must be 40 or 64 lowercase hex digits",
        )),
    }
}

/// Checks a file path inside a repository (`config.json`, `onnx/model.onnx`): relative, `/`
/// separated, each component a plain file name (not empty, `.` or `..`; no `\`, `:`, NUL or
/// other control characters), at most [`MAX_FILE_PATH_DEPTH`] deep and
/// [`MAX_FILE_PATH_BYTES`] long.
pub fn check_file_path(s: &str) -> Result<(), StoreError> {
    const WHAT: &str = "repository file name";
    if s.len() > MAX_FILE_PATH_BYTES {
        return Err(invalid(
            WHAT,
            s,
            format!("it is longer than {MAX_FILE_PATH_BYTES} bytes"),
        ));
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > MAX_FILE_PATH_DEPTH {
        return Err(invalid(
            WHAT,
            s,
            format!("it is more than {MAX_FILE_PATH_DEPTH} levels deep"),
        ));
    }
    for part in parts {
        if part.is_empty() || part == "." || part == ".." {
            return Err(invalid(
                WHAT,
                s,
                "empty, '.' and '..' components are not allowed",
            ));
        }
        if part
            .chars()
            .any(|c| c.is_control() || c == '\\' || c == ':')
        {
            return Err(invalid(
                WHAT,
                s,
                "control characters, '\\' and ':' are not allowed",
            ));
        }
    }
    Ok(())
}

/// A model name, parsed and checked (see the crate docs for the syntax).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// `[NAMESPACE/]NAME[:TAG]`: an Ollama-layout model.
    Ollama {
        /// `library` unless given.
        namespace: String,
        /// The model's name.
        name: String,
        /// `latest` unless given.
        tag: String,
    },
    /// `ORG/NAME[@REVISION]`: a Hugging Face repository.
    HuggingFace {
        /// The owner.
        org: String,
        /// The repository.
        name: String,
        /// A branch, tag or commit; `main` unless given.
        revision: String,
    },
}

impl ModelName {
    /// Parses and checks a name: a `:` makes it Ollama style, else a `/` Hugging Face style,
    /// else it is an Ollama name in the `library` namespace.
    pub fn parse(s: &str) -> Result<ModelName, StoreError> {
        if let Some((left, tag)) = s.rsplit_once(':') {
            check_part("tag", tag, MAX_TAG_BYTES)?;
            let (namespace, name) = match left.split_once('/') {
                Some((ns, name)) => (ns, name),
                None => (DEFAULT_NAMESPACE, left),
            };
            check_part("namespace", namespace, MAX_PART_BYTES)?;
            check_part("model name", name, MAX_PART_BYTES)?;
            return Ok(ModelName::Ollama {
                namespace: namespace.into(),
                name: name.into(),
                tag: tag.into(),
            });
        }
        if let Some((org, rest)) = s.split_once('/') {
            let (name, revision) = rest.split_once('@').unwrap_or((rest, DEFAULT_REVISION));
            check_hf_part("organisation", org)?;
            check_hf_part("repository name", name)?;
            check_part("revision", revision, MAX_TAG_BYTES)?;
            return Ok(ModelName::HuggingFace {
                org: org.into(),
                name: name.into(),
                revision: revision.into(),
            });
        }
        check_part("model name", s, MAX_PART_BYTES)?;
        Ok(ModelName::Ollama {
            namespace: DEFAULT_NAMESPACE.into(),
            name: s.into(),
            tag: DEFAULT_TAG.into(),
        })
    }

    /// `ORG/NAME` of a Hugging Face name; `None` for an Ollama one.
    pub fn repo_id(&self) -> Option<String> {
        match self {
            ModelName::HuggingFace { org, name, .. } => Some(format!("{org}/{name}")),
            ModelName::Ollama { .. } => None,
        }
    }
}

impl fmt::Display for ModelName {
    /// The name as `hoist list` shows it: Ollama names with their tag (and their namespace
    /// unless `library`), Hugging Face names with their revision unless `main`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelName::Ollama {
                namespace,
                name,
                tag,
            } if namespace == DEFAULT_NAMESPACE => write!(f, "{name}:{tag}"),
            ModelName::Ollama {
                namespace,
                name,
                tag,
            } => write!(f, "{namespace}/{name}:{tag}"),
            ModelName::HuggingFace {
                org,
                name,
                revision,
            } if revision == DEFAULT_REVISION => write!(f, "{org}/{name}"),
            ModelName::HuggingFace {
                org,
                name,
                revision,
            } => write!(f, "{org}/{name}@{revision}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ollama(ns: &str, name: &str, tag: &str) -> ModelName {
        ModelName::Ollama {
            namespace: ns.into(),
            name: name.into(),
            tag: tag.into(),
        }
    }

    #[test]
    fn names_parse_to_their_source() {
        assert_eq!(
            ModelName::parse("llama3.2").unwrap(),
            ollama("library", "llama3.2", "latest")
        );
        assert_eq!(
            ModelName::parse("qwen3:0.6b").unwrap(),
            ollama("library", "qwen3", "0.6b")
        );
        assert_eq!(
            ModelName::parse("me/tiny:q8").unwrap(),
            ollama("me", "tiny", "q8")
        );
        assert_eq!(
            ModelName::parse("Qwen/Qwen3-0.6B@v1").unwrap(),
            ModelName::HuggingFace {
                org: "Qwen".into(),
                name: "Qwen3-0.6B".into(),
                revision: "v1".into()
            }
        );
        for s in [
            "qwen3:0.6b",
            "me/tiny:q8",
            "Qwen/Qwen3-0.6B",
            "Qwen/Qwen3-0.6B@v1",
        ] {
            assert_eq!(ModelName::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(ModelName::parse("tiny").unwrap().to_string(), "tiny:latest");
        assert_eq!(ModelName::parse("a/b@main").unwrap().to_string(), "a/b");
    }

    #[test]
    fn hostile_names_are_refused() {
        for s in [
            "",
            ":",
            "a:",
            ":b",
            "..",
            "../x",
            "a/../b",
            "a/..",
            "/etc/passwd",
            "a//b",
            "a/b/c",
            "a:../../x",
            "a/b@../x",
            "a/b@",
            "a--b/c",
            "a/b--c",
            ".hidden",
            "a\0b",
            "a\\b",
            "a b",
            "a/b:c:d",
            "x/y/z:t",
            "a..b",
            "-a",
            "a/b@c/d",
        ] {
            assert!(ModelName::parse(s).is_err(), "{s:?} passed");
        }
        assert!(ModelName::parse(&"a".repeat(MAX_PART_BYTES + 1)).is_err());
        assert!(ModelName::parse(&"a".repeat(MAX_PART_BYTES)).is_ok());
    }

    #[test]
    fn digests_are_checked() {
        let hex = "0123456789abcdef".repeat(4);
        let d = Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.file_name(), format!("sha256-{hex}"));
        assert_eq!(Digest::from_file_name(&d.file_name()), Some(d.clone()));
        for s in [
            "sha256:../../x".to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha512:{hex}"),
            format!("sha256-{hex}"),
            hex.clone(),
        ] {
            assert!(Digest::parse(&s).is_err(), "{s:?} passed");
        }
    }

    #[test]
    fn file_paths_are_checked() {
        for s in ["config.json", "onnx/model.onnx", "a b/c(1).json"] {
            check_file_path(s).unwrap();
        }
        for s in [
            "",
            "/etc/passwd",
            "a//b",
            "../x",
            "a/../../b",
            "./a",
            "a/",
            "a\\b",
            "c:x",
            "a\0",
        ] {
            assert!(check_file_path(s).is_err(), "{s:?} passed");
        }
        assert!(check_commit(&"a".repeat(40)).is_ok());
        assert!(check_commit(&"A".repeat(40)).is_err());
        assert!(check_blob_id(&"0".repeat(64)).is_ok());
        assert!(check_blob_id(&"0".repeat(41)).is_err());
    }

    /// Whether a string could lead a path anywhere but one plain level down.
    fn escapes(s: &str) -> bool {
        s.contains("..")
            || s.contains('\0')
            || s.contains('\\')
            || s.is_empty()
            || s.starts_with('.')
    }

    proptest! {
        #[test]
        fn parsed_names_never_escape(s in "\\PC{0,40}|[a-z./:@\\\\-]{0,20}") {
            if let Ok(n) = ModelName::parse(&s) {
                let parts: Vec<String> = match n {
                    ModelName::Ollama { namespace, name, tag } => vec![namespace, name, tag],
                    ModelName::HuggingFace { org, name, revision } => vec![org, name, revision],
                };
                for p in parts {
                    prop_assert!(!escapes(&p) && !p.contains('/') && !p.contains(':'), "{p:?}");
                    prop_assert!(p.len() <= MAX_TAG_BYTES);
                }
            }
        }

        #[test]
        fn parsed_digests_are_hex(s in "(sha256:)?[0-9a-fA-F./-]{0,70}") {
            if let Ok(d) = Digest::parse(&s) {
                prop_assert!(is_lower_hex(d.hex(), 64));
                prop_assert_eq!(d.file_name().len(), 71);
            }
        }

        #[test]
        fn file_paths_stay_inside(s in "\\PC{0,30}|[a./\\\\]{0,12}") {
            if check_file_path(&s).is_ok() {
                prop_assert!(!s.starts_with('/'));
                for part in s.split('/') {
                    prop_assert!(!part.is_empty() && part != "." && part != "..");
                    prop_assert!(!part.contains('\0') && !part.contains('\\'));
                }
            }
        }

        #[test]
        fn good_names_round_trip(ns in "[a-z0-9][a-z0-9_-]{0,10}", name in "[a-z0-9][a-z0-9_-]{0,10}", tag in "[a-z0-9][a-z0-9_-]{0,10}") {
            let s = format!("{ns}/{name}:{tag}");
            let parsed = ModelName::parse(&s).unwrap();
            prop_assert_eq!(ModelName::parse(&parsed.to_string()).unwrap(), parsed);
        }
    }
}
