//! The decoder layers' weights on the device, and the one door the forward pass takes to
//! them: [`LayerStore::layer`], asked for layer `l` at each step between the streaming hooks
//! [`LayerStore::before`] and [`LayerStore::after`].

use hoist_cuda::{DevSlice, Stream};

use super::stream::Streamer;
use crate::gpu::layers::Mat;
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
    pub(super) gate: Mat,
    pub(super) up: Mat,
    pub(super) down: Mat,
}

impl Layer {
    pub(super) fn mats(&self) -> [&Mat; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
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

    /// Every matrix of every layer, for load-time scans (types, sizes, shapes).
    pub(super) fn mats(&self) -> impl Iterator<Item = &Mat> {
        self.layers.iter().flat_map(|l| l.mats())
    }
}
