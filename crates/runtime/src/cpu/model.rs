//! The reference forward pass of the Llama family (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, and
//! the mixture-of-experts Mixtral, Qwen2-MoE, Qwen3-MoE) in f32, over weights loaded with hoist
//! and converted once.
//!
//! One decoder block covers the family; the differences are flags of [`ModelConfig`]:
//! `attention_bias` (Qwen2), `qk_norm` (Qwen3), `rope_scaling` / `rope_freqs.weight`
//! (Llama 3.1), `sliding_window` (Mistral v0.1), `rope_style` (llama-arch GGUF files),
//! `tie_word_embeddings`, and `moe` (routed experts in sparse layers, [`super::moe`]). This is a test reference, not the product path: simple, not fast.
//!
//! The hybrid Qwen3-Next and Qwen3.5-MoE ([`ModelConfig::linear`]) swap the attention of most
//! layers for a Gated DeltaNet ([`super::deltanet`]), whose conv and recurrent state ride in
//! the [`KvCache`] beside the keys and values of the remaining full-attention layers. Those are
//! gated (`o_proj(attention · sigmoid(gate))`, the gate the second half of each head's query
//! projection) with q/k norms and rotary on the first `rotary_dim` dimensions of each head; all
//! their RMS norms but the DeltaNet output norm scale by `1 + weight`, which the loader folds
//! into the weights once.
//!
//! Experts come one tensor each from a Hugging Face checkpoint; from a GGUF file each expert's
//! matrix is its byte range of the stacked tensor ([`crate::weights::ExpertSlice`], the range
//! the GPU runtime reads too), converted on its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hoist_format::{TensorInfo, TensorTable};
use hoist_io::{EngineConfig, HostTensor, PlanConfig};

use super::attention::{attention, KvCache};
use super::convert::{affine_to_f32, tensor_to_f32};
use super::deltanet::{DeltaDims, DeltaNet, DeltaState};
use super::moe::{MoeBlock, SharedExpert, SwiGlu};
use super::ops::{add_bias, embedding, matmul_t, rms_norm, sigmoid};
use super::rope::{inv_freqs, Rope};
use crate::config::{DeltaLayout, LinearAttnConfig, ModelConfig};
use crate::weights::{
    ExpertProj, ExpertSlice, LayerTensor, MoeNaming, WeightError, WeightId, WeightMap, WeightSource,
};
use crate::RuntimeError;

/// A forward pass was asked for something the model or its cache cannot do.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A token id is not in the vocabulary.
    #[error("token id {token} is outside the vocabulary (size {vocab})")]
    Token {
        /// The id.
        token: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// The KV cache cannot hold the new positions.
    #[error("context full: {needed} positions needed, the KV cache holds {capacity}; ask for a longer context or fewer tokens")]
    ContextFull {
        /// Positions the call needs in all.
        needed: usize,
        /// Positions the cache holds.
        capacity: usize,
    },
    /// The cache was made for another model (`KvCache::new` by hand, or another model's).
    #[error("a cache for {cache_kv} attention and {cache_delta} DeltaNet layers of width {cache_row}, but the model has {model_kv} and {model_delta} of width {model_row}: make it with the model's new_cache")]
    CacheMismatch {
        /// Attention layers the cache holds.
        cache_kv: usize,
        /// DeltaNet states the cache holds.
        cache_delta: usize,
        /// Values per position and layer of its keys.
        cache_row: usize,
        /// Attention layers of the model.
        model_kv: usize,
        /// DeltaNet layers of the model.
        model_delta: usize,
        /// Values per position and layer of the model's keys.
        model_row: usize,
    },
    /// A KV cache of this many positions does not fit in memory (or its size overflows).
    #[error("a KV cache of {context} positions needs {bytes} bytes, more than can be allocated")]
    CacheTooLarge {
        /// Positions asked for.
        context: usize,
        /// Bytes the keys and values of every layer would take.
        bytes: u128,
    },
}

/// One sequence of a batched forward pass ([`CpuModel::forward_batch`]): its new tokens and the
/// cache of its earlier positions.
#[derive(Debug)]
pub struct Sequence<'a> {
    /// The positions after those `cache` holds.
    pub tokens: &'a [u32],
    /// The sequence's KV cache (and DeltaNet states), extended by the pass.
    pub cache: &'a mut KvCache,
}

