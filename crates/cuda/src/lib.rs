//! Loading checkpoint tensors into GPU memory.
//!
//! The engine of `hoist-io` reads a plan's chunks; here they land on the GPU by one of two paths:
//!
//! - **ring** (the default): reads land in a bounded ring of pinned host slots and are copied to
//!   their final device buffers by `cuMemcpyHtoDAsync` on several streams, reading, copying and
//!   the next read overlapping; chunks in the page cache are read buffered by many threads, the
//!   rest by io_uring with O_DIRECT. Host memory stays at the ring's size whatever the model.
//! - **cuFile** (GPUDirect Storage): reads straight into device memory; `auto` takes it only
//!   where it is really direct (nvidia-fs loaded), since compatibility mode is a slower ring.
//!
//! This crate is the only one of hoist that calls CUDA: besides loading it wraps what the
//! inference runtime needs (NVRTC compilation, modules and kernel launches, CUDA graphs,
//! cuBLAS, device attributes), each call checked into a [`CudaError`].
//!
//! CUDA is reached through cudarc with dynamic loading: nothing CUDA is needed to build, and
//! [`probe`] checks that the driver library can be loaded before cudarc is touched (cudarc
//! panics when it is absent), so machines without a GPU get an error, never a panic.

pub mod blas;
mod chunk_pool;
mod cufile;
mod driver;
mod first_error;
mod graph;
mod loader;
mod mapped;
mod module;
mod nvrtc;
mod ring;
mod slice;
mod tensors;

mod error;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use hoist_format::TensorTable;
use hoist_io::plan::{Plan, PlanConfig};
use hoist_io::residency::FileResidency;
use hoist_io::{Backend, EngineConfig, LoadReport};
use serde::Serialize;

pub use cufile::{cufile_status, CufileStatus};
pub use driver::{
    device_count, driver_library, DeviceAttribute, DeviceBuf, Event, Gpu, PinnedAlloc, PinnedBuf,
    Stream,
};
pub use error::CudaError;
pub use graph::Graph;
pub use loader::{
    pinned_loader_stats, release_pinned_loaders, PinnedLoaderStats, LOADER_IDLE_RELEASE_SECONDS,
};
pub use module::{Function, LaunchConfig, Module};
pub use nvrtc::{compile_cubin, nvrtc_available, nvrtc_version, Program};
pub use slice::{DevSlice, SliceError};
pub use tensors::{DestLayout, GpuTensor, GpuTensors, Verification, PACKED_ALIGN_BYTES};

use chunk_pool::ChunkLoad;
use loader::PinnedLoader;
use ring::RingRequest;
use tensors::Destinations;

/// Which road bytes take to the GPU (`--gpu-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuPath {
    /// cuFile where it is really direct and most of the data is not cached; the ring otherwise.
    Auto,
    /// Pinned staging ring + async copies.
    Ring,
    /// cuFile, in compatibility mode if nvidia-fs is absent.
    Cufile,
    /// Experimental, for data in the page cache: pin the page-cache pages of a read-only file
    /// mapping in place and copy from them (no staging copy, no host allocation).
    Mapped,
}

impl GpuPath {
    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            GpuPath::Auto => "auto",
            GpuPath::Ring => "ring",
            GpuPath::Cufile => "cufile",
            GpuPath::Mapped => "mapped",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(s: &str) -> Option<GpuPath> {
        [
            GpuPath::Auto,
            GpuPath::Ring,
            GpuPath::Cufile,
            GpuPath::Mapped,
        ]
        .into_iter()
        .find(|p| p.name() == s)
    }
}

/// Default pinned ring size: a few hundred MiB keeps ~30 reads in flight at the default
/// chunk size while bounding host memory.
pub const DEFAULT_RING_BYTES: usize = 256 << 20;
/// Default copy streams.
pub const DEFAULT_STREAMS: usize = 4;
/// Default chunk size for GPU loads (the ring's slot size): 8 MiB with the default ring gives 32
/// slots, enough for 16 buffered readers plus copies in flight.
pub const DEFAULT_GPU_CHUNK_BYTES: u64 = 8 << 20;

