//! Matrix products through cuBLAS (`cublasGemmStridedBatchedEx`, f32 accumulation and f32
//! output), in cuBLAS's own column-major terms: the caller maps its layout onto them.
//!
//! The handle owns its workspace, so that work captured into a CUDA graph never makes cuBLAS
//! allocate. cuBLAS is loaded on first use, after a check that it is present (cudarc panics
//! when a library it calls into is missing).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::sys;

use crate::driver::{DeviceBuf, Gpu, Stream};
use crate::CudaError;

/// Element type of a GEMM operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// `float`.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
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
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 | Elem::BF16 => 2,
        }
    }
}

/// One strided batch: `count` products whose operands advance by these many elements.
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    /// Products in the batch (at least 1).
    pub count: i32,
    /// Elements between one product's `A` and the next's.
    pub stride_a: i64,
    /// Elements between one product's `B` and the next's.
    pub stride_b: i64,
    /// Elements between one product's `C` and the next's.
    pub stride_c: i64,
}

/// A column-major GEMM `C = alpha·op(A)·op(B) + beta·C` as cuBLAS sees it; `C` is f32.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// `op(A) = Aᵀ`.
    pub trans_a: bool,
    /// `op(B) = Bᵀ`.
    pub trans_b: bool,
    /// Rows of `op(A)` and `C`.
    pub m: usize,
    /// Columns of `op(B)` and `C`.
    pub n: usize,
    /// Columns of `op(A)`, rows of `op(B)`.
    pub k: usize,
    /// Device address of `A`.
    pub a: u64,
    /// Element type of `A`.
    pub a_type: Elem,
    /// Leading dimension of `A`, elements.
    pub lda: usize,
    /// Device address of `B`.
    pub b: u64,
    /// Element type of `B`.
    pub b_type: Elem,
    /// Leading dimension of `B`, elements.
    pub ldb: usize,
    /// Device address of `C` (f32).
    pub c: u64,
    /// Leading dimension of `C`, elements.
    pub ldc: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `C`'s previous contents (0 overwrites).
    pub beta: f32,
}

/// A cuBLAS handle bound to one stream, with its own workspace.
#[derive(Debug)]
pub struct Blas {
    gpu: Arc<Gpu>,
    handle: sys::cublasHandle_t,
    /// cuBLAS's workspace, ours so that captured graphs never make it allocate. Dropped after
    /// the handle (fields drop after `Drop::drop`).
    _workspace: DeviceBuf,
}

/// Bytes of cuBLAS's workspace (what it recommends for Hopper).
const WORKSPACE_BYTES: usize = 32 << 20;

impl Blas {
    /// A handle on `gpu` whose work goes to `stream` (of `gpu`), which must outlive it.
    pub fn new(gpu: &Arc<Gpu>, stream: &Stream) -> Result<Blas, CudaError> {
        assert_eq!(
            stream.gpu().ordinal(),
            gpu.ordinal(),
            "a cuBLAS handle on another device's stream"
        );
        // SAFETY: only tries to dlopen cuBLAS's candidate names; never panics.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Library {
                library: "cuBLAS (libcublas.so)",
                reason: "not found on the loader path".into(),
            });
        }
        gpu.make_current()?;
        let mut handle: sys::cublasHandle_t = std::ptr::null_mut();
        // SAFETY: out-pointer to a local; a context is current.
        check(gpu, "cublasCreate", unsafe {
            sys::cublasCreate_v2(&mut handle)
        })?;
        let workspace = match DeviceBuf::new(gpu, WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created above, destroyed once.
                unsafe { sys::cublasDestroy_v2(handle) };
                return Err(e);
            }
        };
        // From here on, Drop destroys the handle on every error path.
        let blas = Blas {
            gpu: gpu.clone(),
            handle,
            _workspace: workspace,
        };
        // SAFETY: the workspace lives as long as the handle (same struct, dropped after it).
        check(gpu, "cublasSetWorkspace", unsafe {
            sys::cublasSetWorkspace_v2(
                handle,
                blas._workspace.ptr() as *mut c_void,
                WORKSPACE_BYTES,
            )
        })?;
        // SAFETY: both handles are live; the caller keeps the stream alive longer than this.
        check(gpu, "cublasSetStream", unsafe {
            sys::cublasSetStream_v2(handle, stream.raw() as sys::cudaStream_t)
        })?;
        Ok(blas)
    }

    /// Queues `g` (a batch of one when `batch` is `None`) on the handle's stream.
    ///
    /// # Safety
    /// Every operand address must be live device memory of this handle's context holding the
    /// matrices that the shapes, leading dimensions and strides describe (`C` as f32), until
    /// the product has run; nothing else may write them meanwhile.
    pub unsafe fn gemm(&self, g: &Gemm, batch: Option<Batch>) -> Result<(), CudaError> {
        let op = |t: bool| {
            if t {
                sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let dim = |what: &str, v: usize| {
            i32::try_from(v).map_err(|_| {
                CudaError::Config(format!("GEMM {what} of {v} exceeds cuBLAS's 32-bit range"))
            })
        };
        let b = batch.unwrap_or(Batch {
            count: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        });
        assert!(
            g.m > 0 && g.n > 0 && g.k > 0 && b.count > 0,
            "empty GEMM {g:?} × {b:?}"
        );
        let (alpha, beta) = (g.alpha, g.beta);
        // SAFETY: the caller's contract; alpha/beta are host f32 (the default pointer mode).
        check(&self.gpu, "cublasGemmStridedBatchedEx", unsafe {
            sys::cublasGemmStridedBatchedEx(
                self.handle,
                op(g.trans_a),
                op(g.trans_b),
                dim("m", g.m)?,
                dim("n", g.n)?,
                dim("k", g.k)?,
                &alpha as *const f32 as *const c_void,
                g.a as *const c_void,
                g.a_type.cuda(),
                dim("lda", g.lda)?,
                b.stride_a,
                g.b as *const c_void,
                g.b_type.cuda(),
                dim("ldb", g.ldb)?,
                b.stride_b,
                &beta as *const f32 as *const c_void,
                g.c as *mut c_void,
                sys::cudaDataType::CUDA_R_32F,
                dim("ldc", g.ldc)?,
                b.stride_c,
                b.count,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        })
    }
}

fn check(gpu: &Gpu, call: &'static str, s: sys::cublasStatus_t) -> Result<(), CudaError> {
    if s == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Blas {
            call,
            ordinal: gpu.ordinal(),
            status: format!("{s:?}"),
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let _ = self.gpu.make_current();
        // SAFETY: destroyed once; pending work on the stream completes first.
        unsafe { sys::cublasDestroy_v2(self.handle) };
    }
}
