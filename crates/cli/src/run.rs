//! `hoist run`: generate text with a Llama-family model, for one prompt (`--prompt`), as an
//! interactive chat on stdin, or as a speed benchmark against the machine's limits
//! (`--benchmark`). A client of the model host ([`hoist_engine`]): the engine loads the model
//! and generates; this module parses arguments, draws the load's progress, streams text to the
//! terminal and formats the summaries.
//!
//! - [`turn`]: one reply through the engine, its summary line, and stdout.
//! - [`oneshot`]: `--prompt`, streamed or as one JSON object.
//! - [`chat`]: the interactive loop and its commands.
//! - [`input`]: the chat's stdin lines and Ctrl-C.
//! - [`bench`]: speed against the GPU's limits (`--benchmark`).

mod bench;
mod chat;
mod input;
mod oneshot;
mod turn;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hoist_engine::{Checkpoint, Engine, EngineError, EngineOptions, Input, Request, Weights};
use hoist_runtime::chat::Message;
use hoist_runtime::gpu::LoadStats;
use hoist_runtime::sampler::SamplingParams;

use crate::util::{human_bytes, Progress};
use crate::Device;

/// `hoist run --help`'s footer: the environment variables that override the GPU runtime's
/// options (docs/run.md, "GPU options", has the table with defaults).
pub fn env_footer() -> String {
    const LOG: (&str, &str) = (
        "HOIST_LOG",
        "log filter, as tracing's EnvFilter reads it (e.g. debug)",
    );
    let vars: Vec<(&str, &str)> = hoist_runtime::gpu::ENV_OVERRIDES
        .iter()
        .copied()
        .chain([LOG])
        .collect();
    let width = vars.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut text = String::from(
        "Environment overrides of the GPU runtime's options, for diagnosis and tuning \
         (docs/run.md, \"GPU options\"):",
    );
    for (name, what) in vars {
        text.push_str(&format!("\n  {name:<width$}  {what}"));
    }
    text
}

/// Most new tokens per reply without `--benchmark`.
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Decode steps timed by `--benchmark`.
pub const DEFAULT_BENCH_TOKENS: usize = 128;
/// Prompt tokens of the prefill timed by `--benchmark`.
pub const DEFAULT_BENCH_PROMPT_TOKENS: usize = 512;

/// Arguments of `hoist run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A Hugging Face model directory (config.json, tokenizer.json, tokenizer_config.json,
    /// *.safetensors) or a .gguf file.
    #[arg(value_name = "MODEL")]
    pub model: PathBuf,
    /// Reply to this text, then exit (without it: a chat reading one message per line of stdin).
    #[arg(long, value_name = "TEXT", conflicts_with = "benchmark")]
    pub prompt: Option<String>,
    /// A system message before the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Most new tokens per reply [default: 512; 128 with --benchmark].
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 is greedy (always the most likely token).
    #[arg(
        long,
        default_value_t = 0.7,
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub temperature: f32,
    /// Sample among the N most likely tokens only; 0 keeps all.
    #[arg(long, default_value_t = 40, value_name = "N")]
    pub top_k: usize,
    /// Sample among the fewest most likely tokens whose probabilities reach F; 1 keeps all.
    #[arg(
        long,
        default_value_t = 0.95,
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub top_p: f32,
    /// Drop tokens less likely than F times the most likely one; 0 keeps all.
    #[arg(
        long,
        default_value_t = 0.05,
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub min_p: f32,
    /// Penalty on tokens already in the context (transformers' rule); 1 is none.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "F",
        allow_negative_numbers = true
    )]
    pub repeat_penalty: f32,
    /// Seed of the sampler [default: from the clock, printed with --verbose].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Positions of the KV cache [default: min(the model's max_position_embeddings, 4096); with
    /// --prompt, at least prompt + --max-tokens].
    #[arg(long, value_name = "N")]
    pub context: Option<usize>,
    /// End the reply where this text appears (not shown; repeatable).
    #[arg(long = "stop", value_name = "STR")]
    pub stop: Vec<String>,
    /// No chat template: the prompt is tokenized as is, with BOS as the tokenizer adds it.
    #[arg(long)]
    pub raw: bool,
    /// cuda:N, or cpu (the f32 CPU reference: slow, for tiny models and tests).
    #[arg(long, default_value = "cuda:0", value_name = "DEVICE")]
    pub device: Device,
    /// Print settings, the prompt's size, load details and per-turn statistics on stderr.
    #[arg(long, short)]
    pub verbose: bool,
    /// Print one JSON object on stdout at the end instead of streaming text (with --prompt or
    /// --benchmark).
    #[arg(long)]
    pub json: bool,
    /// Measure prefill and decode speed against the GPU's limits instead of generating text.
    #[arg(long)]
    pub benchmark: bool,
    /// --benchmark: prompt tokens of the timed prefill [default: 512].
    #[arg(long, value_name = "N")]
    pub prompt_tokens: Option<usize>,
    #[command(flatten)]
    pub memory: crate::memory::MemoryArgs,
}