/// Engine settings that measured best for GPU loads on the GPU machine (16 cores, virtio disk):
/// up to 16 buffered readers for cached data, two io_uring rings of 32 reads each for cold
/// data (one ring left the disk ~10% short of its parallel O_DIRECT rate).
pub fn recommended_engine_config() -> EngineConfig {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    EngineConfig {
        backend: Backend::Auto,
        threads: cores.clamp(2, 16),
        queue_depth: 32,
        uring_threads: 2,
        progress: None,
        // The page-cache policy of every load: auto unless the caller says otherwise.
        ..EngineConfig::default()
    }
}

/// Knobs of a GPU load.
#[derive(Clone, Debug)]
pub struct GpuConfig {
    /// Device ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Ring or cuFile.
    pub path: GpuPath,
    /// Pinned host memory of the ring (slots are the plan's `chunk_bytes`).
    pub ring_bytes: usize,
    /// Copy streams.
    pub streams: usize,
    /// How the ring is pinned.
    pub pinned: PinnedAlloc,
    /// Offer the ring's slots to io_uring as registered (fixed) buffers.
    pub fixed_buffers: bool,
    /// Device memory layout of the tensors.
    pub dest: DestLayout,
    /// Fill destinations with this byte before reading (tests: shows unwritten bytes).
    pub poison: Option<u8>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            ordinal: 0,
            path: GpuPath::Auto,
            ring_bytes: DEFAULT_RING_BYTES,
            streams: DEFAULT_STREAMS,
            pinned: PinnedAlloc::MmapRegister,
            fixed_buffers: true,
            dest: DestLayout::Packed,
            poison: None,
        }
    }
}

/// What [`probe`] found.
#[derive(Clone, Debug, Serialize)]
pub struct GpuInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Device name.
    pub name: String,
    /// CUDA devices on the machine.
    pub device_count: usize,
    /// Driver version, e.g. 13000.
    pub driver_version: i32,
    /// Device memory in bytes.
    pub total_bytes: u64,
    /// Free device memory in bytes.
    pub free_bytes: u64,
    /// cuFile availability.
    pub cufile: CufileStatus,
}

/// Devices opened so far; kept for the life of the process so that the primary context (and
/// its start-up cost) is paid once, by [`probe`] or by the first load.
static GPUS: Mutex<Vec<(usize, Arc<Gpu>)>> = Mutex::new(Vec::new());

fn gpu(ordinal: usize) -> Result<(Arc<Gpu>, f64), CudaError> {
    let mut open = GPUS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, g)) = open.iter().find(|(o, _)| *o == ordinal) {
        return Ok((g.clone(), 0.0));
    }
    let t = Instant::now();
    // A CUDA library too old for a symbol cudarc asks for panics inside cudarc; make that an
    // error like any other.
    let g = std::panic::catch_unwind(|| Gpu::open(ordinal))
        .map_err(|p| CudaError::NoDriver(panic_text(&p)))??;
    open.push((ordinal, g.clone()));
    let seconds = t.elapsed().as_secs_f64();
    tracing::debug!(ordinal, device = %g.name(), seconds, "CUDA context opened");
    Ok((g, seconds))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the CUDA library panicked".into())
}

/// Checks that device `ordinal` is usable and describes it; opens its context (so a load that
/// follows pays no start-up). Never panics: without a driver or device it returns an error
/// that says so in one line.
pub fn probe(ordinal: usize) -> Result<GpuInfo, CudaError> {
    let g = open_device(ordinal)?;
    let (free_bytes, total_bytes) = g.mem_info()?;
    Ok(GpuInfo {
        ordinal,
        name: g.name().to_string(),
        device_count: driver::device_count()?,
        driver_version: driver::driver_version()?,
        total_bytes,
        free_bytes,
        cufile: cufile_status(),
    })
}

/// Opens device `ordinal` (its primary context, kept for the life of the process and shared
/// with every other user of the device): for callers that run their own work on the device,
/// such as the inference runtime. Never panics without a driver.
pub fn open_device(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
    driver::driver_library()?;
    Ok(gpu(ordinal)?.0)
}

