//! The Llama family on the GPU (Llama 2/3/3.1, Mistral, Qwen2, Qwen3): one decoder block whose
//! differences are flags of [`ModelConfig`], as in the CPU reference ([`crate::cpu::CpuModel`]).
//!
//! A forward pass over `n` tokens takes one of two shapes:
//! - `n == 1` (decode): fused GEMV kernels read every weight once (q/k/v in one launch, gate and
//!   up with SwiGLU in one, o and down adding into the residual), attention by our kernel;
//! - `n > 1` (prefill): cuBLAS GEMMs on inputs rounded to the weights' type, attention through
//!   cuBLAS with a causal softmax between, in chunks of at most [`MAX_CHUNK_TOKENS`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys;
use hoist_cuda::{DeviceBuf, Gpu, GpuTensors, Stream};
use hoist_format::TensorTable;
use hoist_io::PlanConfig;

use super::blas::Blas;
use super::layers::{rope_fusable, Act, AttnDims, FusedRope, GemvOut, Mat, Ops, WType};
use super::module::{default_cache_dir, Kernels};
use super::GpuError;
use crate::config::{ModelConfig, RopeStyle};
use crate::cpu::model::open_checkpoint;
use crate::cpu::ForwardError;
use crate::generate::LogitsModel;
use crate::weights::{LayerTensor, WeightId, WeightMap};
use crate::RuntimeError;

mod greedy;

/// Most tokens one prefill step processes; longer prompts run in chunks of this size.
pub const MAX_CHUNK_TOKENS: usize = 512;
/// Longest context a session holds (positions).
pub const MAX_CONTEXT: usize = 1 << 30;
/// Most device memory the attention score tiles of a session take.
const SCORES_BUDGET_BYTES: usize = 256 << 20;

/// How to run a model on the GPU.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Device ordinal (`cuda:N`).
    pub ordinal: usize,
    /// Where compiled kernels are cached; `None`: `$HOIST_KERNEL_CACHE`, else
    /// `$XDG_CACHE_HOME/hoist/kernels`, else `~/.cache/hoist/kernels`.
    pub kernel_cache: Option<PathBuf>,
    /// Counts weight bytes as they are read, for a progress display (the read engine's counter,
    /// [`hoist_io::EngineConfig::progress`]); `None`: not counted.
    pub progress: Option<Arc<AtomicU64>>,
}

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
    /// Seconds of the whole load.
    pub seconds: f64,
}

/// One decoder block's weights on the device.
struct Layer {
    attn_norm: u64,
    q: Mat,
    k: Mat,
    v: Mat,
    o: Mat,
    /// f32 q, k, v biases (Qwen2); zeros when absent.
    qkv_bias: [u64; 3],
    /// f32 per-head q and k norms (Qwen3).
    qk_norm: Option<[u64; 2]>,
    ffn_norm: u64,
    gate: Mat,
    up: Mat,
    down: Mat,
}

