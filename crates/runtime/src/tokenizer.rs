//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from GGUF metadata.
//!
//! Both become a `tokenizers::Tokenizer`, built programmatically for GGUF the way
//! `transformers`' GGUF converters build them:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` and `merges`; the
//!   pre-tokenizer regex follows `tokenizer.ggml.pre` (GPT-2's by default, Llama 3's, Qwen2's).
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE from `tokens` and `scores`: merges are
//!   recovered from the scores (a pair merges with the priority of the piece it makes, as
//!   SentencePiece does), spaces become `▁` with one prepended, unknown bytes fall back to the
//!   `<0xNN>` tokens.
//!
//! Control tokens (`token_type` 3) are special added tokens, user-defined ones (4) plain added
//! tokens, so that both are matched whole in text. BOS/EOS: a `tokenizer.json`'s post-processor
//! adds what the model expects; for GGUF, `tokenizer.ggml.add_bos_token` (default true for
//! `llama`, false for `gpt2`) and `add_eos_token` decide, applied by [`Tokenizer::encode`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use hoist_format::MetaValue;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

/// A tokenizer could not be built, or failed on an input.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The `tokenizers` library refused the tokenizer or an input.
    #[error("{context}: {message}")]
    Library {
        /// What was being done (names the file or key).
        context: String,
        /// What the library said.
        message: String,
    },
    /// GGUF tokenizer metadata is missing or malformed.
    #[error("{}: GGUF key '{key}' {reason}", path.display())]
    Metadata {
        /// The GGUF file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// A tokenizer with the model's special tokens.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Vec<u32>,
    /// Prepend BOS / append EOS in [`Tokenizer::encode`] (GGUF only; a `tokenizer.json`'s
    /// post-processor does it itself).
    add_bos: bool,
    add_eos: bool,
    /// The chat template's source, and where it came from (a file, and the key in it).
    chat_template: Option<(String, String)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn lib_err(context: impl Into<String>) -> impl FnOnce(tokenizers::Error) -> TokenizerError {
    let context = context.into();
    move |e| TokenizerError::Library {
        context,
        message: e.to_string(),
    }
}

/// The `chat_template` of `tokenizer_config.json`: a string, or a list of named templates of
/// which "default" is the one.
fn config_template(tc: &serde_json::Value) -> Option<String> {
    match tc.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": …}`.
fn config_token(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        o => o.get("content")?.as_str().map(str::to_string),
    }
}

impl Tokenizer {
    /// Loads a Hugging Face model directory's `tokenizer.json`, with `tokenizer_config.json`
    /// (chat template, BOS/EOS tokens) and `config.json` / `generation_config.json` (EOS ids)
    /// when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(lib_err(format!("{}", path.display())))?;
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, TokenizerError> {
            let p = dir.join(name);
            match std::fs::read_to_string(&p) {
                Ok(text) => {
                    serde_json::from_str(&text)
                        .map(Some)
                        .map_err(|e| TokenizerError::Library {
                            context: p.display().to_string(),
                            message: format!("not valid JSON: {e}"),
                        })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(TokenizerError::Io { path: p, source }),
            }
        };
        let tc = read_json("tokenizer_config.json")?.unwrap_or_default();
        let id_of = |name: Option<String>| name.and_then(|n| inner.token_to_id(&n));
        let bos = id_of(config_token(tc.get("bos_token")));
        let mut eos: Vec<u32> = id_of(config_token(tc.get("eos_token")))
            .into_iter()
            .collect();
        // Llama 3 and others list several end tokens in the generation / model config.
        for name in ["generation_config.json", "config.json"] {
            if let Some(v) = read_json(name)? {
                let ids = match v.get("eos_token_id") {
                    Some(serde_json::Value::Array(a)) => {
                        a.iter().filter_map(|x| x.as_u64()).collect()
                    }
                    Some(x) => x.as_u64().into_iter().collect(),
                    None => Vec::new(),
                };
                for id in ids.into_iter().filter_map(|x| u32::try_from(x).ok()) {
                    if !eos.contains(&id) {
                        eos.push(id);
                    }
                }
            }
        }
        // transformers 5 saves the template as chat_template.jinja, and where both exist the
        // file replaces the config's key when transformers loads the tokenizer.
        let jinja = dir.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&jinja) {
            Ok(source) => Some((source, jinja.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                config_template(&tc).map(|source| {
                    let origin = dir.join("tokenizer_config.json");
                    (source, format!("{} chat_template", origin.display()))
                })
            }
            Err(source) => {
                return Err(TokenizerError::Io {
                    path: jinja,
                    source,
                })
            }
        };
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            add_bos: false,
            add_eos: false,
            chat_template,
        })
    }

    /// Rebuilds the tokenizer stored in GGUF metadata (`path` names the file in errors).
    pub fn from_gguf(
        meta: &BTreeMap<String, MetaValue>,
        path: &Path,
    ) -> Result<Tokenizer, TokenizerError> {
        let m = GgufMeta { meta, path };
        let model = m.str("tokenizer.ggml.model")?;
        let tokens = m.str_array("tokenizer.ggml.tokens")?;
        let types = match meta.get("tokenizer.ggml.token_type") {
            Some(_) => m.int_array("tokenizer.ggml.token_type")?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(m.bad(
                "tokenizer.ggml.token_type",
                "has a different length than tokens",
            ));
        }
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let (mut inner, add_bos_default) = match model {
            "gpt2" => (gpt2_tokenizer(&m, vocab)?, false),
            "llama" => (llama_tokenizer(&m, &tokens, &types, vocab)?, true),
            other => {
                return Err(m.bad(
                    "tokenizer.ggml.model",
                    &format!("= {other:?} is not supported (supported: gpt2, llama)"),
                ))
            }
        };
        // Control and user-defined tokens are matched whole in text.
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(tok, &t)| AddedToken::from(tok.clone(), t == 3).normalized(false))
            .collect();
        inner.add_special_tokens(&added);
        let bos = m.opt_u32("tokenizer.ggml.bos_token_id")?;
        let eos: Vec<u32> = m
            .opt_u32("tokenizer.ggml.eos_token_id")?
            .into_iter()
            .chain(m.opt_u32("tokenizer.ggml.eot_token_id")?)
            .collect();
        for (key, id) in [("bos", bos), ("eos", eos.first().copied())] {
            if id.is_some_and(|id| id as usize >= tokens.len()) {
                return Err(m.bad(
                    &format!("tokenizer.ggml.{key}_token_id"),
                    "is beyond the vocabulary",
                ));
            }
        }
        Ok(Tokenizer {
            inner,
            bos,
            eos,
            add_bos: m
                .opt_bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(add_bos_default),
            add_eos: m.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            chat_template: match meta.get("tokenizer.chat_template") {
                Some(MetaValue::String(s)) => Some((
                    s.clone(),
                    format!("{} tokenizer.chat_template", path.display()),
                )),
                _ => None,
            },
        })
    }

    /// Token ids of `text`; with `add_special`, BOS/EOS as the model expects. Text rendered
    /// from a chat template already holds its special tokens: encode it without.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(lib_err("encoding text"))?;
        let mut ids = Vec::with_capacity(enc.len() + 2);
        if add_special && self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        if add_special && self.add_eos {
            ids.extend(self.eos.first());
        }
        Ok(ids)
    }

    /// Text of `ids`; special tokens left out with `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(lib_err("decoding tokens"))
    }

    /// The id of a token string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Beginning-of-sequence token.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`Tokenizer::encode`] with `add_special` prepends BOS itself: a GGUF tokenizer
    /// with a BOS token and `tokenizer.ggml.add_bos_token` (llama.cpp's rule). False for a
    /// `tokenizer.json`, whose post-processor adds what it adds on its own.
    pub fn adds_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// End-of-sequence tokens (generation stops at any of them).
    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    /// The chat template shipped with the tokenizer, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template
            .as_ref()
            .map(|(source, _)| source.as_str())
    }

    /// Where [`Tokenizer::chat_template`] came from, for messages: `DIR/chat_template.jinja`,
    /// `DIR/tokenizer_config.json chat_template` or `FILE.gguf tokenizer.chat_template`.
    pub fn chat_template_origin(&self) -> Option<&str> {
        self.chat_template
            .as_ref()
            .map(|(_, origin)| origin.as_str())
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Pre-tokenizer regexes of llama.cpp's `tokenizer.ggml.pre` values (as in `transformers`'
/// converters).
fn pre_tokenizer_regex(pre: &str) -> Option<Option<&'static str>> {
    Some(match pre {
        // GPT-2's own regex, inside the byte-level pre-tokenizer.
        "default" | "gpt2" | "gpt-2" => None,
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "qwen2" | "deepseek-r1-qwen" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        _ => return None,
    })
}