/// One decoder block's weights in f32.
#[derive(Clone, Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    mixer: Mixer,
    ffn_norm: Vec<f32>,
    ffn: Ffn,
}

/// How a layer mixes tokens.
#[derive(Clone, Debug)]
enum Mixer {
    /// Softmax attention over the KV cache, slot `slot` of it.
    Attention { attn: Box<Attention>, slot: usize },
    /// A Gated DeltaNet, state `slot` of the cache's DeltaNet states.
    Delta { net: Box<DeltaNet>, slot: usize },
}

/// An attention block's weights.
#[derive(Clone, Debug)]
struct Attention {
    /// `[heads·head_dim, hidden]`; gated attention: `[heads·2·head_dim, hidden]`, each head's
    /// query then its output gate.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    qkv_bias: Option<[Vec<f32>; 3]>,
    qk_norm: Option<[Vec<f32>; 2]>,
    /// Whether the output is gated by `sigmoid` of the query projection's second half.
    gated: bool,
}

/// A layer's feed-forward block.
#[derive(Clone, Debug)]
enum Ffn {
    /// One SwiGLU block.
    Dense(SwiGlu),
    /// Routed experts (a sparse layer of a mixture-of-experts model).
    Moe(MoeBlock),
}

/// A Llama-family model with f32 weights on the CPU.
#[derive(Clone, Debug)]
pub struct CpuModel {
    /// The model's configuration.
    pub config: ModelConfig,
    embed: Vec<f32>,
    output: Option<Vec<f32>>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    inv_freqs: Vec<f32>,
}

/// The `config.json` that goes with a Hugging Face checkpoint path (a directory, or a file in
/// one).
fn hf_config_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("config.json")
    } else {
        path.parent().unwrap_or(Path::new(".")).join("config.json")
    }
}

/// Opens a checkpoint (a GGUF file, or a Hugging Face directory or file in one with its
/// `config.json`): its tensor table and model configuration, before any weight is read. Every
/// loader (CPU, GPU, and callers that size a load first) starts here.
pub fn open_checkpoint(path: &Path) -> Result<(TensorTable, ModelConfig), RuntimeError> {
    let table = TensorTable::open(path)?;
    let config = match WeightSource::of(&table) {
        WeightSource::Gguf => ModelConfig::from_gguf(&table)?,
        WeightSource::HuggingFace => ModelConfig::from_hf_file(&hf_config_path(path))?,
    };
    Ok((table, config))
}

impl CpuModel {
    /// Opens a checkpoint (a GGUF file, or a Hugging Face directory with `config.json`), loads
    /// its weights with hoist and converts them to f32.
    pub fn load(path: &Path) -> Result<CpuModel, RuntimeError> {
        let (table, config) = open_checkpoint(path)?;
        CpuModel::from_table(&table, config)
    }

    /// Loads the tensors `config` implies from `table` and converts them to f32.
    pub fn from_table(table: &TensorTable, config: ModelConfig) -> Result<CpuModel, RuntimeError> {
        CpuModel::from_table_with_progress(table, config, None)
    }

    /// [`CpuModel::from_table`] that adds the bytes it reads to `progress` as they land, for a
    /// progress display (the read engine's counter, [`EngineConfig::progress`]).
    pub fn from_table_with_progress(
        table: &TensorTable,
        config: ModelConfig,
        progress: Option<Arc<AtomicU64>>,
    ) -> Result<CpuModel, RuntimeError> {
        let map = WeightMap::resolve(table, &config)?;
        let engine = EngineConfig {
            progress,
            ..EngineConfig::default()
        };
        let (tensors, _) = hoist_io::load_host(
            table,
            &map.selection(),
            PlanConfig::default(),
            &engine,
            None,
        )?;
        Ok(CpuModel::from_host_tensors(config, &map, &tensors)?)
    }

