//! Turning loaded tensors into the model's device weights.

use std::collections::HashMap;
use std::sync::Arc;

use hoist_cuda::{DevSlice, DeviceBuf, Gpu, GpuTensors, Stream};
use hoist_format::TensorTable;

use super::bytes_of;
use super::weights::{Ffn, Layer};
use crate::config::{ArchFamily, ModelConfig};
use crate::gpu::blas::Blas;
use crate::gpu::layers::{Act, Mat, MoeFfn, Ops, SharedFfn, WType};
use crate::gpu::module::{Kernels, MOE_MAX_TOP_K};
use crate::gpu::GpuError;
use crate::weights::{ExpertProj, LayerTensor, MoeNaming, WeightId, WeightMap};

/// The weight types the kernels read ([`WType::of`]), for messages.
const GPU_DTYPES: &str =
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS";

/// A tensor of a type the kernels do not read, named.
pub(super) fn unsupported_dtype(name: &str, dtype: hoist_format::DType) -> GpuError {
    GpuError::Unsupported(format!(
        "tensor {name} is {dtype}; the GPU runtime reads {GPU_DTYPES} weights (--device cpu reads more)"
    ))
}

/// A matrix whose rows are not whole blocks of its type: the kernels read a row block by block.
fn whole_blocks(name: &str, wtype: WType, cols: usize) -> GpuError {
    GpuError::Unsupported(format!(
        "tensor {name} is quantized in blocks of {} values; its rows of {cols} values are not whole blocks",
        wtype.block_values()
    ))
}

