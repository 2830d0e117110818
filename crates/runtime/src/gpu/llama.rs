//! The Llama family on the GPU (Llama 2/3/3.1, Mistral, Qwen2, Qwen3): one decoder block whose
//! differences are flags of [`ModelConfig`], as in the CPU reference ([`crate::cpu::CpuModel`]).
//!
//! A forward pass over `n` tokens takes one of two shapes:
//! - `n == 1` (decode): fused GEMV kernels read every weight once (q/k/v in one launch, gate and
//!   up with SwiGLU in one, o and down adding into the residual), attention by our kernel;
//!   several sequences' tokens decode together as the rows of one step (`batch.rs`);
//! - `n > 1` (prefill): cuBLAS GEMMs on inputs rounded to the weights' type, attention through
//!   cuBLAS with a causal softmax between, in chunks of at most [`MAX_CHUNK_TOKENS`].

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use hoist_cuda::{DevSlice, DeviceBuf, Gpu, GpuTensors, Stream};
use hoist_format::TensorTable;
use hoist_io::PlanConfig;

use super::blas::Blas;
use super::layers::{Act, Mat, Ops};
use super::module::{default_cache_dir, Kernels};
use super::options::{DecodeGemv, GpuOptions};
use super::GpuError;
use crate::config::{ModelConfig, RopeStyle};
use crate::cpu::model::open_checkpoint;
use crate::generate::LogitsModel;
use crate::placement::LayerPlan;
use crate::weights::WeightMap;
use crate::RuntimeError;
use load::{check_dtypes, Builder};
use weights::LayerStore;

mod batch;
mod forward;
mod graph;
mod greedy;
mod host_ffn;
mod load;
mod moe;
mod plan;
mod session;
mod stream;
mod tier;
mod weights;

pub use session::GpuSession;

/// Most tokens one prefill step processes; longer prompts run in chunks of this size.
pub const MAX_CHUNK_TOKENS: usize = 512;
/// Longest context a session holds (positions).
pub const MAX_CONTEXT: usize = 1 << 30;
/// Most device memory the attention score tiles of a session take.
const SCORES_BUDGET_BYTES: usize = 256 << 20;

/// What loading a model took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadStats {
    /// Device name.
    pub device: String,
    /// Seconds opening the device context.
    pub context_seconds: f64,
    /// Seconds compiling (or loading cached) kernels and creating the cuBLAS handle.
    pub kernel_seconds: f64,
    /// Whether the kernels came from the disk cache.
    pub kernels_cached: bool,
    /// The architecture they were compiled for, e.g. `sm_90`.
    pub kernel_arch: String,
    /// Seconds loading weights (hoist's GPU path).
    pub weights_seconds: f64,
    /// Weight bytes loaded.
    pub weight_bytes: u64,
    /// Where each layer went: resident, or streamed from pinned host memory or the file.
    pub placement: LayerPlan,
    /// GPU bytes the budget kept for one session (KV cache, work buffers) and a margin.
    pub session_reserve_bytes: u64,
    /// Streamed layers whose decode computes the feed-forward on the host (hybrid layers).
    pub host_ffn_layers: usize,
    /// The host's matrix-vector bandwidth measured at load, GB/s (`None`: not measured).
    pub host_gbps: Option<f64>,
    /// Bytes a decode step copies to the GPU: the streamed layers, less hybrid layers' FFN.
    pub decode_streamed_bytes_per_token: u64,
    /// Seconds of the whole load.
    pub seconds: f64,
}

/// A Llama-family model on a GPU.
pub struct GpuModel {
    config: ModelConfig,
    /// Decode products through cuBLAS instead of our GEMV kernels (a yardstick).
    blas_decode: bool,
    /// Decode's q/k/v GEMV applies the rotary embedding and stores k and v into the cache
    /// itself, where no q/k norm comes between ([`super::GpuTuning::fused_rope`]).
    fused_rope: bool,
    /// Prefill batches a sparse layer's experts ([`super::GpuTuning::moe_batched`]).
    moe_batched: bool,
    /// Sessions of several sequences decode in one batched step ([`super::GpuTuning::batch_decode`]).
    batch_decode: bool,
    /// Sessions replay captured decode graphs ([`super::GpuTuning::graphs`], off when
    /// profiling: each profiled launch synchronizes, which a graph cannot hold).
    graphs: bool,
    stats: LoadStats,
    act: Act,
    embed: Mat,
    output: Mat,
    output_norm: DevSlice<f32>,
    /// The decoder layers, asked for one at a time by the forward pass.
    layers: LayerStore,
    inv_freq: DeviceBuf,
    /// f32 copies of the small tensors (norms, biases), owned here.
    _small: Vec<DeviceBuf>,
    // Drop order: cuBLAS and kernels before the stream, the weights last.
    blas: Blas,
    kernels: Kernels,
    stream: Stream,
    weights: GpuTensors,
    gpu: Arc<Gpu>,
}

