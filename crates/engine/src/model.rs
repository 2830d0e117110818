//! The model on its device, and a session that remembers which tokens its KV cache holds.
//!
//! Everything here lives on the engine's owner thread ([`crate::Engine`]): the GPU model is not
//! `Send`, so it is made, used and dropped there.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use hoist_format::TensorTable;
use hoist_runtime::cpu::model::open_checkpoint;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::generate::{CpuSession, LogitsModel};
use hoist_runtime::gpu::CachePolicy;
use hoist_runtime::gpu::{GpuModel, GpuOptions, GpuSession, LoadStats};
use hoist_runtime::placement::Placement;
use hoist_runtime::{ModelConfig, RuntimeError, WeightMap};

use crate::EngineError;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The f32 CPU reference: slow, for tiny models and tests.
    Cpu,
    /// The GPU runtime on `cuda:N`.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A checkpoint's tensors and model configuration, parsed but not yet read: what the owner
/// thread loads. Opening it first lets a caller size a progress display
/// ([`Weights::weight_bytes`]) and check the configuration before a load of many gigabytes.
#[derive(Debug)]
pub struct Weights {
    path: PathBuf,
    table: TensorTable,
    config: ModelConfig,
    map: WeightMap,
    weight_bytes: u64,
    /// Seconds parsing the checkpoint took: part of the load's time.
    open_seconds: f64,
}