    /// Builds the model from loaded tensors (those of `map`, in any order).
    pub fn from_host_tensors(
        config: ModelConfig,
        map: &WeightMap,
        tensors: &[HostTensor],
    ) -> Result<CpuModel, WeightError> {
        let by_name: HashMap<&str, &HostTensor> =
            tensors.iter().map(|t| (t.info.name.as_str(), t)).collect();
        let host = |id: WeightId| -> Result<&HostTensor, WeightError> {
            let name = map.name(id);
            by_name
                .get(name.as_str())
                .copied()
                .ok_or_else(|| WeightError::Missing {
                    path: PathBuf::new(),
                    name,
                    what: "not among the loaded tensors".into(),
                })
        };
        let by_name_of = |name: &str| -> Result<&HostTensor, WeightError> {
            by_name
                .get(name)
                .copied()
                .ok_or_else(|| WeightError::Missing {
                    path: PathBuf::new(),
                    name: name.into(),
                    what: "not among the loaded tensors".into(),
                })
        };
        // MLX affine-quantized tensors are unpacked here, once, like every other type.
        let get = |id: WeightId| -> Result<Vec<f32>, WeightError> {
            let t = host(id)?;
            match map.affine(id) {
                Some(parts) => {
                    let (s, b) = (
                        by_name_of(&parts.scales_name)?,
                        by_name_of(&parts.biases_name)?,
                    );
                    affine_to_f32(
                        parts.spec,
                        (&t.info, t.bytes()),
                        (&s.info, s.bytes()),
                        (&b.info, b.bytes()),
                    )
                }
                None => tensor_to_f32(&t.info, t.bytes()),
            }
        };
        // Expert `e`'s matrix of a stacked GGUF tensor: its own byte range converted as a
        // `[rows, cols]` tensor of the same type (the range the GPU runtime reads, too).
        let stacked = |t: &HostTensor, e: usize| -> Result<Vec<f32>, WeightError> {
            let bytes = t.bytes();
            let bad = || WeightError::Bytes {
                name: t.info.name.clone(),
                len: bytes.len(),
                elements: t.info.elements(),
                dtype: t.info.dtype,
            };
            // The table index (0) is not used: the tensor's bytes are already loaded.
            let s = ExpertSlice::of_stacked(0, &t.info, e).ok_or_else(bad)?;
            let range = usize::try_from(s.offset)
                .ok()
                .zip(usize::try_from(s.len).ok())
                .and_then(|(start, len)| Some(start..start.checked_add(len)?))
                .ok_or_else(bad)?;
            let part = bytes.get(range).ok_or_else(bad)?;
            let info = TensorInfo {
                name: format!("{} (expert {e})", t.info.name),
                shape: vec![s.rows as u64, s.cols as u64],
                len: s.len,
                ..t.info.clone()
            };
            tensor_to_f32(&info, part)
        };
        // Each layer's place among the layers of its kind: its KV cache slot, or its DeltaNet
        // state.
        let slots = layer_slots(&config);
        let layer = |n: usize| -> Result<Layer, WeightError> {
            let t = |lt: LayerTensor| get(WeightId::Layer(n, lt));
            use LayerTensor::*;
            let ffn = match &config.moe {
                Some(moe) if moe.is_sparse(n) => {
                    let naming = match config.arch {
                        crate::ArchFamily::Mixtral => MoeNaming::Mixtral,
                        _ => MoeNaming::Qwen,
                    };
                    let inter = moe.expert_intermediate_size;
                    let stacked_hf = map.source == WeightSource::HuggingFace
                        && map
                            .index(WeightId::Layer(n, Experts(ExpertProj::Gate)))
                            .is_some();
                    let experts = match map.source {
                        WeightSource::HuggingFace if stacked_hf => {
                            // mlx-lm's `switch_mlp`: each projection's experts in one tensor,
                            // converted whole (unpacked if quantized) and cut per expert.
                            let split = |p| {
                                per_expert(
                                    get(WeightId::Layer(n, Experts(p)))?,
                                    moe.num_experts,
                                    &map.name(WeightId::Layer(n, Experts(p))),
                                )
                            };
                            let (gate, up, down) = (
                                split(ExpertProj::Gate)?,
                                split(ExpertProj::Up)?,
                                split(ExpertProj::Down)?,
                            );
                            gate.into_iter()
                                .zip(up)
                                .zip(down)
                                .map(|((gate, up), down)| SwiGlu {
                                    gate,
                                    up,
                                    down,
                                    inter,
                                })
                                .collect()
                        }
                        WeightSource::HuggingFace => (0..moe.num_experts)
                            .map(|e| {
                                Ok(SwiGlu {
                                    gate: t(Expert(naming, e, ExpertProj::Gate))?,
                                    up: t(Expert(naming, e, ExpertProj::Up))?,
                                    down: t(Expert(naming, e, ExpertProj::Down))?,
                                    inter,
                                })
                            })
                            .collect::<Result<Vec<_>, WeightError>>()?,
                        WeightSource::Gguf => {
                            let stack = |p| host(WeightId::Layer(n, Experts(p)));
                            let gate = stack(ExpertProj::Gate)?;
                            let up = stack(ExpertProj::Up)?;
                            let down = stack(ExpertProj::Down)?;
                            (0..moe.num_experts)
                                .map(|e| {
                                    Ok(SwiGlu {
                                        gate: stacked(gate, e)?,
                                        up: stacked(up, e)?,
                                        down: stacked(down, e)?,
                                        inter,
                                    })
                                })
                                .collect::<Result<Vec<_>, WeightError>>()?
                        }
                    };
                    let shared = match moe.shared_expert_intermediate_size {
                        Some(inter) => Some(SharedExpert {
                            mlp: SwiGlu {
                                gate: t(SharedGate)?,
                                up: t(SharedUp)?,
                                down: t(SharedDown)?,
                                inter,
                            },
                            gate: t(SharedExpertGate)?,
                        }),
                        None => None,
                    };
                    Ffn::Moe(MoeBlock {
                        router: t(Router(naming))?,
                        experts,
                        shared,
                        top_k: moe.experts_per_token,
                        norm_topk_prob: moe.norm_topk_prob,
                    })
                }
                _ => Ffn::Dense(SwiGlu {
                    gate: t(Gate)?,
                    up: t(Up)?,
                    down: t(Down)?,
                    inter: config.intermediate_size,
                }),
            };
            // Hybrid models' norms scale by `1 + weight` (zero-centred): folded in here, in
            // f32 as transformers adds it.
            // mlx-lm's conversion has folded the 1 in already.
            let zero_centred = config.linear.is_some() && !map.norms_folded;
            let norm = |lt: LayerTensor| -> Result<Vec<f32>, WeightError> {
                let mut w = t(lt)?;
                if zero_centred {
                    w.iter_mut().for_each(|v| *v += 1.0);
                }
                Ok(w)
            };
            let mixer = match &config.linear {
                Some(lin) if lin.is_linear(n) => Mixer::Delta {
                    net: Box::new(delta_net(&config, lin, map.source, &t)?),
                    slot: slots[n],
                },
                _ => Mixer::Attention {
                    attn: Box::new(Attention {
                        q: t(Q)?,
                        k: t(K)?,
                        v: t(V)?,
                        o: t(O)?,
                        qkv_bias: if config.attention_bias {
                            Some([t(QBias)?, t(KBias)?, t(VBias)?])
                        } else {
                            None
                        },
                        qk_norm: if config.qk_norm {
                            Some([norm(QNorm)?, norm(KNorm)?])
                        } else {
                            None
                        },
                        gated: config.linear.is_some(),
                    }),
                    slot: slots[n],
                },
            };
            Ok(Layer {
                attn_norm: norm(AttnNorm)?,
                mixer,
                ffn_norm: norm(LayerTensor::ffn_norm(&config, map.source))?,
                ffn,
            })
        };
        let rotary_dim = config
            .linear
            .as_ref()
            .map_or(config.head_dim, |l| l.rotary_dim);
        let mut freqs = inv_freqs(rotary_dim, config.rope_theta, config.rope_scaling);
        if map.index(WeightId::RopeFreqs).is_some() {
            for (f, d) in freqs.iter_mut().zip(get(WeightId::RopeFreqs)?) {
                *f /= d;
            }
        }
        let mut output_norm = get(WeightId::OutputNorm)?;
        if config.linear.is_some() && !map.norms_folded {
            output_norm.iter_mut().for_each(|v| *v += 1.0);
        }
        Ok(CpuModel {
            embed: get(WeightId::Embedding)?,
            output: if config.tie_word_embeddings {
                None
            } else {
                Some(get(WeightId::Output)?)
            },
            output_norm,
            layers: (0..config.num_layers)
                .map(layer)
                .collect::<Result<_, _>>()?,
            inv_freqs: freqs,
            config,
        })
    }

