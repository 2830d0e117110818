//! Sizing a model for the placement planner ([`crate::placement::Placement::plan`]): what
//! each layer's matrices take in GPU memory, what stays resident regardless, what one session
//! reserves; and the streamed layers' matrices for the [`super::stream::Streamer`].

use hoist_format::TensorTable;

use super::session::buffer_sizes;
use super::stream::{pack, StreamedMat};
use crate::config::ModelConfig;
use crate::gpu::layers::WType;
use crate::gpu::{GpuError, GpuOptions};
use crate::placement::{default_host_budget, LayerPlan, ModelBytes, Placed};
use crate::weights::{LayerTensor, WeightId, WeightMap};

/// GPU memory kept free beyond a session's buffers: cuBLAS's workspace, the driver.
const MARGIN_BYTES: u64 = 512 << 20;

/// A layer's matrices, in the order the streamer packs them.
const MATS: [LayerTensor; 7] = [
    LayerTensor::Q,
    LayerTensor::K,
    LayerTensor::V,
    LayerTensor::O,
    LayerTensor::Gate,
    LayerTensor::Up,
    LayerTensor::Down,
];

/// Whether `t` is a matrix of a sparse layer's feed-forward block.
fn is_moe_matrix(t: LayerTensor) -> bool {
    use LayerTensor::*;
    matches!(
        t,
        Router(_) | Expert(..) | Experts(_) | SharedGate | SharedUp | SharedDown | SharedExpertGate
    )
}

/// The planner's inputs and outputs for one model.
pub(super) struct Sizing {
    /// The plan.
    pub(super) plan: LayerPlan,
    /// GPU bytes one session of `options.context` positions takes, margin included.
    pub(super) reserve_bytes: u64,
    /// Table indices of the streamed layers' matrices (not loaded onto the GPU).
    pub(super) streamed_tensors: Vec<usize>,
    /// Each streamed layer's matrices, packed.
    pub(super) streamed_mats: Vec<Vec<StreamedMat>>,
}

/// Bytes tensor `i` takes in GPU memory: its file bytes (the kernels read every type as it is
/// in the file).
fn gpu_bytes(table: &TensorTable, i: usize) -> u64 {
    table.tensors[i].len
}

/// The type the kernels read tensor `i` as; an error naming it if they do not read its type
/// (which `check_dtypes` refused before).
fn wtype(table: &TensorTable, i: usize) -> Result<WType, GpuError> {
    let t = &table.tensors[i];
    WType::of(t.dtype).ok_or_else(|| super::load::unsupported_dtype(&t.name, t.dtype))
}

