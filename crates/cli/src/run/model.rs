//! What `hoist run` loads: the checkpoint's tokenizer and chat template, the model on its
//! device, and a session that remembers which tokens its KV cache holds.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hoist_format::TensorTable;
use hoist_runtime::chat::{ChatTemplate, Message};
use hoist_runtime::cpu::model::open_checkpoint;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::generate::{CpuSession, LogitsModel};
use hoist_runtime::gpu::{GpuModel, GpuOptions, GpuSession, LoadStats};
use hoist_runtime::tokenizer::Tokenizer;
use hoist_runtime::{ModelConfig, RuntimeError, WeightMap, WeightSource};

use crate::util::{human_bytes, Progress};
use crate::Device;

/// Fails with what to do instead when `device` cannot run the model.
pub fn check_device(device: &Device) -> anyhow::Result<()> {
    let Device::Cuda(n) = *device else {
        return Ok(());
    };
    match hoist_runtime::cuda_available() {
        Err(why) => anyhow::bail!(
            "hoist run needs an NVIDIA GPU with CUDA: {why}. `--device cpu` runs the f32 CPU \
             reference instead (slow: for tiny models and tests)"
        ),
        Ok(count) if n >= count => anyhow::bail!(
            "{device} does not exist: this machine has {count} GPU(s), {} to {}",
            Device::Cuda(0),
            Device::Cuda(count - 1)
        ),
        Ok(_) => Ok(()),
    }
}

/// A checkpoint's tokenizer and how prompts are turned into its tokens.
pub struct Checkpoint {
    /// The model path as given.
    pub path: PathBuf,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template; `None`: raw mode (the prompt is tokenized as is).
    pub template: Option<ChatTemplate>,
    /// Where the template came from (file, and key), or why there is none.
    pub template_origin: String,
}

