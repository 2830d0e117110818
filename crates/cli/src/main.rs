//! `hoist`: inspect, load and benchmark LLM checkpoints.

mod baselines;
mod bench;
mod gpu;
mod inspect;
mod load;
mod memory;
mod run;
mod serve;
mod store;
mod util;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// `--version`: the package version and the commit it was built from (see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("HOIST_GIT_COMMIT"),
    ")"
);

/// Inspect, load and benchmark LLM checkpoints; run Llama-family models on the GPU.
#[derive(Parser, Debug)]
#[command(name = "hoist", version = VERSION, long_about = None)]
struct Cli {
    /// Debug logs on stderr (HOIST_LOG, when set, decides instead: e.g. HOIST_LOG=trace).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List a checkpoint's tensors and metadata (reads headers only).
    Inspect(inspect::Args),
    /// Load a checkpoint's tensors into memory and report how fast it went.
    Load(load::Args),
    /// Compare hoist's backends with baseline loaders on a checkpoint (a synthetic one by default).
    Bench(bench::Args),
    /// Generate text with a Llama-family model: one prompt, an interactive chat, or a speed
    /// benchmark (`--benchmark`).
    Run(run::Args),
    /// Serve models over HTTP with Ollama's and OpenAI's APIs (docs/serve.md).
    Serve(serve::Args),
    /// List the models in hoist's store, the Hugging Face cache and Ollama's store.
    List,
    /// Show a model's architecture, parameters, dtypes, context, license and chat template.
    Show(store::ShowArgs),
    /// Remove a model from hoist's store (the other stores are read-only).
    Rm {
        /// A model name in hoist's store.
        name: String,
    },
    /// Give a model a second name in hoist's store (no weights are copied).
    Cp {
        /// The model's name.
        src: String,
        /// The new name, NAME[:TAG].
        dst: String,
    },
    /// Download a model: NAME[:TAG] from Ollama's registry, ORG/NAME[@REV] from the Hugging
    /// Face hub.
    Pull(store::PullArgs),
}

/// `--backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Per chunk: buffered pread pool for ranges in the page cache (mmap-window copies into host
    /// memory with 8 threads or more), io_uring O_DIRECT for the rest (the pread pool where
    /// O_DIRECT or io_uring is refused).
    Auto,
    /// io_uring for everything (O_DIRECT where the filesystem allows it).
    Uring,
    /// Buffered pread thread pool for everything.
    Pread,
    /// memcpy out of read-only 4 MiB mapping windows.
    Mmap,
}

/// `--cache` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    /// Keep when the bytes to read fit in MemAvailable minus the headroom, else bypass.
    Auto,
    /// Read data not yet cached through the page cache, so the next load is a warm one.
    Keep,
    /// Read data not yet cached with O_DIRECT, past the page cache (backends auto and uring;
    /// pread and mmap always read through the cache, and the report says so).
    Bypass,
}

impl From<CacheArg> for hoist_io::CachePolicy {
    fn from(c: CacheArg) -> Self {
        match c {
            CacheArg::Auto => hoist_io::CachePolicy::Auto,
            CacheArg::Keep => hoist_io::CachePolicy::Keep,
            CacheArg::Bypass => hoist_io::CachePolicy::Bypass,
        }
    }
}

impl From<BackendArg> for hoist_io::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Auto => hoist_io::Backend::Auto,
            BackendArg::Uring => hoist_io::Backend::Uring,
            BackendArg::Pread => hoist_io::Backend::Pread,
            BackendArg::Mmap => hoist_io::Backend::Mmap,
        }
    }
}

