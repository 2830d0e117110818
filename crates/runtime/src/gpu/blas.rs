//! Matrix products through cuBLAS ([`hoist_cuda::blas`]: `cublasGemmStridedBatchedEx`, f32
//! accumulation), which the runtime states in its row-major terms.
//!
//! cuBLAS is column-major: a row-major `[rows, cols]` matrix is its transpose. So
//! `Y[n, out] = X[n, in] · W[out, in]ᵀ` is `Yᵀ = W·Xᵀ` for cuBLAS: `op(A) = T` on the weight,
//! `op(B) = N` on the activations, `m = out`, `n = tokens`, `k = in`.

pub(crate) use hoist_cuda::blas::{Batch, Blas, Elem, Gemm};
