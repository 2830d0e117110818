//! `device="cuda:N"`: loads through `hoist-cuda` (pinned staging ring, async copies, cuFile
//! where it is really direct) into device allocations that DLPack consumers then own.
//!
//! Each exported tensor holds an `Arc` of the load's `GpuTensors`, so the device memory is
//! freed (`cuMemFree`, on whichever thread drops the last tensor) when the last tensor of the
//! load is gone. CUDA is only touched after `hoist_cuda::probe` has checked the driver
//! library can be loaded: without a GPU every call is a `DeviceError`, never a panic.

use std::sync::{Arc, Mutex};

use hoist_cuda::{CudaError, GpuConfig, GpuTensors};
use hoist_format::TensorTable;
use hoist_io::{EngineConfig, PlanConfig};

use crate::dlpack::{self, DLDevice, Export, Keepalive};
use crate::errors::Error;
use crate::{export_type, Tensor};

impl From<CudaError> for Error {
    fn from(e: CudaError) -> Error {
        let msg = e.to_string();
        match e {
            CudaError::Io(io) => io.into(),
            CudaError::FileChanged { .. } => Error::Checkpoint(msg),
            CudaError::CufileRead { .. } | CudaError::File { .. } => Error::Io(msg),
            CudaError::Plan(_) => Error::Internal(msg),
            _ => Error::Device(msg),
        }
    }
}

/// Checks that cuda:`n` is usable (driver, device, ordinal); opens its context once.
/// A success is remembered (the context stays open for the process), so that loads after the
/// first pay nothing for it.
pub fn check(n: u32) -> Result<(), Error> {
    static USABLE: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let mut usable = USABLE.lock().unwrap_or_else(|p| p.into_inner());
    if usable.contains(&n) {
        return Ok(());
    }
    hoist_cuda::probe(n as usize).map_err(|e| Error::Device(format!("cuda:{n}: {e}")))?;
    usable.push(n);
    Ok(())
}

/// Loads `indices` onto cuda:`n`; tensors in file order.
pub fn load(
    table: &TensorTable,
    indices: &[usize],
    engine: &EngineConfig,
    n: u32,
    bf16_as_u16: bool,
) -> Result<Vec<Tensor>, Error> {
    check(n)?;
    let plan = PlanConfig {
        chunk_bytes: hoist_cuda::DEFAULT_GPU_CHUNK_BYTES,
        ..PlanConfig::default()
    };
    let gpu = GpuConfig {
        ordinal: n as usize,
        ..GpuConfig::default()
    };
    let (tensors, _report) = hoist_cuda::load_to_gpu(table, indices, plan, engine, &gpu, None)?;
    let tensors = Arc::new(tensors);
    let owner: Keepalive = tensors.clone() as Arc<GpuTensors> as Keepalive;
    let mut out: Vec<(Option<usize>, Tensor)> = tensors
        .tensors()
        .iter()
        .map(|t| {
            let (dtype, shape, raw) = export_type(&t.info, bf16_as_u16);
            let empty = t.info.len == 0 || t.device_ptr == 0;
            let tensor = Tensor {
                name: t.info.name.clone(),
                dtype: t.info.dtype.name(),
                shape: t.info.shape.clone(),
                nbytes: t.info.len,
                ggml_type: match t.info.dtype {
                    hoist_format::DType::Ggml(g) => Some(g.0),
                    _ => None,
                },
                raw,
                export: Export {
                    // Zero-size tensors point at a dummy address that is never dereferenced.
                    data: if empty {
                        dlpack::empty_data()
                    } else {
                        t.device_ptr as usize
                    },
                    device: DLDevice {
                        device_type: dlpack::KDL_CUDA,
                        device_id: t.ordinal as i32,
                    },
                    dtype,
                    shape,
                    keepalive: if empty { None } else { Some(owner.clone()) },
                },
            };
            (table.index_of(&t.info.name), tensor)
        })
        .collect();
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, t)| t).collect())
}
