//! The model host: a loaded model behind a handle that any number of threads share.
//!
//! [`Engine::load`] opens a checkpoint's tokenizer and chat template ([`Checkpoint`]), then
//! starts an **owner thread** that loads the weights onto the device and keeps them: the GPU
//! model is not `Send`, so it is made, used and dropped on that one thread. The returned
//! [`Engine`] is `Clone + Send + Sync`; [`Engine::generate`] turns a [`Request`] into token ids
//! on the calling thread (so bad input fails at once) and queues it for the owner thread,
//! returning a [`GenerationStream`] of [`Event`]s: started, text pieces, and the
//! [`Completion`] with its [`Stats`] (or an error). Dropping the stream, or
//! [`GenerationStream::cancel`], stops the request within one decode step.
//!
//! Requests are served in arrival order, by default **one at a time**: two threads generating at
//! once take turns, whole request by whole request. With [`EngineOptions::parallel`] `N > 1`,
//! up to `N` requests run at once, each on its own session, and every decode step feeds all of
//! them through one forward pass (continuous batching: a request joins and leaves between
//! steps). The CPU reference batches the pass; the GPU runtime steps the sessions one after
//! another for now, so `N > 1` there shares the GPU fairly but does not yet raise throughput.
//!
//! The owner thread keeps a pool of sessions ([`EngineOptions::pool_size`]), each a KV cache
//! that remembers the tokens it holds: a request runs on the session whose cached tokens are the
//! longest prefix of its prompt, feeding only the rest (a chat's follow-up feeds only the new
//! message), otherwise on the least recently used one, cleared. Sessions are made as needed,
//! the first at load, so that a context too large for memory fails there.
//!
//! When the last handle is dropped, the owner thread finishes the requests already queued,
//! frees the model and ends; the drop waits for it.

#![warn(missing_docs)]

mod batch;
mod checkpoint;
mod error;
mod model;
mod owner;
mod pool;
mod request;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use hoist_runtime::gpu::LoadStats;
use hoist_runtime::placement::Placement;
use hoist_runtime::ModelConfig;

pub use checkpoint::Checkpoint;
pub use error::EngineError;
pub use model::{benchmark, Benchmark, Device, Weights};
pub use request::{clock_seed, Completion, Event, GenerationStream, Input, Request, Stats, Stop};

/// The context when none is asked for never exceeds this many positions (KV cache memory grows
/// with it).
pub const DEFAULT_CONTEXT_CAP: usize = 4096;
/// Sessions in the pool when none is asked for.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Most requests decoded together ([`EngineOptions::parallel`]): each holds a KV cache of the
/// whole context.
pub const MAX_PARALLEL: usize = 64;

/// How to load and serve a model.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Where the model runs.
    pub device: Device,
    /// Positions of each session's KV cache; `None`: [`default_context`], raised to
    /// `min_context`.
    pub context: Option<usize>,
    /// The least context when none is asked for (a one-shot caller's prompt and reply).
    pub min_context: usize,
    /// Most sessions (KV caches) kept at once; at least 1, and at least `parallel`.
    pub pool_size: usize,
    /// Requests decoded together, 1 to [`MAX_PARALLEL`]: 1 serves them one at a time (and
    /// keeps the GPU's on-device greedy decoding); more run that many at once, batched.
    pub parallel: usize,
    /// Counts weight bytes as they are read, for a progress display (its total:
    /// [`Weights::weight_bytes`]).
    pub progress: Option<Arc<AtomicU64>>,
    /// No chat template: messages are joined and tokenized as is ([`Engine::load`] only; a
    /// [`Checkpoint`] given to [`Engine::start`] was opened with its own choice).
    pub raw: bool,
    /// Whether weights read from disk stay in the page cache (the GPU load's policy).
    pub cache: hoist_runtime::gpu::CachePolicy,
}

impl Default for EngineOptions {
    fn default() -> EngineOptions {
        EngineOptions {
            device: Device::Cuda(0),
            context: None,
            min_context: 0,
            pool_size: DEFAULT_POOL_SIZE,
            parallel: 1,
            progress: None,
            raw: false,
            cache: hoist_runtime::gpu::CachePolicy::Auto,
        }
    }
}

/// The context when none is asked for: the model's trained length, at most
/// [`DEFAULT_CONTEXT_CAP`].
pub fn default_context(config: &ModelConfig) -> usize {
    config.max_position_embeddings.clamp(1, DEFAULT_CONTEXT_CAP)
}

/// What was loaded, and the settings in force.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The checkpoint path as given.
    pub path: PathBuf,
    /// Where the model runs.
    pub device: Device,
    /// The model's configuration.
    pub config: ModelConfig,
    /// Positions of each session's KV cache.
    pub context: usize,
    /// Tokens that end every reply (the tokenizer's and the configuration's end tokens).
    pub stop_tokens: Vec<u32>,
    /// Seconds the load took (parsing the checkpoint and reading the weights).
    pub load_seconds: f64,
    /// The GPU load's details (`None` on the CPU).
    pub gpu: Option<LoadStats>,
    /// Things that run but may disappoint (a tokenizer larger than the model's vocabulary, a
    /// context beyond training), for the caller to show.
    pub warnings: Vec<String>,
}

/// A handle on a model served by its owner thread; clone it freely, share it between threads.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

// The handle must be shareable: a compile-time check.
const _: () = {
    const fn shareable<T: Clone + Send + Sync>() {}
    shareable::<Engine>();
};

