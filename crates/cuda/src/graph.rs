//! CUDA graphs: the work one closure queues on a stream, captured once and replayed with a
//! single launch (saving the per-kernel launch gaps of a step made of many small kernels).

use std::sync::Arc;

use cudarc::driver::sys;

use crate::driver::{Gpu, Stream};
use crate::CudaError;

/// A captured and instantiated graph; both are destroyed on drop.
#[derive(Debug)]
pub struct Graph {
    gpu: Arc<Gpu>,
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
}

impl Graph {
    /// Captures what `record` queues on `stream` (thread-local capture mode: other threads'
    /// CUDA calls are unaffected) and instantiates it. `record` may queue only capturable
    /// work (launches, asynchronous copies and memsets, cuBLAS calls on that stream); anything
    /// that waits for the device fails the capture. Its error, else the capture's, is returned.
    pub fn capture<E: From<CudaError>>(
        stream: &Stream,
        record: impl FnOnce() -> Result<(), E>,
    ) -> Result<Graph, E> {
        let gpu = stream.gpu();
        gpu.make_current()?;
        // SAFETY: a live stream of the current context; nothing else captures on this thread
        // (a nested capture is refused by the driver, returned as an error).
        gpu.check("cuStreamBeginCapture", unsafe {
            sys::cuStreamBeginCapture_v2(
                stream.raw(),
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
        })?;
        let recorded = record();
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above, whatever `record` did; out-pointer to a local.
        let ended = unsafe { sys::cuStreamEndCapture(stream.raw(), &mut graph) };
        let destroy_graph = |graph: sys::CUgraph| {
            if !graph.is_null() {
                // SAFETY: a graph the capture made, never instantiated, destroyed once.
                unsafe { sys::cuGraphDestroy(graph) };
            }
        };
        if let Err(e) = recorded {
            destroy_graph(graph);
            return Err(e);
        }
        if let Err(e) = gpu.check("cuStreamEndCapture", ended) {
            destroy_graph(graph);
            return Err(e.into());
        }
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: graph is the captured graph; out-pointer to a local.
        let r = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) };
        if let Err(e) = gpu.check("cuGraphInstantiate", r) {
            destroy_graph(graph);
            return Err(e.into());
        }
        Ok(Graph {
            gpu: gpu.clone(),
            graph,
            exec,
        })
    }

    /// Queues one replay of the captured work on `stream`.
    ///
    /// # Safety
    /// Every device buffer the captured work reads or writes must still be allocated (the graph
    /// holds their addresses, not the buffers), and no other work may touch what it writes
    /// while it runs.
    pub unsafe fn launch(&self, stream: &Stream) -> Result<(), CudaError> {
        assert_eq!(
            stream.gpu().ordinal(),
            self.gpu.ordinal(),
            "a graph launched on another device's stream"
        );
        self.gpu.make_current()?;
        // SAFETY: exec is live and the stream of this context; the caller vouches for the
        // buffers the captured work uses.
        self.gpu.check("cuGraphLaunch", unsafe {
            sys::cuGraphLaunch(self.exec, stream.raw())
        })
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        if self.gpu.make_current().is_ok() {
            // SAFETY: each destroyed once; a pending replay keeps what it needs (the driver
            // defers the release of an executable graph until its launches complete).
            unsafe {
                sys::cuGraphExecDestroy(self.exec);
                sys::cuGraphDestroy(self.graph);
            }
        }
    }
}
