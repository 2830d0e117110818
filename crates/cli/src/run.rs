//! `hoist run`: generate text with a Llama-family model, for one prompt (`--prompt`), as an
//! interactive chat on stdin, or as a speed benchmark against the machine's limits
//! (`--benchmark`).
//!
//! - [`model`]: the checkpoint's tokenizer and chat template, the model on its device, and a
//!   session that remembers which tokens its KV cache holds.
//! - [`turn`]: one reply: feed what the KV cache lacks, generate, time it.
//! - [`oneshot`]: `--prompt`, streamed or as one JSON object.
//! - [`chat`]: the interactive loop and its commands.
//! - [`input`]: the chat's stdin lines and Ctrl-C.
//! - [`bench`]: speed against the GPU's limits (`--benchmark`).

mod bench;
mod chat;
mod input;
mod model;
mod oneshot;
mod turn;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use hoist_runtime::chat::Message;
use hoist_runtime::generate::GenerateOptions;
use hoist_runtime::sampler::SamplingParams;
use hoist_runtime::ModelConfig;

use crate::Device;
use model::{check_device, Checkpoint, Model};

/// Most new tokens per reply without `--benchmark`.
pub const DEFAULT_MAX_TOKENS: usize = 512;
/// Decode steps timed by `--benchmark`.
pub const DEFAULT_BENCH_TOKENS: usize = 128;
/// Prompt tokens of the prefill timed by `--benchmark`.
pub const DEFAULT_BENCH_PROMPT_TOKENS: usize = 512;
/// The default context never exceeds this many positions (KV cache memory grows with it).
pub const DEFAULT_CONTEXT_CAP: usize = 4096;

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
    /// Generation options for a reply of at most `max_tokens` tokens, ending at `stop_tokens`;
    /// `turn` varies the seed so that each reply of a chat draws fresh randomness while the
    /// whole chat still repeats for one `--seed`.
    pub fn generate_options(
        &self,
        max_tokens: usize,
        stop_tokens: &[u32],
        turn: u64,
    ) -> GenerateOptions {
        GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                seed: self.sampling.seed.wrapping_add(turn),
                ..self.sampling
            },
            stop_strings: self.args.stop.clone(),
            stop_tokens: stop_tokens.to_vec(),
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
        seed: args.seed.unwrap_or_else(clock_seed),
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
    // A missing path is named as such, not as a parse error deeper down.
    std::fs::metadata(&args.model)
        .with_context(|| format!("cannot run {}", args.model.display()))?;
    Ok(Settings {
        args,
        process_start,
        max_tokens,
        sampling,
        benchmark,
    })
}

/// A seed from the clock and the process id, for runs without `--seed`.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The context when `--context` is not given (one-shot runs raise it to fit the reply).
pub fn default_context(config: &ModelConfig) -> usize {
    config.max_position_embeddings.clamp(1, DEFAULT_CONTEXT_CAP)
}

/// Warns when the context (`--context`, or the one-shot default raised to fit the reply) has
/// more positions than the model was trained for: it runs, but rotary positions beyond
/// training usually degrade the output.
fn warn_long_context(context: usize, config: &ModelConfig) {
    if context > config.max_position_embeddings {
        eprintln!(
            "warning: the context of {context} positions is beyond the {} positions the model \
             was trained for",
            config.max_position_embeddings
        );
    }
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

/// A model loaded to reply with, and what goes with it.
struct Loaded {
    model: Model,
    load_seconds: f64,
    /// Positions of the KV cache.
    context: usize,
    /// Tokens that end a reply.
    stop_tokens: Vec<u32>,
}

/// Loads the model for `ck`, works out its context with `context` (from the model's
/// configuration), warns about a tokenizer that does not fit the model or a context beyond
/// training, and prints the setup with `--verbose`.
fn load(
    s: &Settings,
    ck: &Checkpoint,
    context: impl FnOnce(&ModelConfig) -> usize,
) -> anyhow::Result<Loaded> {
    let (model, load_seconds) = Model::load(&s.args.model, &s.args.device)?;
    let config = model.config();
    ck.check_vocab(config);
    let context = context(config);
    warn_long_context(context, config);
    let stop_tokens = ck.stop_tokens(config);
    if s.args.verbose {
        print_setup(s, ck, &model, context, &stop_tokens, load_seconds);
    }
    Ok(Loaded {
        model,
        load_seconds,
        context,
        stop_tokens,
    })
}

/// `--verbose`: what was loaded and the settings in force, on stderr.
fn print_setup(
    s: &Settings,
    ck: &Checkpoint,
    model: &Model,
    context: usize,
    stop_tokens: &[u32],
    load_seconds: f64,
) {
    let c = model.config();
    eprintln!(
        "model: {:?}, {} layers, width {}, vocabulary {}, loaded in {load_seconds:.3} s",
        c.arch, c.num_layers, c.hidden_size, c.vocab_size
    );
    if let Some(stats) = model.gpu_stats() {
        eprintln!("gpu: {}", model::describe_gpu_load(stats));
    }
    let p = &s.sampling;
    eprintln!(
        "sampling: seed {}, temperature {}, top-k {}, top-p {}, min-p {}, repeat penalty {}",
        p.seed, p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty
    );
    eprintln!(
        "context: {context} positions (the model was trained for {}); chat template: {}",
        c.max_position_embeddings, ck.template_origin
    );
    let stops: Vec<String> = stop_tokens
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