/// What every mode shares, worked out from [`Args`] before anything is loaded.
pub struct Settings {
    /// The arguments as given.
    pub args: Args,
    /// Set first thing in `main`: time to first token is measured from it.
    pub process_start: Instant,
    /// Most new tokens per reply.
    pub max_tokens: usize,
    /// Sampling settings, checked.
    pub sampling: SamplingParams,
    /// With `--benchmark`: the ordinal of the GPU it measures.
    pub benchmark: Option<usize>,
}

impl Settings {
    /// The request for `input`; `turn` varies the seed so that each reply of a chat draws fresh
    /// randomness while the whole chat still repeats for one `--seed`; `cancel` (Ctrl-C's
    /// flag) stops it.
    pub fn request(&self, input: Input, turn: u64, cancel: Option<Arc<AtomicBool>>) -> Request {
        Request {
            sampling: SamplingParams {
                seed: self.sampling.seed.wrapping_add(turn),
                ..self.sampling
            },
            stop_strings: self.args.stop.clone(),
            cancel,
            ..Request::new(input, self.sampling, self.max_tokens)
        }
    }
}

/// Runs `hoist run`; `process_start` is the instant `main` began.
pub fn run(args: Args, process_start: Instant) -> anyhow::Result<()> {
    let settings = check(args, process_start)?;
    check_device(&settings.args.device)?;
    if let Some(ordinal) = settings.benchmark {
        return bench::run(&settings, ordinal);
    }
    match settings.args.prompt.clone() {
        Some(prompt) => oneshot::run(&settings, &prompt),
        None => chat::run(&settings),
    }
}

/// Checks the arguments (everything that needs no file), so that a typo fails at once rather
/// than after a load of many gigabytes.
fn check(args: Args, process_start: Instant) -> anyhow::Result<Settings> {
    let max_tokens = args.max_tokens.unwrap_or(match args.benchmark {
        true => DEFAULT_BENCH_TOKENS,
        false => DEFAULT_MAX_TOKENS,
    });
    anyhow::ensure!(max_tokens > 0, "--max-tokens must be at least 1");
    anyhow::ensure!(
        args.context != Some(0),
        "--context must be at least 1 (it also has to hold the prompt)"
    );
    match (args.benchmark, args.prompt_tokens) {
        (false, Some(_)) => anyhow::bail!("--prompt-tokens goes with --benchmark"),
        (true, Some(0)) => anyhow::bail!("--prompt-tokens must be at least 1"),
        _ => {}
    }
    let benchmark = match (args.benchmark, &args.device) {
        (false, _) => None,
        (true, Device::Cuda(n)) => Some(*n),
        (true, Device::Cpu) => {
            anyhow::bail!("--benchmark measures the GPU runtime: use --device cuda:N")
        }
    };
    anyhow::ensure!(
        !args.json || args.prompt.is_some() || args.benchmark,
        "--json needs --prompt or --benchmark (the interactive chat prints text)"
    );
    let sampling = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repeat_penalty,
        seed: args.seed.unwrap_or_else(hoist_engine::clock_seed),
    };
    sampling.validate().map_err(|e| {
        let flag = match e.name {
            "temperature" => "--temperature",
            "top_p" => "--top-p",
            "min_p" => "--min-p",
            "repetition_penalty" => "--repeat-penalty",
            other => other,
        };
        anyhow::anyhow!("{flag} {} is out of range ({})", e.value, e.range)
    })?;
    // A path that exists is a path; anything else is a model name for the store (a missing
    // path is named as such there, not as a parse error deeper down).
    let mut args = args;
    if std::fs::metadata(&args.model).is_err() {
        args.model = crate::store::resolve_model_arg(&args.model)
            .with_context(|| format!("cannot run {}", args.model.display()))?;
    }
    Ok(Settings {
        args,
        process_start,
        max_tokens,
        sampling,
        benchmark,
    })
}