    /// An empty KV cache for `capacity` positions.
    ///
    /// # Errors
    /// [`ForwardError::CacheTooLarge`] when its memory cannot be reserved.
    ///
    /// A hybrid model's cache holds keys and values for its full-attention layers only, and the
    /// (zero) initial state of each DeltaNet layer.
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache, ForwardError> {
        let c = &self.config;
        if c.linear.is_none() {
            return KvCache::new(c.num_layers, c.num_kv_heads, c.head_dim, capacity);
        }
        let (full, _) = self.cache_layers();
        let states = self
            .layers
            .iter()
            .filter_map(|l| match &l.mixer {
                Mixer::Delta { net, .. } => Some(DeltaState::new(&net.dims)),
                Mixer::Attention { .. } => None,
            })
            .collect();
        Ok(KvCache::new(full, c.num_kv_heads, c.head_dim, capacity)?.with_delta_states(states))
    }

    /// Attention layers (KV cache slots) and DeltaNet layers (states) of the model.
    fn cache_layers(&self) -> (usize, usize) {
        let delta = self
            .layers
            .iter()
            .filter(|l| matches!(l.mixer, Mixer::Delta { .. }))
            .count();
        (self.layers.len() - delta, delta)
    }

    /// Runs `tokens` (the positions after those already in `cache`) through the model,
    /// appends their keys and values to `cache`, and returns their logits, `[n, vocab]`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, ForwardError> {
        self.forward_batch(&mut [Sequence { tokens, cache }])
    }

    /// Runs several sequences through the model in one pass: each sequence's `tokens` are the
    /// positions after those already in its own cache. The linear layers see every new token
    /// of every sequence as one matrix (each weight is read once for all of them); rotary
    /// positions, attention and DeltaNet states are each sequence's own. Returns the logits of
    /// every new token, sequence after sequence, `[Σn, vocab]`: each sequence's rows equal
    /// what [`CpuModel::forward`] returns for it alone.
    ///
    /// # Errors
    /// Checked for every sequence before any cache changes: a cache of another model, a cache
    /// too small for its new positions, a token outside the vocabulary.
    pub fn forward_batch(&self, seqs: &mut [Sequence<'_>]) -> Result<Vec<f32>, ForwardError> {
        let c = &self.config;
        let (hidden, hd, eps) = (c.hidden_size, c.head_dim, c.rms_norm_eps);
        let (q_dim, kv_dim) = (c.num_heads * hd, c.num_kv_heads * hd);
        // Each sequence's first row in the batch, its row count and its first position.
        let mut spans = Vec::with_capacity(seqs.len());
        let mut rows = 0;
        for s in seqs.iter() {
            self.check_cache(s.cache, s.tokens.len())?;
            spans.push((rows, s.tokens.len(), s.cache.len()));
            rows += s.tokens.len();
        }
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens).copied().collect();
        let mut x = embedding(&self.embed, hidden, &tokens).ok_or_else(|| {
            let token = tokens
                .iter()
                .copied()
                .find(|&t| t as usize >= c.vocab_size)
                .unwrap_or(u32::MAX);
            ForwardError::Token {
                token,
                vocab: c.vocab_size,
            }
        })?;
        let positions = spans.iter().map(|&(_, n, start)| start + n).max();
        let rope = Rope::from_inv_freqs(c.rope_style, &self.inv_freqs, positions.unwrap_or(0));
        // Rotary turns the first `rot` dimensions of each head (all of them but in hybrid
        // models).
        let rot = 2 * self.inv_freqs.len();
        for layer in &self.layers {
            let mut h = x.clone();
            rms_norm(&mut h, &layer.attn_norm, eps);
            let (attn, l) = match &layer.mixer {
                Mixer::Attention { attn, slot } => (attn, *slot),
                Mixer::Delta { net, slot } => {
                    for (s, &(row, n, _)) in seqs.iter_mut().zip(&spans) {
                        let span = row * hidden..(row + n) * hidden;
                        let o = net.forward(&h[span.clone()], hidden, s.cache.delta_mut(*slot));
                        x[span].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                    }
                    self.ffn(layer, &mut x);
                    continue;
                }
            };
            let (mut q, gate) = if attn.gated {
                split_query_gate(&matmul_t(&h, &attn.q, hidden, 2 * q_dim), hd)
            } else {
                (matmul_t(&h, &attn.q, hidden, q_dim), Vec::new())
            };
            let mut k = matmul_t(&h, &attn.k, hidden, kv_dim);
            let mut v = matmul_t(&h, &attn.v, hidden, kv_dim);
            if let Some([qb, kb, vb]) = &attn.qkv_bias {
                add_bias(&mut q, qb);
                add_bias(&mut k, kb);
                add_bias(&mut v, vb);
            }
            if let Some([qn, kn]) = &attn.qk_norm {
                rms_norm(&mut q, qn, eps);
                rms_norm(&mut k, kn, eps);
            }
            let mut att = Vec::with_capacity(q.len());
            for (s, &(row, n, start)) in seqs.iter_mut().zip(&spans) {
                let q = &mut q[row * q_dim..(row + n) * q_dim];
                let k = &mut k[row * kv_dim..(row + n) * kv_dim];
                for t in 0..n {
                    let (qt, kt) = (&mut q[t * q_dim..][..q_dim], &mut k[t * kv_dim..][..kv_dim]);
                    // Partial rotary: each head's first `rot` dimensions, the rest passed on.
                    for head in qt.chunks_exact_mut(hd).chain(kt.chunks_exact_mut(hd)) {
                        rope.apply(&mut head[..rot], start + t);
                    }
                }
                s.cache.append(l, k, &v[row * kv_dim..(row + n) * kv_dim]);
                let (keys, values) = s.cache.layer(l);
                att.extend(attention(
                    q,
                    keys,
                    values,
                    start,
                    c.num_heads,
                    c.num_kv_heads,
                    hd,
                    c.sliding_window,
                ));
            }
            if attn.gated {
                att.iter_mut()
                    .zip(&gate)
                    .for_each(|(a, g)| *a *= sigmoid(*g));
            }
            let o = matmul_t(&att, &attn.o, q_dim, hidden);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            self.ffn(layer, &mut x);
        }
        for (s, &(_, n, _)) in seqs.iter_mut().zip(&spans) {
            s.cache.commit(n);
        }
        rms_norm(&mut x, &self.output_norm, eps);
        let out = self.output.as_ref().unwrap_or(&self.embed);
        Ok(matmul_t(&x, out, hidden, c.vocab_size))
    }

    /// Checks that `cache` is this model's and has room for `n` more positions.
    fn check_cache(&self, cache: &KvCache, n: usize) -> Result<(), ForwardError> {
        let kv_dim = self.config.num_kv_heads * self.config.head_dim;
        let (model_kv, model_delta) = self.cache_layers();
        let (cache_kv, cache_delta, cache_row) = cache.shape();
        if (cache_kv, cache_delta, cache_row) != (model_kv, model_delta, kv_dim) {
            return Err(ForwardError::CacheMismatch {
                cache_kv,
                cache_delta,
                cache_row,
                model_kv,
                model_delta,
                model_row: kv_dim,
            });
        }
        let needed = cache.len() + n;
        if needed > cache.capacity() {
            return Err(ForwardError::ContextFull {
                needed,
                capacity: cache.capacity(),
            });
        }
        Ok(())
    }

    /// The feed-forward half of `layer`, added into `x`.
    fn ffn(&self, layer: &Layer, x: &mut [f32]) {
        let (hidden, eps) = (self.config.hidden_size, self.config.rms_norm_eps);
        {
            let mut h = x.to_vec();
            rms_norm(&mut h, &layer.ffn_norm, eps);
            let d = match &layer.ffn {
                Ffn::Dense(mlp) => mlp.forward(&h, hidden),
                Ffn::Moe(block) => block.forward(&h, hidden),
            };
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
    }

    /// Greedy decoding: the prompt's logits, then `max_new` tokens each the arg-max of the
    /// previous logits (ties to the lowest id, as `torch.argmax`). Returns the prompt's logits
    /// and the new tokens.
    pub fn greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
    ) -> Result<(Vec<f32>, Vec<u32>), ForwardError> {
        let mut cache = self.new_cache(prompt.len().saturating_add(max_new))?;
        let logits = self.forward(prompt, &mut cache)?;
        let vocab = self.config.vocab_size;
        let mut last = logits[logits.len().saturating_sub(vocab)..].to_vec();
        let mut out = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let next = crate::sampler::argmax(&last);
            out.push(next);
            last = self.forward(&[next], &mut cache)?;
        }
        Ok((logits, out))
    }
}