impl Layer {
    fn mats(&self) -> [&Mat; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// A Llama-family model resident on a GPU.
pub struct GpuModel {
    config: ModelConfig,
    /// Decode products through cuBLAS instead of our GEMV kernels (a yardstick).
    blas_decode: bool,
    /// Decode's q/k/v GEMV applies the rotary embedding and stores k and v into the cache
    /// itself, where no q/k norm comes between (`HOIST_NO_FUSED_ROPE` turns it off).
    fused_rope: bool,
    stats: LoadStats,
    act: Act,
    embed: Mat,
    output: Mat,
    output_norm: u64,
    layers: Vec<Layer>,
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

/// The weight types the kernels read ([`WType::of`]), for messages.
const GPU_DTYPES: &str = "F32, F16, BF16, Q8_0 and Q4_0";

fn unsupported_dtype(name: &str, dtype: hoist_format::DType) -> GpuError {
    GpuError::Unsupported(format!(
        "tensor {name} is {dtype}; the GPU runtime reads {GPU_DTYPES} weights (--device cpu reads more)"
    ))
}

/// Refuses, before any device work, a model with tensors of a type the kernels do not read
/// (all of them are types the CPU reference reads: [`WeightMap::resolve`] checked that):
/// names the first such tensor and every such type.
fn check_dtypes(table: &TensorTable, map: &WeightMap) -> Result<(), GpuError> {
    let mut first = None;
    let mut types: Vec<&str> = Vec::new();
    for info in map.selection().into_iter().map(|i| &table.tensors[i]) {
        if WType::of(info.dtype).is_none() {
            first.get_or_insert(info);
            if !types.contains(&info.dtype.name()) {
                types.push(info.dtype.name());
            }
        }
    }
    let Some(info) = first else { return Ok(()) };
    let others = match types.as_slice() {
        [_, rest @ ..] if !rest.is_empty() => {
            format!(" (the model also has {} tensors)", rest.join(", "))
        }
        _ => String::new(),
    };
    Err(GpuError::Unsupported(format!(
        "{}: tensor '{}' has dtype {}{others}, which the GPU runtime has no kernels for (it reads {GPU_DTYPES}); run this model with --device cpu (the f32 CPU reference: slow, for small models)",
        table.root.display(),
        info.name,
        info.dtype,
    )))
}

impl GpuModel {
    /// Opens a checkpoint (GGUF file or Hugging Face directory) and loads it onto the GPU.
    pub fn load(path: &Path, options: &GpuOptions) -> Result<GpuModel, RuntimeError> {
        crate::cuda_available().map_err(GpuError::NoGpu)?;
        let (table, config) = open_checkpoint(path)?;
        GpuModel::from_table(&table, config, options)
    }

    /// Loads the tensors `config` implies from `table` onto the GPU.
    pub fn from_table(
        table: &TensorTable,
        config: ModelConfig,
        options: &GpuOptions,
    ) -> Result<GpuModel, RuntimeError> {
        let start = Instant::now();
        let map = WeightMap::resolve(table, &config)?;
        check_dtypes(table, &map)?;
        let gpu = hoist_cuda::open_device(options.ordinal).map_err(GpuError::from)?;
        let context_seconds = start.elapsed().as_secs_f64();

        let t = Instant::now();
        let cache = options.kernel_cache.clone().or_else(default_cache_dir);
        let mut kernels = Kernels::load(&gpu, cache.as_deref())?;
        let stream = Stream::new(&gpu).map_err(GpuError::from)?;
        let blas = Blas::new(&gpu, &stream)?;
        let kernel_seconds = t.elapsed().as_secs_f64();

        let selection = map.selection();
        let weight_bytes: u64 = selection.iter().map(|&i| table.tensors[i].len).sum();
        let (free, _) = gpu.mem_info().map_err(GpuError::from)?;
        if weight_bytes > free {
            return Err(GpuError::Unsupported(format!(
                "the weights need {:.2} GiB of GPU memory but {} has {:.2} GiB free; free GPU memory or use a smaller (or more quantized) model",
                weight_bytes as f64 / (1u64 << 30) as f64,
                gpu.name(),
                free as f64 / (1u64 << 30) as f64
            ))
            .into());
        }
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
                ..hoist_cuda::recommended_engine_config()
            },
            &hoist_cuda::GpuConfig {
                ordinal: options.ordinal,
                ..Default::default()
            },
            None,
        )
        .map_err(GpuError::from)?;
        let weights_seconds = t.elapsed().as_secs_f64();

        let built =
            Builder::new(&config, &map, &weights, &kernels, &blas, &stream, &gpu)?.build()?;
        stream.synchronize().map_err(GpuError::from)?;
        let direct = built
            .layers
            .iter()
            .flat_map(|l| l.mats())
            .all(|m| m.wtype.elem() == Some(built.act.elem()));
        // Quantized GEMVs that stage their whole input in shared memory (Q8_0, untiled Q4_0)
        // run without programmatic dependent launch (see `disable_pdl`); the tiled ones stage
        // a few KiB a warp and gain from it (H200: 388 against 382 tok/s).
        let staged = built
            .layers
            .iter()
            .flat_map(|l| l.mats())
            .any(|m| matches!(m.wtype, WType::Q8_0 | WType::Q4_0));
        // `HOIST_QUANTIZED_PDL` keeps it on, for comparison (`bench/gpu/run.sh decode-switches`).
        if staged && std::env::var_os("HOIST_QUANTIZED_PDL").is_none() {
            kernels.disable_pdl();
        }
        let stats = LoadStats {
            device: gpu.name().to_string(),
            context_seconds,
            kernel_seconds,
            kernels_cached: kernels.cached,
            kernel_arch: kernels.arch.clone(),
            weights_seconds,
            weight_bytes,
            seconds: start.elapsed().as_secs_f64(),
        };
        let blas_decode = direct && std::env::var("HOIST_DECODE_GEMV").is_ok_and(|v| v == "cublas");
        Ok(GpuModel {
            blas_decode,
            fused_rope: std::env::var_os("HOIST_NO_FUSED_ROPE").is_none(),
            act: built.act,
            embed: built.embed,
            output: built.output,
            output_norm: built.output_norm,
            layers: built.layers,
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
    /// row, unless it is also the output projection).
    pub fn weight_bytes_per_token(&self) -> u64 {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| l.mats().iter().map(|m| m.bytes()).sum::<usize>())
            .sum();
        (layers + self.output.bytes()) as u64
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

/// What [`Builder`] makes of the loaded tensors.
struct Built {
    act: Act,
    embed: Mat,
    output: Mat,
    output_norm: u64,
    layers: Vec<Layer>,
    inv_freq: DeviceBuf,
    small: Vec<DeviceBuf>,
}

/// Turns loaded tensors into matrices (views) and f32 vectors (converted copies).
struct Builder<'a> {
    config: &'a ModelConfig,
    map: &'a WeightMap,
    weights: &'a GpuTensors,
    by_name: HashMap<&'a str, usize>,
    ops: Ops<'a>,
    gpu: &'a Arc<Gpu>,
    small: Vec<DeviceBuf>,
}

impl<'a> Builder<'a> {
    fn new(
        config: &'a ModelConfig,
        map: &'a WeightMap,
        weights: &'a GpuTensors,
        kernels: &'a Kernels,
        blas: &'a Blas,
        stream: &'a Stream,
        gpu: &'a Arc<Gpu>,
    ) -> Result<Builder<'a>, GpuError> {
        let by_name = weights
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.info.name.as_str(), i))
            .collect();
        Ok(Builder {
            config,
            map,
            weights,
            by_name,
            ops: Ops {
                k: kernels,
                blas,
                stream,
            },
            gpu,
            small: Vec::new(),
        })
    }

    fn tensor(&self, id: WeightId) -> Result<&'a hoist_cuda::GpuTensor, GpuError> {
        let name = self.map.source.name(id);
        self.by_name
            .get(name.as_str())
            .map(|&i| &self.weights.tensors()[i])
            .ok_or_else(|| GpuError::Unsupported(format!("tensor {name} was not loaded")))
    }