/// Fails with what to do instead when `device` cannot run the model.
fn check_device(device: &Device) -> anyhow::Result<()> {
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

/// The engine's name for `device`.
fn engine_device(device: &Device) -> hoist_engine::Device {
    match *device {
        Device::Cpu => hoist_engine::Device::Cpu,
        Device::Cuda(n) => hoist_engine::Device::Cuda(n),
    }
}

/// An engine error in the words of `hoist run`: a KV cache too large names `--context`.
fn cli_error(e: EngineError) -> anyhow::Error {
    match e {
        EngineError::KvCache { context, source } => anyhow::Error::new(*source).context(format!(
            "cannot make a KV cache of {context} positions (a smaller --context needs less memory)"
        )),
        e => anyhow::Error::new(e),
    }
}

/// Reads the checkpoint's tokenizer and chat template (`--raw`: none), saying on stderr what
/// the user should know (a missing chat template).
fn open_checkpoint(a: &Args) -> anyhow::Result<Checkpoint> {
    let ck = Checkpoint::open(&a.model, a.raw).map_err(cli_error)?;
    for note in &ck.notes {
        eprintln!("note: {note}");
    }
    Ok(ck)
}

/// The conversation's start: the `--system` message, unless raw mode has no place for it
/// (said on stderr).
fn system_messages(s: &Settings, ck: &Checkpoint) -> Vec<Message> {
    match (&s.args.system, &ck.template) {
        (Some(system), Some(_)) => vec![Message::new("system", system.as_str())],
        (Some(_), None) => {
            eprintln!("note: --system is ignored in raw mode");
            Vec::new()
        }
        (None, _) => Vec::new(),
    }
}

/// Loads the model with the tokenizer of `ck` through the engine, saying so on stderr first (a
/// large model takes seconds) with a progress bar on a terminal; its context is `--context`, or
/// the model's default raised to `min_context`. Prints the engine's warnings (a tokenizer that
/// does not fit the model, a context beyond training), and the setup with `--verbose`.
fn load(s: &Settings, ck: Checkpoint, min_context: usize) -> anyhow::Result<Engine> {
    let a = &s.args;
    let device = engine_device(&a.device);
    if a.device == Device::Cpu {
        eprintln!(
            "warning: --device cpu runs the f32 CPU reference: slow, for tiny models and tests"
        );
    }
    eprintln!("loading {} onto {device} …", a.model.display());
    let weights = Weights::open(&a.model, device).map_err(cli_error)?;
    let counter = Arc::new(AtomicU64::new(0));
    let bar = Progress::start(counter.clone(), weights.weight_bytes(), "loading", true);
    let options = EngineOptions {
        device,
        context: a.context,
        min_context,
        // One conversation at a time: one KV cache.
        pool_size: 1,
        parallel: 1,
        progress: Some(counter),
        raw: a.raw,
        cache: a.memory.cache(),
    };
    let engine = Engine::start(ck, weights, a.memory.placement(), options);
    // Cleared before an error is printed.
    drop(bar);
    let engine = engine.map_err(cli_error)?;
    for w in &engine.info().warnings {
        eprintln!("warning: {w}");
    }
    if a.verbose {
        print_setup(s, &engine);
    }
    Ok(engine)
}

/// `--verbose`: what was loaded and the settings in force, on stderr.
fn print_setup(s: &Settings, engine: &Engine) {
    let info = engine.info();
    let ck = engine.checkpoint();
    let c = &info.config;
    eprintln!(
        "model: {:?}, {} layers, width {}, vocabulary {}, loaded in {:.3} s",
        c.arch, c.num_layers, c.hidden_size, c.vocab_size, info.load_seconds
    );
    if let Some(stats) = &info.gpu {
        eprintln!("gpu: {}: {}", stats.device, gpu_load_details(stats));
        eprintln!(
            "placement: {}; {} kept for a session of {} positions",
            stats.placement.summary(),
            human_bytes(stats.session_reserve_bytes),
            info.context
        );
        if stats.host_ffn_layers > 0 {
            eprintln!(
                "hybrid decode: {} streamed layers' feed-forward on the CPU ({:.1} GB/s measured), {} copied per token",
                stats.host_ffn_layers,
                stats.host_gbps.unwrap_or(0.0),
                human_bytes(stats.decode_streamed_bytes_per_token)
            );
        }
    }
    let p = &s.sampling;
    eprintln!(
        "sampling: seed {}, temperature {}, top-k {}, top-p {}, min-p {}, repeat penalty {}",
        p.seed, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty
    );
    eprintln!(
        "context: {} positions (the model was trained for {}); chat template: {}",
        info.context, c.max_position_embeddings, ck.template_origin
    );
    let stops: Vec<String> = info
        .stop_tokens
        .iter()
        .map(|&id| format!("{} ({id})", ck.token_text(id)))
        .collect();
    eprintln!(
        "stop tokens: {}; stop strings: {:?}",
        match stops.is_empty() {
            true => "none".into(),
            false => stops.join(", "),
        },
        s.args.stop
    );
}

/// What the parts of a GPU load took: device context, kernels, weights, the whole load.
fn gpu_load_details(s: &LoadStats) -> String {
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