fn gpt2_tokenizer(m: &GgufMeta<'_>, vocab: Vocab) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let merges = m
        .str_array("tokenizer.ggml.merges")?
        .into_iter()
        .map(|s| match s.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(m.bad(
                "tokenizer.ggml.merges",
                &format!("entry {s:?} is not 'a b'"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(lib_err(format!(
            "{}: building the BPE model",
            m.path.display()
        )))?;
    let pre = match m.meta.get("tokenizer.ggml.pre") {
        Some(MetaValue::String(s)) => s.as_str(),
        _ => "default",
    };
    let regex = pre_tokenizer_regex(pre).ok_or_else(|| {
        m.bad(
            "tokenizer.ggml.pre",
            &format!("= {pre:?} is not supported (supported: default, gpt2, llama-bpe, qwen2)"),
        )
    })?;
    let pre_tokenizer: PreTokenizerWrapper = match regex {
        None => ByteLevel::new(false, true, true).into(),
        Some(re) => PreSequence::new(vec![
            Split::new(
                SplitPattern::Regex(re.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(lib_err("compiling the pre-tokenizer regex"))?
            .into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into(),
    };
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(pre_tokenizer));
    t.with_decoder(Some(ByteLevel::default()));
    Ok(t)
}

/// SentencePiece's BPE as a merge list: every split of a piece into two pieces of the vocabulary
/// is a merge, ranked by the score of the piece it makes (highest first), ties in vocabulary
/// order (`transformers`' `SentencePieceExtractor`). Only normal pieces (type 1) are merged.
pub fn spm_merges(tokens: &[String], scores: &[f32], types: &[i64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if types.get(i) != Some(&1) {
            continue;
        }
        let mut local: Vec<(usize, usize, f32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(k, _)| {
                let (l, r) = piece.split_at(k);
                Some((*ids.get(l)?, *ids.get(r)?, scores[i]))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    // Stable: equal scores keep vocabulary order.
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

fn llama_tokenizer(
    m: &GgufMeta<'_>,
    tokens: &[String],
    types: &[i64],
    vocab: Vocab,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let scores = m.float_array("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(m.bad(
            "tokenizer.ggml.scores",
            "has a different length than tokens",
        ));
    }
    let merges = spm_merges(tokens, &scores, types);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = m.opt_u32("tokenizer.ggml.unknown_token_id")? {
        if let Some(t) = tokens.get(unk as usize) {
            builder = builder.unk_token(t.clone());
        }
    }
    let bpe = builder.build().map_err(lib_err(format!(
        "{}: building the BPE model",
        m.path.display()
    )))?;
    let space_prefix = m
        .opt_bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let replace = |a: &str, b: &str| {
        Replace::new(a, b).map_err(lib_err("building the SentencePiece normalizer"))
    };
    let mut norm: Vec<NormalizerWrapper> = Vec::new();
    if space_prefix {
        norm.push(Prepend::new("▁".into()).into());
    }
    norm.push(replace(" ", "▁")?.into());
    let mut dec: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        dec.push(Strip::new(' ', 1, 0).into());
    }
    let mut t = tokenizers::Tokenizer::new(bpe);
    t.with_normalizer(Some(NormalizerSequence::new(norm)));
    t.with_decoder(Some(DecoderSequence::new(dec)));
    Ok(t)
}

/// Typed look-ups in GGUF metadata for the tokenizer, with errors naming file and key.
struct GgufMeta<'a> {
    meta: &'a BTreeMap<String, MetaValue>,
    path: &'a Path,
}

impl GgufMeta<'_> {
    fn bad(&self, key: &str, reason: &str) -> TokenizerError {
        TokenizerError::Metadata {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn get(&self, key: &str) -> Result<&MetaValue, TokenizerError> {
        self.meta
            .get(key)
            .ok_or_else(|| self.bad(key, "is missing"))
    }

    fn str(&self, key: &str) -> Result<&str, TokenizerError> {
        match self.get(key)? {
            MetaValue::String(s) => Ok(s),
            _ => Err(self.bad(key, "is not a string")),
        }
    }

    fn array(&self, key: &str) -> Result<&[MetaValue], TokenizerError> {
        match self.get(key)? {
            MetaValue::Array(a) => Ok(a),
            _ => Err(self.bad(key, "is not an array")),
        }
    }

    fn str_array(&self, key: &str) -> Result<Vec<String>, TokenizerError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::String(s) => Ok(s.clone()),
                _ => Err(self.bad(key, "holds a non-string")),
            })
            .collect()
    }

    fn int_array(&self, key: &str) -> Result<Vec<i64>, TokenizerError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::I64(n) => Ok(*n),
                MetaValue::U64(n) => i64::try_from(*n).map_err(|_| self.bad(key, "overflows")),
                _ => Err(self.bad(key, "holds a non-integer")),
            })
            .collect()
    }

    fn float_array(&self, key: &str) -> Result<Vec<f32>, TokenizerError> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::F64(x) => Ok(*x as f32),
                _ => Err(self.bad(key, "holds a non-float")),
            })
            .collect()
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, TokenizerError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(MetaValue::U64(n)) => u32::try_from(*n)
                .map(Some)
                .map_err(|_| self.bad(key, "is too large")),
            Some(MetaValue::I64(n)) => u32::try_from(*n)
                .map(Some)
                .map_err(|_| self.bad(key, "is out of range")),
            Some(_) => Err(self.bad(key, "is not an integer")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(key, "is not a boolean")),
        }
    }
}