    fn mat(&self, id: WeightId, rows: usize, cols: usize) -> Result<Mat, GpuError> {
        let t = self.tensor(id)?;
        let wtype =
            WType::of(t.info.dtype).ok_or_else(|| unsupported_dtype(&t.info.name, t.info.dtype))?;
        if matches!(wtype, WType::Q8_0 | WType::Q4_0) && cols % 32 != 0 {
            return Err(GpuError::Unsupported(format!(
                "tensor {} is quantized with rows of {cols} values, not a multiple of 32",
                t.info.name
            )));
        }
        if t.info.elements() != (rows * cols) as u64
            || wtype.bytes(rows * cols) as u64 != t.info.len
        {
            return Err(GpuError::Unsupported(format!(
                "tensor {} has shape {:?} ({} bytes), expected [{rows}, {cols}] of {wtype:?}",
                t.info.name, t.info.shape, t.info.len
            )));
        }
        Ok(Mat {
            ptr: t.device_ptr,
            wtype,
            rows,
            cols,
        })
    }

    /// An f32 copy of a small tensor of `len` values.
    fn vector(&mut self, id: WeightId, len: usize) -> Result<u64, GpuError> {
        let t = self.tensor(id)?;
        let wtype =
            WType::of(t.info.dtype).ok_or_else(|| unsupported_dtype(&t.info.name, t.info.dtype))?;
        if t.info.elements() != len as u64 {
            return Err(GpuError::Unsupported(format!(
                "tensor {} has {} values, expected {len}",
                t.info.name,
                t.info.elements()
            )));
        }
        let buf = DeviceBuf::new(self.gpu, len * 4)?;
        // SAFETY: the source holds `len` values of `wtype` (checked), the buffer len f32.
        unsafe {
            self.ops
                .convert(t.device_ptr, wtype, buf.ptr(), Act::F32, len)?
        };
        let p = buf.ptr();
        self.small.push(buf);
        Ok(p)
    }