impl GpuModel {
    /// Opens a checkpoint (GGUF file or Hugging Face directory) and loads it onto the GPU.
    pub fn load(path: &Path, options: &GpuOptions) -> Result<GpuModel, RuntimeError> {
        crate::cuda_available().map_err(GpuError::NoGpu)?;
        let (table, config) = open_checkpoint(path)?;
        GpuModel::from_table(&table, config, options)
    }

    /// Loads the tensors `config` implies from `table` onto the GPU, placed as
    /// `options.placement` says: the plan is made (and a budget too small for it refused)
    /// before any weight is read; streamed layers are read into pinned host memory or left in
    /// the file, as the host budget allows.
    pub fn from_table(
        table: &TensorTable,
        config: ModelConfig,
        options: &GpuOptions,
    ) -> Result<GpuModel, RuntimeError> {
        if config.linear.is_some() {
            // Refused before the device is touched: no GPU kernels for DeltaNet layers.
            let why = "the GPU runtime does not run Qwen3-Next/Qwen3.5 linear-attention layers yet; --device cpu runs them";
            return Err(GpuError::Unsupported(why.into()).into());
        }
        if config.moe.is_some() && options.placement.names_streamed() {
            // Refused before the device is touched.
            let why = "the GPU runtime does not stream a mixture-of-experts model's layers yet: every layer must be resident (drop the streamed placement), or run it with --device cpu";
            return Err(GpuError::Unsupported(why.into()).into());
        }
        let start = Instant::now();
        let tuning = options.tuning;
        tuning.validate()?;
        options
            .placement
            .check(config.num_layers)
            .map_err(GpuError::from)?;
        let map = WeightMap::resolve(table, &config)?;
        if let Some(what) = map.mlx_only(table) {
            // Refused before the device is touched: no kernels read MLX's packing.
            let why = format!(
                "{}: {what}; the GPU runtime does not read mlx-lm checkpoints; --device cpu runs it (unpacked to f32 at load)",
                table.root.display()
            );
            return Err(GpuError::Unsupported(why).into());
        }
        check_dtypes(table, &map)?;
        let gpu = hoist_cuda::open_device(options.ordinal).map_err(GpuError::from)?;
        let context_seconds = start.elapsed().as_secs_f64();

        let t = Instant::now();
        let cache = options.kernel_cache.clone().or_else(default_cache_dir);
        let kernels = Kernels::load(&gpu, cache.as_deref(), &tuning)?;
        let stream = Stream::new(&gpu).map_err(GpuError::from)?;
        let blas = Blas::new(&gpu, &stream).map_err(GpuError::from)?;
        let kernel_seconds = t.elapsed().as_secs_f64();

        // Which layers stay resident and which are streamed, within the budgets; checked
        // against free memory before anything is allocated.
        let (free, _) = gpu.mem_info().map_err(GpuError::from)?;
        let sizing = plan::plan(table, &map, &config, options, free)?;
        if sizing.plan.streams() {
            tracing::info!(plan = %sizing.plan.summary(), "layers streamed");
        }
        let streamed: std::collections::HashSet<usize> =
            sizing.streamed_tensors.iter().copied().collect();

        // Every tensor is loaded onto the GPU as it is in the file, except the streamed
        // layers' matrices: those are the streamer's.
        let selection: Vec<usize> = map
            .selection()
            .into_iter()
            .filter(|i| !streamed.contains(i))
            .collect();
        let weight_bytes: u64 = selection.iter().map(|&i| table.tensors[i].len).sum();
        let t = Instant::now();
        let (weights, _report) = hoist_cuda::load_to_gpu(
            table,
            &selection,
            PlanConfig {
                chunk_bytes: hoist_cuda::DEFAULT_GPU_CHUNK_BYTES,
                ..Default::default()
            },
            &hoist_io::EngineConfig {
                progress: options.progress.clone(),
                cache: options.cache,
                ..hoist_cuda::recommended_engine_config()
            },
            &hoist_cuda::GpuConfig {
                ordinal: options.ordinal,
                ..Default::default()
            },
            None,
        )
        .map_err(GpuError::from)?;
        if sizing.plan.streams() {
            // The loader's pinned ring would sit beside the pinned tier: the host budget is
            // the streamer's now.
            hoist_cuda::release_pinned_loaders();
        }
        let streamer = match sizing.plan.streams() {
            true => Some(stream::Streamer::new(
                &gpu,
                table,
                &sizing.plan,
                sizing.streamed_mats,
                options.progress.as_deref(),
                tuning.host_ffn,
                (config.hidden_size, config.intermediate_size),
            )?),
            false => None,
        };
        let weights_seconds = t.elapsed().as_secs_f64();

        let streamed_views = match &streamer {
            Some(s) => s.views()?,
            None => Vec::new(),
        };
        let mut built = Builder::new(
            (&config, table, &map),
            &weights,
            Ops {
                k: &kernels,
                blas: &blas,
                stream: &stream,
            },
            &gpu,
        )?
        .with_streamed(table, streamed_views)
        .build(tuning.q4_tiles)?;
        let mut streamer = streamer;
        if let (Some(s), true) = (streamer.as_mut(), tuning.q4_tiles) {
            load::tile_pinned_layers(s, &mut built.layers, &kernels, &blas, &stream, &gpu)?;
        }
        stream.synchronize().map_err(GpuError::from)?;
        let layers = LayerStore::new(built.layers, streamer);
        let direct = layers
            .mats()
            .all(|m| m.wtype.elem() == Some(built.act.elem()));
        let stats = LoadStats {
            device: gpu.name().to_string(),
            context_seconds,
            kernel_seconds,
            kernels_cached: kernels.cached,
            kernel_arch: kernels.arch.clone(),
            weights_seconds,
            weight_bytes,
            host_ffn_layers: layers.streamer().map_or(0, |s| s.host_ffn_layers()),
            host_gbps: layers.streamer().and_then(|s| s.host_gbps()),
            decode_streamed_bytes_per_token: layers
                .streamer()
                .map_or(0, |s| s.decode_bytes_per_step()),
            placement: sizing.plan,
            session_reserve_bytes: sizing.reserve_bytes,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok(GpuModel {
            blas_decode: direct && tuning.decode_gemv == DecodeGemv::Cublas,
            fused_rope: tuning.fused_rope,
            moe_batched: tuning.moe_batched,
            batch_decode: tuning.batch_decode,
            graphs: tuning.graphs && !tuning.profile,
            act: built.act,
            embed: built.embed,
            output: built.output,
            output_norm: built.output_norm,
            layers,
            inv_freq: built.inv_freq,
            _small: built.small,
            config,
            stats,
            blas,
            kernels,
            stream,
            weights,
            gpu,
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// What loading took.
    pub fn stats(&self) -> &LoadStats {
        &self.stats
    }

    /// Device bytes holding the weights.
    pub fn weight_allocation_bytes(&self) -> u64 {
        self.weights.allocated_bytes()
    }

    /// Bytes of weights one decoded token reads: every matrix once (the embedding only for its
    /// row, unless it is also the output projection); of a sparse layer's experts, the `k` a
    /// token goes through (at the experts' mean size).
    pub fn weight_bytes_per_token(&self) -> u64 {
        (self.layers.bytes_per_token() + self.output.bytes()) as u64
    }

    /// A fresh sequence with a KV cache of `context` positions; a clear error when it does not
    /// fit in free GPU memory.
    pub fn session(&self, context: usize) -> Result<GpuSession<'_>, RuntimeError> {
        GpuSession::new(self, context)
    }

    fn ops(&self) -> Ops<'_> {
        Ops {
            k: &self.kernels,
            blas: &self.blas,
            stream: &self.stream,
        }
    }

    fn rope_interleaved(&self) -> bool {
        self.config.rope_style == RopeStyle::Interleaved
    }
}

pub(crate) fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data slices (f32, i32) viewed as their bytes; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

impl GpuModel {
    /// Waits for all queued work.
    pub(crate) fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream.synchronize()?)
    }