/// Refuses, before any device work, a model with tensors of a type the kernels do not read:
/// names the first such tensor and every such type.
pub(super) fn check_dtypes(table: &TensorTable, map: &WeightMap) -> Result<(), GpuError> {
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

/// What [`Builder`] makes of the loaded tensors.
pub(super) struct Built {
    pub(super) act: Act,
    pub(super) embed: Mat,
    pub(super) output: Mat,
    pub(super) output_norm: DevSlice<f32>,
    pub(super) layers: Vec<Layer>,
    pub(super) inv_freq: DeviceBuf,
    /// Device copies owned by the model: f32 norms and biases.
    pub(super) small: Vec<DeviceBuf>,
}

/// Turns loaded tensors into matrices (views) and f32 vectors (converted copies).
pub(super) struct Builder<'a> {
    config: &'a ModelConfig,
    table: &'a TensorTable,
    map: &'a WeightMap,
    weights: &'a GpuTensors,
    by_name: HashMap<&'a str, usize>,
    ops: Ops<'a>,
    gpu: &'a Arc<Gpu>,
    small: Vec<DeviceBuf>,
    /// The streamed layers' matrices: their views in their slots, by table index.
    streamed: HashMap<usize, (DevSlice<u8>, &'a hoist_format::TensorInfo)>,
}

impl<'a> Builder<'a> {
    /// A builder of `config`'s model from `weights`, the tensors `map` resolved in `table`
    /// loaded onto `gpu`, converting on `ops`' stream.
    pub(super) fn new(
        (config, table, map): (&'a ModelConfig, &'a TensorTable, &'a WeightMap),
        weights: &'a GpuTensors,
        ops: Ops<'a>,
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
            table,
            map,
            weights,
            by_name,
            ops,
            gpu,
            small: Vec::new(),
            streamed: HashMap::new(),
        })
    }

    /// The streamed layers' matrices: views in their slots by table index
    /// ([`super::stream::Streamer::views`]).
    pub(super) fn with_streamed(
        mut self,
        table: &'a TensorTable,
        views: Vec<(usize, DevSlice<u8>)>,
    ) -> Builder<'a> {
        self.streamed = views
            .into_iter()
            .map(|(i, v)| (i, (v, &table.tensors[i])))
            .collect();
        self
    }

    /// `data`, the bytes of a `[rows, cols]` matrix of tensor `info` holding `values` values
    /// (`what` names it in errors), as a matrix of the file's type: refused unless the kernels
    /// read the type, the sizes agree and the rows are whole blocks.
    fn checked_mat(
        info: &hoist_format::TensorInfo,
        what: &str,
        data: DevSlice<u8>,
        values: u64,
        (rows, cols): (usize, usize),
    ) -> Result<Mat, GpuError> {
        let wtype =
            WType::of(info.dtype).ok_or_else(|| unsupported_dtype(&info.name, info.dtype))?;
        if values != (rows * cols) as u64 || wtype.bytes(rows * cols) != data.len() {
            return Err(GpuError::Unsupported(format!(
                "{what} has {values} values ({} bytes), expected [{rows}, {cols}] of {wtype:?}",
                data.len()
            )));
        }
        if !cols.is_multiple_of(wtype.block_values()) {
            return Err(whole_blocks(&info.name, wtype, cols));
        }
        Ok(Mat {
            data,
            wtype,
            rows,
            cols,
        })
    }

    /// The loaded tensor named `name`.
    fn loaded(&self, name: &str) -> Result<&'a hoist_cuda::GpuTensor, GpuError> {
        self.by_name
            .get(name)
            .map(|&i| &self.weights.tensors()[i])
            .ok_or_else(|| GpuError::Unsupported(format!("tensor {name} was not loaded")))
    }

    fn tensor(&self, id: WeightId) -> Result<&'a hoist_cuda::GpuTensor, GpuError> {
        self.loaded(&self.map.source.name(id))
    }

    fn mat(&mut self, id: WeightId, rows: usize, cols: usize) -> Result<Mat, GpuError> {
        if let Some(i) = self.map.index(id) {
            // A streamed layer's matrix: its view in its slot.
            if let Some(&(view, info)) = self.streamed.get(&i) {
                let what = format!("tensor {} (shape {:?}, in its slot)", info.name, info.shape);
                return Self::checked_mat(info, &what, view, info.elements(), (rows, cols));
            }
        }
        let t = self.tensor(id)?;
        let what = format!("tensor {} (shape {:?})", t.info.name, t.info.shape);
        let data = DevSlice::of_tensor(t)?;
        Self::checked_mat(&t.info, &what, data, t.info.elements(), (rows, cols))
    }

    /// Expert `e`'s `proj` matrix of layer `n` (`[rows, cols]`): its own tensor (Hugging Face)
    /// or its bytes of the layer's stacked tensor (GGUF).
    fn expert_mat(
        &self,
        n: usize,
        e: usize,
        proj: ExpertProj,
        rows: usize,
        cols: usize,
    ) -> Result<Mat, GpuError> {
        let s = self
            .map
            .expert_slice(self.table, n, e, proj)
            .ok_or_else(|| {
                GpuError::Unsupported(format!(
                    "layer {n}'s expert {e} ({proj:?}) is missing from the checkpoint"
                ))
            })?;
        let info = &self.table.tensors[s.index];
        let what = format!(
            "layer {n}'s expert {e} ({proj:?}) in tensor {}, [{}, {}]",
            info.name, s.rows, s.cols
        );
        if (s.rows, s.cols) != (rows, cols) {
            return Err(GpuError::Unsupported(format!(
                "{what}, expected [{rows}, {cols}] from the model configuration"
            )));
        }
        let values = (s.rows * s.cols) as u64;
        let t = self.loaded(&info.name)?;
        let data = DevSlice::of_tensor(t)?.slice(s.offset as usize..(s.offset + s.len) as usize)?;
        Self::checked_mat(info, &what, data, values, (rows, cols))
    }

    /// An f32 copy of a small tensor of `len` values.
    fn vector(&mut self, id: WeightId, len: usize) -> Result<DevSlice<f32>, GpuError> {
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
        if !len.is_multiple_of(wtype.block_values()) {
            return Err(whole_blocks(&t.info.name, wtype, len));
        }
        let buf = DeviceBuf::new(self.gpu, len * 4)?;
        // SAFETY: the source holds `len` values of `wtype` (checked), the buffer len f32.
        unsafe {
            self.ops
                .convert(t.device_ptr, wtype, buf.ptr(), Act::F32, len)?
        };
        let v = DevSlice::of(&buf)?;
        debug_assert_eq!(v.len(), len);
        self.small.push(buf);
        Ok(v)
    }

    /// The model's weights; with `q4_tiles`, Q4_0 matrices repacked into tiles
    /// ([`crate::gpu::GpuTuning::q4_tiles`]).
    pub(super) fn build(mut self, q4_tiles: bool) -> Result<Built, GpuError> {
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
                [DevSlice::empty(); 3]
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
                ffn: match &c.moe {
                    Some(moe) if moe.is_sparse(n) => Ffn::Moe(self.moe_ffn(n, moe)?),
                    _ => Ffn::Dense {
                        gate: self.mat(id(Gate), inter, h)?,
                        up: self.mat(id(Up), inter, h)?,
                        down: self.mat(id(Down), h, inter)?,
                    },
                },
            });
        }
        if q4_tiles {
            self.tile_q4_0(&mut layers, &mut output, c.tie_word_embeddings)?;
        }
        let types: Vec<WType> = layers
            .iter()
            .flat_map(|l| l.mats().into_iter().chain(l.experts()).map(|m| m.wtype))
            .chain([embed.wtype, output.wtype])
            .collect();
        let act = activation_type(&types);
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

    /// Sparse layer `n`'s router, experts (with the device table of their addresses) and
    /// shared expert. The experts of one projection must share a type (decode's kernels take
    /// one type per projection).
    fn moe_ffn(&mut self, n: usize, moe: &crate::config::MoeConfig) -> Result<MoeFfn, GpuError> {
        let c = self.config;
        let h = c.hidden_size;
        let id = |t| WeightId::Layer(n, t);
        if !(1..=MOE_MAX_TOP_K).contains(&moe.experts_per_token) {
            return Err(GpuError::Unsupported(format!(
                "the model routes each token to {} experts; the GPU runtime takes 1 to {MOE_MAX_TOP_K}",
                moe.experts_per_token
            )));
        }
        let naming = match c.arch {
            ArchFamily::Mixtral => MoeNaming::Mixtral,
            _ => MoeNaming::Qwen,
        };
        let ei = moe.expert_intermediate_size;
        let router = self.mat(id(LayerTensor::Router(naming)), moe.num_experts, h)?;
        let mut experts = Vec::with_capacity(moe.num_experts);
        for e in 0..moe.num_experts {
            experts.push([
                self.expert_mat(n, e, ExpertProj::Gate, ei, h)?,
                self.expert_mat(n, e, ExpertProj::Up, ei, h)?,
                self.expert_mat(n, e, ExpertProj::Down, h, ei)?,
            ]);
        }
        for (p, proj) in [ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down]
            .into_iter()
            .enumerate()
        {
            if let Some(e) = experts
                .iter()
                .position(|x| x[p].wtype != experts[0][p].wtype)
            {
                return Err(GpuError::Unsupported(format!(
                    "layer {n}: expert {e}'s {proj:?} projection is {:?} but expert 0's is {:?}; the GPU runtime needs one type for every expert's {proj:?} projection of a layer",
                    experts[e][p].wtype,
                    experts[0][p].wtype
                )));
            }
        }
        let shared = match moe.shared_expert_intermediate_size {
            Some(si) => Some(SharedFfn {
                gate: self.mat(id(LayerTensor::SharedGate), si, h)?,
                up: self.mat(id(LayerTensor::SharedUp), si, h)?,
                down: self.mat(id(LayerTensor::SharedDown), h, si)?,
                gate_inp: self.mat(id(LayerTensor::SharedExpertGate), 1, h)?,
            }),
            None => None,
        };
        // The address tables: every gate, then every up, then every down.
        let addresses: Vec<u64> = (0..3)
            .flat_map(|p| experts.iter().map(move |x| x[p].ptr()))
            .collect();
        let tables = DeviceBuf::new(self.gpu, addresses.len() * 8)?;
        tables.write_async(self.ops.stream, bytes_of(&addresses))?;
        self.ops.stream.synchronize()?;
        Ok(MoeFfn {
            router,
            experts,
            tables,
            shared,
            top_k: moe.experts_per_token,
            norm_topk_prob: moe.norm_topk_prob,
        })
    }

    /// Repacks the Q4_0 matrices that can be into tiles for the tensor-core GEMVs (see
    /// kernels/q4_tiles.cu), in place through one scratch buffer: gate and up only together (one
    /// kernel reads both), the output matrix unless it is the embedding table (the embedding
    /// kernel reads the file's layout).
    fn tile_q4_0(
        &self,
        layers: &mut [Layer],
        output: &mut Mat,
        tied: bool,
    ) -> Result<(), GpuError> {
        let ops = &self.ops;
        let ok = |m: &Mat| crate::gpu::q4_tiles::tileable(ops.k, m);
        let mut targets: Vec<&mut Mat> = Vec::new();
        for (n, l) in layers.iter_mut().enumerate() {
            // Streamed layers' views are slots: their pinned copies are tiled on their own
            // (`tile_pinned_layers`), file-tier ones keep the file's layout.
            let streamed = self
                .map
                .index(WeightId::Layer(n, LayerTensor::Q))
                .is_some_and(|i| self.streamed.contains_key(&i));
            if !streamed {
                targets.extend(tile_targets(ops.k, l));
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

/// The matrices of `l` that Q4_0 tiling repacks: gate and up only together (one kernel reads
/// both).
/// (Sparse layers' experts keep the file's layout: decode's expert kernels read it.)
fn tile_targets<'m>(k: &Kernels, l: &'m mut Layer) -> Vec<&'m mut Mat> {
    let ok = |m: &Mat| crate::gpu::q4_tiles::tileable(k, m);
    let mut targets = Vec::new();
    for m in [&mut l.q, &mut l.k, &mut l.v, &mut l.o] {
        if ok(m) {
            targets.push(m);
        }
    }
    if let Ffn::Dense { gate, up, down } = &mut l.ffn {
        if ok(down) {
            targets.push(down);
        }
        if ok(gate) && ok(up) {
            targets.push(gate);
            targets.push(up);
        }
    }
    targets
}

/// Tiles the Q4_0 matrices of the pinned tier's layers once, at load: each layer is copied into
/// its slot, tiled there as a resident layer is, and copied back, so that a streamed layer runs
/// the same kernels on the same bytes as it would resident. (File-tier layers keep the file's
/// layout and the untiled kernels.)
pub(super) fn tile_pinned_layers(
    streamer: &mut super::stream::Streamer,
    layers: &mut [Layer],
    kernels: &Kernels,
    blas: &Blas,
    stream: &Stream,
    gpu: &Arc<Gpu>,
) -> Result<(), GpuError> {
    let ops = Ops {
        k: kernels,
        blas,
        stream,
    };
    let mut scratch: Option<DeviceBuf> = None;
    for (layer, slot, pinned, bytes) in streamer.pinned_layers() {
        let targets = tile_targets(kernels, &mut layers[layer]);
        let Some(most) = targets.iter().map(|m| m.bytes()).max() else {
            continue;
        };
        if scratch.as_ref().is_none_or(|s| s.len() < most) {
            scratch = Some(DeviceBuf::new(gpu, most)?);
        }
        let Some(scratch) = scratch.as_ref() else {
            unreachable!("allocated above")
        };
        // SAFETY: the pinned copy and the slot hold the packed layer (`bytes`); the stream is
        // synchronized before the host touches the pinned copy again or scratch is freed; the
        // targets are views into this slot, which now holds this layer.
        unsafe {
            slot.write_from_pinned_async(stream, 0, pinned, 0, bytes)?;
            for m in targets {
                ops.tile_q4_0(m, scratch)?;
            }
            slot.read_to_pinned_async(stream, pinned, 0, bytes)?;
        }
        stream.synchronize()?;
    }
    Ok(())
}

/// The type GEMM inputs are rounded to for matrices of `types`: bf16 if any is bf16, f16 for
/// f16 and quantized weights (prefill dequantizes them to f16 for cuBLAS), f32 only when every
/// matrix is f32.
pub(super) fn activation_type(types: &[WType]) -> Act {
    if types.contains(&WType::BF16) {
        Act::BF16
    } else if types.iter().all(|&t| t == WType::F32) {
        Act::F32
    } else {
        Act::F16
    }
}
