//! Errors of the GPU runtime.

/// The GPU runtime failed; every message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No usable CUDA GPU.
    #[error("this needs an NVIDIA GPU with CUDA: {0}")]
    NoGpu(String),
    /// A CUDA driver call failed, or device memory ran out while loading weights.
    #[error(transparent)]
    Cuda(#[from] hoist_cuda::CudaError),
    /// A CUDA library the runtime needs (NVRTC, cuBLAS) cannot be loaded.
    #[error("cannot load {library}: {reason}; install the CUDA toolkit's runtime libraries (e.g. the nvidia-cublas and nvidia-cuda-nvrtc packages) and put them on LD_LIBRARY_PATH")]
    Library {
        /// The library.
        library: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// NVRTC failed to compile the kernels (a bug, or a GPU/toolkit pair we do not know).
    #[error("compiling the GPU kernels for {arch} failed: {log}")]
    Compile {
        /// Target architecture, e.g. `sm_90`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS {call} failed: {status}")]
    Blas {
        /// The call.
        call: &'static str,
        /// cuBLAS's status.
        status: String,
    },
    /// The placement plan does not fit the model or asks for what the runtime does not do.
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    /// An option (a [`super::GpuOptions`] field or its environment override) has a value the
    /// runtime does not accept.
    #[error("{name}={value:?} is not accepted: {name} takes {accepted}")]
    InvalidOption {
        /// The variable (`HOIST_…`) or field (`GpuTuning::…`).
        name: String,
        /// The value given.
        value: String,
        /// What it accepts.
        accepted: &'static str,
    },
    /// A device view that its memory cannot back (a bug: views are checked against their
    /// tensors when the model is built).
    #[error(transparent)]
    Slice(#[from] hoist_cuda::SliceError),
    /// Something the runtime does not do.
    #[error("{0}")]
    Unsupported(String),
    /// The KV cache (or the work buffers) do not fit in what is left of GPU memory.
    #[error("a context of {context} positions needs {needed_bytes} bytes of GPU memory for the KV cache and work buffers ({needed_gib:.2} GiB) but {free_bytes} bytes are free after the weights; ask for a shorter context (--context)")]
    ContextTooLarge {
        /// Positions asked for.
        context: usize,
        /// Bytes needed.
        needed_bytes: u64,
        /// Same in GiB.
        needed_gib: f64,
        /// Bytes free.
        free_bytes: u64,
    },
    /// Reading a streamed layer's weights from its file failed (at load, or at a step).
    #[error("reading layer {layer}'s weights from {path}: {source}; check that the file is still there and readable (streamed layers are read while the model runs)")]
    StreamRead {
        /// The file.
        path: std::path::PathBuf,
        /// The layer.
        layer: usize,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The kernel cache directory could not be written (compilation still worked).
    #[error("kernel cache {path}: {source}")]
    Cache {
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}
