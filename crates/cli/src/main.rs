//! `hoist`: inspect, load and benchmark LLM checkpoints.

mod baselines;
mod bench;
mod gpu;
mod inspect;
mod load;
mod run;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Moves LLM weights from storage into memory as fast as the hardware allows.
#[derive(Parser, Debug)]
#[command(name = "hoist", version, about, long_about = None)]
struct Cli {
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
}

/// `--backend` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// Buffered reads for cached ranges, io_uring O_DIRECT for the rest.
    Auto,
    /// io_uring for everything.
    Uring,
    /// Buffered pread thread pool.
    Pread,
    /// memcpy out of read-only 4 MiB mapping windows.
    Mmap,
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
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HOIST_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Inspect(a) => inspect::run(a),
        Command::Load(a) => load::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Run(a) => run::run(a, start),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context first, then each cause.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(": ");
                    msg.push_str(&c);
                }
            }
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
