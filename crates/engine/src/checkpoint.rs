//! A checkpoint's tokenizer and chat template, and how requests become token ids.

use std::path::{Path, PathBuf};

use hoist_format::TensorTable;
use hoist_runtime::chat::{ChatTemplate, Message, ToolSchema};
use hoist_runtime::tokenizer::Tokenizer;
use hoist_runtime::{ModelConfig, RuntimeError, WeightSource};

use crate::EngineError;

/// A checkpoint's tokenizer and how prompts are turned into its tokens.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model path as given.
    pub path: PathBuf,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template; `None`: raw mode (the prompt is tokenized as is).
    pub template: Option<ChatTemplate>,
    /// Where the template came from (file, and key), or why there is none.
    pub template_origin: String,
    /// Things the user should know about how prompts are made (a missing chat template), for
    /// the caller to show.
    pub notes: Vec<String>,
}

impl Checkpoint {
    /// Reads the tokenizer and chat template of the checkpoint at `path` (a Hugging Face
    /// directory, a file in one, or a GGUF file). Without `raw`, a model without a chat template
    /// falls back to raw mode with a note in [`Checkpoint::notes`].
    pub fn open(path: &Path, raw: bool) -> Result<Checkpoint, EngineError> {
        let tokenizer = if path.is_dir() {
            hf_tokenizer(path)?
        } else {
            let table = TensorTable::open(path).map_err(|e| EngineError::Load {
                path: path.to_path_buf(),
                device: None,
                source: Box::new(e.into()),
            })?;
            match WeightSource::of(&table) {
                WeightSource::Gguf => {
                    // Without this key there is no tokenizer at all: say so rather than name
                    // the first missing key.
                    if !table.metadata.contains_key("tokenizer.ggml.tokens") {
                        return Err(EngineError::NoGgufTokenizer {
                            path: path.to_path_buf(),
                        });
                    }
                    Tokenizer::from_gguf(&table.metadata, path).map_err(|e| {
                        EngineError::Tokenizer {
                            path: path.to_path_buf(),
                            source: Box::new(e.into()),
                        }
                    })?
                }
                WeightSource::HuggingFace => {
                    // `model.safetensors` has the parent "": the current directory.
                    let dir = path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    hf_tokenizer(dir)?
                }
            }
        };
        // The tokenizer knows which file (and key) its template came from.
        let origin = tokenizer
            .chat_template_origin()
            .unwrap_or_default()
            .to_string();
        let mut notes = Vec::new();
        let template = match raw {
            true => None,
            false => match ChatTemplate::for_tokenizer(&tokenizer, &origin) {
                Some(t) => Some(t.map_err(|e| EngineError::Template {
                    path: path.to_path_buf(),
                    source: Box::new(e.into()),
                })?),
                None => {
                    notes.push(format!(
                        "{} has no chat template; the prompt is tokenized as is (raw mode)",
                        path.display()
                    ));
                    None
                }
            },
        };
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tokenizer,
            template_origin: match template {
                Some(_) => origin,
                None => "none (raw mode)".into(),
            },
            template,
            notes,
        })
    }

    /// Token ids of a conversation: rendered with the chat template and a generation prompt, or
    /// in raw mode its texts joined (a user message starts a new line; system messages have no
    /// place) and tokenized with the tokenizer's own special tokens.
    pub fn encode(&self, messages: &[Message]) -> Result<Vec<u32>, EngineError> {
        self.encode_with_tools(messages, &[])
    }

    /// As [`Checkpoint::encode`], with the function schemas `tools` passed to the template
    /// (raw mode has nowhere to show them: they are left out).
    pub fn encode_with_tools(
        &self,
        messages: &[Message],
        tools: &[ToolSchema],
    ) -> Result<Vec<u32>, EngineError> {
        self.encode_reply(messages, tools, "")
    }

    /// As [`Checkpoint::encode_with_tools`], the reply begun with `prefix` (text the model
    /// continues rather than writes: a tool call's opening tag), tokenized with the prompt so
    /// that its tokens are those the whole text gets.
    pub fn encode_reply(
        &self,
        messages: &[Message],
        tools: &[ToolSchema],
        prefix: &str,
    ) -> Result<Vec<u32>, EngineError> {
        let prompt_error = |source: RuntimeError| EngineError::Prompt {
            path: self.path.clone(),
            source: Box::new(source),
        };
        let tok = &self.tokenizer;
        let ids = match &self.template {
            Some(t) => {
                let mut text = t
                    .render_with_tools(messages, tools, true)
                    .map_err(|e| prompt_error(e.into()))?;
                text.push_str(prefix);
                // The rendered text holds its special tokens (BOS included, where the template
                // prints it): transformers encodes it without adding any.
                let mut ids = tok
                    .encode(&text, false)
                    .map_err(|e| prompt_error(e.into()))?;
                // llama.cpp instead lets the tokenizer add BOS (tokenizer.ggml.add_bos_token)
                // and keeps one when the template prints it too: GGUF templates often leave
                // BOS to the tokenizer.
                if let Some(bos) = tok.bos().filter(|_| tok.adds_bos()) {
                    if ids.first() != Some(&bos) {
                        ids.insert(0, bos);
                    }
                }
                ids
            }
            None => {
                let mut text = String::new();
                for m in messages.iter().filter(|m| m.role != "system") {
                    if m.role == "user" && !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&m.content);
                }
                text.push_str(prefix);
                return self.encode_text(&text);
            }
        };
        non_empty(ids)
    }

    /// Token ids of raw text, with the special tokens (BOS) the tokenizer adds itself.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EngineError::Prompt {
                path: self.path.clone(),
                source: Box::new(e.into()),
            })?;
        non_empty(ids)
    }

    /// Tokens that end a reply: the tokenizer's end tokens and the model configuration's.
    pub fn stop_tokens(&self, config: &ModelConfig) -> Vec<u32> {
        let mut ids = self.tokenizer.eos().to_vec();
        for &id in &config.eos_token_ids {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// A warning when the tokenizer can produce ids the model has no embedding for (a tokenizer
    /// from another model, most likely); the forward pass would refuse such a token.
    pub fn vocab_warning(&self, config: &ModelConfig) -> Option<String> {
        let n = self.tokenizer.vocab_size();
        (n > config.vocab_size).then(|| {
            format!(
                "the tokenizer of {} has {n} tokens but the model's vocabulary holds {}; is the \
                 tokenizer the model's own?",
                self.path.display(),
                config.vocab_size
            )
        })
    }

    /// The text of a token, for messages.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .id_to_token(id)
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// `ids`, or the error that says a prompt has no tokens.
fn non_empty(ids: Vec<u32>) -> Result<Vec<u32>, EngineError> {
    match ids.is_empty() {
        true => Err(EngineError::EmptyPrompt),
        false => Ok(ids),
    }
}

/// The tokenizer of a Hugging Face directory.
fn hf_tokenizer(dir: &Path) -> Result<Tokenizer, EngineError> {
    if !dir.join("tokenizer.json").is_file() {
        return Err(EngineError::NoTokenizerJson {
            dir: dir.to_path_buf(),
        });
    }
    Tokenizer::from_hf_dir(dir).map_err(|e| EngineError::Tokenizer {
        path: dir.to_path_buf(),
        source: Box::new(e.into()),
    })
}