impl Weights {
    /// Parses the checkpoint at `path` (a GGUF file, or a Hugging Face directory or file in one
    /// with its `config.json`) and finds the tensors the model needs; `device` only names the
    /// target in the error.
    pub fn open(path: &Path, device: Device) -> Result<Weights, EngineError> {
        let t0 = Instant::now();
        let opened = open_checkpoint(path).and_then(|(table, config)| {
            let map = WeightMap::resolve(&table, &config)?;
            let bytes = map.selection().iter().map(|&i| table.tensors[i].len).sum();
            Ok((table, config, map, bytes))
        });
        let (table, config, map, weight_bytes) = opened.map_err(|e| load_error(path, device, e))?;
        Ok(Weights {
            path: path.to_path_buf(),
            table,
            config,
            map,
            weight_bytes,
            open_seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The checkpoint's tensor table.
    pub fn table(&self) -> &TensorTable {
        &self.table
    }

    /// Which of the table's tensors the model reads, and as what.
    pub fn map(&self) -> &WeightMap {
        &self.map
    }

    /// Bytes of the tensors the model reads: the total of a load's progress counter.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

/// The error of a load of `path` onto `device`.
fn load_error(path: &Path, device: Device, source: RuntimeError) -> EngineError {
    EngineError::Load {
        path: path.to_path_buf(),
        device: match device {
            Device::Cpu => None,
            Device::Cuda(_) => Some(device.to_string()),
        },
        source: Box::new(source),
    }
}

/// A model on its device.
pub(crate) enum Model {
    /// The f32 CPU reference (both boxed: the two differ in size).
    Cpu(Box<CpuModel>),
    /// The GPU runtime.
    Gpu(Box<GpuModel>),
}

impl Model {
    /// Loads `weights` onto `device` (the placement applies to the GPU, whose budget leaves
    /// room for a session of `context` positions; the CPU reference holds every weight in host
    /// memory), counting bytes read into `progress`, under the page-cache policy `cache`;
    /// returns the model with the seconds the load took, parsing the checkpoint included.
    pub(crate) fn load(
        weights: Weights,
        device: Device,
        placement: Placement,
        (progress, cache): (Option<Arc<AtomicU64>>, CachePolicy),
        context: usize,
    ) -> Result<(Model, f64), EngineError> {
        if let Device::Cuda(ordinal) = device {
            let read = (progress, cache);
            let (gpu, seconds) = load_gpu(weights, ordinal, placement, read, Some(context))?;
            return Ok((Model::Gpu(Box::new(gpu)), seconds));
        }
        let t0 = Instant::now();
        let model = CpuModel::from_table_with_progress(&weights.table, weights.config, progress)
            .map_err(|e| load_error(&weights.path, device, e))?;
        let seconds = weights.open_seconds + t0.elapsed().as_secs_f64();
        Ok((Model::Cpu(Box::new(model)), seconds))
    }

    /// What the GPU load took (`None` on the CPU).
    pub(crate) fn gpu_stats(&self) -> Option<&LoadStats> {
        match self {
            Model::Cpu(_) => None,
            Model::Gpu(m) => Some(m.stats()),
        }
    }

    /// A fresh sequence with a KV cache of `context` positions.
    pub(crate) fn session(&self, context: usize) -> Result<Session<'_>, EngineError> {
        let inner = match self {
            Model::Cpu(m) => CpuSession::new(m, context)
                .map(Inner::Cpu)
                .map_err(RuntimeError::from),
            Model::Gpu(m) => m.session(context).map(|s| Inner::Gpu(Box::new(s))),
        }
        .map_err(|source| EngineError::KvCache {
            context,
            source: Box::new(source),
        })?;
        Ok(Session {
            inner,
            cached: Vec::new(),
        })
    }
}

/// The device's own session.
enum Inner<'m> {
    Cpu(CpuSession<'m>),
    Gpu(Box<GpuSession<'m>>),
}

/// A sequence on a [`Model`] that knows which tokens its KV cache holds, so that a request
/// extending them feeds only what is new.
pub(crate) struct Session<'m> {
    inner: Inner<'m>,
    /// Every token fed so far, in order: the positions the KV cache holds.
    cached: Vec<u32>,
}

impl Session<'_> {
    /// Positions the KV cache holds.
    pub(crate) fn capacity(&self) -> usize {
        match &self.inner {
            Inner::Cpu(s) => s.capacity(),
            Inner::Gpu(s) => s.capacity(),
        }
    }

    /// The tokens the KV cache holds, in order.
    pub(crate) fn cached(&self) -> &[u32] {
        &self.cached
    }

    /// Forgets the sequence.
    pub(crate) fn clear(&mut self) {
        match &mut self.inner {
            Inner::Cpu(s) => s.clear(),
            Inner::Gpu(s) => s.clear(),
        }
        self.cached.clear();
    }

    /// Prepares to run `ids`: returns how many of its leading tokens the cache already holds
    /// (so only the rest is fed), or clears the cache and returns 0 when `ids` does not extend
    /// the cached sequence. At least one token is always left to feed (the cache cannot drop
    /// positions, and the last token's logits are needed).
    pub(crate) fn reuse(&mut self, ids: &[u32]) -> usize {
        let n = crate::pool::reusable(&self.cached, ids);
        if n == 0 && !self.cached.is_empty() {
            self.clear();
        }
        n
    }
}

/// One decode step for several sessions of one model: session `i` is fed `tokens[i]`; returns
/// each one's logits after it, as one batched forward pass (each weight read once for all) on
/// the CPU reference and on the GPU runtime (which steps them one after another where it cannot
/// batch: `GpuSession::batchable`). On an error every session is cleared (what a failed step
/// left is unknown).
pub(crate) fn decode_batch(
    sessions: &mut [&mut Session<'_>],
    tokens: &[u32],
) -> Result<Vec<Vec<f32>>, RuntimeError> {
    assert_eq!(sessions.len(), tokens.len(), "one token per session");
    let on_cpu = sessions.iter().all(|s| matches!(s.inner, Inner::Cpu(_)));
    let on_gpu = sessions.iter().all(|s| matches!(s.inner, Inner::Gpu(_)));
    let r = if on_gpu {
        let mut gpu: Vec<&mut GpuSession<'_>> = sessions
            .iter_mut()
            .filter_map(|s| match &mut s.inner {
                Inner::Gpu(g) => Some(&mut **g),
                Inner::Cpu(_) => None,
            })
            .collect();
        GpuSession::next_logits_batch(&mut gpu, tokens)
    } else if on_cpu {
        let mut cpu: Vec<&mut CpuSession<'_>> = sessions
            .iter_mut()
            .filter_map(|s| match &mut s.inner {
                Inner::Cpu(c) => Some(c),
                Inner::Gpu(_) => None,
            })
            .collect();
        let fed: Vec<&[u32]> = tokens.iter().map(std::slice::from_ref).collect();
        CpuSession::next_logits_batch(&mut cpu, &fed)
    } else {
        sessions
            .iter_mut()
            .zip(tokens)
            .map(|(s, &t)| match &mut s.inner {
                Inner::Cpu(c) => c.next_logits(&[t]),
                Inner::Gpu(g) => g.next_logits(&[t]),
            })
            .collect()
    };
    match r {
        Ok(logits) => {
            for (s, &t) in sessions.iter_mut().zip(tokens) {
                s.cached.push(t);
            }
            Ok(logits)
        }
        Err(e) => {
            sessions.iter_mut().for_each(|s| s.clear());
            Err(e)
        }
    }
}

// The one forwarding of the runtime's model calls: it keeps `cached` in step with the KV cache.
impl LogitsModel for Session<'_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let r = match &mut self.inner {
            Inner::Cpu(s) => s.next_logits(tokens),
            Inner::Gpu(s) => s.next_logits(tokens),
        };
        match r {
            Ok(logits) => {
                self.cached.extend_from_slice(tokens);
                Ok(logits)
            }
            Err(e) => {
                // What a failed step left in the cache is unknown: start over next time.
                self.clear();
                Err(e)
            }
        }
    }

    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        let Inner::Gpu(s) = &mut self.inner else {
            return None;
        };
        // The tokens fed: `first`, then each one `next` accepts, up to what the model fed.
        let mut chosen = vec![first];
        let r = s.decode_greedy(first, max_feeds, &mut |t| {
            chosen.push(t);
            next(t)
        });
        match r {
            Ok(fed) => {
                self.cached.extend_from_slice(&chosen[..fed]);
                debug_assert_eq!(
                    self.cached.len(),
                    s.len(),
                    "cached tokens vs cache positions"
                );
                Some(Ok(fed))
            }
            Err(e) => {
                self.clear();
                Some(Err(e))
            }
        }
    }
}