/// Sizes the model, resolves the budgets (`free_bytes` of GPU memory now) and plans.
pub(super) fn plan(
    table: &TensorTable,
    map: &WeightMap,
    config: &ModelConfig,
    options: &GpuOptions,
    free_bytes: u64,
) -> Result<Sizing, GpuError> {
    let mut layer_mats: Vec<Vec<usize>> = Vec::with_capacity(config.num_layers);
    for l in 0..config.num_layers {
        let sparse = config.moe.as_ref().is_some_and(|m| m.is_sparse(l));
        // A sparse layer's matrices: attention's, then the router's, the experts' and the
        // shared expert's (its vectors are small, with the norms).
        let tensors: Vec<LayerTensor> = match sparse {
            false => MATS.to_vec(),
            true => MATS[..4]
                .iter()
                .copied()
                .chain(
                    LayerTensor::for_layer(config, l, map.source)
                        .into_iter()
                        .filter(|t| is_moe_matrix(*t)),
                )
                .collect(),
        };
        let ids = tensors
            .iter()
            .map(|&t| {
                map.index(WeightId::Layer(l, t)).ok_or_else(|| {
                    GpuError::Unsupported(format!(
                        "tensor {} is missing from the checkpoint",
                        map.source.name(WeightId::Layer(l, t))
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        layer_mats.push(ids);
    }
    let packed: Vec<(Vec<usize>, usize)> = layer_mats
        .iter()
        .map(|ids| {
            let bytes: Vec<usize> = ids.iter().map(|&i| gpu_bytes(table, i) as usize).collect();
            pack(&bytes)
        })
        .collect();
    let in_layers: std::collections::HashSet<usize> =
        layer_mats.iter().flatten().copied().collect();
    let fixed_bytes: u64 = map
        .selection()
        .into_iter()
        .filter(|i| !in_layers.contains(i))
        .map(|i| gpu_bytes(table, i))
        .sum();
    let bytes = ModelBytes {
        fixed_bytes,
        layer_bytes: packed.iter().map(|(_, total)| *total as u64).collect(),
    };

    // One session's buffers, computed as `GpuSession::new` will (the activation type as the
    // builder will choose it).
    let wtypes: Vec<WType> = map
        .selection()
        .into_iter()
        .filter(|i| table.tensors[*i].shape.len() == 2)
        .map(|i| wtype(table, i))
        .collect::<Result<_, _>>()?;
    let act = super::load::activation_type(&wtypes);
    let mut scratch_values = None;
    for &i in layer_mats.iter().flatten() {
        if wtype(table, i)?.elem() != Some(act.elem()) {
            let values = table.tensors[i].elements() as usize;
            scratch_values = scratch_values.max(Some(values));
        }
    }
    let context = options
        .context
        .unwrap_or(crate::gpu::options::DEFAULT_RESERVE_CONTEXT)
        .clamp(1, super::MAX_CONTEXT);
    let (chunk, _, sizes) = buffer_sizes(config, act, context, scratch_values);
    let moe_sizes = super::moe::moe_buffer_sizes(config, act, chunk);
    let reserve_bytes = sizes.iter().chain(&moe_sizes).sum::<usize>() as u64 + MARGIN_BYTES;

    let budget = options.placement.budget();
    let gpu_budget = budget
        .gpu_bytes
        .unwrap_or_else(|| free_bytes.saturating_sub(reserve_bytes));
    let host_budget = match budget.host_bytes {
        Some(b) => b,
        None => hoist_io::cache::MemInfo::read()
            .map(|m| default_host_budget(m.available_bytes))
            .unwrap_or(0),
    };
    let plan = options.placement.plan(&bytes, gpu_budget, host_budget)?;
    if config.moe.is_some() && plan.streams() {
        // Expert streaming is not built: every layer must be resident.
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let all = bytes.fixed_bytes + bytes.layer_bytes.iter().sum::<u64>();
        return Err(GpuError::Unsupported(format!(
            "this mixture-of-experts model's weights take {:.2} GiB and a session of {context} positions {:.2} GiB; the GPU budget is {:.2} GiB ({}), and the GPU runtime does not stream experts yet: free GPU memory, give a shorter --context, or run it with --device cpu",
            gib(all),
            gib(reserve_bytes),
            gib(gpu_budget),
            plan.summary(),
        )));
    }
    if plan.gpu_bytes + reserve_bytes > free_bytes {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(GpuError::Unsupported(format!(
            "the weights placed on the GPU take {:.2} GiB ({}) and a session of {context} positions {:.2} GiB, but the GPU has {:.2} GiB free; give a smaller --gpu-memory (hoist streams the layers that do not fit), a shorter --context, or free GPU memory",
            gib(plan.gpu_bytes),
            plan.summary(),
            gib(reserve_bytes),
            gib(free_bytes),
        )));
    }

    let mut streamed_tensors = Vec::new();
    let mut streamed_mats = Vec::new();
    for (l, place) in plan.layers.iter().enumerate() {
        if *place == Placed::Resident {
            continue;
        }
        let (offsets, _) = &packed[l];
        let mats = layer_mats[l]
            .iter()
            .zip(offsets)
            .map(|(&i, &offset)| {
                let t = &table.tensors[i];
                streamed_tensors.push(i);
                Ok(StreamedMat {
                    tensor: i,
                    file: t.file,
                    file_offset: t.offset,
                    offset,
                    bytes: gpu_bytes(table, i) as usize,
                    wtype: wtype(table, i)?,
                    rows: t.shape.first().copied().unwrap_or(1) as usize,
                })
            })
            .collect::<Result<_, GpuError>>()?;
        streamed_mats.push(mats);
    }
    Ok(Sizing {
        plan,
        reserve_bytes,
        streamed_tensors,
        streamed_mats,
    })
}