/// A stacked expert tensor converted to f32 (`[experts, rows, cols]`), one matrix per expert.
fn per_expert(all: Vec<f32>, experts: usize, name: &str) -> Result<Vec<Vec<f32>>, WeightError> {
    let per = all
        .len()
        .checked_div(experts)
        .filter(|&p| p > 0 && p * experts == all.len());
    let per = per.ok_or_else(|| WeightError::Shape {
        path: PathBuf::new(),
        name: name.into(),
        expected: vec![experts as u64],
        found: vec![all.len() as u64],
    })?;
    Ok(all.chunks_exact(per).map(<[f32]>::to_vec).collect())
}

/// Each layer's index among the layers of its kind (full attention or DeltaNet): its KV cache
/// slot or its DeltaNet state. Every layer is full attention but in hybrid models.
fn layer_slots(config: &ModelConfig) -> Vec<usize> {
    let (mut full, mut linear) = (0, 0);
    (0..config.num_layers)
        .map(|l| {
            let counter = match &config.linear {
                Some(lin) if lin.is_linear(l) => &mut linear,
                _ => &mut full,
            };
            *counter += 1;
            *counter - 1
        })
        .collect()
}

/// The query and the output gate of a gated attention projection (`[n, heads, 2·head_dim]`,
/// each head's query then its gate, as transformers' `view(…, head_dim * 2).chunk(2)`), each
/// `[n, heads·head_dim]`.
fn split_query_gate(qg: &[f32], head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let mut q = Vec::with_capacity(qg.len() / 2);
    let mut g = Vec::with_capacity(qg.len() / 2);
    for head in qg.chunks_exact(2 * head_dim) {
        q.extend_from_slice(&head[..head_dim]);
        g.extend_from_slice(&head[head_dim..]);
    }
    (q, g)
}