    /// The device.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The compute stream.
    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Streamed layers' copies on (the default) or off, to time compute alone (the benchmark;
    /// off, steps compute on whatever the slots hold). No-op when every layer is resident.
    pub(crate) fn set_stream_copies(&self, on: bool) {
        if let Some(s) = self.layers.streamer() {
            s.set_copies(on);
        }
    }

    /// The streaming tiers' bandwidths measured now, GB/s: pinned host to GPU copies, and file
    /// reads (each `None` when no layer uses that tier). No step may be in flight.
    pub(crate) fn measure_stream_tiers(&self) -> Result<(Option<f64>, Option<f64>), GpuError> {
        match self.layers.streamer() {
            Some(s) => Ok((s.measure_h2d_gbps(8)?, s.measure_file_gbps()?)),
            None => Ok((None, None)),
        }
    }

    /// `(rows, cols)` of every matrix a prefill multiplies, per layer, for FLOP counts: of a
    /// sparse layer's experts, `k` (each token goes through `k` of them).
    pub(crate) fn layer_shapes(&self) -> Vec<(usize, usize)> {
        let mut shapes: Vec<(usize, usize)> =
            self.layers.mats().map(|m| (m.rows, m.cols)).collect();
        for l in 0..self.layers.len() {
            if let weights::Ffn::Moe(f) = &self.layers.layer(l).ffn {
                let per_token = f.experts[..f.top_k].iter().flatten();
                shapes.extend(per_token.map(|m| (m.rows, m.cols)));
            }
        }
        shapes
    }
}

impl LogitsModel for GpuSession<'_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        self.forward(tokens, false)
    }

    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        Some(GpuSession::decode_greedy(self, first, max_feeds, next))
    }
}
