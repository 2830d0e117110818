//! Reading tensors from checkpoint files into memory, as fast as the storage allows.
//!
//! [`plan::Plan`] turns a selection of a [`hoist_format::TensorTable`] into few, large,
//! aligned reads; [`engine::execute`] runs them with io_uring, thread pools or mmap into a
//! [`sink::Sink`]; [`host::HostSink`] is the sink whose destinations are final host buffers.
//! [`load_host`] puts the three together; [`load_host_sharded`] loads one tensor-parallel
//! rank's slices ([`shard`]).

pub mod cache;
pub mod engine;
pub mod host;
pub mod plan;
pub mod residency;
pub mod shard;
pub mod sink;

pub use cache::{CacheDecision, CachePolicy};
pub use engine::{execute, Backend, EngineConfig, IoError, LoadReport, Method};
pub use host::{HostBuf, HostSink, HostTensor, OnTensor};
pub use plan::{Plan, PlanConfig};
pub use shard::{Shard, ShardConfig, ShardError, ShardPlan};
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
    /// A shard could not be planned (boxed: it is large, and rare).
    #[error(transparent)]
    Shard(Box<ShardError>),
}

impl From<ShardError> for LoadError {
    fn from(e: ShardError) -> LoadError {
        LoadError::Shard(Box::new(e))
    }
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

/// What one virtual tensor of a sharded load's batch becomes.
#[derive(Clone, Copy)]
enum Item {
    /// Part `0` of the shard plan, read straight into its buffer (whole or contiguous slice).
    Direct(usize),
    /// Span `1` of strided part `0`, gathered into the part's buffer.
    Span(usize, usize),
}

/// Loads one rank's part of `plan` (made from `table`) into host memory: whole tensors and
/// contiguous slices are planned and read like tensors of their byte ranges, straight into
/// their buffers; strided slices are read as their spans, in batches of about
/// [`ShardConfig::batch_bytes`] of spans, each gathered into the slice's own buffer and freed
/// before the next batch. Returns the tensors (slices with the sliced shape) in file order of
/// their sources, and the engine reports of all batches merged.
pub fn load_host_sharded(
    table: &TensorTable,
    plan: &ShardPlan,
    plan_config: PlanConfig,
    engine_config: &EngineConfig,
) -> Result<(Vec<HostTensor>, LoadReport), LoadError> {
    use shard::Part;
    use std::sync::Arc;

    // Batches of (file range as a tensor, what it is). The first holds every direct part and
    // the first spans, so that an unsharded-looking plan is one engine run.
    let mut batches: Vec<Vec<(hoist_format::TensorInfo, Item)>> = vec![Vec::new()];
    let mut gathered: Vec<Option<HostBuf>> = Vec::with_capacity(plan.parts.len());
    for (p, (i, part)) in plan.parts.iter().enumerate() {
        match part {
            Part::Whole => batches[0].push((table.tensors[*i].clone(), Item::Direct(p))),
            Part::Contiguous(s) => batches[0].push((s.info.clone(), Item::Direct(p))),
            Part::Strided { .. } => {}
        }
    }
    let mut span_bytes_in_batch = 0u64;
    for (p, (_, part)) in plan.parts.iter().enumerate() {
        let Part::Strided { slice, spans } = part else {
            gathered.push(None);
            continue;
        };
        // The slice's final buffer: the result itself, so allocated once, up front.
        let buf = HostBuf::new(slice.info.len as usize).map_err(|source| host::AllocError {
            bytes: slice.info.len,
            source,
        })?;
        gathered.push(Some(buf));
        for (j, sp) in spans.iter().enumerate() {
            if span_bytes_in_batch >= plan.config.batch_bytes {
                batches.push(Vec::new());
                span_bytes_in_batch = 0;
            }
            span_bytes_in_batch += sp.len;
            let info = hoist_format::TensorInfo {
                name: String::new(), // named below, once its batch index is known
                dtype: hoist_format::DType::U8,
                shape: vec![sp.len],
                file: slice.info.file,
                offset: sp.offset,
                len: sp.len,
            };
            if let Some(b) = batches.last_mut() {
                b.push((info, Item::Span(p, j)));
            }
        }
    }

    let mut out: Vec<Option<HostTensor>> = vec![None; plan.parts.len()];
    let mut report: Option<LoadReport> = None;
    for batch in batches {
        if batch.is_empty() {
            continue;
        }
        // A table of the batch's byte ranges, named by their position in the batch (a NUL
        // prefix keeps them apart from any real name in a message).
        let (infos, items): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .enumerate()
            .map(|(k, (mut info, item))| {
                info.name = format!("\0shard-range-{k}");
                (info, item)
            })
            .unzip();
        let names: std::collections::HashMap<String, usize> = infos
            .iter()
            .enumerate()
            .map(|(k, t)| (t.name.clone(), k))
            .collect();
        let virtual_table = TensorTable::from_parts(
            table.root.clone(),
            table.files.clone(),
            infos,
            Default::default(),
            Vec::new(),
        )
        .map_err(|e| {
            // Ranges come from non-overlapping tensors, so this is a bug, not bad input.
            LoadError::Plan(plan::PlanError::Config(format!(
                "internal: shard ranges do not form a table: {e}"
            )))
        })?;
        let all: Vec<usize> = (0..virtual_table.tensors.len()).collect();
        let (loaded, r) = load_host(&virtual_table, &all, plan_config, engine_config, None)?;
        for t in loaded {
            let Some(&k) = names.get(&t.info.name) else {
                continue;
            };
            match items[k] {
                Item::Direct(p) => {
                    let (i, part) = &plan.parts[p];
                    let info = match part {
                        Part::Contiguous(s) => s.info.clone(),
                        _ => table.tensors[*i].clone(),
                    };
                    let storage = t.storage().map(|(b, off)| (b.clone(), off));
                    out[p] = Some(match storage {
                        Some((b, off)) => HostTensor::new(info, Some(b), off),
                        None => HostTensor::new(info, None, 0),
                    });
                }
                Item::Span(p, j) => {
                    let (_, Part::Strided { slice, spans }) = &plan.parts[p] else {
                        continue;
                    };
                    let Some(dst) = gathered[p].as_mut() else {
                        continue;
                    };
                    let sp = &spans[j];
                    let (src, dst) = (t.bytes(), dst.as_mut_slice());
                    let n = slice.run_bytes as usize;
                    for run in sp.runs.clone() {
                        let from = (slice.run_offset(run) - sp.offset) as usize;
                        let to = (run * slice.run_bytes) as usize;
                        dst[to..to + n].copy_from_slice(&src[from..from + n]);
                    }
                }
            }
        }
        report = Some(match report {
            None => r,
            Some(acc) => merge_reports(acc, r),
        });
    }
    for (p, buf) in gathered.into_iter().enumerate() {
        if let (Some(buf), (_, Part::Strided { slice, .. })) = (buf, &plan.parts[p]) {
            out[p] = Some(HostTensor::new(slice.info.clone(), Some(Arc::new(buf)), 0));
        }
    }
    Ok((
        out.into_iter().flatten().collect(),
        report.unwrap_or_default(),
    ))
}

/// Two batches' reports as one: bytes and seconds added, notes of both.
fn merge_reports(mut a: LoadReport, b: LoadReport) -> LoadReport {
    a.read_bytes += b.read_bytes;
    a.seconds += b.seconds;
    for (m, bytes) in b.bytes_by_method {
        match a.bytes_by_method.iter_mut().find(|x| x.0 == m) {
            Some(x) => x.1 += bytes,
            None => a.bytes_by_method.push((m, bytes)),
        }
    }
    for n in b.notes {
        if !a.notes.contains(&n) {
            a.notes.push(n);
        }
    }
    a
}