impl Checkpoint {
    /// Reads the tokenizer and chat template of the checkpoint at `path` (a Hugging Face
    /// directory, a file in one, or a GGUF file). Without `raw`, a model without a chat template
    /// falls back to raw mode with a note on stderr.
    pub fn open(path: &Path, raw: bool) -> anyhow::Result<Checkpoint> {
        let tokenizer = if path.is_dir() {
            hf_tokenizer(path)?
        } else {
            let table = TensorTable::open(path)
                .with_context(|| format!("cannot run {}", path.display()))?;
            match WeightSource::of(&table) {
                WeightSource::Gguf => {
                    // Without this key there is no tokenizer at all: say so rather than name
                    // the first missing key.
                    anyhow::ensure!(
                        table.metadata.contains_key("tokenizer.ggml.tokens"),
                        "{} has no tokenizer (no tokenizer.ggml.* metadata); hoist run needs a \
                         GGUF file that embeds one, as llama.cpp's converter writes it",
                        path.display()
                    );
                    Tokenizer::from_gguf(&table.metadata, path).with_context(|| {
                        format!("cannot read the tokenizer of {}", path.display())
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
        let template = match raw {
            true => None,
            false => match ChatTemplate::for_tokenizer(&tokenizer, &origin) {
                Some(t) => Some(t.with_context(|| {
                    format!(
                        "cannot use the chat template of {} (--raw skips it)",
                        path.display()
                    )
                })?),
                None => {
                    eprintln!(
                        "note: {} has no chat template; the prompt is tokenized as is (raw mode)",
                        path.display()
                    );
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
        })
    }

    /// Token ids of a conversation: rendered with the chat template and a generation prompt, or
    /// in raw mode its texts joined (a user message starts a new line) and tokenized with the
    /// tokenizer's own special tokens.
    pub fn encode(&self, messages: &[Message]) -> anyhow::Result<Vec<u32>> {
        let tok = &self.tokenizer;
        let ids = match &self.template {
            Some(t) => {
                let text = t.render(messages, true)?;
                // The rendered text holds its special tokens (BOS included, where the template
                // prints it): transformers encodes it without adding any.
                let mut ids = tok.encode(&text, false)?;
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
                tok.encode(&text, true)?
            }
        };
        anyhow::ensure!(!ids.is_empty(), "the prompt is empty: it has no tokens");
        Ok(ids)
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

    /// Warns when the tokenizer can produce ids the model has no embedding for (a tokenizer
    /// from another model, most likely); the forward pass would refuse such a token.
    pub fn check_vocab(&self, config: &ModelConfig) {
        let n = self.tokenizer.vocab_size();
        if n > config.vocab_size {
            eprintln!(
                "warning: the tokenizer of {} has {n} tokens but the model's vocabulary holds {}; \
                 is the tokenizer the model's own?",
                self.path.display(),
                config.vocab_size
            );
        }
    }

    /// The text of a token, for messages.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer
            .id_to_token(id)
            .unwrap_or_else(|| format!("#{id}"))
    }
}

/// The tokenizer of a Hugging Face directory.
fn hf_tokenizer(dir: &Path) -> anyhow::Result<Tokenizer> {
    anyhow::ensure!(
        dir.join("tokenizer.json").is_file(),
        "{} has no tokenizer.json; hoist run needs the model's Hugging Face tokenizer \
         (tokenizer.json, and tokenizer_config.json for the chat template) next to its weights",
        dir.display()
    );
    Tokenizer::from_hf_dir(dir)
        .with_context(|| format!("cannot read the tokenizer of {}", dir.display()))
}

/// A model on its device.
pub enum Model {
    /// The f32 CPU reference (both boxed: one model per run, and the two differ in size).
    Cpu(Box<CpuModel>),
    /// The GPU runtime.
    Gpu(Box<GpuModel>),
}

impl Model {
    /// Loads the model at `path` onto `device`, saying so on stderr first (a large model takes
    /// seconds) with a progress bar on a terminal; returns it with the seconds the load took.
    pub fn load(path: &Path, device: &Device) -> anyhow::Result<(Model, f64)> {
        let t0 = Instant::now();
        let model = match *device {
            Device::Cpu => {
                eprintln!(
                    "warning: --device cpu runs the f32 CPU reference: slow, for tiny models and tests"
                );
                eprintln!("loading {} onto cpu …", path.display());
                let context = || format!("cannot load {}", path.display());
                let w = Weights::open(path).with_context(context)?;
                let (counter, bar) = w.counted();
                let model = CpuModel::from_table_with_progress(&w.table, w.config, Some(counter));
                // Cleared before an error is printed.
                drop(bar);
                Model::Cpu(Box::new(model.with_context(context)?))
            }
            Device::Cuda(n) => Model::Gpu(Box::new(load_gpu(path, n)?)),
        };
        Ok((model, t0.elapsed().as_secs_f64()))
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        match self {
            Model::Cpu(m) => &m.config,
            Model::Gpu(m) => m.config(),
        }
    }

    /// What the GPU load took (`None` on the CPU).
    pub fn gpu_stats(&self) -> Option<&LoadStats> {
        match self {
            Model::Cpu(_) => None,
            Model::Gpu(m) => Some(m.stats()),
        }
    }

    /// A fresh sequence with a KV cache of `context` positions.
    pub fn session(&self, context: usize) -> anyhow::Result<Session<'_>> {
        let inner = match self {
            Model::Cpu(m) => CpuSession::new(m, context)
                .map(Inner::Cpu)
                .map_err(RuntimeError::from),
            Model::Gpu(m) => m.session(context).map(|s| Inner::Gpu(Box::new(s))),
        }
        .with_context(|| {
            format!("cannot make a KV cache of {context} positions (a smaller --context needs less memory)")
        })?;
        Ok(Session {
            inner,
            cached: Vec::new(),
        })
    }
}

/// Loads the model at `path` onto `cuda:ordinal`, saying so on stderr first, with a progress
/// bar on a terminal. The caller checked that the GPU exists ([`check_device`]).
pub fn load_gpu(path: &Path, ordinal: usize) -> anyhow::Result<GpuModel> {
    let device = Device::Cuda(ordinal);
    eprintln!("loading {} onto {device} …", path.display());
    let context = || format!("cannot load {} onto {device}", path.display());
    let w = Weights::open(path).with_context(context)?;
    let (counter, bar) = w.counted();
    let options = GpuOptions {
        ordinal,
        progress: Some(counter),
        ..Default::default()
    };
    let model = GpuModel::from_table(&w.table, w.config, &options);
    // Cleared before an error is printed.
    drop(bar);
    model.with_context(context)
}

/// A checkpoint's tensors and model configuration, before its weights are read.
struct Weights {
    table: TensorTable,
    config: ModelConfig,
    /// Bytes of the tensors the model reads.
    bytes: u64,
}

impl Weights {
    /// Parses the checkpoint at `path` (a GGUF file, or a Hugging Face directory or file in one
    /// with its `config.json`) and finds the tensors the model needs.
    fn open(path: &Path) -> Result<Weights, RuntimeError> {
        let (table, config) = open_checkpoint(path)?;
        let map = WeightMap::resolve(&table, &config)?;
        let bytes = map.selection().iter().map(|&i| table.tensors[i].len).sum();
        Ok(Weights {
            table,
            config,
            bytes,
        })
    }

    /// A byte counter for the load, and the bar on stderr that shows it (drawing nothing when
    /// stderr is not a terminal) until dropped.
    fn counted(&self) -> (Arc<AtomicU64>, Progress) {
        let counter = Arc::new(AtomicU64::new(0));
        let bar = Progress::start(counter.clone(), self.bytes, "loading", true);
        (counter, bar)
    }
}

/// One line about a GPU load, for `--verbose`.
pub fn describe_gpu_load(s: &LoadStats) -> String {
    format!("{}: {}", s.device, gpu_load_details(s))
}

/// What the parts of a GPU load took: device context, kernels, weights, the whole load.
pub fn gpu_load_details(s: &LoadStats) -> String {
    format!(
        "device context {:.3} s, kernels {:.3} s ({}), weights {} in {:.3} s ({:.2} GB/s), \
         whole load {:.3} s",
        s.context_seconds,
        s.kernel_seconds,
        if s.kernels_cached {
            "from the disk cache"
        } else {
            "compiled"
        },
        human_bytes(s.weight_bytes),
        s.weights_seconds,
        crate::util::gbps(s.weight_bytes, s.weights_seconds),
        s.seconds
    )
}

/// The device's own session.
enum Inner<'m> {
    Cpu(CpuSession<'m>),
    Gpu(Box<GpuSession<'m>>),
}

/// A sequence on a [`Model`] that knows which tokens its KV cache holds, so that a chat can
/// feed only what is new.
pub struct Session<'m> {
    inner: Inner<'m>,
    /// Every token fed so far, in order: the positions the KV cache holds.
    cached: Vec<u32>,
}

impl Session<'_> {
    /// Positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        match &self.inner {
            Inner::Cpu(s) => s.capacity(),
            Inner::Gpu(s) => s.capacity(),
        }
    }

    /// Forgets the sequence.
    pub fn clear(&mut self) {
        match &mut self.inner {
            Inner::Cpu(s) => s.clear(),
            Inner::Gpu(s) => s.clear(),
        }
        self.cached.clear();
    }

    /// Prepares to run `ids`: returns how many of its leading tokens the cache already holds
    /// (so only the rest is fed), or clears the cache and returns 0 when `ids` does not extend
    /// the cached sequence. At least one token is always left to feed (the cache cannot drop
    /// positions, and the last token's logits are needed).
    pub fn reuse(&mut self, ids: &[u32]) -> usize {
        if !self.cached.is_empty() && ids.len() > self.cached.len() && ids.starts_with(&self.cached)
        {
            return self.cached.len();
        }
        if !self.cached.is_empty() {
            self.clear();
        }
        0
    }
}

impl LogitsModel for Session<'_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let r = match &mut self.inner {
            Inner::Cpu(s) => s.next_logits(tokens),
            Inner::Gpu(s) => s.next_logits(tokens),
        };
        match r {
            Ok(logits) => {
                self.cached.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                // What a failed step left in the cache is unknown: start over next time.
                self.clear();
                Err(e)
            }
        }
    }

    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        let Inner::Gpu(s) = &mut self.inner else {
            return None;
        };
        // The tokens fed: `first`, then each one `next` accepts, up to what the model fed.
        let mut chosen = vec![first];
        let r = s.decode_greedy(first, max_feeds, &mut |t| {
            chosen.push(t);
            next(t)
        });
        match r {
            Ok(fed) => {
                self.cached.extend_from_slice(&chosen[..fed]);
                debug_assert_eq!(
                    self.cached.len(),
                    s.len(),
                    "cached tokens vs cache positions"
                );
                Some(Ok(fed))
            }
            Err(e) => {
                self.clear();
                Some(Err(e))
            }
        }
    }
}