/// What a GPU load did.
#[derive(Clone, Debug, Serialize)]
pub struct GpuLoadReport {
    /// The engine's report (bytes read, bytes per method, fallback notes, engine seconds); for
    /// the cuFile path, one method `cufile-direct` or `cufile-compat`.
    pub io: LoadReport,
    /// The path that ran: `ring`, `mapped`, `cufile-direct` or `cufile-compat`.
    pub path: &'static str,
    /// Why that path (one line).
    pub path_reason: String,
    /// Device name.
    pub device: String,
    /// Device ordinal.
    pub ordinal: usize,
    /// Bytes of the selected tensors.
    pub tensor_bytes: u64,
    /// Wall-clock seconds of the whole load: planning, allocation, reads, copies, final
    /// synchronization (the device context excluded when it was already open).
    pub seconds: f64,
    /// Seconds of that spent before the first read: planning, device allocation, pinning the
    /// ring (unless an earlier load's was reused), residency sampling.
    pub setup_seconds: f64,
    /// Seconds spent opening the device's context in this call (0 when it was open already).
    pub context_seconds: f64,
    /// Device bytes allocated for the tensors.
    pub gpu_allocated_bytes: u64,
    /// Device memory that became used during the load (free before minus free after).
    pub gpu_used_bytes: u64,
    /// Device memory layout.
    pub dest: DestLayout,
    /// Pinned host bytes of the ring (0 on the cuFile path).
    pub ring_bytes: usize,
    /// Ring slots (0 on the cuFile path).
    pub ring_slots: usize,
    /// Whether the ring was pinned by an earlier load of this process (see
    /// [`release_pinned_loaders`]); its pinning then cost this load nothing.
    pub ring_reused: bool,
    /// Slot (chunk) bytes.
    pub slot_bytes: u64,
    /// Copy streams.
    pub streams: usize,
    /// How the ring was pinned.
    pub pinned: &'static str,
}

impl GpuLoadReport {
    /// Tensor bytes per second, in GB/s (10⁹ bytes).
    pub fn gbps(&self) -> f64 {
        self.tensor_bytes as f64 / self.seconds.max(1e-9) / 1e9
    }
}

/// Receives each tensor as soon as its bytes are on the device (called on engine threads).
pub type OnGpuTensor<'a> = dyn Fn(&GpuTensor) + Sync + 'a;

/// Share of the plan's bytes in the page cache, estimated from about [`RESIDENCY_PROBES`]
/// pages spread evenly over the chunks (0 where residency cannot be asked). Asking `mincore`
/// about every page of a 13.5 GB checkpoint took ~150 ms on the GPU machine, a third of a warm
/// load; a sample answers "is it all cached?" in a few milliseconds.
fn cached_fraction(plan: &Plan) -> f64 {
    let page = hoist_io::residency::page_bytes();
    let per_chunk = (RESIDENCY_PROBES / plan.chunks.len().max(1)).max(1) as u64;
    let (mut probed, mut cached) = (0u64, 0u64);
    for (i, f) in plan.files.iter().enumerate() {
        let Ok(file) = std::fs::File::open(&f.path) else {
            continue;
        };
        let Ok(mut r) = FileResidency::new(&file) else {
            continue;
        };
        for c in plan.chunks.iter().filter(|c| c.file == i) {
            let pages = c.need.div_ceil(page);
            for j in 0..per_chunk.min(pages) {
                let offset = c.file_offset + (pages * j / per_chunk.min(pages)) * page;
                probed += 1;
                cached += u64::from(r.is_resident(offset, 1).unwrap_or(false));
            }
        }
    }
    cached as f64 / probed.max(1) as f64
}

/// The report of a path that reads everything one way; `keeps` says whether that way leaves
/// the bytes in the page cache (which the engine's cache policy cannot change), `why` why.
fn single_method_report(
    method: &'static str,
    bytes: u64,
    since: Instant,
    asked: hoist_io::CachePolicy,
    keeps: bool,
    why: &str,
) -> LoadReport {
    use hoist_io::CachePolicy;
    LoadReport {
        read_bytes: bytes,
        bytes_by_method: vec![(method, bytes)],
        notes: Vec::new(),
        seconds: since.elapsed().as_secs_f64(),
        cache: hoist_io::CacheDecision {
            asked,
            policy: if keeps {
                CachePolicy::Keep
            } else {
                CachePolicy::Bypass
            },
            reason: why.to_string(),
        },
    }
}

/// Pages [`cached_fraction`] asks about per load.
const RESIDENCY_PROBES: usize = 4096;

