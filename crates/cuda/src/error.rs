//! Errors of the GPU paths, each naming the device, file or tensor involved and what to do.

use std::path::PathBuf;

use cudarc::driver::sys::CUresult;

/// A GPU load or query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// The CUDA driver library cannot be loaded: no NVIDIA driver on this machine.
    #[error("no CUDA driver here: {0}; --device cuda:N needs an NVIDIA GPU and its driver (libcuda.so.1); use --device cpu")]
    NoDriver(String),
    /// The driver loaded but reported no usable device, or the ordinal is out of range.
    #[error("no GPU cuda:{ordinal}: {reason}")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA call {call} failed on cuda:{ordinal}: {code:?}{hint}")]
    Driver {
        /// The driver function.
        call: &'static str,
        /// The device.
        ordinal: usize,
        /// The driver's result code.
        code: CUresult,
        /// What to do about it (may be empty).
        hint: String,
    },
    /// The GPU has too little free memory for the selected tensors.
    #[error("cuda:{ordinal} has {free_bytes} bytes free but the selected tensors need {needed_bytes} bytes ({needed_gib:.2} GiB); load fewer tensors (--filter) or free GPU memory")]
    OutOfMemory {
        /// The device.
        ordinal: usize,
        /// Bytes the load needs on the GPU.
        needed_bytes: u64,
        /// Same, in GiB, for the message.
        needed_gib: f64,
        /// Bytes free on the device when asked.
        free_bytes: u64,
    },
    /// Pinned host memory for the staging ring could not be had.
    #[error("cannot pin {bytes} bytes of host memory for the staging ring on cuda:{ordinal} ({how}): {reason}; use a smaller --ring-bytes or raise the memlock limit")]
    Pinned {
        /// The device.
        ordinal: usize,
        /// Bytes asked for.
        bytes: usize,
        /// Which allocation method.
        how: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A CUDA library hoist loads at run time (NVRTC, cuBLAS) cannot be loaded or answered
    /// wrongly.
    #[error("cannot load {library}: {reason}; install the CUDA toolkit's runtime libraries (e.g. the nvidia-cublas and nvidia-cuda-nvrtc packages) and put them on LD_LIBRARY_PATH")]
    Library {
        /// The library.
        library: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// NVRTC refused to compile a program.
    #[error("NVRTC could not compile {program}: {log}")]
    Compile {
        /// The program's name.
        program: String,
        /// NVRTC's result code and log.
        log: String,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS {call} failed on cuda:{ordinal}: {status}")]
    Blas {
        /// The cuBLAS function.
        call: &'static str,
        /// The device.
        ordinal: usize,
        /// cuBLAS's status.
        status: String,
    },
    /// A configuration value is out of range.
    #[error("invalid GPU load configuration: {0}")]
    Config(String),
    /// cuFile (GPUDirect Storage) was asked for and is unavailable or failed.
    #[error("cuFile (GPUDirect Storage) {what}: {reason}")]
    Cufile {
        /// What was being done (open the driver, register a file, read).
        what: String,
        /// What cuFile said.
        reason: String,
    },
    /// A cuFile read failed.
    #[error("{path}: cuFile read of {len} bytes at offset {offset} failed: {reason}")]
    CufileRead {
        /// The file.
        path: PathBuf,
        /// Offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// What cuFile said.
        reason: String,
    },
    /// A file changed (shrank) between parsing its header and reading it.
    #[error("{path}: changed during the load: {reason}; was it rewritten?")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What was seen.
        reason: String,
    },
    /// Planning the reads failed.
    #[error(transparent)]
    Plan(#[from] hoist_io::plan::PlanError),
    /// Reading (through the staging ring) failed.
    #[error(transparent)]
    Io(#[from] hoist_io::IoError),
    /// Reading a file for verification failed.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

impl CudaError {
    /// The error for driver call `call` on device `ordinal` that returned `code`, with a hint
    /// for the common codes.
    pub(crate) fn driver(call: &'static str, ordinal: usize, code: CUresult) -> CudaError {
        use CUresult::*;
        let hint = match code {
            CUDA_ERROR_OUT_OF_MEMORY => "; the device (or pinned host memory) is out of memory: load fewer tensors or free memory",
            CUDA_ERROR_NO_DEVICE => "; no CUDA device is visible (check CUDA_VISIBLE_DEVICES)",
            CUDA_ERROR_INVALID_DEVICE => "; no such device ordinal",
            CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => "; the driver library and kernel module versions differ",
            CUDA_ERROR_NOT_SUPPORTED => "; not supported on this device or driver",
            _ => "",
        };
        CudaError::Driver {
            call,
            ordinal,
            code,
            hint: hint.into(),
        }
    }
}
