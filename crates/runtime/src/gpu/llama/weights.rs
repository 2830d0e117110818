//! The decoder layers' weights on the device, and the one door the forward pass takes to
//! them: [`LayerStore::layer`], asked for layer `l` at each step between the streaming hooks
//! [`LayerStore::before`] and [`LayerStore::after`].

use hoist_cuda::{DevSlice, Stream};

use super::stream::Streamer;
use crate::gpu::layers::{Act, Mat, MoeFfn};
use crate::gpu::GpuError;

/// One decoder block's weights on the device.
pub(super) struct Layer {
    pub(super) attn_norm: DevSlice<f32>,
    pub(super) q: Mat,
    pub(super) k: Mat,
    pub(super) v: Mat,
    pub(super) o: Mat,
    /// f32 q, k, v biases (Qwen2); empty views when absent.
    pub(super) qkv_bias: [DevSlice<f32>; 3],
    /// f32 per-head q and k norms (Qwen3).
    pub(super) qk_norm: Option<[DevSlice<f32>; 2]>,
    pub(super) ffn_norm: DevSlice<f32>,
    pub(super) ffn: Ffn,
}

/// A layer's feed-forward block.
pub(super) enum Ffn {
    /// SwiGLU: gate, up, down.
    Dense { gate: Mat, up: Mat, down: Mat },
    /// Routed experts (a sparse layer of a mixture-of-experts model).
    Moe(MoeFfn),
}

impl Layer {
    /// The matrices every token of a step reads: attention's, and the dense feed-forward's or
    /// the sparse layer's router and shared expert (not its routed experts: [`Layer::experts`]).
    pub(super) fn mats(&self) -> Vec<&Mat> {
        let mut m = vec![&self.q, &self.k, &self.v, &self.o];
        match &self.ffn {
            Ffn::Dense { gate, up, down } => m.extend([gate, up, down]),
            Ffn::Moe(f) => {
                m.push(&f.router);
                if let Some(s) = &f.shared {
                    m.extend([&s.gate, &s.up, &s.down, &s.gate_inp]);
                }
            }
        }
        m
    }

    /// The routed experts' matrices (none in a dense layer).
    pub(super) fn experts(&self) -> impl Iterator<Item = &Mat> {
        let experts: &[[Mat; 3]] = match &self.ffn {
            Ffn::Moe(f) => &f.experts,
            Ffn::Dense { .. } => &[],
        };
        experts.iter().flatten()
    }

    /// Bytes of weights one decoded token reads: [`Layer::mats`] and `top_k` experts (of the
    /// experts' mean size).
    pub(super) fn bytes_per_token(&self) -> usize {
        let fixed: usize = self.mats().iter().map(|m| m.bytes()).sum();
        match &self.ffn {
            Ffn::Moe(f) => {
                let all: usize = self.experts().map(|m| m.bytes()).sum();
                fixed + all * f.top_k / f.experts.len().max(1)
            }
            Ffn::Dense { .. } => fixed,
        }
    }
}

/// The decoder layers, placed as the model's [`crate::placement::LayerPlan`] says.
///
/// The forward pass asks for layer `l` through [`LayerStore::layer`] each time it records
/// that layer's kernels, between [`LayerStore::before`] and [`LayerStore::after`]. A resident
/// layer's views were made at load and stay valid while the model lives; a streamed layer's
/// views point into its fixed slot, whose contents the streamer ([`Streamer`]) replaces each
/// step: `before` makes the compute stream wait for the layer's copy, `after` releases the
/// slot to the next layer it serves. The views must not be used outside that bracket.
pub(super) struct LayerStore {
    /// Every layer's weights, at its index.
    layers: Vec<Layer>,
    /// The streamed layers' slots and copies (`None` when every layer is resident).
    streamer: Option<Streamer>,
}

impl LayerStore {
    /// The store of `layers`, streamed as `streamer` says.
    pub(super) fn new(layers: Vec<Layer>, streamer: Option<Streamer>) -> LayerStore {
        LayerStore { layers, streamer }
    }

    /// Decoder layers in the model.
    pub(super) fn len(&self) -> usize {
        self.layers.len()
    }

    /// Layer `l`'s weights for the step being recorded (valid between `before(l)` and
    /// `after(l)` for a streamed layer).
    #[inline]
    pub(super) fn layer(&self, l: usize) -> &Layer {
        &self.layers[l]
    }

    /// Starts a step of `n` tokens: queues the first streamed layers' copies.
    pub(super) fn begin_step(&self, compute: &Stream, n: usize) -> Result<(), GpuError> {
        match &self.streamer {
            Some(s) => s.begin_step(compute, n),
            None => Ok(()),
        }
    }

    /// Whether layer `l`'s feed-forward runs on the host in a step of `n` tokens (a hybrid
    /// layer in decode).
    #[inline]
    pub(super) fn ffn_on_host(&self, l: usize, n: usize) -> bool {
        self.streamer.as_ref().is_some_and(|s| s.ffn_on_host(l, n))
    }

    /// Before layer `l`'s kernels are queued on `compute`.
    #[inline]
    pub(super) fn before(&self, l: usize, compute: &Stream) -> Result<(), GpuError> {
        match &self.streamer {
            Some(s) => s.before(l, compute),
            None => Ok(()),
        }
    }

    /// After layer `l`'s kernels are queued on `compute`.
    #[inline]
    pub(super) fn after(&self, l: usize, compute: &Stream) -> Result<(), GpuError> {
        match &self.streamer {
            Some(s) => s.after(l, compute),
            None => Ok(()),
        }
    }

    /// Whether a step over these layers may be captured into a CUDA graph: unless some layer
    /// is read from the file at each step (host work a graph cannot replay).
    pub(super) fn capturable(&self) -> bool {
        self.streamer.as_ref().is_none_or(|s| s.capturable())
    }

    /// The streamer, when some layer is streamed.
    pub(super) fn streamer(&self) -> Option<&Streamer> {
        self.streamer.as_ref()
    }

    /// Every matrix every token reads ([`Layer::mats`]) of every layer, for load-time scans
    /// (types, sizes, shapes).
    pub(super) fn mats(&self) -> impl Iterator<Item = &Mat> {
        self.layers.iter().flat_map(|l| l.mats())
    }

    /// Every routed expert's matrices of every layer.
    pub(super) fn experts(&self) -> impl Iterator<Item = &Mat> {
        self.layers.iter().flat_map(|l| l.experts())
    }

    /// Values of the activation type `act` each sparse layer's batched prefill converts at once
    /// ([`MoeFfn::batched_scratch_values`]).
    pub(super) fn batched_scratch_values(&self, act: Act) -> impl Iterator<Item = usize> + '_ {
        self.layers.iter().filter_map(move |l| match &l.ffn {
            Ffn::Moe(f) => Some(f.batched_scratch_values(act)),
            Ffn::Dense { .. } => None,
        })
    }

    /// Bytes of weights one decoded token reads in the decoder layers.
    pub(super) fn bytes_per_token(&self) -> usize {
        self.layers.iter().map(|l| l.bytes_per_token()).sum()
    }
}
