//! The engine's error type.

use std::path::PathBuf;

use hoist_runtime::RuntimeError;

/// What went wrong loading a model or serving a request; each message names the file, device or
/// setting concerned and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A Hugging Face checkpoint has no `tokenizer.json` next to its weights.
    #[error(
        "{} has no tokenizer.json; hoist run needs the model's Hugging Face tokenizer \
         (tokenizer.json, and tokenizer_config.json for the chat template) next to its weights",
        dir.display()
    )]
    NoTokenizerJson {
        /// The directory searched.
        dir: PathBuf,
    },
    /// A GGUF file embeds no tokenizer.
    #[error(
        "{} has no tokenizer (no tokenizer.ggml.* metadata); hoist run needs a GGUF file that \
         embeds one, as llama.cpp's converter writes it",
        path.display()
    )]
    NoGgufTokenizer {
        /// The file.
        path: PathBuf,
    },
    /// The tokenizer exists but cannot be read.
    #[error("cannot read the tokenizer of {}", path.display())]
    Tokenizer {
        /// The file or directory it was read from.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The checkpoint's chat template cannot be compiled.
    #[error("cannot use the chat template of {} (--raw skips it)", path.display())]
    Template {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The checkpoint cannot be opened, or its weights cannot be loaded onto the device.
    #[error("cannot load {}{}", path.display(), onto(device))]
    Load {
        /// The checkpoint.
        path: PathBuf,
        /// The device (`cuda:N`), or `None` for the CPU reference.
        device: Option<String>,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// A KV cache of the asked context does not fit in memory.
    #[error("cannot make a KV cache of {context} positions (a smaller context needs less memory)")]
    KvCache {
        /// Positions asked for.
        context: usize,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The request's input renders to no tokens.
    #[error("the prompt is empty: it has no tokens")]
    EmptyPrompt,
    /// The request's input cannot be turned into tokens (template or tokenizer failure).
    #[error("cannot make the prompt for {}", path.display())]
    Prompt {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The prompt leaves no room for a reply in the context.
    #[error(
        "the prompt needs {} positions; the context holds {context}",
        prompt_tokens + 1
    )]
    PromptTooLong {
        /// Tokens of the prompt.
        prompt_tokens: usize,
        /// Positions of the KV cache.
        context: usize,
    },
    /// A sampling setting of the request is out of range.
    #[error(transparent)]
    Sampling(#[from] hoist_runtime::sampler::SamplerError),
    /// A reply prefix is text, which a prompt of token ids has no place for.
    #[error("a reply prefix needs a text or messages prompt, not token ids: append its tokens to the prompt instead")]
    PrefixOnTokens,
    /// The request asks for no new tokens.
    #[error("max_tokens must be at least 1")]
    NoTokensAsked,
    /// Generation failed on the model.
    #[error("generation with {} failed", path.display())]
    Generate {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// Requests decoded together out of range.
    #[error("cannot decode {parallel} requests together: ask for 1 to {max}")]
    Parallel {
        /// Asked for.
        parallel: usize,
        /// The most ([`crate::MAX_PARALLEL`]).
        max: usize,
    },
    /// A decode step this request shared with other running requests
    /// ([`crate::EngineOptions::parallel`]) failed: every request in it ends with this.
    #[error("generation with {} failed in a decode step shared by {requests} requests: {message}", path.display())]
    SharedStep {
        /// The checkpoint.
        path: PathBuf,
        /// Requests in the step.
        requests: usize,
        /// Why (the runtime's error and its causes).
        message: String,
    },
    /// A benchmark of the GPU runtime failed.
    #[error("benchmarking {} failed", path.display())]
    Benchmark {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<RuntimeError>,
    },
    /// The owner thread could not be started.
    #[error("cannot start the engine's thread")]
    Spawn(#[source] std::io::Error),
    /// The engine's thread is gone (it panicked): load the model again.
    #[error("the engine serving {} has stopped (its thread ended); load the model again", path.display())]
    Stopped {
        /// The checkpoint.
        path: PathBuf,
    },
}

/// ` onto cuda:N`, or nothing for the CPU.
fn onto(device: &Option<String>) -> String {
    device
        .as_ref()
        .map(|d| format!(" onto {d}"))
        .unwrap_or_default()
}