/// Engine tuning shared by `load` and `bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Tuning {
    /// Largest single read, MiB (also the staging slot size on GPU loads) [default: 16 to host
    /// memory, 8 to a GPU].
    #[arg(long, value_name = "MIB")]
    chunk_mib: Option<u64>,
    /// Reader threads for buffered reads (default: one per core, at most 32).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// io_uring reads in flight.
    #[arg(long, default_value_t = 32, value_name = "N")]
    queue_depth: usize,
    /// Whether data read from disk stays in the page cache, so that the next load of the same
    /// files is fast: keep (buffered reads), bypass (O_DIRECT, nothing cached or evicted), or
    /// auto (keep when the bytes fit in MemAvailable minus --cache-headroom-gib).
    #[arg(long, value_enum, default_value_t = CacheArg::Auto, value_name = "POLICY")]
    cache: CacheArg,
    /// Memory --cache auto leaves free, GiB [default: 10% of MemTotal, at least 2].
    #[arg(long, value_name = "GIB")]
    cache_headroom_gib: Option<f64>,
    /// GPU loads: how bytes reach the device (auto, ring, cufile, mapped).
    #[arg(long, default_value = "auto", value_name = "PATH", value_parser = parse_gpu_path)]
    gpu_path: hoist_cuda::GpuPath,
    /// GPU loads: device memory layout (packed: few allocations, every tensor 256-byte
    /// aligned; regions: tensors at their file offsets, one copy per chunk, needed by cuFile;
    /// per-tensor: one allocation each).
    #[arg(long, default_value = "packed", value_name = "LAYOUT", value_parser = parse_gpu_layout)]
    gpu_layout: hoist_cuda::DestLayout,
    /// GPU loads: pinned host memory of the staging ring, MiB.
    #[arg(long, default_value_t = (hoist_cuda::DEFAULT_RING_BYTES >> 20) as u64, value_name = "MIB")]
    ring_mib: u64,
}

fn parse_gpu_path(s: &str) -> Result<hoist_cuda::GpuPath, String> {
    hoist_cuda::GpuPath::from_name(s)
        .ok_or_else(|| format!("'{s}' is not a GPU path: use auto, ring, cufile or mapped"))
}

fn parse_gpu_layout(s: &str) -> Result<hoist_cuda::DestLayout, String> {
    use hoist_cuda::DestLayout;
    [
        DestLayout::Packed,
        DestLayout::Regions,
        DestLayout::PerTensor,
    ]
    .into_iter()
    .find(|l| l.name() == s)
    .ok_or_else(|| format!("'{s}' is not a GPU layout: use packed, regions or per-tensor"))
}

/// Most pinned ring memory accepted (MiB): pinned memory is taken from the host for good.
pub const MAX_RING_MIB: u64 = 64 << 10;

/// Largest `--cache-headroom-gib` accepted (1 PiB): past any machine's memory, so every value
/// that means something fits, and the conversion to bytes cannot overflow.
pub const MAX_CACHE_HEADROOM_GIB: f64 = (1u64 << 20) as f64;

impl Tuning {
    fn plan_config(&self, device: &Device) -> anyhow::Result<hoist_io::PlanConfig> {
        let default_bytes = match device {
            Device::Cpu => hoist_io::plan::DEFAULT_CHUNK_BYTES,
            Device::Cuda(_) => hoist_cuda::DEFAULT_GPU_CHUNK_BYTES,
        };
        let chunk_mib = self.chunk_mib.unwrap_or(default_bytes >> 20);
        let chunk_bytes = chunk_mib
            .checked_mul(1 << 20)
            .filter(|&b| (1 << 20..=1 << 30).contains(&b));
        let chunk_bytes =
            chunk_bytes.ok_or_else(|| anyhow::anyhow!("--chunk-mib must be between 1 and 1024"))?;
        Ok(hoist_io::PlanConfig {
            chunk_bytes,
            ..Default::default()
        })
    }