    fn build(mut self) -> Result<Built, GpuError> {
        let c = self.config;
        let (h, qd, kvd, inter) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let embed = self.mat(WeightId::Embedding, c.vocab_size, h)?;
        let mut output = if c.tie_word_embeddings {
            embed
        } else {
            self.mat(WeightId::Output, c.vocab_size, h)?
        };
        let output_norm = self.vector(WeightId::OutputNorm, h)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for n in 0..c.num_layers {
            use LayerTensor::*;
            let id = |t| WeightId::Layer(n, t);
            let qkv_bias = if c.attention_bias {
                [
                    self.vector(id(QBias), qd)?,
                    self.vector(id(KBias), kvd)?,
                    self.vector(id(VBias), kvd)?,
                ]
            } else {
                [0; 3]
            };
            let qk_norm = if c.qk_norm {
                Some([
                    self.vector(id(QNorm), c.head_dim)?,
                    self.vector(id(KNorm), c.head_dim)?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: self.vector(id(AttnNorm), h)?,
                q: self.mat(id(Q), qd, h)?,
                k: self.mat(id(K), kvd, h)?,
                v: self.mat(id(V), kvd, h)?,
                o: self.mat(id(O), h, qd)?,
                qkv_bias,
                qk_norm,
                ffn_norm: self.vector(id(FfnNorm), h)?,
                gate: self.mat(id(Gate), inter, h)?,
                up: self.mat(id(Up), inter, h)?,
                down: self.mat(id(Down), h, inter)?,
            });
        }
        self.tile_q4_0(&mut layers, &mut output, c.tie_word_embeddings)?;
        // GEMM inputs are rounded to the weights' float type: bf16 if any matrix is bf16, f16
        // for f16 and quantized weights (Q8_0/Q4_0 are dequantized to f16 for cuBLAS), f32
        // only when every matrix is f32.
        let types: Vec<WType> = layers
            .iter()
            .flat_map(|l| l.mats().map(|m| m.wtype))
            .chain([embed.wtype, output.wtype])
            .collect();
        let act = if types.contains(&WType::BF16) {
            Act::BF16
        } else if types.iter().all(|&t| t == WType::F32) {
            Act::F32
        } else {
            Act::F16
        };
        let inv_freq = self.inv_freqs()?;
        Ok(Built {
            act,
            embed,
            output,
            output_norm,
            layers,
            inv_freq,
            small: self.small,
        })
    }

    /// Repacks the Q4_0 matrices that can be into tiles for the tensor-core GEMVs (see
    /// kernels/q4_tiles.cu), in place through one scratch buffer: gate and up only together (one
    /// kernel reads both), the output matrix unless it is the embedding table (the embedding
    /// kernel reads the file's layout).
    /// `HOIST_NO_Q4_TILES` keeps the file's layout, for comparison.
    fn tile_q4_0(
        &self,
        layers: &mut [Layer],
        output: &mut Mat,
        tied: bool,
    ) -> Result<(), GpuError> {
        if std::env::var_os("HOIST_NO_Q4_TILES").is_some() {
            return Ok(());
        }
        let ops = &self.ops;
        let ok = |m: &Mat| super::q4_tiles::tileable(ops.k, m);
        let mut targets: Vec<&mut Mat> = Vec::new();
        for l in layers.iter_mut() {
            let pair = ok(&l.gate) && ok(&l.up);
            for m in [&mut l.q, &mut l.k, &mut l.v, &mut l.o, &mut l.down] {
                if ok(m) {
                    targets.push(m);
                }
            }
            if pair {
                targets.push(&mut l.gate);
                targets.push(&mut l.up);
            }
        }
        if !tied && ok(output) {
            targets.push(output);
        }
        let Some(most) = targets.iter().map(|m| m.bytes()).max() else {
            return Ok(());
        };
        let scratch = DeviceBuf::new(self.gpu, most)?;
        for m in targets {
            // SAFETY: m is a view of loaded weights of m.bytes() bytes, scratch holds the
            // largest; the stream is synchronized before scratch is freed.
            unsafe { ops.tile_q4_0(m, &scratch)? };
        }
        Ok(ops.stream.synchronize()?)
    }

    /// Rotary frequencies on the host (with Llama 3.1 scaling, or divided by the GGUF
    /// `rope_freqs.weight` factors), uploaded as f32.
    fn inv_freqs(&self) -> Result<DeviceBuf, GpuError> {
        let c = self.config;
        let mut freqs = crate::cpu::inv_freqs(c.head_dim, c.rope_theta, c.rope_scaling);
        if self.map.index(WeightId::RopeFreqs).is_some() {
            let t = self.tensor(WeightId::RopeFreqs)?;
            let i = self.by_name[t.info.name.as_str()];
            let bytes = self.weights.copy_to_host(i)?;
            let factors = crate::cpu::tensor_to_f32(&t.info, &bytes)
                .map_err(|e| GpuError::Unsupported(e.to_string()))?;
            if factors.len() != freqs.len() {
                return Err(GpuError::Unsupported(format!(
                    "{} has {} factors, expected head_dim/2 = {}",
                    t.info.name,
                    factors.len(),
                    freqs.len()
                )));
            }
            freqs.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        upload_f32(self.gpu, self.ops.stream, &freqs)
    }
}

/// A device buffer holding `values`.
fn upload_f32(gpu: &Arc<Gpu>, stream: &Stream, values: &[f32]) -> Result<DeviceBuf, GpuError> {
    let buf = DeviceBuf::new(gpu, values.len() * 4)?;
    buf.write_async(stream, bytes_of(values))?;
    stream.synchronize()?;
    Ok(buf)
}

pub(crate) fn bytes_of<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: plain-old-data slices (f32, i32) viewed as their bytes; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// One sequence on a [`GpuModel`]: its KV cache and work buffers.
pub struct GpuSession<'a> {
    model: &'a GpuModel,
    len: usize,
    capacity: usize,
    /// Tokens per forward step (prefill chunk).
    chunk: usize,
    /// Queries per attention score tile.
    tile: usize,
    bufs: Buffers,
    /// Host copy of the token ids of the current step, then its first position.
    ids: Vec<i32>,
    /// Whether decode steps replay a captured graph (`HOIST_NO_GRAPHS` turns it off).
    graphs: bool,
    /// The captured one-token step.
    graph: Option<Graph>,
    /// The captured one-token step followed by the device's arg-max ([`GpuSession::decode_greedy`]).
    greedy_graph: Option<Graph>,
    /// Pinned slots and events of [`GpuSession::decode_greedy`], made on its first use.
    greedy: Option<greedy::Slots>,
}

/// A captured and instantiated CUDA graph.
struct Graph {
    gpu: Arc<Gpu>,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

impl Graph {
    fn launch(&self, gpu: &Gpu, stream: &Stream) -> Result<(), GpuError> {
        gpu.make_current()?;
        // SAFETY: exec is live; it launches kernels on buffers the session owns.
        Ok(gpu.check("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(self.exec, stream.raw())
        })?)
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.gpu.make_current().is_ok() {
            // SAFETY: each destroyed once; launches complete before the session's buffers go
            // (forward waits for its logits).
            unsafe {
                sys::cuGraphExecDestroy(self.exec);
                sys::cuGraphDestroy(self.graph);
            }
        }
    }
}

/// The session's device buffers.
struct Buffers {
    ids: DeviceBuf,
    x: DeviceBuf,
    xn: DeviceBuf,
    /// GEMM inputs in the activation type (absent for f32 models, whose f32 buffers serve).
    xa: Option<DeviceBuf>,
    q: DeviceBuf,
    k: DeviceBuf,
    v: DeviceBuf,
    att: DeviceBuf,
    g: DeviceBuf,
    u: DeviceBuf,
    h: DeviceBuf,
    kcache: DeviceBuf,
    vcache: DeviceBuf,
    scores: DeviceBuf,
    /// q and the attention probabilities in the KV cache's type, for cuBLAS prefill attention
    /// (16-bit caches only).
    qa: Option<DeviceBuf>,
    probs: Option<DeviceBuf>,
    /// The attention kernel's merge counters (zeroed here, left zero by each step).
    counters: DeviceBuf,
    /// Conversion target for matrices not of the activation type (prefill only).
    scratch: Option<DeviceBuf>,
    /// Logits of one step: `chunk` rows when every position's logits were asked for.
    logits: DeviceBuf,
    logits_rows: usize,
}

impl<'a> GpuSession<'a> {
    fn new(model: &'a GpuModel, context: usize) -> Result<GpuSession<'a>, RuntimeError> {
        let c = &model.config;
        if context == 0 {
            return Err(
                GpuError::Unsupported("a context of 0 positions holds nothing".into()).into(),
            );
        }
        // Kernels index positions with 32-bit ints, and the sizes below must not overflow.
        if context > MAX_CONTEXT {
            return Err(GpuError::Unsupported(format!(
                "a context of {context} positions is more than the {MAX_CONTEXT} the runtime supports; ask for a shorter context (--context)"
            ))
            .into());
        }
        let chunk = context.min(MAX_CHUNK_TOKENS);
        let (h, qd, kvd, inter, vocab) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
            c.vocab_size,
        );
        let act_bytes = model.act.elem().bytes();
        // 16-bit models keep the KV cache in their type; cuBLAS prefill attention then reads
        // q and the probabilities in that type too (copies beside the f32 ones).
        let copies = if model.act == Act::F32 { 0 } else { act_bytes };
        let tile = (SCORES_BUDGET_BYTES / (c.num_heads * context * (4 + copies))).clamp(1, chunk);
        let widest = h.max(qd).max(inter);
        let scratch_values = model
            .layers
            .iter()
            .flat_map(|l| l.mats())
            .chain([&model.output])
            .filter(|m| m.wtype.elem() != Some(model.act.elem()))
            .map(|m| m.rows * m.cols)
            .max();
        let cache_bytes = c.num_layers * c.num_kv_heads * context * c.head_dim * act_bytes;
        // The attention kernel's scratch sizes depend on these alone.
        let attn = AttnDims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: context,
            window: 0,
            cache: model.act,
        };
        // Refused here rather than at the first decode step.
        model.ops().attention_smem(attn)?;
        let sizes = [
            (chunk + 1) * 4,
            chunk * h * 4,
            chunk * h * 4,
            if model.act == Act::F32 {
                0
            } else {
                chunk * widest * act_bytes
            },
            chunk * qd * 4,
            chunk * kvd * 4,
            chunk * kvd * 4,
            chunk * qd * 4,
            chunk * inter * 4,
            chunk * inter * 4,
            chunk * inter * 4,
            cache_bytes,
            cache_bytes,
            (c.num_heads * tile * context).max(Ops::attention_part_values(1, attn)) * 4,
            scratch_values.map_or(0, |v| v * act_bytes),
            chunk * vocab * 4,
            Ops::attention_counters(chunk, attn) * 4,
            chunk * qd * copies,
            c.num_heads * tile * context * copies,
        ];
        let needed: usize = sizes.iter().sum();
        let (free, _) = model.gpu.mem_info().map_err(GpuError::from)?;
        // Keep a little for cuBLAS's workspace and the driver.
        let reserve = 256usize << 20;
        if needed + reserve > free as usize {
            return Err(GpuError::ContextTooLarge {
                context,
                needed_bytes: (needed + reserve) as u64,
                needed_gib: (needed + reserve) as f64 / (1u64 << 30) as f64,
                free_bytes: free,
            }
            .into());
        }
        let gpu = &model.gpu;
        let alloc = |n: usize| DeviceBuf::new(gpu, n).map_err(GpuError::from);
        // Buffers some models do without (a size of 0).
        let alloc_some = |n: usize| (n > 0).then(|| alloc(n)).transpose();
        let bufs = Buffers {
            ids: alloc(sizes[0])?,
            x: alloc(sizes[1])?,
            xn: alloc(sizes[2])?,
            xa: alloc_some(sizes[3])?,
            q: alloc(sizes[4])?,
            k: alloc(sizes[5])?,
            v: alloc(sizes[6])?,
            att: alloc(sizes[7])?,
            g: alloc(sizes[8])?,
            u: alloc(sizes[9])?,
            h: alloc(sizes[10])?,
            kcache: alloc(sizes[11])?,
            vcache: alloc(sizes[12])?,
            scores: alloc(sizes[13])?,
            scratch: alloc_some(sizes[14])?,
            logits: alloc(sizes[15])?,
            logits_rows: chunk,
            counters: alloc(sizes[16])?,
            qa: alloc_some(sizes[17])?,
            probs: alloc_some(sizes[18])?,
        };
        bufs.counters
            .zero_async(&model.stream)
            .map_err(GpuError::from)?;
        model.stream.synchronize().map_err(GpuError::from)?;
        Ok(GpuSession {
            model,
            len: 0,
            capacity: context,
            chunk,
            tile,
            bufs,
            ids: Vec::with_capacity(chunk + 1),
            // Profiling synchronizes every launch, which a graph cannot hold.
            graphs: model.kernels.profile.is_none()
                && std::env::var_os("HOIST_NO_GRAPHS").is_none(),
            graph: None,
            greedy_graph: None,
            greedy: None,
        })
    }

