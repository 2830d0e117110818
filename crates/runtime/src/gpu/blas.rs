//! Matrix products through cuBLAS (`cublasGemmEx`, f32 accumulation), in the row-major
//! terms the rest of the runtime uses.
//!
//! cuBLAS is column-major: a row-major `[rows, cols]` matrix is its transpose. So
//! `Y[n, out] = X[n, in] · W[out, in]ᵀ` is `Yᵀ = W·Xᵀ` for cuBLAS: `op(A) = T` on the weight,
//! `op(B) = N` on the activations, `m = out`, `n = tokens`, `k = in`.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys;
use hoist_cuda::{Gpu, Stream};

use super::GpuError;

/// Element type of a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    F32,
    F16,
    BF16,
}

impl Elem {
    fn cuda(self) -> sys::cudaDataType {
        match self {
            Elem::F32 => sys::cudaDataType::CUDA_R_32F,
            Elem::F16 => sys::cudaDataType::CUDA_R_16F,
            Elem::BF16 => sys::cudaDataType::CUDA_R_16BF,
        }
    }

    /// Bytes per element.
    pub(crate) fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// A cuBLAS handle bound to one stream.
pub(crate) struct Blas {
    _gpu: Arc<Gpu>,
    handle: sys::cublasHandle_t,
    /// cuBLAS's workspace, ours so that captured graphs never make it allocate.
    _workspace: hoist_cuda::DeviceBuf,
}

/// Bytes of cuBLAS's workspace (what it recommends for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

fn check(call: &'static str, s: sys::cublasStatus_t) -> Result<(), GpuError> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(GpuError::Blas {
            call,
            status: format!("{s:?}"),
        })
    }
}

/// One strided batch: `count` products whose operands advance by these many elements.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    pub count: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
}

/// A column-major GEMM `C = alpha·op(A)·op(B) + beta·C` as cuBLAS sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: u64,
    pub a_type: Elem,
    pub lda: usize,
    pub b: u64,
    pub b_type: Elem,
    pub ldb: usize,
    pub c: u64,
    pub ldc: usize,
    pub alpha: f32,
    pub beta: f32,
}

impl Blas {
    /// A handle whose work goes to `stream`.
    pub(crate) fn new(gpu: &Arc<Gpu>, stream: &Stream) -> Result<Blas, GpuError> {
        // SAFETY: only tries to dlopen candidate names; never panics.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::Library {
                library: "cuBLAS (libcublas.so)",
                reason: "not found on the loader path".into(),
            });
        }
        gpu.make_current()?;
        let mut handle: sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a context is current.
        check("cublasCreate", unsafe { sys::cublasCreate_v2(&mut handle) })?;
        let workspace = match hoist_cuda::DeviceBuf::new(gpu, WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created above, destroyed once.
                unsafe { sys::cublasDestroy_v2(handle) };
                return Err(e.into());
            }
        };
        let blas = Blas {
            _gpu: gpu.clone(),
            handle,
            _workspace: workspace,
        };
        // SAFETY: the workspace lives as long as the handle (same struct, dropped after it).
        check("cublasSetWorkspace", unsafe {
            sys::cublasSetWorkspace_v2(
                handle,
                blas._workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
            )
        })?;
        // SAFETY: both handles are live; the stream outlives the handle (both owned by the
        // model, the handle dropped first).
        check("cublasSetStream", unsafe {
            sys::cublasSetStream_v2(handle, stream.raw() as sys::cudaStream_t)
        })?;
        Ok(blas)
    }

    /// Runs `g` (a batch of one when `batch` is `None`).
    ///
    /// # Safety
    /// Every operand address must be a live device allocation holding the matrices the shapes,
    /// leading dimensions and strides describe.
    pub(crate) unsafe fn gemm(&self, g: &Gemm, batch: Option<Batch>) -> Result<(), GpuError> {
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let (alpha, beta) = (g.alpha, g.beta);
        let i = |v: usize| v as i32;
        let b = batch.unwrap_or(Batch {
            count: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        });
        debug_assert!(g.m > 0 && g.n > 0 && g.k > 0 && b.count > 0);
        // SAFETY: the caller's contract; alpha/beta are host f32 (the default pointer mode).
        check("cublasGemmStridedBatchedEx", unsafe {
            sys::cublasGemmStridedBatchedEx(
                self.handle,
                op(g.trans_a),
                op(g.trans_b),
                i(g.m),
                i(g.n),
                i(g.k),
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                g.a_type.cuda(),
                i(g.lda),
                b.stride_a,
                g.b as *const c_void,
                g.b_type.cuda(),
                i(g.ldb),
                b.stride_b,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                sys::cudaDataType::CUDA_R_32F,
                i(g.ldc),
                b.stride_c,
                b.count,
                compute,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: destroyed once; pending work on the stream completes first.
        unsafe { sys::cublasDestroy_v2(self.handle) };
    }
}
