//! Reading tensors from checkpoint files into memory, as fast as the storage allows.
//!
//! [`plan::Plan`] turns a selection of a [`hoist_format::TensorTable`] into few, large,
//! aligned reads; [`engine::execute`] runs them with io_uring, thread pools or mmap into a
//! [`sink::Sink`]; [`host::HostSink`] is the sink whose destinations are final host buffers.
//! [`load_host`] puts the three together.

pub mod cache;
pub mod engine;
pub mod host;
pub mod plan;
pub mod residency;
pub mod sink;

pub use cache::{CacheDecision, CachePolicy};
pub use engine::{execute, Backend, EngineConfig, IoError, LoadReport, Method};
pub use host::{HostBuf, HostSink, HostTensor, OnTensor};
pub use plan::{Plan, PlanConfig};
pub use sink::{CompletionTracker, Sink, SinkError, Staging};

use hoist_format::TensorTable;

/// A load into host memory failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    /// The destination buffers could not be allocated.
    #[error(transparent)]
    Alloc(#[from] host::AllocError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Loads the tensors `selection` (indices into `table.tensors`) into host memory; calls
/// `on_tensor` with each as it completes, and returns all of them in file order.
pub fn load_host(
    table: &TensorTable,
    selection: &[usize],
    plan_config: PlanConfig,
    engine_config: &EngineConfig,
    on_tensor: Option<&OnTensor<'_>>,
) -> Result<(Vec<HostTensor>, LoadReport), LoadError> {
    let start = std::time::Instant::now();
    let plan = Plan::new(table, selection, plan_config)?;
    let sink = HostSink::new(table, &plan, on_tensor)?;
    tracing::debug!(
        buffer_bytes = plan.buffer_bytes(),
        seconds = start.elapsed().as_secs_f64(),
        "host buffers reserved"
    );
    let report = execute(&plan, &sink, engine_config)?;
    Ok((sink.into_tensors(), report))
}