    fn engine_config(
        &self,
        backend: BackendArg,
        device: &Device,
    ) -> anyhow::Result<hoist_io::EngineConfig> {
        let mut c = match device {
            Device::Cpu => hoist_io::EngineConfig::default(),
            Device::Cuda(_) => hoist_cuda::recommended_engine_config(),
        };
        c.backend = backend.into();
        if let Some(t) = self.threads {
            anyhow::ensure!(
                (1..=hoist_io::engine::MAX_THREADS).contains(&t),
                "--threads must be between 1 and {}",
                hoist_io::engine::MAX_THREADS
            );
            c.threads = t;
        }
        anyhow::ensure!(
            (1..=hoist_io::engine::MAX_QUEUE_DEPTH).contains(&self.queue_depth),
            "--queue-depth must be between 1 and {}",
            hoist_io::engine::MAX_QUEUE_DEPTH
        );
        c.queue_depth = self.queue_depth;
        c.cache = self.cache.into();
        if let Some(gib) = self.cache_headroom_gib {
            anyhow::ensure!(
                gib.is_finite() && (0.0..=MAX_CACHE_HEADROOM_GIB).contains(&gib),
                "--cache-headroom-gib must be between 0 and {MAX_CACHE_HEADROOM_GIB}"
            );
            c.cache_headroom_bytes = Some((gib * (1u64 << 30) as f64) as u64);
        }
        Ok(c)
    }

    fn gpu_config(&self, ordinal: usize) -> anyhow::Result<hoist_cuda::GpuConfig> {
        anyhow::ensure!(
            (1..=MAX_RING_MIB).contains(&self.ring_mib),
            "--ring-mib must be between 1 and {MAX_RING_MIB}"
        );
        Ok(hoist_cuda::GpuConfig {
            ordinal,
            path: self.gpu_path,
            dest: self.gpu_layout,
            ring_bytes: (self.ring_mib as usize) << 20,
            ..Default::default()
        })
    }
}