/// Loads the tensors `selection` (indices into `table.tensors`) onto GPU `gpu.ordinal`; calls
/// `on_tensor` with each as its bytes reach the device, and returns all of them.
///
/// `plan.chunk_bytes` is the ring's slot size ([`DEFAULT_GPU_CHUNK_BYTES`] is a good value);
/// `engine` chooses the read backend and threads exactly as for host loads.
pub fn load_to_gpu(
    table: &TensorTable,
    selection: &[usize],
    plan: PlanConfig,
    engine: &EngineConfig,
    gpu_config: &GpuConfig,
    on_tensor: Option<&OnGpuTensor<'_>>,
) -> Result<(GpuTensors, GpuLoadReport), CudaError> {
    driver::driver_library()?;
    let (g, context_seconds) = gpu(gpu_config.ordinal)?;
    let start = Instant::now();
    let plan = Plan::new(table, selection, plan)?;
    let (free_before, _) = g.mem_info()?;
    let needed = Destinations::needed_bytes(&plan, gpu_config.dest);
    if needed > free_before {
        return Err(CudaError::OutOfMemory {
            ordinal: g.ordinal(),
            needed_bytes: needed,
            needed_gib: needed as f64 / (1u64 << 30) as f64,
            free_bytes: free_before,
        });
    }
    let dest = Destinations::alloc(&g, &plan, gpu_config.dest)?;
    tracing::debug!(
        layout = %gpu_config.dest.name(),
        allocated_bytes = dest.allocated_bytes(),
        seconds = start.elapsed().as_secs_f64(),
        "device buffers allocated"
    );
    if let Some(byte) = gpu_config.poison {
        for p in 0..plan.placements.len() {
            // SAFETY: each placement's bytes lie inside its allocation.
            unsafe {
                driver::memset(
                    &g,
                    dest.placement_ptr(&plan, p),
                    byte,
                    plan.placements[p].len as usize,
                )?
            };
        }
        g.synchronize()?;
    }
    let mut tensors: Vec<GpuTensor> = plan
        .placements
        .iter()
        .enumerate()
        .map(|(p, pl)| {
            let device_ptr = dest.placement_ptr(&plan, p);
            if gpu_config.dest == DestLayout::Packed {
                assert_eq!(
                    device_ptr % PACKED_ALIGN_BYTES,
                    0,
                    "packed tensor {p} is misaligned"
                );
            }
            GpuTensor {
                info: table.tensors[pl.tensor].clone(),
                device_ptr,
                ordinal: g.ordinal(),
            }
        })
        .collect();
    tensors.extend(plan.empty.iter().map(|&i| GpuTensor {
        info: table.tensors[i].clone(),
        device_ptr: 0,
        ordinal: g.ordinal(),
    }));
    if let Some(f) = on_tensor {
        tensors[plan.placements.len()..].iter().for_each(f);
    }
    let on_placement = |p: usize| {
        if let Some(f) = on_tensor {
            f(&tensors[p]);
        }
    };

    let cufile = cufile_status();
    let (chosen, path_reason) = match gpu_config.path {
        GpuPath::Ring => (GpuPath::Ring, "ring asked for".to_string()),
        GpuPath::Mapped => (GpuPath::Mapped, "page-cache mapping asked for".to_string()),
        GpuPath::Cufile => (
            GpuPath::Cufile,
            format!("cuFile asked for; {}", cufile.summary),
        ),
        GpuPath::Auto if !(cufile.library && cufile.nvidia_fs) => {
            (GpuPath::Ring, format!("ring: {}", cufile.summary))
        }
        GpuPath::Auto if gpu_config.dest != DestLayout::Regions => (
            GpuPath::Ring,
            "ring: cuFile needs the regions layout".into(),
        ),
        GpuPath::Auto => {
            let cached = cached_fraction(&plan);
            if cached > 0.5 {
                (GpuPath::Ring, format!("ring: {:.0}% of the bytes are in the page cache, buffered reads beat GPUDirect there", cached * 100.0))
            } else {
                (
                    GpuPath::Cufile,
                    format!(
                        "cuFile: nvidia-fs loaded and {:.0}% of the bytes cached",
                        cached * 100.0
                    ),
                )
            }
        }
    };
    tracing::debug!(
        asked = %gpu_config.path.name(),
        path = %chosen.name(),
        reason = path_reason.as_str(),
        "GPU path"
    );
    if gpu_config.path == GpuPath::Cufile && cufile.library && !cufile.nvidia_fs {
        // Asked for by name, so say what it costs: compatibility mode is a slower ring.
        tracing::warn!("cuFile asked for, but nvidia-fs is not loaded: it runs in compatibility mode (not direct), slower than --gpu-path ring");
    }
    let mut chosen = chosen;
    let mut path_reason = path_reason;
    let mut setup_seconds = start.elapsed().as_secs_f64();
    let tracker = hoist_io::CompletionTracker::new(&plan);
    let finish = |chunk: usize| tracker.chunk_done(&plan.chunks[chunk], &on_placement);
    let chunk_load = ChunkLoad {
        gpu: &g,
        plan: &plan,
        dest: &dest,
        threads: engine.threads,
        finish: &finish,
    };
    let mut result = None;
    if chosen == GpuPath::Mapped {
        if !mapped::supported(&g) {
            return Err(CudaError::Config(format!(
                "{} cannot DMA from read-only host registrations; use --gpu-path ring",
                g.name()
            )));
        }
        let t = Instant::now();
        let bytes = mapped::load(&chunk_load)?;
        result = Some((
            single_method_report(
                "page-cache-mapped",
                bytes,
                t,
                engine.cache,
                true,
                "GPU path mapped reads through the page cache",
            ),
            "mapped",
            0,
            0,
        ));
    } else if chosen == GpuPath::Cufile {
        let t = Instant::now();
        match cufile::load(&chunk_load) {
            Ok(bytes) => {
                let method = if cufile.nvidia_fs {
                    "cufile-direct"
                } else {
                    "cufile-compat"
                };
                let report = single_method_report(
                    method,
                    bytes,
                    t,
                    engine.cache,
                    false,
                    "GPU path cufile reads with O_DIRECT",
                );
                result = Some((report, method, 0, 0));
            }
            // `auto` chose cuFile and cuFile refused before reading anything: take the ring.
            Err(CudaError::Cufile { what, reason }) if gpu_config.path == GpuPath::Auto => {
                tracing::info!(what = %what, reason = reason.as_str(), "cuFile refused; falling back to the ring");
                chosen = GpuPath::Ring;
                path_reason = format!("ring: cuFile failed to {what} ({reason})");
            }
            Err(e) => return Err(e),
        }
    }
    let mut ring_reused = false;
    let (io, path, ring_bytes, ring_slots) = match result {
        Some(r) => {
            g.synchronize()?;
            r
        }
        None => {
            let request = RingRequest::new(
                &plan,
                gpu_config.ring_bytes,
                gpu_config.streams,
                gpu_config.pinned,
                gpu_config.fixed_buffers,
            )?;
            let loader = PinnedLoader::acquire(&g, request)?;
            ring_reused = loader.reused();
            setup_seconds = start.elapsed().as_secs_f64();
            tracing::debug!(
                ring_bytes = loader.ring_bytes(),
                slots = loader.slots(),
                slot_bytes = plan.config.chunk_bytes,
                streams = gpu_config.streams,
                pinned = %gpu_config.pinned.name(),
                reused = ring_reused,
                setup_seconds,
                "pinned staging ring ready"
            );
            let (io, done) = loader.fill(&plan, &dest, engine, &on_placement)?;
            // Only this load's copies, not all work on a context other users may share.
            done.synchronize()?;
            (io, "ring", loader.ring_bytes(), loader.slots())
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    let (free_after, _) = g.mem_info()?;
    tracing::debug!(
        path = %path,
        tensor_bytes = plan.tensor_bytes(),
        seconds,
        setup_seconds,
        context_seconds,
        gbps = plan.tensor_bytes() as f64 / seconds.max(1e-9) / 1e9,
        methods = io.methods_summary(),
        "GPU load finished"
    );
    let report = GpuLoadReport {
        io,
        path,
        path_reason,
        device: g.name().to_string(),
        ordinal: g.ordinal(),
        tensor_bytes: plan.tensor_bytes(),
        seconds,
        setup_seconds,
        context_seconds,
        gpu_allocated_bytes: dest.allocated_bytes(),
        gpu_used_bytes: free_before.saturating_sub(free_after),
        dest: gpu_config.dest,
        ring_bytes,
        ring_slots,
        ring_reused,
        slot_bytes: plan.config.chunk_bytes,
        streams: if chosen == GpuPath::Ring {
            gpu_config.streams
        } else {
            0
        },
        pinned: if chosen == GpuPath::Ring {
            gpu_config.pinned.name()
        } else {
            "none"
        },
    };
    Ok((GpuTensors::new(g, dest, tensors), report))
}