    /// Runs `tokens` (after the positions already cached) and returns logits: `[n, vocab]` when
    /// `all_logits`, else the last position's `[vocab]`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError> {
        let c = &self.model.config;
        let vocab = c.vocab_size;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        if self.len + tokens.len() > self.capacity {
            return Err(ForwardError::ContextFull {
                needed: self.len + tokens.len(),
                capacity: self.capacity,
            }
            .into());
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ForwardError::Token { token, vocab }.into());
        }
        let mut out = Vec::with_capacity(if all_logits {
            tokens.len() * vocab
        } else {
            vocab
        });
        let chunks = tokens.len().div_ceil(self.chunk);
        for (i, piece) in tokens.chunks(self.chunk).enumerate() {
            let last = i + 1 == chunks;
            let rows = self.step(piece, all_logits, last)?;
            if rows > 0 {
                let start = out.len();
                out.resize(start + rows * vocab, 0.0);
                let dst = &mut out[start..];
                // SAFETY: f32 has no invalid bit patterns; the view covers exactly `dst`.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len() * 4)
                };
                self.bufs
                    .logits
                    .read(&self.model.stream, bytes)
                    .map_err(GpuError::from)?;
            }
        }
        Ok(out)
    }

    /// One forward step over at most `chunk` tokens; returns how many logit rows it left in
    /// the logits buffer (all of them, the last one, or none).
    fn step(&mut self, tokens: &[u32], all_logits: bool, last: bool) -> Result<usize, GpuError> {
        let m = self.model;
        let n = tokens.len();
        assert!(
            n > 0 && n <= self.chunk,
            "step of {n} tokens, chunk {}",
            self.chunk
        );
        assert!(self.len + n <= self.capacity, "context checked by forward");
        self.ids.clear();
        self.ids.extend(tokens.iter().map(|&t| t as i32));
        self.ids.push(self.len as i32);
        // The ids, then the first position (read by the kernels from device memory).
        self.bufs.ids.write_async(&m.stream, bytes_of(&self.ids))?;
        let rows = if n == 1 && self.graphs {
            // Decode: one captured graph replays every launch of the step (the same for every
            // position), which saves the launch gaps of ~260 small kernels per token.
            if self.graph.is_none() {
                self.graph = Some(self.capture(false)?);
            }
            if let Some(g) = &self.graph {
                g.launch(&m.gpu, &m.stream)?;
            }
            1
        } else {
            self.record(n, all_logits, last)?
        };
        self.len += n;
        Ok(rows)
    }

    /// Records the one-token step into a CUDA graph; with `greedy`, followed by the arg-max
    /// that feeds the next step ([`Ops::argmax_next`]).
    fn capture(&self, greedy: bool) -> Result<Graph, GpuError> {
        let m = self.model;
        let stream = m.stream.raw();
        m.gpu.make_current()?;
        // SAFETY: a live stream with nothing else capturing on this thread.
        m.gpu.check("cuStreamBeginCapture", unsafe {
            sys::cuStreamBeginCapture_v2(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })?;
        let recorded = if greedy {
            self.record_greedy()
        } else {
            self.record(1, false, true).map(drop)
        };
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above, whatever `record` did.
        let ended = unsafe { sys::cuStreamEndCapture(stream, &mut graph) };
        recorded?;
        m.gpu.check("cuStreamEndCapture", ended)?;
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: graph is the captured graph; out-pointer to a local.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) };
        if let Err(e) = m.gpu.check("cuGraphInstantiate", r) {
            // SAFETY: destroyed once, not instantiated.
            unsafe { sys::cuGraphDestroy(graph) };
            return Err(e.into());
        }
        Ok(Graph {
            gpu: m.gpu.clone(),
            graph,
            exec,
        })
    }

    /// Queues the kernels of one step over the `n` tokens already uploaded; returns the logit
    /// rows it leaves. Only kernel launches and cuBLAS calls: capturable when `n == 1`.
    fn record(&self, n: usize, all_logits: bool, last: bool) -> Result<usize, GpuError> {
        let m = self.model;
        let c = &m.config;
        let ops = m.ops();
        let b = &self.bufs;
        let (h, qd, kvd, inter) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let act = m.act;
        let eps = c.rms_norm_eps;
        let start = self.len;
        let start_at = b.ids.ptr() + (n * 4) as u64;
        let dims = AttnDims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: self.capacity,
            window: c.sliding_window.unwrap_or(0),
            cache: act,
        };
        // GEMM inputs: the activation-typed buffer, or the f32 buffer itself for f32 models.
        let xa = b.xa.as_ref().map_or(0, |x| x.ptr());
        let input = |f32_buf: u64| if xa == 0 { f32_buf } else { xa };
        let scratch = b.scratch.as_ref().map_or(0, |s| s.ptr());
        let layer_cache =
            (c.num_kv_heads * self.capacity * c.head_dim * dims.cache.elem().bytes()) as u64;
        let (qa, probs) = (
            b.qa.as_ref().map_or(0, |x| x.ptr()),
            b.probs.as_ref().map_or(0, |x| x.ptr()),
        );
        // Matrix products through cuBLAS: always for several tokens; for one only when asked
        // (`HOIST_DECODE_GEMV=cublas`, for comparison) and no weight needs converting.
        let gemm_path = n > 1 || m.blas_decode;
        // x += W·v for the step's tokens, `from` the f32 buffer of v (its copy in the activation
        // type is in `xa` when cuBLAS reads it).
        let add_to_residual = |w: &Mat, from: u64| -> Result<(), GpuError> {
            // SAFETY: as for the launches below.
            unsafe {
                if gemm_path {
                    ops.linear(w, input(from), act, n, b.x.ptr(), 1.0, scratch)
                } else {
                    ops.gemv(
                        &[GemvOut {
                            w,
                            y: b.x.ptr(),
                            bias: 0,
                        }],
                        from,
                        true,
                        None,
                    )
                }
            }
        };

        // SAFETY (every launch below): the session's buffers were sized in `new` for `chunk`
        // tokens and `capacity` positions, and n <= chunk, start + n <= capacity; the weights
        // are views checked against their shapes when the model was built.
        unsafe {
            ops.embed(&m.embed, b.ids.ptr(), n, b.x.ptr())?;
            for (l, layer) in m.layers.iter().enumerate() {
                let cache = [
                    b.kcache.ptr() + l as u64 * layer_cache,
                    b.vcache.ptr() + l as u64 * layer_cache,
                ];
                ops.rms_norm(b.x.ptr(), layer.attn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                // One token without q/k norms: the rotary embedding rides in the q/k/v GEMV.
                let rope_fits = rope_fusable([&layer.q, &layer.k, &layer.v], c.head_dim);
                let rope = (!gemm_path && m.fused_rope && layer.qk_norm.is_none() && rope_fits)
                    .then_some(FusedRope {
                        inv_freq: m.inv_freq.ptr(),
                        start_at,
                        cache,
                        dims,
                        interleaved: m.rope_interleaved(),
                    });
                if !gemm_path {
                    let outs = [
                        GemvOut {
                            w: &layer.q,
                            y: b.q.ptr(),
                            bias: layer.qkv_bias[0],
                        },
                        GemvOut {
                            w: &layer.k,
                            y: b.k.ptr(),
                            bias: layer.qkv_bias[1],
                        },
                        GemvOut {
                            w: &layer.v,
                            y: b.v.ptr(),
                            bias: layer.qkv_bias[2],
                        },
                    ];
                    ops.gemv(&outs, b.xn.ptr(), false, rope)?;
                } else {
                    let x_in = input(b.xn.ptr());
                    for (w, y, bias, width) in [
                        (&layer.q, b.q.ptr(), layer.qkv_bias[0], qd),
                        (&layer.k, b.k.ptr(), layer.qkv_bias[1], kvd),
                        (&layer.v, b.v.ptr(), layer.qkv_bias[2], kvd),
                    ] {
                        ops.linear(w, x_in, act, n, y, 0.0, scratch)?;
                        if bias != 0 {
                            ops.add_bias(y, bias, n, width)?;
                        }
                    }
                }
                if let Some([qn, kn]) = layer.qk_norm {
                    let hd = c.head_dim;
                    ops.rms_norm(b.q.ptr(), qn, b.q.ptr(), 0, n * c.num_heads, hd, eps, act)?;
                    ops.rms_norm(
                        b.k.ptr(),
                        kn,
                        b.k.ptr(),
                        0,
                        n * c.num_kv_heads,
                        hd,
                        eps,
                        act,
                    )?;
                }
                if rope.is_none() {
                    ops.rope_store(
                        [b.q.ptr(), b.k.ptr(), b.v.ptr()],
                        cache,
                        m.inv_freq.ptr(),
                        n,
                        start_at,
                        dims,
                        m.rope_interleaved(),
                        if n > 1 { qa } else { 0 },
                    )?;
                }
                if n == 1 {
                    ops.attention(
                        b.q.ptr(),
                        cache,
                        b.scores.ptr(),
                        b.counters.ptr(),
                        start_at,
                        b.att.ptr(),
                        if gemm_path { xa } else { 0 },
                        n,
                        dims,
                        act,
                    )?;
                } else {
                    ops.attention_blas(
                        (b.q.ptr(), qa),
                        cache,
                        b.att.ptr(),
                        xa,
                        n,
                        start,
                        dims,
                        (b.scores.ptr(), probs),
                        self.tile,
                        act,
                    )?;
                }
                add_to_residual(&layer.o, b.att.ptr())?;
                ops.rms_norm(b.x.ptr(), layer.ffn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                if !gemm_path {
                    ops.gemv_swiglu(&layer.gate, &layer.up, b.xn.ptr(), b.h.ptr(), act)?;
                } else {
                    let x_in = input(b.xn.ptr());
                    ops.linear(&layer.gate, x_in, act, n, b.g.ptr(), 0.0, scratch)?;
                    ops.linear(&layer.up, x_in, act, n, b.u.ptr(), 0.0, scratch)?;
                    ops.swiglu(b.g.ptr(), b.u.ptr(), b.h.ptr(), xa, act, n * inter)?;
                }
                add_to_residual(&layer.down, b.h.ptr())?;
            }
            ops.rms_norm(b.x.ptr(), m.output_norm, b.xn.ptr(), xa, n, h, eps, act)?;
            let rows = if all_logits && n > 1 {
                ops.linear(
                    &m.output,
                    input(b.xn.ptr()),
                    act,
                    n,
                    b.logits.ptr(),
                    0.0,
                    scratch,
                )?;
                n
            } else if all_logits || last {
                let row = b.xn.ptr() + ((n - 1) * h * 4) as u64;
                ops.gemv(
                    &[GemvOut {
                        w: &m.output,
                        y: b.logits.ptr(),
                        bias: 0,
                    }],
                    row,
                    false,
                    None,
                )?;
                1
            } else {
                0
            };
            debug_assert!(rows <= b.logits_rows);
            Ok(rows)
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence (keeps the buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (the next token goes to position `len`).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Runs only the prefill's matrix products for `n` tokens (cuBLAS, the model's shapes and
    /// types; quantized weights use their conversion buffer as it is): the yardstick of
    /// [`super::bench`]. Waits for them.
    pub(crate) fn gemms_only(&self, n: usize) -> Result<(), GpuError> {
        assert!(
            n > 0 && n <= self.chunk,
            "gemms_only: {n} tokens, chunk {}",
            self.chunk
        );
        let m = self.model;
        let ops = m.ops();
        let b = &self.bufs;
        let xa = b.xa.as_ref().map_or(b.xn.ptr(), |x| x.ptr());
        for layer in &m.layers {
            for (w, y, beta) in [
                (&layer.q, b.q.ptr(), 0.0),
                (&layer.k, b.k.ptr(), 0.0),
                (&layer.v, b.v.ptr(), 0.0),
                (&layer.o, b.x.ptr(), 1.0),
                (&layer.gate, b.g.ptr(), 0.0),
                (&layer.up, b.u.ptr(), 0.0),
                (&layer.down, b.x.ptr(), 1.0),
            ] {
                let direct = w.wtype.elem() == Some(m.act.elem());
                let a = match (&b.scratch, direct) {
                    (_, true) => *w,
                    (Some(s), false) => Mat {
                        ptr: s.ptr(),
                        wtype: match m.act {
                            Act::F32 => WType::F32,
                            Act::F16 => WType::F16,
                            Act::BF16 => WType::BF16,
                        },
                        ..*w
                    },
                    (None, false) => {
                        unreachable!("sessions of models with converted weights have scratch")
                    }
                };
                // SAFETY: as in `step`: buffers sized for `chunk` tokens, n <= chunk.
                unsafe { ops.linear(&a, xa, m.act, n, y, beta, 0)? };
            }
        }
        Ok(m.stream.synchronize()?)
    }

    /// The GPU and stream, for timing.
    pub(crate) fn model(&self) -> &'a GpuModel {
        self.model
    }
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

    /// `(rows, cols)` of every matrix a prefill multiplies, per layer, for FLOP counts.
    pub(crate) fn layer_shapes(&self) -> Vec<(usize, usize)> {
        self.layers
            .iter()
            .flat_map(|l| l.mats().map(|m| (m.rows, m.cols)))
            .collect()
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