/// Loads `weights` onto `cuda:ordinal` and runs [`hoist_runtime::gpu::bench::measure`] on it,
/// on the calling thread (the model never leaves it): a prefill of `prompt_tokens` and
/// `decode_tokens` decode steps, against the GPU's own limits. The weights are read counting
/// into `progress`, under the page-cache policy `cache`. `on_loaded` runs between the load and
/// the measurement (a caller's progress display ends there).
pub fn benchmark(
    weights: Weights,
    ordinal: usize,
    placement: Placement,
    read: (Option<Arc<AtomicU64>>, CachePolicy),
    (prompt_tokens, decode_tokens): (usize, usize),
    on_loaded: &mut dyn FnMut(),
) -> Result<Benchmark, EngineError> {
    let path = weights.path.clone();
    // The benchmark's session: the prompt, the decode steps and one more.
    let context = prompt_tokens + decode_tokens + 1;
    let loaded = load_gpu(weights, ordinal, placement, read, Some(context));
    on_loaded();
    let (gpu, load_seconds) = loaded?;
    let report = hoist_runtime::gpu::bench::measure(&gpu, prompt_tokens, decode_tokens).map_err(
        |source| EngineError::Benchmark {
            path,
            source: Box::new(source),
        },
    )?;
    Ok(Benchmark {
        report,
        load: gpu.stats().clone(),
        load_seconds,
    })
}

/// Loads `weights` onto `cuda:ordinal`, leaving room for a session of `context` positions
/// (`None`: the runtime's default); returns the model with the seconds the load took,
/// parsing the checkpoint included.
fn load_gpu(
    weights: Weights,
    ordinal: usize,
    placement: Placement,
    (progress, cache): (Option<Arc<AtomicU64>>, CachePolicy),
    context: Option<usize>,
) -> Result<(GpuModel, f64), EngineError> {
    let t0 = Instant::now();
    // The environment's overrides (HOIST_NO_GRAPHS, …) are read here, once per load; an
    // invalid value is a load error naming the variable.
    let options = GpuOptions {
        ordinal,
        progress,
        placement,
        context,
        cache,
        ..Default::default()
    }
    .with_env_overrides()
    .map_err(|e| load_error(&weights.path, Device::Cuda(ordinal), e.into()))?;
    let gpu = GpuModel::from_table(&weights.table, weights.config, &options)
        .map_err(|e| load_error(&weights.path, Device::Cuda(ordinal), e))?;
    Ok((gpu, weights.open_seconds + t0.elapsed().as_secs_f64()))
}

/// What [`benchmark`] measured.
#[derive(Clone, Debug)]
pub struct Benchmark {
    /// Speeds against the GPU's limits.
    pub report: hoist_runtime::gpu::bench::SpeedReport,
    /// What the load took, part by part.
    pub load: LoadStats,
    /// Seconds of the whole load.
    pub load_seconds: f64,
}
