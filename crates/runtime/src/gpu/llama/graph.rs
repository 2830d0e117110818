//! CUDA graphs of the one-token step.

use hoist_cuda::Stream;

use super::batch::Row;
use super::GpuSession;
use crate::gpu::GpuError;

/// A captured one-token step of a session. Its work touches only the session's buffers and
/// the model's weights, which live as long as the session that holds the graph.
pub(super) struct Graph(hoist_cuda::Graph);

impl Graph {
    /// Queues one replay of the step on `stream`.
    pub(super) fn launch(&self, stream: &Stream) -> Result<(), GpuError> {
        // SAFETY: the graph is a field of the session whose buffers (and model's weights) the
        // captured step uses; the session is alive while its graph is launched.
        Ok(unsafe { self.0.launch(stream) }?)
    }
}

impl GpuSession<'_> {
    /// Records the one-token step into a CUDA graph; with `greedy`, followed by the arg-max
    /// that feeds the next step ([`Ops::argmax_next`]).
    pub(super) fn capture(&self, greedy: bool) -> Result<Graph, GpuError> {
        let graph = hoist_cuda::Graph::capture(&self.model.stream, || {
            if greedy {
                self.record_greedy()
            } else {
                self.record(1, false, true).map(drop)
            }
        })?;
        Ok(Graph(graph))
    }

    /// Records a batched step over `rows` into a CUDA graph (on the lead, whose buffers it
    /// uses; the rows' caches are named by address, so the graph serves while the batch's
    /// rows are these: see `step_batch`).
    pub(super) fn capture_batch(&self, rows: &[Row]) -> Result<Graph, GpuError> {
        let graph = hoist_cuda::Graph::capture(&self.model.stream, || self.record_batch(rows))?;
        Ok(Graph(graph))
    }
}
