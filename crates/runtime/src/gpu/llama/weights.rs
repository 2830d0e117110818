//! The decoder layers' weights on the device, and the one door the forward pass takes to
//! them: [`LayerStore::layer`], asked for layer `l` at each step instead of iterating frozen
//! addresses, so that a placement other than all-resident changes this file, not the
//! forward pass.

use hoist_cuda::DevSlice;

use crate::gpu::layers::Mat;
use crate::gpu::GpuError;
use crate::placement::{Placement, PlacementError, Residency};

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

/// Checks `placement` against a model of `num_layers` layers and refuses what the runtime
/// does not carry out yet (anything but resident), naming the first such layer. Runs before
/// any device work.
pub(super) fn check_placement(
    placement: &Placement,
    num_layers: usize,
) -> Result<Vec<Residency>, GpuError> {
    let residency = placement.resolve(num_layers)?;
    if let Some((layer, &r)) = residency
        .iter()
        .enumerate()
        .find(|(_, r)| **r != Residency::Resident)
    {
        return Err(PlacementError::NotImplemented {
            layer,
            residency: r,
        }
        .into());
    }
    Ok(residency)
}

/// The decoder layers, placed as the model's [`Placement`] says.
///
/// The forward pass asks for layer `l` through [`LayerStore::layer`] each time it records
/// that layer's kernels. A resident layer is returned as it is: its views were made at load
/// and stay valid while the model lives, so the call costs an index and a branch.
///
/// What a streamed placement will add here (the layer-streaming issue):
/// - acquire: `layer(l)` finds (or waits for) the slot holding layer `l`: the stream waits on
///   the event recorded when the slot's copy completed, before the first launch that reads
///   it, and the copy of the next streamed layer is queued into a free slot;
/// - release: once the step's last launch reading the slot is queued, an event recorded on
///   the compute stream marks the slot free for the copy of a later layer (so the returned
///   view must not be used past the step that asked for it);
/// - graphs: a captured graph holds the addresses it was recorded with, so it is only valid
///   for resident layers; [`LayerStore::capturable`] says whether the decode step may be
///   captured, and capture is refused otherwise (or, later, one graph per slot assignment).
pub(super) struct LayerStore {
    /// Layer `l`'s residency, as checked by [`check_placement`].
    residency: Vec<Residency>,
    /// The resident layers' weights, at their layer's index.
    resident: Vec<Layer>,
}

impl LayerStore {
    /// The store of `layers`, all resident (what [`check_placement`] admits today).
    pub(super) fn new(layers: Vec<Layer>, residency: Vec<Residency>) -> LayerStore {
        assert_eq!(
            layers.len(),
            residency.len(),
            "one residency per built layer"
        );
        assert!(
            residency.iter().all(|r| *r == Residency::Resident),
            "only resident layers are built (check_placement refuses the others)"
        );
        LayerStore {
            residency,
            resident: layers,
        }
    }

    /// Decoder layers in the model.
    pub(super) fn len(&self) -> usize {
        self.residency.len()
    }

    /// Layer `l`'s weights for the step being recorded (see the type's docs for what a
    /// streamed layer will do here).
    #[inline]
    pub(super) fn layer(&self, l: usize) -> Result<&Layer, GpuError> {
        match self.residency[l] {
            Residency::Resident => Ok(&self.resident[l]),
            residency => Err(PlacementError::NotImplemented {
                layer: l,
                residency,
            }
            .into()),
        }
    }

    /// Whether a step over these layers may be captured into a CUDA graph: only when every
    /// layer is resident (a graph replays fixed addresses).
    pub(super) fn capturable(&self) -> bool {
        self.residency.iter().all(|r| *r == Residency::Resident)
    }

    /// Every matrix of the resident layers, for load-time scans (types, sizes, shapes).
    pub(super) fn mats(&self) -> impl Iterator<Item = &Mat> {
        self.resident.iter().flat_map(|l| l.mats())
    }
}