/// A DeltaNet layer's weights from the tensors `t` gives, reordered into the Qwen3.5 layout:
/// Qwen3-Next's interleaved projections split, llama.cpp's tiled value heads grouped again.
fn delta_net(
    config: &ModelConfig,
    lin: &LinearAttnConfig,
    source: WeightSource,
    t: &dyn Fn(LayerTensor) -> Result<Vec<f32>, WeightError>,
) -> Result<DeltaNet, WeightError> {
    use LayerTensor::*;
    let dims = DeltaDims {
        k_heads: lin.num_k_heads,
        v_heads: lin.num_v_heads,
        k_dim: lin.k_head_dim,
        v_dim: lin.v_head_dim,
        conv_kernel: lin.conv_kernel,
    };
    let hidden = config.hidden_size;
    let (mut in_qkv, mut in_z, mut in_b, mut in_a) = match lin.layout {
        DeltaLayout::Split | DeltaLayout::GgufTiled => {
            (t(LinearQkv)?, t(LinearZ)?, t(LinearB)?, t(LinearA)?)
        }
        DeltaLayout::Fused => {
            let (qkv, z) = unfuse_qkvz(&t(LinearQkvz)?, &dims, hidden);
            let (b, a) = unfuse_ba(&t(LinearBa)?, &dims, hidden);
            (qkv, z, b, a)
        }
        DeltaLayout::GgufFusedBa => {
            let (b, a) = unfuse_ba(&t(LinearBa)?, &dims, hidden);
            (t(LinearQkv)?, t(LinearZ)?, b, a)
        }
    };
    // `[conv_dim, 1, kernel]` (GGUF: `[conv_dim, kernel]`) is `[conv_dim, kernel]` row-major.
    let mut conv = t(Conv1d)?;
    let mut decay = t(ALog)?;
    if source == WeightSource::HuggingFace {
        // llama.cpp's converter stores `-exp(A_log)` (in f32, as transformers computes it).
        decay.iter_mut().for_each(|v| *v = -v.exp());
    }
    let mut dt_bias = t(DtBias)?;
    let mut out = t(LinearOut)?;
    if lin.layout == DeltaLayout::GgufTiled {
        // Every value-head dimension back from tiled to grouped order.
        let (v, kd) = (dims.v_dim, dims.k_heads * dims.k_dim);
        // The values follow the queries and keys (the shapes were checked at resolve).
        if let Some(values) = in_qkv.get_mut(2 * kd * hidden..) {
            untile_v_heads(values, &dims, v * hidden);
        }
        untile_v_heads(&mut in_z, &dims, v * hidden);
        untile_v_heads(&mut in_b, &dims, hidden);
        untile_v_heads(&mut in_a, &dims, hidden);
        if let Some(values) = conv.get_mut(2 * kd * dims.conv_kernel..) {
            untile_v_heads(values, &dims, v * dims.conv_kernel);
        }
        untile_v_heads(&mut decay, &dims, 1);
        untile_v_heads(&mut dt_bias, &dims, 1);
        for row in out.chunks_exact_mut(dims.value_dim()) {
            untile_v_heads(row, &dims, v);
        }
    }
    Ok(DeltaNet {
        dims,
        in_qkv,
        in_z,
        in_b,
        in_a,
        conv,
        decay,
        dt_bias,
        norm: t(LinearNorm)?,
        out,
        eps: config.rms_norm_eps,
    })
}