/// What the handles share; its drop ends the owner thread.
struct Shared {
    /// Requests to the owner thread; `None` only while dropping.
    jobs: Option<Sender<owner::Job>>,
    thread: Option<JoinHandle<()>>,
    checkpoint: Arc<Checkpoint>,
    info: ModelInfo,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // No sender left: the owner thread drains the queue and returns.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            // A panic there has already been reported by the panic hook.
            let _ = t.join();
        }
    }
}

impl Engine {
    /// Opens the checkpoint at `path` and loads it onto `options.device` with `placement` (the
    /// GPU's; the CPU reference holds every weight in host memory).
    pub fn load(
        path: &Path,
        placement: Placement,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let checkpoint = Checkpoint::open(path, options.raw)?;
        let weights = Weights::open(path, options.device)?;
        Engine::start(checkpoint, weights, placement, options)
    }

    /// Loads `weights` with the tokenizer of `checkpoint`, both opened by the caller (to show
    /// the checkpoint's notes, check a prompt or size a progress display first).
    pub fn start(
        checkpoint: Checkpoint,
        weights: Weights,
        placement: Placement,
        options: EngineOptions,
    ) -> Result<Engine, EngineError> {
        if !(1..=MAX_PARALLEL).contains(&options.parallel) {
            return Err(EngineError::Parallel {
                parallel: options.parallel,
                max: MAX_PARALLEL,
            });
        }
        let config = weights.config().clone();
        let context = options
            .context
            .unwrap_or_else(|| default_context(&config).max(options.min_context));
        let mut warnings: Vec<String> = checkpoint.vocab_warning(&config).into_iter().collect();
        // It runs, but rotary positions beyond training usually degrade the output.
        if context > config.max_position_embeddings {
            warnings.push(format!(
                "the context of {context} positions is beyond the {} positions the model was \
                 trained for",
                config.max_position_embeddings
            ));
        }
        let stop_tokens = checkpoint.stop_tokens(&config);
        let checkpoint = Arc::new(checkpoint);
        let (ready_tx, ready) = sync_channel(1);
        let (jobs, job_rx) = channel();
        let start = owner::Start {
            weights,
            device: options.device,
            placement,
            progress: options.progress,
            cache: options.cache,
            context,
            pool_size: options.pool_size.max(options.parallel),
            checkpoint: checkpoint.clone(),
            stop_tokens: stop_tokens.clone(),
            parallel: options.parallel,
        };
        let thread = std::thread::Builder::new()
            .name("hoist-engine".into())
            .spawn(move || owner::run(start, ready_tx, job_rx))
            .map_err(EngineError::Spawn)?;
        let mut shared = Shared {
            jobs: Some(jobs),
            thread: Some(thread),
            info: ModelInfo {
                path: checkpoint.path.clone(),
                device: options.device,
                config,
                context,
                stop_tokens,
                load_seconds: 0.0,
                gpu: None,
                warnings,
            },
            checkpoint,
        };
        // A thread that ends without a word panicked: its report is on stderr already.
        let (load_seconds, gpu) = ready.recv().unwrap_or_else(|_| {
            Err(EngineError::Stopped {
                path: shared.info.path.clone(),
            })
        })?;
        shared.info.load_seconds = load_seconds;
        shared.info.gpu = gpu;
        Ok(Engine {
            shared: Arc::new(shared),
        })
    }

    /// What was loaded, and the settings in force.
    pub fn info(&self) -> &ModelInfo {
        &self.shared.info
    }

    /// The checkpoint's tokenizer and chat template.
    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.shared.checkpoint
    }

    /// The prompt's token ids for `input`.
    pub fn encode(&self, input: &Input) -> Result<Vec<u32>, EngineError> {
        let ck = &self.shared.checkpoint;
        match input {
            Input::Messages(m) => ck.encode(m),
            Input::Text(t) => ck.encode_text(t),
            Input::Tokens(ids) if ids.is_empty() => Err(EngineError::EmptyPrompt),
            Input::Tokens(ids) => Ok(ids.clone()),
        }
    }

    /// Queues `request`; its events arrive on the returned stream. Input that cannot become a
    /// prompt, settings out of range and a prompt that leaves no room in the context fail here.
    pub fn generate(&self, request: Request) -> Result<GenerationStream, EngineError> {
        let submitted = Instant::now();
        request.sampling.validate()?;
        if request.max_tokens == 0 {
            return Err(EngineError::NoTokensAsked);
        }
        let ck = &self.shared.checkpoint;
        let prefix = request.reply_prefix.as_str();
        let ids = match &request.input {
            Input::Messages(m) => ck.encode_reply(m, &request.tools, prefix)?,
            Input::Text(t) if !prefix.is_empty() => ck.encode_text(&format!("{t}{prefix}"))?,
            Input::Tokens(_) if !prefix.is_empty() => return Err(EngineError::PrefixOnTokens),
            input => self.encode(input)?,
        };
        let context = self.shared.info.context;
        if ids.len() >= context {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: ids.len(),
                context,
            });
        }
        let cancel = request.cancel.clone().unwrap_or_default();
        let (events, rx) = channel();
        let stopped = || EngineError::Stopped {
            path: self.shared.info.path.clone(),
        };
        let jobs = self.shared.jobs.as_ref().ok_or_else(stopped)?;
        let job = owner::Job {
            ids,
            request,
            cancel: cancel.clone(),
            events,
            submitted,
        };
        jobs.send(job).map_err(|_| stopped())?;
        Ok(GenerationStream {
            events: rx,
            cancel,
            finished: false,
            path: self.shared.info.path.clone(),
        })
    }
}