/// Turns generated token ids into text as they come, holding back bytes of an incomplete
/// UTF-8 character (the approach of `text-generation-inference`: decode a short window twice
/// and emit the difference).
#[derive(Clone, Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl TextStream {
    /// A stream with no tokens yet.
    pub fn new() -> TextStream {
        TextStream::default()
    }

    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        if now.len() > before.len() && !now.ends_with('\u{fffd}') {
            let new = match now.strip_prefix(before.as_str()) {
                Some(rest) => rest.to_string(),
                None => now.get(before.len()..).unwrap_or_default().to_string(),
            };
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(new))
        } else {
            Ok(None)
        }
    }

    /// The text still held back (generation ended; an incomplete character is shown as
    /// U+FFFD, as a full decode would).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, TokenizerError> {
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let now = tok.decode(&self.ids[self.prefix..], true)?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        Ok(match now.strip_prefix(before.as_str()) {
            Some(rest) => rest.to_string(),
            None => now.get(before.len()..).unwrap_or_default().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_rank_by_piece_score() {
        let tokens: Vec<String> = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, -1.0, -1.0, -1.0, -3.0, -2.0, -4.0];
        let types = [2, 1, 1, 1, 1, 1, 1];
        let merges = spm_merges(&tokens, &scores, &types);
        let m: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        // "bc" (-2) before "ab" (-3) before the two ways to make "abc" (-4, by left id).
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn the_chat_template_and_where_it_came_from() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::copy(
            fixtures.join("tokenizer/tokenizer.json"),
            d.join("tokenizer.json"),
        )
        .unwrap();
        let tok = Tokenizer::from_hf_dir(d).unwrap();
        assert_eq!(
            (tok.chat_template(), tok.chat_template_origin()),
            (None, None)
        );

        let config = d.join("tokenizer_config.json");
        std::fs::copy(fixtures.join("tokenizer/tokenizer_config.json"), &config).unwrap();
        let tok = Tokenizer::from_hf_dir(d).unwrap();
        assert!(tok.chat_template().is_some_and(|t| t.contains("messages")));
        let origin = format!("{} chat_template", config.display());
        assert_eq!(tok.chat_template_origin(), Some(origin.as_str()));

        // transformers 5's file wins over the config's key, as transformers loads it.
        let jinja = d.join("chat_template.jinja");
        std::fs::write(&jinja, "{{ 'from the file' }}").unwrap();
        let tok = Tokenizer::from_hf_dir(d).unwrap();
        assert_eq!(tok.chat_template(), Some("{{ 'from the file' }}"));
        let origin = jinja.display().to_string();
        assert_eq!(tok.chat_template_origin(), Some(origin.as_str()));

        // A file there that cannot be read is an error naming it, not a silent fallback.
        std::fs::remove_file(&jinja).unwrap();
        std::fs::create_dir(&jinja).unwrap();
        match Tokenizer::from_hf_dir(d) {
            Err(TokenizerError::Io { path, .. }) => assert_eq!(path, jinja),
            other => panic!("{other:?}"),
        }

        let gguf = fixtures.join("gguf/llama-q8_0.gguf");
        let table = hoist_format::TensorTable::open(&gguf).unwrap();
        let tok = Tokenizer::from_gguf(&table.metadata, &gguf).unwrap();
        let origin = format!("{} tokenizer.chat_template", gguf.display());
        assert_eq!(tok.chat_template_origin(), Some(origin.as_str()));
    }
}