/// Reorders `w`, `v_heads` blocks of `block` values, from llama.cpp's tiled value heads
/// (`[r][k_heads]`: block `j·k_heads + g` is value head `j` of key head `g`;
/// `_LinearAttentionVReorderBase._reorder_v_heads`) to the grouped order transformers uses
/// (`[k_heads][r]`), `r = v_heads / k_heads`. Shapes were checked when the map was resolved;
/// a `w` of another length is left as it is.
fn untile_v_heads(w: &mut [f32], d: &DeltaDims, block: usize) {
    let r = d.v_heads / d.k_heads.max(1);
    if r <= 1 || w.len() != d.v_heads * block {
        return;
    }
    let tiled = w.to_vec();
    for g in 0..d.k_heads {
        for j in 0..r {
            let from = (j * d.k_heads + g) * block;
            let to = (g * r + j) * block;
            w[to..to + block].copy_from_slice(&tiled[from..from + block]);
        }
    }
}

/// Qwen3-Next's `in_proj_qkvz` rows (per key-head group: `q [k_dim]`, `k [k_dim]`,
/// `v [r·v_dim]`, `z [r·v_dim]`, `r = v_heads / k_heads`; transformers'
/// `fix_query_key_value_ordering`) as `in_proj_qkv` (all queries, all keys, all values) and
/// `in_proj_z`.
fn unfuse_qkvz(w: &[f32], d: &DeltaDims, hidden: usize) -> (Vec<f32>, Vec<f32>) {
    let r = d.v_heads / d.k_heads;
    let group = 2 * d.k_dim + 2 * r * d.v_dim;
    let rows = |g: usize, from: usize, len: usize| {
        let start = (g * group + from) * hidden;
        &w[start..start + len * hidden]
    };
    let mut qkv = Vec::with_capacity(d.conv_dim() * hidden);
    let mut z = Vec::with_capacity(d.value_dim() * hidden);
    for g in 0..d.k_heads {
        qkv.extend_from_slice(rows(g, 0, d.k_dim));
    }
    for g in 0..d.k_heads {
        qkv.extend_from_slice(rows(g, d.k_dim, d.k_dim));
    }
    for g in 0..d.k_heads {
        qkv.extend_from_slice(rows(g, 2 * d.k_dim, r * d.v_dim));
        z.extend_from_slice(rows(g, 2 * d.k_dim + r * d.v_dim, r * d.v_dim));
    }
    (qkv, z)
}

/// Qwen3-Next's `in_proj_ba` rows (per key-head group: `b [r]`, `a [r]`) as `in_proj_b` and
/// `in_proj_a`.
fn unfuse_ba(w: &[f32], d: &DeltaDims, hidden: usize) -> (Vec<f32>, Vec<f32>) {
    let r = d.v_heads / d.k_heads;
    let mut b = Vec::with_capacity(d.v_heads * hidden);
    let mut a = Vec::with_capacity(d.v_heads * hidden);
    for g in 0..d.k_heads {
        let start = g * 2 * r * hidden;
        b.extend_from_slice(&w[start..start + r * hidden]);
        a.extend_from_slice(&w[start + r * hidden..start + 2 * r * hidden]);
    }
    (b, a)
}