/// Where tensors go (`--device`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// Host memory.
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| format!("'{s}' is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for Device {
    /// `cpu` or `cuda:N`, as `--device` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A checkpoint path argument.
pub type CheckpointPath = PathBuf;

fn main() -> ExitCode {
    // First: `hoist run` reports time to first token from process start.
    let start = std::time::Instant::now();
    end_quietly_on_closed_pipe();
    let matches = Cli::command()
        .mut_subcommand("run", |c| c.after_help(run::env_footer()))
        .get_matches();
    if let Err(e) = refuse_gpu_flags_on_cpu(&matches) {
        e.exit();
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `run` keeps its own -v/--verbose (clap does not hand it the global one: same id); it
    // turns the debug logs on too.
    let verbose = cli.verbose || matches!(&cli.command, Command::Run(a) if a.verbose);
    let env_filter = std::env::var("HOIST_LOG").ok();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(env_filter.as_deref(), verbose))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    tracing::debug!(
        args = ?std::env::args_os().skip(1).collect::<Vec<_>>(),
        "hoist {VERSION}"
    );
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Load(a) => load::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Run(a) => run::run(a, start),
        Command::Serve(a) => serve::run(a),
        Command::List => store::list(),
        Command::Show(a) => store::show(a),
        Command::Rm { name } => store::rm(&name),
        Command::Cp { src, dst } => store::cp(&src, &dst),
        Command::Pull(a) => store::pull(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Restores the default action of SIGPIPE, which the Rust runtime sets to "ignore".
///
/// Ignored, a write to a closed pipe (`hoist inspect m | head -1`) fails with EPIPE, and every
/// `println!` in any subcommand or library then panics. Restored, the kernel ends the process
/// at that write, silently, as it ends `cat`, `grep` or `seq`: the shell sees status 141 and
/// prints nothing, and `set -o pipefail` scripts see what they see from those tools. This
/// covers every write in one place, where a fallible writer would have to be threaded through
/// every print of every subcommand. The C libraries loaded at run time (CUDA, cuFile, NVRTC)
/// expect this default: it is what every C program starts with.
fn end_quietly_on_closed_pipe() {
    // SAFETY: runs first in `main`, before any thread exists or any signal handler is set;
    // SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Ids of the flags that only steer GPU loads (`Tuning`'s fields).
const GPU_ONLY_ARGS: [&str; 3] = ["gpu_path", "gpu_layout", "ring_mib"];

/// `load` and `bench` with `--device cpu` refuse flags that only steer GPU loads (they would
/// be silently ignored), before any work. Only flags given on the command line count.
fn refuse_gpu_flags_on_cpu(matches: &clap::ArgMatches) -> Result<(), clap::Error> {
    let Some((name @ ("load" | "bench"), sub)) = matches.subcommand() else {
        return Ok(());
    };
    if !matches!(sub.try_get_one::<Device>("device"), Ok(Some(Device::Cpu))) {
        return Ok(());
    }
    let given: Vec<String> = GPU_ONLY_ARGS
        .iter()
        .filter(|id| sub.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    let verb = match given.len() {
        0 => return Ok(()),
        1 => "applies",
        _ => "apply",
    };
    let msg = format!(
        "{} {verb} only to GPU loads (--device cuda:N), not to --device cpu; leave {} out or load onto a GPU",
        given.join(" and "),
        if given.len() == 1 { "it" } else { "them" },
    );
    let mut cmd = Cli::command();
    cmd.build();
    Err(match cmd.find_subcommand_mut(name) {
        Some(sub_cmd) => sub_cmd.error(clap::error::ErrorKind::ArgumentConflict, msg),
        None => cmd.error(clap::error::ErrorKind::ArgumentConflict, msg),
    })
}

/// The log filter: `HOIST_LOG` when set (it always decides); else, with `-v`, debug for hoist's
/// own crates (targets `hoist`, `hoist_io`, …: a directive's target matches as a prefix) and
/// warnings from the rest; else warnings only.
fn log_filter(hoist_log: Option<&str>, verbose: bool) -> EnvFilter {
    match hoist_log.filter(|v| !v.trim().is_empty()) {
        Some(directives) => EnvFilter::builder().parse_lossy(directives),
        None if verbose => EnvFilter::new("warn,hoist=debug"),
        None => EnvFilter::new("warn"),
    }
}

/// An error and its causes on one line, outermost first. A cause already contained in the
/// line is left out; so is a cause's leading `NAME: ` when the line already names NAME (a
/// context "cannot load m.gguf" and a cause "m.gguf: bad magic" read "cannot load m.gguf: bad
/// magic"), since hoist's library errors start with the file they concern.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if msg.contains(&c) {
            continue;
        }
        let rest = match c.split_once(": ") {
            Some((head, rest)) if names(&msg, head) => rest,
            _ => &c,
        };
        msg.push_str(": ");
        msg.push_str(rest);
    }
    msg
}

/// Whether `line` holds `name` as a whole word (bounded by spaces, colons or the ends).
fn names(line: &str, name: &str) -> bool {
    let boundary = |c: Option<char>| c.is_none_or(|c| c == ' ' || c == ':');
    !name.is_empty()
        && line.match_indices(name).any(|(i, _)| {
            boundary(line[..i].chars().next_back())
                && boundary(line[i + name.len()..].chars().next())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        // Panics on clap misconfiguration, e.g. a global -v clashing with `run`'s own.
        Cli::command().debug_assert();
    }

    #[test]
    fn run_verbose_stays_runs_own() {
        let cli = Cli::try_parse_from(["hoist", "run", "m", "-v"]).unwrap();
        let Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert!(a.verbose);
        let cli = Cli::try_parse_from(["hoist", "inspect", "m", "--verbose"]).unwrap();
        assert!(cli.verbose);
    }

    #[test]
    fn default_filter_shows_warnings_and_hoist_log_wins() {
        assert_eq!(log_filter(None, false).to_string(), "warn");
        assert_eq!(log_filter(Some(" "), false).to_string(), "warn");
        assert_eq!(log_filter(None, true).to_string(), "hoist=debug,warn");
        assert_eq!(log_filter(Some("error"), true).to_string(), "error");
    }

    #[test]
    fn one_line_names_a_path_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(io)
            .context("m.gguf: cannot read")
            .context("cannot inspect m.gguf");
        assert_eq!(
            one_line(&e),
            "cannot inspect m.gguf: cannot read: entity not found"
        );
        let e = anyhow::anyhow!("d/b.safetensors: truncated").context("cannot load d");
        assert_eq!(one_line(&e), "cannot load d: d/b.safetensors: truncated");
        let e = anyhow::anyhow!("m: bad").context("loading m.gguf failed");
        assert_eq!(one_line(&e), "loading m.gguf failed: m: bad");
    }
}
